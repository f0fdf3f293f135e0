"""Pruning while fine-tuning: magnitude, movement, soft movement and L0 for BERT and every BERMo head.

The methods and their defaults follow Sanh et al. 2020, "Movement Pruning: Adaptive Sparsity by Fine-Tuning" (the
`emmental` research project of transformers, read for reference): each encoder layer's six Linear layers (query, key,
value, attention output, intermediate, output) become `MaskedLinear` modules that keep the `weight`/`bias` names, so
state dicts stay BERT-shaped, and add `mask_scores`. Embeddings, pooler, classifier and the layer mix are never masked.

    magnitude      keep the top v of |W| per matrix
    movement       keep the top v of the learned scores S per matrix (or over all matrices with --global_topk);
                   straight-through gradient dL/dS = (dL/dW') * W
    soft_movement  keep sigmoid(S) > tau (straight-through), with lambda * the L1 penalty on sigmoid(S)
    l0             hard-concrete gates (beta 2/3, gamma -0.1, zeta 1.1): sampled in training, deterministic in
                   evaluation, with lambda * the expected L0 norm

The training loop drives a `Pruner` at fixed points (`setup`, `parameter_groups`, `on_step`, `penalty`,
`eval_figures`, `state_dict`/`load_state_dict`, `export`); the threshold (and lambda) follow the cubic schedule of
Sanh et al., a pure function of the step (`schedule_threshold`).

Choices, stated once:
- warm-ups are fractions of training (--initial_warmup 0.1 = the first 10% of optimizer steps), not emmental's
  multiples of the learning-rate warm-up, which vanish when the run has no LR warm-up;
- top-k keeps exactly floor(v * n) weights of an n-weight matrix (emmental's `int(v * n)`), ties broken by position
  (row-major), so masks are deterministic and identical on every process;
- the penalty is each matrix's mean (sigmoid(S) for l1, the gates' probability of being non-zero for l0), averaged
  over the matrices and multiplied by lambda(step) = final_lambda * threshold(step) / final_threshold, as emmental does.
"""

import argparse
import math
import re
from pathlib import Path

import numpy as np

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import nn

METHODS = ("magnitude", "movement", "soft_movement", "l0")
TOPK_METHODS = ("magnitude", "movement")
PENALTY_METHODS = ("soft_movement", "l0")
# The six Linear layers of a BERT encoder layer, relative to the layer.
ENCODER_LINEARS = (
    "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
    "intermediate.dense", "output.dense",
)
ENCODER_KEY = re.compile(r"(^|\.)encoder\.layer\.\d+\.")
ENCODER_MATRIX_KEY = re.compile(
    r"(^|\.)encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense"
    r"|output\.dense)\.weight$"
)
# Hard-concrete distribution (Louizos et al. 2018), the constants of Sanh et al.
L0_BETA, L0_GAMMA, L0_ZETA = 2 / 3, -0.1, 1.1
# soft_movement never prunes a matrix below this fraction (emmental's floor: int(0.005 n) + 1 weights kept)
SOFT_MIN_FRACTION = 0.005
DEFAULTS = {  # per-method defaults of the flags left unset (emmental's README recipes)
    "initial_threshold": {"magnitude": 1.0, "movement": 1.0, "soft_movement": 0.0, "l0": 1.0},
    "final_threshold": {"magnitude": 0.7, "movement": 0.7, "soft_movement": 0.1, "l0": 1.0},
    "mask_scale": {"magnitude": 0.0, "movement": 0.0, "soft_movement": 0.0, "l0": 2.197},
}
DEFAULT_INITIAL_WARMUP, DEFAULT_FINAL_WARMUP = 0.1, 0.2
DEFAULT_MASK_SCORES_LEARNING_RATE = 1e-2
FLAG_DEFAULTS = {  # the parser's defaults of the flags that have one (the others default to None)
    "initial_warmup": DEFAULT_INITIAL_WARMUP, "final_warmup": DEFAULT_FINAL_WARMUP,
    "mask_scores_learning_rate": DEFAULT_MASK_SCORES_LEARNING_RATE, "mask_init": "constant", "global_topk": False,
    "freeze_embeddings": False, "save_masks": False,
}


# --------------------------------------------------------------------------------------------------------------------
# Masks: pure functions of scores (or weights) and the current threshold


def keep_count(fraction, total):
    """floor(fraction * total), with a tolerance for binary rounding (0.29 * 100 keeps 29, not 28)."""
    return max(0, min(total, math.floor(fraction * total + 1e-6)))


def _kth_largest(flat, k):
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
    kth = _kth_largest(flat, k)
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


class _StraightThroughMask(torch.autograd.Function):
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


# --------------------------------------------------------------------------------------------------------------------
# The masked layer


class MaskedLinear(nn.Linear):
    """nn.Linear whose weight is multiplied by a mask: same `weight`/`bias`, plus `mask_scores` (not for magnitude).

    `keep` is set by the Pruner between steps: the number of weights kept (magnitude, movement) or the threshold on
    sigmoid(scores) (soft_movement); l0 needs none. The binary mask is computed once per setting in `refresh_mask`
    (outside forward); forward only reads it, and recomputes it (without storing) if the scores or weights changed
    since, so a forward never uses a stale mask and never writes to the module.
    """

    def __init__(self, in_features, out_features, bias=True, method="movement", mask_init="constant", mask_scale=0.0,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if method not in METHODS:
            raise ValueError(f"--pruning_method {method!r}: unknown; choose one of {', '.join(METHODS)}")
        self.method = method
        self.keep = None  # None: keep everything
        self.schedule_step = None  # set by the Pruner: a new optimizer step always gets a fresh mask
        self._cached = None  # (key, mask)
        if method != "magnitude":
            self.mask_scores = nn.Parameter(torch.empty_like(self.weight))
            self.init_scores(mask_init, mask_scale)

    @classmethod
    def from_linear(cls, linear, method, mask_init="constant", mask_scale=0.0):
        """A MaskedLinear sharing `linear`'s weight and bias parameters (the same objects)."""
        masked = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, method="magnitude",
                     device="meta")
        masked.weight = linear.weight
        masked.bias = linear.bias
        masked.method = method
        masked.train(linear.training)
        if method != "magnitude":
            masked.mask_scores = nn.Parameter(torch.empty_like(linear.weight))
            masked.init_scores(mask_init, mask_scale)
        return masked

    @torch.no_grad()
    def init_scores(self, mask_init, mask_scale):
        if mask_init == "constant":
            nn.init.constant_(self.mask_scores, mask_scale)
        elif mask_init == "uniform":
            nn.init.uniform_(self.mask_scores, -mask_scale, mask_scale)
        elif mask_init == "kaiming":
            nn.init.kaiming_uniform_(self.mask_scores, a=math.sqrt(5))
        else:
            raise ValueError(f"--mask_init {mask_init!r}: choose constant, uniform or kaiming")

    def _mask_source(self):
        return self.weight if self.method == "magnitude" else self.mask_scores

    def _cache_key(self):
        source = self._mask_source()
        # the step too: fused optimizers update parameters without bumping their `_version`
        return (source._version, source.data_ptr(), source.device, self.keep, self.schedule_step)

    @torch.no_grad()
    def compute_mask(self):
        """The evaluation-mode mask at the current setting: 0/1, or the deterministic gates in [0, 1] for l0."""
        if self.method == "l0":
            return l0_gates(self.mask_scores, training=False)
        if self.method == "soft_movement":
            return torch.ones_like(self.weight) if self.keep is None else threshold_mask(self.mask_scores, self.keep)
        n = self.weight.numel()
        values = self.weight.abs() if self.method == "magnitude" else self.mask_scores
        return topk_mask(values, n if self.keep is None else self.keep)

    def refresh_mask(self):
        """Compute and keep the mask for the current scores/weights and setting (called by the Pruner, not forward)."""
        if self.method == "l0":
            return
        key = self._cache_key()
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self.compute_mask())

    def current_mask(self):
        """The mask forward uses now (no gradient): the kept one if still valid, else a freshly computed one."""
        if self.method != "l0" and self._cached is not None and self._cached[0] == self._cache_key():
            return self._cached[1]
        return self.compute_mask()

    def masked_weight(self):
        if self.method == "l0":
            return self.weight * l0_gates(self.mask_scores, self.training)
        mask = self.current_mask()
        if self.method == "magnitude":
            return self.weight * mask
        return _StraightThroughMask.apply(self.weight, self.mask_scores, mask)

    def forward(self, input):
        return F.linear(input, self.masked_weight(), self.bias)

    @torch.no_grad()
    def kept_count(self):
        """Weights kept at the current setting (for l0: gates > 0 in evaluation)."""
        mask = self.compute_mask() if self.method == "l0" else self.current_mask()
        return int((mask != 0).sum())

    def extra_repr(self):
        return f"{super().extra_repr()}, method={self.method}, keep={self.keep}"


def masked_modules(model):
    """(name, MaskedLinear) pairs of a model (unwrapped from DDP/compile first)."""
    model = extract_model_from_parallel(model)
    return [(name, module) for name, module in model.named_modules() if isinstance(module, MaskedLinear)]


def count_zeros(state_dict):
    """The real zeros of a plain (exported) state dict's encoder matrices, and the remaining encoder fraction counted
    as Sanh et al.'s `counts_parameters.py` does: non-zero matrix weights + biases + LayerNorm over all encoder
    parameters. Returns {"zero_weights", "encoder_matrix_weights", "encoder_parameters", "remaining_encoder_fraction"}.
    """
    zeros = matrix_weights = encoder_parameters = 0
    for name, tensor in state_dict.items():
        if name.endswith("mask_scores") or not ENCODER_KEY.search(name):
            continue
        encoder_parameters += tensor.numel()
        if ENCODER_MATRIX_KEY.search(name):
            matrix_weights += tensor.numel()
            zeros += int((tensor == 0).sum())
    if encoder_parameters == 0:
        raise ValueError("count_zeros: the state dict has no encoder.layer.N parameters")
    return {
        "zero_weights": zeros,
        "encoder_matrix_weights": matrix_weights,
        "encoder_parameters": encoder_parameters,
        "remaining_encoder_fraction": (encoder_parameters - zeros) / encoder_parameters,
    }


# --------------------------------------------------------------------------------------------------------------------
# The feature the training loop drives


class Pruner:
    """Pruning as a feature of the training loop. Call order:

        pruner = Pruner.from_args(args, max_train_steps)      # None without --pruning_method; ValueError: exit 2
        model = pruner.setup(model)                             # before building the optimizer and prepare()
        groups = default_groups(excluding pruner's params) + pruner.parameter_groups(model)
        each step:  pruner.on_step(completed_steps); loss = loss + (pruner.penalty(model) or 0)
        each evaluation:  pruner.on_step(completed_steps); record.update(pruner.eval_figures(model))
        checkpoints: pruner.state_dict() / load_state_dict(); pruner.config() must match on resume
        at the end:  masks = pruner.export_masks(model) (--save_masks); model = pruner.export(model); save
    """

    FLAGS = ("pruning_method", "initial_threshold", "final_threshold", "initial_warmup", "final_warmup",
             "mask_scores_learning_rate", "regularization", "final_lambda", "mask_init", "mask_scale", "global_topk",
             "freeze_embeddings", "save_masks", "mask_scores_file")

    def __init__(self, pruning_method, max_train_steps, initial_threshold=None, final_threshold=None,
                 initial_warmup=DEFAULT_INITIAL_WARMUP, final_warmup=DEFAULT_FINAL_WARMUP,
                 mask_scores_learning_rate=DEFAULT_MASK_SCORES_LEARNING_RATE, regularization=None, final_lambda=None,
                 mask_init="constant", mask_scale=None, global_topk=False, freeze_embeddings=False, save_masks=False,
                 mask_scores_file=None):
        method = pruning_method
        if method not in METHODS:
            raise ValueError(f"--pruning_method {method!r}: unknown; choose one of {', '.join(METHODS)}")
        self.method = method
        self.initial_threshold = float(DEFAULTS["initial_threshold"][method] if initial_threshold is None
                                       else initial_threshold)
        self.final_threshold = float(DEFAULTS["final_threshold"][method] if final_threshold is None
                                     else final_threshold)
        self.initial_warmup, self.final_warmup = float(initial_warmup), float(final_warmup)
        self.max_train_steps = max_train_steps
        self.mask_scores_learning_rate = float(mask_scores_learning_rate)
        self.regularization, self.final_lambda = regularization, final_lambda
        self.mask_init = mask_init
        self.mask_scale = float(DEFAULTS["mask_scale"][method] if mask_scale is None else mask_scale)
        self.global_topk, self.freeze_embeddings, self.save_masks = bool(global_topk), bool(freeze_embeddings), \
            bool(save_masks)
        self.mask_scores_file = None if mask_scores_file is None else Path(mask_scores_file)
        self._validate()
        self.step = 0
        self.threshold, self.lam = self._schedule(0)
        self._masked = []
        self._last_figures = {}

    # ---- arguments -------------------------------------------------------------------------------------------------

    @staticmethod
    def add_arguments(parser):
        """Add the "pruning" argument group (emmental's flag names) to an argparse parser; returns the group."""
        group = parser.add_argument_group(
            "pruning", "prune the encoder's Linear layers while fine-tuning (Sanh et al. 2020); the threshold "
            "follows a cubic schedule from --initial_threshold to --final_threshold between the two warm-ups")
        boolean = argparse.BooleanOptionalAction
        group.add_argument("--pruning_method", choices=METHODS,
                           help="magnitude (top |W|), movement (top learned scores), soft_movement (sigmoid(scores) > "
                           "threshold, L1 penalty) or l0 (hard-concrete gates, L0 penalty); default: no pruning "
                           "(e.g. --pruning_method movement)")
        group.add_argument("--initial_threshold", type=float,
                           help="threshold at the start: for magnitude/movement the fraction of each matrix kept, in "
                           "(0, 1]; for soft_movement the threshold on sigmoid(scores), in [0, 1); for l0 it only "
                           "shapes lambda, in (0, 1]. Default 1 (soft_movement 0) (e.g. --initial_threshold 1)")
        group.add_argument("--final_threshold", type=float,
                           help="threshold at the end, same meaning: e.g. --final_threshold 0.15 keeps 15%% of each "
                           "encoder matrix with movement. Default 0.7 (magnitude/movement), 0.1 (soft_movement), "
                           "1 (l0)")
        group.add_argument("--initial_warmup", type=float, default=DEFAULT_INITIAL_WARMUP,
                           help="fraction of the optimizer steps held at --initial_threshold before the cubic schedule "
                           f"starts (a fraction, not emmental's warm-up units; default {DEFAULT_INITIAL_WARMUP}, e.g. "
                           "--initial_warmup 0.1)")
        group.add_argument("--final_warmup", type=float, default=DEFAULT_FINAL_WARMUP,
                           help="fraction of the optimizer steps held at --final_threshold at the end (default "
                           f"{DEFAULT_FINAL_WARMUP}, e.g. --final_warmup 0.2); the two warm-ups add up to at most 1")
        group.add_argument("--mask_scores_learning_rate", type=float, default=DEFAULT_MASK_SCORES_LEARNING_RATE,
                           help="learning rate of the mask scores (own group, no weight decay, the same LR schedule; "
                           f"default {DEFAULT_MASK_SCORES_LEARNING_RATE}, e.g. --mask_scores_learning_rate 1e-2)")
        group.add_argument("--regularization", choices=("l1", "l0"),
                           help="penalty of soft_movement (l1 on sigmoid(scores)) and l0 (expected L0 norm), needed "
                           "by those methods (e.g. --regularization l1)")
        group.add_argument("--final_lambda", type=float,
                           help="penalty weight at the end; lambda follows the threshold schedule (lambda = "
                           "final_lambda * threshold / final_threshold), needed by soft_movement and l0 "
                           "(e.g. --final_lambda 400)")
        group.add_argument("--mask_init", choices=("constant", "uniform", "kaiming"), default="constant",
                           help="initialization of the scores (e.g. --mask_init constant)")
        group.add_argument("--mask_scale", type=float,
                           help="the constant, or the half-width of the uniform initialization (default 0; 2.197 for "
                           "l0, i.e. sigmoid 0.9; e.g. --mask_scale 0)")
        group.add_argument("--global_topk", action=boolean, default=False,
                           help="magnitude/movement: keep the top fraction over all encoder matrices together instead "
                           "of per matrix (e.g. --global_topk)")
        group.add_argument("--freeze_embeddings", action=boolean, default=False,
                           help="do not train the embeddings while pruning, as Sanh et al. (e.g. --freeze_embeddings)")
        group.add_argument("--save_masks", action=boolean, default=False,
                           help="also save the mask scores beside the exported model, to continue pruning later "
                           "(e.g. --save_masks)")
        group.add_argument("--mask_scores_file",
                           help="start the mask scores from a --save_masks file (mask_scores.safetensors) instead of "
                           "--mask_init, to continue pruning a saved model; not for magnitude (e.g. "
                           "--mask_scores_file out/sst2-movement/mask_scores.safetensors)")
        return group

    @classmethod
    def from_args(cls, args, max_train_steps):
        """A Pruner from parsed arguments, or None without --pruning_method. Bad input raises ValueError (one line,
        naming the flag) before anything is built or written."""
        values = {name: getattr(args, name, FLAG_DEFAULTS.get(name)) for name in cls.FLAGS}
        if values["pruning_method"] is None:
            unused = [name for name in cls.FLAGS[1:] if values[name] != FLAG_DEFAULTS.get(name)]
            if unused:
                raise ValueError(f"--{unused[0]} needs --pruning_method")
            return None
        kwargs = {name: value for name, value in values.items() if value is not None}
        return cls(max_train_steps=max_train_steps, **kwargs)

    def _validate(self):
        method = self.method
        thresholds = (("initial_threshold", self.initial_threshold), ("final_threshold", self.final_threshold))
        for name, value in thresholds:
            if method == "soft_movement":
                low_ok = value >= 0 if name == "initial_threshold" else value > 0
                if not (low_ok and value < 1):
                    interval = "[0, 1)" if name == "initial_threshold" else "(0, 1)"
                    raise ValueError(f"--{name} {value}: soft_movement's threshold on sigmoid(scores) must be in "
                                     f"{interval}")
            elif not 0 < value <= 1:
                what = "the fraction of weights kept" if method in TOPK_METHODS else "the threshold"
                raise ValueError(f"--{name} {value}: {what} must be in (0, 1]")
        if method in PENALTY_METHODS:
            if self.regularization is None:
                raise ValueError(f"--pruning_method {method} needs --regularization "
                                 f"({'l1' if method == 'soft_movement' else 'l0'}) and --final_lambda")
            if self.final_lambda is None:
                raise ValueError(f"--pruning_method {method} needs --final_lambda (the penalty weight, e.g. 400)")
            if self.regularization not in ("l1", "l0"):
                raise ValueError(f"--regularization {self.regularization!r}: choose l1 or l0")
            if not self.final_lambda >= 0:
                raise ValueError(f"--final_lambda {self.final_lambda}: the penalty weight must be >= 0")
        elif self.regularization is not None or self.final_lambda is not None:
            flag = "--regularization" if self.regularization is not None else "--final_lambda"
            raise ValueError(f"{flag}: {method} has no penalty; it applies to soft_movement and l0")
        if self.global_topk and method not in TOPK_METHODS:
            raise ValueError(f"--global_topk applies to magnitude and movement, not {method}")
        for name, value in (("initial_warmup", self.initial_warmup), ("final_warmup", self.final_warmup)):
            if not 0 <= value <= 1:
                raise ValueError(f"--{name} {value}: a fraction of the training steps in [0, 1] (e.g. 0.1)")
        if self.initial_warmup + self.final_warmup > 1:
            raise ValueError(f"--initial_warmup {self.initial_warmup} + --final_warmup {self.final_warmup}: the "
                             "warm-ups are longer than training (fractions of it; they must add up to at most 1)")
        if not self.mask_scores_learning_rate > 0:
            raise ValueError(f"--mask_scores_learning_rate {self.mask_scores_learning_rate}: must be > 0")
        if self.mask_init not in ("constant", "uniform", "kaiming"):
            raise ValueError(f"--mask_init {self.mask_init!r}: choose constant, uniform or kaiming")
        if self.mask_scores_file is not None:
            if method == "magnitude":
                raise ValueError("--mask_scores_file: magnitude pruning has no mask scores")
            if not self.mask_scores_file.is_file():
                raise ValueError(f"--mask_scores_file {self.mask_scores_file}: no such file")
        if not isinstance(self.max_train_steps, int) or self.max_train_steps < 1:
            raise ValueError(f"--max_train_steps {self.max_train_steps}: pruning needs at least one training step")

    def config(self):
        """The pruning arguments as resolved (JSON-able); a resumed run must have the same."""
        return {
            "pruning_method": self.method, "initial_threshold": self.initial_threshold,
            "final_threshold": self.final_threshold, "initial_warmup": self.initial_warmup,
            "final_warmup": self.final_warmup, "schedule_steps": self.max_train_steps,
            "mask_scores_learning_rate": self.mask_scores_learning_rate, "regularization": self.regularization,
            "final_lambda": self.final_lambda, "mask_init": self.mask_init, "mask_scale": self.mask_scale,
            "global_topk": self.global_topk, "freeze_embeddings": self.freeze_embeddings,
        }

    def check_config(self, saved):
        """Raise ValueError (one line) when a checkpoint's pruning config differs from this run's."""
        current = self.config()
        for name in sorted(set(saved) | set(current)):
            if saved.get(name) != current.get(name):
                flag = "--max_train_steps" if name == "schedule_steps" else f"--{name}"
                raise ValueError(f"resuming a pruning run with different pruning flags: {flag} was {saved.get(name)}, "
                                 f"now {current.get(name)}")

    # ---- model -----------------------------------------------------------------------------------------------------

    def setup(self, model):
        """Swap the six Linear layers of every encoder layer for MaskedLinear (in place); returns the model."""
        core = extract_model_from_parallel(model)
        base = getattr(core, "base_model", core)
        layers = getattr(getattr(base, "encoder", None), "layer", None)
        replaced = []
        for layer in layers if isinstance(layers, nn.ModuleList) else []:
            for path in ENCODER_LINEARS:
                parent_path, _, child = path.rpartition(".")
                try:
                    parent = layer.get_submodule(parent_path)
                except AttributeError:
                    continue
                linear = getattr(parent, child, None)
                if isinstance(linear, MaskedLinear):
                    replaced.append(linear)
                elif isinstance(linear, nn.Linear):
                    masked = MaskedLinear.from_linear(linear, self.method, self.mask_init, self.mask_scale)
                    setattr(parent, child, masked)
                    replaced.append(masked)
        if not replaced:
            raise ValueError(f"--pruning_method {self.method}: {type(core).__name__} has no encoder Linear layers to "
                             "mask (expected BERT's base_model.encoder.layer)")
        if self.mask_scores_file is not None:
            self._load_scores(core)
        if self.freeze_embeddings:
            embeddings = getattr(base, "embeddings", None)
            if embeddings is not None:
                embeddings.requires_grad_(False)
        self._masked = replaced
        self._apply_schedule()
        return model

    @torch.no_grad()
    def _load_scores(self, model):
        """Copy --mask_scores_file's scores into the masked layers, matched by their name from `encoder.layer.N.` on
        (so scores saved from a BERT head start a BERMo run and back); every layer must be there, with its shape."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        def key(name):
            found = ENCODER_KEY.search(name)
            return name[found.start() + (found.group(1) == "."):] if found else name

        where = f"--mask_scores_file {self.mask_scores_file}"
        try:
            saved = {key(name): tensor for name, tensor in load_file(str(self.mask_scores_file)).items()}
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"{where}: not a safetensors file ({str(error).splitlines()[0]})") from None
        for name, module in masked_modules(model):
            tensor = saved.get(key(f"{name}.mask_scores"))
            if tensor is None:
                raise ValueError(f"{where}: no scores for {key(name)}")
            if tensor.shape != module.mask_scores.shape:
                raise ValueError(f"{where}: {key(name)} has shape {tuple(tensor.shape)}, the model's is "
                                 f"{tuple(module.mask_scores.shape)}")
            module.mask_scores.copy_(tensor)

    def parameter_groups(self, model):
        """Optimizer parameter groups of the mask scores: own learning rate, no weight decay ([] for magnitude)."""
        scores = [module.mask_scores for _, module in masked_modules(model) if hasattr(module, "mask_scores")]
        if not scores:
            return []
        return [{"params": scores, "lr": self.mask_scores_learning_rate, "weight_decay": 0.0}]

    # ---- schedule --------------------------------------------------------------------------------------------------

    def _schedule(self, step):
        threshold = schedule_threshold(step, self.max_train_steps, self.initial_threshold, self.final_threshold,
                                       self.initial_warmup, self.final_warmup)
        lam = self.final_lambda * threshold / self.final_threshold if self.method in PENALTY_METHODS else None
        return threshold, lam

    def on_step(self, step):
        """Set the threshold (and lambda) of `step` completed optimizer steps on every masked layer. Call it before
        each step's forward and before every evaluation (which thus uses the current threshold, not the final one)."""
        self.step = int(step)
        self.threshold, self.lam = self._schedule(self.step)
        self._apply_schedule()

    @torch.no_grad()
    def _apply_schedule(self):
        if self.method in TOPK_METHODS:
            if self.global_topk:
                keeps = self._global_keeps()
            else:
                keeps = [keep_count(self.threshold, module.weight.numel()) for module in self._masked]
            for module, keep in zip(self._masked, keeps):
                module.keep = keep
        elif self.method == "soft_movement":
            for module in self._masked:
                module.keep = self.threshold
        for module in self._masked:
            module.schedule_step = self.step
            module.refresh_mask()

    def _global_keeps(self):
        """Per-matrix counts of the top floor(v N) values over all N masked weights (ties: module order, position)."""
        sizes = [module.weight.numel() for module in self._masked]
        total = sum(sizes)
        keep = keep_count(self.threshold, total)
        if keep >= total:
            return sizes
        values = [(m.weight.abs() if self.method == "magnitude" else m.mask_scores).detach().reshape(-1)
                  for m in self._masked]
        kth = _kth_largest(torch.cat([v.float() for v in values]), keep) if keep > 0 else math.inf
        above = [int((v > kth).sum()) for v in values]
        ties_left = keep - sum(above)
        keeps = []
        for count, flat in zip(above, values):
            ties = min(ties_left, int((flat == kth).sum())) if ties_left > 0 else 0
            ties_left -= ties
            keeps.append(count + ties)
        return keeps

    # ---- loss, figures, state --------------------------------------------------------------------------------------

    def penalty(self, model):
        """lambda(step) * the mean over masked matrices of each matrix's mean sigmoid(S) (l1) or P(gate != 0) (l0);
        None for magnitude and movement."""
        if self.regularization is None:
            return None
        terms = []
        for _, module in masked_modules(model):
            scores = module.mask_scores
            terms.append((torch.sigmoid(scores) if self.regularization == "l1" else l0_expected_nonzero(scores)).mean())
        return self.lam * torch.stack(terms).mean()

    @torch.no_grad()
    def eval_figures(self, model):
        """Figures for the evaluation record: remaining fractions of the encoder (Sanh et al.'s count: kept matrix
        weights + biases + LayerNorm over all encoder parameters) and of the whole model, threshold and lambda."""
        core = extract_model_from_parallel(model)
        modules = masked_modules(core)
        kept = sum(module.kept_count() for _, module in modules)
        masked = sum(module.weight.numel() for _, module in modules)
        encoder = getattr(getattr(core, "base_model", core), "encoder", None)
        encoder_total = sum(p.numel() for n, p in encoder.named_parameters() if not n.endswith("mask_scores"))
        model_total = sum(p.numel() for n, p in core.named_parameters() if not n.endswith("mask_scores"))
        figures = {
            "remaining_encoder_fraction": (encoder_total - masked + kept) / encoder_total,
            "remaining_model_fraction": (model_total - masked + kept) / model_total,
            "threshold": self.threshold,
            "lambda": self.lam,
        }
        self._last_figures = figures
        return figures

    def state_dict(self):
        """The schedule's position and the config (plain Python values: loads with torch.load(weights_only=True))."""
        return {"step": self.step, "config": self.config()}

    def load_state_dict(self, state):
        if "config" in state:
            self.check_config(state["config"])
        self.on_step(state["step"])

    # ---- export ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def export_masks(self, model):
        """{parameter name: mask scores} (CPU copies) for --save_masks; call before `export`."""
        return {f"{name}.mask_scores": module.mask_scores.detach().cpu().clone()
                for name, module in masked_modules(model) if hasattr(module, "mask_scores")}

    @torch.no_grad()
    def export(self, model):
        """In place: every MaskedLinear becomes a plain nn.Linear holding weight * mask at the current threshold (l0:
        the deterministic gates); the scores are gone. Returns the unwrapped model, whose state dict is plain BERT's
        (or BERMo's) and whose evaluation-mode predictions are the masked model's. Call at the end of training."""
        core = extract_model_from_parallel(model)
        for name, module in masked_modules(core):
            weight = module.weight
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                               device=weight.device, dtype=weight.dtype)
            linear.weight.copy_(weight * module.current_mask())
            if module.bias is not None:
                linear.bias.copy_(module.bias)
            linear.train(module.training)
            parent_name, _, child = name.rpartition(".")
            setattr(core.get_submodule(parent_name), child, linear)
        self._masked = []
        return core

    count_zeros = staticmethod(count_zeros)

    MASKS_FILE = "mask_scores.safetensors"

    def before_save(self, model, output_dir, is_main_process):
        """The training loop's export step: with --save_masks, the scores go to OUTPUT_DIR/mask_scores.safetensors
        (to continue pruning later); then the masks are applied and dropped (`export`). Returns the model to save."""
        if self.save_masks and is_main_process:
            from safetensors.torch import save_file

            save_file(self.export_masks(model), str(Path(output_dir) / self.MASKS_FILE))
        return self.export(model)

    def after_save(self, model, output_dir):
        """The real zeros of what was saved: OUTPUT_DIR's safetensors weights (or the exported model's state dict
        when no weights were written), as `exported_*` figures for final_metrics.json and the model card."""
        from safetensors.torch import load_file

        files = sorted(Path(output_dir).glob("model*.safetensors"))
        if files:
            state = {}
            for file in files:
                state.update(load_file(str(file)))
        else:
            state = extract_model_from_parallel(model).state_dict()
        return {f"exported_{key}": value for key, value in count_zeros(state).items()}

    def card_info(self, model=None):
        """Method, thresholds, lambda and the measured remaining fractions, for the model card."""
        figures = self.eval_figures(model) if model is not None and masked_modules(model) else self._last_figures
        return {
            "pruning_method": self.method, "initial_threshold": self.initial_threshold,
            "final_threshold": self.final_threshold, "initial_warmup": self.initial_warmup,
            "final_warmup": self.final_warmup, "regularization": self.regularization,
            "final_lambda": self.final_lambda, "global_topk": self.global_topk, "threshold": self.threshold,
            "lambda": self.lam,
            "remaining_encoder_fraction": figures.get("remaining_encoder_fraction"),
            "remaining_model_fraction": figures.get("remaining_model_fraction"),
        }


def check_resume_config(saved_config, pruner):
    """Refuse to resume a pruning run without pruning flags, a plain run with them, or one with different flags."""
    if saved_config is None and pruner is None:
        return
    if pruner is None:
        raise ValueError(f"the checkpoint is from a pruning run (--pruning_method {saved_config['pruning_method']}); "
                         "resume it with the same pruning flags")
    if saved_config is None:
        raise ValueError(f"--pruning_method {pruner.method}: the checkpoint is from a run without pruning")
    pruner.check_config(saved_config)
