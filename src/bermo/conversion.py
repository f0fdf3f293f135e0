"""Upgrade a vanilla encoder checkpoint (BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT, DeBERTa-v2, ModernBERT) to a BERMo
checkpoint.

    bermo-convert SOURCE OUTPUT_DIR [--task ...] [--num-labels N] [--mix-init uniform|last|last:P] ...

The source is a local folder or a Hub model id (resolved like `from_pretrained`: cache, revision, HF_HUB_OFFLINE,
token) holding `model.safetensors`, a sharded safetensors index or `pytorch_model.bin`. The weights are mapped by a
pure function over names and shapes (`plan_conversion`), then streamed tensor by tensor into the output, which is
written in a temporary folder beside OUTPUT_DIR and renamed into place only when complete and verified.

Source and output never overlap (compared as resolved paths, either inside the other), even with --overwrite.
Replacing an existing OUTPUT_DIR takes two renames (old output aside, new output in); a run killed between them
leaves `.NAME.bermo-old-PID-*` beside a missing OUTPUT_DIR, and the next run puts the old output back first.

`BertLMHeadModel` (BERT trained as a causal decoder, `is_decoder=True`) converts to a BERMo base model when it has
no cross-attention weights: `is_decoder` is cleared, so the BERMo model attends in both directions, as BERT's encoder
does; verification compares it with the source run the same way. A decoder with cross-attention is refused.
"""

import argparse
import json
import os
from collections import Counter
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from transformers.utils import WEIGHTS_NAME as TORCH_WEIGHTS_NAME

from ._errors import one_line
from .hub import PublishError, push_to_hub
from .family_conversion import FamilyConversion, unsupported_model_type
from .modeling.configuration_bermo import BACKBONE_MODEL_TYPES, BermoConfig
from .pruned_heads import heads_left, load_source_model
from .modeling.modeling_bermo import (
    BermoForMultipleChoice,
    BermoForQuestionAnswering,
    BermoForSequenceClassification,
    BermoForTokenClassification,
    BermoModel,
)

OTHER_FRAMEWORK_WEIGHTS = ("tf_model.h5", "flax_model.msgpack", "model.ckpt.index")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "added_tokens.json")

# task name -> (BERMo class, the BERT class with the same head, the head's parameter prefixes, pipeline tag)
TASKS = {
    "base": (BermoModel, "BertModel", (), "feature-extraction"),
    "sequence-classification": (
        BermoForSequenceClassification,
        "BertForSequenceClassification",
        ("classifier.",),
        "text-classification",
    ),
    "token-classification": (
        BermoForTokenClassification,
        "BertForTokenClassification",
        ("classifier.",),
        "token-classification",
    ),
    "question-answering": (
        BermoForQuestionAnswering,
        "BertForQuestionAnswering",
        ("qa_outputs.",),
        "question-answering",
    ),
    "multiple-choice": (BermoForMultipleChoice, "BertForMultipleChoice", ("classifier.",), "multiple-choice"),
}
# source architecture -> the task its head does (pretraining heads are dropped: a BERMo base model)
SOURCE_ARCHITECTURES = {
    "BertModel": "base",
    "BertForPreTraining": "base",
    "BertForMaskedLM": "base",
    "BertLMHeadModel": "base",  # is_decoder cleared: see the module docstring
    "BertForNextSentencePrediction": "base",
    "BertForSequenceClassification": "sequence-classification",
    "BertForTokenClassification": "token-classification",
    "BertForQuestionAnswering": "question-answering",
    "BertForMultipleChoice": "multiple-choice",
}
BACKBONE_PREFIXES = ("embeddings.", "encoder.", "pooler.")
SOURCE_HEAD_PREFIXES = ("classifier.", "qa_outputs.")
DROPPED_PREFIXES = ("cls.",)  # BERT's pretraining heads (masked LM, next sentence)
DROPPED_BUFFERS = ("embeddings.position_ids",)
CROSS_ATTENTION = ".crossattention."  # an encoder-decoder's decoder: BERMo is encoder-only  # a buffer older checkpoints saved; rebuilt by the model
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
VERIFY_SENTENCES = [
    "BERMo mixes every layer of BERT.",
    "The quick brown fox jumps over the lazy dog, twice.",
    "A short one.",
]
# max abs difference allowed between source and output, relative to the largest source activation
VERIFY_TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


class ConversionError(Exception):
    """A problem with the input: reported as one line, exit code 2, nothing written."""


class BertConversion:
    """BERT's answers to `family_conversion.FamilyConversion`'s questions (TASKS, `plan_conversion`)."""

    model_type = "bert"

    def model_class(self, task):
        return TASKS[task][0]

    def vanilla_class(self, task):
        import transformers

        return getattr(transformers, TASKS[task][1])

    def config(self, fields, **mix):
        return BermoConfig(**fields, **mix)

    def infer_task(self, source_config, source_shapes):
        return infer_task(source_config, source_shapes)

    def head_labels(self, source_config, source_task, task):
        return source_head_labels(self._shapes, TASKS[task][2]) if task == source_task else None

    def plan(self, source_shapes, target_model, task, keep_source_head):
        target_shapes = {name: tuple(tensor.shape) for name, tensor in target_model.state_dict().items()}
        target_prefix = "" if TASKS[task][0] is BermoModel else "bert."
        return plan_conversion(source_shapes, target_shapes, TASKS[task][2], target_prefix, keep_source_head)

    def comparable_hidden_states(self, model, hidden_states):
        return hidden_states


def conversion_family(source_config, source_shapes):
    """The family-specific part of a conversion, from the source's model_type."""
    if source_config.get("model_type") == "bert":
        family = BertConversion()
        family._shapes = source_shapes
        return family
    return FamilyConversion(source_config["model_type"])


# --------------------------------------------------------------------------------------------------------------------
# Reading the source


def resolve_source(source, revision=None, token=None):
    """A local folder, or the snapshot of a Hub model id in the cache (downloaded unless HF_HUB_OFFLINE)."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise ConversionError(f"source {source} is a file; pass the folder that holds config.json and the weights")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    patterns = ["config.json", "*.safetensors", SAFE_WEIGHTS_INDEX_NAME, *TOKENIZER_FILES, "README.md"]
    try:
        folder = Path(snapshot_download(source, revision=revision, token=token, allow_patterns=patterns))
        if not find_weights(folder, required=False):
            folder = Path(
                snapshot_download(source, revision=revision, token=token, allow_patterns=[*patterns, TORCH_WEIGHTS_NAME])
            )
    except HFValidationError:
        raise ConversionError(f"source {source} not found: no such folder, and not a valid Hub model id") from None
    except Exception as error:  # network, auth, missing repo or revision: huggingface_hub says which
        raise ConversionError(f"source {source} not found as a folder or on the Hub: {one_line(error)}") from None
    return folder


def read_source_config(folder):
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{folder}: no config.json")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{config_path}: not valid JSON ({error})") from None
    model_type = config.get("model_type")
    if model_type not in BACKBONE_MODEL_TYPES:
        raise unsupported_model_type(model_type, folder)
    return config


def find_weights(folder, required=True):
    """The weight files of a checkpoint folder: safetensors (single or sharded) first, else pytorch_model.bin."""
    if (folder / SAFE_WEIGHTS_NAME).is_file():
        return [folder / SAFE_WEIGHTS_NAME]
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ConversionError(f"{index}: not a valid safetensors index ({one_line(error)})") from None
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise ConversionError(f"{index}: shards missing: {', '.join(missing)}")
        return shards
    if (folder / TORCH_WEIGHTS_NAME).is_file():
        return [folder / TORCH_WEIGHTS_NAME]
    if not required:
        return []
    others = [name for name in OTHER_FRAMEWORK_WEIGHTS if (folder / name).exists()]
    found = f" (found only {', '.join(others)}: TensorFlow/Flax weights are not read)" if others else ""
    raise ConversionError(
        f"{folder}: no PyTorch weights: {SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME} or {TORCH_WEIGHTS_NAME} missing{found}"
    )


class SourceWeights:
    """Lazy access to a checkpoint's tensors: names and shapes up front, each tensor read only when asked for."""

    def __init__(self, files):
        self._handles = []
        self._where = {}  # name -> (reader, name in the file)
        self.shapes = {}
        for path in files:
            if path.suffix == ".safetensors":
                self._open_safetensors(path)
            else:
                self._open_torch(path)

    def _open_safetensors(self, path):
        from safetensors import safe_open

        try:
            handle = safe_open(str(path), framework="pt")
            names = list(handle.keys())
            for name in names:
                self.shapes[name] = tuple(handle.get_slice(name).get_shape())
        except Exception as error:  # SafetensorError for truncated or corrupted files
            raise ConversionError(f"{path}: not a valid safetensors file ({one_line(error)})") from None
        self._handles.append(handle)
        for name in names:
            self._where[name] = (handle.get_tensor, name, path)

    def _open_torch(self, path):
        try:
            try:  # zip-format checkpoints memory-map: the tensors are read on demand
                state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error):
                    raise
                state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # anything that is not a plain state dict is refused by weights_only
            raise ConversionError(f"{path}: cannot be read as a state dict of tensors ({one_line(error)})") from None
        if not isinstance(state_dict, dict) or not all(
            isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in state_dict.items()
        ):
            raise ConversionError(f"{path}: holds {type(state_dict).__name__}, not a state dict of tensors")
        for name, tensor in state_dict.items():
            self.shapes[name] = tuple(tensor.shape)
            self._where[name] = (state_dict.__getitem__, name, path)

    def __getitem__(self, name):
        read, key, path = self._where[name]
        try:
            return read(key)
        except Exception as error:
            raise ConversionError(f"{path}: cannot read tensor {name} ({one_line(error)})") from None


# --------------------------------------------------------------------------------------------------------------------
# The mapping: a pure function over names and shapes


@dataclass
class ConversionPlan:
    """Where every output tensor comes from, and what happened to every source tensor."""

    sources: dict = field(default_factory=dict)  # output name -> source name
    dropped: dict = field(default_factory=dict)  # source name -> reason
    new: list = field(default_factory=list)  # output names written from the config (the mix)
    initialized_on_load: list = field(default_factory=list)  # output names left out: a new head, a new pooler

    def dropped_summary(self):
        """'12 pretraining-head tensors (cls.*), 1 position_ids buffers', or 'none'."""
        counts = Counter(self.dropped.values())
        return ", ".join(f"{count} {reason}" for reason, count in counts.items()) or "none"

    def summary(self):
        dropped_text = self.dropped_summary()
        new_text = ", ".join(self.new)
        if self.initialized_on_load:
            new_text += f"; initialized on load: {', '.join(self.initialized_on_load)}"
        return f"kept {len(self.sources)} tensors; dropped {len(self.dropped)} ({dropped_text}); new: {new_text}"


def canonical_source_name(name):
    """A BERT parameter name as BertFor* models name it: `bert.` prefix, LayerNorm weight/bias (not gamma/beta)."""
    if name.startswith(BACKBONE_PREFIXES):
        name = "bert." + name
    if name.endswith(".gamma"):
        name = name[: -len("gamma")] + "weight"
    elif name.endswith(".beta"):
        name = name[: -len("beta")] + "bias"
    return name


def plan_conversion(source_shapes, target_shapes, head_prefixes, target_prefix="bert.", keep_source_head=True):
    """Map a BERT state dict's names and shapes onto a BERMo model's.

    `source_shapes`: source name -> shape. `target_shapes`: BERMo name -> shape as the BERMo head names them
    (`bert.` + backbone for heads, the bare backbone for `BermoModel`, whose `target_prefix` is then "").
    `head_prefixes`: the target head's parameter prefixes; the source's head is carried over only when
    `keep_source_head` (same task), else dropped.
    Every source tensor is used or explicitly dropped, every target tensor is filled, new (the mix) or a head/pooler
    that the source does not have; anything else raises ConversionError naming the tensors.
    """
    canonical = {}
    plan = ConversionPlan()
    for name in source_shapes:
        key = canonical_source_name(name)
        if key.startswith(DROPPED_PREFIXES):
            plan.dropped[name] = "pretraining-head tensors (cls.*)"
        elif key.removeprefix("bert.") in DROPPED_BUFFERS:
            plan.dropped[name] = "position_ids buffers"
        elif key in canonical:
            raise ConversionError(f"source holds {name} and {canonical[key]}, both for {key}")
        else:
            canonical[key] = name

    def target_name(key):  # canonical source name -> output name
        return target_prefix + key.removeprefix("bert.") if key.startswith("bert.") else key

    mismatched = []
    for key, name in canonical.items():
        output = target_name(key)
        if key.startswith(SOURCE_HEAD_PREFIXES) and not keep_source_head:
            plan.dropped[name] = "task-head tensors of another task"
        elif output in target_shapes:
            if tuple(source_shapes[name]) != tuple(target_shapes[output]):
                mismatched.append(f"{name} {tuple(source_shapes[name])} vs {tuple(target_shapes[output])}")
            else:
                plan.sources[output] = name
        elif key.startswith("bert.pooler."):
            plan.dropped[name] = "pooler tensors (the head has no pooler)"
        else:
            raise ConversionError(f"source tensor {name} is not part of BERT: refusing to drop it silently")
    return complete_plan(plan, mismatched, target_shapes, target_prefix,
                         lambda output, bare: bare.startswith("pooler.") or output.startswith(head_prefixes))


def complete_plan(plan, mismatched, target_shapes, target_prefix, initialized_on_load):
    """The last step of every family's plan: refuse shape mismatches, then sort the target tensors no source tensor
    fills: the mix's (new), those the model initializes on loading (`initialized_on_load(output, bare name)`: a new
    head, a pooler) and the rest, which are missing (refused)."""
    if mismatched:
        raise ConversionError(f"shape mismatch: {'; '.join(mismatched)}")
    missing = []
    for output in target_shapes:
        if output in plan.sources:
            continue
        bare = output.removeprefix(target_prefix) if target_prefix else output
        if bare.startswith("layer_mix."):
            plan.new.append(output)
        elif initialized_on_load(output, bare):
            plan.initialized_on_load.append(output)
        else:
            missing.append(output)
    if missing:
        raise ConversionError(f"source weights missing: {', '.join(missing)}")
    return plan


# --------------------------------------------------------------------------------------------------------------------
# Writing the output


def write_safetensors(path, tensors, metadata=None, progress=None):
    """Write (name, shape, dtype, read) entries as a safetensors file, one tensor in memory at a time."""
    header, offset = {}, 0
    for name, shape, dtype, _ in tensors:
        size = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as file:
        file.write(len(header_bytes).to_bytes(8, "little"))
        file.write(header_bytes)
        for name, shape, dtype, read in tensors:
            tensor = read().to(dtype).contiguous()
            assert tuple(tensor.shape) == tuple(shape), name
            file.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
            if progress is not None:
                progress.update(1)
        file.flush()
        os.fsync(file.fileno())


def write_weights(folder, entries, max_shard_size, show_progress=True):
    """Write the entries as model.safetensors, or as shards with an index past `max_shard_size` (as transformers)."""
    from huggingface_hub import split_state_dict_into_shards_factory

    if isinstance(max_shard_size, str) and max_shard_size.isdigit():
        max_shard_size = int(max_shard_size)
    by_name = {entry[0]: entry for entry in entries}
    sizes = {name: int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
             for name, shape, dtype, _ in entries}
    try:
        split = split_state_dict_into_shards_factory(
            by_name,
            get_storage_size=lambda entry: sizes[entry[0]],
            filename_pattern=SAFE_WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors"),
            max_shard_size=max_shard_size,
        )
    except ValueError as error:
        raise ConversionError(f"--max-shard-size {max_shard_size!r}: {one_line(error)} (e.g. 5GB or 500MB)") from None
    with tqdm(total=len(entries), desc="writing tensors", unit="tensor", disable=not show_progress or None) as bar:
        for filename, names in split.filename_to_tensors.items():
            write_safetensors(folder / filename, [by_name[name] for name in names], {"format": "pt"}, bar)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def mix_init_argument(value):
    """--mix-init's type: uniform, last or last:P (argparse reports the one-line error, exit 2)."""
    from .modeling.configuration_bermo import parse_last_weight

    if value not in ("uniform", "last"):
        try:
            parse_last_weight(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return value


def bermo_config_for(source_config, task, num_labels, mix_init, mix_layers, family=None):
    """The BERMo config of the output: the source's fields (BERT's or its family's) and labels, the mix, the head's
    label count."""
    family = family or BertConversion()
    fields = {
        key: value
        for key, value in source_config.items()
        if key not in ("model_type", "architectures", "transformers_version", "auto_map", "_name_or_path")
    }
    fields.pop("torch_dtype", None)
    fields.pop("dtype", None)
    fields.pop("is_decoder", None)  # a decoder without cross-attention converts as an encoder (checked by the caller)
    fields.pop("add_cross_attention", None)
    if fields.get("pruned_heads"):  # a transformers 4.x checkpoint whose heads were pruned: per-layer head counts
        fields["layer_num_attention_heads"] = heads_left(fields)
    fields.pop("pruned_heads", None)
    if num_labels is not None and "id2label" in fields and len(fields["id2label"]) != num_labels:
        fields.pop("id2label")
        fields.pop("label2id", None)
    if num_labels is not None:
        fields["num_labels"] = num_labels
    try:
        config = family.config(fields, mix_init=mix_init, mix_layers=mix_layers)
    except ValueError as error:
        raise ConversionError(f"invalid BERMo config: {one_line(error)}") from None
    config.architectures = [family.model_class(task).__name__]
    return config


def source_head_labels(source_shapes, head_prefixes):
    """The label count of the source's task head, or None if it has none."""
    for prefix in head_prefixes:
        for name in (prefix + "weight", "bert." + prefix + "weight"):
            if name in source_shapes:
                return source_shapes[name][0]
    return None


def infer_task(source_config, source_shapes):
    architectures = source_config.get("architectures") or []
    for architecture in architectures:
        if architecture in SOURCE_ARCHITECTURES:
            return SOURCE_ARCHITECTURES[architecture], architecture
    if architectures:
        raise ConversionError(f"source architecture {architectures[0]} is not supported; pass --task")
    if any(name.startswith("qa_outputs.") for name in source_shapes):
        return "question-answering", "BertForQuestionAnswering"
    if any(name.startswith("classifier.") for name in source_shapes):
        return "sequence-classification", "BertForSequenceClassification"
    return "base", "BertModel"


@dataclass
class ConversionResult:
    output_dir: Path
    task: str
    plan: ConversionPlan
    verification: dict | None


def convert(
    source,
    output_dir,
    task=None,
    num_labels=None,
    mix_init="uniform",
    mix_layers=None,
    dtype="float32",
    revision=None,
    token=None,
    base_model=None,
    overwrite=False,
    verify=True,
    max_shard_size="5GB",
    show_progress=True,
    log=print,
):
    """Convert a BERT checkpoint (folder or Hub id) into a BERMo checkpoint folder; see the module docstring."""
    output_dir = Path(output_dir).absolute()
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if task is not None and task not in TASKS:
        raise ConversionError(f"--task {task!r}: choose one of {', '.join(TASKS)}")
    folder = resolve_source(source, revision=revision, token=token)
    check_no_overlap(folder, output_dir)
    recover_interrupted_runs(output_dir, log)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"output {output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConversionError(f"output {output_dir} exists and is not empty; pass --overwrite to replace it")
    source_config = read_source_config(folder)
    weights = SourceWeights(find_weights(folder))
    family = conversion_family(source_config, weights.shapes)
    source_task, source_architecture = family.infer_task(source_config, weights.shapes)
    cross_attention = [name for name in weights.shapes if CROSS_ATTENTION in name]
    if cross_attention or source_config.get("add_cross_attention"):
        raise ConversionError(
            f"source is a decoder with cross-attention ({cross_attention[0] if cross_attention else 'add_cross_attention'}):"
            " BERMo is encoder-only"
        )
    notes = []
    if source_config.get("is_decoder"):
        from .model_card import FAMILY_NAMES

        family_name = FAMILY_NAMES.get(source_config.get("model_type"), "BERT")
        notes.append("The source was saved as a decoder (`is_decoder=True`, causal attention) without cross-attention; "
                     f"`is_decoder` was cleared: this model attends in both directions, as {family_name}'s encoder "
                     "does, and its outputs match the source's run that way, not its causal language-model outputs.")
        log(f"{source}: is_decoder=True cleared; converted as an encoder (attends in both directions)")
    if heads_left(source_config):
        notes.append(f"The source's attention heads were pruned (transformers 4.x `pruned_heads`); its layers keep "
                     f"{heads_left(source_config)} heads, recorded as `layer_num_attention_heads`.")
    task = task or source_task
    model_class = family.model_class(task)
    head_labels = family.head_labels(source_config, source_task, task)
    if head_labels is not None and num_labels is not None and task != "multiple-choice" and num_labels != head_labels:
        raise ConversionError(
            f"--num-labels {num_labels} conflicts with the source's fine-tuned {task} head, which has {head_labels}"
        )
    if task == "question-answering":
        num_labels = 2
    target_dtype = DTYPES[dtype]
    config = bermo_config_for(source_config, task, num_labels, mix_init, mix_layers, family)

    with torch.device("meta"):
        meta_model = model_class(config)
    target_shapes = {name: tuple(tensor.shape) for name, tensor in meta_model.state_dict().items()}
    plan = family.plan(weights.shapes, meta_model, task, task == source_task)
    log(f"{source} ({source_architecture}) -> {model_class.__name__}: {plan.summary()}")

    mix_logits = torch.tensor(config.initial_mix_logits(), dtype=torch.float32)
    new_values = {name: (mix_logits if name.endswith("logits") else torch.ones(1)) for name in plan.new}
    entries = [
        (name, target_shapes[name], target_dtype, lambda source_name=source_name: weights[source_name])
        for name, source_name in plan.sources.items()
    ] + [(name, target_shapes[name], torch.float32, lambda value=value: value) for name, value in new_values.items()]

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.bermo-tmp-{os.getpid()}-", dir=output_dir.parent))
    try:
        write_weights(staging, entries, max_shard_size, show_progress)
        entries = weights = None  # release the source's mapped tensors before verification loads both models
        meta_model.set_auto_map()
        from transformers.dynamic_module_utils import custom_object_save

        custom_object_save(meta_model, staging, config=config)
        config.save_pretrained(staging)
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, staging / name)
        verification = verify_conversion(folder, staging, task, plan, target_dtype, log, family) if verify else None
        from .model_card import converted_model_card

        converted_model_card(
            source=source, base_model=base_model or (None if Path(source).is_dir() else source), revision=revision,
            source_architecture=source_architecture, task=task, config=config, plan=plan, verification=verification,
            dtype=dtype, source_folder=folder, pipeline_tag=TASKS[task][3], model_class=model_class,
            auto_class=model_class._auto_class, notes=notes,
        ).save(staging / "README.md")
        replace_folder(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"wrote {output_dir}")
    return ConversionResult(output_dir=output_dir, task=task, plan=plan, verification=verification)


def check_no_overlap(source_folder, output_dir):
    """Refuse an OUTPUT_DIR that is the source, inside it, or holds it (resolved paths: symlinks followed).

    The files of a Hub snapshot are symlinks into the cache's blobs: their folders count as the source too.
    """
    output = output_dir.resolve()
    source_paths = {source_folder.resolve()}
    source_paths |= {path.resolve().parent for path in source_folder.iterdir() if path.is_symlink()}
    for source in sorted(source_paths):
        if output == source:
            raise ConversionError(f"output {output_dir} is the source folder {source}: the source is never modified")
        if source in output.parents:
            raise ConversionError(f"output {output_dir} is inside the source {source}: the source is never modified")
        if output in source.parents:
            raise ConversionError(
                f"output {output_dir} holds the source {source}: replacing it would delete the source; "
                "choose an output folder outside it"
            )


def owner_is_alive(path, marker, unknown=True):
    """Whether the process whose id follows MARKER in PATH's name still runs; UNKNOWN if the name has no id."""
    try:
        pid = int(path.name.split(marker)[1].split("-")[0])
    except (ValueError, IndexError):
        return unknown
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def recover_interrupted_runs(output_dir, log=print):
    """Undo what runs killed before they finished left beside OUTPUT_DIR (their process is gone).

    A run killed between the two renames of `replace_folder` left OUTPUT_DIR missing and the previous output in
    `.NAME.bermo-old-PID-*/old`: it is put back (the killed run never finished, so the output is as before it).
    Then the aside folders and the staging folders (`.NAME.bermo-tmp-PID-*`) of dead runs are removed.
    """
    if not output_dir.parent.is_dir():
        return
    for aside in sorted(output_dir.parent.glob(f".{output_dir.name}.bermo-old-*")):
        if owner_is_alive(aside, "bermo-old-", unknown=False):  # (bermo 0.x before the id was in the name)
            continue  # a run in progress
        old = aside / "old"
        if not output_dir.exists() and old.is_dir():
            os.rename(old, output_dir)
            log(f"restored {output_dir} from {aside.name}, left by a run killed while replacing it")
        shutil.rmtree(aside, ignore_errors=True)
    for staging in output_dir.parent.glob(f".{output_dir.name}.bermo-tmp-*"):
        if not owner_is_alive(staging, "bermo-tmp-"):
            shutil.rmtree(staging, ignore_errors=True)


def replace_folder(staging, output_dir):
    """Move the finished staging folder to OUTPUT_DIR; an existing OUTPUT_DIR is moved aside first, then removed.

    Between the two renames OUTPUT_DIR is missing and the previous one is in `.NAME.bermo-old-PID-*/old`: an error
    there moves it back at once, a kill leaves it for `recover_interrupted_runs` in the next run.
    """
    if output_dir.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.bermo-old-{os.getpid()}-", dir=output_dir.parent))
        os.rename(output_dir, aside / "old")
        try:
            os.rename(staging, output_dir)
        except BaseException:
            os.rename(aside / "old", output_dir)
            shutil.rmtree(aside, ignore_errors=True)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(staging, output_dir)


# --------------------------------------------------------------------------------------------------------------------
# Verification


def verification_inputs(folder, vocab_size):
    from transformers import AutoTokenizer

    # (transformers 5 makes a special-tokens-only tokenizer for a folder without tokenizer files: check first)
    if any((Path(folder) / name).is_file() for name in TOKENIZER_FILES if name != "special_tokens_map.json"):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            return dict(tokenizer(VERIFY_SENTENCES, padding=True, return_tensors="pt")), "tokenized sentences"
        except Exception:  # an unusable tokenizer: fall back to random ids
            pass
    # no usable tokenizer in the source: random token ids exercise the same weights
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, vocab_size, (3, 16), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 10:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}, "random token ids (no tokenizer)"


def read_state_dict(folder):
    weights = SourceWeights(find_weights(Path(folder)))
    return {name: weights[name] for name in weights.shapes}


def verify_conversion(source_folder, output_folder, task, plan, dtype, log=print, family=None):
    """Reload the output and compare it with the source on a few inputs; raise ConversionError on a mismatch.

    Every backbone hidden state is compared. With `mix_init="last"` the output must also equal the source's: the
    head's outputs when the source's head was carried over, else the (mixed) last hidden state and the pooler output
    (when the source has a pooler).
    """
    family = family or BertConversion()
    new = " ".join(plan.initialized_on_load)
    head_converted = task != "base" and not any(
        name.removeprefix(family.model_class(task).base_model_prefix + ".") == name for name in plan.initialized_on_load
    )
    pooler_converted = "pooler." not in new

    source_class = family.vanilla_class(task if head_converted else "base")
    # is_decoder=False: a BertLMHeadModel source is compared as the encoder it was converted to
    decoder = {"is_decoder": False} if "is_decoder" in read_source_config(Path(source_folder)) else {}
    source_model = load_source_model(source_class, source_folder, read_state_dict, dtype=torch.float32,
                                     **decoder).eval()
    output_model = family.model_class(task).from_pretrained(output_folder, dtype=torch.float32).eval()
    inputs, kind = verification_inputs(source_folder, source_model.config.vocab_size)
    if task == "multiple-choice" and head_converted:
        inputs = {name: tensor.unsqueeze(0) for name, tensor in inputs.items()}
    compared_model = output_model if head_converted or task == "base" else output_model.base_model
    with torch.no_grad():
        theirs = source_model(**inputs, output_hidden_states=True)
        ours = compared_model(**inputs, output_hidden_states=True)
    # (layers above the highest mixed one are not built: their hidden states are not compared)
    hidden_states = family.comparable_hidden_states(output_model, ours.hidden_states)
    pairs = {f"hidden_states[{i}]": pair for i, pair in enumerate(zip(hidden_states, theirs.hidden_states))}
    if output_model.config.mix_init == "last":
        for name in ("logits", "start_logits", "end_logits", "last_hidden_state", "pooler_output"):
            if name == "pooler_output" and not pooler_converted:
                continue
            if getattr(ours, name, None) is not None and getattr(theirs, name, None) is not None:
                pairs[name] = (getattr(ours, name), getattr(theirs, name))
    tolerance = VERIFY_TOLERANCE[dtype]
    result, failures = {"inputs": kind, "tolerance": tolerance}, []
    for name, (a, b) in pairs.items():
        difference = (a - b).abs().max().item()
        allowed = tolerance * max(1.0, b.abs().max().item())
        group = "hidden_states" if name.startswith("hidden_states") else name
        result[f"{group}_max_abs_diff"] = max(result.get(f"{group}_max_abs_diff", 0.0), difference)
        if difference > allowed:
            failures.append(f"{name} differs by {difference:.3g} (allowed {allowed:.3g})")
    figures = ", ".join(f"{key} {value:.3g}" for key, value in result.items() if key not in ("inputs", "tolerance"))
    log(f"verified on {kind}: {figures} (tolerance {tolerance:g})")
    if failures:
        raise ConversionError(f"verification failed: {'; '.join(failures)}")
    return result


# --------------------------------------------------------------------------------------------------------------------
# Command line


def build_parser():
    parser = argparse.ArgumentParser(
        prog="bermo-convert",
        description="Upgrade a vanilla encoder checkpoint (BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT, DeBERTa-v2, "
        "ModernBERT; folder or Hub model id) to a BERMo checkpoint that loads "
        "with trust_remote_code=True or with the bermo package installed.",
        epilog="example:\n  bermo-convert google-bert/bert-base-uncased ./bert-base-uncased-bermo --mix-init uniform\n"
        "  bermo-convert ./my-bert-sst2 ./my-bermo-sst2 --mix-init last   # exact: same logits as the source\n"
        "exit codes: 0 done, 2 bad input (nothing written).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="encoder checkpoint: a local folder or a Hub model id (e.g. google-bert/bert-base-uncased, "
                        "FacebookAI/roberta-base, microsoft/deberta-v3-base)")
    parser.add_argument("output_dir", help="folder to write the BERMo checkpoint to (refused if non-empty, unless --overwrite)")
    parser.add_argument(
        "--task", choices=list(TASKS),
        help="head of the output; default: the source's head (pretraining heads give 'base'). "
        "Example: --task sequence-classification --num-labels 3",
    )
    parser.add_argument("--num-labels", type=int, help="labels of a new classification head (default: the source's, else 2)")
    parser.add_argument(
        "--mix-init", type=mix_init_argument, default="uniform",
        help="initial layer mix: 'uniform' (zero logits, default), 'last' (all weight on the last layer: the output "
        "equals BERT's, and verification also compares the head's outputs) or 'last:P' (weight P in (0, 1) on the "
        "last layer, the rest spread evenly; e.g. last:0.9)",
    )
    parser.add_argument(
        "--mix-layers", type=int, nargs="+", metavar="INDEX",
        help="representations to mix, as indices into 0..L (0 = embeddings, -1 = last layer); default all. "
        "Example: --mix-layers 0 -4 -3 -2 -1",
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="dtype of the written weights (the mix stays float32)")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) of SOURCE")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the cached login)")
    parser.add_argument(
        "--base-model", metavar="REPO_ID",
        help="Hub id of the source, recorded as base_model in the model card (default: SOURCE when it is a Hub id)",
    )
    parser.add_argument("--max-shard-size", default="5GB", help="shard the weights past this size (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT_DIR")
    parser.add_argument(
        "--no-verify", dest="verify", action="store_false",
        help="skip reloading the output and comparing it with the source (faster, one copy of the weights in memory)",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="after converting, push OUTPUT_DIR to this Hub repo")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        result = convert(
            args.source, args.output_dir, task=args.task, num_labels=args.num_labels, mix_init=args.mix_init,
            mix_layers=args.mix_layers, dtype=args.dtype, revision=args.revision, token=args.token,
            base_model=args.base_model, overwrite=args.overwrite, verify=args.verify, max_shard_size=args.max_shard_size,
        )
        if args.push_to_hub:
            push_to_hub(result.output_dir, args.push_to_hub, token=args.token)
    except (ConversionError, PublishError) as error:
        print(f"bermo-convert: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
