"""Structured pruning (issue 16): head, neuron and layer masks, the export that shrinks the model, per-layer sizes in
BermoConfig, the finetune.py and Trainer paths, bad input."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, default_data_collator

from bermo import BermoConfig, BermoForSequenceClassification
from bermo.arguments import PruningArguments
from bermo.pruning import PruningFeature
from bermo.pruning.structure import layer_parameter_count
from bermo.training import main

from conftest import TINY_BERT
from test_finetune import assert_fails, common, sst2_files  # noqa: F401
from test_pruning_training import read_dev
from test_trainer import FORWARD_COLUMNS, marker_dataset, training_args


# tiny models: intra-op threads only add overhead, and on a busy 2-core machine they thrash
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def tiny(kind="bermo", seed=0, **overrides):
    torch.manual_seed(seed)
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(**{**TINY_BERT, **overrides}, num_labels=2)).eval()
    return BermoForSequenceClassification(BermoConfig(**{**TINY_BERT, **overrides}, num_labels=2)).eval()


def structured(granularity, threshold, method="movement", steps=10, **extra):
    if method == "soft_movement":
        extra = {"regularization": "l1", "final_lambda": 1.0, "initial_threshold": 0.0, **extra}
    if method == "l0":
        extra = {"regularization": "l0", "final_lambda": 1.0, **extra}
    return PruningFeature.from_arguments(PruningArguments(
        pruning_method=method, pruning_granularity=granularity, final_threshold=threshold, **extra), steps)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def pruned(kind, granularity, threshold, method="movement", seed=0, global_topk=False, **overrides):
    """A tiny model with structure masks at the final threshold, from random scores; (model, feature)."""
    model = tiny(kind, seed, **overrides)
    feature = structured(granularity, threshold, method, global_topk=global_topk)
    model = feature.setup(model)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mask in feature.structures.all_masks():
            if hasattr(mask, "scores"):
                spread = 3.0 if method == "l0" else 1.0  # l0: some gates at exactly 0
                mask.scores.copy_(spread * torch.randn(mask.scores.shape, generator=generator))
    feature.on_step(10)
    return model, feature


@pytest.mark.parametrize("kind", ["bermo", "bert"])
def test_keep_fraction_one_equals_the_dense_model(kind, tiny_inputs):
    dense = logits(tiny(kind), tiny_inputs)
    model, feature = pruned(kind, "head,neuron,layer", 1.0)
    assert all(bool(mask.mask.all()) for mask in feature.structures.all_masks())
    assert torch.equal(logits(model, tiny_inputs), dense)
    exported = feature.export(model)
    assert type(exported).__name__ == type(tiny(kind)).__name__  # unchanged structure: exported as before
    assert torch.equal(logits(exported, tiny_inputs), dense)


def test_a_head_mask_equals_removing_those_heads_from_attention(tiny_inputs):
    model, feature = pruned("bermo", "head", 1.0)
    masked_heads = {0: [1, 3], 2: [0]}
    with torch.no_grad():
        for layer, heads in masked_heads.items():
            feature.structures.masks["head"][layer].mask[heads] = 0
    # the reference: the dense model whose removed heads attend to zero values (their context is zero)
    reference = tiny("bermo")
    size = TINY_BERT["hidden_size"] // TINY_BERT["num_attention_heads"]
    with torch.no_grad():
        for layer, heads in masked_heads.items():
            value = reference.bert.encoder.layer[layer].attention.self.value
            for head in heads:
                value.weight[head * size:(head + 1) * size] = 0
                value.bias[head * size:(head + 1) * size] = 0
    with torch.no_grad():
        expected = reference.bert(**tiny_inputs).last_hidden_state
        dense = tiny("bermo").bert(**tiny_inputs).last_hidden_state
        got = model.bert(**tiny_inputs).last_hidden_state
    assert (expected - dense).abs().max() > 1e-2  # the heads mattered
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind, granularity, method, threshold", [
    ("bermo", "head,neuron", "movement", 0.5),
    ("bermo", "head,neuron,layer", "magnitude", 0.67),
    ("bermo", "head", "soft_movement", 0.5),
    ("bermo", "head,neuron", "l0", 1.0),
    ("bert", "head,neuron,layer", "movement", 0.5),
])
def test_export_then_reload_gives_the_masked_logits(tmp_path, tiny_inputs, kind, granularity, method, threshold):
    model, feature = pruned(kind, granularity, threshold, method)
    masked = logits(model, tiny_inputs)
    with torch.no_grad():  # the representation the head reads (a tiny random head's logits hardly move)
        masked_hidden = model.bert(**tiny_inputs).last_hidden_state
        assert (masked_hidden - tiny(kind).bert(**tiny_inputs).last_hidden_state).abs().max() > 1e-3
    kept = feature.kept_structure()
    exported = feature.export(model)
    assert type(exported) is BermoForSequenceClassification  # a pruned BERT becomes BERMo (last-layer mix)
    exported.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert not any("scores" in name or "layer_gate" in name for name in saved)
    reloaded = BermoForSequenceClassification.from_pretrained(tmp_path).eval()
    assert (logits(reloaded, tiny_inputs) - masked).abs().max() <= 1e-4
    with torch.no_grad():
        torch.testing.assert_close(reloaded.bert(**tiny_inputs).last_hidden_state, masked_hidden, atol=1e-5,
                                   rtol=1e-5)
    config = json.loads((tmp_path / "config.json").read_text())
    kept_layers = [index for index, (layer_kept, _, _) in enumerate(kept) if layer_kept]
    assert config["num_hidden_layers"] == len(kept_layers)
    if "layer" in granularity:
        assert config["kept_layers"] == kept_layers and len(kept_layers) < 3
    heads = [max(len(kept[index][1]), 1) for index in kept_layers]
    assert config["layer_num_attention_heads"] == heads and heads != [4] * len(heads)
    if "neuron" in granularity:
        assert config["layer_intermediate_sizes"] == [max(len(kept[index][2]), 1) for index in kept_layers]
    if kind == "bert":
        assert config["mix_layers"] == [-1] and reloaded.layer_mix_weights()[0].tolist() == [1.0]


def test_global_ranking_gives_layers_their_own_sizes_and_soft_movement_penalizes_the_scores(tiny_inputs):
    model, feature = pruned("bermo", "head", 0.5, global_topk=True)
    scores = [mask.scores.detach() for mask in feature.structures.masks["head"]]
    kept = [int(mask.mask.sum()) for mask in feature.structures.masks["head"]]
    assert sum(kept) == 6 and len(set(kept)) > 1  # the top 6 of all 12 heads, wherever they are
    threshold = torch.cat(scores).sort(descending=True).values[5]
    assert all(bool((s[m.mask.bool()] >= threshold).all()) for s, m in zip(scores, feature.structures.masks["head"]))
    model, feature = pruned("bermo", "head,neuron", 0.5, method="soft_movement")
    model.train()
    loss = model(**tiny_inputs, labels=torch.tensor([0, 1, 1])).loss + feature.penalty(model)
    loss.backward()
    for mask in feature.structures.all_masks():
        assert mask.scores.grad is not None and bool((mask.scores.grad != 0).any())
        kept, above = mask.mask.bool(), torch.sigmoid(mask.scores.detach()) > 0.5
        assert torch.equal(kept, above) or (int(kept.sum()) == 1 and not bool(above.any()))  # at least one kept


def test_the_export_reads_the_model_it_is_given_like_fsdps_unsharded_copy(tiny_inputs):
    import copy

    model = tiny("bermo")
    feature = structured("head,neuron,layer", 0.5)
    model = feature.setup(model)
    plain_copy = copy.deepcopy(model)  # what the loop copies before training under FSDP
    with torch.no_grad():
        for mask in feature.structures.all_masks():
            mask.scores.normal_()
    feature.on_step(10)
    masked = logits(model, tiny_inputs)
    plain_copy.load_state_dict(model.state_dict())  # the trained weights and scores, gathered
    exported = feature.export(plain_copy)
    assert exported.config.num_hidden_layers == 1
    assert not any(layer._forward_hooks for layer in exported.bert.encoder.layer)
    torch.testing.assert_close(logits(exported, tiny_inputs), masked, atol=1e-5, rtol=1e-5)


def test_a_layer_left_without_heads_or_neurons_keeps_one_of_each_with_zero_output(tiny_inputs):
    model, feature = pruned("bermo", "head,neuron", 0.34, global_topk=True)
    with torch.no_grad():
        for kind in ("head", "neuron"):
            for layer, mask in enumerate(feature.structures.masks[kind]):
                mask.scores.fill_(1.0 if layer == 0 else -1.0)  # the global top 34% all lie in layer 0
    feature.on_step(10)
    with torch.no_grad():
        masked = model.bert(**tiny_inputs).last_hidden_state
    exported = feature.export(model)
    assert exported.config.layer_num_attention_heads == [4, 1, 1]
    assert exported.config.layer_intermediate_sizes == [37, 1, 1]
    for layer in exported.bert.encoder.layer[1:]:
        assert not bool(layer.attention.output.dense.weight.any()) and not bool(layer.output.dense.weight.any())
    with torch.no_grad():
        torch.testing.assert_close(exported.bert(**tiny_inputs).last_hidden_state, masked, atol=1e-5, rtol=1e-5)


def test_l0_gates_on_heads_and_neurons_sample_in_training_and_export_their_deterministic_values(tiny_inputs):
    model, feature = pruned("bermo", "head,neuron", 1.0, method="l0")
    gates = [mask.mask for mask in feature.structures.all_masks()]
    assert any(bool((g == 0).any()) for g in gates) and any(bool(((g > 0) & (g < 1)).any()) for g in gates)
    model.train()
    first = model.bert(**tiny_inputs).last_hidden_state
    assert not torch.equal(first, model.bert(**tiny_inputs).last_hidden_state)  # sampled gates
    (first.sum() + feature.penalty(model)).backward()
    assert all(bool((mask.scores.grad != 0).any()) for mask in feature.structures.all_masks())
    model.eval()
    with torch.no_grad():
        masked = model.bert(**tiny_inputs).last_hidden_state
    exported = feature.export(model)
    with torch.no_grad():
        torch.testing.assert_close(exported.bert(**tiny_inputs).last_hidden_state, masked, atol=1e-5, rtol=1e-5)


def test_layer_dropping_folds_the_mix_exactly(tiny_inputs):
    model, feature = pruned("bermo", "layer", 0.67)
    with torch.no_grad():
        model.bert.layer_mix.logits.copy_(torch.tensor([0.3, -0.5, 1.2, 0.1]))
        for score, mask in zip([1.0, -5.0, 2.0], feature.structures.masks["layer"]):
            mask.scores.fill_(score)  # the middle layer is dropped: h_2 = h_1
    feature.on_step(10)
    masked = logits(model, tiny_inputs)
    exported = feature.export(model)
    assert exported.config.num_hidden_layers == 2 and exported.config.kept_layers == [0, 2]
    torch.testing.assert_close(exported.bert.layer_mix.logits,
                               torch.tensor([0.3, torch.logaddexp(torch.tensor(-0.5), torch.tensor(1.2)), 0.1]))
    torch.testing.assert_close(logits(exported, tiny_inputs), masked, atol=1e-6, rtol=1e-5)


def test_exported_parameter_count_and_file_size_match_the_kept_structure(tmp_path):
    shape = dict(vocab_size=500, hidden_size=128, num_attention_heads=4, intermediate_size=512,
                 num_hidden_layers=2, max_position_embeddings=64)
    dense = tiny("bermo", **shape)
    dense.save_pretrained(tmp_path / "dense")
    model, feature = pruned("bermo", "head,neuron", 0.5, **shape)
    exported = feature.export(model)
    exported.save_pretrained(tmp_path / "small")
    head_size = 128 // 4
    expected_encoder = 2 * layer_parameter_count(128, head_size, 2, 256)
    counts = {}
    for name in ("dense", "small"):
        state = load_file(tmp_path / name / "model.safetensors")
        counts[name] = (sum(t.numel() for t in state.values()),
                        sum(t.numel() for key, t in state.items() if ".encoder.layer." in key),
                        (tmp_path / name / "model.safetensors").stat().st_size)
    assert counts["small"][1] == expected_encoder
    assert counts["dense"][1] == 2 * layer_parameter_count(128, head_size, 4, 512)
    assert counts["dense"][0] - counts["small"][0] == counts["dense"][1] - expected_encoder
    size_ratio = counts["small"][2] / counts["dense"][2]
    assert abs(size_ratio / (counts["small"][0] / counts["dense"][0]) - 1) <= 0.02


def test_layers_of_different_widths_train_save_and_reload(tmp_path, tiny_inputs):
    model = tiny("bermo", layer_num_attention_heads=[1, 4, 2], layer_intermediate_sizes=[5, 37, 1],
                 kept_layers=[0, 2, 5])
    layer = model.bert.encoder.layer[0]
    assert layer.attention.self.query.weight.shape == (8, 32) and layer.output.dense.weight.shape == (32, 5)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    labels = torch.tensor([0, 1, 1])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for _ in range(3):
        optimizer.zero_grad()
        model(**tiny_inputs, labels=labels).loss.backward()
        optimizer.step()
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert any("layer.0.attention.self.query" in name for name in changed)
    assert any("layer.2.intermediate.dense" in name for name in changed)
    model.eval()
    model.save_pretrained(tmp_path)
    reloaded = BermoForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.layer_num_attention_heads == [1, 4, 2] and reloaded.config.kept_layers == [0, 2, 5]
    assert torch.equal(logits(reloaded, tiny_inputs), logits(model, tiny_inputs))
    with pytest.raises(ValueError, match="layer_num_attention_heads"):
        BermoConfig(**TINY_BERT, layer_num_attention_heads=[1, 5, 2])
    with pytest.raises(ValueError, match="layer_intermediate_sizes"):
        BermoConfig(**TINY_BERT, layer_intermediate_sizes=[5, 37])


def test_a_shrunk_model_compiles_fullgraph_and_exports_to_onnx(tmp_path, tiny_inputs):
    model, feature = pruned("bermo", "head,neuron,layer", 0.5)
    exported = feature.export(model).eval()
    eager = logits(exported, tiny_inputs)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(exported, fullgraph=True)(**tiny_inputs).logits
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "small.onnx"
    torch.onnx.export(exported, (), str(path), kwargs=dict(tiny_inputs), input_names=list(tiny_inputs),
                      output_names=["logits"], dynamo=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {name: t.numpy() for name, t in tiny_inputs.items()})
    torch.testing.assert_close(torch.from_numpy(onnx_logits), eager, rtol=1e-4, atol=1e-5)


def test_finetune_structured_run_reaches_its_target_structure(tiny_bert, sst2_files, tmp_path):
    out = tmp_path / "out"
    code = main(common(tiny_bert, out, "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"),
                       "--max_train_steps", "12", "--eval_steps", "4", "--model_type", "bert",
                       "--save_eval_predictions", "--pruning_method", "movement", "--pruning_granularity",
                       "head,neuron,layer", "--final_threshold", "0.5", "--initial_warmup", "0.1",
                       "--final_warmup", "0.3"))
    assert code == 0
    final = json.loads((out / "final_metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    # 3 layers -> 1 kept; 4 heads -> 2; 37 neurons -> 18: a BERT run exports as BERMo
    assert config["model_type"] == "bermo" and config["num_hidden_layers"] == 1 and len(config["kept_layers"]) == 1
    assert config["layer_num_attention_heads"] == [2] and config["layer_intermediate_sizes"] == [18]
    assert final["exported_layer_num_attention_heads"] == [2] and final["pruning_granularity"] == "head,neuron,layer"
    evaluations = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                   if '"validation"' in line]
    assert evaluations[0]["remaining_neuron_fraction"] > evaluations[-1]["remaining_neuron_fraction"] == 18 / 37
    assert evaluations[-1]["remaining_layer_fraction"] == 1 / 3 and evaluations[-1]["threshold"] == 0.5
    assert final["exported_encoder_parameters"] == layer_parameter_count(32, 8, 2, 18)
    assert evaluations[-1]["remaining_encoder_fraction"] == final["exported_remaining_encoder_fraction"]
    reloaded = BermoForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    sentences = read_dev(sst2_files / "glue" / "SST-2" / "dev.tsv", 32)
    with torch.no_grad():
        predicted = reloaded(**tokenizer(sentences, padding=True, truncation=True, max_length=32,
                                         return_tensors="pt")).logits.argmax(-1).tolist()
    last = json.loads((out / "eval_predictions.jsonl").read_text().splitlines()[-1])
    assert predicted == last["predictions"]
    card = (out / "README.md").read_text()
    assert "exported_layer_num_attention_heads" in card and "pruning_granularity" in card


def test_trainer_path_prunes_structures_and_saves_the_smaller_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from bermo.trainer import FeatureTrainer

    steps = 8
    pruning = structured("head,neuron", 0.5, steps=steps, initial_warmup=0.0, final_warmup=0.25)
    trainer = FeatureTrainer(
        model=tiny("bermo").train(),
        args=training_args(tmp_path / "run", max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-3),
        train_dataset=marker_dataset(64, seed=0), eval_dataset=marker_dataset(16, seed=1),
        data_collator=default_data_collator, features=[pruning])
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_remaining_head_fraction"] == 0.5 and metrics["eval_remaining_neuron_fraction"] == 18 / 37
    masked = trainer.predict(marker_dataset(16, seed=1)).predictions
    trainer.save_model(tmp_path / "final")
    config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert config["layer_num_attention_heads"] == [2, 2, 2] and config["layer_intermediate_sizes"] == [18] * 3
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final").eval()
    batch = default_data_collator([{k: v for k, v in row.items() if k in FORWARD_COLUMNS - {"labels"}}
                                   for row in marker_dataset(16, seed=1)])
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(**batch).logits.numpy(), masked, atol=1e-4)


@pytest.mark.parametrize("extra, message", [
    (["--pruning_granularity", "head,attention"], "unknown 'attention'"),
    (["--pruning_granularity", "weight,head"], "weight does not combine"),
    (["--pruning_method", "l0", "--regularization", "l0", "--final_lambda", "1", "--pruning_granularity",
      "head,layer"], "L0 gates on whole layers are not implemented"),
    (["--pruning_granularity", "head", "--save_masks"], "--save_masks: only for --pruning_granularity weight"),
    (["--pruning_granularity", "layer", "--final_threshold", "0.2"], "keeps no layer of 3"),
])
def test_bad_structured_flags_exit_2_and_write_nothing(tiny_bert, sst2_files, tmp_path, capsys, extra, message):
    flags = ["--pruning_method", "movement", *extra] if "--pruning_method" not in extra else extra
    code = main(common(tiny_bert, tmp_path / "out", "--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"),
                       "--max_train_steps", "4", *flags))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("finetune.py: error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "out").exists()


def test_resuming_needs_the_same_structure_flags(tiny_bert, sst2_files, tmp_path):
    args = ["--task_name", "sst2", "--glue_dir", str(sst2_files / "glue"), "--max_train_steps", "2",
            "--checkpointing_steps", "2", "--pruning_method", "movement", "--final_threshold", "0.5"]
    out = tmp_path / "out"
    assert main(common(tiny_bert, out, *args, "--pruning_granularity", "head,neuron")) == 0
    before = sorted(p.name for p in out.iterdir())
    assert_fails(common(tiny_bert, out, *args, "--pruning_granularity", "head", "--resume_from_checkpoint",
                        "latest"), "--pruning_granularity was head,neuron, now head")
    assert_fails(common(tiny_bert, out, *args, "--resume_from_checkpoint", "latest"),
                 "--pruning_granularity was head,neuron, now weight")
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_4x_checkpoint_with_pruned_heads_converts_to_per_layer_head_counts(tmp_path, tiny_inputs):
    from safetensors.torch import save_file

    from bermo.conversion import convert

    pruned, size = {0: [1, 2], 2: [0]}, TINY_BERT["hidden_size"] // TINY_BERT["num_attention_heads"]
    source, reference = tiny("bert"), tiny("bert")
    state = {name: tensor.clone() for name, tensor in source.state_dict().items()}
    for layer, heads in pruned.items():  # what transformers 4.x `prune_heads` saves, and the same function dense
        kept = torch.cat([torch.arange(h * size, (h + 1) * size) for h in range(4) if h not in heads])
        prefix = f"bert.encoder.layer.{layer}.attention."
        for name in ("query", "key", "value"):
            for kind in ("weight", "bias"):
                state[f"{prefix}self.{name}.{kind}"] = state[f"{prefix}self.{name}.{kind}"][kept]
        state[f"{prefix}output.dense.weight"] = state[f"{prefix}output.dense.weight"][:, kept]
        with torch.no_grad():
            value = reference.bert.encoder.layer[layer].attention.self.value
            for head in heads:
                value.weight[head * size:(head + 1) * size] = 0
                value.bias[head * size:(head + 1) * size] = 0
    folder = tmp_path / "v4-pruned"
    folder.mkdir()
    config = {**source.config.to_dict(), "pruned_heads": {str(k): v for k, v in pruned.items()}}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    convert(folder, tmp_path / "out", mix_init="last", show_progress=False, log=lambda *args: None)
    converted = BermoForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert converted.config.layer_num_attention_heads == [2, 4, 3]
    assert "pruned_heads" not in json.loads((tmp_path / "out" / "config.json").read_text())
    assert "keep [2, 4, 3] heads" in (tmp_path / "out" / "README.md").read_text()
    with torch.no_grad():
        expected = reference.bert(**tiny_inputs).last_hidden_state
        got = converted.bert(**tiny_inputs).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_real_minilm_weights_shrink_to_the_masked_models_outputs(minilm_path, minilm_inputs, tmp_path):
    model = BermoForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()
    feature = structured("head,neuron,layer", 0.5, method="magnitude")
    model = feature.setup(model)
    feature.on_step(10)
    with torch.no_grad():
        masked = model.bert(**minilm_inputs).last_hidden_state
    exported = feature.export(model)
    exported.save_pretrained(tmp_path)
    reloaded = BermoForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 3 and reloaded.config.layer_num_attention_heads == [6] * 3
    assert reloaded.config.layer_intermediate_sizes == [768] * 3
    with torch.no_grad():
        assert (reloaded.bert(**minilm_inputs).last_hidden_state - masked).abs().max() <= 1e-4


def test_structured_pruning_and_per_layer_sizes_are_refused_off_the_bert_backbone():
    """Per-layer sizes are built by BERT's layers only: a RoBERTa-based BERMo gets one-line refusals, not a config
    whose sizes its modeling code would silently ignore."""
    from conftest import tiny_family_config

    with pytest.raises(ValueError, match="per-layer sizes are supported on the BERT backbone only, not roberta"):
        BermoConfig.for_backbone(tiny_family_config("roberta"), layer_num_attention_heads=[2, 4, 4])
    from transformers import AutoModelForSequenceClassification  # BERMo is registered by `import bermo`

    model = AutoModelForSequenceClassification.from_config(BermoConfig.for_backbone(tiny_family_config("roberta"), num_labels=2))
    feature = PruningFeature.from_arguments(PruningArguments(
        pruning_method="movement", pruning_granularity="head,neuron", final_threshold=0.5), 10)
    with pytest.raises(ValueError, match="structured pruning exports per-layer sizes for BERT and BERMo on BERT only, "
                                         "not roberta"):
        feature.setup(model)
