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

The package, as emmental and nn_pruning separate it:

    masks.py     mask functions of scores and thresholds, the straight-through estimator, the cubic schedule
    modules.py   MaskedLinear, finding masked modules, counting an exported state dict's zeros
    patching.py  swapping the encoder's Linear layers for masked ones, loading saved scores, export
    feature.py   PruningFeature: the training loop's feature (arguments: bermo.arguments.PruningArguments), and
                 StructuredPruningFeature for --pruning_granularity head,neuron,layer (what from_arguments builds)
    structure.py structured masks: one score per attention head, FFN neuron or layer, their ranking and counts
    shrink.py    the structured export: heads, neurons and layers removed, per-layer sizes in the config
"""

from ..arguments import PENALTY_METHODS, PRUNING_METHODS, TOPK_METHODS, PruningArguments
from .feature import DEFAULTS, REMAINING_FIGURES, PruningFeature, StructuredPruningFeature
from .masks import keep_count, l0_expected_nonzero, l0_gates, schedule_threshold, threshold_mask, topk_mask
from .modules import ENCODER_KEY, ENCODER_LINEARS, ENCODER_MATRIX_KEY, MaskedLinear, count_zeros, masked_modules
from .patching import export_mask_scores, export_masked_model, load_mask_scores, mask_encoder_linears
from .shrink import shrink_model
from .structure import mask_encoder_structures, parse_granularity

METHODS = PRUNING_METHODS

__all__ = [
    "DEFAULTS", "ENCODER_KEY", "ENCODER_LINEARS", "ENCODER_MATRIX_KEY", "METHODS", "PENALTY_METHODS",
    "REMAINING_FIGURES", "TOPK_METHODS", "MaskedLinear", "PruningArguments", "PruningFeature", "count_zeros",
    "export_mask_scores", "export_masked_model", "keep_count", "l0_expected_nonzero", "l0_gates", "load_mask_scores",
    "mask_encoder_linears", "masked_modules", "schedule_threshold", "threshold_mask", "topk_mask",
    "StructuredPruningFeature", "mask_encoder_structures", "parse_granularity", "shrink_model",
]
