"""Fine-tune BERMo (or vanilla BERT, for comparison) for sequence classification with Accelerate.

    accelerate launch finetune.py --model_name_or_path PATH --task_name sst2 --glue_dir GLUE --output_dir OUT

The same loop runs on one CPU, one GPU, or many GPUs and nodes: devices, mixed precision, DDP/FSDP/DeepSpeed come
from `accelerate config` / `accelerate launch`. Arguments follow transformers' `run_glue_no_trainer.py`.
"""

import argparse
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ._errors import one_line
from ._io import save_figure_atomic, write_text_atomic
from .data import DataError, load_task_data

# The mix gets its own learning rate: with Adam a parameter moves about `lr` per step whatever its gradient, so at a
# backbone rate of 1e-4 the mix logits would move ~0.004 in 40 steps (softmax weights by < 0.001): frozen in practice.
DEFAULT_MIX_LEARNING_RATE = 1e-2
CHECKPOINT_PATTERN = re.compile(r"^(step|epoch)_(\d+)$")


class TrainingError(Exception):
    """Bad input or a failed run: reported as one line, exit code 2."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="finetune.py",
        description="Fine-tune BERMo (or BERT) for text classification with Accelerate: GLUE or your own files.",
        epilog="examples:\n"
        "  accelerate launch finetune.py --model_name_or_path ./minilm --task_name sst2 --glue_dir glue_data "
        "--output_dir out/sst2-bermo\n"
        "  accelerate launch finetune.py --model_name_or_path ./minilm --model_type bert --train_file train.csv "
        "--validation_file dev.csv --output_dir out/bert\n"
        "exit codes: 0 done, 2 bad input or a failed run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    boolean = argparse.BooleanOptionalAction
    data = parser.add_argument_group("data")
    data.add_argument("--task_name", help="GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli")
    data.add_argument("--glue_dir", help="GLUE's folder of TSVs (the root with CoLA/, SST-2/, ... or one task's)")
    data.add_argument("--train_file", help="training data: csv, tsv, json or jsonl")
    data.add_argument("--validation_file", help="validation data, same columns as the training data")
    data.add_argument("--test_file", help="data to predict (labels optional); predictions go to OUTPUT_DIR")
    data.add_argument("--text_columns", nargs="+", help="one or two text columns (default: detected)")
    data.add_argument("--label_column", help="the label column (default: label, labels, score or gold_label)")
    labels = data.add_mutually_exclusive_group()
    labels.add_argument("--regression", dest="label_type", action="store_const", const="regression",
                        help="treat the label column as a regression target (default: decided by the column's type: "
                        "float columns are regression, integer and string columns classes)")
    labels.add_argument("--classification", dest="label_type", action="store_const", const="classification",
                        help="treat the label column as classes, e.g. a float column of whole numbers 1.0..5.0")
    data.add_argument("--max_length", type=int, default=128, help="tokens per example, truncated beyond")
    data.add_argument("--pad_to_max_length", action=boolean, default=False,
                      help="pad every example to --max_length (default: pad each batch to its longest)")
    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", required=True, help="a BERT or BERMo checkpoint: folder or Hub id")
    model.add_argument("--model_type", choices=["bermo", "bert"], default="bermo",
                       help="bermo (default; a BERT checkpoint is converted on the fly) or bert, for comparisons "
                       "from the same weights")
    model.add_argument("--mix_init", default="uniform", choices=["uniform", "last"],
                       help="initial layer mix when converting a BERT checkpoint on the fly")
    model.add_argument("--trust_remote_code", action=boolean, default=False,
                       help="allow the checkpoint's own modeling code (needed for BERMo checkpoints without bermo)")
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--per_device_train_batch_size", type=int, default=8)
    optim.add_argument("--per_device_eval_batch_size", type=int, default=8)
    optim.add_argument("--learning_rate", type=float, default=5e-5)
    optim.add_argument("--mix_learning_rate", type=float, default=DEFAULT_MIX_LEARNING_RATE,
                       help=f"learning rate of the layer mix (no weight decay; default {DEFAULT_MIX_LEARNING_RATE})")
    optim.add_argument("--weight_decay", type=float, default=0.0, help="decay of the weight matrices (dim >= 2)")
    optim.add_argument("--num_train_epochs", type=int, default=3)
    optim.add_argument("--max_train_steps", type=int, help="total optimizer steps; overrides --num_train_epochs")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--lr_scheduler_type", default="linear",
                       choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                "constant_with_warmup"])
    optim.add_argument("--num_warmup_steps", type=int, default=0)
    optim.add_argument("--seed", type=int, default=42)
    run = parser.add_argument_group("output")
    run.add_argument("--output_dir", required=True, help="where the model, metrics.jsonl, plots and checkpoints go")
    run.add_argument("--overwrite_output_dir", action=boolean, default=False, help="replace a non-empty output_dir")
    run.add_argument("--eval_steps", type=int, help="evaluate every N optimizer steps (and always at the end)")
    run.add_argument("--checkpointing_steps", help="save the training state every N steps, or 'epoch'")
    run.add_argument("--resume_from_checkpoint", help="a saved state folder, or 'latest' in output_dir")
    run.add_argument("--save_model", action=boolean, default=True,
                     help="save the final model, tokenizer and card (--no-save_model: metrics and plots only, "
                     "e.g. for experiment grids)")
    run.add_argument("--save_eval_predictions", action=boolean, default=False,
                     help="write every evaluation's per-example predictions and references to "
                     "OUTPUT_DIR/eval_predictions.jsonl (for paired statistics across runs)")
    run.add_argument("--with_tracking", action=boolean, default=False, help="log metrics to the trackers")
    run.add_argument("--report_to", default="all", help="trackers for --with_tracking (tensorboard, wandb, ...)")
    run.add_argument("--push_to_hub", action=boolean, default=False, help="push the final model to the Hub")
    run.add_argument("--hub_model_id", help="the Hub repository to push to")
    run.add_argument("--hub_token", help="Hub token (default: HF_TOKEN or the cached login)")
    from .pruning import Pruner

    Pruner.add_arguments(parser)
    return parser


def check_args(args):
    if args.task_name is None and args.train_file is None:
        raise TrainingError("pass --task_name (with --glue_dir offline) or --train_file and --validation_file")
    if args.checkpointing_steps not in (None, "epoch") and not str(args.checkpointing_steps).isdigit():
        raise TrainingError(f"--checkpointing_steps {args.checkpointing_steps!r}: a number of steps or 'epoch'")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "max_length", "num_train_epochs"):
        if getattr(args, name) < 1:
            raise TrainingError(f"--{name} must be at least 1")
    if args.push_to_hub and not args.hub_model_id:
        raise TrainingError("--push_to_hub needs --hub_model_id")
    if args.push_to_hub and args.model_type == "bert":
        raise TrainingError("--push_to_hub publishes BERMo checkpoints (with their modeling code and card); "
                            "--model_type bert runs are baselines: push them with huggingface_hub yourself")
    if args.push_to_hub and not args.save_model:
        raise TrainingError("--push_to_hub needs the saved model; drop --no-save_model")
    output_dir = Path(args.output_dir)
    if (output_dir.is_dir() and any(output_dir.iterdir()) and not args.overwrite_output_dir
            and args.resume_from_checkpoint is None):
        raise TrainingError(f"output_dir {output_dir} is not empty; pass --overwrite_output_dir or "
                            "--resume_from_checkpoint")


# --------------------------------------------------------------------------------------------------------------------
# Model


def load_model(args, task_data):
    """BERMo or BERT for sequence classification from a BERT or BERMo checkpoint, with the data's labels."""
    import transformers

    import bermo  # noqa: F401  (registers BERMo with the Auto classes)
    from bermo import BermoForSequenceClassification

    try:
        config = transformers.AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    except Exception as error:
        raise TrainingError(f"--model_name_or_path {args.model_name_or_path}: {one_line(error)}") from None
    if config.model_type not in ("bert", "bermo"):
        raise TrainingError(f"--model_name_or_path: model_type {config.model_type!r} is neither BERT nor BERMo")
    if args.model_type == "bert" and config.model_type == "bermo":
        raise TrainingError("--model_type bert needs a BERT checkpoint; this one is already BERMo")
    labels = {"num_labels": task_data.num_labels}
    if task_data.label_names is not None:
        labels["id2label"] = dict(enumerate(task_data.label_names))
        labels["label2id"] = {name: index for index, name in enumerate(task_data.label_names)}
        labels["problem_type"] = "single_label_classification"
    else:
        labels["problem_type"] = "regression"
    fine_tuned = any("ForSequenceClassification" in name for name in (config.architectures or []))
    if fine_tuned and config.num_labels != task_data.num_labels:
        raise TrainingError(
            f"--model_name_or_path has a fine-tuned head with {config.num_labels} labels but the data has "
            f"{task_data.num_labels}"
        )
    kwargs = dict(labels, trust_remote_code=args.trust_remote_code)
    try:
        if args.model_type == "bermo":
            if config.model_type == "bert":
                kwargs["mix_init"] = args.mix_init
            model = BermoForSequenceClassification.from_pretrained(args.model_name_or_path, **kwargs)
        else:
            model = transformers.AutoModelForSequenceClassification.from_pretrained(args.model_name_or_path, **kwargs)
    except (OSError, ValueError, RuntimeError) as error:
        raise TrainingError(f"--model_name_or_path {args.model_name_or_path}: {one_line(error)}") from None
    return model


def optimizer_groups(model, args, features=()):
    """Weight matrices decay; biases, LayerNorm and the layer mix (own learning rate) do not (nanoGPT's rule).

    Features (e.g. pruning's mask scores) bring their own groups; their parameters leave the default ones.
    """
    extra = [group for groups in call_features(features, "parameter_groups", model) for group in groups]
    claimed = {id(parameter) for group in extra for parameter in group["params"]}
    mix, decay, no_decay = [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad or id(parameter) in claimed:
            continue
        if ".layer_mix." in f".{name}":
            mix.append(parameter)
        elif parameter.dim() >= 2:
            decay.append(parameter)
        else:
            no_decay.append(parameter)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if mix:
        groups.append({"params": mix, "weight_decay": 0.0, "lr": args.mix_learning_rate})
    return groups + [group for group in extra if group["params"]]


# --------------------------------------------------------------------------------------------------------------------
# Data loaders


def tokenize(task_data, tokenizer, args):
    padding = "max_length" if args.pad_to_max_length else False

    def encode(batch):
        texts = [batch[name] for name in task_data.text_columns]
        return tokenizer(*texts, padding=padding, max_length=args.max_length, truncation=True)

    encoded = {}
    for split, dataset in task_data.splits.items():
        # keep only the model's inputs and the labels: an `idx` (Hub GLUE) or `index` (GLUE test.tsv) column would
        # reach forward() as an unexpected keyword argument
        dropped = [name for name in dataset.column_names if name != "label"]
        encoded[split] = dataset.map(encode, batched=True, remove_columns=dropped, desc=f"tokenizing {split}")
        if "label" in encoded[split].column_names:
            encoded[split] = encoded[split].rename_column("label", "labels")
    return encoded


def make_loaders(encoded, tokenizer, args):
    from transformers import DataCollatorWithPadding, default_data_collator

    collator = default_data_collator if args.pad_to_max_length else DataCollatorWithPadding(tokenizer)
    train = DataLoader(encoded["train"], shuffle=True, collate_fn=collator, batch_size=args.per_device_train_batch_size)
    evaluation = {
        split: DataLoader(dataset, collate_fn=collator, batch_size=args.per_device_eval_batch_size)
        for split, dataset in encoded.items() if split != "train"
    }
    return train, evaluation


# --------------------------------------------------------------------------------------------------------------------
# Evaluation, metrics log, plots


def predict(model, loader, accelerator, regression):
    model.eval()
    predictions, references = [], []
    for batch in loader:
        labels = batch.pop("labels", None)
        with torch.no_grad():
            logits = model(**batch).logits
        predicted = logits.squeeze(-1).float() if regression else logits.argmax(dim=-1)
        if labels is None:
            predicted = accelerator.gather_for_metrics(predicted)
        else:
            predicted, labels = accelerator.gather_for_metrics((predicted, labels))
            references.append(labels.cpu())
        predictions.append(predicted.cpu())
    model.train()
    return torch.cat(predictions), (torch.cat(references) if references else None)


def evaluate(model, loaders, task_data, accelerator, predictions_log=None, step=None):
    """Metrics per evaluation split; with a `predictions_log`, each example's prediction and reference too."""
    from .metrics import task_metrics

    results = {}
    for split in task_data.eval_splits:
        predictions, references = predict(model, loaders[split], accelerator, task_data.num_labels == 1)
        results[split] = task_metrics(predictions.numpy(), references.numpy(), task_data.metric, task_data.num_labels)
        if predictions_log is not None:
            predictions_log.append({"step": step, "split": split, "predictions": predictions.tolist(),
                                    "references": references.tolist()})
    return results


class MetricsLog:
    """output_dir/metrics.jsonl: one line per evaluation (and per logged training loss), on the main process."""

    def __init__(self, path, accelerator):
        self.path, self.accelerator = Path(path), accelerator

    def keep_until(self, step):
        """On resume, forget what a killed run logged after the checkpoint it resumes from."""
        if self.accelerator.is_main_process and self.path.is_file():
            lines = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in lines))

    def append(self, record):
        if self.accelerator.is_main_process:
            with open(self.path, "a") as file:
                file.write(json.dumps(record) + "\n")

    def records(self):
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.is_file() else []


REMAINING_FIGURES = ("remaining_encoder_fraction", "remaining_model_fraction")


def plot_learning_curve(records, path, metric):
    """Training loss and the task's own metric per evaluation split; with pruning, the remaining weights below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r["split"] == "train"]
    evaluations = [r for r in records if r["split"] != "train"]
    pruned = any(name in r for r in evaluations for name in REMAINING_FIGURES)
    if pruned:
        figure, (loss_axis, remaining_axis) = plt.subplots(2, 1, figsize=(6, 6), sharex=True,
                                                          gridspec_kw={"height_ratios": [2, 1]})
        first_split = evaluations[0]["split"]
        for name in REMAINING_FIGURES:
            points = [(r["step"], r[name]) for r in evaluations if r["split"] == first_split and name in r]
            if points:
                remaining_axis.plot(*zip(*points), marker=".", label=name.replace("_", " "))
        remaining_axis.set_ylabel("remaining weights")
        remaining_axis.set_xlabel("optimizer step")
        remaining_axis.legend(fontsize="small")
    else:
        figure, loss_axis = plt.subplots(figsize=(6, 4))
    # every series its own colour (the twin axis would restart the colour cycle), the legend below the plot
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    loss_colour = next(colours)
    if train:
        loss_axis.plot(*zip(*train), color=loss_colour, label="training loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("training loss", color=loss_colour)
    metric_axis = loss_axis.twinx()
    for split in sorted({r["split"] for r in records if r["split"] != "train"}):
        points = [(r["step"], r[metric]) for r in records if r["split"] == split and metric in r]
        if points:
            metric_axis.plot(*zip(*points), marker="o", color=next(colours), label=f"{split} {metric}")
    metric_axis.set_ylabel(metric)
    handles, labels = (a + b for a, b in zip(loss_axis.get_legend_handles_labels(),
                                              metric_axis.get_legend_handles_labels()))
    figure.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)) or 1, frameon=False)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    save_figure_atomic(figure, path, dpi=100)


def plot_layer_weights(model, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights, scale = model.layer_mix_weights()
    names = ["emb" if index == 0 else f"L{index}" for index in model.config.mix_layer_indices]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.bar(names, weights.numpy())
    axis.axhline(1 / len(names), color="gray", linestyle="--", linewidth=1, label="uniform")
    axis.set_ylabel("softmax weight")
    axis.set_title(f"BERMo learned layer mix (scale {scale.item():.3f})")
    axis.legend()
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=100)


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints


def latest_checkpoint(output_dir):
    found = []
    for path in Path(output_dir).iterdir() if Path(output_dir).is_dir() else []:
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(2)) + (0.5 if match.group(1) == "epoch" else 0), path))
    return max(found)[1] if found else None


def save_checkpoint(accelerator, output_dir, name, features=()):
    """Save the whole training state (model, optimizer, scheduler, RNGs, sampler, features' state) to
    output_dir/NAME, with the features' configuration in NAME/features.json (checked on resume)."""
    path = Path(output_dir) / name
    if accelerator.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
        current = {type(f).__name__: f.config() for f in features if hasattr(f, "config")}
        write_text_atomic(path / FEATURES_FILE, json.dumps(current) + "\n")
    accelerator.save_state(str(path))
    return path


def resume_position(checkpoint, steps_per_epoch, gradient_accumulation_steps):
    """(completed optimizer steps, epoch to start, batches of that epoch to skip) for a step_N/epoch_N folder."""
    match = CHECKPOINT_PATTERN.match(Path(checkpoint).name)
    if match is None:
        raise TrainingError(f"--resume_from_checkpoint {checkpoint}: expected a step_N or epoch_N folder")
    kind, number = match.group(1), int(match.group(2))
    if kind == "epoch":
        return (number + 1) * steps_per_epoch, number + 1, 0
    return number, number // steps_per_epoch, (number % steps_per_epoch) * gradient_accumulation_steps


# --------------------------------------------------------------------------------------------------------------------
# The loop


def build_features(args, max_train_steps):
    """The features that hang off the loop for these arguments (pruning, ...), validated; see `TrainingFeature`."""
    from .pruning import Pruner

    try:  # None without --pruning_method (and an error for pruning flags given without it)
        pruner = Pruner.from_args(args, max_train_steps)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    return [pruner] if pruner is not None else []


class TrainingFeature:
    """What a feature (pruning, ...) may hook into the loop; every method is optional, called at fixed points:

    - `setup(model) -> model` once, before the optimizer exists (e.g. swap modules);
    - `parameter_groups(model) -> [group]` extra optimizer groups; their parameters leave the default groups;
    - `on_step(step)` before each optimizer step's forward and before each evaluation (`step` = completed steps);
    - `penalty(model) -> tensor | None` added to the task loss;
    - `eval_figures(model) -> dict` logged beside each evaluation's metrics;
    - `config() -> dict` stored in every checkpoint: resuming with another configuration is refused;
    - `state_dict()` / `load_state_dict()` saved and restored with the training state;
    - `before_save(model, output_dir, is_main_process) -> model` the model to save at the end (e.g. masks applied);
      `after_save(model, output_dir) -> dict` figures of what was saved; `card_info() -> dict`: both go to the
      model card and final_metrics.json.

    The loop itself only ever calls these through `call_features`, so a new feature needs no change to the loop.
    """


def call_features(features, method, *args):
    """Call `method` on every feature that has it; return their results in order."""
    return [getattr(feature, method)(*args) for feature in features if hasattr(feature, method)]


FEATURES_FILE = "features.json"


def check_resume_features(checkpoint, features):
    """Refuse to resume a checkpoint written with other features (e.g. pruning flags added, dropped or changed)."""
    from .pruning import Pruner, check_resume_config

    path = Path(checkpoint) / FEATURES_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    current = {type(feature).__name__: feature.config() for feature in features if hasattr(feature, "config")}
    try:  # pruning names the flag that differs
        check_resume_config(saved.get("Pruner"), next((f for f in features if isinstance(f, Pruner)), None))
    except ValueError as error:
        raise TrainingError(f"--resume_from_checkpoint {checkpoint}: {error}") from None
    if saved != current:
        raise TrainingError(
            f"--resume_from_checkpoint {checkpoint}: it was saved with {json.dumps(saved) if saved else 'no features'}, "
            f"this run has {json.dumps(current) if current else 'none'}; resume with the same flags"
        )


def steps_per_epoch_of(train_loader, accelerator, gradient_accumulation_steps):
    """Optimizer steps per epoch of one process: its share of the batches (accelerate pads to even shares)."""
    return math.ceil(math.ceil(len(train_loader) / accelerator.num_processes) / gradient_accumulation_steps)


def train(args):
    """Fine-tune as the arguments say; return the final metrics {split: {metric: value}}.

    Everything that can be refused (data, model, feature flags, resume state) is checked before anything is written.
    """
    from transformers import AutoTokenizer, get_scheduler

    check_args(args)
    # `accelerate launch --multi_gpu` on a machine without an accelerator: run the processes on CPU with gloo
    cpu_only_distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()
    accelerator = Accelerator(
        cpu=cpu_only_distributed,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to if args.with_tracking else None,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(args.seed)
    accelerator.print(f"training on {accelerator.num_processes} process(es) ({accelerator.distributed_type.value}, "
                      f"device {accelerator.device}, mixed precision {accelerator.mixed_precision})")
    output_dir = Path(args.output_dir)

    try:
        task_data = load_task_data(args)
    except DataError as error:
        raise TrainingError(str(error)) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    except Exception as error:
        raise TrainingError(f"--model_name_or_path {args.model_name_or_path}: no tokenizer ({one_line(error)})") from None
    model = load_model(args, task_data)
    with accelerator.main_process_first():
        encoded = tokenize(task_data, tokenizer, args)
    train_loader, eval_loaders = make_loaders(encoded, tokenizer, args)
    steps_per_epoch = steps_per_epoch_of(train_loader, accelerator, args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    features = build_features(args, max_train_steps)
    for feature in features:
        if hasattr(feature, "setup"):
            try:
                model = feature.setup(model)
            except ValueError as error:
                raise TrainingError(str(error)) from None
    checkpoint = None
    if args.resume_from_checkpoint:
        checkpoint = (latest_checkpoint(output_dir) if args.resume_from_checkpoint == "latest"
                      else Path(args.resume_from_checkpoint))
        if checkpoint is None or not checkpoint.is_dir():
            raise TrainingError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: no saved state found")
        check_resume_features(checkpoint, features)

    # Nothing was written so far: now the output folder.
    if accelerator.is_main_process:
        if args.overwrite_output_dir and args.resume_from_checkpoint is None and output_dir.is_dir():
            shutil.rmtree(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    optimizer = torch.optim.AdamW(optimizer_groups(model, args, features), lr=args.learning_rate)
    model, optimizer, train_loader, *prepared = accelerator.prepare(
        model, optimizer, train_loader, *eval_loaders.values()
    )
    eval_loaders = dict(zip(eval_loaders, prepared))
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)  # this process's share
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    # a prepared scheduler steps once per process for every optimizer step
    scheduler = accelerator.prepare(get_scheduler(
        args.lr_scheduler_type, optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    ))
    for feature in features:
        if hasattr(feature, "state_dict"):
            accelerator.register_for_checkpointing(feature)
    if args.with_tracking:
        accelerator.init_trackers("bermo_finetune", {k: v for k, v in vars(args).items()
                                                      if isinstance(v, (int, float, str, bool))})

    completed_steps, start_epoch, skip_batches = 0, 0, 0
    metrics_log = MetricsLog(output_dir / "metrics.jsonl", accelerator)
    predictions_log = MetricsLog(output_dir / "eval_predictions.jsonl", accelerator)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        completed_steps, start_epoch, skip_batches = resume_position(checkpoint, steps_per_epoch,
                                                                     args.gradient_accumulation_steps)
        metrics_log.keep_until(completed_steps)
        predictions_log.keep_until(completed_steps)
        accelerator.print(f"resumed from {checkpoint} at step {completed_steps}")
    else:
        metrics_log.keep_until(-1)
        predictions_log.keep_until(-1)

    def run_evaluation(epoch):
        call_features(features, "on_step", completed_steps)
        results = evaluate(model, eval_loaders, task_data, accelerator,
                           predictions_log if args.save_eval_predictions else None, completed_steps)
        figures = {}
        for extra in call_features(features, "eval_figures", accelerator.unwrap_model(model)):
            figures.update(extra)
        for split, values in results.items():
            metrics_log.append({"step": completed_steps, "epoch": epoch, "split": split, **values, **figures})
            if args.with_tracking:
                accelerator.log({f"{split}_{k}": v for k, v in {**values, **figures}.items()}, step=completed_steps)
        progress.write(f"step {completed_steps}: " + "; ".join(
            f"{split} " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()) for split, values in results.items())
            + "".join(f"; {k} {v:.4f}" for k, v in figures.items() if isinstance(v, float)))
        return results

    def stop_if_not_finite():
        # One device sync at logging and checkpoint steps, not one per micro-batch; the largest over processes, so
        # that every process stops at the same point (one stopping alone would leave the others waiting).
        bad = int(accelerator.reduce(first_bad_step, reduction="max").item())
        if bad >= 0:
            raise TrainingError(
                f"loss became non-finite (nan or inf) at step {bad}; stopped. Last good checkpoint: "
                f"{last_checkpoint or 'none saved'}"
            )

    def save_training_state(name):
        stop_if_not_finite()
        return save_checkpoint(accelerator, output_dir, name, features)

    checkpoint_every = int(args.checkpointing_steps) if str(args.checkpointing_steps).isdigit() else None
    log_every = max(1, max_train_steps // 100)
    last_checkpoint = None
    first_bad_step = torch.full((), -1, dtype=torch.long, device=accelerator.device)
    progress = tqdm(total=max_train_steps, initial=completed_steps, disable=not accelerator.is_local_main_process,
                    desc="fine-tuning", unit="step")
    final_metrics = None
    model.train()
    try:
        for epoch in range(start_epoch, num_epochs):
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            batches = train_loader
            if epoch == start_epoch and skip_batches:
                batches = accelerator.skip_first_batches(train_loader, skip_batches)
            running_loss, running_count = torch.zeros((), device=accelerator.device), 0
            for batch in batches:
                with accelerator.accumulate(model):
                    call_features(features, "on_step", completed_steps)
                    loss = model(**batch).loss
                    total_loss = loss
                    for penalty in call_features(features, "penalty", model):
                        if penalty is not None:
                            total_loss = total_loss + penalty
                    finite = torch.isfinite(total_loss.detach())
                    first_bad_step = torch.where(finite | (first_bad_step >= 0), first_bad_step,
                                                 first_bad_step.new_full((), completed_steps + 1))
                    accelerator.backward(total_loss)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                running_loss += loss.detach().float()
                running_count += 1
                if not accelerator.sync_gradients:
                    continue
                completed_steps += 1
                progress.update(1)
                if completed_steps % log_every == 0 or completed_steps == max_train_steps:
                    stop_if_not_finite()
                    learning_rate = scheduler.get_last_lr()[0]
                    record = {"step": completed_steps, "epoch": epoch, "split": "train",
                              "loss": running_loss.item() / running_count, "learning_rate": learning_rate}
                    progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{learning_rate:.2e}")
                    metrics_log.append(record)
                    if args.with_tracking:
                        accelerator.log({"train_loss": record["loss"], "learning_rate": learning_rate},
                                        step=completed_steps)
                    running_loss, running_count = torch.zeros((), device=accelerator.device), 0
                at_end = completed_steps >= max_train_steps
                if at_end or (args.eval_steps and completed_steps % args.eval_steps == 0):
                    stop_if_not_finite()
                    final_metrics = run_evaluation(epoch)
                if checkpoint_every and completed_steps % checkpoint_every == 0:
                    last_checkpoint = save_training_state(f"step_{completed_steps}")
                if at_end:
                    break
            if args.checkpointing_steps == "epoch":
                last_checkpoint = save_training_state(f"epoch_{epoch}")
            if completed_steps >= max_train_steps:
                break
        stop_if_not_finite()
    finally:
        progress.close()
    if final_metrics is None:  # resumed from the last step: evaluate the restored model
        final_metrics = run_evaluation(start_epoch)
    if "test" in eval_loaders:
        write_predictions(model, eval_loaders["test"], task_data, accelerator, output_dir / "predictions.tsv")
    accelerator.wait_for_everyone()
    final_model = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    for feature in features:
        if hasattr(feature, "before_save"):
            final_model = feature.before_save(final_model, output_dir, accelerator.is_main_process)
    save_final_outputs(accelerator, final_model, tokenizer, task_data, args, final_metrics, metrics_log,
                       len(encoded["train"]), features, prepared_model=model)
    if args.with_tracking:
        accelerator.end_training()
    if args.push_to_hub and accelerator.is_main_process:
        from .hub import PublishError, push_to_hub

        try:
            push_to_hub(output_dir, args.hub_model_id, token=args.hub_token)
        except PublishError as error:
            raise TrainingError(str(error)) from None
    return final_metrics


def write_predictions(model, loader, task_data, accelerator, path):
    predictions, _ = predict(model, loader, accelerator, task_data.num_labels == 1)
    if accelerator.is_main_process:
        names = task_data.label_names
        lines = ["index\tprediction"] + [
            f"{i}\t{value.item() if names is None else names[int(value)]}" for i, value in enumerate(predictions)
        ]
        Path(path).write_text("\n".join(lines) + "\n")


def save_final_outputs(accelerator, model, tokenizer, task_data, args, final_metrics, metrics_log, train_size,
                       features=(), prepared_model=None):
    """On the main process: final_metrics.json, layer_mix.json (BERMo), plots; unless --no-save_model, the model
    (save_pretrained: safetensors, modeling files), tokenizer and model card."""
    from .model_card import finetuned_model_card

    output_dir = Path(args.output_dir)
    if args.save_model:
        # the full state dict, gathered from every process under FSDP / DeepSpeed ZeRO-3 (a no-op otherwise)
        state_dict = accelerator.get_state_dict(prepared_model) if accelerator.distributed_type.value in (
            "FSDP", "DEEPSPEED") else None
        model.save_pretrained(output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save,
                              state_dict=state_dict)
    if not accelerator.is_main_process:
        return
    feature_figures = {}
    for info in call_features(features, "card_info") + call_features(features, "after_save", model, output_dir):
        feature_figures.update(info)
    summary = {**final_metrics, **feature_figures}
    records = metrics_log.records()
    plot_learning_curve(records, output_dir / "learning_curve.png", task_data.metric if any(
        task_data.metric in r for r in records) else next(iter(next(iter(final_metrics.values())))))
    is_bermo = hasattr(model, "layer_mix_weights")
    if is_bermo:
        weights, scale = model.layer_mix_weights()
        write_text_atomic(output_dir / "layer_mix.json", json.dumps({
            "layers": list(model.config.mix_layer_indices), "weights": weights.tolist(), "scale": scale.item()}) + "\n")
        plot_layer_weights(model, output_dir / "layer_weights.png")
    if args.save_model:
        tokenizer.save_pretrained(output_dir)
        if is_bermo:
            hyperparameters = {
                name: getattr(args, name) for name in (
                    "learning_rate", "mix_learning_rate", "weight_decay", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "num_train_epochs", "max_train_steps", "lr_scheduler_type",
                    "num_warmup_steps", "max_length", "seed")
            }
            hyperparameters["num_processes"] = accelerator.num_processes
            hyperparameters["mixed_precision"] = accelerator.mixed_precision
            hyperparameters.update(feature_figures)  # e.g. pruning: method, thresholds/λ, measured remaining weights
            finetuned_model_card(
                model=model, task_data=task_data, base_model=args.model_name_or_path, final_metrics=final_metrics,
                hyperparameters=hyperparameters, has_layer_plot=True, train_size=train_size,
            ).save(output_dir / "README.md")
    write_text_atomic(output_dir / "final_metrics.json", json.dumps(summary, indent=2) + "\n")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except TrainingError as error:
        print(f"finetune.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
