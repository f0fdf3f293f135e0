"""`bermo-experiment pruning --study structured`: structured movement pruning (heads and FFN neurons removed at
export), BERT vs BERMo from one checkpoint and the same seeds, with and without distillation.

Per model and seed: a dense fine-tuning (the dense model of the same budget, saved: it is also the teacher), then
for each kept fraction v of --fractions (default 0.5 0.35 0.25 0.1) a run with `--pruning_method movement
--pruning_granularity head,neuron --initial_threshold 1 --final_threshold v`, once without and once with
distillation from that model's own dense run (`--teacher_name_or_path OUTPUT_DIR/runs/<dense run>/train`, the
distillation feature's default temperature and alpha). The dense runs go first (a phase of their own); every run is
cached and resumed like the other studies' runs. With `--launcher plan` (a SLURM array) the pending list holds
both phases: run the dense runs (their labels start with "dense") before the others; a distilled run whose teacher is
missing fails and is recorded as failed (rerun it with --retry_failed).

Per run: the final dev accuracy, the collapse rule of the stability study, the exported model's encoder fraction and
parameters (final_metrics.json's exported_* figures), and a CPU inference speed-up: the exported model against its
dense run, on the CPU after all runs ended (run the report on an otherwise idle machine: `--report_only` times
what is not timed yet; timings already in a run's speed.json are kept), timed interleaved in one process
(bermo.pruning.timing: --speed_batch x --max_length tokens, median of --speed_repeats forwards after one warm-up),
written once to the run's speed.json.

Outputs: per model a table of accuracy / kept fraction / parameters / speed-up, the collapse rates per model at
each kept fraction (Clopper-Pearson, Fisher BERT vs BERMo), accuracy_vs_speedup.png (one line per model, with and
without distillation) and summary.md with the anchors' targets (<= 1 point below the dense model at 2x speed,
<= 3.5 points at ~3.4x) beside what was reached.
"""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from bermo.arguments import TOPK_METHODS, DistillationArguments, PruningArguments, command_line, run_to_dict

from . import stats
from .common import MODELS, base_run, finetune_run, json_safe, launch, model_run, read_curve, typed
from .runner import Experiment, ExperimentError, claim_output_dir, write_json_atomic

DEFAULT_FRACTIONS = [0.5, 0.35, 0.25, 0.1]
GRANULARITY = "head,neuron"
COLLAPSE_FRACTIONS = (0.25, 0.1)  # the kept fractions whose collapse rates the summary leads with
# the anchors: (speed-up, largest accuracy loss in points against the dense model of the same budget)
TARGETS = [(2.0, 1.0), (3.4, 3.5)]
SPEED_TOLERANCE = 0.1  # "~3.4x": a point counts when its mean speed-up is >= (1 - 10%) of the target's
SPEED_FILE = "speed.json"


def check_structured(args):
    for method in args.methods:
        if method not in TOPK_METHODS:
            raise ExperimentError(f"--methods {method}: the structured study takes topk methods (movement, magnitude)")
    if args.lambdas:
        raise ExperimentError("--lambdas applies to --study stability or efficiency")
    if args.dense_baseline is False:
        raise ExperimentError("--no-dense_baseline: the structured study needs its dense runs (baselines and teachers)")
    if args.train_rows is not None and len(args.train_rows) > 1:
        raise ExperimentError("--train_rows: the structured study takes one training subset (or none: all rows)")
    if getattr(args, "pruning_granularity", "weight") not in ("weight", GRANULARITY):
        raise ExperimentError(f"--pruning_granularity: the structured study sets {GRANULARITY}; leave it out")
    if args.speed_batch < 1 or args.speed_repeats < 1:
        raise ExperimentError("--speed_batch and --speed_repeats must be at least 1")


def cell(method, fraction, distill, rows):
    return {"train_rows": rows, "method": method, "fraction": fraction, "lambda": None, "distill": distill}


def cell_name(c):
    if c["method"] == "dense":
        return "dense"
    return f"{c['method']} keep {c['fraction']:g}" + (" + distillation" if c["distill"] else "")


def plan(args, seeds, base, data, options, data_args):
    """(experiment of every run, experiment of the dense runs only): the dense runs are the teachers."""
    from .pruning import check_pruning

    output_dir = Path(args.output_dir).resolve()
    base = replace(base, data=data_args, output=replace(base.output, save_model=True))
    rows = args.train_rows[0] if args.train_rows else None
    dense_cell = cell("dense", None, False, rows)
    cells = [dense_cell] + [cell(m, v, d, rows) for m in args.methods for v in args.fractions for d in (False, True)]
    dense_runs, runs = {}, []
    for seed in seeds:
        for model in MODELS:
            dense_runs[model, seed] = finetune_run(model_run(base, model, seed), f"dense, {model} seed {seed}",
                                                   study="structured", cell=dense_cell, data=data["files"])
    for c in cells[1:]:
        pruning = replace(options, pruning_method=c["method"], pruning_granularity=GRANULARITY,
                          initial_threshold=1.0, final_threshold=c["fraction"])
        check_pruning(pruning, args.max_train_steps)
        for seed in seeds:
            for model in MODELS:
                features = {"pruning": pruning}
                if c["distill"]:
                    teacher = output_dir / "runs" / dense_runs[model, seed].id / "train"
                    features["distillation"] = DistillationArguments(teacher_name_or_path=str(teacher))
                runs.append(finetune_run(model_run(replace(base, features=features), model, seed),
                                         f"{cell_name(c)}, {model} seed {seed}", study="structured", cell=c,
                                         data=data["files"]))
    shared = {k: v for k, v in run_to_dict(base).items() if k not in {"output_dir", "model_type", "seed"}}
    config = {"study": "structured", "base_args": command_line(shared), "granularity": GRANULARITY,
              "pruning_options": command_line({k: v for k, v in vars(options).items()
                                               if k not in ("pruning_method", "initial_threshold", "final_threshold",
                                                            "pruning_granularity")}),
              "cells": cells, "seeds": seeds, "models": list(MODELS), "data": data["files"],
              "speed": {"batch": args.speed_batch, "seq": base.data.max_length, "repeats": args.speed_repeats}}
    dense = list(dense_runs.values())
    experiment = Experiment(output_dir, "pruning", config, dense + runs)
    claim_output_dir(output_dir, "pruning", config)
    return experiment, Experiment(output_dir, "pruning", config, dense)


def run_phases(experiment, dense_experiment, args):
    """The dense runs first (the teachers must exist before a distilled run starts), then the rest."""
    launch(dense_experiment, args)
    return launch(experiment, args)


# --------------------------------------------------------------------------------------------------------------------
# Speed


def load_saved(folder):
    import bermo  # noqa: F401  (registers the BERMo classes with the Auto classes)
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(folder).eval()


def measure_speed(run_folder, dense_folder, batch, seq, repeats):
    """{dense_seconds, exported_seconds, speedup, dense_parameters, exported_parameters}, written once to the run's
    speed.json (read back on a rerun; a changed --speed_* is refused with the configuration)."""
    from bermo.pruning.timing import random_inputs, time_models

    path = Path(run_folder) / SPEED_FILE
    if path.is_file():
        return json.loads(path.read_text())
    models = {"dense": load_saved(dense_folder), "exported": load_saved(Path(run_folder) / "train")}
    seconds = time_models(models, random_inputs(batch, seq), repeats, warmup=1)
    result = {"dense_seconds": seconds["dense"], "exported_seconds": seconds["exported"],
              "speedup": seconds["dense"] / seconds["exported"],
              "dense_parameters": sum(p.numel() for p in models["dense"].parameters()),
              "exported_parameters": sum(p.numel() for p in models["exported"].parameters()),
              "batch": batch, "seq": seq, "repeats": repeats}
    write_json_atomic(path, result)
    return result


# --------------------------------------------------------------------------------------------------------------------
# Analysis


def analyze(experiment, records, data, checkpoint=None, command=None, confidence=0.95, n_bootstrap=2000):
    from .pruning import collapse_rate, compare_collapse, run_outcome

    config = experiment.config
    by_id = {r["run_id"]: r for r in records}
    dense_ids = {(run.config["model_type"], run.config["seed"]): run.id for run in experiment.runs
                 if run.config["cell"]["method"] == "dense"}
    speed = config["speed"]
    rows, correct = [], {}  # correct[(cell, model, seed)]: per dev example, 1 where the final prediction is right
    for run in experiment.runs:
        c, model, seed = run.config["cell"], run.config["model_type"], run.config["seed"]
        row = {"cell": cell_name(c), "method": c["method"], "fraction": c["fraction"], "distill": c["distill"],
               "model": model, "seed": seed, "run_id": run.id}
        record = by_id.get(run.id)
        if record is None:
            rows.append({**row, "outcome": "not run"})
            continue
        curve, references = read_curve(experiment, record, data["eval_split"])
        predictions = None if curve is None else curve["predictions"][-1]
        row.update(run_outcome(record["status"], record.get("error"), predictions, references),
                   error=record.get("error"))
        if row["accuracy"] is not None:
            correct[row["cell"], model, seed] = (np.asarray(predictions) == np.asarray(references)).astype(float)
        final_file = experiment.run_dir(run) / "train" / "final_metrics.json"
        exported = json.loads(final_file.read_text()) if final_file.is_file() else {}
        for key in ("exported_remaining_encoder_fraction", "exported_parameters", "exported_encoder_parameters"):
            row[key] = exported.get(key)
        row["speedup"] = 1.0 if c["method"] == "dense" else None
        dense_record = by_id.get(dense_ids[model, seed])
        if (c["method"] != "dense" and record["status"] == "ok" and dense_record and dense_record["status"] == "ok"
                and (experiment.run_dir(run) / "train" / "config.json").is_file()):
            measured = measure_speed(experiment.run_dir(run), experiment.output_dir / "runs" / dense_ids[model, seed]
                                     / "train", speed["batch"], speed["seq"], speed["repeats"])
            row["speedup"] = measured["speedup"]
            row["exported_parameters"] = row["exported_parameters"] or measured["exported_parameters"]
            row["dense_parameters"] = measured["dense_parameters"]
        rows.append(row)
    for row in rows:  # the dense rows: their size as the pruned runs' timing counted it
        if row["method"] == "dense" and row["outcome"] != "not run":
            sizes = [r["dense_parameters"] for r in rows if r.get("dense_parameters") and r["model"] == row["model"]
                     and r["seed"] == row["seed"]]
            row["exported_parameters"] = row.get("exported_parameters") or (sizes[0] if sizes else None)
            row["exported_remaining_encoder_fraction"] = row.get("exported_remaining_encoder_fraction") or 1.0

    tables, collapse = {}, []
    cells = config["cells"]
    for model in MODELS:
        dense_acc = [r["accuracy"] for r in rows if r["model"] == model and r["method"] == "dense"
                     and r.get("accuracy") is not None]
        entries = []
        for c in cells:
            chosen = [r for r in rows if r["model"] == model and r["cell"] == cell_name(c) and r["outcome"] != "not run"]
            finished = [r for r in chosen if r.get("accuracy") is not None]
            entries.append({"cell": cell_name(c), "fraction": c["fraction"], "distill": c["distill"],
                            "runs": len(chosen), "finished": len(finished),
                            "accuracy": stats.describe([r["accuracy"] for r in finished]),
                            "exported_remaining_encoder_fraction": stats.describe(
                                [r["exported_remaining_encoder_fraction"] for r in finished
                                 if r.get("exported_remaining_encoder_fraction") is not None]),
                            "exported_parameters": stats.describe([r["exported_parameters"] for r in finished
                                                                   if r.get("exported_parameters") is not None]),
                            "speedup": stats.describe([r["speedup"] for r in finished if r.get("speedup")])})
        tables[model] = {"dense_accuracy": stats.describe(dense_acc), "cells": entries,
                         "targets": targets_reached(entries, stats.describe(dense_acc))}
    for c in cells[1:]:
        rates = {m: collapse_rate([r["outcome"] for r in rows if r["model"] == m and r["cell"] == cell_name(c)
                                   and r["outcome"] != "not run"]) for m in MODELS}
        collapse.append({"cell": cell_name(c), "fraction": c["fraction"], "distill": c["distill"],
                         "headline": any(math.isclose(c["fraction"], f) for f in COLLAPSE_FRACTIONS),
                         "models": rates, "fisher_exact": compare_collapse(rates["bert"], rates["bermo"])})
    comparison = [{"cell": cell_name(c), "fraction": c["fraction"], "distill": c["distill"],
                   **compare_models(correct, cell_name(c), config["seeds"], confidence, n_bootstrap)} for c in cells]
    summary = {"experiment": "pruning", "study": "structured", "data": data, "checkpoint": checkpoint,
               "command": command, "seeds": config["seeds"], "base_args": config["base_args"],
               "pruning_options": config["pruning_options"], "granularity": config["granularity"],
               "speed": speed, "runs": rows, "tables": tables, "collapse": collapse, "comparison": comparison,
               "confidence": confidence,
               "targets": [{"speedup": s, "max_loss_points": p} for s, p in TARGETS],
               "speed_tolerance": SPEED_TOLERANCE}
    return json_safe(summary)


def compare_models(correct, name, seeds, confidence=0.95, n_resamples=2000):
    """BERMo - BERT in one cell, paired by seed: {"seeds", "bert", "bermo" (mean accuracies over those seeds),
    "ratio" (BERMo / BERT), "difference", "ci" (two-level bootstrap over seeds and dev examples, as the convergence
    tables; None with fewer than 2 seeds)}. Only seeds where both models finished with predictions count (a
    diverged run has none)."""
    paired = [s for s in seeds if (name, "bert", s) in correct and (name, "bermo", s) in correct]
    if not paired:
        return {"seeds": [], "bert": None, "bermo": None, "ratio": None, "difference": None, "ci": None}
    bert = np.stack([correct[name, "bert", s] for s in paired])
    bermo = np.stack([correct[name, "bermo", s] for s in paired])
    out = {"seeds": paired, "bert": float(bert.mean()), "bermo": float(bermo.mean()),
           "ratio": float(bermo.mean() / bert.mean()) if bert.mean() > 0 else None,
           "difference": float((bermo - bert).mean()), "ci": None}
    if len(paired) >= 2:  # (its "difference" is the same mean of BERMo - BERT)
        out["ci"] = stats.paired_difference(bert, bermo, n_resamples, confidence, seed=0)["ci"]
    return out


def targets_reached(entries, dense):
    """Per distillation setting and anchor: the pruned cell with the mean speed-up >= the anchor's (within the
    tolerance) that loses the least accuracy against the dense mean; None when no cell is that fast."""
    reached = []
    for distill in (False, True):
        for speedup, max_loss in TARGETS:
            fast = [e for e in entries if e["fraction"] is not None and e["distill"] == distill
                    and e["speedup"].get("n") and e["accuracy"].get("n")
                    and e["speedup"]["mean"] >= speedup * (1 - SPEED_TOLERANCE)]
            best = None
            if fast and dense.get("n"):
                e = max(fast, key=lambda e: e["accuracy"]["mean"])
                loss = 100 * (dense["mean"] - e["accuracy"]["mean"])
                best = {"cell": e["cell"], "speedup": e["speedup"]["mean"], "loss_points": loss,
                        "met": loss <= max_loss}
            reached.append({"distill": distill, "speedup": speedup, "max_loss_points": max_loss, "best": best})
    return reached
