"""Numbers -> pages: summary.json, summary.md (the tables) and PNG plots in an experiment's output folder.

Everything here reads the summary that the analysis computed; nothing is measured or recomputed.
"""

import math
from pathlib import Path

import numpy as np

from .._io import save_figure_atomic
from ..plots import pyplot
from .runner import write_json_atomic, write_text_atomic

COLORS = {"bert": "tab:blue", "bermo": "tab:orange"}
# Several BERMo variants in one figure: tab10 without BERT's blue.
VARIANT_COLORS = ["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
                  "tab:gray"]
NAMES = {"bert": "BERT", "bermo": "BERMo"}
GROUP_ORDER = ("surface", "syntactic", "semantic", "other")


def number(value, digits=4, infinity="∞"):
    """A table cell: n/a for missing or undefined values, ∞ for infinite ones."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return infinity if value > 0 else "-" + infinity
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def interval(ci, digits=4):
    if not ci:
        return ""
    return f" [{number(ci[0], digits)}, {number(ci[1], digits)}]"


def mean_sd(entry, scale=1.0, digits=4):
    if not entry or entry.get("n", 0) == 0:
        return "n/a"
    mean, sd = entry["mean"] * scale, entry["sd"]
    return f"{mean:.{digits}f}" + ("" if sd is None or math.isnan(sd) else f" ± {sd * scale:.{digits}f}")


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _save(figure, path):
    """Save through a temporary file in the same folder (readers never see half a PNG), cropped to what is drawn, so
    long row labels, titles and legends below the axes stay inside the image."""
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=90, bbox_inches="tight")


# --------------------------------------------------------------------------------------------------------------------
# Convergence


def write_convergence_report(output_dir, summary):
    output_dir = Path(output_dir)
    plots = []
    if summary.get("curves"):
        plot_learning_curves(summary, output_dir / "learning_curves.png")
        plots.append(("Dev learning curves (mean, band: min-max over seeds)", "learning_curves.png"))
        plot_steps_to_target(summary, output_dir / "steps_to_target.png")
        plots.append(("Median steps to target with 95% CI", "steps_to_target.png"))
    if summary.get("layer_mixes"):
        plot_layer_weights(summary["layer_mixes"], output_dir / "layer_weights.png",
                           "BERMo learned layer weights per seed")
        plots.append(("BERMo's learned layer weights per seed", "layer_weights.png"))
    summary["plots"] = [path for _, path in plots]
    write_json_atomic(output_dir / "summary.json", summary)
    write_text_atomic(output_dir / "summary.md", convergence_markdown(summary, plots))


def convergence_markdown(summary, plots):
    data, statistics = summary["data"], summary.get("statistics")
    ok = sum(r["status"] == "ok" for r in summary["runs"])
    lines = [
        f"# Convergence: BERT vs BERMo on {data['name']}",
        "",
        f"- Data: {data['name']}, {data['train_rows']} training rows; dev split `{data['eval_split']}` "
        f"({data['dev_rows']} rows); metric: {data['metric']}.",
        f"- Checkpoint: `{summary['checkpoint']}`. BERT and BERMo both start from it (`--model_type bert|bermo`): "
        "same data order and head initialization for the same seed.",
        f"- Seeds: {', '.join(map(str, summary['seeds']))}; runs: {len(summary['runs'])}, {ok} finished, "
        f"{len(summary['runs']) - ok} failed or not run.",
        f"- Training arguments (every run): `{' '.join(summary['train_args'])}`",
    ]
    if statistics is None:
        lines += ["", f"**{summary.get('note', 'no statistics')}**"]
        return "\n".join(lines + ["", runs_markdown(summary)]) + "\n"
    any_target = next(iter(statistics["targets"].values()))
    lines += [
        f"- Steps to target: the first evaluation at which the {statistics['window']}-point trailing moving "
        f"average of a run's dev {data['metric']} reaches q × (median over seeds of BERT's best dev "
        f"{data['metric']} = {number(any_target['target'] / any_target['q'])}), linearly interpolated between "
        "evaluations; ∞: never within the run (a failed run counts with the evaluations it made). "
        + _window_rule(statistics),
        "- S = median steps(BERT) / median steps(BERMo): above 1, BERMo gets there in fewer steps. "
        + (f"{statistics['confidence']:.0%} CIs: percentile bootstrap resampling seeds (paired) and dev examples. "
           + _replicate_rule(statistics)
           if statistics.get("confidence") else "No confidence intervals (one seed or --confidence 0)."),
        "",
        "## Steps to target",
        "",
    ]
    paper = summary.get("paper", {})
    rows = []
    for entry in statistics["targets"].values():
        medians, cis = entry["median_steps"], entry.get("median_steps_ci", {})
        rows.append([
            number(entry["q"], 2), number(entry["target"]),
            number(medians["bert"], 1) + interval(cis.get("bert"), 1),
            number(medians["bermo"], 1) + interval(cis.get("bermo"), 1),
            number(entry["speedup"], 2) + interval(entry.get("speedup_ci"), 2),
            number(entry.get("p_speedup_gt_1"), 2),
            f"{entry['defined_replicates']} / {entry['n_replicates']}" if "defined_replicates" in entry else "n/a",
            number(entry.get("wall_clock_speedup"), 2),
            f"{paper['speedup']}× ({paper['task'].upper()})" if paper.get("speedup") else "—",
        ])
    lines.append(table(["q", "target", "BERT median steps", "BERMo median steps", "speedup S", "P(S > 1)",
                        "replicates with S defined", "wall-clock speedup", "paper"], rows))
    lines += ["", "Steps per seed (seeds in order " + ", ".join(map(str, summary["seeds"])) + "):", ""]
    rows = [[number(entry["q"], 2)] + [", ".join(number(s, 1) for s in entry["steps"][m]) for m in ("bert", "bermo")]
            for entry in statistics["targets"].values()]
    lines.append(table(["q", "BERT", "BERMo"], rows))
    lines += ["", "## Learning curves", ""]
    rows = []
    labels = {"auc": "area under the curve (mean dev metric over training)", "final": "final dev metric",
              "best": "best dev metric"}
    for key, label in labels.items():
        difference = statistics[f"{key}_difference"]
        rows.append([label, mean_sd(statistics["models"]["bert"][key]), mean_sd(statistics["models"]["bermo"][key]),
                     number(difference["difference"]) + interval(difference.get("ci"))])
    lines.append(table(["", "BERT (mean ± sd)", "BERMo (mean ± sd)", "BERMo − BERT, paired [CI]"], rows))
    if summary.get("seconds_per_step"):
        ratio = summary["step_time_ratio"]
        lines += ["", "## Time per step", "",
                  table(["BERT s/step", "BERMo s/step", "ratio BERT / BERMo"],
                        [[mean_sd(summary["seconds_per_step"]["bert"], digits=3),
                          mean_sd(summary["seconds_per_step"]["bermo"], digits=3),
                          number(ratio["ratio"], 3) + interval(ratio.get("ci"), 3)]]),
                  "", "Seconds per step: the median time between two optimizer steps of a run (training only: "
                  "loading and evaluations left out); mean ± sd over seeds. Wall-clock speedup = S × this ratio."]
    lines += ["", runs_markdown(summary)]
    lines += ["", "## Plots", ""] + [f"![{title}]({path})" for title, path in plots]
    return "\n".join(lines) + "\n"


def _window_rule(statistics):
    window = statistics["window"]
    if window == 1:
        return "No smoothing: each evaluation counts on its own."
    return (f"Full windows only: a run's first average is that of its first {window} evaluations, so no single "
            "evaluation counts on its own.")


def _replicate_rule(statistics):
    entry = next(iter(statistics["targets"].values()))
    if "min_defined_share" not in entry:
        return ""
    return ("A bootstrap replicate in which neither model reaches the target (S = ∞/∞) counts as not faster in "
            "P(S > 1), a share of all replicates; the CI of S is taken over the replicates where S is defined and "
            f"is n/a when they are fewer than {entry['min_defined_share']:.0%} of all.")


def runs_markdown(summary):
    failures = summary.get("failures", {})
    lines = ["## Runs", ""]
    rows = [[NAMES[r["model"]], r["seed"], r["status"], r["evaluations"], number(r.get("seconds_per_step"), 3),
             r.get("error") or ""] for r in summary["runs"]]
    lines.append(table(["model", "seed", "status", "evaluations", "s/step", "failure"], rows))
    if failures:
        parts = [f"{NAMES[m]} {failures[m]['failed']}/{failures[m]['runs']} "
                 f"(95% Clopper–Pearson{interval(failures[m]['rate_ci'], 2)})" for m in ("bert", "bermo")]
        lines += ["", f"Failed runs: {'; '.join(parts)}; Fisher exact p = "
                      f"{number(failures['fisher_exact']['p_value'], 3)}."]
    return "\n".join(lines)


def plot_learning_curves(summary, path, series=None, title=None):
    """Dev curves, mean over seeds with a min-max band: BERT and BERMo, or `series` [(label, color, curves), ...]."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4))
    if series is None:
        series = [(NAMES[model], COLORS[model], summary["curves"][model]) for model in ("bert", "bermo")]
    for label, color, model_curves in series:
        curves = [c for c in model_curves if c]
        if not curves:
            continue
        steps = sorted({s for c in curves for s in c["steps"]})
        table_ = np.full((len(curves), len(steps)), np.nan)
        for i, curve in enumerate(curves):
            for step, value in zip(curve["steps"], curve["values"]):
                table_[i, steps.index(step)] = value
        mean = np.nanmean(table_, axis=0)
        line, = axis.plot(steps, mean, color=color, marker=".", label=f"{label} (mean of {len(curves)})")
        axis.fill_between(steps, np.nanmin(table_, axis=0), np.nanmax(table_, axis=0), color=line.get_color(),
                          alpha=0.15)
    for entry in summary.get("statistics", {}).get("targets", {}).values():
        axis.axhline(entry["target"], color="gray", linestyle=":", linewidth=1)
        axis.annotate(f"q={entry['q']:g}", (axis.get_xlim()[0], entry["target"]), fontsize=7, color="gray",
                      va="bottom")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel(f"dev {summary['data']['metric']}")
    axis.set_title(title or f"{summary['data']['name']}: BERT vs BERMo")
    axis.legend(fontsize=7 if len(series) > 3 else None)
    _save(figure, path)


def plot_steps_to_target(summary, path):
    plt = pyplot()
    statistics = summary["statistics"]
    entries = list(statistics["targets"].values())
    finite = [v for e in entries for m in ("bert", "bermo")
              for v in [e["median_steps"][m], *(e.get("median_steps_ci", {}).get(m) or [])]
              if v is not None and np.isfinite(v)]
    ceiling = (max(finite) if finite else 1.0) * 1.15
    figure, axis = plt.subplots(figsize=(6.4, 4))
    width = 0.38
    for offset, model in ((-width / 2, "bert"), (width / 2, "bermo")):
        for index, entry in enumerate(entries):
            median = entry["median_steps"][model]
            never = not np.isfinite(median)
            height = ceiling if never else median
            x = index + offset
            axis.bar(x, height, width, color=COLORS[model], alpha=0.35 if never else 0.9, hatch="//" if never else None,
                     label=NAMES[model] if index == 0 else None)
            ci = entry.get("median_steps_ci", {}).get(model)
            if ci and not never:
                low, high = ci
                high = min(high, ceiling) if np.isfinite(high) else ceiling
                axis.errorbar(x, median, yerr=[[median - low], [high - median]], color="black", capsize=3)
            if never:
                axis.text(x, ceiling, "never", ha="center", va="bottom", fontsize=8)
        axis.text(index, 0, "", ha="center")
    axis.set_xticks(range(len(entries)), [f"q={e['q']:g}\nS={number(e['speedup'], 2)}" for e in entries])
    axis.set_ylabel("median optimizer steps to target")
    axis.set_title("Steps to target (bars: median over seeds; whiskers: 95% CI)")
    axis.legend()
    _save(figure, path)


def plot_layer_weights(mixes, path, title):
    """Heat map: one row per task/seed, one column per mixed representation (0 = embeddings)."""
    plt = pyplot()
    width = max(len(m["weights"]) for m in mixes)
    matrix = np.full((len(mixes), width), np.nan)
    for row, mix in enumerate(mixes):
        matrix[row, :len(mix["weights"])] = mix["weights"]
    layers = mixes[0].get("layers") or list(range(width))
    figure, axis = plt.subplots(figsize=(1.2 + 0.55 * width, 1.2 + 0.32 * len(mixes)))
    image = axis.imshow(matrix, aspect="auto", cmap="viridis", vmin=0)
    axis.set_xticks(range(width), ["emb" if layer == 0 else f"L{layer}" for layer in layers], fontsize=7)
    axis.set_yticks(range(len(mixes)), [f"{m['label']} (s={m['scale']:.2f})" for m in mixes], fontsize=7)
    axis.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axis, label="softmax weight")
    _save(figure, path)


# --------------------------------------------------------------------------------------------------------------------
# Probing


def write_probing_report(output_dir, summary):
    output_dir = Path(output_dir)
    plots = []
    for protocol, result in summary["protocols"].items():
        if any("difference" in entry for entry in result["tasks"].values()):
            name = f"probing_differences_{protocol}.png"
            plot_probing_differences(summary, protocol, output_dir / name)
            plots.append((f"{protocol}: BERMo − BERT test accuracy per task, 95% CI", name))
        mixes = [m for entry in result["tasks"].values() for m in entry.get("layer_mixes", [])]
        if mixes:
            name = f"layer_weights_{protocol}.png"
            plot_layer_weights(mixes, output_dir / name, f"BERMo layer weights ({protocol}) per task/seed")
            plots.append((f"{protocol}: BERMo's learned layer weights per task and seed", name))
    summary["plots"] = [path for _, path in plots]
    write_json_atomic(output_dir / "summary.json", summary)
    write_text_atomic(output_dir / "summary.md", probing_markdown(summary, plots))


def _ordered_tasks(summary):
    tasks = summary["tasks"]
    return sorted(tasks, key=lambda t: (GROUP_ORDER.index(tasks[t]["group"] or "other"), tasks[t]["short_name"]))


def _source(info):
    return "SentEval's file" if info["source"] == "SentEval" else "built (build-probing)"


def probing_markdown(summary, plots):
    tasks = summary["tasks"]
    lines = [
        "# Probing: BERT vs BERMo",
        "",
        f"- Checkpoint: `{summary['checkpoint']}`; seeds: {', '.join(map(str, summary['seeds']))}.",
        "- Accuracies in percent on each task's test split; differences in points (BERMo − BERT), paired by seed "
        "and test example; 95% CIs: percentile bootstrap resampling seeds and test examples.",
        "- Groups as SentEval groups them (Conneau et al. 2018). Source: SentEval's own file, or built from real "
        "sentences by `bermo-experiment build-probing` (see the README beside those files).",
        *settings_markdown(summary.get("settings")),
        "",
        "## Tasks",
        "",
        table(["task", "SentEval name", "group", "source", "classes", "rows tr / va / te"],
              [[t, tasks[t]["short_name"], tasks[t]["group"], _source(tasks[t]), tasks[t]["classes"],
                " / ".join(str(tasks[t]["rows"][s]) for s in ("tr", "va", "te"))] for t in _ordered_tasks(summary)]),
    ]
    paper = summary["paper"]
    for protocol, result in summary["protocols"].items():
        what = ("encoder frozen; BERT's probe reads the last layer's [CLS], BERMo's the learned mix of every layer's"
                if protocol == "frozen" else "whole model fine-tuned by the training loop, same steps and seeds")
        lines += ["", f"## {protocol.capitalize()} protocol", "", f"{what}.", ""]
        rows = []
        for task in _ordered_tasks(summary):
            entry, info = result["tasks"][task], tasks[task]
            difference = entry.get("difference", {})
            rows.append([info["group"], info["short_name"], _source(info), mean_sd(entry["bert"], 100, 2),
                         mean_sd(entry["bermo"], 100, 2),
                         number(_scaled(difference.get("difference")), 2) + interval(
                             [_scaled(v) for v in difference["ci"]] if difference.get("ci") else None, 2),
                         number(difference.get("p_greater"), 2), f"{entry['seeds_ok']}/{len(summary['seeds'])}",
                         "—"])
        semantic = result.get("semantic_mean")
        if semantic:
            rows.append(["semantic", f"**mean of {len(semantic['tasks'])}**", "", "", "",
                         f"**{number(_scaled(semantic['difference']), 2)}**"
                         + interval([_scaled(v) for v in semantic["ci"]], 2),
                         number(semantic.get("p_greater"), 2), "",
                         f"+{paper['semantic_mean_difference']} (of 5: Tense, SubjNum, ObjNum, SOMO, CoordInv)"])
        lines.append(table(["group", "task", "source", "BERT %", "BERMo %", "BERMo − BERT [95% CI]", "P(diff > 0)",
                            "seeds ok", "paper"], rows))
        lines += ["", f"Paper: {paper['source']}: +{paper['semantic_mean_difference']} points on average over the "
                  f"semantic tasks, at most +{paper['max_difference']} on one; its per-task figures are not "
                  "available offline here (—)."]
        if protocol == "frozen":
            lines += ["", "### Controls (mean test accuracy over seeds, %)", "", controls_markdown(summary, result)]
        failed = [(task, f) for task, entry in result["tasks"].items() for f in entry["failed"]]
        if failed:
            lines += ["", "Failed runs (left out of the means, counted here):", ""]
            lines += [f"- {tasks[task]['short_name']} seed {f['seed']}: {f['error']}" for task, f in failed]
    lines += ["", "## Plots", ""] + [f"![{title}]({path})" for title, path in plots]
    return "\n".join(lines) + "\n"


def settings_markdown(settings):
    """The settings of a probing summary's runs, as list items (nothing for a summary that has none)."""
    if not settings:
        return []
    lines = [f"- Settings: max length {settings.get('max_length')}; protocols: {', '.join(settings['protocols'])}."]
    probe = settings.get("probe")
    if probe:
        grid = ", ".join("(" + ", ".join(map(str, point)) + ")" for point in probe["grid"])
        training = ", ".join(f"{k} {v}" for k, v in probe["training"].items())
        lines.append(f"- Frozen probe: Adam, learning rate {probe.get('learning_rate')} ({training}); (hidden, "
                     f"dropout, L2) chosen on dev from: {grid}.")
    finetune = settings.get("finetune")
    if finetune:
        options = settings.get("finetune_training_options") or {}
        shown = ", ".join(f"{k} {v}" for k, v in options.items() if v is not None)
        lines.append(f"- Fine-tuning: {finetune['steps']} optimizer steps, dev evaluation every "
                     f"{finetune['eval_steps']}, learning rate {finetune['learning_rate']}; every option of the "
                     f"training loop (as it resolves them): {shown or 'not recorded'}.")
    return lines


def _scaled(value):
    return None if value is None else value * 100


def controls_markdown(summary, result):
    tasks = summary["tasks"]
    layer_names = sorted({name for entry in result["tasks"].values() for name in entry["controls"]
                          if name.startswith("layer_")}, key=lambda name: int(name.split("_")[1]))
    header = ["task"] + ["emb" if name == "layer_0" else f"L{name.split('_')[1]}" for name in layer_names]
    header += ["uniform mean", "best single on dev (layer)", "last layer × learned scale", "BERT: last layer",
               "BERMo: learned mix"]
    rows = []
    for task in _ordered_tasks(summary):
        entry = result["tasks"][task]
        controls = entry["controls"]
        if not controls:
            continue
        layers = controls.get("best_single_layer", {})
        best_layer = f" (L{layers['mean']:.1f})" if layers.get("n") else ""
        name = tasks[task]["short_name"] + (" (built)" if tasks[task]["source"] == "built" else "")
        rows.append([name] + [mean_sd(controls.get(n), 100, 1).split(" ±")[0] for n in layer_names]
                    + [mean_sd(controls.get("uniform"), 100, 1).split(" ±")[0],
                       mean_sd(controls.get("best_single"), 100, 1).split(" ±")[0] + best_layer,
                       mean_sd(controls.get("last_scaled"), 100, 1).split(" ±")[0],
                       mean_sd(entry["bert"], 100, 1).split(" ±")[0], mean_sd(entry["bermo"], 100, 1).split(" ±")[0]])
    return table(header, rows) + ("\n\nBest single layer: chosen per seed by dev accuracy (its mean index shown). "
                                  "Tasks marked (built) were built by build-probing; the others are SentEval's files.")


def plot_probing_differences(summary, protocol, path):
    plt = pyplot()
    result = summary["protocols"][protocol]
    tasks = [t for t in _ordered_tasks(summary) if "difference" in result["tasks"][t]]
    figure, axis = plt.subplots(figsize=(6.4, 1.2 + 0.45 * len(tasks)))
    for row, task in enumerate(tasks):
        difference = result["tasks"][task]["difference"]
        value = difference["difference"] * 100
        color = {"surface": "tab:green", "syntactic": "tab:purple", "semantic": "tab:red"}.get(
            summary["tasks"][task]["group"], "tab:gray")
        axis.barh(row, value, color=color, alpha=0.8)
        if difference.get("ci"):
            low, high = (v * 100 for v in difference["ci"])
            axis.errorbar(value, row, xerr=[[value - low], [high - value]], color="black", capsize=3)
    info = summary["tasks"]
    axis.set_yticks(range(len(tasks)), [f"{info[t]['short_name']} ({info[t]['group']}"
                                        f"{', built' if info[t]['source'] == 'built' else ''})" for t in tasks])
    axis.axvline(0, color="black", linewidth=0.8)
    axis.invert_yaxis()
    axis.set_xlabel("BERMo − BERT test accuracy (points)")
    axis.set_title(f"Probing, {protocol} protocol (95% CI)")
    _save(figure, path)
