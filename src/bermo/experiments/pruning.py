"""`bermo-experiment pruning`: the paper's two pruning claims, BERT vs BERMo from one checkpoint, seed by seed.

Every run is the training loop with its pruning flags (bermo.pruning, Sanh et al. 2020), `--model_type bert` or
`bermo` from the same BERT checkpoint, the same seeds and data (same data order and head initialization per seed).

--study stability  "BERMo enables stable pruning for compressing small datasets like SST-2, where BERT commonly
    diverges". Class-balanced training subsets (--train_rows, written once to OUTPUT_DIR/data/, nested: the
    smaller is a prefix of the larger, per class), the task's whole dev set. Cells: each topk method
    (magnitude, movement) at each remaining fraction (--fractions), each penalty method (soft_movement: l1, l0: l0)
    at each lambda (--lambdas), for every --train_rows. A run *collapses* when its final dev accuracy is within 2
    points of the majority-class accuracy (or below it) or >= 95% of its final dev predictions fall in one class;
    it *diverges* when its loss became non-finite (the loop stops it: a failed run, counted as a collapse, never
    dropped). Per cell and model: the collapse rate (divergences included) with a Clopper-Pearson 95% interval,
    Fisher's exact test BERT vs BERMo, median and worst-seed dev accuracy (a diverged run ranks below all others).

--study structured  structured movement pruning (heads and FFN neurons removed at export) at kept fractions
    (--fractions, default 0.5 0.35 0.25 0.1), with and without distillation from the same model's dense run; per
    run the dev accuracy, the exported size and a measured CPU speed-up against the dense model; targets: <= 1
    point loss at 2x, <= 3.5 points at ~3.4x (see bermo.experiments.structured).

--study efficiency  "better parameter efficiency for penalty based pruning" (QQP). A log-spaced lambda sweep of
    soft_movement and l0 (and topk methods at --fractions, when asked), plus the dense baselines: final dev
    accuracy and F1 against the measured remaining encoder fraction (Sanh et al.'s count). At matched remaining
    fraction: each run curve (one model, method and seed over the sweep) is interpolated linearly in log(fraction)
    between its points (never extrapolated); BERMo - BERT per seed, the mean over seeds with a percentile bootstrap
    CI resampling seeds (scipy.stats.bootstrap).

Outputs in OUTPUT_DIR: runs/ (one folder per run), runs.jsonl, summary.json, summary.md (tables, commands, data,
what the CPU scale cut), PNGs (accuracy vs remaining weights, collapse rates with CI bars, matched-fraction
differences, BERMo's layer weights under pruning). Resumable: run the same command again.
"""

import argparse
import hashlib
import json
import math
import shlex
from pathlib import Path

import numpy as np

from dataclasses import replace

from bermo.arguments import PRUNING_METHODS as METHODS
from bermo.arguments import (TOPK_METHODS, DataArguments, ModelArguments, OptimizationArguments, PruningArguments,
                             command_line, run_to_dict)

from . import stats
from .common import (MODELS, add_common_options, base_run, check_common, default_checkpoint, finetune_run,
                     json_safe, launch, load_task_data, model_run, read_curve, refuse_owned, training_options,
                     typed)
from .runner import Experiment, ExperimentError, claim_output_dir, write_text_atomic

STUDIES = ("stability", "efficiency", "structured")
REGULARIZATION = {"soft_movement": "l1", "l0": "l0"}
DENSE = "dense"
# a run collapses at or below majority-class accuracy + this margin, or with this share of one class
COLLAPSE_MARGIN = 0.02
ONE_CLASS_SHARE = 0.95
CLOPPER_PEARSON_LEVEL = 0.95  # the collapse rates' exact intervals (--confidence sets the bootstrap's)
NON_FINITE = "non-finite"  # the training loop's divergence message: "loss became non-finite (nan or inf) at step N"

# finetune.py's options that the experiment sets per run or per cell (the others are taken as they are)
OWNED_BY_EXPERIMENT = ("model_type", "seed", "test_file", "trust_remote_code", "pruning_method", "initial_threshold",
                       "final_threshold", "regularization", "final_lambda", "save_masks", "mask_scores_file")

# CPU scale (2 cores, all-MiniLM-L6-v2). The mask scores' learning rate is 10x Sanh et al.'s 1e-2: with Adam a score
# moves about that much per step, and a run of 100-150 steps must move scores by 2-5 units to prune at all (soft
# movement: sigmoid(S) below 0.1 from S = 0; l0: from S = 2.197 to below -2.4). The lambdas were calibrated on
# 1,000 SST-2 rows, BERT, 100 steps: soft_movement lambda 30 / 300 / 3000 left 94% / 64% / 6% of the encoder, l0
# lambda 30 / 300 / 3000 left 85% / 21% / 0.3%.
CPU_DEFAULTS = dict(per_device_train_batch_size=16, per_device_eval_batch_size=64, max_length=64,
                    learning_rate=1e-4, mask_scores_learning_rate=0.1)
STUDY_DEFAULTS = {
    "stability": dict(methods=["magnitude", "movement", "soft_movement", "l0"], fractions=[0.15, 0.05],
                      lambdas=[100.0, 1000.0], train_rows=[1000, 4000], dense_baseline=False, max_train_steps=100),
    "efficiency": dict(methods=["soft_movement", "l0"], fractions=[0.15, 0.05], lambdas=[10.0, 100.0, 1000.0],
                       train_rows=None, dense_baseline=True, max_train_steps=150),
    "structured": dict(methods=["movement"], fractions=[0.5, 0.35, 0.25, 0.1], lambdas=[], train_rows=None,
                       dense_baseline=True, max_train_steps=150),
}
# the design at full scale (GPU): what the CPU defaults cut, stated in summary.md
FULL_SCALE = {
    "stability": dict(seeds=10, train_rows=[1000, 4000], fractions=[0.15, 0.10, 0.05, 0.03],
                      lambdas=[10.0, 100.0, 1000.0], epochs_of_1000_rows=10),
    "efficiency": dict(seeds=5, lambdas=[3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0],
                       train="the full QQP train set (364k pairs), about 10 epochs",
                       dev="GLUE's QQP dev set (40k pairs)"),
}
MATCH_POINTS = 4  # common remaining fractions of the matched comparison (log-spaced), unless --match_fractions


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "pruning", help="pruning stability (SST-2) and parameter efficiency (QQP): BERT vs BERMo, over seeds",
        parents=[training_options(PruningArguments)], description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="CPU scale (the defaults: all-MiniLM-L6-v2, 3 seeds, batch 16, max_length 64, learning rate 1e-4, mask "
        "scores 0.1; on 2 free cores with --jobs 2 about 75 min for stability (96 runs of 100 steps) and 60 min for "
        "efficiency (42 runs of 150 steps)):\n"
        "  bermo-experiment pruning --study stability --task_name sst2 --glue_dir GLUE --output_dir out/prune-sst2 "
        "--jobs 2\n"
        "  bermo-experiment pruning --study efficiency --task_name qqp --glue_dir QQP_SPLIT --output_dir "
        "out/prune-qqp --jobs 2\n"
        "  bermo-experiment pruning --study structured --task_name sst2 --glue_dir GLUE --output_dir "
        "out/prune-structured --jobs 2   (dense runs first: they are the teachers)\n"
        "  (QQP_SPLIT: the glue/ folder that experiments/prepare_data.py writes: a stated train/dev split of the "
        "QQP subset)\n"
        "Full scale on GPUs (Sanh et al.'s recipe; lambda's effect depends on the steps and the scores' learning "
        "rate: check the remaining fractions of a first run before a long sweep):\n"
        "  --study stability --model_name_or_path bert-base-uncased --seeds 10 --fractions 0.15 0.10 0.05 0.03 "
        "--lambdas 10 100 1000 --max_train_steps 630 --per_device_train_batch_size 16 --learning_rate 3e-5 "
        "--mask_scores_learning_rate 1e-2 --max_length 128 --jobs <number of GPUs>\n"
        "  --study efficiency --model_name_or_path bert-base-uncased --seeds 5 --lambdas 3 10 30 100 300 1000 3000 "
        "--task_name qqp --glue_dir GLUE --max_train_steps 110000 --per_device_train_batch_size 32 "
        "--learning_rate 3e-5 --mask_scores_learning_rate 1e-2 --max_length 128 --jobs <number of GPUs>",
    )
    parser.set_defaults(model_name_or_path=default_checkpoint(), max_train_steps=None, **CPU_DEFAULTS)
    group = parser.add_argument_group("pruning experiment")
    group.add_argument("--study", default="stability",
                       help="stability (collapse and divergence on small training subsets, e.g. SST-2) or "
                       "efficiency (accuracy/F1 against the remaining weights over a lambda sweep, e.g. QQP) or structured "
                       "(heads and neurons removed, with/without distillation, CPU speed-up of the exported models); "
                       "--max_train_steps defaults to 100 (stability) or 150 (efficiency, structured)")
    group.add_argument("--methods", nargs="+",
                       help="pruning methods: magnitude, movement (at --fractions), soft_movement, l0 (at --lambdas); "
                       "default: all four (stability), soft_movement l0 (efficiency)")
    group.add_argument("--fractions", nargs="+", type=float,
                       help="remaining fractions of each encoder matrix for magnitude/movement, each in (0, 1] "
                       "(default 0.15 0.05); structured: kept fractions of heads and FFN neurons (default 0.5 0.35 0.25 0.1)")
    group.add_argument("--lambdas", nargs="+", type=float,
                       help="final penalty weights of soft_movement/l0, each >= 0 (default: 100 1000 (stability), "
                       "10 100 1000 (efficiency), log-spaced)")
    group.add_argument("--train_rows", nargs="+", type=int,
                       help="class-balanced training subsets of N rows, written to OUTPUT_DIR/data/ (default: 1000 "
                       "4000 (stability); the whole training data (efficiency))")
    group.add_argument("--data_seed", type=int, default=0, help="seed of the training subsets (default 0)")
    group.add_argument("--dense_baseline", action=argparse.BooleanOptionalAction, default=None,
                       help="also fine-tune without pruning (default: yes for efficiency, no for stability)")
    group.add_argument("--match_fractions", nargs="+", type=float,
                       help="efficiency: remaining encoder fractions at which the models are compared (default: "
                       f"{MATCH_POINTS} log-spaced in the range every run curve covers)")
    group.add_argument("--speed_batch", type=int, default=32,
                       help="structured: batch size of the CPU speed measurement (batch x --max_length tokens; "
                       "default 32)")
    group.add_argument("--speed_repeats", type=int, default=5,
                       help="structured: timed forwards per model (median; after one warm-up; default 5)")
    add_common_options(parser)
    return parser


# --------------------------------------------------------------------------------------------------------------------
# Input checks and the plan


def resolve_study_defaults(args):
    """Fill the options left unset with the study's defaults (in place); bad values raise ExperimentError."""
    if args.study not in STUDIES:
        raise ExperimentError(f"--study {args.study!r}: choose stability, efficiency or structured")
    defaults = STUDY_DEFAULTS[args.study]
    for name in ("methods", "fractions", "lambdas", "train_rows", "dense_baseline", "max_train_steps"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])


def check_args(args):
    resolve_study_defaults(args)
    seeds = check_common(args)
    refuse_owned(args, OWNED_BY_EXPERIMENT, (DataArguments, ModelArguments, OptimizationArguments, PruningArguments))
    for method in args.methods:
        if method not in METHODS:
            raise ExperimentError(f"--methods {method}: unknown pruning method; choose from {', '.join(METHODS)}")
    _no_duplicates("methods", args.methods)
    for fraction in args.fractions:
        if not 0 < fraction <= 1:
            raise ExperimentError(f"--fractions {fraction}: a remaining fraction must be in (0, 1]")
    _no_duplicates("fractions", args.fractions)
    for lam in args.lambdas:
        if not lam >= 0 or math.isinf(lam):
            raise ExperimentError(f"--lambdas {lam}: a penalty weight must be finite and >= 0")
    _no_duplicates("lambdas", args.lambdas)
    if args.train_rows is not None:
        for rows in args.train_rows:
            if rows < 2:
                raise ExperimentError(f"--train_rows {rows}: a training subset needs at least 2 rows")
        _no_duplicates("train_rows", args.train_rows)
        if args.study == "efficiency" and len(args.train_rows) > 1:
            raise ExperimentError("--train_rows: the efficiency study takes one training subset (or none: all rows)")
    if args.max_train_steps < 1:
        raise ExperimentError("--max_train_steps must be at least 1")
    for fraction in args.match_fractions or []:
        if not 0 < fraction <= 1:
            raise ExperimentError(f"--match_fractions {fraction}: a remaining fraction must be in (0, 1]")
    if args.match_fractions and args.study != "efficiency":
        raise ExperimentError("--match_fractions applies to --study efficiency")
    if args.study == "efficiency" and not args.dense_baseline and not args.methods:
        raise ExperimentError("nothing to run")
    if args.study == "structured":
        from .structured import check_structured
        check_structured(args)
    return seeds


def _no_duplicates(name, values):
    if len(set(values)) != len(values):
        raise ExperimentError(f"--{name} {' '.join(map(str, values))}: a value is listed twice")


def cells_of(args):
    """The experiment's cells: {"train_rows", "method", "fraction", "lambda"} (dense: method "dense")."""
    sizes = args.train_rows or [None]
    cells = []
    for rows in sizes:
        if args.dense_baseline:
            cells.append({"train_rows": rows, "method": DENSE, "fraction": None, "lambda": None})
        for method in args.methods:
            if method in TOPK_METHODS:
                cells += [{"train_rows": rows, "method": method, "fraction": v, "lambda": None} for v in args.fractions]
            else:
                cells += [{"train_rows": rows, "method": method, "fraction": None, "lambda": lam}
                          for lam in args.lambdas]
    return cells


def cell_name(cell):
    size = "" if cell["train_rows"] is None else f"{cell['train_rows']} rows, "
    if cell["method"] == DENSE:
        return f"{size}dense"
    if cell["fraction"] is not None:
        return f"{size}{cell['method']} v={cell['fraction']:g}"
    return f"{size}{cell['method']} λ={cell['lambda']:g}"


def cell_pruning(cell, options):
    """The pruning arguments of a cell (None for the dense baseline): the cell's method and threshold or lambda, the
    other pruning options (warm-ups, score learning rate, ...) as the command line gave them."""
    method = cell["method"]
    if method == DENSE:
        return None
    if method in TOPK_METHODS:
        return replace(options, pruning_method=method, initial_threshold=1.0, final_threshold=cell["fraction"])
    return replace(options, pruning_method=method, regularization=REGULARIZATION[method], final_lambda=cell["lambda"])


def cell_flags(cell):
    """For people: the finetune.py pruning flags that set a cell (none for the dense baseline)."""
    pruning = cell_pruning(cell, PruningArguments())
    return [] if pruning is None else command_line({k: v for k, v in vars(pruning).items() if k in CELL_SETTINGS})


def check_pruning(pruning, max_train_steps):
    """Refuse (ExperimentError) what the training loop would refuse, before anything is written."""
    from bermo.pruning import PruningFeature

    try:
        PruningFeature.from_arguments(pruning, max_train_steps)
    except ValueError as error:
        raise ExperimentError(str(error)) from None


def balanced_subset(labels, rows, seed=0):
    """Indices (sorted) of a class-balanced subsample of `rows` rows: rows // K of each of the K classes, the
    remainder to the first classes; nested (a smaller subsample of the same seed is part of a larger one)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    per_class = {c: rows // len(classes) + (i < rows % len(classes)) for i, c in enumerate(classes)}
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if len(members) < per_class[c]:
            raise ExperimentError(f"--train_rows {rows}: class {c} has {len(members)} training rows, a balanced "
                                  f"subset needs {per_class[c]}")
        chosen.append(rng.permutation(members)[:per_class[c]])
    return np.sort(np.concatenate(chosen))


def jsonl_text(dataset, columns, indices=None):
    indices = range(len(dataset)) if indices is None else indices
    rows = dataset.select(list(map(int, indices))) if not isinstance(indices, range) else dataset
    return "".join(json.dumps({name: row[name] for name in columns}, ensure_ascii=False) + "\n" for row in rows)


def fingerprint(text):
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare_data(args, data_args):
    """Load the data as the loop would (bad data refused here); with --train_rows, the subsets' and the dev set's
    jsonl texts. Returns (data info, {file name: text})."""
    task_data = load_task_data(data_args)
    if task_data.num_labels < 2:
        raise ExperimentError(f"{task_data.name}: a regression task; the pruning experiment needs class labels")
    split = task_data.eval_splits[0]
    train, dev = task_data.splits["train"], task_data.splits[split]
    references = np.asarray(dev["label"])
    counts = np.bincount(references, minlength=task_data.num_labels)
    info = {"name": task_data.name, "train_rows_available": len(train), "dev_rows": len(dev), "eval_split": split,
            "text_columns": list(task_data.text_columns), "label_names": task_data.label_names,
            "num_labels": task_data.num_labels, "dev_label_counts": counts.tolist(),
            "majority_accuracy": float(counts.max() / counts.sum()), "data_seed": args.data_seed, "files": {}}
    texts = {}
    if args.train_rows is not None:
        columns = [*task_data.text_columns, "label"]
        for rows in args.train_rows:
            if rows > len(train):
                raise ExperimentError(f"--train_rows {rows}: the training data has {len(train)} rows")
            texts[f"train_{rows}.jsonl"] = jsonl_text(train, columns, balanced_subset(train["label"], rows,
                                                                                        args.data_seed))
        texts["dev.jsonl"] = jsonl_text(dev, columns)
        info["files"] = {name: fingerprint(text) for name, text in texts.items()}
    return info, texts


def write_data_files(folder, texts):
    """The subsets as jsonl files in OUTPUT_DIR/data/, written once (atomically), identical on every rerun."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        path = folder / name
        if not path.is_file() or path.read_text() != text:
            write_text_atomic(path, text)


def plan(args):
    """The experiment (its runs) and what the analysis needs to know about the data. Nothing is written on bad
    input; the data subsets are written once the output folder is claimed for this configuration."""
    seeds = check_args(args)
    base = base_run(args, save_eval_predictions=True)
    base = replace(base, optim=replace(base.optim, max_train_steps=args.max_train_steps))
    data, texts = prepare_data(args, base.data)
    output_dir = Path(args.output_dir).resolve()
    data_dir = output_dir / "data"
    options = typed(PruningArguments, args)  # warm-ups, score learning rate...: every pruned cell
    if args.study == "structured":
        from . import structured

        data_args = base.data
        if args.train_rows:
            data_args = DataArguments(train_file=str(data_dir / f"train_{args.train_rows[0]}.jsonl"),
                                      validation_file=str(data_dir / "dev.jsonl"), text_columns=data["text_columns"],
                                      label_column="label", label_type="classification",
                                      max_length=base.data.max_length, pad_to_max_length=base.data.pad_to_max_length)
        experiments = structured.plan(args, seeds, base, data, options, data_args)
        if texts:
            write_data_files(data_dir, texts)
        return experiments, data
    cells = cells_of(args)
    runs, data["data_args"], data["cell_args"] = [], {}, {}
    for cell in cells:
        data_args = base.data
        if cell["train_rows"] is not None:
            data_args = DataArguments(train_file=str(data_dir / f"train_{cell['train_rows']}.jsonl"),
                                      validation_file=str(data_dir / "dev.jsonl"), text_columns=data["text_columns"],
                                      label_column="label", label_type="classification",
                                      max_length=base.data.max_length, pad_to_max_length=base.data.pad_to_max_length)
        pruning = cell_pruning(cell, options)
        if pruning is not None:
            check_pruning(pruning, args.max_train_steps)
        cell_run = replace(base, data=data_args, features={} if pruning is None else {"pruning": pruning})
        data["data_args"][str(cell["train_rows"])] = command_line(_data_settings(data_args))
        data["cell_args"][cell_name(cell)] = cell_flags(cell)
        for seed in seeds:
            for model in MODELS:
                runs.append(finetune_run(model_run(cell_run, model, seed),
                                         f"{cell_name(cell)}, {model} seed {seed}", study=args.study, cell=cell,
                                         data=data["files"]))
    shared = {k: v for k, v in run_to_dict(base).items()
              if k not in DATA_SETTINGS | {"output_dir", "model_type", "seed"}}
    config = {"study": args.study, "base_args": command_line(shared),
              "pruning_options": command_line({k: v for k, v in vars(options).items() if k not in CELL_SETTINGS
                                               and k not in OWNED_BY_EXPERIMENT}),
              "cells": cells, "seeds": seeds, "models": list(MODELS),
              "data": data["files"] or command_line(_data_settings(base.data))}
    experiment = Experiment(output_dir, "pruning", config, runs)
    claim_output_dir(output_dir, "pruning", config)  # refuses another configuration before anything is written
    if texts:
        write_data_files(data_dir, texts)
    return experiment, data


CELL_SETTINGS = ("pruning_method", "initial_threshold", "final_threshold", "regularization", "final_lambda")
DATA_SETTINGS = {"task_name", "glue_dir", "train_file", "validation_file", "test_file", "text_columns", "label_column",
                 "label_type"}
STUDY_OPTIONS = ("study", "methods", "fractions", "lambdas", "train_rows", "data_seed", "dense_baseline",
                 "match_fractions", "seeds", "confidence", "n_bootstrap", "speed_batch", "speed_repeats",
                 "output_dir")


def _data_settings(data_args):
    return {k: v for k, v in vars(data_args).items() if k in DATA_SETTINGS}


def experiment_command(args):
    """The command that runs this experiment again, every setting explicit (for the summary)."""
    base = base_run(args)
    settings = {**{k: v for k, v in run_to_dict(base).items() if k not in ("output_dir", "save_model")},
                **{k: v for k, v in vars(typed(PruningArguments, args)).items() if k not in OWNED_BY_EXPERIMENT},
                **{k: getattr(args, k) for k in STUDY_OPTIONS}}
    for name in OWNED_BY_EXPERIMENT:
        settings.pop(name, None)
    if args.study == "structured":  # set by the study, not options
        settings.pop("pruning_granularity", None)
    settings = {k: v for k, v in settings.items() if v != []}  # an empty list has no command-line form
    return "bermo-experiment pruning " + shlex.join(command_line(settings))


def run(args):
    from .pruning_report import write_pruning_report

    experiment, data = plan(args)
    if args.study == "structured":
        from .pruning_report import write_structured_report
        from .structured import analyze as analyze_structured, run_phases

        experiment, dense_experiment = experiment
        records = run_phases(experiment, dense_experiment, args)
        if args.launcher == "plan":
            return experiment.output_dir / "pending.txt"
        summary = analyze_structured(experiment, records, data, checkpoint=args.model_name_or_path,
                                     command=experiment_command(args), confidence=args.confidence,
                                     n_bootstrap=args.n_bootstrap)
        write_structured_report(experiment.output_dir, summary)
        return experiment.output_dir / "summary.md"
    records = launch(experiment, args)
    if args.launcher == "plan":
        return experiment.output_dir / "pending.txt"
    summary = analyze(experiment, records, data, confidence=args.confidence, n_resamples=args.n_bootstrap,
                      match_fractions=args.match_fractions, checkpoint=args.model_name_or_path,
                      command=experiment_command(args))
    write_pruning_report(experiment.output_dir, summary)
    return experiment.output_dir / "summary.md"


# --------------------------------------------------------------------------------------------------------------------
# Statistics: pure functions of numbers (tested on hand-made inputs)


def run_outcome(status, error, predictions, references):
    """Classify a finished run: {"outcome": "diverged" | "collapsed" | "stable" | "failed", "accuracy",
    "majority_accuracy", "largest_class_share"}.

    diverged: the run failed because its loss became non-finite. failed: it failed for another reason (killed,
    out of memory): neither stable nor collapsed, listed but left out of the rates. collapsed: final dev accuracy
    <= majority-class accuracy + 2 points, or >= 95% of the final dev predictions in one class.
    """
    out = {"outcome": None, "accuracy": None, "majority_accuracy": None, "largest_class_share": None}
    if references is not None:
        references = np.asarray(references)
        out["majority_accuracy"] = float(np.unique(references, return_counts=True)[1].max() / len(references))
    if status != "ok":
        out["outcome"] = "diverged" if error and NON_FINITE in error else "failed"
        return out
    if predictions is None or references is None:
        out["outcome"] = "failed"
        return out
    predictions = np.asarray(predictions)
    out["accuracy"] = float(np.mean(predictions == references))
    out["largest_class_share"] = float(np.unique(predictions, return_counts=True)[1].max() / len(predictions))
    collapsed = (out["accuracy"] <= out["majority_accuracy"] + COLLAPSE_MARGIN + 1e-12
                 or out["largest_class_share"] >= ONE_CLASS_SHARE)
    out["outcome"] = "collapsed" if collapsed else "stable"
    return out


def collapse_rate(outcomes, confidence=CLOPPER_PEARSON_LEVEL):
    """Counts of a list of outcomes and the collapse rate (collapsed + diverged over the classified runs) with its
    Clopper-Pearson interval."""
    counts = {name: sum(o == name for o in outcomes) for name in ("stable", "collapsed", "diverged", "failed")}
    trials = counts["stable"] + counts["collapsed"] + counts["diverged"]
    events = counts["collapsed"] + counts["diverged"]
    return {**counts, "runs": len(outcomes), "classified": trials, "events": events,
            "rate": events / trials if trials else math.nan,
            "ci": stats.clopper_pearson(events, trials, confidence) if trials else [math.nan, math.nan]}


def compare_collapse(bert, bermo):
    """Fisher's exact test (two-sided) of the collapse counts, BERT vs BERMo."""
    if not bert["classified"] or not bermo["classified"]:
        return {"odds_ratio": math.nan, "p_value": math.nan}
    return stats.fisher_exact(bert["events"], bert["classified"], bermo["events"], bermo["classified"])


def smallest_fisher_p(n_a, n_b):
    """The smallest two-sided Fisher p-value that n_a vs n_b runs can give (all vs none): the test's power floor."""
    if not n_a or not n_b:
        return math.nan
    return stats.fisher_exact(n_a, n_a, 0, n_b)["p_value"]


def median_and_worst(accuracies, diverged):
    """Median and worst (minimum) accuracy over seeds; a diverged run ranks below every finished one (None when
    the median or the worst falls on a diverged run)."""
    values = sorted([-math.inf] * diverged + [a for a in accuracies if a is not None])
    if not values:
        return {"median": None, "worst": None}
    median = float(np.median(values))
    return {"median": median if math.isfinite(median) else None,
            "worst": values[0] if math.isfinite(values[0]) else None}


def interpolate_log(fractions, values, targets):
    """Values of a curve (points (fraction, value)) at the target fractions, linear in log(fraction) between the
    curve's points; nan outside its range (no extrapolation). Points at one fraction are averaged."""
    fractions, values = np.asarray(fractions, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(fractions) & np.isfinite(values) & (fractions > 0)
    fractions, values = fractions[keep], values[keep]
    targets = np.asarray(targets, dtype=float)
    if len(fractions) == 0:
        return np.full(targets.shape, np.nan)
    unique, inverse = np.unique(fractions, return_inverse=True)
    means = np.bincount(inverse, weights=values) / np.bincount(inverse)
    x, t = np.log(unique), np.log(targets)
    result = np.interp(t, x, means)
    inside = (t >= x[0] - 1e-12) & (t <= x[-1] + 1e-12)
    return np.where(inside, result, np.nan)


def common_fraction_range(curves):
    """(low, high): the remaining fractions that every curve with points covers (None when they do not overlap)."""
    ranges = [(min(f), max(f)) for f, _ in curves if len(f)]
    if not ranges:
        return None
    low, high = max(r[0] for r in ranges), min(r[1] for r in ranges)
    return (low, high) if low <= high else None


def default_match_fractions(curves, count=MATCH_POINTS):
    """`count` log-spaced fractions in the range that every curve covers (fewer when the range is one point)."""
    common = common_fraction_range(curves)
    if common is None:
        return []
    low, high = common
    if math.isclose(low, high):
        return [float(low)]
    return [float(v) for v in np.geomspace(low, high, count)]


def matched_difference(bert_curves, bermo_curves, targets, confidence=0.95, n_resamples=1000, seed=0):
    """BERMo - BERT at matched remaining fraction, paired by seed.

    bert_curves, bermo_curves: one (fractions, values) per seed, in the same seed order. Each curve is
    interpolated at the targets (interpolate_log); per target, the seeds where both curves reach it are paired:
    the mean difference, with a percentile bootstrap CI resampling those seeds (scipy.stats.bootstrap) when there
    are at least 2 and confidence > 0. Returns one entry per target (bert_mean, bermo_mean: over the paired seeds).
    """
    from scipy import stats as scipy_stats

    if len(bert_curves) != len(bermo_curves):
        raise ValueError("one curve per seed for both models, in the same seed order")
    a = np.array([interpolate_log(f, v, targets) for f, v in bert_curves]).reshape(len(bert_curves), len(targets))
    b = np.array([interpolate_log(f, v, targets) for f, v in bermo_curves]).reshape(len(bermo_curves), len(targets))
    entries = []
    for j, target in enumerate(targets):
        both = np.isfinite(a[:, j]) & np.isfinite(b[:, j])
        d = b[both, j] - a[both, j]
        entry = {"fraction": float(target), "pairs": int(both.sum()), "bert": a[:, j].tolist(),
                 "bermo": b[:, j].tolist(), "bert_mean": float(a[both, j].mean()) if len(d) else math.nan,
                 "bermo_mean": float(b[both, j].mean()) if len(d) else math.nan,
                 "difference": float(d.mean()) if len(d) else math.nan, "ci": None}
        if len(d) >= 2 and confidence > 0:
            if np.ptp(d) == 0:
                entry["ci"] = [float(d[0]), float(d[0])]
            else:
                options = dict(confidence_level=confidence, n_resamples=n_resamples, method="percentile")
                try:
                    result = scipy_stats.bootstrap((d,), np.mean, rng=np.random.default_rng(seed), **options)
                except TypeError:  # scipy < 1.15 names it random_state
                    result = scipy_stats.bootstrap((d,), np.mean, random_state=np.random.default_rng(seed), **options)
                entry["ci"] = [float(result.confidence_interval.low), float(result.confidence_interval.high)]
        entries.append(entry)
    return entries


# --------------------------------------------------------------------------------------------------------------------
# Analysis: records -> summary


def read_run(experiment, record, data):
    """One run's numbers: outcome, final accuracy/F1, measured remaining fractions, layer mix."""
    from bermo.metrics import classification_metrics

    result = record.get("result") or {}
    curve, references = read_curve(experiment, record, data["eval_split"])
    predictions = None if curve is None else curve["predictions"][-1]
    row = run_outcome(record["status"], record.get("error"), predictions, references)
    if row["majority_accuracy"] is None:
        row["majority_accuracy"] = data["majority_accuracy"]
    if row["outcome"] == "stable" or row["outcome"] == "collapsed":
        metrics = classification_metrics(predictions, references, "f1", data["num_labels"])
        row["f1"] = metrics.get("f1")
    else:
        row["f1"] = None
    evaluations = [e for e in result.get("evaluations") or [] if e.get("split") == data["eval_split"]]
    last = evaluations[-1] if evaluations else {}
    dense = record["config"]["cell"]["method"] == DENSE
    row["remaining_encoder_fraction"] = 1.0 if dense and last else last.get("remaining_encoder_fraction")
    row["remaining_model_fraction"] = 1.0 if dense and last else last.get("remaining_model_fraction")
    final_file = experiment.output_dir / "runs" / record["run_id"] / "train" / "final_metrics.json"
    exported = json.loads(final_file.read_text()) if final_file.is_file() else {}
    row["exported_remaining_encoder_fraction"] = exported.get("exported_remaining_encoder_fraction")
    row["exported_zero_weights"] = exported.get("exported_zero_weights")
    row["layer_mix"] = result.get("layer_mix")
    row["train_seconds"] = result.get("train_seconds")
    return row


def analyze(experiment, records, data, confidence=0.95, n_resamples=1000, match_fractions=None, checkpoint=None,
            command=None):
    config = experiment.config
    study, seeds, cells = config["study"], config["seeds"], config["cells"]
    by_key = {(canonical_cell(r["config"]["cell"]), r["config"]["model_type"], r["config"]["seed"]): r
              for r in records}
    runs = []
    for cell in cells:
        for seed in seeds:
            for model in MODELS:
                record = by_key.get((canonical_cell(cell), model, seed))
                row = {"cell": cell_name(cell), **cell, "model": model, "seed": seed}
                if record is None:
                    row.update(outcome="not run", run_id=None, error=None)
                else:
                    row.update(read_run(experiment, record, data), run_id=record["run_id"], error=record.get("error"))
                runs.append(row)
    summary = {"experiment": "pruning", "study": study, "data": data, "checkpoint": checkpoint, "command": command,
               "seeds": seeds, "base_args": config["base_args"],
               "pruning_options": config["pruning_options"], "cells": [cell_name(c) for c in cells],
               "confidence": confidence,
               "collapse_rule": {"margin": COLLAPSE_MARGIN, "one_class_share": ONE_CLASS_SHARE},
               "full_scale": FULL_SCALE[study], "layer_mixes": layer_mixes(cells, runs)}
    summary["runs"] = [{k: v for k, v in row.items() if k != "layer_mix"} for row in runs]
    summary["stability"] = stability_table(cells, runs)
    if study == "efficiency":
        summary["efficiency"] = efficiency_tables(cells, runs, seeds, confidence, n_resamples, match_fractions)
    n = len(seeds)
    summary["power"] = {"runs_per_model_per_cell": n, "smallest_fisher_p": smallest_fisher_p(n, n),
                        "zero_of_n_upper_bound": stats.clopper_pearson(0, n, 0.95)[1] if n else math.nan}
    return json_safe(summary)


def canonical_cell(cell):
    return json.dumps(cell, sort_keys=True)


def stability_table(cells, runs):
    """Per cell: per model the collapse counts, rate and CI, median/worst accuracy, measured remaining fraction;
    Fisher's test BERT vs BERMo; and the same over all pruned cells pooled."""
    table, pooled = [], {m: [] for m in MODELS}
    for cell in cells:
        name = cell_name(cell)
        entry = {"cell": name, **cell, "models": {}}
        for model in MODELS:
            rows = [r for r in runs if r["cell"] == name and r["model"] == model and r["outcome"] != "not run"]
            outcomes = [r["outcome"] for r in rows]
            rate = collapse_rate(outcomes)
            accuracies = [r["accuracy"] for r in rows if r["outcome"] in ("stable", "collapsed")]
            remaining = [r["remaining_encoder_fraction"] for r in rows
                         if r["outcome"] in ("stable", "collapsed") and r["remaining_encoder_fraction"] is not None]
            entry["models"][model] = {**rate, **median_and_worst(accuracies, rate["diverged"]),
                                      "remaining_encoder_fraction": stats.describe(remaining),
                                      "accuracies": accuracies}
            if cell["method"] != DENSE:
                pooled[model] += outcomes
        entry["fisher_exact"] = compare_collapse(entry["models"]["bert"], entry["models"]["bermo"])
        table.append(entry)
    pooled_rates = {m: collapse_rate(pooled[m]) for m in MODELS}
    return {"cells": table, "pooled": {"models": pooled_rates,
                                       "fisher_exact": compare_collapse(pooled_rates["bert"], pooled_rates["bermo"])}}


def efficiency_tables(cells, runs, seeds, confidence, n_resamples, match_fractions):
    """Per method: points (remaining fraction, accuracy, F1) per model and seed over the sweep, the matched-fraction
    differences; the dense baselines."""
    finished = [r for r in runs if r["outcome"] in ("stable", "collapsed") and r["remaining_encoder_fraction"]]
    result = {"dense": {}, "methods": {}}
    for model in MODELS:
        dense = [r for r in finished if r["method"] == DENSE and r["model"] == model]
        result["dense"][model] = {metric: stats.describe([r[metric] for r in dense if r[metric] is not None])
                                  for metric in ("accuracy", "f1")}
    metrics = ["accuracy"] + (["f1"] if any(r.get("f1") is not None for r in finished) else [])
    for method in dict.fromkeys(c["method"] for c in cells if c["method"] != DENSE):
        setting = "fraction" if method in TOPK_METHODS else "lambda"
        points = []
        for cell in [c for c in cells if c["method"] == method]:
            for model in MODELS:
                rows = [r for r in finished if r["cell"] == cell_name(cell) and r["model"] == model]
                all_rows = [r for r in runs if r["cell"] == cell_name(cell) and r["model"] == model]
                points.append({"setting": cell[setting], "model": model, "runs": len(all_rows), "finished": len(rows),
                               "diverged": sum(r["outcome"] == "diverged" for r in all_rows),
                               "remaining_encoder_fraction": stats.describe([r["remaining_encoder_fraction"]
                                                                             for r in rows]),
                               **{metric: stats.describe([r[metric] for r in rows]) for metric in metrics}})
        curves = {metric: {model: [_curve(finished, method, model, seed, metric) for seed in seeds]
                           for model in MODELS} for metric in metrics}
        targets = match_fractions or default_match_fractions(
            [c for model in MODELS for c in curves["accuracy"][model]])
        matched = {metric: matched_difference(curves[metric]["bert"], curves[metric]["bermo"], sorted(targets),
                                              confidence, n_resamples) for metric in metrics} if targets else {}
        result["methods"][method] = {"setting": setting, "points": points, "match_fractions": sorted(targets),
                                     "matched": matched, "curves": {m: curves["accuracy"][m] for m in MODELS}}
    return result


def _curve(runs, method, model, seed, metric):
    rows = sorted((r for r in runs if r["method"] == method and r["model"] == model and r["seed"] == seed),
                  key=lambda r: r["remaining_encoder_fraction"])
    return ([r["remaining_encoder_fraction"] for r in rows], [r[metric] for r in rows])


def layer_mixes(cells, runs):
    """BERMo's learned layer weights of every finished BERMo run, in cell and seed order (for the heat map)."""
    return [{"label": f"{r['cell']}, seed {r['seed']}", "layers": r["layer_mix"].get("layers"),
             "weights": r["layer_mix"]["weights"], "scale": r["layer_mix"]["scale"]}
            for r in runs if r["model"] == "bermo" and r.get("layer_mix") and r["outcome"] in ("stable", "collapsed")]
