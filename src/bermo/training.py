"""Fine-tune BERMo (or vanilla BERT, for comparison) for sequence classification with Accelerate.

    accelerate launch finetune.py --model_name_or_path PATH --task_name sst2 --glue_dir GLUE --output_dir OUT
    accelerate launch finetune.py run.json          # the same settings as one JSON object (bermo.arguments)

The same loop runs on one CPU, one GPU, or many GPUs and nodes: devices, mixed precision, DDP/FSDP/DeepSpeed come
from `accelerate config` / `accelerate launch`. Arguments follow transformers' `run_glue_no_trainer.py`.

`train(run, callbacks=())` reads top to bottom in five stages:

    check       everything that can be refused: settings, data, tokenizer, model, features, the checkpoint to resume
    prepare     the output folder, optimizer, accelerate's prepare(), scheduler, trackers, the resumed state
    train       optimizer steps, with evaluations and checkpoints at their steps
    evaluate    (called by train) metrics per split, the features' figures, the metrics log
    finish      test predictions, the features' export, the model, tokenizer, plots and card

Features (pruning, ...; `bermo.features`) and callbacks hook in at fixed points; the loop names none of them.
"""

import copy
import json
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import arguments as run_arguments
from ._errors import one_line
from ._io import write_text_atomic
from .arguments import DEFAULT_MIX_LEARNING_RATE, RunArguments  # noqa: F401  (DEFAULT_...: imported from here)
from .data import DataError, load_task_data
from .features import TrainingFeature, registered_features

CHECKPOINT_PATTERN = re.compile(r"^(step|epoch)_(\d+)$")
FEATURES_FILE = "features.json"  # in every checkpoint, written last: its presence marks the checkpoint complete
PARTIAL_SUFFIX = ".partial"  # a checkpoint being written: renamed to its name once complete


class TrainingError(Exception):
    """Bad input or a failed run: reported as one line, exit code 2."""


def build_parser():
    """finetune.py's command line: the loop's and every registered feature's arguments (HfArgumentParser)."""
    return run_arguments.build_parser(
        registered_features(), prog="finetune.py",
        description="Fine-tune BERMo (or BERT) for text classification with Accelerate: GLUE or your own files.",
        epilog="examples:\n"
        "  accelerate launch finetune.py --model_name_or_path ./minilm --task_name sst2 --glue_dir glue_data "
        "--output_dir out/sst2-bermo\n"
        "  accelerate launch finetune.py --model_name_or_path ./minilm --model_type base --train_file train.csv "
        "--validation_file dev.csv --output_dir out/bert\n"
        "  accelerate launch finetune.py run.json     (one JSON object: {\"model_name_or_path\": ..., ...})\n"
        "exit codes: 0 done, 2 bad input or a failed run.")


def parse_run(argv=None):
    """A `RunArguments` from finetune.py's command line (or a single run.json argument)."""
    return run_arguments.parse_run(sys.argv[1:] if argv is None else list(argv), registered_features(),
                                   parser=build_parser())


# --------------------------------------------------------------------------------------------------------------------
# Stage 1: check everything that can be refused (nothing is written)


@dataclass
class Plan:
    """What the check stage found: the data, model and loaders, the features set up, the checkpoint to resume."""

    task_data: Any
    tokenizer: Any
    model: Any
    train_loader: Any
    eval_loaders: dict
    train_size: int
    max_train_steps: int
    features: list
    checkpoint: Optional[Path]


def check_settings(run):
    data, optim, output = run.data, run.optim, run.output
    if run.model.model_name_or_path is None:
        raise TrainingError("pass --model_name_or_path (a BERT or BERMo checkpoint: folder or Hub id)")
    if output.output_dir is None:
        raise TrainingError("pass --output_dir")
    if data.task_name is None and data.train_file is None:
        raise TrainingError("pass --task_name (with --glue_dir offline) or --train_file and --validation_file")
    if run.model.mix_init not in ("uniform", "last"):
        from .modeling.configuration_bermo import parse_last_weight

        try:
            parse_last_weight(run.model.mix_init)
        except ValueError as error:
            raise TrainingError(f"--{error}") from None
    if run.model.mix_dropout is not None:
        if run.model.model_type in ("base", "bert"):
            raise TrainingError(f"--mix_dropout: the layer mix is BERMo's; --model_type {run.model.model_type} has none")
        if not 0 <= run.model.mix_dropout < 1:
            raise TrainingError(f"--mix_dropout {run.model.mix_dropout}: a probability in [0, 1)")
    if output.checkpointing_steps not in (None, "epoch") and not str(output.checkpointing_steps).isdigit():
        raise TrainingError(f"--checkpointing_steps {output.checkpointing_steps!r}: a number of steps or 'epoch'")
    for part, name in ((optim, "per_device_train_batch_size"), (optim, "per_device_eval_batch_size"),
                       (optim, "gradient_accumulation_steps"), (data, "max_length"), (optim, "num_train_epochs")):
        if getattr(part, name) < 1:
            raise TrainingError(f"--{name} must be at least 1")
    if output.push_to_hub and not output.hub_model_id:
        raise TrainingError("--push_to_hub needs --hub_model_id")
    if output.push_to_hub and run.model.model_type in ("base", "bert"):
        raise TrainingError("--push_to_hub publishes BERMo checkpoints (with their modeling code and card); "
                            f"--model_type {run.model.model_type} runs are baselines: push them with huggingface_hub "
                            "yourself")
    if output.push_to_hub and not output.save_model:
        raise TrainingError("--push_to_hub needs the saved model; drop --no-save_model")
    output_dir = Path(output.output_dir)
    if (output_dir.is_dir() and any(output_dir.iterdir()) and not output.overwrite_output_dir
            and output.resume_from_checkpoint is None):
        raise TrainingError(f"output_dir {output_dir} is not empty; pass --overwrite_output_dir or "
                            "--resume_from_checkpoint")


def check(run, accelerator, callbacks=()):
    """Stage 1: data, tokenizer, model, loaders, features (and callbacks) set up on the model, the checkpoint to
    resume: all checked, nothing written."""
    from transformers import AutoTokenizer

    check_settings(run)
    try:
        task_data = load_task_data(run.data)
    except DataError as error:
        raise TrainingError(str(error)) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(run.model.model_name_or_path)
    except Exception as error:
        raise TrainingError(f"--model_name_or_path {run.model.model_name_or_path}: no tokenizer "
                            f"({one_line(error)})") from None
    model = load_model(run.model, task_data)
    with accelerator.main_process_first():
        encoded = tokenize(task_data, tokenizer, run.data)
    train_loader, eval_loaders = make_loaders(encoded, tokenizer, run)
    max_train_steps = run.optim.max_train_steps or run.optim.num_train_epochs * steps_per_epoch_of(
        train_loader, accelerator, run.optim.gradient_accumulation_steps)
    features = build_features(run, max_train_steps)
    for extension in [*features, *callbacks]:
        try:
            model = extension.setup(model)
        except ValueError as error:
            raise TrainingError(str(error)) from None
    checkpoint = None
    if run.output.resume_from_checkpoint:
        checkpoint = find_checkpoint(run.output)
        check_resume_features(checkpoint, features)
    return Plan(task_data, tokenizer, model, train_loader, eval_loaders, len(encoded["train"]), max_train_steps,
                features, checkpoint)


def build_features(run, max_train_steps):
    """The registered features that these arguments turn on, validated (ValueError -> TrainingError)."""
    features = []
    for feature_class in registered_features():
        arguments = run.features.get(feature_class.name)
        if arguments is None and feature_class.arguments is not None:
            arguments = feature_class.arguments()
        try:
            feature = feature_class.from_arguments(arguments, max_train_steps)
        except ValueError as error:
            raise TrainingError(str(error)) from None
        if feature is not None:
            features.append(feature)
    return features


def load_model(model_args, task_data):
    """BERMo or BERT for sequence classification from a BERT or BERMo checkpoint, with the data's labels."""
    import transformers

    import bermo  # noqa: F401  (registers BERMo with the Auto classes)
    from bermo import BermoForSequenceClassification
    from bermo.modeling.configuration_bermo import BACKBONE_MODEL_TYPES

    path, remote = model_args.model_name_or_path, model_args.trust_remote_code
    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=remote)
    except Exception as error:
        raise TrainingError(f"--model_name_or_path {path}: {one_line(error)}") from None
    if config.model_type not in ("bermo", *BACKBONE_MODEL_TYPES):
        raise TrainingError(f"--model_name_or_path: model_type {config.model_type!r} is neither BERMo nor a supported "
                            f"encoder family ({', '.join(BACKBONE_MODEL_TYPES)})")
    if model_args.model_type in ("base", "bert") and config.model_type == "bermo":
        raise TrainingError(f"--model_type {model_args.model_type} needs a vanilla checkpoint; this one is already "
                            "BERMo")
    labels = {"num_labels": task_data.num_labels}
    if task_data.label_names is not None:
        labels["id2label"] = dict(enumerate(task_data.label_names))
        labels["label2id"] = {name: index for index, name in enumerate(task_data.label_names)}
        labels["problem_type"] = "single_label_classification"
    else:
        labels["problem_type"] = "regression"
    fine_tuned = any("ForSequenceClassification" in name for name in (config.architectures or []))
    if fine_tuned and config.num_labels != task_data.num_labels:
        raise TrainingError(f"--model_name_or_path has a fine-tuned head with {config.num_labels} labels but the data "
                            f"has {task_data.num_labels}")
    kwargs = dict(labels, trust_remote_code=remote)
    try:
        if model_args.model_type == "bermo":
            if config.model_type != "bermo":  # converted on the fly
                kwargs["mix_init"] = model_args.mix_init
            if model_args.mix_dropout is not None:
                kwargs["mix_dropout"] = model_args.mix_dropout
            return BermoForSequenceClassification.from_pretrained(path, **kwargs)
        return transformers.AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError) as error:
        raise TrainingError(f"--model_name_or_path {path}: {one_line(error)}") from None


def tokenize(task_data, tokenizer, data_args):
    padding = "max_length" if data_args.pad_to_max_length else False

    def encode(batch):
        texts = [batch[name] for name in task_data.text_columns]
        return tokenizer(*texts, padding=padding, max_length=data_args.max_length, truncation=True)

    encoded = {}
    for split, dataset in task_data.splits.items():
        # keep only the model's inputs and the labels: an `idx` (Hub GLUE) or `index` (GLUE test.tsv) column would
        # reach forward() as an unexpected keyword argument
        dropped = [name for name in dataset.column_names if name != "label"]
        encoded[split] = dataset.map(encode, batched=True, remove_columns=dropped, desc=f"tokenizing {split}")
        if "label" in encoded[split].column_names:
            encoded[split] = encoded[split].rename_column("label", "labels")
    return encoded


def make_loaders(encoded, tokenizer, run):
    from transformers import DataCollatorWithPadding, default_data_collator

    collator = default_data_collator if run.data.pad_to_max_length else DataCollatorWithPadding(tokenizer)
    train = DataLoader(encoded["train"], shuffle=True, collate_fn=collator,
                       batch_size=run.optim.per_device_train_batch_size)
    evaluation = {split: DataLoader(dataset, collate_fn=collator, batch_size=run.optim.per_device_eval_batch_size)
                  for split, dataset in encoded.items() if split != "train"}
    return train, evaluation


def steps_per_epoch_of(train_loader, accelerator, gradient_accumulation_steps):
    """Optimizer steps per epoch of one process: its share of the batches (accelerate pads to even shares)."""
    return math.ceil(math.ceil(len(train_loader) / accelerator.num_processes) / gradient_accumulation_steps)


# --------------------------------------------------------------------------------------------------------------------
# Stage 2: prepare


@dataclass
class Loop:
    """The state of a run between the stages."""

    run: RunArguments
    plan: Plan
    accelerator: Accelerator
    hooks: list  # the features, then the callbacks
    output_dir: Path
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    train_loader: Any = None
    eval_loaders: dict = field(default_factory=dict)
    steps_per_epoch: int = 0
    num_epochs: int = 0
    completed_steps: int = 0
    start_epoch: int = 0
    skip_batches: int = 0
    metrics_log: Any = None
    predictions_log: Any = None
    progress: Any = None
    last_checkpoint: Optional[Path] = None
    first_bad_step: Any = None
    plain_copy: Any = None  # under FSDP, on the main process: the unsharded model that the final save is made from
    full_state_dict: Any = None  # under FSDP / DeepSpeed: the weights gathered from every process, once, at the end

    def call(self, hook, *args):
        """Call a hook on every feature and callback, in order; their results as a list."""
        return [getattr(extension, hook)(*args) for extension in self.hooks]


def optimizer_groups(model, optim_args, features=()):
    """Weight matrices decay; biases, LayerNorm and the layer mix (own learning rate) do not (nanoGPT's rule).

    Features (e.g. pruning's mask scores) bring their own groups; their parameters leave the default ones.
    """
    extra = [group for feature in features for group in feature.parameter_groups(model)]
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
    groups = [{"params": decay, "weight_decay": optim_args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if mix:
        groups.append({"params": mix, "weight_decay": 0.0, "lr": optim_args.mix_learning_rate})
    return groups + [group for group in extra if group["params"]]


def prepare(loop):
    """Stage 2: the output folder (the first write), optimizer, accelerate's prepare(), scheduler, trackers, and the
    resumed training state."""
    from transformers import get_scheduler

    run, plan, accelerator, optim = loop.run, loop.plan, loop.accelerator, loop.run.optim
    if accelerator.is_main_process:
        if run.output.overwrite_output_dir and plan.checkpoint is None and loop.output_dir.is_dir():
            shutil.rmtree(loop.output_dir)
        loop.output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    if accelerator.distributed_type.value == "FSDP" and accelerator.is_main_process:
        # FSDP shards the parameters in place (FSDP2 also changes the class): the final model is saved and read from
        # this plain copy, given the gathered weights after training
        loop.plain_copy = copy.deepcopy(plan.model)
    optimizer = torch.optim.AdamW(optimizer_groups(plan.model, optim, plan.features), lr=optim.learning_rate)
    loop.model, loop.optimizer, loop.train_loader, *prepared = accelerator.prepare(
        plan.model, optimizer, plan.train_loader, *plan.eval_loaders.values())
    loop.eval_loaders = dict(zip(plan.eval_loaders, prepared))
    loop.steps_per_epoch = math.ceil(len(loop.train_loader) / optim.gradient_accumulation_steps)  # this process's
    loop.num_epochs = math.ceil(plan.max_train_steps / loop.steps_per_epoch)
    # a prepared scheduler steps once per process for every optimizer step
    loop.scheduler = accelerator.prepare(get_scheduler(
        optim.lr_scheduler_type, optimizer=loop.optimizer,
        num_warmup_steps=optim.num_warmup_steps * accelerator.num_processes,
        num_training_steps=plan.max_train_steps * accelerator.num_processes))
    for extension in loop.hooks:
        if extension.stateful:
            accelerator.register_for_checkpointing(extension)
    if run.output.with_tracking:
        settings = run_arguments.run_to_dict(run)
        settings.pop("hub_token", None)
        accelerator.init_trackers("bermo_finetune", {k: v for k, v in settings.items()
                                                      if isinstance(v, (int, float, str, bool))})
    loop.metrics_log = MetricsLog(loop.output_dir / "metrics.jsonl", accelerator)
    loop.predictions_log = MetricsLog(loop.output_dir / "eval_predictions.jsonl", accelerator)
    if plan.checkpoint is not None:
        try:
            accelerator.load_state(str(plan.checkpoint))
        except Exception as error:  # a damaged or foreign folder: one line, not a traceback
            raise TrainingError(f"--resume_from_checkpoint {plan.checkpoint}: cannot load the training state "
                                f"({one_line(error)})") from None
        loop.completed_steps, loop.start_epoch, loop.skip_batches = resume_position(
            plan.checkpoint, loop.steps_per_epoch, optim.gradient_accumulation_steps)
        accelerator.print(f"resumed from {plan.checkpoint} at step {loop.completed_steps}")
    loop.metrics_log.keep_until(loop.completed_steps if plan.checkpoint is not None else -1)
    loop.predictions_log.keep_until(loop.completed_steps if plan.checkpoint is not None else -1)
    loop.first_bad_step = torch.full((), -1, dtype=torch.long, device=accelerator.device)


# --------------------------------------------------------------------------------------------------------------------
# Stage 3: train


def train_steps(loop):
    """Stage 3: optimizer steps until max_train_steps, evaluating and checkpointing at their steps; the final
    metrics (of the evaluation at the last step)."""
    run, accelerator, model = loop.run, loop.accelerator, loop.model
    max_steps = loop.plan.max_train_steps
    checkpoint_every = int(run.output.checkpointing_steps) if str(run.output.checkpointing_steps).isdigit() else None
    loop.progress = tqdm(total=max_steps, initial=loop.completed_steps, desc="fine-tuning", unit="step",
                         disable=not accelerator.is_local_main_process)
    final_metrics = None
    model.train()
    try:
        for epoch in range(loop.start_epoch, loop.num_epochs):
            if hasattr(loop.train_loader, "set_epoch"):
                loop.train_loader.set_epoch(epoch)
            batches = loop.train_loader
            if epoch == loop.start_epoch and loop.skip_batches:
                batches = accelerator.skip_first_batches(loop.train_loader, loop.skip_batches)
            running_loss, running_count = torch.zeros((), device=accelerator.device), 0
            for batch in batches:
                loss = train_batch(loop, batch)
                running_loss += loss
                running_count += 1
                if not accelerator.sync_gradients:
                    continue
                loop.completed_steps += 1
                loop.progress.update(1)
                loop.call("on_step_end", loop.completed_steps, loss)
                if loop.completed_steps % max(1, max_steps // 100) == 0 or loop.completed_steps == max_steps:
                    log_training_loss(loop, epoch, running_loss / running_count)
                    running_loss, running_count = torch.zeros((), device=accelerator.device), 0
                at_end = loop.completed_steps >= max_steps
                if at_end or (run.output.eval_steps and loop.completed_steps % run.output.eval_steps == 0):
                    final_metrics = evaluate_now(loop, epoch)
                if checkpoint_every and loop.completed_steps % checkpoint_every == 0:
                    save_training_state(loop, f"step_{loop.completed_steps}")
                if at_end:
                    break
            if run.output.checkpointing_steps == "epoch":
                save_training_state(loop, f"epoch_{epoch}")
            if loop.completed_steps >= max_steps:
                break
        stop_if_not_finite(loop)
    finally:
        loop.progress.close()
    if final_metrics is None:  # resumed from the last step: evaluate the restored model
        final_metrics = evaluate_now(loop, loop.start_epoch)
    return final_metrics


def train_batch(loop, batch):
    """One micro-batch: forward, the features' training loss and penalties, backward, and (when gradients sync) the
    optimizer step. Returns the task loss (detached, float)."""
    accelerator, model = loop.accelerator, loop.model
    with accelerator.accumulate(model):
        loop.call("on_step", loop.completed_steps)
        outputs = model(**batch)
        loss = total_loss = outputs.loss
        for extension in loop.hooks:
            total_loss = extension.training_loss(total_loss, outputs, batch, model)
        for penalty in loop.call("penalty", model):
            if penalty is not None:
                total_loss = total_loss + penalty
        finite = torch.isfinite(total_loss.detach())
        bad = loop.first_bad_step
        loop.first_bad_step = torch.where(finite | (bad >= 0), bad, bad.new_full((), loop.completed_steps + 1))
        accelerator.backward(total_loss)
        if accelerator.sync_gradients:
            loop.call("on_pre_optimizer_step", model, loop.completed_steps)
        loop.optimizer.step()
        loop.scheduler.step()
        loop.optimizer.zero_grad()
    return loss.detach().float()


def log_training_loss(loop, epoch, mean_loss):
    stop_if_not_finite(loop)
    learning_rate = loop.scheduler.get_last_lr()[0]
    record = {"step": loop.completed_steps, "epoch": epoch, "split": "train", "loss": mean_loss.item(),
              "learning_rate": learning_rate}
    loop.progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{learning_rate:.2e}")
    loop.metrics_log.append(record)
    if loop.run.output.with_tracking:
        loop.accelerator.log({"train_loss": record["loss"], "learning_rate": learning_rate},
                             step=loop.completed_steps)


def stop_if_not_finite(loop):
    """One device sync at logging, evaluation and checkpoint steps, not one per micro-batch; the largest over
    processes, so that every process stops at the same point (one stopping alone would leave the others waiting)."""
    bad = int(loop.accelerator.reduce(loop.first_bad_step, reduction="max").item())
    if bad >= 0:
        raise TrainingError(f"loss became non-finite (nan or inf) at step {bad}; stopped. Last good checkpoint: "
                            f"{loop.last_checkpoint or 'none saved'}")


def save_training_state(loop, name):
    stop_if_not_finite(loop)
    loop.last_checkpoint = save_checkpoint(loop.accelerator, loop.output_dir, name, loop.plan.features)
    loop.call("on_checkpoint", loop.last_checkpoint)


# --------------------------------------------------------------------------------------------------------------------
# Stage 4: evaluate


def evaluate_now(loop, epoch):
    """Stage 4: metrics per evaluation split at the current step (with the features' figures), logged."""
    stop_if_not_finite(loop)
    step, output = loop.completed_steps, loop.run.output
    loop.call("on_step", step)
    model = loop.accelerator.unwrap_model(loop.model)
    results = evaluate(loop.model, loop.eval_loaders, loop.plan.task_data, loop.accelerator,
                       loop.predictions_log if output.save_eval_predictions else None, step)
    figures = {}
    for extra in loop.call("eval_figures", model):
        figures.update(extra)
    for split, values in results.items():
        loop.metrics_log.append({"step": step, "epoch": epoch, "split": split, **values, **figures})
        if output.with_tracking:
            loop.accelerator.log({f"{split}_{k}": v for k, v in {**values, **figures}.items()}, step=step)
    loop.progress.write(f"step {step}: " + "; ".join(
        f"{split} " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()) for split, values in results.items())
        + "".join(f"; {k} {v:.4f}" for k, v in figures.items() if isinstance(v, float)))
    loop.call("on_evaluate", step, results, model)
    return results


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
            write_text_atomic(self.path, "".join(line + "\n" for line in lines))

    def append(self, record):
        if self.accelerator.is_main_process:
            with open(self.path, "a") as file:
                file.write(json.dumps(record) + "\n")

    def records(self):
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.is_file() else []


# --------------------------------------------------------------------------------------------------------------------
# Stage 5: finish


def finish(loop, final_metrics):
    """Stage 5: test predictions, the features' export, then the model, tokenizer, plots and card (main process)."""
    accelerator, output_dir = loop.accelerator, loop.output_dir
    if "test" in loop.eval_loaders:
        write_predictions(loop.model, loop.eval_loaders["test"], loop.plan.task_data, accelerator,
                          output_dir / "predictions.tsv")
    accelerator.wait_for_everyone()
    final_model = accelerator.unwrap_model(loop.model)
    if accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
        # every process takes part; the full weights on the main one
        loop.full_state_dict = accelerator.get_state_dict(loop.model)
        if loop.plain_copy is not None:
            loop.plain_copy.load_state_dict(loop.full_state_dict)
            final_model = loop.plain_copy
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    for extension in loop.hooks:
        final_model = extension.before_save(final_model, output_dir, accelerator.is_main_process)
    save_final_outputs(loop, final_model, final_metrics)
    if loop.run.output.with_tracking:
        accelerator.end_training()


def write_predictions(model, loader, task_data, accelerator, path):
    predictions, _ = predict(model, loader, accelerator, task_data.num_labels == 1)
    if accelerator.is_main_process:
        names = task_data.label_names
        lines = ["index\tprediction"] + [
            f"{i}\t{value.item() if names is None else names[int(value)]}" for i, value in enumerate(predictions)]
        write_text_atomic(path, "\n".join(lines) + "\n")


CARD_HYPERPARAMETERS = ("learning_rate", "mix_learning_rate", "weight_decay", "per_device_train_batch_size",
                        "gradient_accumulation_steps", "num_train_epochs", "max_train_steps", "lr_scheduler_type",
                        "num_warmup_steps", "max_length", "seed")


def save_final_outputs(loop, model, final_metrics):
    """final_metrics.json, layer_mix.json (BERMo), plots; unless --no-save_model, the model (save_pretrained:
    safetensors, modeling files), tokenizer and model card."""
    from .model_card import finetuned_model_card
    from .plots import plot_layer_weights, plot_learning_curve

    run, accelerator, output_dir = loop.run, loop.accelerator, loop.output_dir
    if run.output.save_model:
        # the plain copy (FSDP, main process) holds its own full weights, after the features' export; elsewhere the
        # weights gathered at the end (FSDP / DeepSpeed ZeRO-3), or the model's own (None)
        state_dict = None if model is loop.plain_copy else loop.full_state_dict
        model.save_pretrained(output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save,
                              state_dict=state_dict)
    if not accelerator.is_main_process:
        return
    feature_figures = {}
    for info in loop.call("card_info") + loop.call("after_save", model, output_dir):
        feature_figures.update(info)
    records = loop.metrics_log.records()
    metric = loop.plan.task_data.metric
    if not any(metric in r for r in records):
        metric = next(iter(next(iter(final_metrics.values()))))
    plot_learning_curve(records, output_dir / "learning_curve.png", metric,
                        [panel for panels in loop.call("plot_panels") for panel in panels])
    is_bermo = hasattr(model, "layer_mix_weights")
    if is_bermo:
        weights, scale = model.layer_mix_weights()
        write_text_atomic(output_dir / "layer_mix.json", json.dumps({
            "layers": list(model.config.mix_layer_indices), "weights": weights.tolist(), "scale": scale.item()}) + "\n")
        plot_layer_weights(model, output_dir / "layer_weights.png")
    if run.output.save_model:
        loop.plan.tokenizer.save_pretrained(output_dir)
        if is_bermo:
            settings = run_arguments.run_to_dict(run)
            hyperparameters = {name: settings[name] for name in CARD_HYPERPARAMETERS}
            # the init this model's mix started from, and its layer dropout
            hyperparameters.update(mix_init=model.config.mix_init, mix_dropout=model.config.mix_dropout)
            hyperparameters.update(num_processes=accelerator.num_processes, mixed_precision=accelerator.mixed_precision)
            hyperparameters.update(feature_figures)  # e.g. pruning: method, thresholds/λ, measured remaining weights
            finetuned_model_card(
                model=model, task_data=loop.plan.task_data, base_model=run.model.model_name_or_path,
                final_metrics=final_metrics, hyperparameters=hyperparameters, has_layer_plot=True,
                train_size=loop.plan.train_size,
            ).save(output_dir / "README.md")
    write_text_atomic(output_dir / "final_metrics.json", json.dumps({**final_metrics, **feature_figures}, indent=2)
                      + "\n")


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints: complete or absent


def is_complete_checkpoint(path):
    return CHECKPOINT_PATTERN.match(Path(path).name) is not None and (Path(path) / FEATURES_FILE).is_file()


def latest_checkpoint(output_dir):
    """The complete step_N / epoch_N folder of the most steps (a save that was killed leaves none)."""
    found = []
    for path in Path(output_dir).iterdir() if Path(output_dir).is_dir() else []:
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir() and is_complete_checkpoint(path):
            found.append((int(match.group(2)) + (0.5 if match.group(1) == "epoch" else 0), path))
    return max(found)[1] if found else None


def find_checkpoint(output_args):
    wanted = output_args.resume_from_checkpoint
    checkpoint = latest_checkpoint(output_args.output_dir) if wanted == "latest" else Path(wanted)
    if checkpoint is None or not checkpoint.is_dir():
        raise TrainingError(f"--resume_from_checkpoint {wanted}: no saved state found")
    if not is_complete_checkpoint(checkpoint):
        raise TrainingError(f"--resume_from_checkpoint {checkpoint}: not a complete checkpoint (no {FEATURES_FILE}: "
                            "its save was interrupted, or it is not a step_N / epoch_N folder of this loop)")
    return checkpoint


def save_checkpoint(accelerator, output_dir, name, features=()):
    """Save the whole training state (model, optimizer, scheduler, RNGs, sampler, features' state) to
    OUTPUT_DIR/NAME: written into NAME.partial, completed by FEATURES_FILE (the features' configuration, checked on
    resume), then renamed. A kill at any point leaves either the complete folder or none under NAME."""
    final = Path(output_dir) / name
    partial = final.with_name(name + PARTIAL_SUFFIX)
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every process has written its part
    if accelerator.is_main_process:
        configs = {feature.name: feature.config() for feature in features if feature.config() is not None}
        write_text_atomic(partial / FEATURES_FILE, json.dumps(configs) + "\n")
        replaced = final.with_name(name + ".replaced")
        if final.exists():  # the same step saved again (a resumed run): keep the old one until the new one is in
            os.replace(final, replaced)
        os.replace(partial, final)
        shutil.rmtree(replaced, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume_position(checkpoint, steps_per_epoch, gradient_accumulation_steps):
    """(completed optimizer steps, epoch to start, batches of that epoch to skip) for a step_N/epoch_N folder."""
    match = CHECKPOINT_PATTERN.match(Path(checkpoint).name)
    if match is None:
        raise TrainingError(f"--resume_from_checkpoint {checkpoint}: expected a step_N or epoch_N folder")
    kind, number = match.group(1), int(match.group(2))
    if kind == "epoch":
        return (number + 1) * steps_per_epoch, number + 1, 0
    return number, number // steps_per_epoch, (number % steps_per_epoch) * gradient_accumulation_steps


def check_resume_features(checkpoint, features):
    """Refuse to resume a checkpoint written with other features (a feature added, dropped or configured otherwise)."""
    saved = json.loads((Path(checkpoint) / FEATURES_FILE).read_text())
    active = {feature.name: feature for feature in features}
    registry = {feature_class.name: feature_class for feature_class in registered_features()}
    for name, config in saved.items():
        if name not in active:
            known = registry.get(name)
            reason = known.describe_missing(config) if known else f"it was saved with a feature {name!r} unknown here"
            raise TrainingError(f"--resume_from_checkpoint {checkpoint}: {reason}")
    for feature in features:
        try:
            feature.check_resume(saved.get(feature.name))
        except ValueError as error:
            raise TrainingError(f"--resume_from_checkpoint {checkpoint}: {error}") from None


# --------------------------------------------------------------------------------------------------------------------
# The run


def make_accelerator(run):
    # `accelerate launch --multi_gpu` on a machine without an accelerator: run the processes on CPU with gloo
    cpu_only_distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()
    return Accelerator(
        cpu=cpu_only_distributed,
        gradient_accumulation_steps=run.optim.gradient_accumulation_steps,
        log_with=run.output.report_to if run.output.with_tracking else None,
        project_dir=run.output.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def train(run, callbacks=()):
    """Fine-tune as `run` (a `RunArguments`) says; return the final metrics {split: {metric: value}}.

    `callbacks`: `TrainingFeature` instances that observe (or extend) the loop at its hooks, after the features.
    Everything that can be refused is checked before anything is written (TrainingError: one line).
    """
    for callback in callbacks:
        if not isinstance(callback, TrainingFeature):
            raise TypeError(f"callbacks must be bermo.features.TrainingFeature instances, not {type(callback)}")
    accelerator = make_accelerator(run)
    set_seed(run.optim.seed)
    accelerator.print(f"training on {accelerator.num_processes} process(es) ({accelerator.distributed_type.value}, "
                      f"device {accelerator.device}, mixed precision {accelerator.mixed_precision})")
    plan = check(run, accelerator, callbacks)
    loop = Loop(run, plan, accelerator, [*plan.features, *callbacks], Path(run.output.output_dir))
    prepare(loop)
    final_metrics = train_steps(loop)
    finish(loop, final_metrics)
    return final_metrics


def push(run):
    """--push_to_hub: the saved output folder to the Hub (after training, on the main process)."""
    from .hub import PublishError, push_to_hub

    try:
        push_to_hub(Path(run.output.output_dir), run.output.hub_model_id, token=run.output.hub_token)
    except PublishError as error:
        raise TrainingError(str(error)) from None


def main(argv=None):
    run = parse_run(argv)
    try:
        train(run)
        if run.output.push_to_hub and PartialState().is_main_process:
            push(run)
    except TrainingError as error:
        print(f"finetune.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
