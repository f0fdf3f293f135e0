"""Knowledge distillation, the loop's second feature: the loss, the teacher's checks, end to end, bad input."""

import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from bermo.arguments import DistillationArguments
from bermo.distillation import DistillationFeature, distillation_loss
from bermo.training import main

from conftest import TINY_BERT
from test_finetune import assert_fails, common, sst2_files  # noqa: F401  (fixtures)


def test_distillation_loss_is_t_squared_kl_of_the_softened_distributions():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    p_teacher = torch.softmax(teacher / 2, dim=-1)
    expected = (p_teacher * (p_teacher.log() - torch.log_softmax(student / 2, dim=-1))).sum(-1).mean() * 4
    torch.testing.assert_close(distillation_loss(student, teacher, 2.0), expected)
    assert distillation_loss(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(distillation_loss(student[:, :1], teacher[:, :1], 2.0),
                               ((student[:, :1] - teacher[:, :1]) ** 2).mean())  # regression: MSE


def save_teacher(folder, **config):
    torch.manual_seed(1)
    BertForSequenceClassification(BertConfig(**TINY_BERT, **config)).save_pretrained(folder)
    return folder


def test_training_loss_mixes_the_teacher_in_by_alpha(tmp_path, tiny_inputs):
    teacher = save_teacher(tmp_path / "teacher", num_labels=2)
    torch.manual_seed(2)
    student = BertForSequenceClassification(BertConfig(**TINY_BERT, num_labels=2))
    labels = torch.tensor([0, 1, 1])
    outputs = student(**tiny_inputs, labels=labels)
    with torch.no_grad():
        teacher_logits = BertForSequenceClassification.from_pretrained(teacher)(**tiny_inputs).logits
    for alpha in (0.0, 0.3, 1.0):
        feature = DistillationFeature.from_arguments(DistillationArguments(
            teacher_name_or_path=str(teacher), distillation_alpha=alpha, distillation_temperature=3.0), 10)
        feature.setup(student)
        loss = feature.training_loss(outputs.loss, outputs, {**tiny_inputs, "labels": labels}, student)
        expected = alpha * distillation_loss(outputs.logits, teacher_logits, 3.0) + (1 - alpha) * outputs.loss
        torch.testing.assert_close(loss, expected)
        assert not any(p.requires_grad for p in feature.teacher.parameters()) and not feature.teacher.training


def test_distilled_fine_tune_end_to_end_with_its_settings_in_card_and_checkpoint(tiny_bert, sst2_files, tmp_path,
                                                                                 capsys):
    data = ["--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"), "--max_train_steps", "4"]
    assert main(common(tiny_bert, tmp_path / "teacher", *data, "--model_type", "bert")) == 0
    out = tmp_path / "student"
    distil = ["--teacher_name_or_path", str(tmp_path / "teacher"), "--distillation_alpha", "0.7",
              "--checkpointing_steps", "2"]
    assert main(common(tiny_bert, out, *data, *distil)) == 0
    card = (out / "README.md").read_text()
    assert "| distillation_alpha | 0.7 |" in card and str(tmp_path / "teacher") in card
    saved = json.loads((out / "step_2" / "features.json").read_text())
    assert saved == {"distillation": {"teacher_name_or_path": str(tmp_path / "teacher"),
                                      "distillation_temperature": 2.0, "distillation_alpha": 0.7}}
    capsys.readouterr()
    assert main(common(tiny_bert, out, *data, *distil, "--distillation_temperature", "4",
                       "--resume_from_checkpoint", "latest")) == 2
    assert "saved with distillation settings" in capsys.readouterr().err


def test_bad_distillation_input_exits_2_and_writes_nothing(tiny_bert, sst2_files, tmp_path):
    data = ["--task_name", "sst2", "--glue_dir", str(sst2_files / "glue")]
    three = save_teacher(tmp_path / "three", num_labels=3)
    swapped = save_teacher(tmp_path / "swapped", num_labels=2, id2label={0: "positive", 1: "negative"},
                           label2id={"positive": 0, "negative": 1})
    for extra, message in (
            (["--teacher_name_or_path", str(three)], "the teacher has 3 labels, the student 2"),
            (["--teacher_name_or_path", str(swapped)], "are not the student's"),
            (["--teacher_name_or_path", str(tmp_path / "missing")], f"--teacher_name_or_path {tmp_path / 'missing'}"),
            (["--teacher_name_or_path", str(three), "--distillation_alpha", "1.5"], "--distillation_alpha 1.5"),
            (["--distillation_temperature", "3"], "--distillation_temperature needs --teacher_name_or_path")):
        assert_fails(common(tiny_bert, tmp_path / "out", *data, *extra), message)
        assert not (tmp_path / "out").exists()
