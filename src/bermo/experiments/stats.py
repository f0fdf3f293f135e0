"""Statistics of the experiments: pure functions of numbers and arrays, no files, no models.

Learning curves are (steps, values) pairs, one per run; per-example results are arrays with one row per seed and
one column per dev/test example. Confidence intervals come from a two-level bootstrap that resamples seeds
(the same seeds for BERT and BERMo: they are paired by seed, which fixes data order and head initialization) and
dev/test examples (the same examples for every run: paired by example). Resampling examples is done with
multinomial counts, so a metric of a resample is a weighted metric of the original predictions and thousands of
resamples cost a few matrix products. Percentile intervals; scipy.stats does the one-level bootstrap,
Clopper-Pearson and Fisher's exact test.
"""

import math

import numpy as np
from scipy import stats as scipy_stats

INFINITY = float("inf")


# --------------------------------------------------------------------------------------------------------------------
# Learning curves


def moving_average(values, window=3):
    """Trailing moving average over full windows only: point k averages points k-window+1..k; the first window-1
    points have no full window and are nan (no single raw point can make a smoothed value on its own)."""
    values = np.asarray(values, dtype=float)
    if window < 1:
        raise ValueError("window must be at least 1")
    averages = np.full(len(values), math.nan)
    if len(values) >= window:
        sums = np.cumsum(np.insert(values, 0, 0.0))
        averages[window - 1:] = (sums[window:] - sums[:-window]) / window
    return averages


def steps_to_target(steps, values, target, window=3):
    """Optimizer steps at which the curve's full-window `window`-point moving average first reaches `target`.

    The smoothed curve starts at the window's last evaluation (step `steps[window-1]`); linear interpolation
    between the two smoothed points around the crossing (the first smoothed point itself when it is already there:
    nothing is known before it); infinity when the curve never gets there, or has fewer than `window` evaluations.
    """
    steps = np.asarray(steps, dtype=float)
    smoothed = moving_average(values, window)
    defined = ~np.isnan(smoothed)
    steps, smoothed = steps[defined], smoothed[defined]
    reached = np.flatnonzero(smoothed >= target)
    if len(reached) == 0:
        return INFINITY
    k = int(reached[0])
    if k == 0:
        return float(steps[0])
    before, after = smoothed[k - 1], smoothed[k]
    fraction = (target - before) / (after - before)
    return float(steps[k - 1] + fraction * (steps[k] - steps[k - 1]))


def curve_auc(steps, values):
    """Area under a learning curve (trapezoids) divided by its step range: the curve's mean value over training.

    A curve with a single evaluation has that evaluation's value; an empty one has none (nan).
    """
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if len(steps) == 0:
        return math.nan
    if len(steps) == 1 or steps[-1] == steps[0]:
        return float(values[-1])
    return float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))


def ratio(numerator, denominator):
    """numerator / denominator with infinities: inf/finite = inf, finite/inf = 0, inf/inf = nan (undefined)."""
    if math.isinf(numerator) and math.isinf(denominator):
        return math.nan
    if math.isinf(denominator):
        return 0.0
    if denominator == 0:
        return INFINITY if numerator > 0 else math.nan
    return numerator / denominator


def speedup(bert_steps, bermo_steps):
    """S = median steps(BERT) / median steps(BERMo); > 1 means BERMo gets there in fewer steps."""
    return ratio(float(np.median(bert_steps)), float(np.median(bermo_steps)))


# --------------------------------------------------------------------------------------------------------------------
# Metrics of predictions, with example weights (a bootstrap resample of the examples as multinomial counts)


def weighted_metric(predictions, references, weights, metric):
    """A metric of predictions (..., n) against references (n,) for each row of example weights (B, n) -> (B, ...).

    Weight w_i counts example i w_i times (an integer bootstrap count, or 1 for the plain metric). Metrics:
    accuracy, f1 (binary, positive class 1), matthews_correlation (binary or multi-class, from the weighted
    confusion matrix), pearson. The plain metric (weights all 1) equals bermo.metrics' (scikit-learn's).
    """
    predictions = np.asarray(predictions)
    references = np.asarray(references)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    flat = predictions.reshape(-1, predictions.shape[-1])  # (C, n)

    def count(indicator):  # weighted counts of a (C, n) indicator: (B, C)
        return weights @ indicator.T.astype(float)

    if metric == "accuracy":
        result = count(flat == references) / weights.sum(axis=1, keepdims=True)
    elif metric == "f1":
        tp = count((flat == 1) & (references == 1))
        fp = count((flat == 1) & (references != 1))
        fn = count((flat != 1) & (references == 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            result = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    elif metric == "matthews_correlation":
        classes = np.union1d(np.unique(flat), np.unique(references))
        total = weights.sum(axis=1, keepdims=True)
        correct = count(flat == references)
        predicted = np.stack([count(flat == c) for c in classes])  # (K, B, C)
        true = np.stack([weights @ (references == c).astype(float) for c in classes])[:, :, None]  # (K, B, 1)
        covariance = correct * total - (predicted * true).sum(axis=0)
        denominator = np.sqrt((total ** 2 - (predicted ** 2).sum(axis=0)) * (total ** 2 - (true ** 2).sum(axis=0)))
        with np.errstate(invalid="ignore", divide="ignore"):
            result = np.where(denominator > 0, covariance / denominator, 0.0)
    elif metric == "pearson":
        x, y = flat.astype(float), references.astype(float)
        total = weights.sum(axis=1, keepdims=True)
        mean_x, mean_y = weights @ x.T / total, (weights @ y / total[:, 0])[:, None]
        cov = weights @ (x * y).T / total - mean_x * mean_y
        var_x = weights @ (x * x).T / total - mean_x ** 2
        var_y = (weights @ (y * y) / total[:, 0])[:, None] - mean_y ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            result = np.where((var_x > 1e-12) & (var_y > 1e-12), cov / np.sqrt(np.abs(var_x * var_y)), 0.0)
    else:
        raise ValueError(f"no bootstrap for metric {metric!r}; use accuracy, f1, matthews_correlation or pearson")
    return result.reshape(weights.shape[0], *predictions.shape[:-1])


def metric_value(predictions, references, metric):
    """The plain metric (every example once): weighted_metric with unit weights, without the bootstrap axis."""
    return weighted_metric(predictions, references, np.ones(np.shape(references)[-1]), metric)[0]


# --------------------------------------------------------------------------------------------------------------------
# The two-level bootstrap


def resamples(rng, n_seeds, n_examples, n_resamples):
    """Seed indices (B, n_seeds) drawn with replacement, and example counts (B, n_examples) from a multinomial."""
    seeds = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    examples = rng.multinomial(n_examples, np.full(n_examples, 1.0 / n_examples), size=n_resamples)
    return seeds, examples


def percentile_interval(replicates, confidence=0.95):
    """Percentile interval of bootstrap replicates (nan replicates left out; infinities kept, no interpolation)."""
    replicates = np.asarray(replicates, dtype=float)
    replicates = replicates[~np.isnan(replicates)]
    if len(replicates) == 0:
        return [math.nan, math.nan]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(replicates, [alpha, 1 - alpha], method="inverted_cdf")
    return [float(low), float(high)]


def paired_difference(scores_a, scores_b, n_resamples=2000, confidence=0.95, seed=0, group_ids=None):
    """Mean of B - A over seeds and examples, with a two-level bootstrap CI.

    scores_a, scores_b: (n_seeds, n_examples) per-example scores (e.g. 1 for a correct prediction), row s of both
    from the same seed. Returns {"difference", "ci", "p_greater": P*(diff > 0), "replicates"}.
    """
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired scores must have one shape (seeds, examples); got {a.shape} and {b.shape}")
    if a.shape[0] < 2:
        raise ValueError("a confidence interval needs at least 2 seeds")
    rng = np.random.default_rng(seed)
    seed_index, weights = resamples(rng, a.shape[0], a.shape[1], n_resamples)
    per_seed = weights @ (b - a).T / a.shape[1]  # (B, n_seeds): example-resampled difference of each seed
    replicates = np.take_along_axis(per_seed, seed_index, axis=1).mean(axis=1)
    return {"difference": float((b - a).mean()), "ci": percentile_interval(replicates, confidence),
            "p_greater": float(np.mean(replicates > 0)), "replicates": replicates}


def mean_of_differences(results, confidence=0.95):
    """Mean over tasks of paired differences whose replicates were drawn with the same bootstrap seed."""
    differences = [r["difference"] for r in results]
    replicates = np.mean([r["replicates"] for r in results], axis=0)
    return {"difference": float(np.mean(differences)), "ci": percentile_interval(replicates, confidence),
            "p_greater": float(np.mean(replicates > 0)), "replicates": replicates}


# --------------------------------------------------------------------------------------------------------------------
# Convergence: steps to target and speedup


def convergence_statistics(curves, references, metric, targets, n_resamples=1000, confidence=0.95, seed=0,
                           window=3, baseline="bert", candidate="bermo"):
    """Steps-to-target, speedup S(q), AUC, final and best metric, with two-level bootstrap CIs.

    curves: {model: [run or None, ...]}, one entry per seed in the same seed order for every model (paired);
    a run is {"steps": (K,), "predictions": (K, n)} — the dev predictions at each evaluation; None (or K = 0) for
    a run that failed before its first evaluation: it never reaches any target and has no final metric.
    references: (n,) dev labels. targets: fractions q of the median over seeds of the baseline's best metric.
    With confidence = 0 (or one seed) only point estimates are given.
    """
    models = (baseline, candidate)
    n_seeds = len(curves[baseline])
    if any(len(curves[m]) != n_seeds for m in models):
        raise ValueError("every model needs one curve per seed, in the same seed order")
    references = np.asarray(references)
    n = len(references)
    runs = {m: [_as_run(run, n) for run in curves[m]] for m in models}
    point_values = {m: [metric_value(r["predictions"], references, metric) if len(r["steps"]) else np.zeros(0)
                        for r in runs[m]] for m in models}
    point = _curve_statistics(runs, point_values, np.arange(n_seeds), targets, window, models)
    result = {"metric": metric, "window": window, "n_seeds": n_seeds, "n_examples": n, "targets": {},
              "models": {}}
    with_ci = confidence > 0 and n_seeds >= 2
    if with_ci:
        rng = np.random.default_rng(seed)
        seed_index, weights = resamples(rng, n_seeds, n, n_resamples)
        weights = weights.astype(float)  # once, not per run
        replicate_values = {m: [weighted_metric(r["predictions"], references, weights, metric)
                                if len(r["steps"]) else np.zeros((n_resamples, 0)) for r in runs[m]] for m in models}
        replicates = [
            _curve_statistics(runs, {m: [v[b] for v in replicate_values[m]] for m in models}, seed_index[b],
                              targets, window, models)
            for b in range(n_resamples)
        ]
    for q in targets:
        entry = {"q": q, "target": point["targets"][q], "steps": point["steps"][q],
                 "median_steps": point["median_steps"][q], "speedup": point["speedup"][q]}
        if with_ci:
            entry.update(speedup_replicate_summary([r["speedup"][q] for r in replicates], confidence))
            entry["median_steps_ci"] = {m: percentile_interval([r["median_steps"][q][m] for r in replicates],
                                                               confidence) for m in models}
        result["targets"][q] = entry
    for m in models:
        result["models"][m] = {key: point[key][m] for key in ("auc", "final", "best")}
    for key in ("auc", "final", "best"):
        entry = {"difference": point[f"{key}_difference"]}
        if with_ci:
            entry["ci"] = percentile_interval([r[f"{key}_difference"] for r in replicates], confidence)
        result[f"{key}_difference"] = entry
    result["confidence"] = confidence if with_ci else None
    return result


# A replicate in which neither model reaches the target has S = inf/inf, undefined. It counts as *not faster* in
# P(S > 1) (neither model got there: no evidence that BERMo is faster), so P(S > 1) is a share of all replicates.
# The interval of S is taken over the replicates where S is defined, and only when they are at least this share of
# all replicates; below it the interval is n/a. The share is reported beside both.
MIN_DEFINED_SHARE = 0.5


def speedup_replicate_summary(speedups, confidence=0.95, min_defined_share=MIN_DEFINED_SHARE):
    """Interval and P(S > 1) of bootstrap replicates of S, with how many replicates have S defined.

    Returns {"speedup_ci", "p_speedup_gt_1", "defined_replicates", "n_replicates", "min_defined_share"}.

    p_speedup_gt_1: share of *all* replicates with S > 1 (undefined ones, inf/inf, count as not faster).
    speedup_ci: percentile interval over the defined replicates; [nan, nan] (n/a) when they are fewer than
    min_defined_share of all.
    """
    speedups = np.asarray(speedups, dtype=float)
    undefined = np.isnan(speedups)
    n_defined = int((~undefined).sum())
    enough = len(speedups) > 0 and n_defined >= min_defined_share * len(speedups)
    return {"speedup_ci": percentile_interval(speedups[~undefined], confidence) if enough else [math.nan, math.nan],
            "p_speedup_gt_1": float(np.mean(np.where(undefined, False, speedups > 1))) if len(speedups) else math.nan,
            "defined_replicates": n_defined, "n_replicates": int(len(speedups)),
            "min_defined_share": min_defined_share}


def _as_run(run, n):
    if run is None:
        return {"steps": np.zeros(0), "predictions": np.zeros((0, n))}
    steps = np.asarray(run["steps"], dtype=float)
    predictions = np.asarray(run["predictions"]).reshape(len(steps), n)
    return {"steps": steps, "predictions": predictions}


def _curve_statistics(runs, values, seed_index, targets, window, models):
    """Point statistics of one (re)sample: values[m][s] is the metric curve of model m, seed s."""
    baseline, candidate = models
    best = {m: [float(np.max(v)) if len(v) else math.nan for v in values[m]] for m in models}
    final = {m: [float(v[-1]) if len(v) else math.nan for v in values[m]] for m in models}
    auc = {m: [curve_auc(runs[m][s]["steps"], values[m][s]) for s in range(len(values[m]))] for m in models}
    sample_best = np.array(best[baseline])[seed_index]
    reference = float(np.nanmedian(sample_best)) if not np.all(np.isnan(sample_best)) else math.nan
    out = {"targets": {}, "steps": {}, "median_steps": {}, "speedup": {}}
    for q in targets:
        target = q * reference
        steps = {m: [steps_to_target(runs[m][s]["steps"], values[m][s], target, window) for s in seed_index]
                 for m in models}
        medians = {m: float(np.median(steps[m])) for m in models}
        out["targets"][q] = target
        out["steps"][q] = steps
        out["median_steps"][q] = medians
        out["speedup"][q] = ratio(medians[baseline], medians[candidate])
    summaries = {"auc": auc, "final": final, "best": best}
    for key, per_model in summaries.items():
        a, b = np.array(per_model[baseline])[seed_index], np.array(per_model[candidate])[seed_index]
        both = ~np.isnan(a) & ~np.isnan(b)
        out[f"{key}_difference"] = float(np.mean(b[both] - a[both])) if both.any() else math.nan
        out[key] = {m: describe(np.array(per_model[m])[seed_index]) for m in models}
    return out


# --------------------------------------------------------------------------------------------------------------------
# Small summaries; scipy for the one-level bootstrap, binomial and Fisher tests


def describe(values):
    """{"mean", "sd", "n"} of the finite values (sd with ddof=1; nan for fewer than 2)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
            "n": int(len(values))}


def paired_ratio_ci(values_a, values_b, confidence=0.95, n_resamples=2000, seed=0):
    """mean(a) / mean(b) over paired seeds, with scipy.stats.bootstrap's paired percentile interval."""
    a, b = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    estimate = float(a.mean() / b.mean())
    if len(a) < 2 or confidence <= 0:
        return {"ratio": estimate, "ci": None}
    options = dict(paired=True, vectorized=True, confidence_level=confidence, n_resamples=n_resamples,
                   method="percentile")
    statistic = lambda x, y, axis=-1: x.mean(axis=axis) / y.mean(axis=axis)  # noqa: E731
    try:
        result = scipy_stats.bootstrap((a, b), statistic, rng=np.random.default_rng(seed), **options)
    except TypeError:  # scipy < 1.15 names it random_state
        result = scipy_stats.bootstrap((a, b), statistic, random_state=np.random.default_rng(seed), **options)
    interval = result.confidence_interval
    return {"ratio": estimate, "ci": [float(interval.low), float(interval.high)]}


def clopper_pearson(successes, trials, confidence=0.95):
    """Exact binomial CI of a proportion (scipy.stats.binomtest(...).proportion_ci)."""
    if trials == 0:
        return [math.nan, math.nan]
    interval = scipy_stats.binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="exact")
    return [float(interval.low), float(interval.high)]


def fisher_exact(successes_a, trials_a, successes_b, trials_b):
    """Two-sided Fisher exact test of two proportions: {"odds_ratio", "p_value"}."""
    table = [[successes_a, trials_a - successes_a], [successes_b, trials_b - successes_b]]
    result = scipy_stats.fisher_exact(table)
    return {"odds_ratio": float(result.statistic), "p_value": float(result.pvalue)}
