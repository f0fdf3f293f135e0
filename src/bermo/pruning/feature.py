"""Pruning as a feature of the training loop: the schedule, the penalty, the figures, the state, the export.

The threshold (and lambda) follow the cubic schedule of Sanh et al., a pure function of the step
(`schedule_threshold`); the penalty is each matrix's mean (sigmoid(S) for l1, the gates' probability of being non-zero
for l0), averaged over the matrices and multiplied by lambda(step) = final_lambda * threshold(step) / final_threshold,
as emmental does.

`PruningFeature` masks single weights (--pruning_granularity weight); `StructuredPruningFeature` (what
`from_arguments` builds for head/neuron/layer) reuses its schedule, validation, penalty weight and resume checks, and
masks whole structures instead: thresholds then count structures, and the export is the smaller model. Weight and
structured masks do not combine (a weight mask's zeros would be left in the smaller model).
"""

import math
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel

from ..arguments import (
    LAYER_METHODS, MASK_INITS, PENALTY_METHODS, PRUNING_METHODS, STRUCTURED_METHODS, TOPK_METHODS, PruningArguments,
    changed_fields,
)
from ..features import TrainingFeature, register_feature
from .masks import (
    keep_count, kth_largest, l0_expected_nonzero, l0_gates, schedule_threshold, threshold_mask, topk_mask,
)
from .modules import ENCODER_KEY, count_zeros, masked_modules
from .patching import export_mask_scores, export_masked_model, load_mask_scores, mask_encoder_linears
from .shrink import shrink_model
from .structure import (
    EncoderStructures, kept_parameter_counts, kept_structure, magnitudes, mask_encoder_structures, parse_granularity,
)

DEFAULTS = {  # per-method defaults of the flags left unset (emmental's README recipes)
    "initial_threshold": {"magnitude": 1.0, "movement": 1.0, "soft_movement": 0.0, "l0": 1.0},
    "final_threshold": {"magnitude": 0.7, "movement": 0.7, "soft_movement": 0.1, "l0": 1.0},
    "mask_scale": {"magnitude": 0.0, "movement": 0.0, "soft_movement": 0.0, "l0": 2.197},
}
# the figures of `eval_figures` drawn in the learning-curve plot's pruning panel
REMAINING_FIGURES = ("remaining_encoder_fraction", "remaining_model_fraction")


@register_feature
class PruningFeature(TrainingFeature):
    """Prune the encoder's Linear layers while fine-tuning (magnitude, movement, soft movement, L0).

        feature = PruningFeature.from_arguments(PruningArguments(...), max_train_steps)   # None: no pruning
        model = feature.setup(model)               # before the optimizer; then the loop drives the hooks
    """

    name = "pruning"
    arguments = PruningArguments
    MASKS_FILE = "mask_scores.safetensors"

    def __init__(self, arguments, max_train_steps):
        method = arguments.pruning_method
        if method not in PRUNING_METHODS:
            raise ValueError(f"--pruning_method {method!r}: unknown; choose one of {', '.join(PRUNING_METHODS)}")
        self.method = method
        self.initial_threshold = float(DEFAULTS["initial_threshold"][method] if arguments.initial_threshold is None
                                       else arguments.initial_threshold)
        self.final_threshold = float(DEFAULTS["final_threshold"][method] if arguments.final_threshold is None
                                     else arguments.final_threshold)
        self.initial_warmup, self.final_warmup = float(arguments.initial_warmup), float(arguments.final_warmup)
        self.max_train_steps = max_train_steps
        self.mask_scores_learning_rate = float(arguments.mask_scores_learning_rate)
        self.regularization, self.final_lambda = arguments.regularization, arguments.final_lambda
        self.mask_init = arguments.mask_init
        self.mask_scale = float(DEFAULTS["mask_scale"][method] if arguments.mask_scale is None
                                else arguments.mask_scale)
        self.global_topk = bool(arguments.global_topk)
        self.freeze_embeddings, self.save_masks = bool(arguments.freeze_embeddings), bool(arguments.save_masks)
        self.mask_scores_file = None if arguments.mask_scores_file is None else Path(arguments.mask_scores_file)
        self.granularity = parse_granularity(arguments.pruning_granularity)
        self._validate()
        self.step = 0
        self.threshold, self.lam = self._schedule(0)
        self._masked = []
        self._last_figures = {}

    @classmethod
    def from_arguments(cls, arguments, max_train_steps):
        """None without --pruning_method (and a ValueError for pruning flags given without it); bad input raises
        ValueError (one line, naming the flag) before anything is built or written."""
        if arguments.pruning_method is None:
            unused = changed_fields(arguments)
            if unused:
                raise ValueError(f"--{next(iter(unused))} needs --pruning_method")
            return None
        if parse_granularity(arguments.pruning_granularity) != ("weight",):
            return StructuredPruningFeature(arguments, max_train_steps)
        return cls(arguments, max_train_steps)

    def _validate(self):
        method = self.method
        if self.granularity != ("weight",) and not isinstance(self, StructuredPruningFeature):
            raise ValueError(f"--pruning_granularity {','.join(self.granularity)}: build the feature with "
                             "PruningFeature.from_arguments(...) (or StructuredPruningFeature)")
        for name, value in (("initial_threshold", self.initial_threshold), ("final_threshold", self.final_threshold)):
            if method == "soft_movement":
                low_ok = value >= 0 if name == "initial_threshold" else value > 0
                if not (low_ok and value < 1):
                    interval = "[0, 1)" if name == "initial_threshold" else "(0, 1)"
                    raise ValueError(f"--{name} {value}: soft_movement's threshold on sigmoid(scores) must be in "
                                     f"{interval}")
            elif not 0 < value <= 1:
                what = "the fraction of weights kept" if method in TOPK_METHODS else "the threshold"
                raise ValueError(f"--{name} {value}: {what} must be in (0, 1]")
        self._validate_penalty()
        for name, value in (("initial_warmup", self.initial_warmup), ("final_warmup", self.final_warmup)):
            if not 0 <= value <= 1:
                raise ValueError(f"--{name} {value}: a fraction of the training steps in [0, 1] (e.g. 0.1)")
        if self.initial_warmup + self.final_warmup > 1:
            raise ValueError(f"--initial_warmup {self.initial_warmup} + --final_warmup {self.final_warmup}: the "
                             "warm-ups are longer than training (fractions of it; they must add up to at most 1)")
        if not self.mask_scores_learning_rate > 0:
            raise ValueError(f"--mask_scores_learning_rate {self.mask_scores_learning_rate}: must be > 0")
        if self.mask_init not in MASK_INITS:
            raise ValueError(f"--mask_init {self.mask_init!r}: choose {', '.join(MASK_INITS)}")
        if self.mask_scores_file is not None:
            if method == "magnitude":
                raise ValueError("--mask_scores_file: magnitude pruning has no mask scores")
            if not self.mask_scores_file.is_file():
                raise ValueError(f"--mask_scores_file {self.mask_scores_file}: no such file")
        if not isinstance(self.max_train_steps, int) or self.max_train_steps < 1:
            raise ValueError(f"--max_train_steps {self.max_train_steps}: pruning needs at least one training step")

    def _validate_penalty(self):
        method = self.method
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

    # ---- configuration and resuming --------------------------------------------------------------------------------

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

    def check_resume(self, saved_config):
        """Refuse a checkpoint of a run without pruning, or with other pruning flags (naming the first that differs)."""
        if saved_config is None:
            raise ValueError(f"--pruning_method {self.method}: the checkpoint is from a run without pruning")
        current = self.config()
        defaults = {"pruning_granularity": "weight"}  # recorded only for structured runs
        for name in sorted(set(saved_config) | set(current)):
            if saved_config.get(name, defaults.get(name)) != current.get(name, defaults.get(name)):
                flag = "--max_train_steps" if name == "schedule_steps" else f"--{name}"
                raise ValueError(f"resuming a pruning run with different pruning flags: {flag} was "
                                 f"{saved_config.get(name, defaults.get(name))}, now "
                                 f"{current.get(name, defaults.get(name))}")

    @classmethod
    def describe_missing(cls, saved_config):
        """Why a checkpoint of a pruning run cannot resume without pruning flags (the loop's message for a feature
        that was on when the checkpoint was saved and is off now)."""
        return (f"the checkpoint is from a pruning run (--pruning_method {saved_config['pruning_method']}); resume "
                "it with the same pruning flags")

    def state_dict(self):
        """The schedule's position and the config (plain Python values: loads with torch.load(weights_only=True))."""
        return {"step": self.step, "config": self.config()}

    def load_state_dict(self, state):
        if "config" in state:
            self.check_resume(state["config"])
        self.on_step(state["step"])

    # ---- model -----------------------------------------------------------------------------------------------------

    def setup(self, model):
        """Swap the six Linear layers of every encoder layer for MaskedLinear (in place); returns the model."""
        self._masked = mask_encoder_linears(model, self.method, self.mask_init, self.mask_scale)
        if self.mask_scores_file is not None:
            load_mask_scores(extract_model_from_parallel(model), self.mask_scores_file)
        self._freeze_embeddings(model)
        self._apply_schedule()
        return model

    def _freeze_embeddings(self, model):
        if self.freeze_embeddings:
            core = extract_model_from_parallel(model)
            embeddings = getattr(getattr(core, "base_model", core), "embeddings", None)
            if embeddings is not None:
                embeddings.requires_grad_(False)

    def parameter_groups(self, model):
        """Optimizer parameter groups of the mask scores: own learning rate, no weight decay ([] for magnitude)."""
        scores = self._scores(model)
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
        """Set the threshold (and lambda) of `step` completed optimizer steps on every masked layer. Called before
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
        kth = kth_largest(torch.cat([v.float() for v in values]), keep) if keep > 0 else math.inf
        above = [int((v > kth).sum()) for v in values]
        ties_left = keep - sum(above)
        keeps = []
        for count, flat in zip(above, values):
            ties = min(ties_left, int((flat == kth).sum())) if ties_left > 0 else 0
            ties_left -= ties
            keeps.append(count + ties)
        return keeps

    # ---- loss and figures ------------------------------------------------------------------------------------------

    def _scores(self, model):
        """The learned mask scores, one tensor per masked matrix ([] for magnitude)."""
        return [module.mask_scores for _, module in masked_modules(model) if hasattr(module, "mask_scores")]

    def penalty(self, model):
        """lambda(step) * the mean over masked matrices of each matrix's mean sigmoid(S) (l1) or P(gate != 0) (l0);
        None for magnitude and movement."""
        if self.regularization is None:
            return None
        terms = []
        for scores in self._scores(model):
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

    def plot_panels(self):
        return [("remaining weights", list(REMAINING_FIGURES))]

    # ---- export ----------------------------------------------------------------------------------------------------

    def export_masks(self, model):
        """{parameter name: mask scores} (CPU copies) for --save_masks; call before `export`."""
        return export_mask_scores(model)

    def export(self, model):
        """In place: the masks applied at the current threshold and dropped (see `export_masked_model`). Returns the
        unwrapped model. Call at the end of training."""
        self._masked = []
        return export_masked_model(model)

    count_zeros = staticmethod(count_zeros)

    def before_save(self, model, output_dir, is_main_process):
        """With --save_masks, the scores go to OUTPUT_DIR/mask_scores.safetensors (to continue pruning later); then
        the masks are applied and dropped (`export`). Returns the model to save."""
        if self.save_masks and is_main_process:
            from safetensors.torch import save_file

            save_file(self.export_masks(model), str(Path(output_dir) / self.MASKS_FILE))
        return self.export(model)

    def after_save(self, model, output_dir):
        """The real zeros of what was saved: OUTPUT_DIR's safetensors weights (or the exported model's state dict
        when no weights were written), as `exported_*` figures for final_metrics.json and the model card."""
        return {f"exported_{key}": value for key, value in count_zeros(saved_state(model, output_dir)).items()}

    def card_info(self):
        """Method, thresholds, lambda and the measured remaining fractions (of the last evaluation), for the card."""
        figures = self._last_figures
        return {
            "pruning_method": self.method, "initial_threshold": self.initial_threshold,
            "final_threshold": self.final_threshold, "initial_warmup": self.initial_warmup,
            "final_warmup": self.final_warmup, "regularization": self.regularization,
            "final_lambda": self.final_lambda, "global_topk": self.global_topk, "threshold": self.threshold,
            "lambda": self.lam,
            "remaining_encoder_fraction": figures.get("remaining_encoder_fraction"),
            "remaining_model_fraction": figures.get("remaining_model_fraction"),
        }


def saved_weight_files(output_dir):
    return sorted(Path(output_dir).glob("model*.safetensors"))


def saved_state(model, output_dir):
    """OUTPUT_DIR's safetensors weights, or the model's state dict when no weights were written."""
    from safetensors.torch import load_file

    files = saved_weight_files(output_dir)
    if not files:
        return extract_model_from_parallel(model).state_dict()
    state = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


class StructuredPruningFeature(PruningFeature):
    """Prune whole attention heads, FFN neurons and encoder layers (--pruning_granularity head,neuron,layer); the
    export removes them (`bermo.pruning.shrink`). The masks, scores and their ranking: `bermo.pruning.structure`.

    The schedule, warm-ups, penalty weight and resuming are the weight-level feature's; thresholds count structures.
    """

    def __init__(self, arguments, max_train_steps):
        super().__init__(arguments, max_train_steps)
        self.structures = None
        self._dense_encoder_parameters = None

    def _validate(self):
        super()._validate()
        granularity = ",".join(self.granularity)
        if self.method not in STRUCTURED_METHODS:
            raise ValueError(f"--pruning_method {self.method} with --pruning_granularity {granularity}: choose "
                             f"{', '.join(STRUCTURED_METHODS)}")
        if "layer" in self.granularity and self.method not in LAYER_METHODS:
            raise ValueError(f"--pruning_method {self.method} with --pruning_granularity {granularity}: L0 gates on "
                             f"whole layers are not implemented; prune layers with {', '.join(LAYER_METHODS)}")
        if self.save_masks or self.mask_scores_file is not None:
            flag = "--save_masks" if self.save_masks else "--mask_scores_file"
            raise ValueError(f"{flag}: only for --pruning_granularity weight (a structured export is already the "
                             "smaller model)")

    def config(self):
        return {**super().config(), "pruning_granularity": ",".join(self.granularity)}

    def card_info(self):
        return {**super().card_info(), "pruning_granularity": ",".join(self.granularity)}

    def setup(self, model):
        """Give every encoder layer its structure masks (in place); returns the model."""
        config = extract_model_from_parallel(model).config
        family = getattr(config, "backbone_model_type", None) if config.model_type == "bermo" else config.model_type
        if family != "bert":
            raise ValueError(f"--pruning_granularity {','.join(self.granularity)}: structured pruning exports per-layer "
                             f"sizes for BERT and BERMo on BERT only, not {family}; use --pruning_granularity weight")
        self.structures = mask_encoder_structures(extract_model_from_parallel(model), self.granularity, self.method,
                                                  self.mask_init, self.mask_scale)
        layers = len(self.structures.layers)
        if "layer" in self.granularity and self.method != "soft_movement" and keep_count(self.final_threshold,
                                                                                           layers) < 1:
            raise ValueError(f"--final_threshold {self.final_threshold}: keeps no layer of {layers} (at least "
                             f"{1 / layers:.3g} keeps one)")
        self._dense_encoder_parameters = kept_parameter_counts(self.structures)[1]
        self._freeze_embeddings(model)
        self._apply_schedule()
        return model

    def _scores(self, model):
        if self.structures is None:
            return []
        return [mask.scores for mask in self.structures.all_masks() if hasattr(mask, "scores")]

    def _select(self, values):
        """The mask of structures with these values at the current threshold (l0: the deterministic gates)."""
        if self.method == "l0":
            return l0_gates(values, training=False)
        if self.method == "soft_movement":
            return threshold_mask(values, self.threshold)
        return topk_mask(values, keep_count(self.threshold, values.numel()))

    def _apply_schedule(self):
        if self.structures is not None:
            self._set_masks(self.structures)

    @torch.no_grad()
    def _set_masks(self, structures):
        """Every structure mask at the current threshold, from the scores (or magnitudes) as they are."""
        for kind, masks in structures.masks.items():
            values = [magnitudes(layer, kind) if self.method == "magnitude" else mask.scores.detach().float()
                      for layer, mask in zip(structures.layers, masks)]
            if kind == "layer" or self.global_topk:  # one ranking over the model
                selected = self._select(torch.cat(values)).split([mask.count for mask in masks])
            else:
                selected = [self._select(value) for value in values]
            for mask, chosen in zip(masks, selected):
                mask.mask.copy_(chosen)

    @torch.no_grad()
    def eval_figures(self, model):
        """Remaining fractions of the encoder and model parameters as the export would have them, and of each kind of
        structure; threshold and lambda."""
        core = extract_model_from_parallel(model)
        scores = {id(score) for score in self._scores(core)}
        kept, dense = kept_parameter_counts(self.structures)
        model_total = sum(p.numel() for p in core.parameters() if id(p) not in scores)
        figures = {
            "remaining_encoder_fraction": kept / dense,
            "remaining_model_fraction": (model_total - dense + kept) / model_total,
            "threshold": self.threshold,
            "lambda": self.lam,
        }
        for kind, masks in self.structures.masks.items():
            figures[f"remaining_{kind}_fraction"] = (sum(int((mask.mask != 0).sum()) for mask in masks)
                                                     / sum(mask.count for mask in masks))
        self._last_figures = figures
        return figures

    def kept_structure(self):
        """[(layer kept, kept heads or None, kept neurons or None)] per encoder layer at the current setting."""
        return kept_structure(self.structures)

    def export(self, model):
        """In place where it can: the masked heads, neurons and layers removed (see `shrink_model`), at the current
        threshold from the given model's own scores or weights (it may be a copy of the trained one, e.g. the
        unsharded copy an FSDP run saves from). Returns the model to save (for a BERT model whose structure changed, a
        BERMo model). Call at the end of training."""
        structures = EncoderStructures.of(extract_model_from_parallel(model), self.granularity)
        self._set_masks(structures)
        self.structures = None
        return shrink_model(model, structures)

    def after_save(self, model, output_dir):
        """What was saved: parameters (all, encoder layers), safetensors bytes, the encoder layers' remaining fraction
        against the model before pruning, and the kept structure (also recorded in the config)."""
        state = saved_state(model, output_dir)
        encoder = sum(tensor.numel() for name, tensor in state.items() if ENCODER_KEY.search(name))
        config = extract_model_from_parallel(model).config
        layers = config.num_hidden_layers
        return {
            "exported_parameters": sum(tensor.numel() for tensor in state.values()),
            "exported_encoder_parameters": encoder,
            "exported_safetensors_bytes": sum(file.stat().st_size for file in saved_weight_files(output_dir)),
            "exported_remaining_encoder_fraction": encoder / self._dense_encoder_parameters,
            "exported_num_hidden_layers": layers,
            "exported_layer_num_attention_heads": (getattr(config, "layer_num_attention_heads", None)
                                                   or [config.num_attention_heads] * layers),
            "exported_layer_intermediate_sizes": (getattr(config, "layer_intermediate_sizes", None)
                                                  or [config.intermediate_size] * layers),
            "exported_kept_layers": getattr(config, "kept_layers", None) or list(range(layers)),
        }
