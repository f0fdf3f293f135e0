"""Pruning through the one training loop (finetune.py): remaining fraction on target, the exported checkpoint gives
the masked model's predictions, kill and resume, identical masks on 2 processes, bad input (issue 9)."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertForSequenceClassification

from bermo import BermoForSequenceClassification
from bermo.training import main

from conftest import REPO_ROOT
from test_finetune import KILL_AFTER_STEP_4, assert_fails, common, run_finetune, sst2_files  # noqa: F401

SAMPLE = REPO_ROOT / "data" / "sst2_sample"


def pruning(method="movement", *extra):
    return ["--pruning_method", method, "--initial_threshold", "1", "--final_threshold", "0.3",
            "--initial_warmup", "0.1", "--final_warmup", "0.3", "--mask_scores_learning_rate", "1e-2", *extra]


def read_dev(path, count):
    rows = [line.rsplit("\t", 1) for line in path.read_text().splitlines()[1:count + 1]]
    return [sentence.strip() for sentence, _ in rows]


@pytest.mark.parametrize("model_type", ["bermo", "bert"])
def test_pruning_run_on_the_shipped_sample_hits_its_target_and_exports_a_plain_checkpoint(
        tiny_bert, sst2_files, tmp_path, model_type):
    out = tmp_path / "out"
    code = main(common(tiny_bert, out, "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"),
                       "--max_train_steps", "16", "--eval_steps", "4", "--model_type", model_type,
                       "--save_eval_predictions", *pruning()))
    assert code == 0
    final = json.loads((out / "final_metrics.json").read_text())
    saved = load_file(out / "model.safetensors")
    assert not any("mask_scores" in name for name in saved)
    matrix_remaining = 1 - final["exported_zero_weights"] / final["exported_encoder_matrix_weights"]
    assert abs(matrix_remaining - 0.3) <= 0.01, final
    assert final["pruning_method"] == "movement" and 0.3 <= final["exported_remaining_encoder_fraction"] < 1
    # each evaluation logs the remaining fractions at the threshold of that step (not the final one)
    evaluations = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                   if '"validation"' in line]
    thresholds = [record["threshold"] for record in evaluations]
    assert thresholds == sorted(thresholds, reverse=True) and thresholds[0] > 0.3 and thresholds[-1] == 0.3
    assert evaluations[0]["remaining_encoder_fraction"] > evaluations[-1]["remaining_encoder_fraction"]
    # the exported checkpoint predicts as the masked model did at the end of training
    head = BermoForSequenceClassification if model_type == "bermo" else BertForSequenceClassification
    reloaded = head.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    sentences = read_dev(sst2_files / "glue" / "SST-2" / "dev.tsv", 32)
    with torch.no_grad():
        logits = reloaded(**tokenizer(sentences, padding=True, truncation=True, max_length=32,
                                      return_tensors="pt")).logits
    last = json.loads((out / "eval_predictions.jsonl").read_text().splitlines()[-1])
    assert logits.argmax(-1).tolist() == last["predictions"]
    assert (out / "learning_curve.png").stat().st_size > 0
    if model_type == "bermo":
        card = (out / "README.md").read_text()
        assert "pruning_method" in card and "exported_remaining_encoder_fraction" in card


def test_killed_pruning_run_resumes_to_the_same_weights(tiny_bert, sst2_files, tmp_path):
    args = ["--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"), "--num_train_epochs", "2",
            "--checkpointing_steps", "2", "--eval_steps", "3", *pruning("soft_movement", "--initial_threshold", "0",
                                                                        "--final_threshold", "0.1",
                                                                        "--regularization", "l1",
                                                                        "--final_lambda", "1", "--save_masks")]
    assert main(common(tiny_bert, tmp_path / "whole", *args)) == 0
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_STEP_4, *common(tiny_bert, tmp_path / "resumed", *args)],
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert main(common(tiny_bert, tmp_path / "resumed", *args, "--resume_from_checkpoint", "latest")) == 0
    for name in ("model.safetensors", "mask_scores.safetensors"):
        whole, resumed = load_file(tmp_path / "whole" / name), load_file(tmp_path / "resumed" / name)
        assert whole.keys() == resumed.keys()
        for key in whole:
            torch.testing.assert_close(resumed[key], whole[key], atol=1e-6, rtol=0, msg=key)
    evaluations = lambda folder: [line for line in (folder / "metrics.jsonl").read_text().splitlines()
                                  if '"validation"' in line]
    assert evaluations(tmp_path / "resumed") == evaluations(tmp_path / "whole")


def test_resuming_needs_the_same_pruning_flags(tiny_bert, sst2_files, tmp_path):
    args = ["--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"), "--max_train_steps", "4",
            "--checkpointing_steps", "2"]
    assert main(common(tiny_bert, tmp_path / "out", *args, *pruning())) == 0
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert_fails(common(tiny_bert, tmp_path / "out", *args, "--resume_from_checkpoint", "latest"),
                 "the checkpoint is from a pruning run")
    changed = pruning()
    changed[changed.index("--final_threshold") + 1] = "0.5"
    assert_fails(common(tiny_bert, tmp_path / "out", *args, *changed, "--resume_from_checkpoint", "latest"),
                 "--final_threshold was 0.3, now 0.5")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before


@pytest.mark.parametrize("extra, message", [
    (["--pruning_method", "movement", "--final_threshold", "1.5"], "--final_threshold"),
    (["--pruning_method", "movement", "--final_threshold", "0"], "--final_threshold"),
    (["--pruning_method", "soft_movement"], "--regularization"),
    (["--pruning_method", "l0", "--regularization", "l0", "--final_lambda", "-1"], "--final_lambda"),
    (["--pruning_method", "movement", "--initial_warmup", "0.7", "--final_warmup", "0.6"], "warm"),
])
def test_bad_pruning_flags_exit_2_and_write_nothing(tiny_bert, sst2_files, tmp_path, extra, message):
    assert_fails(common(tiny_bert, tmp_path / "out", "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"),
                        "--max_train_steps", "4", *extra), message)
    assert not (tmp_path / "out").exists()


def test_unknown_method_is_refused(tiny_bert, sst2_files, tmp_path):
    result = run_finetune(common(tiny_bert, tmp_path / "out", "--task_name", "sst2", "--glue_dir",
                                 str(sst2_files / "glue"), "--pruning_method", "random"))
    assert result.returncode == 2 and "--pruning_method" in result.stderr and not (tmp_path / "out").exists()


RECORD_MASKS = """
import sys, torch
import torch.distributed as dist
from bermo import training
from bermo.features import TrainingFeature
from bermo.pruning import masked_modules

class RecordMasks(TrainingFeature):
    # the masks of the final evaluation (the ones the export multiplies in), on every process
    def __init__(self, output_dir, total_steps):
        self.output_dir, self.total_steps = output_dir, total_steps
    def on_evaluate(self, step, metrics, model):
        if step == self.total_steps:
            masks = {name: module.current_mask().to(torch.uint8) for name, module in masked_modules(model)}
            torch.save(masks, f"{self.output_dir}/masks_rank{dist.get_rank()}.pt")

run = training.parse_run(sys.argv[1:])
training.train(run, callbacks=[RecordMasks(run.output.output_dir, run.optim.max_train_steps)])
"""


def test_masks_are_identical_on_every_process(tiny_bert, sst2_files, tmp_path):
    script = tmp_path / "record_masks.py"
    script.write_text(RECORD_MASKS)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "29541", str(script)]
    out = tmp_path / "out"
    result = subprocess.run([*launcher, *common(tiny_bert, out, "--task_name", "sst2", "--glue_dir",
                                                 str(sst2_files / "glue"), "--max_train_steps", "6",
                                                 *pruning())], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    zero, one = torch.load(out / "masks_rank0.pt"), torch.load(out / "masks_rank1.pt")
    assert zero.keys() == one.keys() and len(zero) == 6 * 3
    assert all(torch.equal(zero[name], one[name]) for name in zero)
    assert any(not bool(mask.all()) for mask in zero.values())
