"""The demo's pieces: its dev-curve plot of BERT vs BERMo, and its live, logged view of a fine-tuning run."""

import json
import sys

import numpy as np
import pytest

from bermo.demo import main, plot_dev_curves, run

TAB_BLUE, TAB_ORANGE = (31, 119, 180), (255, 127, 14)  # BERT's and BERMo's colours


def write_metrics(path, dev):
    """A metrics.jsonl as the loop writes it: training losses interleaved with dev evaluations."""
    lines = []
    for step, accuracy in dev:
        lines.append({"step": step - 1, "epoch": 0, "split": "train", "loss": 0.5, "learning_rate": 1e-4})
        lines.append({"step": step, "epoch": 0, "split": "validation", "accuracy": accuracy, "f1": 0.1})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def colour_pixels(image, rgb, tolerance=30):
    return int((np.abs(image[..., :3] * 255 - np.array(rgb)).max(axis=-1) < tolerance).sum())


def test_plot_dev_curves_draws_both_runs(tmp_path):
    import matplotlib.image

    files = {"BERT": write_metrics(tmp_path / "bert" / "metrics.jsonl", [(94, 0.80), (188, 0.85), (282, 0.86)]),
             "BERMo": write_metrics(tmp_path / "bermo" / "metrics.jsonl", [(188, 0.70), (94, 0.60), (282, 0.75)])}
    path = tmp_path / "dev_curves.png"
    curves = plot_dev_curves(files, path, title="test")
    assert curves == {"BERT": ([94, 188, 282], [0.80, 0.85, 0.86]), "BERMo": ([94, 188, 282], [0.60, 0.70, 0.75])}
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 300
    # each model's curve is drawn in its own colour: far more pixels than its legend sample alone would give
    assert colour_pixels(image, TAB_BLUE) > 400
    assert colour_pixels(image, TAB_ORANGE) > 400
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"


def test_plot_dev_curves_refuses_missing_metrics(tmp_path):
    files = {"BERT": write_metrics(tmp_path / "bert.jsonl", [(10, 0.8)]), "BERMo": tmp_path / "absent.jsonl"}
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        plot_dev_curves(files, tmp_path / "curves.png")
    with pytest.raises(ValueError, match="no validation matthews_correlation to plot for BERT"):
        plot_dev_curves({"BERT": files["BERT"]}, tmp_path / "curves.png", metric="matthews_correlation")
    assert not (tmp_path / "curves.png").exists()


class Terminal:
    """A terminal stand-in that records what it is shown and, once it shows `release`, releases the child."""

    def __init__(self, flag, release):
        self.flag, self.release, self.shown = flag, release, b""

    def write(self, chunk):
        self.shown += chunk
        if self.release in self.shown:
            self.flag.touch()

    def flush(self):
        pass


# Prints like the loop does (a plain print on stdout, not flushed; a tqdm bar on stderr; an evaluation line through
# the bar), and waits for its first line to be shown: it only finishes (exit 0) if its output streams while it runs.
CHILD = """
import sys, time
from pathlib import Path
from tqdm import tqdm
print("training on 1 process(es)")
for _ in range(200):
    if Path(sys.argv[1]).exists():
        break
    time.sleep(0.05)
else:
    sys.exit(3)
bar = tqdm(total=4, desc="fine-tuning", unit="step", mininterval=0)
bar.update(2)
bar.write("step 2: validation accuracy 0.7500")
bar.update(2)
bar.close()
"""


def test_run_streams_the_output_live_and_keeps_the_log(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # run() must unbuffer the child itself
    flag, log = tmp_path / "seen", tmp_path / "run.log"
    terminal = Terminal(flag, release=b"training on 1 process(es)")
    run([sys.executable, "-c", CHILD, flag], log, terminal=terminal)
    shown = terminal.shown.decode()
    assert "step 2: validation accuracy 0.7500" in shown
    assert "fine-tuning: 100%" in shown and "4/4" in shown  # the bar, on stderr, merged in
    assert "\r" in shown  # the bar redraws in place rather than printing a line per update
    assert log.read_bytes() == terminal.shown


def test_run_failure_names_the_log(tmp_path, capfd):
    log = tmp_path / "run.log"
    with pytest.raises(SystemExit, match=f"failed \\(exit 5\\); the whole output is in {log}"):
        run([sys.executable, "-c", "import sys; print('bad data in row 3'); sys.exit(5)"], log)
    assert "bad data in row 3" in capfd.readouterr().out
    assert log.read_text() == "bad data in row 3\n"


def test_demo_refuses_bad_step_counts(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--max_train_steps", "0"])
    assert exit_info.value.code == 2
    assert "--max_train_steps must be at least 1" in capsys.readouterr().err
