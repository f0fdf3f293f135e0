"""The loop's feature interface: a new feature is one class and one `register_feature` call; callbacks observe the
loop through the same hooks (no patching)."""

import json
from dataclasses import dataclass, field

import pytest
import torch

from bermo.features import TrainingFeature, register_feature, registered_features, unregister_feature
from bermo.training import main, parse_run, train

from test_finetune import assert_fails, common, run_finetune, sst2_files  # noqa: F401  (fixtures)


@dataclass
class GradNormArguments:
    _argument_group_name = "gradient norm"

    log_grad_norm: bool = field(default=False, metadata={"help": "log the gradient norm at each evaluation"})
    grad_norm_type: float = field(default=2.0, metadata={"help": "the norm's order (e.g. --grad_norm_type 2)"})


class GradNorm(TrainingFeature):
    """A toy feature: the gradient norm of the last optimizer step, logged beside every evaluation."""

    name = "grad_norm"
    arguments = GradNormArguments

    def __init__(self, norm_type):
        self.norm_type, self.last = norm_type, None

    @classmethod
    def from_arguments(cls, arguments, max_train_steps):
        if not arguments.log_grad_norm:
            return None
        if arguments.grad_norm_type <= 0:
            raise ValueError(f"--grad_norm_type {arguments.grad_norm_type}: must be > 0")
        return cls(arguments.grad_norm_type)

    def on_pre_optimizer_step(self, model, step):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.last = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, self.norm_type)
                                                          for g in grads]), self.norm_type).item()

    def eval_figures(self, model):
        return {"grad_norm": self.last}

    def config(self):
        return {"norm_type": self.norm_type}


@pytest.fixture
def grad_norm_feature():
    register_feature(GradNorm)
    yield GradNorm
    unregister_feature(GradNorm.name)


def test_a_new_feature_is_one_class_and_a_registration(grad_norm_feature, tiny_bert, sst2_files, tmp_path, capsys):
    assert grad_norm_feature in registered_features()
    out = tmp_path / "out"
    args = common(tiny_bert, out, "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"), "--max_train_steps",
                  "4", "--eval_steps", "2", "--checkpointing_steps", "2", "--no-save_model")
    assert main([*args, "--log_grad_norm"]) == 0
    evaluations = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                   if '"validation"' in line]
    assert [r["step"] for r in evaluations] == [2, 4] and all(r["grad_norm"] > 0 for r in evaluations)
    # its configuration goes into every checkpoint and is checked on resume, by the loop's generic rules
    assert json.loads((out / "step_2" / "features.json").read_text()) == {"grad_norm": {"norm_type": 2.0}}
    capsys.readouterr()
    assert main([*args, "--log_grad_norm", "--grad_norm_type", "1", "--resume_from_checkpoint", "latest"]) == 2
    assert "saved with grad_norm settings {'norm_type': 2.0}, this run has {'norm_type': 1.0}" in capsys.readouterr().err
    assert main([*args, "--log_grad_norm", "--resume_from_checkpoint", "latest"]) == 0


def test_a_features_bad_arguments_are_refused_before_anything_is_written(grad_norm_feature, tiny_bert, sst2_files,
                                                                         tmp_path, capsys):
    out = tmp_path / "out"
    code = main(common(tiny_bert, out, "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"),
                       "--log_grad_norm", "--grad_norm_type", "-1"))
    assert code == 2 and "--grad_norm_type -1.0: must be > 0" in capsys.readouterr().err
    assert not out.exists()


def test_a_checkpoint_with_a_feature_this_run_lacks_is_refused(grad_norm_feature, tiny_bert, sst2_files, tmp_path,
                                                               capsys):
    out = tmp_path / "out"
    args = common(tiny_bert, out, "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"), "--max_train_steps",
                  "2", "--checkpointing_steps", "2", "--no-save_model")
    assert main([*args, "--log_grad_norm"]) == 0
    capsys.readouterr()
    assert main([*args, "--resume_from_checkpoint", "latest"]) == 2
    assert "saved with grad_norm on" in capsys.readouterr().err


class Recorder(TrainingFeature):
    """A callback: what the loop tells its hooks, in order."""

    def __init__(self):
        self.events = []

    def setup(self, model):
        self.events.append(("setup", type(model).__name__))
        return model

    def on_step_end(self, step, loss):
        self.events.append(("step", step, float(loss) > 0))

    def on_evaluate(self, step, metrics, model):
        self.events.append(("evaluate", step, sorted(metrics)))

    def on_checkpoint(self, path):
        self.events.append(("checkpoint", path.name))

    def before_save(self, model, output_dir, is_main_process):
        self.events.append(("before_save", is_main_process))
        return model


def test_callbacks_see_every_step_evaluation_checkpoint_and_save(tiny_bert, sst2_files, tmp_path):
    recorder = Recorder()
    run = parse_run(common(tiny_bert, tmp_path / "out", "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"),
                           "--max_train_steps", "4", "--eval_steps", "2", "--checkpointing_steps", "3",
                           "--no-save_model"))
    train(run, callbacks=[recorder])
    assert recorder.events == [
        ("setup", "BermoForSequenceClassification"),
        ("step", 1, True), ("step", 2, True), ("evaluate", 2, ["validation"]),
        ("step", 3, True), ("checkpoint", "step_3"),
        ("step", 4, True), ("evaluate", 4, ["validation"]),
        ("before_save", True),
    ]
    with pytest.raises(TypeError, match="TrainingFeature"):
        train(run, callbacks=[object()])
