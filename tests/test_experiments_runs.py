"""bermo-experiment end to end on a tiny random BERT and a few dozen rows: runs, resumption, refusals, failures,
the plan launcher (SLURM-style), the local launcher side by side, Ray Tune, and BERT/BERMo pairing by seed."""

import json

import pytest
import torch

from bermo.experiments import runner
from bermo.experiments.cli import main

from conftest import REPO_ROOT, experiment_error

SAMPLE = REPO_ROOT / "data" / "sst2_sample"


def sample_rows(name, count, start=0):
    lines = (SAMPLE / name).read_text().splitlines()[1 + start: 1 + start + count]
    return [(sentence.strip(), label) for sentence, label in (line.rsplit("\t", 1) for line in lines)]


@pytest.fixture(scope="module")
def sst2_files(tmp_path_factory):
    """48 training and 24 dev rows of the shipped SST-2 sample, as TSVs."""
    folder = tmp_path_factory.mktemp("sst2")
    for name, count in (("train.tsv", 48), ("dev.tsv", 24)):
        rows = sample_rows(name, count)
        (folder / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in rows))
    return folder


def convergence_argv(tiny_bert, files, out, *extra):
    return ["convergence", "--model_name_or_path", str(tiny_bert), "--train_file", str(files / "train.tsv"),
            "--validation_file", str(files / "dev.tsv"), "--max_length", "32", "--max_train_steps", "6",
            "--eval_steps", "2", "--seeds", "2", "--learning_rate", "1e-3", "--n_bootstrap", "200",
            "--output_dir", str(out), "--no-progress", *extra]


def result_stamps(out):
    return {path.parent.name: path.stat().st_mtime_ns for path in out.glob("runs/*/result.json")}


def test_convergence_runs_resume_and_refuse_another_configuration(tiny_bert, sst2_files, tmp_path, capsys):
    out = tmp_path / "convergence"
    argv = convergence_argv(tiny_bert, sst2_files, out)
    assert main([*argv, "--jobs", "2"]) == 0
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["config"]["model_type"], r["config"]["seed"]) for r in records) == [
        ("bermo", 0), ("bermo", 1), ("bert", 0), ("bert", 1)]
    assert all(r["status"] == "ok" for r in records) and len({r["run_id"] for r in records}) == 4
    assert all(r["run_id"] == runner.run_id(r["config"]) for r in records)
    assert all(r["config"]["arguments"]["save_eval_predictions"] is True for r in records)
    # each run's settings are typed values: the same RunArguments come back in the run process
    from bermo.arguments import run_from_dict

    run = run_from_dict(records[0]["config"]["arguments"])
    assert (run.model.model_type, run.optim.seed) == (records[0]["config"]["model_type"], records[0]["config"]["seed"])
    assert "--save_eval_predictions" in json.loads((out / "summary.json").read_text())["train_args"]
    assert all(r["result"]["steps"] == 6 and 0 < r["result"]["step_seconds"] < r["wall_s"] / 6 for r in records)

    summary = json.loads((out / "summary.json").read_text())
    for record in records:  # the curves recomputed from per-example predictions are the loop's own metrics
        logged = [json.loads(line) for line in
                  (out / "runs" / record["run_id"] / "train" / "metrics.jsonl").read_text().splitlines()]
        logged = [r for r in logged if r["split"] == "validation"]
        curve = summary["curves"][record["config"]["model_type"]][record["config"]["seed"]]
        assert curve["steps"] == [2, 4, 6]
        assert curve["values"] == pytest.approx([r["accuracy"] for r in logged])
    statistics = summary["statistics"]
    assert set(statistics["targets"]) == {"0.95", "0.98", "1.0"}
    for entry in statistics["targets"].values():
        assert len(entry["speedup_ci"]) == 2 and 0 <= entry["p_speedup_gt_1"] <= 1
        assert entry["target"] == pytest.approx(entry["q"] * statistics["models"]["bert"]["best"]["mean"])
    assert [len(m["weights"]) for m in summary["layer_mixes"]] == [4, 4]  # h_0..h_3 of the 3-layer BERT
    assert all(sum(m["weights"]) == pytest.approx(1.0) for m in summary["layer_mixes"])
    markdown = (out / "summary.md").read_text()
    assert "| 0.95 |" in markdown and "speedup S" in markdown and "| BERMo | 1 | ok |" in markdown
    for name in ("learning_curves.png", "steps_to_target.png", "layer_weights.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    # the same command again: every run is skipped
    stamps, lines = result_stamps(out), (out / "runs.jsonl").read_text()
    assert main(argv) == 0
    assert result_stamps(out) == stamps and (out / "runs.jsonl").read_text() == lines

    # a run lost before it was recorded (killed): only that run runs again
    victim = records[1]["run_id"]
    (out / "runs" / victim / "result.json").unlink()
    (out / "runs.jsonl").write_text("".join(line + "\n" for line in lines.splitlines()
                                            if json.loads(line)["run_id"] != victim))
    assert main([*argv, "--report_only"]) == 0  # the summary of what finished; nothing runs
    assert not (out / "runs" / victim / "result.json").exists()
    assert "3 finished" in (out / "summary.md").read_text()
    assert main(argv) == 0
    now = result_stamps(out)
    assert set(now) == set(stamps) and now[victim] != stamps[victim]
    assert {k: v for k, v in now.items() if k != victim} == {k: v for k, v in stamps.items() if k != victim}
    assert len((out / "runs.jsonl").read_text().splitlines()) == 4

    # another configuration in the same folder: refused, nothing changed
    snapshot = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    capsys.readouterr()
    assert main(convergence_argv(tiny_bert, sst2_files, out, "--learning_rate", "2e-3")) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "holds runs of another configuration (differs in: train_args)" in error
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == snapshot


def test_convergence_records_failed_runs_with_their_reason(tiny_bert, sst2_files, tmp_path):
    out = tmp_path / "diverged"
    argv = convergence_argv(tiny_bert, sst2_files, out, "--seeds", "1", "--confidence", "0", "--learning_rate",
                            "1e30", "--max_train_steps", "4", "--eval_steps", "1")
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert all("non-finite" in r["error"] for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"]["bert"]["failed"] == 1 and summary["failures"]["bermo"]["failed"] == 1
    markdown = (out / "summary.md").read_text()
    assert "Failed runs: BERT 1/1" in markdown and "| failed |" in markdown and "non-finite" in markdown
    # recorded failures are not run again (unless --retry_failed)
    stamps = result_stamps(out)
    assert main(argv) == 0 and result_stamps(out) == stamps


@pytest.mark.parametrize("extra,message", [
    (["--targets", "0"], "--targets 0.0: each target fraction must be in (0, 1.5]"),
    (["--targets", "0.9", "1.6"], "--targets 1.6: each target fraction must be in (0, 1.5]"),
    (["--seeds", "1"], "a 95% confidence interval needs at least 2 seeds (got 1)"),
    (["--seeds", "3", "3"], "a seed is listed twice"),
    (["--eval_steps", "10"], "--eval_steps 10 is more than --max_train_steps 6"),
    (["--metric", "bleu"], "--metric bleu: choose accuracy"),
])
def test_convergence_bad_input_is_one_line_and_writes_nothing(tiny_bert, sst2_files, tmp_path, capsys, extra,
                                                               message):
    out = tmp_path / "out"
    assert message in experiment_error(main, convergence_argv(tiny_bert, sst2_files, out, *extra), capsys)
    assert not out.exists()


def test_convergence_refuses_a_folder_of_something_else(tiny_bert, sst2_files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(convergence_argv(tiny_bert, sst2_files, out)) == 2
    assert "is not empty and holds no experiment" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert main(convergence_argv(tiny_bert, sst2_files, out / "notes.txt")) == 2
    assert "is a file" in capsys.readouterr().err
    missing = ["--train_file", str(tmp_path / "none.tsv")]
    assert main(convergence_argv(tiny_bert, sst2_files, tmp_path / "x", *missing)) == 2
    assert "none.tsv not found" in capsys.readouterr().err


def test_bert_and_bermo_get_the_same_head_for_the_same_seed(tiny_bert, sst2_files):
    """The loop's model loading after its set_seed: the classifier starts equal for one seed, differs across seeds."""
    from accelerate.utils import set_seed

    from bermo.data import load_task_data
    from bermo.training import load_model, parse_run

    heads = {}
    for seed in (1, 2):
        for model_type in ("bert", "bermo"):
            run = parse_run([
                "--model_name_or_path", str(tiny_bert), "--train_file", str(sst2_files / "train.tsv"),
                "--validation_file", str(sst2_files / "dev.tsv"), "--output_dir", "unused", "--model_type",
                model_type, "--seed", str(seed)])
            task_data = load_task_data(run.data)
            set_seed(run.optim.seed)
            model = load_model(run.model, task_data)
            heads[model_type, seed] = (model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone(),
                                       model.bert.pooler.dense.weight.detach().clone())
    for seed in (1, 2):
        assert all(torch.equal(a, b) for a, b in zip(heads["bert", seed], heads["bermo", seed]))
    assert not torch.equal(heads["bert", 1][0], heads["bert", 2][0])


# --------------------------------------------------------------------------------------------------------------------
# Probing through the runner


def probing_files(folder, name, count=(24, 10, 10), built=False):
    """A probing file in SentEval's format from SST-2 sample sentences (labels: their sentiment as O/I)."""
    folder.mkdir(exist_ok=True)
    rows, start = [], 0
    for split, n in zip(("tr", "va", "te"), count):
        rows += [(split, "I" if label == "1" else "O", sentence) for sentence, label in sample_rows("train.tsv", n, start)]
        start += n
    (folder / f"{name}.txt").write_text("".join("\t".join(row) + "\n" for row in rows))
    if built:
        (folder / "build_probing.json").write_text(json.dumps({"tasks": {name: {}}}))
    return folder


def probing_argv(tiny_bert, dirs, out, *extra):
    return ["probing", "--model_name_or_path", str(tiny_bert), "--probing_dir", *map(str, dirs), "--seeds", "2",
            "--probe", "logreg", "--probe_l2", "1e-3", "--probe_max_epochs", "4", "--probe_epoch_size", "2",
            "--finetune_steps", "4", "--finetune_eval_steps", "2", "--max_length", "32", "--n_bootstrap", "200",
            "--output_dir", str(out), "--no-progress", *extra]


def test_probing_frozen_planned_for_another_scheduler_then_finished_locally(tiny_bert, tmp_path):
    senteval = probing_files(tmp_path / "senteval", "bigram_shift")
    built = probing_files(tmp_path / "built", "past_present", built=True)
    out = tmp_path / "probing"
    argv = probing_argv(tiny_bert, [senteval, built], out, "--protocol", "frozen")
    assert main([*argv, "--launcher", "plan"]) == 0
    pending = (out / "pending.txt").read_text().split()
    assert len(pending) == 4 and not (out / "summary.md").exists()
    assert len(list((out / "features").glob("*.npz"))) == 2  # computed once per task
    assert runner.main([pending[0]]) == 0  # what one array task of a SLURM job does
    first = (tmp_path / pending[0] / "result.json").stat().st_mtime_ns
    assert main([*argv, "--jobs", "2"]) == 0
    assert (tmp_path / pending[0] / "result.json").stat().st_mtime_ns == first

    summary = json.loads((out / "summary.json").read_text())
    assert {t: i["source"] for t, i in summary["tasks"].items()} == {"bigram_shift": "SentEval", "past_present": "built"}
    frozen = summary["protocols"]["frozen"]
    for task in ("bigram_shift", "past_present"):
        entry = frozen["tasks"][task]
        assert entry["seeds_ok"] == 2 and len(entry["difference"]["ci"]) == 2
        assert {f"layer_{j}" for j in range(4)} | {"uniform", "bermo", "best_single", "last_scaled"} <= set(
            entry["controls"])
        assert entry["controls"]["layer_3"] == entry["bert"]  # BERT's probe reads the last layer
        assert len(entry["layer_mixes"]) == 2
    assert frozen["semantic_mean"]["tasks"] == ["past_present"]
    markdown = (out / "summary.md").read_text()
    assert "SentEval's file" in markdown and "built (build-probing)" in markdown and "+2.67" in markdown
    assert summary["settings"]["probe"]["learning_rate"] == 1e-3 and summary["settings"]["max_length"] == 32
    assert "- Frozen probe: Adam, learning rate 0.001 (batch_size 64, max_epochs 4" in markdown
    assert (out / "probing_differences_frozen.png").is_file() and (out / "layer_weights_frozen.png").is_file()


def test_probing_finetune_protocol_through_the_training_loop(tiny_bert, tmp_path):
    built = probing_files(tmp_path / "built", "subj_number", built=True)
    out = tmp_path / "probing"
    assert main(probing_argv(tiny_bert, [built], out, "--protocol", "finetune", "--jobs", "2")) == 0
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["config"]["model_type"], r["config"]["seed"]) for r in records) == [
        ("bermo", 0), ("bermo", 1), ("bert", 0), ("bert", 1)]
    assert all(r["status"] == "ok" and r["result"]["test_predictions"] for r in records)
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["protocols"]["finetune"]["tasks"]["subj_number"]
    assert entry["seeds_ok"] == 2 and 0 <= entry["bert"]["mean"] <= 1 and len(entry["difference"]["ci"]) == 2
    assert [len(m["weights"]) for m in entry["layer_mixes"]] == [4, 4]
    markdown = (out / "summary.md").read_text()
    assert "## Finetune protocol" in markdown
    # every setting of the runs, learning rates included (the first summary recorded none)
    options = summary["settings"]["finetune_training_options"]
    assert summary["settings"]["finetune"]["learning_rate"] == options["learning_rate"] == 5e-5
    assert options["mix_learning_rate"] == 0.01 and options["max_train_steps"] == 4
    assert "learning rate 5e-05" in markdown and "mix_learning_rate 0.01" in markdown


def test_ray_launcher_runs_two_trials_side_by_side(tiny_bert, tmp_path):
    pytest.importorskip("ray.tune", reason="the Ray launcher needs Ray Tune: pip install 'bermo[ray]'")
    task = probing_files(tmp_path / "senteval", "bigram_shift", count=(60, 20, 20))
    out = tmp_path / "probing"
    argv = probing_argv(tiny_bert, [task], out, "--protocol", "frozen", "--launcher", "ray", "--jobs", "2",
                        "--cpus_per_run", "1", "--probe", "mlp", "--probe_hidden", "8", "16", "--probe_dropout", "0",
                        "0.1", "--probe_max_epochs", "40")  # a few seconds per run, so that overlap is not luck
    assert main(argv) == 0
    results = [json.loads(p.read_text()) for p in out.glob("runs/*/result.json")]
    assert len(results) == 2 and all(r["status"] == "ok" for r in results)
    assert max(r["started_at"] for r in results) < min(r["finished_at"] for r in results)  # they overlapped
    assert (out / "ray").is_dir() and (out / "summary.md").is_file()


def test_layer_weight_heat_map_keeps_long_row_labels_inside_the_image(tmp_path):
    """The heat map's row labels (cell, seed, scale) are longer than its narrow axes: the saved PNG grows to hold
    them instead of cutting them off at the figure's edge (the first pruning plots lost their left half)."""
    from matplotlib.image import imread

    from bermo.experiments.report import plot_layer_weights

    label = "4000 rows, soft_movement λ=1000, seed 12"
    mixes = [{"label": label, "layers": list(range(7)), "weights": [1 / 7] * 7, "scale": 1.0} for _ in range(3)]
    path = tmp_path / "layer_weights.png"
    plot_layer_weights(mixes, path, "BERMo's layer weights under pruning (softmax; s = scale)")
    height, width = imread(path).shape[:2]
    figure_width = (1.2 + 0.55 * 7) * 90  # the figure's own size at the saved dpi
    assert width > figure_width + 30, (width, figure_width)
    assert not list(tmp_path.glob(".*.tmp.png"))
