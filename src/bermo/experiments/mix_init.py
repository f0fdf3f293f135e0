"""`bermo-experiment mix-init`: BERMo's mix settings (initialization, the mix's learning rate, layer dropout) against
BERT, seed by seed, and the one setting a rule stated in advance chooses.

Each variant is a BERMo setting `MIX_INIT,MIX_LEARNING_RATE,MIX_DROPOUT` (e.g. `last:0.8,0.1,0.1`): by default the
full grid of --mix_inits x --mix_learning_rates x --mix_dropouts (a screening), or the list --variants (e.g. a
confirmation: the paper's uniform and a chosen setting). For every seed BERT runs once and every variant once, from
the same BERT checkpoint, with the same data order and head initialization (the training loop's --model_type bert /
bermo), evaluating every --eval_steps with per-example dev predictions.

--dev_from_train N carves N rows (stratified by label, --data_seed) out of the training data as the dev set and
trains on the rest (written once to OUTPUT_DIR/data/): a screening that never looks at the task's own dev set.

Per variant, against BERT (paired by seed, bootstrap over seeds and dev examples as in `convergence`): final and
best dev metric differences with CIs and the speedup S(q). The rule: the variant with the highest mean final dev
metric over seeds is chosen; a tie (equal to 4 decimals) goes to the variant listed first (the grid lists the
simpler settings first: uniform before last:P, the default mix learning rate first, no dropout first).
"""

import argparse
import json
from pathlib import Path

import numpy as np

from bermo.arguments import DEFAULT_MIX_LEARNING_RATE, command_line, run_to_dict

from . import stats
from .common import (add_common_options, base_run, check_common, default_checkpoint, finetune_run, json_safe, launch,
                     load_task_data, model_run, read_curve, refuse_owned, training_options)
from .runner import Experiment, ExperimentError, claim_output_dir, write_json_atomic, write_text_atomic

OWNED_BY_EXPERIMENT = ("model_type", "seed", "test_file", "trust_remote_code", "mix_init", "mix_dropout",
                       "mix_learning_rate")
DEFAULT_GRID = dict(mix_inits=["uniform", "last:0.5", "last:0.8", "last:0.95"],
                    mix_learning_rates=[DEFAULT_MIX_LEARNING_RATE, 1e-3, 1e-1], mix_dropouts=[0.0, 0.1])
CPU_DEFAULTS = dict(max_train_steps=200, per_device_train_batch_size=16, per_device_eval_batch_size=64,
                    learning_rate=1e-4)
TARGETS = (0.95, 0.98, 1.0)
TIE_DECIMALS = 4


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "mix-init", help="BERMo's mix initialization, mix learning rate and layer dropout vs BERT: choose one setting",
        parents=[training_options()], description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="screening (SST-2, dev carved from GLUE's training set):\n"
        "  bermo-experiment mix-init --task_name sst2 --glue_dir GLUE --dev_from_train 872 --seeds 2 "
        "--output_dir out/mix-screen --jobs 2\n"
        "confirmation of a chosen setting against the paper's uniform mix, on held-out dev data:\n"
        "  bermo-experiment mix-init --task_name sst2 --glue_dir GLUE --variants uniform,0.01,0 last:0.8,0.1,0.1 "
        "--seeds 5 6 7 8 9 --output_dir out/mix-confirm-sst2 --jobs 2")
    parser.set_defaults(model_name_or_path=default_checkpoint(), **CPU_DEFAULTS)
    group = parser.add_argument_group("mix settings")
    group.add_argument("--mix_inits", nargs="+", default=DEFAULT_GRID["mix_inits"],
                       help="the grid's initializations: uniform, last, last:P")
    group.add_argument("--mix_learning_rates", nargs="+", type=float, default=DEFAULT_GRID["mix_learning_rates"],
                       help="the grid's learning rates of the mix")
    group.add_argument("--mix_dropouts", nargs="+", type=float, default=DEFAULT_GRID["mix_dropouts"],
                       help="the grid's layer dropouts of the mix, each in [0, 1)")
    group.add_argument("--variants", nargs="+", metavar="INIT,LR,DROPOUT",
                       help="these variants instead of the grid, e.g. uniform,0.01,0 last:0.8,0.1,0.1")
    group.add_argument("--dev_from_train", type=int,
                       help="carve N training rows (stratified) as the dev set and train on the rest")
    group.add_argument("--data_seed", type=int, default=0, help="seed of --dev_from_train's split")
    group.add_argument("--eval_steps", type=int, default=20, help="evaluate the dev set every N optimizer steps")
    add_common_options(parser, default_seeds="2")
    return parser


# --------------------------------------------------------------------------------------------------------------------
# Variants, checks, data, the plan


def variant_name(variant):
    return f"{variant['mix_init']}, mix lr {variant['mix_learning_rate']:g}, dropout {variant['mix_dropout']:g}"


def variant_spec(variant):
    """The variant as --variants takes it (INIT,LR,DROPOUT): what a confirmation of a chosen setting passes on."""
    return f"{variant['mix_init']},{variant['mix_learning_rate']:g},{variant['mix_dropout']:g}"


def parse_variant(text):
    parts = text.split(",")
    try:
        if len(parts) != 3:
            raise ValueError
        init, rate, dropout = parts[0], float(parts[1]), float(parts[2])
    except ValueError:
        raise ExperimentError(f"--variants {text}: expected MIX_INIT,MIX_LEARNING_RATE,MIX_DROPOUT, e.g. "
                              "last:0.8,0.1,0.1") from None
    return check_variant({"mix_init": init, "mix_learning_rate": rate, "mix_dropout": dropout})


def check_variant(variant):
    from bermo.modeling.configuration_bermo import parse_last_weight

    if variant["mix_init"] not in ("uniform", "last"):
        try:
            parse_last_weight(variant["mix_init"])
        except ValueError as error:
            raise ExperimentError(str(error)) from None
    if not variant["mix_learning_rate"] > 0:
        raise ExperimentError(f"mix learning rate {variant['mix_learning_rate']:g}: must be > 0")
    if not 0 <= variant["mix_dropout"] < 1:
        raise ExperimentError(f"mix dropout {variant['mix_dropout']:g}: a probability in [0, 1)")
    return variant


def variants_of(args):
    if args.variants:
        variants = [parse_variant(text) for text in args.variants]
    else:
        variants = [check_variant({"mix_init": init, "mix_learning_rate": rate, "mix_dropout": dropout})
                    for init in args.mix_inits for rate in args.mix_learning_rates for dropout in args.mix_dropouts]
    names = [variant_name(v) for v in variants]
    if len(set(names)) != len(names):
        raise ExperimentError("a variant is listed twice")
    return variants


def check_args(args):
    seeds = check_common(args)
    refuse_owned(args, OWNED_BY_EXPERIMENT)
    if args.eval_steps < 1 or args.max_train_steps is None or args.eval_steps > args.max_train_steps:
        raise ExperimentError(f"--eval_steps {args.eval_steps}: at least 1 and at most --max_train_steps")
    if args.dev_from_train is not None and args.dev_from_train < 2:
        raise ExperimentError(f"--dev_from_train {args.dev_from_train}: at least 2 rows")
    return seeds, variants_of(args)


def carve_dev(task_data, rows, seed):
    """{file name: jsonl text}: the training data split into train.jsonl and dev.jsonl (`rows` rows, stratified)."""
    from sklearn.model_selection import train_test_split

    train = task_data.splits["train"]
    if rows >= len(train):
        raise ExperimentError(f"--dev_from_train {rows}: the training data has {len(train)} rows")
    labels = np.asarray(train["label"])
    kept, dev = train_test_split(np.arange(len(train)), test_size=rows, random_state=seed,
                                 stratify=labels if task_data.num_labels > 1 else None)
    columns = [*task_data.text_columns, "label"]

    def text(indices):
        selected = train.select(sorted(int(i) for i in indices))
        return "".join(json.dumps({c: row[c] for c in columns}, ensure_ascii=False) + "\n" for row in selected)

    return {"train.jsonl": text(kept), "dev.jsonl": text(dev)}


def plan(args):
    seeds, variants = check_args(args)
    base = base_run(args, eval_steps=args.eval_steps, save_eval_predictions=True)
    task_data = load_task_data(base.data)
    output_dir = Path(args.output_dir).resolve()
    texts = {}
    if args.dev_from_train is not None:
        from dataclasses import replace

        from bermo.arguments import DataArguments

        texts = carve_dev(task_data, args.dev_from_train, args.data_seed)
        base = replace(base, data=DataArguments(
            train_file=str(output_dir / "data" / "train.jsonl"), validation_file=str(output_dir / "data" / "dev.jsonl"),
            text_columns=list(task_data.text_columns), label_column="label",
            label_type="regression" if task_data.num_labels == 1 else "classification",
            max_length=base.data.max_length, pad_to_max_length=base.data.pad_to_max_length))
    runs = []
    for seed in seeds:
        runs.append(finetune_run(model_run(base, "bert", seed), f"bert seed {seed}", variant=None))
        for variant in variants:
            runs.append(finetune_run(model_run(base, "bermo", seed, **variant), f"{variant_name(variant)} seed {seed}",
                                     variant=variant_name(variant)))
    shared = {k: v for k, v in run_to_dict(base).items()
              if k not in ("output_dir", "model_type", "seed", *OWNED_BY_EXPERIMENT)}
    eval_split = "validation" if args.dev_from_train is not None else task_data.eval_splits[0]
    data = {"name": task_data.name, "metric": task_data.metric, "eval_split": eval_split, "train_rows": len(task_data.splits["train"]),
            "dev_from_train": args.dev_from_train, "data_seed": args.data_seed,
            "dev_rows": args.dev_from_train or len(task_data.splits[task_data.eval_splits[0]])}
    config = {"train_args": command_line(shared), "seeds": seeds, "variants": variants, "data": data}
    claim_output_dir(output_dir, "mix-init", config)
    for name, text in texts.items():
        path = output_dir / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            write_text_atomic(path, text)
    return Experiment(output_dir, "mix-init", config, runs)


def run(args):
    experiment = plan(args)
    records = launch(experiment, args)
    if args.launcher == "plan":
        return experiment.output_dir / "pending.txt"
    summary = analyze(experiment, records, confidence=args.confidence, n_resamples=args.n_bootstrap)
    write_report(experiment.output_dir, summary)
    return experiment.output_dir / "summary.md"


# --------------------------------------------------------------------------------------------------------------------
# Analysis and report


def analyze(experiment, records, confidence=0.95, n_resamples=1000):
    """Per variant against BERT: final and best differences with CIs, S(q); the chosen variant by the stated rule."""
    config = experiment.config
    seeds, metric = config["seeds"], config["data"]["metric"]
    by_key = {(r["config"]["variant"], r["config"]["seed"]): r for r in records}
    names = [variant_name(v) for v in config["variants"]]
    curves, references, mixes, runs = {}, None, {}, []
    for name in [None, *names]:
        curves[name or "bert"] = []
        for seed in seeds:
            record = by_key.get((name, seed))
            curve, run_references = read_curve(experiment, record, config["data"]["eval_split"])
            references = run_references if run_references is not None else references
            curves[name or "bert"].append(curve)
            runs.append({"variant": name or "BERT", "seed": seed, "status": record["status"] if record else "not run",
                         "error": (record or {}).get("error")})
            mix = ((record or {}).get("result") or {}).get("layer_mix")
            if mix:
                mixes.setdefault(name, []).append(mix)
    summary = {"experiment": "mix-init", "data": config["data"], "seeds": seeds, "train_args": config["train_args"],
               "variants": [], "runs": runs, "rule": "highest mean final dev metric; ties (4 decimals) -> listed first"}
    if references is None:
        summary["note"] = "no run got as far as its first evaluation"
        return json_safe(summary)
    summary["curves"] = {name: [None if c is None else {"steps": c["steps"].tolist(), "values": stats.metric_value(
        c["predictions"], references, metric).tolist()} for c in model_curves] for name, model_curves in curves.items()}
    for name in names:
        result = stats.convergence_statistics({"bert": curves["bert"], name: curves[name]}, references, metric,
                                              TARGETS, n_resamples=n_resamples, confidence=confidence,
                                              baseline="bert", candidate=name)
        weights = np.asarray([m["weights"] for m in mixes.get(name, [])])
        scales = [m["scale"] for m in mixes.get(name, [])]
        summary["variants"].append({
            "variant": name, "final": result["models"][name]["final"], "bert_final": result["models"]["bert"]["final"],
            "final_difference": result["final_difference"], "best_difference": result["best_difference"],
            "speedup": {str(q): result["targets"][q]["speedup"] for q in TARGETS},
            "mean_mix": weights.mean(axis=0).tolist() if len(weights) else None,
            "mean_scale": float(np.mean(scales)) if scales else None,
            "mix_layers": mixes[name][0]["layers"] if mixes.get(name) else None})
    means = [round(v["final"]["mean"], TIE_DECIMALS) if np.isfinite(v["final"]["mean"]) else -np.inf
             for v in summary["variants"]]
    chosen = int(np.argmax(means))  # argmax: the first of equal ones
    summary["chosen"] = summary["variants"][chosen]["variant"]
    summary["chosen_variant"] = variant_spec(config["variants"][chosen])
    return json_safe(summary)


def write_report(output_dir, summary):
    from .report import COLORS, VARIANT_COLORS, interval, number, plot_layer_weights, plot_learning_curves, table

    lines = [f"# Mix settings vs BERT: {summary['data']['name']}", "",
             f"- Dev data: {summary['data']['dev_rows']} rows"
             + (f", carved from the training data (stratified, seed {summary['data']['data_seed']})"
                if summary["data"]["dev_from_train"] else " (the task's own dev set)"),
             f"- Seeds: {summary['seeds']}; training arguments (every run): `{' '.join(summary['train_args'])}`",
             f"- Rule, stated before the runs: {summary['rule']}.", ""]
    rows = [[v["variant"], number(v["final"]["mean"]), number(v["final_difference"]["difference"])
             + interval(v["final_difference"].get("ci")), number(v["best_difference"]["difference"])
             + interval(v["best_difference"].get("ci")), number(v["speedup"]["0.95"], 2),
             number(v["mean_mix"][-1], 3) if v["mean_mix"] else "n/a"] for v in summary["variants"]]
    if rows:
        lines += [table(["variant", "final dev (mean)", "final − BERT [CI]", "best − BERT [CI]", "S(0.95)",
                         "last layer's weight at the end"], rows), "",
                  f"BERT's final dev metric (mean): {number(summary['variants'][0]['bert_final']['mean'])}.", "",
                  f"**Chosen by the rule: {summary['chosen']}.**", ""]
        series = [("BERT", COLORS["bert"], summary["curves"]["bert"])]
        series += [(v["variant"], VARIANT_COLORS[i % len(VARIANT_COLORS)], summary["curves"][v["variant"]])
                   for i, v in enumerate(summary["variants"])]
        plot_learning_curves(summary, Path(output_dir) / "learning_curves.png", series,
                             f"{summary['data']['name']}: BERT vs BERMo's mix settings")
        lines += ["![dev learning curves (mean, band: min-max over seeds)](learning_curves.png)", ""]
        mixes = [{"label": v["variant"], "layers": v["mix_layers"], "weights": v["mean_mix"], "scale": v["mean_scale"]}
                 for v in summary["variants"] if v["mean_mix"]]
        if mixes:
            plot_layer_weights(mixes, Path(output_dir) / "layer_weights.png", "BERMo's mix at the end (mean over seeds)")
            lines += ["![mix at the end](layer_weights.png)", ""]
    lines += ["## Runs", "", table(["variant", "seed", "status", "failure"],
                                   [[r["variant"], r["seed"], r["status"], r["error"] or ""] for r in summary["runs"]])]
    write_json_atomic(Path(output_dir) / "summary.json", summary)
    write_text_atomic(Path(output_dir) / "summary.md", "\n".join(lines) + "\n")
