"""A fine-tuning run's settings as typed values: dataclasses parsed by transformers' `HfArgumentParser`.

    finetune.py --model_name_or_path ./minilm --task_name sst2 --glue_dir glue --output_dir out   # flags
    finetune.py run.json                                                                         # or a JSON file

A run is a `RunArguments`: the data, model, optimization and output settings, plus the arguments of every feature
of the loop (pruning, ...) by feature name. The experiments build runs as these values (`dataclasses.replace`)
and hand them to the loop typed; `run_to_dict` / `run_from_dict` turn a run into the flat JSON object that a
`run.json` file holds (one key per flag) and back. This module imports neither torch nor the loop: the names that
both sides need (pruning methods, model types, ...) live here.

Every flag of the argparse era keeps its spelling: booleans take `--flag`, `--flag false` and `--no-flag`
(`--no_flag`, `--no-flag-with-dashes` too); `--regression` / `--classification` set `--label_type`.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

MODEL_TYPES = ("bermo", "base", "bert")  # "bert": the name "base" had before other families, kept as an alias
LABEL_TYPES = ("regression", "classification")
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
PRUNING_METHODS = ("magnitude", "movement", "soft_movement", "l0")
TOPK_METHODS = ("magnitude", "movement")
PENALTY_METHODS = ("soft_movement", "l0")
REGULARIZATIONS = ("l1", "l0")
MASK_INITS = ("constant", "uniform", "kaiming")
STRUCTURES = ("head", "neuron", "layer")  # --pruning_granularity: weight, or a comma-separated set of these
STRUCTURED_METHODS = PRUNING_METHODS  # l0 on heads and neurons; layers take the others
LAYER_METHODS = TOPK_METHODS + ("soft_movement",)

# The mix gets its own learning rate: with Adam a parameter moves about `lr` per step whatever its gradient, so at a
# backbone rate of 1e-4 the mix logits would move ~0.004 in 40 steps (softmax weights by < 0.001): frozen in practice.
DEFAULT_MIX_LEARNING_RATE = 1e-2
DEFAULT_INITIAL_WARMUP, DEFAULT_FINAL_WARMUP = 0.1, 0.2
DEFAULT_MASK_SCORES_LEARNING_RATE = 1e-2


def _help(text, **extra):
    return field(metadata={"help": text, **extra.pop("metadata", {})}, **extra)


@dataclass
class DataArguments:
    _argument_group_name = "data"

    task_name: Optional[str] = _help("GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli", default=None)
    glue_dir: Optional[str] = _help("GLUE's folder of TSVs (the root with CoLA/, SST-2/, ... or one task's)",
                                    default=None)
    train_file: Optional[str] = _help("training data: csv, tsv, json or jsonl", default=None)
    validation_file: Optional[str] = _help("validation data, same columns as the training data", default=None)
    test_file: Optional[str] = _help("data to predict (labels optional); predictions go to OUTPUT_DIR", default=None)
    text_columns: Optional[list[str]] = _help("one or two text columns (default: detected)", default=None)
    label_column: Optional[str] = _help("the label column (default: label, labels, score or gold_label)",
                                        default=None)
    label_type: Optional[Literal[LABEL_TYPES]] = _help(
        "regression or classification (also --regression / --classification); default: decided by the label "
        "column's type: float columns are regression, integer and string columns classes", default=None)
    max_length: int = _help("tokens per example, truncated beyond", default=128)
    pad_to_max_length: bool = _help("pad every example to --max_length (default: pad each batch to its longest)",
                                    default=False)


@dataclass
class ModelArguments:
    _argument_group_name = "model"

    model_name_or_path: Optional[str] = _help(
        "a BERMo checkpoint or a vanilla one of a supported encoder family (BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT, "
        "DeBERTa-v2, ModernBERT): folder or Hub id (required)", default=None)
    model_type: Literal[MODEL_TYPES] = _help(
        "bermo (default; a vanilla checkpoint is converted on the fly) or base: the vanilla model of the checkpoint's "
        "family, for comparisons from the same weights ('bert' is an alias of base)", default="bermo")
    mix_init: str = _help(
        "initial layer mix when converting a BERT checkpoint on the fly: uniform (the paper's), last (all weight on "
        "the last layer: BERT's outputs), or last:P (weight P on the last layer, the rest spread evenly, e.g. "
        "last:0.9)", default="uniform")
    mix_dropout: Optional[float] = _help(
        "layer dropout on the mix in training, in [0, 1) (UDify uses 0.1): each representation is left out of a "
        "step's softmax with this probability, never all; default: the checkpoint's (0 for a BERT checkpoint)",
        default=None)
    trust_remote_code: bool = _help(
        "allow the checkpoint's own modeling code (needed for BERMo checkpoints without bermo)", default=False)


@dataclass
class OptimizationArguments:
    _argument_group_name = "optimization"

    per_device_train_batch_size: int = _help("training examples per process and step", default=8)
    per_device_eval_batch_size: int = _help("evaluation examples per process and batch", default=8)
    learning_rate: float = _help("AdamW's learning rate of the transformer and the head", default=5e-5)
    mix_learning_rate: float = _help(
        f"learning rate of the layer mix (no weight decay; default {DEFAULT_MIX_LEARNING_RATE})",
        default=DEFAULT_MIX_LEARNING_RATE)
    weight_decay: float = _help("decay of the weight matrices (dim >= 2)", default=0.0)
    num_train_epochs: int = _help("epochs of training (unless --max_train_steps)", default=3)
    max_train_steps: Optional[int] = _help("total optimizer steps; overrides --num_train_epochs", default=None)
    gradient_accumulation_steps: int = _help("batches per optimizer step", default=1)
    lr_scheduler_type: Literal[LR_SCHEDULERS] = _help("the learning-rate schedule", default="linear")
    num_warmup_steps: int = _help("learning-rate warm-up steps", default=0)
    seed: int = _help("seed of the head's initialization, the data order and dropout", default=42)


@dataclass
class OutputArguments:
    _argument_group_name = "output"

    output_dir: Optional[str] = _help("where the model, metrics.jsonl, plots and checkpoints go (required)",
                                      default=None)
    overwrite_output_dir: bool = _help("replace a non-empty output_dir", default=False)
    eval_steps: Optional[int] = _help("evaluate every N optimizer steps (and always at the end)", default=None)
    checkpointing_steps: Optional[str] = _help("save the training state every N steps, or 'epoch'", default=None)
    resume_from_checkpoint: Optional[str] = _help("a saved state folder, or 'latest' in output_dir", default=None)
    save_model: bool = _help("save the final model, tokenizer and card (--no-save_model: metrics and plots only, "
                             "e.g. for experiment grids)", default=True)
    save_eval_predictions: bool = _help(
        "write every evaluation's per-example predictions and references to OUTPUT_DIR/eval_predictions.jsonl (for "
        "paired statistics across runs)", default=False)
    with_tracking: bool = _help("log metrics to the trackers", default=False)
    report_to: str = _help("trackers for --with_tracking (tensorboard, wandb, ...)", default="all")
    push_to_hub: bool = _help("push the final model to the Hub", default=False)
    hub_model_id: Optional[str] = _help("the Hub repository to push to", default=None)
    hub_token: Optional[str] = _help("Hub token (default: HF_TOKEN or the cached login)", default=None)


@dataclass
class PruningArguments:
    """Pruning while fine-tuning (Sanh et al. 2020; emmental's flag names); see `bermo.pruning`."""

    _argument_group_name = "pruning"

    pruning_method: Optional[Literal[PRUNING_METHODS]] = _help(
        "magnitude (top |W|), movement (top learned scores), soft_movement (sigmoid(scores) > threshold, L1 penalty) "
        "or l0 (hard-concrete gates, L0 penalty); default: no pruning (e.g. --pruning_method movement)", default=None)
    pruning_granularity: str = _help(
        "what is pruned: weight (single weights; the export is a dense checkpoint with zeros) or a comma-separated "
        "set of head, neuron, layer (whole attention heads, FFN neurons, encoder layers; the export is a smaller "
        "model, a BERMo checkpoint with per-layer sizes). With structures the thresholds count structures: "
        "--final_threshold is the kept fraction of heads, of neurons, of layers (per layer, or over all layers with "
        "--global_topk; layers always over all). weight does not combine with the others; l0 gates heads and neurons, "
        "not layers (e.g. --pruning_method movement --pruning_granularity head,neuron --final_threshold 0.5)", default="weight")
    initial_threshold: Optional[float] = _help(
        "threshold at the start: for magnitude/movement the fraction of each matrix kept, in (0, 1]; for "
        "soft_movement the threshold on sigmoid(scores), in [0, 1); for l0 it only shapes lambda, in (0, 1]. "
        "Default 1 (soft_movement 0) (e.g. --initial_threshold 1)", default=None)
    final_threshold: Optional[float] = _help(
        "threshold at the end, same meaning: e.g. --final_threshold 0.15 keeps 15%% of each encoder matrix with "
        "movement. Default 0.7 (magnitude/movement), 0.1 (soft_movement), 1 (l0)", default=None)
    initial_warmup: float = _help(
        "fraction of the optimizer steps held at --initial_threshold before the cubic schedule starts (a fraction, "
        f"not emmental's warm-up units; default {DEFAULT_INITIAL_WARMUP}, e.g. --initial_warmup 0.1)",
        default=DEFAULT_INITIAL_WARMUP)
    final_warmup: float = _help(
        f"fraction of the optimizer steps held at --final_threshold at the end (default {DEFAULT_FINAL_WARMUP}, e.g. "
        "--final_warmup 0.2); the two warm-ups add up to at most 1", default=DEFAULT_FINAL_WARMUP)
    mask_scores_learning_rate: float = _help(
        "learning rate of the mask scores (own group, no weight decay, the same LR schedule; default "
        f"{DEFAULT_MASK_SCORES_LEARNING_RATE}, e.g. --mask_scores_learning_rate 1e-2)",
        default=DEFAULT_MASK_SCORES_LEARNING_RATE)
    regularization: Optional[Literal[REGULARIZATIONS]] = _help(
        "penalty of soft_movement (l1 on sigmoid(scores)) and l0 (expected L0 norm), needed by those methods (e.g. "
        "--regularization l1)", default=None)
    final_lambda: Optional[float] = _help(
        "penalty weight at the end; lambda follows the threshold schedule (lambda = final_lambda * threshold / "
        "final_threshold), needed by soft_movement and l0 (e.g. --final_lambda 400)", default=None)
    mask_init: Literal[MASK_INITS] = _help("initialization of the scores (e.g. --mask_init constant)",
                                           default="constant")
    mask_scale: Optional[float] = _help(
        "the constant, or the half-width of the uniform initialization (default 0; 2.197 for l0, i.e. sigmoid 0.9; "
        "e.g. --mask_scale 0)", default=None)
    global_topk: bool = _help(
        "magnitude/movement: keep the top fraction over all encoder matrices together instead of per matrix (e.g. "
        "--global_topk)", default=False)
    freeze_embeddings: bool = _help("do not train the embeddings while pruning, as Sanh et al. (e.g. "
                                    "--freeze_embeddings)", default=False)
    save_masks: bool = _help("also save the mask scores beside the exported model, to continue pruning later (e.g. "
                             "--save_masks)", default=False)
    mask_scores_file: Optional[str] = _help(
        "start the mask scores from a --save_masks file (mask_scores.safetensors) instead of --mask_init, to "
        "continue pruning a saved model; not for magnitude (e.g. --mask_scores_file "
        "out/sst2-movement/mask_scores.safetensors)", default=None)


DEFAULT_DISTILLATION_TEMPERATURE, DEFAULT_DISTILLATION_ALPHA = 2.0, 0.5


@dataclass
class DistillationArguments:
    """Knowledge distillation from a fine-tuned teacher (Hinton et al. 2015; the recipe of Sanh et al.'s emmental)."""

    _argument_group_name = "distillation"

    teacher_name_or_path: Optional[str] = _help(
        "a fine-tuned model of the same task and labels (BERT or BERMo, folder or Hub id) whose logits the student "
        "also learns from; default: no distillation (e.g. --teacher_name_or_path out/sst2-bert)", default=None)
    distillation_temperature: float = _help(
        "softmax temperature T of both models' logits; the KL term is scaled by T^2 (default "
        f"{DEFAULT_DISTILLATION_TEMPERATURE}, e.g. --distillation_temperature 2)",
        default=DEFAULT_DISTILLATION_TEMPERATURE)
    distillation_alpha: float = _help(
        "weight of the distillation term: loss = alpha * KL (MSE for regression) + (1 - alpha) * task loss (default "
        f"{DEFAULT_DISTILLATION_ALPHA}, e.g. --distillation_alpha 0.5)", default=DEFAULT_DISTILLATION_ALPHA)


# The loop's own settings, in the order of `RunArguments`' fields and of the parser's help.
LOOP_ARGUMENTS = {"data": DataArguments, "model": ModelArguments, "optim": OptimizationArguments,
                  "output": OutputArguments}


@dataclass
class RunArguments:
    """One fine-tuning run: the loop's settings and, by feature name, the arguments of its features."""

    data: DataArguments = field(default_factory=DataArguments)
    model: ModelArguments = field(default_factory=ModelArguments)
    optim: OptimizationArguments = field(default_factory=OptimizationArguments)
    output: OutputArguments = field(default_factory=OutputArguments)
    features: dict = field(default_factory=dict)  # {feature name: its arguments dataclass}


def names(dataclass_type):
    return [f.name for f in dataclasses.fields(dataclass_type)]


def from_namespace(dataclass_type, namespace, **overrides):
    """A dataclass from the attributes of the same names of a parsed namespace (e.g. an experiment command's)."""
    values = {name: getattr(namespace, name) for name in names(dataclass_type) if hasattr(namespace, name)}
    return dataclass_type(**{**values, **overrides})


def changed_fields(value):
    """{name: value} of the fields of a dataclass that differ from its defaults."""
    defaults = type(value)()
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
            if getattr(value, f.name) != getattr(defaults, f.name)}


def run_to_dict(run):
    """The flat JSON object of a run (one key per flag, every value explicit): what a run.json file holds."""
    flat = {}
    for part in (run.data, run.model, run.optim, run.output, *run.features.values()):
        flat.update(dataclasses.asdict(part))
    return flat


def feature_argument_types(feature_types):
    return {feature.name: feature.arguments for feature in feature_types if feature.arguments is not None}


def run_from_dict(values, feature_types=()):
    """A `RunArguments` from a flat dict (a run.json file's object); unknown keys are refused (ValueError)."""
    groups = {**LOOP_ARGUMENTS, **feature_argument_types(feature_types)}
    known = {name for kind in groups.values() for name in names(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown setting{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    return _assemble({key: kind(**{n: values[n] for n in names(kind) if n in values}) for key, kind in groups.items()})


def _assemble(parts):
    """A `RunArguments` from {"data", "model", "optim", "output", feature name...: dataclass}."""
    loop = {key: parts.pop(key) for key in LOOP_ARGUMENTS}
    return RunArguments(**loop, features=parts)


def build_parser(feature_types=(), **kwargs):
    """The command line of the loop and its features: `HfArgumentParser` over their dataclasses, plus the aliases of
    the argparse era (`--no-flag` for every boolean, `--regression` / `--classification`)."""
    groups = {**LOOP_ARGUMENTS, **feature_argument_types(feature_types)}
    return options_parser(list(groups.values()), **kwargs)


def options_parser(dataclass_types, **kwargs):
    """An `HfArgumentParser` over these dataclasses with the argparse era's aliases. With `add_help=False` it is a
    parent for another command's parser (argparse's `parents=[...]`: the experiments take finetune.py's options so)."""
    import argparse

    from transformers import HfArgumentParser

    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    parser = HfArgumentParser(list(dataclass_types), **kwargs)
    add_aliases(parser, list(dataclass_types))
    return parser


def command_line(settings):
    """For people (summaries, result pages): the flags that give these settings ({name: value}), every value explicit;
    `parse_run(command_line(run_to_dict(run)))` gives the run back. Never parsed back between our own modules."""
    flags = []
    for name, value in settings.items():
        if value is None:
            continue
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        elif isinstance(value, (list, tuple)):
            flags += [f"--{name}", *map(_text, value)]
        else:
            flags += [f"--{name}", _text(value)]
    return flags


def _text(value):
    """A value as a flag's text: floats in their shortest exact form (1, 0.5, 5e-05), everything else as str()."""
    if isinstance(value, float) and float(format(value, "g")) == value:
        return format(value, "g")
    return str(value)


def add_aliases(parser, dataclass_types):
    """`--no-NAME` (and `--no_NAME`) for every boolean field, where HfArgumentParser gives no such flag (it writes
    `--no_NAME` / `--no-NA-ME` for booleans that default to true, nothing for the others), and the label-type flags."""
    import argparse

    for kind in dataclass_types:
        for item in dataclasses.fields(kind):
            if item.type is not bool:
                continue
            options = {f"--no-{item.name}", f"--no_{item.name}", f"--no-{item.name.replace('_', '-')}"}
            if item.default is True:  # HfArgumentParser's own complement flags
                options -= {f"--no_{item.name}", f"--no-{item.name.replace('_', '-')}"}
            if options:
                parser.add_argument(*sorted(options), dest=item.name, action="store_false", help=argparse.SUPPRESS)
    if DataArguments in dataclass_types:
        labels = parser.add_mutually_exclusive_group()
        for label_type in LABEL_TYPES:
            labels.add_argument(f"--{label_type}", dest="label_type", action="store_const", const=label_type,
                                help=f"same as --label_type {label_type}")


def parse_run(argv, feature_types=(), parser=None):
    """A `RunArguments` from a command line, or from a single `run.json` argument (run_glue.py's convention)."""
    parser = parser or build_parser(feature_types)
    if len(argv) == 1 and argv[0].endswith(".json"):
        path = Path(argv[0])
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            parser.error(f"{path}: not a readable JSON file ({error})")
        if not isinstance(values, dict):
            parser.error(f"{path}: a run file holds one JSON object of settings, e.g. {{\"task_name\": \"sst2\"}}")
        try:
            return run_from_dict(values, feature_types)
        except (TypeError, ValueError) as error:
            parser.error(f"{path}: {error}")
    parts = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    return _assemble(dict(zip([*LOOP_ARGUMENTS, *feature_argument_types(feature_types)], parts)))
