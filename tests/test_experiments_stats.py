"""bermo.experiments.stats on hand-made curves and scores with known answers."""

import math

import numpy as np
import pytest

from bermo.experiments import stats
from bermo.metrics import task_metrics


def test_moving_average_is_trailing_over_full_windows_only():
    averages = stats.moving_average([0.3, 0.6, 0.9, 0.0], window=3)
    assert np.isnan(averages[:2]).all() and averages[2:] == pytest.approx([0.6, 0.5])
    assert stats.moving_average([1, 2, 3], window=1) == pytest.approx([1, 2, 3])
    assert np.isnan(stats.moving_average([1, 2], window=3)).all()


def test_a_single_first_evaluation_cannot_reach_the_target():
    # RTE BERT seed 2 in the first runs: a noisy first point made "steps to target" 20 for every q
    steps = [20, 40, 60, 80, 100]
    assert stats.steps_to_target(steps, [0.60, 0.50, 0.50, 0.50, 0.50], 0.55) == math.inf
    # the first full window (20, 40, 60) averages 0.5533: reached at step 60, the window's last evaluation
    assert stats.steps_to_target(steps, [0.60, 0.50, 0.56, 0.50, 0.50], 0.55) == 60.0
    # fewer evaluations than the window: never
    assert stats.steps_to_target([20, 40], [0.9, 0.9], 0.5) == math.inf


def test_steps_to_target_interpolates_between_evaluations():
    steps = [100, 200, 300, 400]
    values = [0.2, 0.5, 0.8, 0.8]  # 3-point trailing average over full windows: -, -, 0.5, 0.7
    # 0.6 is crossed between step 300 (0.5) and 400 (0.7): halfway
    assert stats.steps_to_target(steps, values, 0.6) == pytest.approx(350.0)
    # exactly reached at an evaluation: that evaluation's step
    assert stats.steps_to_target(steps, values, 0.5) == pytest.approx(300.0)
    # reached by the first full window: its last evaluation (nothing is known before it)
    assert stats.steps_to_target(steps, values, 0.1) == 300.0
    # without smoothing the raw curve crosses 0.6 between 200 (0.5) and 300 (0.8): a third of the way
    assert stats.steps_to_target(steps, values, 0.6, window=1) == pytest.approx(200 + 100 / 3)
    assert stats.steps_to_target(steps, values, 0.1, window=1) == 100.0


def test_steps_to_target_is_infinite_when_never_reached():
    assert stats.steps_to_target([10, 20, 30], [0.5, 0.9, 0.5], 0.8) == math.inf  # average 0.5, 0.7, 0.633
    assert stats.steps_to_target([10, 20, 30], [0.5, 0.9, 0.5], 0.8, window=1) == pytest.approx(17.5)
    assert stats.steps_to_target([], [], 0.5) == math.inf


def test_moving_average_ignores_a_single_lucky_evaluation():
    steps, values = [1, 2, 3, 4], [0.5, 0.95, 0.5, 0.5]  # averages 0.5, 0.725, 0.65, 0.65
    assert stats.steps_to_target(steps, values, 0.9, window=1) == pytest.approx(1 + 0.4 / 0.45)
    assert stats.steps_to_target(steps, values, 0.9) == math.inf


def test_curve_auc_is_the_mean_value_over_the_step_range():
    assert stats.curve_auc([0, 10, 20], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert stats.curve_auc([5], [0.4]) == pytest.approx(0.4)
    assert math.isnan(stats.curve_auc([], []))


def test_speedup_with_infinities():
    assert stats.speedup([300, 200, 400], [100, 100, 200]) == pytest.approx(3.0)
    assert stats.speedup([math.inf, math.inf, 10], [10, 20, 30]) == math.inf
    assert stats.speedup([10, 20, 30], [math.inf, math.inf, 5]) == 0.0
    assert math.isnan(stats.speedup([math.inf], [math.inf]))


@pytest.mark.parametrize("metric,num_labels", [("accuracy", 3), ("f1", 2), ("matthews_correlation", 2),
                                               ("matthews_correlation", 3), ("pearson", 1)])
def test_weighted_metric_equals_the_loops_metric_and_repeats_examples_by_weight(metric, num_labels):
    rng = np.random.default_rng(0)
    n = 40
    if num_labels == 1:
        references = rng.normal(size=n)
        predictions = references + rng.normal(scale=0.7, size=(3, n))
        loop_metric = lambda p, r: task_metrics(p, r, "pearson", 1)["pearson"]  # noqa: E731
    else:
        references = rng.integers(0, num_labels, size=n)
        predictions = np.where(rng.random((3, n)) < 0.7, references, rng.integers(0, num_labels, size=(3, n)))
        loop_metric = lambda p, r: task_metrics(p, r, metric, num_labels)[metric]  # noqa: E731
    plain = stats.metric_value(predictions, references, metric)
    assert plain == pytest.approx([loop_metric(p, references) for p in predictions])
    counts = rng.integers(0, 4, size=n)
    weighted = stats.weighted_metric(predictions, references, counts[None, :], metric)[0]
    repeated = [loop_metric(np.repeat(p, counts), np.repeat(references, counts)) for p in predictions]
    assert weighted == pytest.approx(repeated)


def test_paired_difference_known_answers():
    a, b = np.zeros((3, 50)), np.ones((3, 50))
    result = stats.paired_difference(a, b, n_resamples=500)
    assert result["difference"] == 1.0 and result["ci"] == [1.0, 1.0] and result["p_greater"] == 1.0
    # seed 0: BERMo +0.2 on every example, seed 1: -0.2. Resampling 2 seeds gives -0.2, 0, 0, +0.2 equally often.
    a = np.full((2, 100), 0.5)
    b = np.stack([np.full(100, 0.7), np.full(100, 0.3)])
    result = stats.paired_difference(a, b, n_resamples=4000, seed=1)
    assert result["difference"] == pytest.approx(0.0)
    assert result["ci"] == pytest.approx([-0.2, 0.2])
    assert result["p_greater"] == pytest.approx(0.25, abs=0.03)
    with pytest.raises(ValueError, match="2 seeds"):
        stats.paired_difference(a[:1], b[:1])


def test_example_resampling_widens_the_interval_with_fewer_examples():
    rng = np.random.default_rng(0)
    def interval_width(n):
        a = (rng.random((3, n)) < 0.6).astype(float)
        b = (rng.random((3, n)) < 0.6).astype(float)
        low, high = stats.paired_difference(a, b, n_resamples=1000)["ci"]
        return high - low
    assert interval_width(40) > 2 * interval_width(4000)


def _curve(accuracies, n=10):
    """Predictions whose accuracy against all-ones references is exactly each value (k ones of n)."""
    return np.array([[1] * round(a * n) + [0] * (n - round(a * n)) for a in accuracies])


def test_convergence_statistics_on_hand_made_curves():
    steps = [10, 20, 30, 40, 50]
    bert = {"steps": steps, "predictions": _curve([0.2, 0.2, 0.2, 0.6, 0.8])}  # averages -, -, 0.2, 0.333, 0.533
    bermo = {"steps": steps, "predictions": _curve([0.4, 0.4, 0.4, 0.8, 0.8])}  # averages -, -, 0.4, 0.533, 0.667
    curves = {"bert": [bert, bert], "bermo": [bermo, bermo]}
    result = stats.convergence_statistics(curves, np.ones(10), "accuracy", [0.45, 0.6, 1.0], n_resamples=200)
    first, second, full = (result["targets"][q] for q in (0.45, 0.6, 1.0))
    assert first["target"] == pytest.approx(0.36)  # 0.45 x BERT's best (0.8)
    # 0.36: BERT between step 40 (0.333) and 50 (0.533) -> 41.33; BERMo at its first full window (0.4) -> 30
    assert first["median_steps"] == pytest.approx({"bert": 40 + 10 * (0.36 - 1 / 3) / 0.2, "bermo": 30.0})
    assert first["speedup"] == pytest.approx((40 + 10 * (0.36 - 1 / 3) / 0.2) / 30)
    # 0.48: BERT between 40 (0.333) and 50 (0.533) -> 47.33; BERMo between 30 (0.4) and 40 (0.533) -> 36
    assert second["median_steps"] == pytest.approx({"bert": 40 + 10 * (0.48 - 1 / 3) / 0.2, "bermo": 36.0})
    assert full["median_steps"] == {"bert": math.inf, "bermo": math.inf} and math.isnan(full["speedup"])
    low, high = first["speedup_ci"]
    assert low <= first["speedup"] <= high
    assert first["defined_replicates"] == first["n_replicates"] == 200
    assert result["models"]["bert"]["best"]["mean"] == pytest.approx(0.8)
    assert result["best_difference"]["difference"] == pytest.approx(0.0)
    assert result["final_difference"]["difference"] == pytest.approx(0.0)
    auc_bert = stats.curve_auc(steps, [0.2, 0.2, 0.2, 0.6, 0.8])
    auc_bermo = stats.curve_auc(steps, [0.4, 0.4, 0.4, 0.8, 0.8])
    assert result["auc_difference"]["difference"] == pytest.approx(auc_bermo - auc_bert)


def test_replicates_where_neither_model_reaches_the_target_count_as_not_faster():
    # 982 of 1,000 replicates undefined (inf/inf), 18 with S = 2: P(S > 1) is 18 of 1,000, not 18 of 18
    summary = stats.speedup_replicate_summary([math.nan] * 982 + [2.0] * 18)
    assert summary["p_speedup_gt_1"] == pytest.approx(0.018)
    assert summary["defined_replicates"] == 18 and summary["n_replicates"] == 1000
    assert all(math.isnan(v) for v in summary["speedup_ci"])  # below the floor: n/a
    summary = stats.speedup_replicate_summary([math.nan] * 400 + [0.5] * 300 + [2.0] * 300)
    assert summary["p_speedup_gt_1"] == pytest.approx(0.3)
    assert summary["speedup_ci"] == [0.5, 2.0]  # 600 of 1,000 defined: at the floor or above, over those


def test_convergence_p_speedup_counts_undefined_replicates():
    # accuracy 0 or 1 on every example: example resampling leaves the curves unchanged; the target (q = 1) is 1.
    # Seed 0: BERT gets three 1s in a row at step 60, BERMo at 30 (S = 2); seeds 1 and 2 never do (inf/inf). A
    # resample's medians are finite only when seed 0 is drawn twice or more (7/27 of the resamples).
    steps = [10, 20, 30, 40, 50, 60]
    never = {"steps": steps, "predictions": _curve([0, 1, 0, 1, 0, 1])}
    bert = [{"steps": steps, "predictions": _curve([0, 0, 0, 1, 1, 1])}, never, never]
    bermo = [{"steps": steps, "predictions": _curve([1, 1, 1, 0, 0, 0])}, never, never]
    result = stats.convergence_statistics({"bert": bert, "bermo": bermo}, np.ones(10), "accuracy", [1.0],
                                          n_resamples=2000)
    entry = result["targets"][1.0]
    assert math.isnan(entry["speedup"])
    assert entry["defined_replicates"] / entry["n_replicates"] == pytest.approx(7 / 27, abs=0.03)
    assert entry["p_speedup_gt_1"] == pytest.approx(7 / 27, abs=0.03)  # was 1.00: the defined replicates only
    assert all(math.isnan(v) for v in entry["speedup_ci"])


def test_identical_models_have_speedup_one_with_no_spread():
    rng = np.random.default_rng(3)
    references = rng.integers(0, 2, size=30)
    runs = [{"steps": [5, 10, 15, 20], "predictions": np.where(rng.random((4, 30)) < p, references, 1 - references)}
            for p in (0.6, 0.7, 0.8)]
    result = stats.convergence_statistics({"bert": runs, "bermo": runs}, references, "accuracy", [0.9],
                                          n_resamples=300)
    entry = result["targets"][0.9]
    assert entry["speedup"] == 1.0
    assert entry["speedup_ci"] == [1.0, 1.0]
    assert entry["p_speedup_gt_1"] == 0.0


def test_a_failed_run_never_reaches_a_target_and_has_no_final_metric():
    steps = [10, 20, 30, 40]
    good = {"steps": steps, "predictions": _curve([0.5, 0.5, 0.5, 0.9])}
    partial = {"steps": [10, 20], "predictions": _curve([0.5, 0.9])}  # fewer evaluations than the window
    result = stats.convergence_statistics({"bert": [good, good], "bermo": [None, partial]}, np.ones(10), "accuracy",
                                          [0.7], confidence=0)
    entry = result["targets"][0.7]
    assert entry["steps"]["bert"] == pytest.approx([39.75, 39.75])  # averages 0.5, 0.633 cross 0.63 (0.7 x 0.9)
    assert entry["steps"]["bermo"] == [math.inf, math.inf]
    assert entry["speedup"] == 0.0
    assert result["models"]["bermo"]["final"]["n"] == 1
    assert result["confidence"] is None and "speedup_ci" not in entry


def test_scipy_based_intervals():
    assert stats.clopper_pearson(0, 2) == pytest.approx([0.0, 1 - 0.025 ** 0.5])
    assert stats.clopper_pearson(5, 10) == pytest.approx([0.187086, 0.812914], abs=1e-6)
    assert stats.fisher_exact(3, 3, 0, 3)["p_value"] == pytest.approx(0.1)
    ratio = stats.paired_ratio_ci([2.0, 2.2, 1.8, 2.0], [1.0, 1.1, 0.9, 1.0])
    assert ratio["ratio"] == pytest.approx(2.0) and ratio["ci"] == pytest.approx([2.0, 2.0])
    assert stats.describe([1.0, 3.0, math.inf]) == {"mean": 2.0, "sd": pytest.approx(2 ** 0.5), "n": 2}
