"""The pruning experiment's pages: summary.json, summary.md and PNG plots from the summary that
`bermo.experiments.pruning.analyze` computed (nothing is measured or recomputed here)."""

import math
from pathlib import Path

import numpy as np

from ..plots import pyplot
from .report import COLORS, NAMES, _save, mean_sd, number, plot_layer_weights, table
from .runner import write_json_atomic, write_text_atomic

MARKERS = {"dense": "*", "magnitude": "s", "movement": "o", "soft_movement": "^", "l0": "D"}
OUTCOMES = ("stable", "collapsed", "diverged", "failed", "not run")


def write_pruning_report(output_dir, summary):
    output_dir = Path(output_dir)
    plots = []
    finished = [r for r in summary["runs"] if r["outcome"] in ("stable", "collapsed", "diverged")]
    if finished:
        plot_accuracy_vs_remaining(summary, output_dir / "accuracy_vs_remaining.png")
        plots.append(("Final dev accuracy against the measured remaining encoder weights, every run",
                      "accuracy_vs_remaining.png"))
    cells = [c for c in summary["stability"]["cells"] if any(c["models"][m]["classified"] for m in NAMES)]
    if cells:
        plot_collapse_rates(summary, output_dir / "collapse_rates.png")
        plots.append(("Collapse rate (divergences included) per cell, 95% Clopper–Pearson intervals",
                      "collapse_rates.png"))
    efficiency = summary.get("efficiency")
    if efficiency and any(entry["matched"] for entry in efficiency["methods"].values()):
        plot_matched_differences(summary, output_dir / "matched_difference.png")
        plots.append(("BERMo − BERT at matched remaining encoder fraction (mean over seeds, bootstrap CI)",
                      "matched_difference.png"))
    if summary.get("layer_mixes"):
        plot_layer_mixes(summary["layer_mixes"], output_dir / "layer_weights.png")
        plots.append(("BERMo's learned layer weights under pruning, one row per finished BERMo run (its "
                      "layer_mix.json)", "layer_weights.png"))
    summary["plots"] = [path for _, path in plots]
    write_json_atomic(output_dir / "summary.json", summary)
    write_text_atomic(output_dir / "summary.md", pruning_markdown(summary, plots))


# --------------------------------------------------------------------------------------------------------------------
# Markdown


def percent(value, digits=1):
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}"


def percent_interval(ci, digits=0):
    if not ci or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in ci):
        return ""
    return f" [{100 * ci[0]:.{digits}f}, {100 * ci[1]:.{digits}f}]"


def pruning_markdown(summary, plots):
    data, study = summary["data"], summary["study"]
    counts = {o: sum(r["outcome"] == o for r in summary["runs"]) for o in OUTCOMES}
    title = {"stability": "Pruning stability", "efficiency": "Parameter efficiency of pruning"}[study]
    lines = [f"# {title}: BERT vs BERMo on {data['name']}", ""]
    lines += [f"- Command: `{summary['command']}`" if summary.get("command") else "",
              f"- Checkpoint: `{summary['checkpoint']}`. BERT and BERMo both start from it (`--model_type "
              "bert|bermo`): same data order and head initialization for the same seed.",
              data_line(data),
              f"- Seeds: {', '.join(map(str, summary['seeds']))}; runs: {len(summary['runs'])} — "
              + ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts[o]) + ".",
              f"- Training arguments (every run): `{' '.join(summary['base_args'])}` "
              "`--save_eval_predictions --no-save_model`",
              f"- Pruning options (every pruned run): `{' '.join(summary['pruning_options'])}`; per cell:",
              ""]
    lines.append(table(["cell", "pruning arguments"],
                       [[name, f"`{' '.join(args)}`" if args else "(none: dense)"]
                        for name, args in data["cell_args"].items()]))
    if any(key != "None" for key in data["data_args"]):
        lines += ["", "Data arguments per training subset:", ""]
        lines.append(table(["training rows", "data arguments"],
                           [[key, f"`{' '.join(args)}`"] for key, args in data["data_args"].items()]))
    rule = summary["collapse_rule"]
    lines += ["", f"A run **collapses** when its final dev accuracy is at most the majority-class accuracy "
              f"({percent(data['majority_accuracy'])}%) + {100 * rule['margin']:g} points, or when ≥ "
              f"{100 * rule['one_class_share']:g}% of its final dev predictions fall in one class; it **diverges** "
              "when its loss became non-finite (the training loop stops it; counted as a collapse). Runs that failed "
              "for another reason are listed, not counted. Remaining = the encoder's remaining weights as Sanh et al. "
              "count them (kept matrix weights + biases + LayerNorm over all encoder parameters), measured at the "
              "final evaluation."]
    lines += ["", stability_markdown(summary)]
    if summary.get("efficiency"):
        lines += ["", efficiency_markdown(summary)]
    lines += ["", cut_markdown(summary), "", runs_markdown(summary)]
    lines += ["", "## Plots", ""] + [f"![{title}]({path})" for title, path in plots]
    return "\n".join(line for line in lines if line is not None) + "\n"


def data_line(data):
    counts = ", ".join(f"{name if data['label_names'] else i}: {n}" for i, (name, n) in enumerate(
        zip(data["label_names"] or range(len(data["dev_label_counts"])), data["dev_label_counts"])))
    text = (f"- Data: {data['name']} ({data['train_rows_available']} training rows); dev split `{data['eval_split']}`, "
            f"{data['dev_rows']} rows ({counts}; majority-class accuracy {percent(data['majority_accuracy'])}%).")
    if data["files"]:
        sizes = sorted(int(name[6:-6]) for name in data["files"] if name.startswith("train_"))
        text += (f" Training subsets: {', '.join(map(str, sizes))} rows, class-balanced, drawn with numpy seed "
                 f"{data['data_seed']} (nested: each smaller subset is part of the larger), written to "
                 "`OUTPUT_DIR/data/train_N.jsonl` with the dev set as `OUTPUT_DIR/data/dev.jsonl` (sha256 prefixes: "
                 + ", ".join(f"{name} {value}" for name, value in data["files"].items()) + ").")
    return text


def stability_markdown(summary):
    study = summary["study"]
    rows = []
    for entry in summary["stability"]["cells"]:
        bert, bermo = entry["models"]["bert"], entry["models"]["bermo"]
        rows.append([entry["cell"], _remaining(bert), _remaining(bermo), _rate(bert), _rate(bermo),
                     number(entry["fisher_exact"]["p_value"], 3), _accuracy(bert), _accuracy(bermo)])
    pooled = summary["stability"]["pooled"]
    if any(pooled["models"][m]["runs"] for m in NAMES):
        rows.append(["**all pruned cells pooled**", "", "", _rate(pooled["models"]["bert"]),
                     _rate(pooled["models"]["bermo"]), number(pooled["fisher_exact"]["p_value"], 3), "", ""])
    heading = "## Collapse and divergence per cell" if study == "stability" else "## Collapse and divergence"
    lines = [heading, "",
             table(["cell", "BERT remaining %", "BERMo remaining %", "BERT collapsed (div.) / n, rate % [95% CI]",
                    "BERMo collapsed (div.) / n, rate % [95% CI]", "Fisher p", "BERT median / worst acc %",
                    "BERMo median / worst acc %"], rows),
             "", "Collapsed (div.): collapsed runs, divergences included, with the divergences in parentheses; "
             "rate: over the runs that finished or diverged; CI: Clopper–Pearson (exact binomial); Fisher: two-sided "
             "exact test of the two rates. Median / worst: over seeds, a diverged run ranking below every finished one "
             "(\"div.\" when the median or the worst is a diverged run). The pooled row ignores the cells "
             "(their rates differ), so read it as a summary, not a stratified test."]
    return "\n".join(lines)


def _remaining(entry):
    described = entry["remaining_encoder_fraction"]
    return "n/a" if not described.get("n") else percent(described["mean"])


def _rate(entry):
    if not entry["runs"]:
        return "not run"
    text = f"{entry['events']} ({entry['diverged']}) / {entry['classified']}, {percent(entry['rate'], 0)}" \
        f"{percent_interval(entry['ci'])}"
    if entry["failed"]:
        text += f"; {entry['failed']} failed otherwise"
    return text


def _accuracy(entry):
    if not entry["runs"]:
        return ""
    median = "div." if entry["median"] is None and entry["diverged"] else percent(entry["median"])
    worst = "div." if entry["worst"] is None and entry["diverged"] else percent(entry["worst"])
    return f"{median} / {worst}"


def efficiency_markdown(summary):
    efficiency = summary["efficiency"]
    lines = ["## Accuracy and F1 against the remaining encoder weights", ""]
    has_f1 = any("f1" in p for entry in efficiency["methods"].values() for p in entry["points"])
    dense = efficiency["dense"]
    if any(dense[m]["accuracy"]["n"] for m in NAMES):
        lines += ["Dense baselines (no pruning, remaining 100%), mean ± sd over seeds, %:", "",
                  table(["model", "accuracy", *(["F1"] if has_f1 else []), "runs"],
                        [[NAMES[m], mean_sd(dense[m]["accuracy"], 100, 2),
                          *([mean_sd(dense[m]["f1"], 100, 2)] if has_f1 else []), dense[m]["accuracy"]["n"]]
                         for m in NAMES]), ""]
    for method, entry in efficiency["methods"].items():
        symbol = "λ" if entry["setting"] == "lambda" else "v"
        lines += [f"### {method}", "", "Mean ± sd over the finished seeds, %:", ""]
        rows = [[f"{p['setting']:g}", NAMES[p["model"]],
                 mean_sd(p["remaining_encoder_fraction"], 100, 2), mean_sd(p["accuracy"], 100, 2),
                 *([mean_sd(p.get("f1"), 100, 2)] if has_f1 else []),
                 f"{p['finished']}/{p['runs']}" + (f" ({p['diverged']} diverged)" if p["diverged"] else "")]
                for p in entry["points"]]
        lines.append(table([symbol, "model", "remaining %", "accuracy", *(["F1"] if has_f1 else []),
                            "finished / runs"], rows))
        fractions = ", ".join(percent(f, 2) + "%" for f in entry["match_fractions"])
        lines += ["", f"At matched remaining fraction ({fractions or 'none: the run curves do not overlap'}):", ""]
        rows = []
        for metric, matched in entry["matched"].items():
            for point in matched:
                rows.append([metric, percent(point["fraction"], 2), percent(point["bert_mean"], 2),
                             percent(point["bermo_mean"], 2),
                             (f"{100 * point['difference']:+.2f}" if point["pairs"] else "n/a")
                             + _points_interval(point["ci"]), point["pairs"]])
        if rows:
            lines.append(table(["metric", "remaining %", "BERT % (paired seeds)", "BERMo % (paired seeds)",
                                "BERMo − BERT, points [CI]", "seeds paired"], rows))
        lines.append("")
    confidence = summary.get("confidence") or 0
    lines += ["Matched remaining fraction: each run curve (one model, method and seed over the sweep) is interpolated "
              "linearly in log(remaining fraction) between its points, never extrapolated; the fractions are "
              "log-spaced over the range every curve covers (or --match_fractions). BERMo − BERT is paired by seed; "
              + (f"{confidence:.0%} CI: percentile bootstrap over the paired seeds (scipy.stats.bootstrap), "
                 "which cannot be wider than the seeds' own spread — with few seeds it understates the uncertainty."
                 if confidence else "no confidence intervals (--confidence 0).")]
    return "\n".join(lines)


def _points_interval(ci):
    return "" if not ci else f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"


def cut_markdown(summary):
    full, power, study = summary["full_scale"], summary["power"], summary["study"]
    n = power["runs_per_model_per_cell"]
    lines = ["## What the CPU scale cut, and what that does to the intervals", ""]
    if study == "stability":
        lines.append(f"- Full design (GPU): {full['seeds']} seeds per cell, training subsets "
                     f"{', '.join(map(str, full['train_rows']))} rows for about {full['epochs_of_1000_rows']} epochs "
                     f"of 1,000 rows, remaining fractions {', '.join(f'{v:g}' for v in full['fractions'])}, λ "
                     f"{', '.join(f'{v:g}' for v in full['lambdas'])}. Here: {n} seeds, the cells above, "
                     f"`{_steps(summary)}` optimizer steps per run.")
    else:
        lines.append(f"- Full design (GPU): {full['seeds']} seeds, λ {', '.join(f'{v:g}' for v in full['lambdas'])}, "
                     f"{full['train']}, {full['dev']}. Here: {n} seeds, the sweep above, `{_steps(summary)}` optimizer "
                     "steps per run.")
    lines += [f"- With {n} runs per model and cell, the smallest two-sided Fisher p a cell can show is "
              f"{number(power['smallest_fisher_p'], 3)} ({n}/{n} vs 0/{n} collapses): "
              + ("no single cell can separate the models at the 5% level; only large, consistent differences (the "
                 "pooled row) can." if power["smallest_fisher_p"] > 0.05 else "a cell can separate the models only "
                 "when one collapses almost always and the other almost never.")
              + f" A rate of 0/{n} still has a 95% upper bound of {percent(power['zero_of_n_upper_bound'], 0)}%."]
    if study == "efficiency":
        lines.append(f"- Matched-fraction differences rest on {n} seed pairs: their bootstrap intervals are rough "
                     "(with 2 seeds they span the two seeds' differences and nothing more).")
    lines.append("- Fewer optimizer steps than the paper's runs: the cubic schedule reaches its final threshold "
                 "sooner, and the scores have less time to move; the remaining fractions above are measured, not "
                 "assumed.")
    return "\n".join(lines)


def _steps(summary):
    args = summary["base_args"]
    return args[args.index("--max_train_steps") + 1] if "--max_train_steps" in args else "?"


def runs_markdown(summary):
    rows = [[r["cell"], NAMES[r["model"]], r["seed"], r["outcome"], percent(r.get("accuracy"), 2),
             percent(r.get("f1"), 2), percent(r.get("remaining_encoder_fraction"), 2),
             percent(r.get("exported_remaining_encoder_fraction"), 2), percent(r.get("largest_class_share"), 1),
             (r.get("error") or "")[:120]] for r in summary["runs"]]
    return "\n".join(["## Runs", "", table(["cell", "model", "seed", "outcome", "dev accuracy %", "F1 %",
                                            "remaining % (last eval)", "remaining % (exported)",
                                            "largest predicted class %", "failure"], rows)])


# --------------------------------------------------------------------------------------------------------------------
# Plots


def plot_accuracy_vs_remaining(summary, path):
    plt = pyplot()
    efficiency = summary.get("efficiency")
    has_f1 = efficiency is not None and any(r.get("f1") is not None for r in summary["runs"])
    metrics = ["accuracy", "f1"] if has_f1 else ["accuracy"]
    figure, axes = plt.subplots(1, len(metrics), figsize=(6.4 * len(metrics), 4.4), squeeze=False)
    runs = summary["runs"]
    finished = [r for r in runs if r["outcome"] in ("stable", "collapsed") and r.get("remaining_encoder_fraction")]
    diverged = [r for r in runs if r["outcome"] == "diverged"]
    floor = min([r["accuracy"] for r in finished] + [summary["data"]["majority_accuracy"]]) - 0.03
    # stability: many runs share a target fraction; BERT's and BERMo's points are set apart by 4% in x
    dodge = {"bert": 1.0, "bermo": 1.0} if efficiency else {"bert": 0.96, "bermo": 1.04}
    for axis, metric in zip(axes[0], metrics):
        axis.set_xscale("log")
        for model in NAMES:
            for method in MARKERS:
                rows = [r for r in finished if r["model"] == model and r["method"] == method]
                if not rows:
                    continue
                for outcome, fill in (("stable", COLORS[model]), ("collapsed", "none")):
                    chosen = [r for r in rows if r["outcome"] == outcome and r[metric] is not None]
                    if chosen:
                        axis.scatter([r["remaining_encoder_fraction"] * dodge[model] for r in chosen],
                                     [r[metric] for r in chosen],
                                     marker=MARKERS[method], facecolors=fill, edgecolors=COLORS[model], s=36,
                                     alpha=0.8, label=f"{NAMES[model]} {method}" if outcome == "stable" or not any(
                                         r["outcome"] == "stable" for r in rows) else None)
                if efficiency and method != "dense":
                    _mean_line(axis, rows, metric, COLORS[model])
        if metric == "accuracy":
            majority = summary["data"]["majority_accuracy"]
            axis.axhline(majority + summary["collapse_rule"]["margin"], color="gray", linestyle=":", linewidth=1)
            axis.text(0.01, majority + summary["collapse_rule"]["margin"], "collapse line (majority + 2 points)",
                      transform=axis.get_yaxis_transform(), fontsize=7, color="gray", va="bottom")
            if diverged:
                for model in NAMES:
                    rows = [r for r in diverged if r["model"] == model]
                    if rows:
                        fractions = [_target_fraction(r) * dodge[model] for r in rows]
                        axis.scatter(fractions, [floor] * len(rows), marker="x", color=COLORS[model],
                                     label=f"{NAMES[model]} diverged ({len(rows)})")
        axis.set_xlabel("remaining encoder weights (fraction, log scale)")
        axis.set_ylabel(f"final dev {metric}")
        axis.legend(fontsize=7, ncol=2)
    study = ("stability: open markers = collapsed, x = diverged; BERT/BERMo set 4% apart in x" if not efficiency
             else "efficiency: lines = means over seeds")
    figure.suptitle(f"{summary['data']['name']} — {study}", fontsize=10)
    _save(figure, path)


def _mean_line(axis, rows, metric, color):
    by_setting = {}
    for r in rows:
        by_setting.setdefault(r["fraction"] if r["fraction"] is not None else r["lambda"], []).append(r)
    points = sorted((float(np.mean([r["remaining_encoder_fraction"] for r in group])),
                     float(np.mean([r[metric] for r in group if r[metric] is not None])))
                    for group in by_setting.values() if any(r[metric] is not None for r in group))
    if len(points) > 1:
        axis.plot(*zip(*points), color=color, linewidth=1, alpha=0.7)


def _target_fraction(row):
    return row["fraction"] if row.get("fraction") else 1.0


def plot_collapse_rates(summary, path):
    plt = pyplot()
    cells = [c for c in summary["stability"]["cells"] if any(c["models"][m]["classified"] for m in NAMES)]
    figure, axis = plt.subplots(figsize=(6.4, 1.2 + 0.5 * len(cells)))
    height = 0.38
    for offset, model in ((-height / 2, "bert"), (height / 2, "bermo")):
        for row, cell in enumerate(cells):
            entry = cell["models"][model]
            if not entry["classified"]:
                continue
            rate = entry["rate"]
            axis.barh(row + offset, rate, height, color=COLORS[model], alpha=0.85,
                      label=NAMES[model] if row == 0 else None)
            low, high = entry["ci"]
            axis.errorbar(rate, row + offset, xerr=[[rate - low], [high - rate]], color="black", capsize=2,
                          linewidth=1)
            axis.text(min(high + 0.02, 1.02), row + offset, f"{entry['events']}/{entry['classified']}", va="center",
                      fontsize=7)
    axis.set_yticks(range(len(cells)), [c["cell"] for c in cells], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlim(0, 1.12)
    axis.set_xlabel("collapse rate (divergences included)")
    axis.set_title("Collapse rates per cell (95% Clopper–Pearson)", fontsize=10)
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / len(cells)), ncol=2)
    _save(figure, path)


def plot_matched_differences(summary, path):
    plt = pyplot()
    methods = {m: e for m, e in summary["efficiency"]["methods"].items() if e["matched"]}
    metrics = sorted({metric for e in methods.values() for metric in e["matched"]})
    figure, axes = plt.subplots(1, len(metrics), figsize=(6.4 * len(metrics), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for method, entry in methods.items():
            points = [p for p in entry["matched"].get(metric, []) if p["pairs"]]
            if not points:
                continue
            x = [p["fraction"] for p in points]
            y = [100 * p["difference"] for p in points]
            axis.plot(x, y, marker=MARKERS.get(method, "o"), label=method)
            with_ci = [p for p in points if p["ci"]]
            if with_ci:
                axis.fill_between([p["fraction"] for p in with_ci], [100 * p["ci"][0] for p in with_ci],
                                  [100 * p["ci"][1] for p in with_ci], alpha=0.2)
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_xscale("log")
        axis.set_xlabel("remaining encoder weights (fraction, log scale)")
        axis.set_ylabel(f"BERMo − BERT dev {metric} (points)")
        axis.legend(fontsize=8)
    figure.suptitle("At matched remaining fraction (band: bootstrap CI over seeds)", fontsize=10)
    _save(figure, path)


def plot_layer_mixes(mixes, path):
    """Heat map of BERMo's softmax layer weights: one row per run (label: cell and seed), one column per mixed
    representation (emb = the embeddings): the experiments' own layer-weight plot."""
    plot_layer_weights(mixes, path, "BERMo's layer weights under pruning (softmax; s = scale)")


# --------------------------------------------------------------------------------------------------------------------
# The structured study


def write_structured_report(output_dir, summary):
    output_dir = Path(output_dir)
    plots = []
    if any(r.get("speedup") and r.get("accuracy") is not None for r in summary["runs"]):
        plot_accuracy_vs_speedup(summary, output_dir / "accuracy_vs_speedup.png")
        plots.append(("Dev accuracy against the measured CPU speed-up (means over seeds; dashed: with distillation)",
                      "accuracy_vs_speedup.png"))
    summary["plots"] = [path for _, path in plots]
    write_json_atomic(output_dir / "summary.json", summary)
    write_text_atomic(output_dir / "summary.md", structured_markdown(summary, plots))


def structured_markdown(summary, plots):
    data, speed = summary["data"], summary["speed"]
    counts = {o: sum(r["outcome"] == o for r in summary["runs"]) for o in OUTCOMES}
    lines = [f"# Structured pruning: BERT vs BERMo on {data['name']}", "",
             f"- Command: `{summary['command']}`" if summary.get("command") else "",
             f"- Checkpoint: `{summary['checkpoint']}`; BERT and BERMo from it, the same seeds "
             f"({', '.join(map(str, summary['seeds']))}); runs: {len(summary['runs'])} — "
             + ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts[o]) + ".",
             data_line(data),
             f"- Training arguments (every run): `{' '.join(summary['base_args'])}`",
             f"- Pruning: `--pruning_granularity {summary['granularity']}` at each kept fraction "
             f"(`--initial_threshold 1 --final_threshold v`), other options `{' '.join(summary['pruning_options'])}`;"
             " distillation: `--teacher_name_or_path` = the same model's dense run of the same seed (default "
             "temperature and alpha).",
             f"- Speed-up: dense run / exported model, CPU, batch {speed['batch']} x {speed['seq']} tokens, median of "
             f"{speed['repeats']} interleaved forwards after one warm-up (bermo.pruning.timing).", "",
             "## Targets against the dense model of the same budget", ""]
    rows = []
    for model in NAMES:
        dense = summary["tables"][model]["dense_accuracy"]
        for entry in summary["tables"][model]["targets"]:
            best = entry["best"]
            reached = ("no kept fraction this fast" if best is None else
                       f"{best['cell']}: {best['speedup']:.2f}x, loss {best['loss_points']:.2f} points "
                       f"({'met' if best['met'] else 'not met'})")
            rows.append([NAMES[model], "yes" if entry["distill"] else "no",
                         f"≤ {entry['max_loss_points']:g} points at {entry['speedup']:g}x", percent(dense["mean"], 2),
                         reached])
    lines.append(table(["model", "distillation", "target", "dense accuracy %", "reached"], rows))
    lines += ["", f"A cell counts for a target when its mean speed-up is at least {1 - summary['speed_tolerance']:.0%} "
              "of the target's; among those, the most accurate is shown. Loss: dense mean accuracy minus the cell's "
              "mean, in points.", ""]
    for model in NAMES:
        lines += [f"## {NAMES[model]}: accuracy, kept fraction, speed-up", "",
                  table(["cell", "accuracy % (mean ± sd)", "exported encoder remaining %", "exported parameters",
                         "speed-up", "finished / runs"],
                        [[e["cell"], mean_sd(e["accuracy"], 100, 2),
                          mean_sd(e["exported_remaining_encoder_fraction"], 100, 1),
                          "n/a" if not e["exported_parameters"]["n"] else f"{e['exported_parameters']['mean']:,.0f}",
                          "n/a" if not e["speedup"]["n"] else f"{e['speedup']['mean']:.2f}x",
                          f"{e['finished']}/{e['runs']}"] for e in summary["tables"][model]["cells"]]), ""]
    level = f"{summary.get('confidence', 0.95):.0%}"
    lines += ["## BERMo against BERT, cell by cell", "",
              table(["cell", "seeds", "BERT accuracy %", "BERMo accuracy %", "ratio BERMo / BERT",
                     f"BERMo − BERT, points [{level} CI]"],
                    [[c["cell"], len(c["seeds"]), percent(c["bert"], 2), percent(c["bermo"], 2),
                      "n/a" if c["ratio"] is None else f"{c['ratio']:.3f}",
                      "n/a" if c["difference"] is None else f"{100 * c['difference']:+.2f}" + (
                          "" if c["ci"] is None else f" [{100 * c['ci'][0]:+.2f}, {100 * c['ci'][1]:+.2f}]")]
                     for c in summary.get("comparison", [])]),
              "", "Paired by seed over the seeds where both models finished; CI: bootstrap over seeds and dev "
              "examples (the convergence tables' two-level bootstrap).", ""]
    lines += ["## Collapse rates (stability study's rule)", "",
              table(["cell", "BERT collapsed / n, rate % [95% CI]", "BERMo collapsed / n, rate % [95% CI]",
                     "Fisher p"],
                    [[("**" + c["cell"] + "**") if c["headline"] else c["cell"], _rate(c["models"]["bert"]),
                      _rate(c["models"]["bermo"]), number(c["fisher_exact"]["p_value"], 3)]
                     for c in summary["collapse"]]),
              "", "Bold: the kept fractions 25% and 10%. CI: Clopper–Pearson; Fisher: two-sided exact test.", "",
              "## Runs", "",
              table(["cell", "model", "seed", "outcome", "accuracy %", "exported remaining %", "speed-up", "failure"],
                    [[r["cell"], NAMES[r["model"]], r["seed"], r["outcome"], percent(r.get("accuracy"), 2),
                      percent(r.get("exported_remaining_encoder_fraction"), 1),
                      f"{r['speedup']:.2f}x" if r.get("speedup") else "n/a", (r.get("error") or "")[:120]]
                     for r in summary["runs"]])]
    lines += ["", "## Plots", ""] + [f"![{title}]({path})" for title, path in plots]
    return "\n".join(line for line in lines if line is not None) + "\n"


def plot_accuracy_vs_speedup(summary, path):
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    for model in NAMES:
        entries = summary["tables"][model]["cells"]
        dense = entries[0]
        for distill, style in ((False, "-"), (True, "--")):
            points = [(1.0, dense["accuracy"]["mean"])] if dense["accuracy"]["n"] else []
            points += sorted((e["speedup"]["mean"], e["accuracy"]["mean"]) for e in entries
                             if e["fraction"] is not None and e["distill"] == distill and e["speedup"]["n"]
                             and e["accuracy"]["n"])
            if points:
                axis.plot(*zip(*points), style, marker="o", color=COLORS[model],
                          label=f"{NAMES[model]}{' + distillation' if distill else ''}")
    for speedup, loss in [(t["speedup"], t["max_loss_points"]) for t in summary["targets"]]:
        axis.axvline(speedup, color="gray", linestyle=":", linewidth=1)
        axis.text(speedup, 0.01, f" {speedup:g}x: ≤ {loss:g} pt", transform=axis.get_xaxis_transform(), fontsize=7,
                  color="gray")
    axis.set_xlabel("CPU inference speed-up of the exported model (dense = 1)")
    axis.set_ylabel("final dev accuracy")
    axis.legend(fontsize=8)
    axis.set_title(f"{summary['data']['name']}: structured pruning, accuracy against speed-up", fontsize=10)
    _save(figure, path)
