"""Masks as pure functions of scores (or weights) and the current threshold, the straight-through estimator, and the
cubic threshold schedule of Sanh et al. 2020 ("Movement Pruning"; emmental's `binarizer.py`, read for reference).

Choices, stated once:
- top-k keeps exactly floor(v * n) weights of an n-weight matrix (emmental's `int(v * n)`), ties broken by position
  (row-major), so masks are deterministic and identical on every process;
- warm-ups are fractions of training (0.1 = the first 10% of optimizer steps), not emmental's multiples of the
  learning-rate warm-up, which vanish when the run has no LR warm-up.
"""

import math

import numpy as np
import torch

# Hard-concrete distribution (Louizos et al. 2018), the constants of Sanh et al.
L0_BETA, L0_GAMMA, L0_ZETA = 2 / 3, -0.1, 1.1
# soft_movement never prunes a matrix below this fraction (emmental's floor: int(0.005 n) + 1 weights kept)
SOFT_MIN_FRACTION = 0.005


def keep_count(fraction, total):
    """floor(fraction * total), with a tolerance for binary rounding (0.29 * 100 keeps 29, not 28)."""
    return max(0, min(total, math.floor(fraction * total + 1e-6)))


def kth_largest(flat, k):
    """The k-th largest value of a 1-d tensor (1 <= k <= numel), as a Python float."""
    n = flat.numel()
    if flat.device.type == "cpu":  # numpy's introselect is ~10x faster than torch.kthvalue/topk on CPU
        values = flat.detach().float().numpy()
        return float(np.partition(values, n - k)[n - k])
    return torch.kthvalue(flat.detach().float(), n - k + 1).values.item()


def topk_mask(values, k):
    """A 0/1 mask (dtype of `values`) keeping exactly the k largest values; ties go to the first in row-major order."""
    flat = values.detach().reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones_like(values)
    if k <= 0:
        return torch.zeros_like(values)
    kth = kth_largest(flat, k)
    above = flat > kth
    ties = flat == kth
    missing = k - int(above.sum())
    if int(ties.sum()) != missing:  # keep only the first `missing` of the tied values
        ties &= ties.cumsum(0) <= missing
    return (above | ties).reshape(values.shape).to(values.dtype)


def threshold_mask(scores, threshold):
    """soft_movement: keep sigmoid(S) > threshold, but never fewer than int(0.005 n) + 1 weights (the top scores)."""
    mask = torch.sigmoid(scores.detach()) > threshold
    minimum = int(SOFT_MIN_FRACTION * mask.numel()) + 1
    if int(mask.sum()) < minimum:
        return topk_mask(scores, minimum)
    return mask.to(scores.dtype)


def l0_gates(scores, training):
    """Hard-concrete gates in [0, 1]: sampled (u ~ U(0, 1)) in training, deterministic in evaluation."""
    if training:
        u = torch.rand_like(scores).clamp(1e-4, 1 - 1e-4)
        probability = torch.sigmoid((u.log() - (1 - u).log() + scores) / L0_BETA)
    else:
        probability = torch.sigmoid(scores)
    return (probability * (L0_ZETA - L0_GAMMA) + L0_GAMMA).clamp(0.0, 1.0)


def l0_expected_nonzero(scores):
    """P(gate != 0) of each hard-concrete gate: the expected L0 norm's terms."""
    return torch.sigmoid(scores - L0_BETA * math.log(-L0_GAMMA / L0_ZETA))


class StraightThroughMask(torch.autograd.Function):
    """W' = W * M with a binary M computed from scores S; backward: dL/dW = dL/dW' * M and dL/dS = dL/dW' * W."""

    @staticmethod
    def forward(ctx, weight, scores, mask):
        ctx.save_for_backward(weight, mask)
        return weight * mask

    @staticmethod
    def backward(ctx, grad_output):
        weight, mask = ctx.saved_tensors
        grad_weight = grad_output * mask if ctx.needs_input_grad[0] else None
        grad_scores = grad_output * weight if ctx.needs_input_grad[1] else None
        return grad_weight, grad_scores, None


def schedule_threshold(step, total_steps, initial_threshold, final_threshold, initial_warmup, final_warmup):
    """Sanh et al.'s cubic schedule: the initial threshold during the first `initial_warmup` fraction of the steps,
    then a cubic decay (or rise) to the final threshold, held during the last `final_warmup` fraction."""
    start = initial_warmup * total_steps
    end = total_steps - final_warmup * total_steps
    if step <= start:
        return initial_threshold
    if step > end or end <= start:
        return final_threshold
    remaining = 1 - (step - start) / (end - start)
    return final_threshold + (initial_threshold - final_threshold) * remaining ** 3
