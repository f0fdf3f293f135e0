"""BERMo in `transformers.Trainer`, unchanged: training, evaluation, gradient accumulation, checkpoints, resuming.

Everything runs on tiny random configs on the CPU, on synthetic data where the label says whether token id 5
appears in the sequence (learnable in a few dozen steps).
"""

import copy
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments, default_data_collator

from bermo import BermoConfig, BermoForSequenceClassification

from conftest import REPO_ROOT, no_bermo_env, run_python

datasets = pytest.importorskip("datasets")
sklearn_metrics = pytest.importorskip("sklearn.metrics")

MARKER = 5  # label 1: the sequence holds this token id
SEQ_LEN = 12
FORWARD_COLUMNS = {"input_ids", "attention_mask", "token_type_ids", "labels"}


# tiny models: intra-op threads only add overhead, and on a busy 2-core machine they thrash
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def marker_dataset(count, seed, vocab_size=99):
    """input_ids/attention_mask/token_type_ids/labels plus `sample_id`, a column that `forward` does not take.

    Every row is SEQ_LEN long (pre-padded with 0s), so the default collator stacks them as they are.
    """
    generator = np.random.default_rng(seed)
    rows = {name: [] for name in ("input_ids", "attention_mask", "token_type_ids", "labels", "sample_id")}
    for index in range(count):
        length = int(generator.integers(6, SEQ_LEN + 1))
        tokens = [1] + generator.integers(MARKER + 1, vocab_size, length - 1).tolist()  # 1 plays [CLS]
        label = index % 2
        if label:
            tokens[int(generator.integers(1, length))] = MARKER
        pad = SEQ_LEN - length
        rows["input_ids"].append(tokens + [0] * pad)
        rows["attention_mask"].append([1] * length + [0] * pad)
        rows["token_type_ids"].append([0] * (length // 2) + [1] * (length - length // 2) + [0] * pad)
        rows["labels"].append(label)
        rows["sample_id"].append(1000 + index)
    return datasets.Dataset.from_dict(rows)


def training_args(output_dir, **overrides):
    args = dict(
        output_dir=str(output_dir),
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=1,
    )
    args.update(overrides)
    return TrainingArguments(**args)


def tiny_classifier(tiny_config_kwargs, seed=0):
    torch.manual_seed(seed)
    return BermoForSequenceClassification(BermoConfig(**tiny_config_kwargs, num_labels=2))


def logged_losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def accuracy(eval_prediction):
    predictions = np.argmax(eval_prediction.predictions, axis=-1)
    return {"accuracy": sklearn_metrics.accuracy_score(eval_prediction.label_ids, predictions)}


class RecordingCollator:
    """The default collator, noting which columns reach it (after Trainer removed the ones `forward` lacks)."""

    def __init__(self):
        self.columns = set()

    def __call__(self, features):
        self.columns.update(features[0].keys())
        return default_data_collator(features)


def test_trainer_trains_and_evaluates_with_compute_metrics(tiny_config_kwargs, tmp_path):
    model = tiny_classifier(tiny_config_kwargs)
    train, evaluation = marker_dataset(256, seed=1), marker_dataset(64, seed=2)
    collator = RecordingCollator()
    trainer = Trainer(
        model=model,
        args=training_args(
            tmp_path,
            max_steps=64,
            per_device_train_batch_size=16,
            per_device_eval_batch_size=32,
            learning_rate=3e-3,
            warmup_steps=4,
            logging_steps=4,
        ),
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=collator,
        compute_metrics=accuracy,
    )
    result = trainer.train()
    assert result.global_step == 64

    # `sample_id` is gone (forward() takes no **kwargs: it would have raised), the columns forward names are kept
    assert collator.columns == FORWARD_COLUMNS

    losses = logged_losses(trainer)
    assert len(losses) == 16
    assert losses[0] > 0.6  # chance is ln 2 ~ 0.69
    assert losses[-1] < 0.5 * losses[0], losses
    # Trainer's optimizer holds the layer mix too: it moved away from its uniform init
    assert model.bert.layer_mix.logits.detach().abs().max().item() > 1e-3

    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_accuracy"} <= metrics.keys()
    assert metrics["eval_accuracy"] >= 0.8, metrics
    # predict() reports the same metric, under its own prefix
    predicted = trainer.predict(evaluation)
    assert predicted.metrics["test_accuracy"] == metrics["eval_accuracy"]
    assert predicted.predictions.shape == (64, 2)


def one_sgd_step(model, data, tmp_path, batch_size, accumulation):
    trainer = Trainer(
        model=model,
        args=training_args(
            tmp_path,
            max_steps=1,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
            learning_rate=0.5,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=0.0,  # no clipping: it would hide a loss that is off by a factor
        ),
        train_dataset=data,
        data_collator=default_data_collator,
    )
    assert trainer.model_accepts_loss_kwargs is False
    trainer.train()
    (loss,) = logged_losses(trainer)
    return {name: tensor.detach().clone() for name, tensor in model.named_parameters()}, loss


def test_gradient_accumulation_gives_the_full_batch_update_and_loss(tiny_config_kwargs, tmp_path):
    # the model computes a mean loss itself, so Trainer must divide by the accumulation steps (no num_items_in_batch)
    assert BermoForSequenceClassification.accepts_loss_kwargs is False

    data = marker_dataset(8, seed=3)  # one optimizer step sees all 8 rows either way, in whatever order
    initial = tiny_classifier(tiny_config_kwargs)
    full_weights, full_loss = one_sgd_step(copy.deepcopy(initial), data, tmp_path / "full", 8, 1)
    accumulated_weights, accumulated_loss = one_sgd_step(copy.deepcopy(initial), data, tmp_path / "accumulated", 4, 2)

    # the reference: one plain SGD step on the mean loss over the 8 rows
    reference = copy.deepcopy(initial).train()
    batch = default_data_collator([data[index] for index in range(8)])
    del batch["sample_id"]
    loss = reference(**batch).loss
    loss.backward()
    expected = {name: (tensor - 0.5 * tensor.grad).detach() for name, tensor in reference.named_parameters()}

    changed = [name for name in expected if not torch.equal(expected[name], dict(initial.named_parameters())[name])]
    assert "bert.layer_mix.logits" in changed and "classifier.weight" in changed
    for name, value in expected.items():
        assert (full_weights[name] - value).abs().max().item() <= 1e-5, name
        assert (accumulated_weights[name] - value).abs().max().item() <= 1e-5, name
        assert (accumulated_weights[name] - full_weights[name]).abs().max().item() <= 1e-5, name
    # the logged loss is the mean over the 8 rows in both runs, not the sum of the micro-batch means
    assert full_loss == pytest.approx(loss.item(), rel=1e-4)
    assert accumulated_loss == pytest.approx(loss.item(), rel=1e-4)


def test_checkpoint_loads_as_remote_code_and_training_resumes(tiny_config_kwargs, tmp_path):
    train = marker_dataset(64, seed=4)

    def make_trainer(model, output_dir):
        return Trainer(
            model=model,
            args=training_args(
                output_dir,
                max_steps=6,
                per_device_train_batch_size=8,
                learning_rate=1e-3,
                save_strategy="steps",
                save_steps=3,
            ),
            train_dataset=train,
            data_collator=default_data_collator,
        )

    trainer = make_trainer(tiny_classifier(tiny_config_kwargs), tmp_path / "run")
    trainer.train()
    assert trainer.state.global_step == 6
    final = {name: tensor.detach().clone() for name, tensor in trainer.model.named_parameters()}
    checkpoint = tmp_path / "run" / "checkpoint-3"
    assert sorted(path.name for path in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]

    # the checkpoint is a self-contained remote-code model
    for name in ("configuration_bermo.py", "modeling_bermo.py", "config.json", "model.safetensors"):
        assert (checkpoint / name).is_file(), name
    for name in ("configuration_bermo.py", "modeling_bermo.py"):
        assert (checkpoint / name).read_text() == (REPO_ROOT / "modeling" / name).read_text()
    auto_map = json.loads((checkpoint / "config.json").read_text())["auto_map"]
    assert {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification"} <= auto_map.keys()
    assert auto_map["AutoModelForSequenceClassification"] == "modeling_bermo.BermoForSequenceClassification"

    loaded = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    assert type(loaded) is BermoForSequenceClassification
    inputs = default_data_collator([train[index] for index in range(5)])
    inputs = {name: inputs[name] for name in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        expected = loaded(**inputs).logits
        untrained = tiny_classifier(tiny_config_kwargs).eval()(**inputs).logits
    assert not torch.allclose(expected, untrained)  # the checkpoint holds trained weights
    torch.save({"inputs": inputs, "expected": expected}, tmp_path / "io.pt")

    script = f"""
import torch
from transformers import AutoModelForSequenceClassification
io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
model = AutoModelForSequenceClassification.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    logits = model(**io["inputs"]).logits
torch.save({{"logits": logits}}, {str(tmp_path / 'remote.pt')!r})
"""
    env = no_bermo_env()
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    env["OMP_NUM_THREADS"] = "1"
    result = run_python(["-c", script], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    remote = torch.load(tmp_path / "remote.pt", weights_only=True)["logits"]
    assert (remote - expected).abs().max().item() == 0.0

    # resuming from checkpoint-3 (fresh model, optimizer, scheduler and RNG state from the folder) ends where the
    # uninterrupted run ended
    resumed = make_trainer(tiny_classifier(tiny_config_kwargs, seed=123), tmp_path / "resumed")
    result = resumed.train(resume_from_checkpoint=str(checkpoint))
    assert result.global_step == resumed.state.global_step == trainer.state.global_step == 6
    for name, tensor in resumed.model.named_parameters():
        assert (tensor.detach() - final[name]).abs().max().item() <= 1e-5, name


def test_feature_trainer_prunes_distils_and_saves_a_plain_checkpoint(tiny_config_kwargs, tmp_path):
    """Pruning (movement, half of each encoder matrix) and distillation from a teacher, in transformers.Trainer:
    the schedule follows Trainer's steps, evaluations log the remaining weights, the final save is exported."""
    from safetensors.torch import load_file

    from bermo.arguments import DistillationArguments, PruningArguments
    from bermo.distillation import DistillationFeature
    from bermo.pruning import PruningFeature, count_zeros, masked_modules
    from bermo.trainer import FeatureTrainer

    teacher = tiny_classifier(tiny_config_kwargs, seed=1)
    teacher.save_pretrained(tmp_path / "teacher")
    steps = 8
    pruning = PruningFeature(PruningArguments(pruning_method="movement", final_threshold=0.5, initial_warmup=0.0,
                                              final_warmup=0.25), max_train_steps=steps)
    distillation = DistillationFeature(DistillationArguments(teacher_name_or_path=str(tmp_path / "teacher")))
    trainer = FeatureTrainer(
        model=tiny_classifier(tiny_config_kwargs), args=training_args(tmp_path / "run", max_steps=steps,
                                                                      per_device_train_batch_size=8,
                                                                      learning_rate=1e-3),
        train_dataset=marker_dataset(64, seed=0), eval_dataset=marker_dataset(16, seed=1),
        data_collator=default_data_collator, features=[pruning, distillation])
    scores = {id(m.mask_scores) for _, m in masked_modules(trainer.model)}
    assert len(scores) == 3 * 6
    trainer.create_optimizer()
    groups = trainer.optimizer.param_groups
    assert {id(p) for p in groups[-1]["params"]} == scores and groups[-1]["lr"] == 1e-2
    assert not any(id(p) in scores for group in groups[:-1] for p in group["params"])
    trainer.train()
    assert pruning.step == steps and pruning.threshold == 0.5
    metrics = trainer.evaluate()
    assert 0.5 < metrics["eval_remaining_encoder_fraction"] < 0.6
    masked_logits = trainer.predict(marker_dataset(16, seed=1)).predictions
    trainer.save_model(tmp_path / "final")
    saved = load_file(tmp_path / "final" / "model.safetensors")
    assert not any(name.endswith("mask_scores") for name in saved)
    assert count_zeros(saved)["remaining_encoder_fraction"] == pytest.approx(
        metrics["eval_remaining_encoder_fraction"])
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final").eval()
    batch = default_data_collator([{k: v for k, v in row.items() if k in FORWARD_COLUMNS - {"labels"}}
                                   for row in marker_dataset(16, seed=1)])
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(**batch).logits.numpy(), masked_logits, atol=1e-5)


def test_feature_trainer_resumes_a_pruning_run_from_its_checkpoint(tiny_config_kwargs, tmp_path):
    from bermo.arguments import PruningArguments
    from bermo.pruning import PruningFeature
    from bermo.trainer import FeatureTrainer

    def trainer(folder):
        pruning = PruningFeature(PruningArguments(pruning_method="movement", final_threshold=0.5), max_train_steps=8)
        return FeatureTrainer(model=tiny_classifier(tiny_config_kwargs),
                              args=training_args(folder, max_steps=8, per_device_train_batch_size=8,
                                                 learning_rate=1e-3, save_strategy="steps", save_steps=4),
                              train_dataset=marker_dataset(64, seed=0), data_collator=default_data_collator,
                              features=[pruning])

    whole = trainer(tmp_path / "whole")
    whole.train()
    resumed = trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-4"))
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert any(name.endswith("mask_scores") for name in a)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)
