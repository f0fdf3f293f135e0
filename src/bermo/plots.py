"""The training loop's figures: the learning curve (with the features' panels) and BERMo's learned layer mix."""

from ._io import save_figure_atomic


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (files only), for every plot of the package."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve_description(metric):
    return f"training loss and the evaluation splits' {metric} per optimizer step"


def learning_curve_figure(records, metric, panels=()):
    """Training loss and the task's own metric per evaluation split; below, one panel per feature panel
    `(label, [figure names])` that the evaluation records hold (e.g. pruning's remaining weights)."""
    plt = pyplot()
    train = [(r["step"], r["loss"]) for r in records if r["split"] == "train"]
    evaluations = [r for r in records if r["split"] != "train"]
    panels = [(label, names) for label, names in panels if any(n in r for r in evaluations for n in names)]
    if panels:
        figure, axes = plt.subplots(1 + len(panels), 1, figsize=(6, 4 + 2 * len(panels)), sharex=True,
                                    gridspec_kw={"height_ratios": [2] + [1] * len(panels)})
        loss_axis = axes[0]
        first_split = evaluations[0]["split"]
        for axis, (label, names) in zip(axes[1:], panels):
            for name in names:
                points = [(r["step"], r[name]) for r in evaluations if r["split"] == first_split and name in r]
                if points:
                    axis.plot(*zip(*points), marker=".", label=name.replace("_", " "))
            axis.set_ylabel(label)
            axis.set_xlabel("optimizer step")
            axis.legend(fontsize="small")
    else:
        figure, loss_axis = plt.subplots(figsize=(6, 4))
    # every series its own colour (the twin axis would restart the colour cycle), the legend below the plot
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    loss_colour = next(colours)
    if train:
        loss_axis.plot(*zip(*train), color=loss_colour, label="training loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("training loss", color=loss_colour)
    metric_axis = loss_axis.twinx()
    for split in sorted({r["split"] for r in evaluations}):
        points = [(r["step"], r[metric]) for r in evaluations if r["split"] == split and metric in r]
        if points:
            metric_axis.plot(*zip(*points), marker="o", color=next(colours), label=f"{split} {metric}")
    metric_axis.set_ylabel(metric)
    handles, labels = (a + b for a, b in zip(loss_axis.get_legend_handles_labels(),
                                              metric_axis.get_legend_handles_labels()))
    figure.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)) or 1, frameon=False)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    return figure


def plot_learning_curve(records, path, metric, panels=()):
    """The learning curve as a PNG whose Description (PNG text metadata) names what it plots."""
    save_figure_atomic(learning_curve_figure(records, metric, panels), path, dpi=100,
                       metadata={"Description": learning_curve_description(metric)})


def plot_layer_weights(model, path):
    plt = pyplot()
    weights, scale = model.layer_mix_weights()
    names = ["emb" if index == 0 else f"L{index}" for index in model.config.mix_layer_indices]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.bar(names, weights.numpy())
    axis.axhline(1 / len(names), color="gray", linestyle="--", linewidth=1, label="uniform")
    axis.set_ylabel("softmax weight")
    axis.set_title(f"BERMo learned layer mix (scale {scale.item():.3f})")
    axis.legend()
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=100)
