"""BERMo on every supported encoder family besides BERT: each head equals the family's own model at the last-layer
initialization, loads back (locally and as remote code), runs in threads and under torch.compile(fullgraph=True), and
refuses bad input."""

import json
import threading

import pytest
import torch
import transformers

import bermo
from bermo import BermoConfig
from bermo.modeling.families_bermo import bermo_family_classes

from conftest import FAMILIES, TESTS_DIR, no_bermo_env, run_python, tiny_family_config

AUTO_CLASSES = (
    "AutoModel",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForMultipleChoice",
)
OUTPUT = {"AutoModel": "last_hidden_state", "AutoModelForQuestionAnswering": "start_logits"}


def inputs_for(auto_class, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 99, (3, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 3:] = 0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if auto_class == "AutoModelForMultipleChoice":
        inputs = {name: tensor.unsqueeze(1).expand(-1, 2, -1).contiguous() for name, tensor in inputs.items()}
    return inputs


def vanilla_and_bermo(family, auto_class, **mix):
    """A random vanilla model of the family and the BERMo model of the same head holding its weights."""
    num_labels = 2 if auto_class == "AutoModelForQuestionAnswering" else 3
    vanilla_config = tiny_family_config(family, num_labels=num_labels)
    torch.manual_seed(0)
    vanilla = getattr(transformers, auto_class).from_config(vanilla_config).eval()
    model = bermo_family_classes(family)[auto_class](BermoConfig.for_backbone(vanilla_config, **mix)).eval()
    loaded = model.load_state_dict(vanilla.state_dict(), strict=False)
    built = len(model.base_model.family.layers(model.base_model))  # the layers above the highest mixed one are not
    assert all(f"layer.{built}." in key or f"layers.{built}." in key for key in loaded.unexpected_keys)  # (3 layers)
    assert all(".layer_mix." in f".{key}" for key in loaded.missing_keys) and len(loaded.missing_keys) == 2
    return vanilla, model


@pytest.mark.parametrize("auto_class", AUTO_CLASSES)
@pytest.mark.parametrize("family", FAMILIES)
def test_last_layer_init_equals_the_family_model(family, auto_class):
    vanilla, model = vanilla_and_bermo(family, auto_class, mix_init="last")
    inputs = inputs_for(auto_class)
    with torch.no_grad():
        expected, actual = vanilla(**inputs), model(**inputs)
    key = OUTPUT.get(auto_class, "logits")
    assert actual[key].shape == expected[key].shape
    torch.testing.assert_close(actual[key], expected[key], atol=1e-5, rtol=0)
    # the mix is there: spreading its weight changes the output
    with torch.no_grad():
        model.base_model.layer_mix.logits.zero_()
        assert (model(**inputs)[key] - expected[key]).abs().max() > 1e-6  # (equal above: ~1e-9)


@pytest.mark.parametrize("auto_class", ["AutoModelForSequenceClassification", "AutoModelForMultipleChoice"])
@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_heads_equal_the_family_model(family, auto_class):
    """(ModernBERT's multiple-choice head pools the first non-padding token: not the first position here.)"""
    vanilla, model = vanilla_and_bermo(family, auto_class, mix_init="last")
    inputs = inputs_for(auto_class)
    inputs["attention_mask"] = inputs["attention_mask"].flip(-1)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, vanilla(**inputs).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_are_the_family_layers_and_the_mix_reads_them(family):
    vanilla, model = vanilla_and_bermo(family, "AutoModel", mix_layers=[0, 2])
    for each in (vanilla, model):  # (attention weights come from eager attention)
        each.set_attn_implementation("eager")
    inputs = inputs_for("AutoModel")
    with torch.no_grad():
        expected = vanilla(**inputs, output_hidden_states=True).hidden_states
        output = model(**inputs, output_hidden_states=True, output_attentions=True)
        weights, scale = model.layer_mix()
    # layers above the highest mixed one (2) are not built: h_0..h_2
    assert len(output.hidden_states) == 3 and len(output.attentions) == 2
    for ours, theirs in zip(output.hidden_states, expected[:3]):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    normalize = model.final_norm if family == "modernbert" else (lambda state: state)
    mixed = scale * (weights[0] * normalize(output.hidden_states[0]) + weights[1] * normalize(output.hidden_states[2]))
    torch.testing.assert_close(output.last_hidden_state, mixed, atol=1e-5, rtol=0)


def test_deberta_selects_hidden_states_by_index():
    _, model = vanilla_and_bermo("deberta-v2", "AutoModel")
    with torch.no_grad():
        everything = model(**inputs_for("AutoModel"), output_hidden_states=True).hidden_states
        selected = model(**inputs_for("AutoModel"), output_hidden_states=[0, -1]).hidden_states
    assert selected[1] is None and selected[2] is None
    torch.testing.assert_close(selected[0], everything[0])
    torch.testing.assert_close(selected[3], everything[3])


@pytest.mark.parametrize("family", FAMILIES)
def test_training_reaches_the_mix_and_the_losses_are_the_family_heads(family):
    _, model = vanilla_and_bermo(family, "AutoModelForSequenceClassification")
    assert model.accepts_loss_kwargs is False  # Trainer then scales the loss for gradient accumulation
    model.train()
    inputs = inputs_for("AutoModelForSequenceClassification")
    loss = model(**inputs, labels=torch.tensor([0, 2, 1])).loss
    loss.backward()
    assert model.base_model.layer_mix.logits.grad.abs().sum() > 0
    # regression and multi-label through the family's own loss selection
    model.config.problem_type = None
    model.config.num_labels = 3
    multi = model(**inputs, labels=torch.tensor([[0.0, 1.0, 1.0]] * 3)).loss
    assert torch.isfinite(multi)


@pytest.mark.parametrize("family", FAMILIES)
def test_concurrent_threads_give_each_call_its_own_result(family):
    _, model = vanilla_and_bermo(family, "AutoModelForTokenClassification", mix_init="last:0.5")
    batches = [inputs_for("AutoModelForTokenClassification", seed) for seed in range(4)]
    with torch.no_grad():
        expected = [model(**batch).logits for batch in batches]
    results = [None] * len(batches)

    def run(i):
        with torch.no_grad():
            for _ in range(3):
                results[i] = model(**batches[i]).logits

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result, reference in zip(results, expected):
        torch.testing.assert_close(result, reference)


@pytest.mark.parametrize("family", FAMILIES)
def test_fullgraph_compile(family):
    _, model = vanilla_and_bermo(family, "AutoModelForSequenceClassification", mix_init="last:0.5")
    inputs = inputs_for("AutoModelForSequenceClassification")
    with torch.no_grad():
        expected = model(**inputs).logits  # eager first: transformers installs its capture hooks lazily
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend="eager")  # graph capture, no code generation
        torch.testing.assert_close(compiled(**inputs).logits, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_reload_and_auto_classes(family, tmp_path):
    _, model = vanilla_and_bermo(family, "AutoModelForSequenceClassification", mix_layers=[0, -2, -1])
    with torch.no_grad():
        model.base_model.layer_mix.logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
        model.base_model.layer_mix.scale.fill_(1.7)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["backbone_model_type"] == family and saved["model_type"] == "bermo"
    classes = bermo_family_classes(family)
    assert saved["auto_map"] == {
        "AutoConfig": "configuration_bermo.BermoConfig",
        **{auto_class: f"families_bermo.{cls.__name__}" for auto_class, cls in classes.items()},
    }
    assert (tmp_path / "families_bermo.py").is_file() and (tmp_path / "modeling_bermo.py").is_file()
    inputs = inputs_for("AutoModelForSequenceClassification")
    with torch.no_grad():
        expected = model(**inputs).logits
    # the package's registered (BERT) classes hand the family's config to the family's classes
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is classes["AutoModelForSequenceClassification"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected, atol=1e-6, rtol=0)
    assert type(transformers.AutoModel.from_pretrained(tmp_path)) is classes["AutoModel"]
    assert type(bermo.BermoModel.from_pretrained(tmp_path)) is classes["AutoModel"]
    assert type(transformers.AutoModel.from_config(model.config)) is classes["AutoModel"]


def test_remote_code_round_trip_of_every_family(tmp_path):
    written = run_python([str(TESTS_DIR / "remote_code_roundtrip.py"), "write", str(tmp_path)])
    assert written.returncode == 0, written.stderr
    env = no_bermo_env()
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    checked = run_python([str(TESTS_DIR / "remote_code_roundtrip.py"), "check", str(tmp_path)], env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"remote code OK: {5 * (1 + len(FAMILIES))} checkpoints" in checked.stdout


def test_bad_input_is_refused():
    _, model = vanilla_and_bermo("roberta", "AutoModelForSequenceClassification")
    inputs = inputs_for("AutoModelForSequenceClassification")
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model.roberta(input_ids=inputs["input_ids"], inputs_embeds=torch.zeros(3, 9, 32))
    with pytest.raises(ValueError, match="out of range for 3 layers"):
        BermoConfig.for_backbone(tiny_family_config("distilbert"), mix_layers=[0, 4])
    with pytest.raises(ValueError, match="backbone_model_type 'gpt2' is not supported"):
        BermoConfig(backbone_model_type="gpt2")
    with pytest.raises(ValueError, match="not BERT"):
        bermo.BermoForSequenceClassification(BermoConfig.for_backbone(tiny_family_config("roberta")))


def test_distilbert_names_agree_with_the_bert_names():
    config = BermoConfig.for_backbone(tiny_family_config("distilbert"), mix_layers=[-1])
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 3, 4)
    assert config.mix_layer_indices == [3]
    assert BermoConfig(backbone_model_type="distilbert", n_layers=2).num_hidden_layers == 2


def save_vanilla(family, auto_class, folder, **overrides):
    torch.manual_seed(0)
    model = getattr(transformers, auto_class).from_config(tiny_family_config(family, num_labels=3, **overrides))
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_conversion_of_a_fine_tuned_head_is_verified_and_exact(family, tmp_path):
    from bermo.conversion import convert

    vanilla = save_vanilla(family, "AutoModelForSequenceClassification", tmp_path / "source").eval()
    result = convert(tmp_path / "source", tmp_path / "out", mix_init="last", show_progress=False, log=lambda *_: None)
    assert result.task == "sequence-classification" and result.plan.dropped == {}
    assert result.verification["logits_max_abs_diff"] <= 1e-5
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["backbone_model_type"] == family
    assert saved["architectures"] == [bermo_family_classes(family)["AutoModelForSequenceClassification"].__name__]
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    inputs = inputs_for("AutoModelForSequenceClassification")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, vanilla(**inputs).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["electra", "modernbert"])
def test_conversion_of_a_pretraining_checkpoint_drops_its_head(family, tmp_path):
    from bermo.conversion import convert

    save_vanilla(family, "AutoModelForMaskedLM", tmp_path / "source")
    result = convert(tmp_path / "source", tmp_path / "out", task="token-classification", num_labels=5,
                     show_progress=False, log=lambda *_: None)
    assert result.plan.dropped and set(result.plan.dropped.values()) == {
        "head tensors of the source (pretraining or another task)"}
    assert result.verification["hidden_states_max_abs_diff"] <= 1e-5
    model = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "out")
    assert model.config.num_labels == 5


@pytest.mark.parametrize("model_type", ["gpt2", "t5"])
def test_conversion_refuses_decoders_and_encoder_decoders_in_one_line(model_type, tmp_path, capsys):
    from bermo.conversion import main

    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, vocab_size=99, n_layer=2, n_embd=32, n_head=4,
                                               d_model=32, num_layers=2, num_heads=4, d_ff=37, d_kv=8)
    transformers.AutoModel.from_config(config).save_pretrained(tmp_path / "source")
    capsys.readouterr()
    assert main([str(tmp_path / "source"), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert f"model_type '{model_type}' is not supported" in error and "roberta, xlm-roberta, electra" in error
    assert not (tmp_path / "out").exists()


def test_conversion_refuses_more_mixed_layers_than_the_family_has(tmp_path, capsys):
    from bermo.conversion import main

    save_vanilla("distilbert", "AutoModel", tmp_path / "source")
    capsys.readouterr()
    assert main([str(tmp_path / "source"), str(tmp_path / "out"), "--mix-layers", "0", "5"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "mix_layers index 5 is out of range for 3 layers" in error
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_roberta(minilm_path, tmp_path_factory):
    """A tiny random RoBERTa checkpoint with the MiniLM tokenizer (a WordPiece vocabulary: the mechanics are the same)."""
    import shutil

    folder = tmp_path_factory.mktemp("tiny-roberta")
    torch.manual_seed(0)
    config = tiny_family_config("roberta", vocab_size=30522, max_position_embeddings=128, pad_token_id=0)
    transformers.RobertaForMaskedLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path / name, folder / name)
    return folder


@pytest.mark.parametrize("model_type", ["bermo", "base"])
def test_finetune_a_roberta_checkpoint_as_bermo_or_as_roberta(tiny_roberta, model_type, tmp_path):
    from bermo.training import main

    from conftest import REPO_ROOT

    sample = REPO_ROOT / "data" / "sst2_sample"
    out = tmp_path / "out"
    code = main(["--model_name_or_path", str(tiny_roberta), "--output_dir", str(out), "--model_type", model_type,
                 "--task_name", "sst2", "--glue_dir", str(sample), "--max_length", "32",
                 "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "64", "--learning_rate", "1e-3",
                 "--max_train_steps", "4", "--eval_steps", "4", "--seed", "3"])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(record["split"] == "validation" and 0 <= record["accuracy"] <= 1 for record in records)
    if model_type == "bermo":
        assert config["model_type"] == "bermo" and config["backbone_model_type"] == "roberta"
        assert config["architectures"] == ["BermoRobertaForSequenceClassification"]
        assert (out / "families_bermo.py").is_file() and (out / "layer_mix.json").is_file()
        from huggingface_hub import ModelCard

        card = ModelCard.load(out / "README.md")  # fine-tuning's card names the family
        assert card.data.tags == ["bermo", "roberta", "custom_code", "text-classification"]
        assert "This model's encoder is **RoBERTa**" in card.text
    else:
        assert config["model_type"] == "roberta" and config["architectures"] == ["RobertaForSequenceClassification"]


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "electra", "deberta-v2"])
def test_unstructured_pruning_masks_the_described_encoder_linears(family):
    from bermo.pruning import count_zeros
    from bermo.pruning.patching import export_masked_model, mask_encoder_linears

    _, model = vanilla_and_bermo(family, "AutoModelForSequenceClassification", mix_init="last")
    masked = mask_encoder_linears(model, "magnitude")
    assert len(masked) == 6 * 3  # query, key, value, attention output, intermediate, output in each of 3 layers
    for module in masked:
        module.keep = module.weight.numel() // 2
    inputs = inputs_for("AutoModelForSequenceClassification")
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
        plain = export_masked_model(model)
        torch.testing.assert_close(plain(**inputs).logits, expected)
    counts = count_zeros(plain.state_dict())
    assert counts["zero_weights"] >= counts["encoder_matrix_weights"] // 2


@pytest.mark.parametrize("family", ["distilbert", "modernbert"])
def test_unstructured_pruning_refuses_families_whose_layers_are_not_described(family):
    from bermo.pruning.patching import mask_encoder_linears

    _, model = vanilla_and_bermo(family, "AutoModelForSequenceClassification")
    with pytest.raises(ValueError, match="described for BERT, RoBERTa, XLM-R, ELECTRA and DeBERTa-v2"):
        mask_encoder_linears(model, "magnitude")


@pytest.mark.parametrize("family", FAMILIES)
def test_strict_export_matches_eager(family):
    _, model = vanilla_and_bermo(family, "AutoModelForSequenceClassification", mix_init="last:0.5")
    inputs = inputs_for("AutoModelForSequenceClassification")
    with torch.no_grad():
        eager = model(**inputs).logits
    exported = torch.export.export(model, (), dict(inputs), strict=True)
    torch.testing.assert_close(exported.module()(**inputs).logits, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_runs_in_onnxruntime_with_the_same_logits(family, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    _, model = vanilla_and_bermo(family, "AutoModelForTokenClassification", mix_init="last:0.5")
    inputs = inputs_for("AutoModelForTokenClassification")
    with torch.no_grad():
        eager = model(**inputs).logits
    path = tmp_path / "bermo.onnx"
    torch.onnx.export(model, (), str(path), kwargs=dict(inputs), input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], dynamo=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {name: tensor.numpy() for name, tensor in inputs.items()})
    # compared where there are tokens: at padding, a query with no key in its window (ModernBERT's sliding window)
    # has no defined output, and runtimes differ there
    kept = inputs["attention_mask"].bool()
    torch.testing.assert_close(torch.from_numpy(logits)[kept], eager[kept], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["roberta", "modernbert"])
def test_gradient_checkpointing_flag_of_a_config_reaches_the_mixing_backbone(family):
    config = BermoConfig.for_backbone(tiny_family_config(family, num_labels=3))
    config.gradient_checkpointing = True  # (the old way: post_init turns it on)
    model = bermo_family_classes(family)["AutoModelForSequenceClassification"](config)
    assert model.is_gradient_checkpointing and model.base_model.is_gradient_checkpointing


def test_modernbert_config_holds_both_spellings_of_its_layer_pattern_and_rotary_bases():
    """transformers 5 spells them `layer_types`/`rope_parameters`, 4.x `global_attn_every_n_layers`/`global_rope_theta`/
    `local_rope_theta`: a BERMo config completes either with the other, so a checkpoint is the same model under both
    (the 4.57 side is checked by the remote-code round trip)."""
    pattern = ["full_attention", "sliding_attention", "full_attention"]
    config = BermoConfig.for_backbone(tiny_family_config("modernbert"))  # global_attn_every_n_layers=2
    assert config.layer_types == pattern and config.global_attn_every_n_layers == 2
    assert config.global_rope_theta == config.rope_parameters["full_attention"]["rope_theta"]
    assert config.local_rope_theta == config.rope_parameters["sliding_attention"]["rope_theta"]
    # as written under transformers 4.x (only its spellings), with other rotary bases
    fields = {key: value for key, value in config.to_dict().items() if key not in ("layer_types", "rope_parameters")}
    fields.update(global_rope_theta=1000.0, local_rope_theta=100.0)
    written_by_4 = BermoConfig.from_dict(fields)
    assert written_by_4.layer_types == pattern
    assert written_by_4.rope_parameters["full_attention"]["rope_theta"] == 1000.0
    assert written_by_4.rope_parameters["sliding_attention"]["rope_theta"] == 100.0
    model = bermo_family_classes("modernbert")["AutoModel"](written_by_4)
    assert [layer.attention_type for layer in model.layers] == pattern
    # a layer pattern that is not one global layer every n layers stays as it is where transformers 5 reads it
    irregular = BermoConfig.for_backbone(tiny_family_config("modernbert", layer_types=pattern[::-1][1:] + ["sliding_attention"]))
    assert irregular.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
