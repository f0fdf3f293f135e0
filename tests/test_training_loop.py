"""The training loop's outputs for experiments and its input hygiene: per-example predictions, metrics-only runs,
extra data columns, the task's own metric in the plot, refused pushes."""

import json

import pytest

from bermo.plots import learning_curve_description, learning_curve_figure
from bermo.training import main

from test_finetune import assert_fails, common, sst2_files, write_rows  # noqa: F401  (fixtures)


def test_eval_predictions_and_metrics_only_run(tiny_bert, sst2_files, tmp_path):
    out = tmp_path / "out"
    code = main(common(tiny_bert, out, "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"),
                       "--max_train_steps", "4", "--eval_steps", "2", "--save_eval_predictions", "--no-save_model"))
    assert code == 0
    lines = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert [(line["step"], line["split"]) for line in lines] == [(2, "validation"), (4, "validation")]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        assert len(line["predictions"]) == len(line["references"]) == 32
        accuracy = sum(p == r for p, r in zip(line["predictions"], line["references"])) / 32
        logged = next(m for m in metrics if m["step"] == line["step"] and m["split"] == "validation")
        assert accuracy == pytest.approx(logged["accuracy"])
    assert not (out / "model.safetensors").exists() and not (out / "README.md").exists()
    mix = json.loads((out / "layer_mix.json").read_text())
    assert mix["layers"] == [0, 1, 2, 3] and sum(mix["weights"]) == pytest.approx(1.0) and mix["scale"] > 0
    assert "validation" in json.loads((out / "final_metrics.json").read_text())


def test_extra_columns_never_reach_the_model(tiny_bert, sst2_files, tmp_path):
    rows = (sst2_files / "glue" / "SST-2" / "dev.tsv").read_text().splitlines()[1:9]
    test_file = write_rows(tmp_path / "test.tsv", [(i, row.rsplit("\t", 1)[0]) for i, row in enumerate(rows)],
                           ("index", "sentence"))
    out = tmp_path / "out"
    code = main(common(tiny_bert, out, "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"),
                       "--test_file", str(test_file), "--max_train_steps", "2", "--no-save_model"))
    assert code == 0
    predictions = (out / "predictions.tsv").read_text().splitlines()
    assert predictions[0] == "index\tprediction" and len(predictions) == 9


def test_learning_curve_plots_the_task_metric(tiny_bert, sst2_files, tmp_path):
    from PIL import Image

    cola = tmp_path / "glue" / "CoLA"
    cola.mkdir(parents=True)
    for name, source in (("train.tsv", "train.tsv"), ("dev.tsv", "dev.tsv")):
        rows = (sst2_files / "glue" / "SST-2" / source).read_text().splitlines()[1:]
        (cola / name).write_text("".join(f"src\t{r.rsplit(chr(9), 1)[1]}\t\t{r.rsplit(chr(9), 1)[0]}\n"
                                         for r in rows))
    code = main(common(tiny_bert, tmp_path / "out", "--task_name", "cola", "--glue_dir", str(tmp_path / "glue"),
                       "--max_train_steps", "2", "--no-save_model"))
    assert code == 0
    with Image.open(tmp_path / "out" / "learning_curve.png") as image:
        assert image.info["Description"] == learning_curve_description("matthews_correlation")


def test_pushing_a_bert_baseline_is_refused_before_training(tiny_bert, sst2_files, tmp_path):
    assert_fails(common(tiny_bert, tmp_path / "out", "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"),
                        "--model_type", "bert", "--push_to_hub", "--hub_model_id", "me/x"),
                 "--model_type bert runs are baselines")
    assert not (tmp_path / "out").exists()


def test_pruning_flags_without_a_method_are_refused(tiny_bert, sst2_files, tmp_path):
    assert_fails(common(tiny_bert, tmp_path / "out", "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"),
                        "--final_threshold", "0.15"), "--pruning_method")
    assert not (tmp_path / "out").exists()


def test_learning_curve_series_have_their_own_colours_and_the_legend_is_off_the_axes():
    records = [{"step": s, "split": "train", "loss": 1 / s} for s in (1, 2, 3)]
    records += [{"step": s, "split": "validation", "accuracy": 0.5 + s / 10} for s in (1, 2, 3)]
    figure = learning_curve_figure(records, "accuracy")
    lines = [line for axis in figure.axes for line in axis.get_lines()]
    assert len(lines) == 2 and lines[0].get_color() != lines[1].get_color()
    legend = figure.legends[0]
    figure.canvas.draw()
    legend_box = legend.get_window_extent()
    for axis in figure.axes:
        assert not legend_box.overlaps(axis.get_window_extent())


def test_last_biased_mix_init_starts_the_converted_model_there_and_the_card_records_it(tiny_bert, sst2_files,
                                                                                      tmp_path):
    out = tmp_path / "out"
    code = main(common(tiny_bert, out, "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"),
                       "--max_train_steps", "1", "--mix_init", "last:0.8", "--mix_learning_rate", "0"))
    assert code == 0
    mix = json.loads((out / "layer_mix.json").read_text())  # a zero learning rate: the mix as it started
    assert mix["weights"][-1] == pytest.approx(0.8, abs=1e-6)
    assert mix["weights"][:-1] == pytest.approx([0.2 / 3] * 3, abs=1e-6)
    assert json.loads((out / "config.json").read_text())["mix_init"] == "last:0.8"
    assert "| mix_init | last:0.8 |" in (out / "README.md").read_text()
    assert_fails(common(tiny_bert, tmp_path / "bad", "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"),
                        "--mix_init", "last:1.5"), "--mix_init 'last:1.5': the last representation's weight P")
    assert not (tmp_path / "bad").exists()


def test_mix_dropout_reaches_the_model_and_bad_values_are_refused(tiny_bert, sst2_files, tmp_path):
    out = tmp_path / "out"
    code = main(common(tiny_bert, out, "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"),
                       "--max_train_steps", "2", "--mix_dropout", "0.1"))
    assert code == 0
    assert json.loads((out / "config.json").read_text())["mix_dropout"] == 0.1
    assert "| mix_dropout | 0.1 |" in (out / "README.md").read_text()
    for extra, message in ((["--mix_dropout", "1"], "--mix_dropout 1.0: a probability in [0, 1)"),
                           (["--mix_dropout", "0.1", "--model_type", "bert"], "--model_type bert has none")):
        assert_fails(common(tiny_bert, tmp_path / "bad", "--task_name", "sst2", "--glue_dir",
                            str(sst2_files / "glue"), *extra), message)
        assert not (tmp_path / "bad").exists()
