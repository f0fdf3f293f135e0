"""bermo-experiment mix-init: BERMo variants of the mix against BERT, a dev set carved from the training data, the
stated rule's choice, and bad input."""

import json

import pytest

from bermo.experiments import mix_init
from bermo.experiments.cli import main

from conftest import experiment_error
from test_experiments_runs import sst2_files  # noqa: F401  (fixture)


def mix_argv(tiny_bert, files, out, *extra):
    return ["mix-init", "--model_name_or_path", str(tiny_bert), "--train_file", str(files / "train.tsv"),
            "--validation_file", str(files / "dev.tsv"), "--max_length", "32", "--max_train_steps", "4",
            "--eval_steps", "2", "--seeds", "2", "--learning_rate", "1e-3", "--n_bootstrap", "200",
            "--output_dir", str(out), "--no-progress", *extra]


def test_variants_against_bert_on_a_dev_set_carved_from_training(tiny_bert, sst2_files, tmp_path):
    out = tmp_path / "mix"
    argv = mix_argv(tiny_bert, sst2_files, out, "--variants", "uniform,0.01,0", "last:0.8,0.1,0.1",
                    "--dev_from_train", "12")
    assert main(argv) == 0
    # the dev set: 12 training rows, stratified by label, never the task's own dev rows; the rest trains
    dev = [json.loads(line) for line in (out / "data" / "dev.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (out / "data" / "train.jsonl").read_text().splitlines()]
    assert len(dev) == 12 and len(train) == 36
    negatives = sum(line.endswith("\t0") for line in (sst2_files / "train.tsv").read_text().splitlines())
    assert abs(sum(r["label"] == 0 for r in dev) - 12 * negatives / 48) < 1
    own_dev = (sst2_files / "dev.tsv").read_text()
    assert not any(row["sentence"] in own_dev for row in dev)
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["status"] == "ok" for r in records)
    settings = {(r["config"]["variant"], r["config"]["seed"]): r["config"]["arguments"] for r in records}
    chosen = settings[("last:0.8, mix lr 0.1, dropout 0.1", 0)]
    assert (chosen["model_type"], chosen["mix_init"], chosen["mix_learning_rate"], chosen["mix_dropout"]) == (
        "bermo", "last:0.8", 0.1, 0.1)
    assert chosen["validation_file"] == str((out / "data" / "dev.jsonl").resolve())
    bert = settings[(None, 1)]  # BERT's runs carry no mix settings of any variant
    assert (bert["model_type"], bert["mix_init"], bert["mix_dropout"]) == ("bert", "uniform", None)

    summary = json.loads((out / "summary.json").read_text())
    finals = {v["variant"]: v["final"]["mean"] for v in summary["variants"]}
    best = max(round(value, 4) for value in finals.values())
    assert summary["chosen"] == next(name for name, value in finals.items() if round(value, 4) == best)
    # the chosen setting as --variants takes it, so that a confirmation can be launched from the summary
    init, rate, dropout = summary["chosen_variant"].split(",")
    assert summary["chosen"] == f"{init}, mix lr {float(rate):g}, dropout {float(dropout):g}"
    for variant in summary["variants"]:
        assert len(variant["final_difference"]["ci"]) == 2 and len(variant["mean_mix"]) == 4
        assert variant["final_difference"]["difference"] == pytest.approx(
            variant["final"]["mean"] - variant["bert_final"]["mean"])
    markdown = (out / "summary.md").read_text()
    assert f"**Chosen by the rule: {summary['chosen']}.**" in markdown and "carved from the training data" in markdown
    assert (out / "layer_weights.png").stat().st_size > 1000
    assert (out / "learning_curves.png").stat().st_size > 1000 and "(learning_curves.png)" in markdown
    assert set(summary["curves"]) == {"bert", *finals} and all(len(c) == len(summary["seeds"]) for c in summary["curves"].values())
    # the same command again runs nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")} == stamps


def test_the_default_grid_is_the_screening_design():
    args = mix_init.add_parser(__import__("argparse").ArgumentParser().add_subparsers()).parse_args(
        ["--model_name_or_path", "x", "--output_dir", "y"])
    variants = mix_init.variants_of(args)
    assert len(variants) == 4 * 3 * 2
    assert mix_init.variant_name(variants[0]) == "uniform, mix lr 0.01, dropout 0"  # the simplest first
    assert {v["mix_init"] for v in variants} == {"uniform", "last:0.5", "last:0.8", "last:0.95"}


@pytest.mark.parametrize("extra, message", [
    (["--variants", "last:1.2,0.1,0"], "the last representation's weight P must be in (0, 1)"),
    (["--variants", "last:0.8,0.1"], "expected MIX_INIT,MIX_LEARNING_RATE,MIX_DROPOUT"),
    (["--variants", "uniform,0.01,1"], "mix dropout 1: a probability in [0, 1)"),
    (["--mix_inits", "uniform", "uniform"], "a variant is listed twice"),
    (["--mix_init", "last:0.9"], "--mix_init: the experiment sets it for each run"),
    (["--dev_from_train", "100"], "--dev_from_train 100: the training data has 48 rows"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_bert, sst2_files, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    error = experiment_error(main, mix_argv(tiny_bert, sst2_files, out, *extra), capsys)
    assert message in error and error.startswith("bermo-experiment mix-init: error:")
    assert not out.exists()


def test_the_learning_curves_give_every_series_its_own_colour(tmp_path, monkeypatch):
    """BERT and each variant are told apart in learning_curves.png (the first variant once took BERT's blue)."""
    from bermo.experiments import report

    drawn = {}
    monkeypatch.setattr(report, "plot_learning_curves",
                        lambda summary, path, series=None, title=None: drawn.update(series=series))
    monkeypatch.setattr(report, "plot_layer_weights", lambda *args, **kwargs: None)
    curve = {"steps": [1, 2], "values": [0.5, 0.6]}
    variants = [{"variant": f"v{i}", "final": {"mean": 0.6}, "final_difference": {"difference": 0.0, "ci": [0, 0]},
                 "best_difference": {"difference": 0.0, "ci": [0, 0]}, "speedup": {"0.95": 1.0}, "bert_final": {"mean": 0.6},
                 "mean_mix": None, "mix_layers": None, "mean_scale": None} for i in range(9)]
    summary = {"data": {"name": "sst2", "dev_rows": 4, "dev_from_train": False, "metric": "accuracy"},
               "seeds": [0], "train_args": [], "rule": "r", "variants": variants, "chosen": "v0",
               "bert_final": {"mean": 0.6}, "curves": {"bert": [curve], **{v["variant"]: [curve] for v in variants}},
               "runs": []}
    mix_init.write_report(tmp_path, summary)
    colours = [color for _, color, _ in drawn["series"]]
    assert len(colours) == 10 and len(set(colours)) == 10 and None not in colours
