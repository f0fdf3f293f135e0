"""The masked layer and what counts it: `MaskedLinear` keeps nn.Linear's `weight`/`bias` (state dicts stay BERT-shaped)
and adds `mask_scores`; `count_zeros` counts an exported state dict the way Sanh et al.'s `counts_parameters.py` does.
"""

import math
import re

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import nn

from ..arguments import MASK_INITS, PRUNING_METHODS
from .masks import StraightThroughMask, l0_gates, threshold_mask, topk_mask

# The six Linear layers of a BERT encoder layer, relative to the layer.
# The six Linear layers of an encoder layer, by path inside `encoder.layer.N`: BERT's, which RoBERTa, XLM-R and
# ELECTRA share; DeBERTa-v2 names its projections query_proj/key_proj/value_proj. (DistilBERT and ModernBERT lay out
# their layers otherwise: not described, so not masked.)
ENCODER_LINEARS = (
    "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
    "intermediate.dense", "output.dense",
)
DEBERTA_V2_ENCODER_LINEARS = (
    "attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj", "attention.output.dense",
    "intermediate.dense", "output.dense",
)
ENCODER_LINEAR_LAYOUTS = (ENCODER_LINEARS, DEBERTA_V2_ENCODER_LINEARS)
ENCODER_KEY = re.compile(r"(^|\.)encoder\.layer\.\d+\.")
ENCODER_MATRIX_KEY = re.compile(
    r"(^|\.)encoder\.layer\.\d+\.(attention\.self\.(query|key|value)(_proj)?|attention\.output\.dense|intermediate\.dense"
    r"|output\.dense)\.weight$"
)


@torch.no_grad()
def init_scores(scores, mask_init, mask_scale):
    """Fill a scores parameter as --mask_init and --mask_scale say (kaiming: as nn.Linear's weights; a 1-d tensor of
    structure scores is treated as one row)."""
    if mask_init == "constant":
        nn.init.constant_(scores, mask_scale)
    elif mask_init == "uniform":
        nn.init.uniform_(scores, -mask_scale, mask_scale)
    elif mask_init == "kaiming":
        if scores.dim() == 1:
            nn.init.kaiming_uniform_(scores.view(1, -1), a=math.sqrt(5))
        else:
            nn.init.kaiming_uniform_(scores, a=math.sqrt(5))
    else:
        raise ValueError(f"--mask_init {mask_init!r}: choose {', '.join(MASK_INITS)}")


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
        if method not in PRUNING_METHODS:
            raise ValueError(f"--pruning_method {method!r}: unknown; choose one of {', '.join(PRUNING_METHODS)}")
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

    def init_scores(self, mask_init, mask_scale):
        init_scores(self.mask_scores, mask_init, mask_scale)

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
        return StraightThroughMask.apply(self.weight, self.mask_scores, mask)

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
