"""bermo-experiment pruning: the collapse/divergence rule on hand-made runs, Clopper-Pearson and Fisher on known
counts, interpolation at matched remaining fraction on hand-made curves, balanced nested subsets, and end to end on a
tiny random BERT with a few dozen rows of the shipped SST-2 sample (summary, plots, resumption, divergence counted,
bad input)."""

import json
import math

import numpy as np
import pytest

from bermo.experiments import pruning
from bermo.experiments.cli import main
from bermo.experiments.runner import ExperimentError

from conftest import REPO_ROOT, experiment_error

SAMPLE = REPO_ROOT / "data" / "sst2_sample"
NAN_ERROR = "loss became non-finite (nan or inf) at step 3; stopped. Last good checkpoint: none saved"


# --------------------------------------------------------------------------------------------------------------------
# The collapse / divergence rule


def test_run_outcome_classifies_hand_made_runs():
    references = np.array([0] * 55 + [1] * 45)  # majority-class accuracy 0.55
    perfect = run = pruning.run_outcome("ok", None, references, references)
    assert run["outcome"] == "stable" and run["accuracy"] == 1.0 and run["majority_accuracy"] == 0.55
    assert perfect["largest_class_share"] == 0.55
    one_class = pruning.run_outcome("ok", None, np.zeros(100, int), references)
    assert one_class["outcome"] == "collapsed" and one_class["accuracy"] == 0.55
    assert one_class["largest_class_share"] == 1.0

    def with_accuracy(correct):  # `correct` right answers, predictions of both classes
        predictions = references.copy()
        predictions[:100 - correct] = 1 - predictions[:100 - correct]
        return predictions

    at_margin = pruning.run_outcome("ok", None, with_accuracy(57), references)  # majority + 2 points: collapsed
    above = pruning.run_outcome("ok", None, with_accuracy(58), references)
    below = pruning.run_outcome("ok", None, with_accuracy(30), references)  # worse than the majority class
    assert (at_margin["accuracy"], at_margin["outcome"]) == (0.57, "collapsed")
    assert (above["accuracy"], above["outcome"]) == (0.58, "stable")
    assert below["outcome"] == "collapsed"

    # accurate, but 95% of the predictions in one class: collapsed by the one-class rule
    skewed_references = np.array([1] * 94 + [0] * 6)
    predictions = np.array([1] * 95 + [0] * 5)  # 99% correct, 95% class 1
    skewed = pruning.run_outcome("ok", None, predictions, skewed_references)
    assert skewed["accuracy"] == 0.99 and skewed["largest_class_share"] == 0.95 and skewed["outcome"] == "collapsed"
    assert pruning.run_outcome("ok", None, np.array([1] * 94 + [0] * 6), skewed_references)["outcome"] == "stable"

    # a non-finite loss is a divergence (never dropped); any other failure is listed apart
    diverged = pruning.run_outcome("failed", NAN_ERROR, None, references)
    crashed = pruning.run_outcome("failed", "the run process exited with code -9 (killed by a signal)", None,
                                  references)
    assert diverged["outcome"] == "diverged" and diverged["accuracy"] is None
    assert crashed["outcome"] == "failed"

    outcomes = ["stable", "collapsed", "diverged", "failed", "stable", "diverged"]
    rate = pruning.collapse_rate(outcomes)
    assert (rate["runs"], rate["classified"], rate["events"], rate["diverged"], rate["failed"]) == (6, 5, 3, 2, 1)
    assert rate["rate"] == pytest.approx(3 / 5)


def test_median_and_worst_rank_diverged_runs_lowest():
    assert pruning.median_and_worst([0.8, 0.9, 0.7], diverged=0) == {"median": 0.8, "worst": 0.7}
    assert pruning.median_and_worst([0.8, 0.9], diverged=1) == {"median": 0.8, "worst": None}
    assert pruning.median_and_worst([0.9], diverged=2) == {"median": None, "worst": None}
    assert pruning.median_and_worst([0.6, 0.9, 0.7, 0.8], diverged=0)["median"] == pytest.approx(0.75)
    assert pruning.median_and_worst([], diverged=0) == {"median": None, "worst": None}


def test_clopper_pearson_and_fisher_on_known_counts():
    three_of_ten = pruning.collapse_rate(["collapsed"] * 2 + ["diverged"] + ["stable"] * 7)
    assert three_of_ten["rate"] == 0.3
    assert three_of_ten["ci"] == pytest.approx([0.0667395, 0.6524529], abs=1e-6)  # the textbook exact interval
    none = pruning.collapse_rate(["stable"] * 10)
    assert none["ci"] == pytest.approx([0.0, 0.3084971], abs=1e-6)  # 1 - 0.025 ** (1 / 10)
    assert none["ci"][1] == pytest.approx(1 - 0.025 ** 0.1)
    everything = pruning.collapse_rate(["collapsed"] * 10)
    assert everything["ci"] == pytest.approx([0.025 ** 0.1, 1.0])

    # Fisher, two-sided: 5/5 vs 0/5 is 2 / C(10, 5); 3/10 vs 1/10
    all_or_none = pruning.compare_collapse(pruning.collapse_rate(["collapsed"] * 5),
                                          pruning.collapse_rate(["stable"] * 5))
    assert all_or_none["p_value"] == pytest.approx(2 / math.comb(10, 5))
    some = pruning.compare_collapse(three_of_ten, pruning.collapse_rate(["collapsed"] + ["stable"] * 9))
    assert some["p_value"] == pytest.approx(0.5820433, abs=1e-6) and some["odds_ratio"] == pytest.approx(27 / 7)
    assert pruning.smallest_fisher_p(3, 3) == pytest.approx(0.1)  # 3 seeds: no single cell reaches p < 0.05
    assert math.isnan(pruning.compare_collapse(pruning.collapse_rate([]), none)["p_value"])


# --------------------------------------------------------------------------------------------------------------------
# Matched remaining fraction


def test_interpolation_is_linear_in_log_fraction_and_never_extrapolates():
    fractions, values = [0.8, 0.05, 0.2], [0.9, 0.6, 0.8]  # unsorted on purpose
    at = pruning.interpolate_log(fractions, values, [0.05, 0.1, 0.2, 0.4, 0.8, 0.9, 0.01])
    # 0.1 is halfway between 0.05 and 0.2 in log scale, 0.4 halfway between 0.2 and 0.8
    assert at[:5] == pytest.approx([0.6, 0.7, 0.8, 0.85, 0.9])
    assert np.isnan(at[5]) and np.isnan(at[6])
    # linear in the fraction itself would give 0.6 + 0.2 * (0.05 / 0.15) at 0.1: not what we do
    assert at[1] != pytest.approx(0.6 + 0.2 / 3)
    # two runs at one fraction are averaged; missing values are left out
    assert pruning.interpolate_log([0.1, 0.1, 0.4], [0.5, 0.7, 0.9], [0.1, 0.2]) == pytest.approx([0.6, 0.75])
    assert np.isnan(pruning.interpolate_log([], [], [0.5])).all()


def test_matched_difference_pairs_seeds_and_bootstraps_them():
    bert = [([0.05, 0.2, 0.8], [0.6, 0.8, 0.9]), ([0.04, 0.2, 0.7], [0.5, 0.7, 0.8])]
    bermo = [([0.05, 0.2, 0.8], [0.62, 0.82, 0.92]), ([0.03, 0.3, 0.9], [0.5, 0.8, 0.9])]
    curves = bert + bermo
    assert pruning.common_fraction_range(curves) == (0.05, 0.7)
    targets = pruning.default_match_fractions(curves, count=3)
    assert targets == pytest.approx([0.05, math.sqrt(0.05 * 0.7), 0.7])
    entries = pruning.matched_difference(bert, bermo, [0.1, 0.2], confidence=0.95, n_resamples=500)
    # seed 0: BERMo is BERT + 0.02 everywhere; seed 1 at 0.2: BERT 0.7, BERMo between (0.03, 0.5) and (0.3, 0.8)
    bermo_seed1 = 0.5 + 0.3 * math.log(0.2 / 0.03) / math.log(0.3 / 0.03)
    assert entries[1]["bert"] == pytest.approx([0.8, 0.7]) and entries[1]["bermo"] == pytest.approx([0.82, bermo_seed1])
    assert entries[1]["difference"] == pytest.approx(np.mean([0.02, bermo_seed1 - 0.7]))
    low, high = entries[1]["ci"]
    assert 0.02 - 1e-9 <= low <= high <= bermo_seed1 - 0.7 + 1e-9  # a bootstrap over 2 seeds spans at most them
    assert entries[0]["pairs"] == 2 and entries[0]["fraction"] == 0.1
    # one seed short of a point: only the other is paired; no CI from one pair
    short = pruning.matched_difference([([0.2, 0.8], [0.8, 0.9])] + bert[1:], bermo, [0.1], confidence=0.95)
    assert short[0]["pairs"] == 1 and short[0]["ci"] is None
    no_ci = pruning.matched_difference(bert, bermo, [0.1], confidence=0)
    assert no_ci[0]["ci"] is None and no_ci[0]["pairs"] == 2


def test_balanced_subsets_are_balanced_nested_and_refused_when_a_class_is_short():
    labels = np.array([0] * 30 + [1] * 70)
    small, large = pruning.balanced_subset(labels, 20, seed=0), pruning.balanced_subset(labels, 50, seed=0)
    assert np.bincount(labels[small]).tolist() == [10, 10] and np.bincount(labels[large]).tolist() == [25, 25]
    assert set(small) <= set(large) and list(small) == sorted(small)
    assert np.bincount(labels[pruning.balanced_subset(labels, 21)]).tolist() == [11, 10]
    with pytest.raises(ExperimentError, match="class 0 has 30 training rows, a balanced subset needs 40"):
        pruning.balanced_subset(labels, 80)


# --------------------------------------------------------------------------------------------------------------------
# End to end


@pytest.fixture(scope="module")
def sst2_files(tmp_path_factory):
    """48 training and 24 dev rows of the shipped SST-2 sample, as GLUE TSVs (--task_name sst2 --glue_dir)."""
    folder = tmp_path_factory.mktemp("glue")
    (folder / "SST-2").mkdir()
    for name, count in (("train.tsv", 48), ("dev.tsv", 24)):
        lines = (SAMPLE / name).read_text().splitlines()
        (folder / "SST-2" / name).write_text("\n".join(lines[:count + 1]) + "\n")
    return folder


def stability_argv(tiny_bert, glue, out, *extra):
    return ["pruning", "--study", "stability", "--model_name_or_path", str(tiny_bert), "--task_name", "sst2",
            "--glue_dir", str(glue), "--train_rows", "16", "--methods", "magnitude", "--fractions", "0.5",
            "--seeds", "2", "--max_train_steps", "3", "--max_length", "32", "--learning_rate", "1e-3",
            "--n_bootstrap", "200", "--output_dir", str(out), "--no-progress", "--jobs", "2", *extra]


def result_stamps(out):
    return {path.parent.name: path.stat().st_mtime_ns for path in out.glob("runs/*/result.json")}


def test_stability_end_to_end_reports_and_resumes(tiny_bert, sst2_files, tmp_path):
    out = tmp_path / "stability"
    argv = stability_argv(tiny_bert, sst2_files, out)
    assert main(argv) == 0
    # the training subset: class-balanced, written once, passed to every run
    rows = [json.loads(line) for line in (out / "data" / "train_16.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and sorted(r["label"] for r in rows) == [0] * 8 + [1] * 8
    assert len((out / "data" / "dev.jsonl").read_text().splitlines()) == 24
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(records) == 4 and {(r["config"]["model_type"], r["config"]["seed"]) for r in records} == {
        (m, s) for m in ("bert", "bermo") for s in (0, 1)}
    settings = records[0]["config"]["arguments"]
    assert settings["train_file"] == str((out / "data" / "train_16.jsonl").resolve())
    assert settings["final_threshold"] == 0.5 and settings["pruning_method"] == "magnitude"
    assert settings["task_name"] is None and settings["save_eval_predictions"] is True

    summary = json.loads((out / "summary.json").read_text())
    cell = summary["stability"]["cells"][0]
    assert cell["cell"] == "16 rows, magnitude v=0.5"
    for model in ("bert", "bermo"):
        entry = cell["models"][model]
        assert entry["runs"] == 2 and entry["stable"] + entry["collapsed"] == 2 and entry["diverged"] == 0
        assert entry["rate"] == entry["collapsed"] / 2
        assert 0.45 < entry["remaining_encoder_fraction"]["mean"] < 0.6  # v = 0.5 of each matrix, + biases/LayerNorm
    for run in summary["runs"]:  # each outcome follows from the run's own final predictions
        majority = summary["data"]["majority_accuracy"]
        collapsed = run["accuracy"] <= majority + 0.02 + 1e-12 or run["largest_class_share"] >= 0.95
        assert run["outcome"] == ("collapsed" if collapsed else "stable")
        assert run["exported_remaining_encoder_fraction"] == pytest.approx(run["remaining_encoder_fraction"], abs=0.01)
    assert len(summary["layer_mixes"]) == 2 and all(len(m["weights"]) == 4 for m in summary["layer_mixes"])
    markdown = (out / "summary.md").read_text()
    assert "| 16 rows, magnitude v=0.5 |" in markdown and "Fisher p" in markdown
    collapse_section = markdown.split("## Collapse and divergence per cell")[1].split("\n## ")[0]
    row = next(line for line in collapse_section.splitlines() if line.startswith("| 16 rows, magnitude v=0.5 |"))
    assert f"| {cell['models']['bert']['events']} (0) / 2, " in row
    assert f" | {cell['models']['bermo']['events']} (0) / 2, " in row
    assert "`--pruning_method magnitude --initial_threshold 1 --final_threshold 0.5`" in markdown
    assert "bermo-experiment pruning --task_name sst2" in markdown and "smallest two-sided Fisher p" in markdown
    for name in ("accuracy_vs_remaining.png", "collapse_rates.png", "layer_weights.png"):
        assert (out / name).stat().st_size > 1000 and f"]({name})" in markdown

    # the same command again: nothing re-run, the same report
    stamps = result_stamps(out)
    assert main(argv) == 0
    assert result_stamps(out) == stamps and len((out / "runs.jsonl").read_text().splitlines()) == 4
    assert json.loads((out / "summary.json").read_text())["stability"] == summary["stability"]


def test_diverged_runs_are_counted_as_collapses(tiny_bert, sst2_files, tmp_path):
    out = tmp_path / "diverged"
    argv = stability_argv(tiny_bert, sst2_files, out, "--learning_rate", "1e30", "--seeds", "1", "--confidence", "0")
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["outcome"] for r in summary["runs"]] == ["diverged"] * 2
    assert all("non-finite" in r["error"] for r in summary["runs"])
    entry = summary["stability"]["cells"][0]["models"]["bert"]
    assert (entry["events"], entry["diverged"], entry["classified"], entry["rate"]) == (1, 1, 1, 1.0)
    assert entry["median"] is None and entry["worst"] is None
    # 1/1 collapsed by divergence: Clopper-Pearson [0.025, 1]; accuracies shown as diverged
    row = ("| 16 rows, magnitude v=0.5 | n/a | n/a | 1 (1) / 1, 100 [3, 100] | 1 (1) / 1, 100 [3, 100] | 1.000 | "
           "div. / div.")
    assert row in (out / "summary.md").read_text()


@pytest.mark.parametrize("extra,message", [
    (["--methods", "pruney"], "--methods pruney: unknown pruning method"),
    (["--fractions", "0"], "--fractions 0.0: a remaining fraction must be in (0, 1]"),
    (["--fractions", "1.5"], "--fractions 1.5: a remaining fraction must be in (0, 1]"),
    (["--methods", "l0", "--lambdas", "-1"], "--lambdas -1.0: a penalty weight must be finite and >= 0"),
    (["--seeds", "1"], "a 95% confidence interval needs at least 2 seeds (got 1)"),
    (["--study", "speed"], "--study 'speed': choose stability, efficiency or structured"),
    (["--train_rows", "100"], "--train_rows 100: the training data has 48 rows"),
    (["--initial_warmup", "0.6", "--final_warmup", "0.6"], "the warm-ups are longer than training"),
    (["--match_fractions", "0.5"], "--match_fractions applies to --study efficiency"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_bert, sst2_files, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    error = experiment_error(main, stability_argv(tiny_bert, sst2_files, out, *extra), capsys)
    assert message in error and error.startswith("bermo-experiment pruning: error:")
    assert not out.exists()


def test_efficiency_analysis_and_report_on_hand_made_runs(tmp_path):
    """analyze + report of an efficiency study from hand-made run folders with known accuracies and fractions."""
    from bermo.experiments.pruning_report import write_pruning_report
    from bermo.experiments.runner import Experiment, Run

    references = [0] * 10 + [1] * 10

    def predictions(accuracy):
        wrong = round((1 - accuracy) * 20)
        return [1 - r if i < wrong else r for i, r in enumerate(references)]

    cells = [{"train_rows": None, "method": m, "fraction": None, "lambda": lam}
             for m, lam in (("dense", None), ("l0", 1.0), ("l0", 10.0))]
    # (model, seed, lambda) -> (remaining fraction, accuracy); bert seed 1 diverged at lambda 10
    points = {("bert", 0, 1.0): (0.5, 0.9), ("bert", 0, 10.0): (0.1, 0.7), ("bert", 1, 1.0): (0.5, 0.85),
              ("bermo", 0, 1.0): (0.4, 0.9), ("bermo", 0, 10.0): (0.08, 0.75), ("bermo", 1, 1.0): (0.5, 0.9),
              ("bermo", 1, 10.0): (0.1, 0.8), ("bert", 0, None): (1.0, 0.95), ("bert", 1, None): (1.0, 0.9),
              ("bermo", 0, None): (1.0, 0.95), ("bermo", 1, None): (1.0, 0.95)}
    runs, records = [], []
    for cell in cells:
        for seed in (0, 1):
            for model in ("bert", "bermo"):
                run = Run({"kind": "finetune", "cell": cell, "model_type": model, "seed": seed, "train_args": []},
                          label=f"{cell['method']} {cell['lambda']} {model} {seed}")
                runs.append(run)
                folder = tmp_path / "runs" / run.id / "train"
                folder.mkdir(parents=True)
                record = {"run_id": run.id, "label": run.label, "config": run.config, "status": "ok", "error": None}
                if (model, seed, cell["lambda"]) not in points:
                    record.update(status="failed", error=NAN_ERROR, result={"evaluations": []})
                else:
                    fraction, accuracy = points[(model, seed, cell["lambda"])]
                    (folder / "eval_predictions.jsonl").write_text(json.dumps(
                        {"step": 5, "split": "validation", "predictions": predictions(accuracy),
                         "references": references}) + "\n")
                    evaluation = {"step": 5, "split": "validation", "accuracy": accuracy}
                    if cell["method"] != "dense":
                        evaluation["remaining_encoder_fraction"] = fraction
                    record["result"] = {"evaluations": [evaluation], "eval_predictions": "train/eval_predictions.jsonl",
                                        "layer_mix": {"layers": [0, 1, 2, 3], "weights": [0.1, 0.2, 0.3, 0.4],
                                                      "scale": 1.0} if model == "bermo" else None}
                records.append(record)
    config = {"study": "efficiency", "base_args": ["--max_train_steps", "5"], "pruning_options": [], "cells": cells,
              "seeds": [0, 1], "models": ["bert", "bermo"], "data": []}
    experiment = Experiment(tmp_path, "pruning", config, runs)
    data = {"name": "qqp", "train_rows_available": 100, "dev_rows": 20, "eval_split": "validation",
            "text_columns": ["question1", "question2"], "label_names": ["not_duplicate", "duplicate"], "num_labels": 2,
            "dev_label_counts": [10, 10], "majority_accuracy": 0.5, "data_seed": 0, "files": {},
            "data_args": {"None": []}, "cell_args": {pruning.cell_name(c): pruning.cell_flags(c) for c in cells}}
    summary = pruning.analyze(experiment, records, data, confidence=0.95, n_resamples=200, match_fractions=[0.2],
                              command="bermo-experiment pruning --study efficiency")
    efficiency = summary["efficiency"]
    assert efficiency["dense"]["bert"]["accuracy"]["mean"] == pytest.approx(0.925)
    assert efficiency["dense"]["bermo"]["accuracy"]["mean"] == pytest.approx(0.95)
    matched = efficiency["methods"]["l0"]["matched"]["accuracy"][0]
    bert0 = 0.7 + 0.2 * math.log(0.2 / 0.1) / math.log(0.5 / 0.1)
    bermo0 = 0.75 + 0.15 * math.log(0.2 / 0.08) / math.log(0.4 / 0.08)
    bermo1 = 0.8 + 0.1 * math.log(0.2 / 0.1) / math.log(0.5 / 0.1)
    assert matched["bert"][0] == pytest.approx(bert0) and math.isnan(matched["bert"][1])  # seed 1 diverged at λ 10
    assert matched["bermo"] == pytest.approx([bermo0, bermo1])
    assert matched["pairs"] == 1 and matched["difference"] == pytest.approx(bermo0 - bert0) and matched["ci"] is None
    lam10 = [p for p in efficiency["methods"]["l0"]["points"] if p["setting"] == 10.0 and p["model"] == "bert"][0]
    assert (lam10["finished"], lam10["runs"], lam10["diverged"]) == (1, 2, 1)
    assert [r["outcome"] for r in summary["runs"]].count("diverged") == 1
    write_pruning_report(tmp_path, summary)
    markdown = (tmp_path / "summary.md").read_text()
    assert "### l0" in markdown and f"| accuracy | 20.00 | {100 * bert0:.2f} | " in markdown
    assert f"{100 * (bermo0 - bert0):+.2f}" in markdown and "1/2 (1 diverged)" in markdown
    for name in ("accuracy_vs_remaining.png", "matched_difference.png", "layer_weights.png", "collapse_rates.png"):
        assert (tmp_path / name).stat().st_size > 1000, name


# --------------------------------------------------------------------------------------------------------------------
# The structured study


def structured_argv(tiny_bert, glue, out, *extra):
    return ["pruning", "--study", "structured", "--model_name_or_path", str(tiny_bert), "--task_name", "sst2",
            "--glue_dir", str(glue), "--fractions", "0.5", "0.25", "--seeds", "1", "--confidence", "0",
            "--max_train_steps", "3", "--max_length", "32", "--learning_rate", "1e-3", "--speed_batch", "2",
            "--speed_repeats", "1", "--output_dir", str(out), "--no-progress", "--jobs", "2", *extra]


def test_structured_end_to_end_records_sizes_speed_and_refuses_another_configuration(tiny_bert, sst2_files, tmp_path,
                                                                                       capsys):
    out = tmp_path / "structured"
    argv = structured_argv(tiny_bert, sst2_files, out)
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    # per model: 1 dense + 2 fractions x (without, with distillation)
    assert len(records) == 10 and all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    distilled = [r for r in records if r["config"]["cell"]["distill"]]
    assert len(distilled) == 4
    for record in distilled:
        teacher = record["config"]["arguments"]["teacher_name_or_path"]
        dense = next(r for r in records if r["config"]["cell"]["method"] == "dense"
                     and r["config"]["model_type"] == record["config"]["model_type"])
        assert teacher.endswith(f"{dense['run_id']}/train")
    summary = json.loads((out / "summary.json").read_text())
    for model in ("bert", "bermo"):
        cells = {(e["fraction"], e["distill"]): e for e in summary["tables"][model]["cells"]}
        for distill in (False, True):
            half, quarter = cells[0.5, distill], cells[0.25, distill]
            assert half["finished"] == quarter["finished"] == 1
            assert (quarter["exported_remaining_encoder_fraction"]["mean"]
                    < half["exported_remaining_encoder_fraction"]["mean"] < 1)
            assert quarter["exported_parameters"]["mean"] < half["exported_parameters"]["mean"]
            assert half["speedup"]["mean"] > 0
    dense = summary["tables"]["bert"]["cells"][0]
    assert dense["cell"] == "dense" and dense["exported_remaining_encoder_fraction"]["mean"] == 1.0
    assert dense["exported_parameters"]["mean"] > summary["tables"]["bert"]["cells"][1]["exported_parameters"]["mean"]
    pruned = [r for r in summary["runs"] if r["method"] != "dense"]
    assert all(r["speedup"] and (out / "runs" / r["run_id"] / "speed.json").is_file() for r in pruned)
    assert [c["headline"] for c in summary["collapse"]] == [False, False, True, True]
    markdown = (out / "summary.md").read_text()
    assert "≤ 1 points at 2x" in markdown and "≤ 3.5 points at 3.4x" in markdown
    command = summary["command"]
    assert "--study structured" in command and "--lambdas" not in command and "--pruning_granularity" not in command
    assert "## BERMo: accuracy, kept fraction, speed-up" in markdown and "Fisher p" in markdown
    # BERMo against BERT per cell, paired by seed (one seed here: a difference, no interval)
    comparison = {c["cell"]: c for c in summary["comparison"]}
    assert set(comparison) == {"dense", "movement keep 0.5", "movement keep 0.5 + distillation",
                               "movement keep 0.25", "movement keep 0.25 + distillation"}
    for entry in comparison.values():
        assert entry["seeds"] == summary["seeds"] and len(entry["seeds"]) == 1 and entry["ci"] is None
        assert entry["difference"] == pytest.approx(entry["bermo"] - entry["bert"])
    assert "## BERMo against BERT, cell by cell" in markdown
    assert (out / "accuracy_vs_speedup.png").stat().st_size > 1000 and "](accuracy_vs_speedup.png)" in markdown

    # the same command again: nothing re-run; another grid refused in one line, exit 2
    stamps = result_stamps(out)
    assert main(argv) == 0 and result_stamps(out) == stamps
    capsys.readouterr()
    assert main(structured_argv(tiny_bert, sst2_files, out, "--fractions", "0.5")) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "holds runs of another configuration" in error


def test_structured_comparison_pairs_seeds_where_both_models_finished():
    import numpy as np

    from bermo.experiments.structured import compare_models

    correct = {("c", "bert", 0): np.array([1, 0, 1, 0.]), ("c", "bermo", 0): np.array([1, 1, 1, 0.]),
               ("c", "bert", 1): np.array([1, 0, 0, 0.]), ("c", "bermo", 1): np.array([1, 1, 0, 1.]),
               ("c", "bert", 2): np.array([1, 1, 1, 1.])}  # seed 2: BERMo diverged (no predictions)
    result = compare_models(correct, "c", [0, 1, 2], n_resamples=500)
    assert result["seeds"] == [0, 1]
    assert result["bert"] == pytest.approx(3 / 8) and result["bermo"] == pytest.approx(6 / 8)
    assert result["ratio"] == pytest.approx(2.0) and result["difference"] == pytest.approx(3 / 8)
    low, high = result["ci"]
    assert low <= 3 / 8 <= high and low < high
    assert compare_models(correct, "other", [0, 1])["difference"] is None


@pytest.mark.parametrize("extra,message", [
    (["--methods", "l0"], "--methods l0: the structured study takes topk methods"),
    (["--lambdas", "10"], "--lambdas applies to --study stability or efficiency"),
    (["--no-dense_baseline"], "the structured study needs its dense runs"),
    (["--train_rows", "16", "24"], "the structured study takes one training subset"),
    (["--speed_repeats", "0"], "--speed_batch and --speed_repeats must be at least 1"),
    (["--pruning_granularity", "head"], "--pruning_granularity: the structured study sets head,neuron"),
])
def test_structured_bad_input_is_one_line_exit_2(tiny_bert, sst2_files, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    error = experiment_error(main, structured_argv(tiny_bert, sst2_files, out, *extra), capsys)
    assert message in error and error.startswith("bermo-experiment pruning: error:")
    assert not out.exists()
