"""Benchmark BERMo against BERT in one run: activation memory and time of inference and of a training step.

For each head pair (BertForSequenceClassification vs BermoForSequenceClassification, BertForTokenClassification vs
BermoForTokenClassification) a randomly initialized BERT is saved to a temporary directory, and both models are
loaded from it with `from_pretrained`, so they share every weight (BERMo adds only its layer mix). Each
(model, mode) measurement runs in a fresh worker process, so that no allocator cache or memory of one measurement
shows in the next; the table reports BERMo/BERT ratios measured in this run.

Modes:
    inference   model.eval(), torch.no_grad(), one forward pass (batch --infer-batch x --infer-seq tokens).
    train step  model.train() with dropout 0, forward + backward + AdamW step (batch --train-batch x --train-seq).

Activation peak: the peak memory during the timed runs minus the memory just before them, i.e. without weights,
inputs, gradients and optimizer state (all allocated by the warm-up). On CUDA it is read from the caching allocator
(`max_memory_allocated`); on CPU from the process's peak resident set size (Linux: the peak, VmHWM, is reset by
writing "5" to /proc/self/clear_refs, and glibc is told to give freed blocks of 64 KiB or more back to the system,
so that the resident set follows the live tensors).

With `--family F` (roberta, xlm-roberta, electra, distilbert, deberta-v2, modernbert) the pair is that family's
vanilla head (e.g. RobertaForSequenceClassification) and its BERMo head (BermoRobertaForSequenceClassification), on
a random checkpoint of the family's own config at a common size (--family-size: "small", hidden 256, 4 layers,
4 heads, FFN 1024, or "base", hidden 768, 12 layers, 12 heads, FFN 3072; ModernBERT's FFN 1152 at base), with the
goals of issue 17: sequence-head inference peak ≤ 1.02x, token-head ≤ 1.10x, train step ≤ 1.03x.

Usage (from the repository root):
    python bench/bench_model.py                 # bert-base size
    python bench/bench_model.py --tiny          # 2 layers, hidden 64: a smoke test that runs in seconds
    python bench/bench_model.py --family roberta --family-size small --infer-batch 16 --infer-seq 128
"""

import argparse
import concurrent.futures
import ctypes
import gc
import json
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

import bermo
from bermo import BermoForSequenceClassification, BermoForTokenClassification

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY_CONFIG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
MIB = 2**20

# glibc mallopt parameters (malloc.h): blocks of this size or more are mmap'ed, and so unmapped when freed.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
CPU_MMAP_THRESHOLD = 64 * 1024


@dataclass(frozen=True)
class Head:
    """A pair of models to compare and the goals that BERMo's ratios should meet."""

    name: str
    bert_class: type
    bermo_class: type
    per_token_labels: bool
    inference_peak_goal: str
    inference_peak_limit: float = 1.10
    family: str = "bert"


HEADS = (
    Head("sequence classification", BertForSequenceClassification, BermoForSequenceClassification, False,
         "≤ 1.10x (aim ≈ 1.00x)"),
    Head("token classification", BertForTokenClassification, BermoForTokenClassification, True, "≤ 1.10x"),
)
TRAIN_TIME_LIMIT = 1.03
FAMILY_SIZES = {
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def family_heads(family):
    """The (vanilla, BERMo) pairs of a non-BERT family, with issue 17's goals."""
    from bermo.modeling.families_bermo import FAMILIES, bermo_family_classes

    classes = bermo_family_classes(family)
    pairs = (("sequence classification", "AutoModelForSequenceClassification", False, "≤ 1.02x", 1.02),
             ("token classification", "AutoModelForTokenClassification", True, "≤ 1.10x", 1.10))
    return tuple(
        Head(name, FAMILIES[family].vanilla_class(auto_class), classes[auto_class], per_token, goal, limit, family)
        for name, auto_class, per_token, goal, limit in pairs
    )


def family_config(family, size):
    """The family's own config at a common size, dropout 0 (a timing bench)."""
    shape = dict(FAMILY_SIZES[size])
    if family == "distilbert":
        shape = dict(dim=shape["hidden_size"], n_layers=shape["num_hidden_layers"], n_heads=shape["num_attention_heads"],
                     hidden_dim=shape["intermediate_size"], dropout=0.0, attention_dropout=0.0)
    elif family == "modernbert":
        shape["intermediate_size"] = 1152 if size == "base" else 384  # its GLU doubles the first projection
        shape.update(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)  # (vocab below)
    else:
        shape.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if family == "electra":
        shape["embedding_size"] = shape["hidden_size"] // 2
    if family == "deberta-v2":  # as deberta-v3
        shape.update(relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=256, norm_rel_ebd="layer_norm",
                     max_relative_positions=-1)
    shape["vocab_size"] = 30522  # the same embedding (and optimizer state) size for every family
    return transformers.AutoConfig.for_model(family, **shape)


@dataclass(frozen=True)
class Measurement:
    """One (model, mode) measurement, as sent to a worker process."""

    model_class: type
    checkpoint: str
    mode: str  # "inference" or "train"
    batch: int
    seq: int
    per_token_labels: bool
    device: str
    dtype: str
    attn_implementation: str
    warmup: int
    repeats: int


# ----------------------------------------------------------------------------------------------------------------
# Worker side: runs in a fresh process per measurement.


def _status_kib(field):
    """A field of /proc/self/status (VmRSS, VmHWM, ...) in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class RssPeakProbe:
    """CPU: the process's peak resident set size above its resident size at `start` (Linux only)."""

    def __init__(self):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, CPU_MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, CPU_MMAP_THRESHOLD)
        self.baseline_kib = None

    def start(self):
        gc.collect()
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current VmRSS
        self.baseline_kib = _status_kib("VmRSS")

    def peak_bytes(self):
        return (_status_kib("VmHWM") - self.baseline_kib) * 1024


class CudaPeakProbe:
    """CUDA: the caching allocator's peak of allocated bytes above the bytes allocated at `start`."""

    def __init__(self):
        self.baseline = None

    def start(self):
        gc.collect()
        torch.cuda.synchronize()
        self.baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()

    def peak_bytes(self):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - self.baseline


def _make_inputs(spec, config):
    """Random token ids, a full attention mask and random labels, the same for every model (fixed seed)."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(config.vocab_size, (spec.batch, spec.seq), generator=generator)
    label_shape = (spec.batch, spec.seq) if spec.per_token_labels else (spec.batch,)
    labels = torch.randint(config.num_labels, label_shape, generator=generator)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    return {name: tensor.to(spec.device) for name, tensor in inputs.items()}, labels.to(spec.device)


def _inference_step(model, inputs):
    """One forward pass in evaluation mode without autograd."""
    model.eval()

    def step():
        with torch.no_grad():
            model(**inputs)

    return step


def _train_step(model, inputs, labels):
    """One training step: forward with the loss, backward, AdamW update."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        # Gradients are zeroed in place, not freed: like the optimizer state they count as the state before the step.
        optimizer.zero_grad(set_to_none=False)
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()

    return step


def _quiet_transformers():
    """No progress bars, and no warning that a BERT checkpoint is loaded into a BERMo model (that is the point)."""
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _load_step(spec):
    """(the model's timed step for `spec.mode`, synchronize)."""
    # (a family without SDPA attention, DeBERTa-v2, runs its own attention for both models)
    attention = spec.attn_implementation if getattr(spec.model_class, "_supports_sdpa", False) else "eager"
    model = spec.model_class.from_pretrained(
        spec.checkpoint, dtype=DTYPES[spec.dtype], attn_implementation=attention
    ).to(spec.device)
    inputs, labels = _make_inputs(spec, model.config)
    step = _inference_step(model, inputs) if spec.mode == "inference" else _train_step(model, inputs, labels)
    synchronize = torch.cuda.synchronize if spec.device.startswith("cuda") else (lambda: None)
    return step, synchronize


def measure_interleaved(specs):
    """{label: median seconds} of the specs' steps, all models in this one process and their steps alternated in
    every repeat (after each one's warm-up), so that a drift of the machine's speed affects them alike."""
    _quiet_transformers()
    steps = {label: _load_step(spec) for label, spec in specs.items()}
    repeats = max(spec.repeats for spec in specs.values())
    for label, (step, synchronize) in steps.items():
        for _ in range(specs[label].warmup):
            step()
        synchronize()
    times = {label: [] for label in specs}
    for _ in range(repeats):
        for label, (step, synchronize) in steps.items():
            synchronize()
            start = time.perf_counter()
            step()
            synchronize()
            times[label].append(time.perf_counter() - start)
    return {label: {"median_s": statistics.median(values), "times_s": values} for label, values in times.items()}


def measure(spec):
    """Load the model, warm up, then time `spec.repeats` runs and record their activation peak."""
    _quiet_transformers()
    on_cuda = spec.device.startswith("cuda")
    probe = CudaPeakProbe() if on_cuda else RssPeakProbe()
    step, synchronize = _load_step(spec)
    for _ in range(spec.warmup):
        step()
    synchronize()
    probe.start()
    times = []
    for _ in range(spec.repeats):
        synchronize()
        start = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - start)
    return {"peak_bytes": probe.peak_bytes(), "median_s": statistics.median(times), "times_s": times}


# ----------------------------------------------------------------------------------------------------------------
# Driver side.


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 64 instead of bert-base (smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (default: 5 on cuda, 3 on cpu)")
    parser.add_argument("--warmup", type=int, help="untimed runs before them (default: 3 on cuda, 1 on cpu)")
    parser.add_argument("--infer-batch", type=int, default=64)
    parser.add_argument("--infer-seq", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--train-seq", type=int, default=128)
    parser.add_argument("--family", default="bert",
                        choices=["bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "modernbert"],
                        help="the encoder family to compare with its BERMo (default bert)")
    parser.add_argument("--family-size", default="small", choices=sorted(FAMILY_SIZES),
                        help="with --family other than bert: the common model size (default small)")
    parser.add_argument("--timing", default="interleaved", choices=["interleaved", "separate"],
                        help="where the times come from: both models in one process, their steps alternated "
                        "(default; robust to a machine whose speed drifts), or each model's own process (the one "
                        "that also measures its activation peak)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    on_cuda = args.device == "cuda"
    if args.repeats is None:
        args.repeats = 5 if on_cuda else 3
    if args.warmup is None:
        args.warmup = 3 if on_cuda else 1
    if args.repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup must be at least 1 (the warm-up allocates gradients and optimizer state)")
    if on_cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def save_random_bert(head, args, directory):
    """Save a randomly initialized BERT with `head`'s task head (dropout 0) and return its directory."""
    if head.family == "bert":
        config = BertConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **(TINY_CONFIG if args.tiny else {}))
    else:
        config = family_config(head.family, args.family_size)
    torch.manual_seed(0)
    path = Path(directory) / head.bert_class.__name__
    head.bert_class(config).save_pretrained(path)
    return str(path)


def run_head(head, args, executor, directory):
    """Measure both models of `head` in both modes: {"bert"|"bermo": {"inference"|"train": result}}."""
    checkpoint = save_random_bert(head, args, directory)
    shapes = {"inference": (args.infer_batch, args.infer_seq), "train": (args.train_batch, args.train_seq)}
    results = {"bert": {}, "bermo": {}}
    # BERT and BERMo alternate, so that a drift of the machine's speed affects both alike.
    for mode, (batch, seq) in shapes.items():
        specs = {}
        for label, model_class in (("bert", head.bert_class), ("bermo", head.bermo_class)):
            specs[label] = spec = Measurement(
                model_class, checkpoint, mode, batch, seq, head.per_token_labels, args.device, args.dtype,
                args.attn_implementation, args.warmup, args.repeats,
            )
            print(f"  {model_class.__name__}: {mode} {batch}x{seq} ...", file=sys.stderr, flush=True)
            results[label][mode] = executor.submit(measure, spec).result()
        if args.timing == "interleaved":  # the times: both models in one process, their steps alternated
            print(f"  both: {mode} {batch}x{seq}, interleaved ...", file=sys.stderr, flush=True)
            for label, timed in executor.submit(measure_interleaved, specs).result().items():
                results[label][mode].update(timed, separate_median_s=results[label][mode]["median_s"])
    return results


def table_rows(head, results, args):
    """(metric, BERT value, BERMo value, ratio, goal) rows, values formatted."""
    infer = f"{args.infer_batch}x{args.infer_seq}"
    train = f"{args.train_batch}x{args.train_seq}"
    metrics = (
        (f"inference {infer}: activation peak (MiB)", "inference", "peak_bytes", MIB, head.inference_peak_limit,
         head.inference_peak_goal),
        (f"inference {infer}: median time (ms)", "inference", "median_s", 1e-3, None, "—"),
        (f"train step {train}: median time (ms)", "train", "median_s", 1e-3, TRAIN_TIME_LIMIT, "≤ 1.03x"),
        (f"train step {train}: activation peak (MiB)", "train", "peak_bytes", MIB, None, "—"),
    )
    rows = []
    for name, mode, key, unit, limit, goal in metrics:
        bert, bermo_value = results["bert"][mode][key], results["bermo"][mode][key]
        ratio = bermo_value / bert if bert > 0 else float("nan")
        if limit is not None:
            goal += ": met" if ratio <= limit else ": missed"
        rows.append((name, f"{bert / unit:.1f}", f"{bermo_value / unit:.1f}", f"{ratio:.3f}x", goal))
    return rows


def markdown_table(head, rows):
    """`head`'s title and its rows as a markdown table."""
    lines = [
        f"### {head.name}: {head.bert_class.__name__} vs {head.bermo_class.__name__}",
        "",
        "| metric | vanilla | BERMo | ratio (BERMo/vanilla) | goal |",
        "|---|---:|---:|---:|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def environment(args):
    """What the numbers depend on: the command, the device, the precision and the library versions."""
    if args.device == "cuda":
        device = f"cuda ({torch.cuda.get_device_name()})"
    else:
        load = os.getloadavg()[0]  # other work on the machine slows the CPU timings
        device = f"cpu ({platform.machine()}, {torch.get_num_threads()} threads, load average {load:.2f} at start)"
    return {
        "command": shlex.join(sys.orig_argv),
        "device": device,
        "dtype": args.dtype,
        "attn_implementation": args.attn_implementation,
        "model": (f"{args.family}, {args.family_size} (" + ", ".join(f"{k}={v}" for k, v in FAMILY_SIZES[args.family_size].items())
                  + ")") if args.family != "bert" else
                 ("tiny (" + ", ".join(f"{k}={v}" for k, v in TINY_CONFIG.items()) + ")") if args.tiny else "bert-base",
        "warmup": args.warmup,
        "repeats": args.repeats,
        "timing": args.timing,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "bermo": bermo.__version__,
    }


def main(argv=None):
    args = parse_args(argv)
    _quiet_transformers()
    # Workers fork from a server that has only imported these modules: each measurement starts from a clean process.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers", "bermo"])
    env = environment(args)
    report = {"environment": env, "heads": {}}
    with tempfile.TemporaryDirectory() as directory, concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=context, max_tasks_per_child=1
    ) as executor:
        tables = []
        for head in HEADS if args.family == "bert" else family_heads(args.family):
            print(f"{head.name}:", file=sys.stderr, flush=True)
            results = run_head(head, args, executor, directory)
            rows = table_rows(head, results, args)
            tables.append(markdown_table(head, rows))
            report["heads"][head.name] = {"results": results, "table": rows}
    print("\n".join(f"- {key}: {value}" for key, value in env.items()))
    print()
    print("\n\n".join(tables))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
