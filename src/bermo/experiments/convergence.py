"""`bermo-experiment convergence`: how many steps BERT and BERMo need to reach a dev target, seed by seed.

For each seed, BERT and BERMo are fine-tuned from one BERT checkpoint by the training loop (`--model_type bert` /
`bermo`: same data order, same head initialization for the same seed), evaluating every `--eval_steps` with
per-example dev predictions. The target for fraction q is q x (median over seeds of BERT's best dev metric); a
run's steps to target are where the 3-point trailing moving average of its dev curve first reaches it, over full
windows only (from the third evaluation on: no single evaluation counts alone), interpolated between evaluations
(infinite when never). S(q) = median steps(BERT) / median steps(BERMo), with a bootstrap CI over seeds (paired) and
dev examples, and P(S > 1) over all replicates (a replicate where neither model gets there counts as not faster).
"""

import argparse
import math
from pathlib import Path

import numpy as np

from bermo.arguments import command_line, run_to_dict

from . import stats
from .common import (MODELS, PAPER, add_common_options, base_run, check_common, default_checkpoint, finetune_run,
                     json_safe, launch, load_task_data, model_run, read_curve, refuse_owned,
                     training_options)
from .runner import Experiment, ExperimentError

# finetune.py's options that the experiment sets per run or refuses
OWNED_BY_EXPERIMENT = ("model_type", "seed", "test_file", "trust_remote_code")
DEFAULT_TARGETS = (0.95, 0.98, 1.0)
CURVE_METRICS = ("accuracy", "f1", "matthews_correlation", "pearson")
CPU_DEFAULTS = dict(max_train_steps=200, per_device_train_batch_size=16, per_device_eval_batch_size=64)


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "convergence", help="steps to a dev target: BERT vs BERMo, over seeds", parents=[training_options()],
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="CPU scale (the default, under an hour on 2 cores): all-MiniLM-L6-v2, 3 seeds, 200 steps of "
        "16 examples, evaluation every 20.\nFull scale on GPUs: --model_name_or_path bert-base-uncased --task_name mnli "
        "--glue_dir GLUE --seeds 5 --max_train_steps 20000 --eval_steps 500 --per_device_train_batch_size 32 "
        "--learning_rate 2e-5 --jobs <number of GPUs>",
    )
    parser.set_defaults(model_name_or_path=default_checkpoint(), **CPU_DEFAULTS)
    group = parser.add_argument_group("convergence")
    group.add_argument("--eval_steps", type=int, default=20, help="evaluate the dev set every N optimizer steps")
    group.add_argument("--targets", type=float, nargs="+", default=list(DEFAULT_TARGETS),
                       help="fractions q of the median over seeds of BERT's best dev metric (each in (0, 1.5])")
    group.add_argument("--metric", help="the dev metric of the curves (default: the task's: accuracy, f1 for "
                       "QQP/MRPC, matthews_correlation for CoLA, pearson for STS-B)")
    group.add_argument("--window", type=int, default=3, help="points of the trailing moving average (full windows only: a curve reaches a target from its "
                       "WINDOW-th evaluation on)")
    group.add_argument("--paper_task", choices=sorted(PAPER["convergence_speedup"]),
                       help="quote the paper's speedup for this task beside ours (default: --task_name if the "
                       "paper has it)")
    add_common_options(parser)
    return parser


def check_args(args):
    seeds = check_common(args)
    refuse_owned(args, OWNED_BY_EXPERIMENT)
    for q in args.targets:
        if not 0 < q <= 1.5:
            raise ExperimentError(f"--targets {q}: each target fraction must be in (0, 1.5]")
    if args.eval_steps < 1:
        raise ExperimentError("--eval_steps must be at least 1")
    if args.max_train_steps is None or args.max_train_steps < 1:
        raise ExperimentError("--max_train_steps must be at least 1")
    if args.eval_steps > args.max_train_steps:
        raise ExperimentError(f"--eval_steps {args.eval_steps} is more than --max_train_steps {args.max_train_steps}:"
                              " the curve would have one point")
    if args.window < 1:
        raise ExperimentError("--window must be at least 1")
    return seeds


def plan(args):
    """The experiment (its runs) and what the analysis needs to know about the data."""
    seeds = check_args(args)
    if args.metric not in (None, *CURVE_METRICS):  # before the data is read: bad flags cost nothing
        raise ExperimentError(f"--metric {args.metric}: choose {', '.join(CURVE_METRICS[:-1])} or {CURVE_METRICS[-1]}")
    base = base_run(args, eval_steps=args.eval_steps, save_eval_predictions=True)
    task_data = load_task_data(base.data)
    metric = args.metric or task_data.metric
    if task_data.num_labels == 1 and metric != "pearson":
        raise ExperimentError(f"--metric {metric}: this is a regression task; use pearson")
    runs = [finetune_run(model_run(base, model, seed), f"{model} seed {seed}")
            for seed in seeds for model in MODELS]
    # what every run shares, for people: the flags that give it (model type and seed vary per run)
    shared = {k: v for k, v in run_to_dict(base).items() if k not in ("output_dir", "model_type", "seed")}
    config = {"train_args": command_line(shared), "seeds": seeds, "models": list(MODELS)}
    data = {"name": task_data.name, "eval_split": task_data.eval_splits[0], "metric": metric,
            "train_rows": len(task_data.splits["train"]),
            "dev_rows": len(task_data.splits[task_data.eval_splits[0]])}
    return Experiment(Path(args.output_dir), "convergence", config, runs), data


def run(args):
    from .report import write_convergence_report

    experiment, data = plan(args)
    records = launch(experiment, args)
    if args.launcher == "plan":
        return experiment.output_dir / "pending.txt"
    paper_task = args.paper_task or (args.task_name if args.task_name in PAPER["convergence_speedup"] else None)
    summary = analyze(experiment, records, data, args.targets, confidence=args.confidence,
                      n_resamples=args.n_bootstrap, window=args.window, paper_task=paper_task,
                      checkpoint=args.model_name_or_path)
    write_convergence_report(experiment.output_dir, summary)
    return experiment.output_dir / "summary.md"


# --------------------------------------------------------------------------------------------------------------------
# Analysis: records -> numbers


def analyze(experiment, records, data, targets, confidence=0.95, n_resamples=1000, window=3, paper_task=None,
            checkpoint=None):
    """summary dict from the finished runs (failed ones counted: they never reach a target they had not reached)."""
    by_key = {(r["config"]["model_type"], r["config"]["seed"]): r for r in records}
    seeds = experiment.config["seeds"]
    split, metric = data["eval_split"], data["metric"]
    curves, references = {m: [] for m in MODELS}, None
    runs_table, mixes = [], []
    for seed in seeds:
        for model in MODELS:
            record = by_key.get((model, seed))
            run_curve, run_references = read_curve(experiment, record, split)
            if run_references is not None:
                if references is not None and not np.array_equal(references, run_references):
                    raise ExperimentError(f"run {record['label']} was evaluated on other dev data than the others")
                references = run_references
            curves[model].append(run_curve)
            result = (record or {}).get("result") or {}
            runs_table.append({
                "model": model, "seed": seed, "run_id": record["run_id"] if record else None,
                "status": record["status"] if record else "not run",
                "error": record.get("error") if record else None,
                "evaluations": 0 if run_curve is None else len(run_curve["steps"]),
                "seconds_per_step": result.get("step_seconds"),
            })
            if model == "bermo" and result.get("layer_mix"):
                mixes.append({"label": f"seed {seed}", **result["layer_mix"]})
    summary = {"experiment": "convergence", "data": data, "checkpoint": checkpoint, "seeds": seeds,
               "train_args": experiment.config["train_args"], "runs": runs_table, "layer_mixes": mixes,
               "paper": {"task": paper_task, "speedup": PAPER["convergence_speedup"].get(paper_task),
                         "source": PAPER["source"]}}
    failures = {m: sum(r["model"] == m and r["status"] != "ok" for r in runs_table) for m in MODELS}
    summary["failures"] = {m: {"failed": failures[m], "runs": len(seeds),
                               "rate_ci": stats.clopper_pearson(failures[m], len(seeds))} for m in MODELS}
    summary["failures"]["fisher_exact"] = stats.fisher_exact(failures["bert"], len(seeds), failures["bermo"],
                                                             len(seeds))
    if references is None:
        summary["statistics"] = None
        summary["note"] = "no run got as far as its first evaluation: nothing to compare"
        return summary
    summary["statistics"] = json_safe(stats.convergence_statistics(
        curves, references, metric, targets, n_resamples=n_resamples, confidence=confidence, window=window))
    summary["curves"] = {m: [None if c is None else {"steps": c["steps"].tolist(), "values": stats.metric_value(
        c["predictions"], references, metric).tolist()} for c in curves[m]] for m in MODELS}
    times = {m: [r["seconds_per_step"] for r in runs_table if r["model"] == m] for m in MODELS}
    paired = [(a, b) for a, b in zip(times["bert"], times["bermo"]) if a and b]
    if paired:
        time_ratio = stats.paired_ratio_ci([a for a, _ in paired], [b for _, b in paired],
                                           confidence if len(paired) >= 2 else 0)
        summary["seconds_per_step"] = {m: stats.describe([p[i] for p in paired]) for i, m in enumerate(MODELS)}
        summary["step_time_ratio"] = time_ratio  # BERT seconds per step / BERMo seconds per step
        for entry in summary["statistics"]["targets"].values():
            entry["wall_clock_speedup"] = _product(entry["speedup"], time_ratio["ratio"])
    return summary


def _product(speedup, time_ratio):
    if speedup is None or time_ratio is None or (isinstance(speedup, float) and math.isnan(speedup)):
        return math.nan
    return speedup * time_ratio
