"""BERMo on tiny random configs: the mix's maths, heads, losses, precision, attention backends, compile."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

from bermo import (
    BermoConfig,
    BermoForMultipleChoice,
    BermoForQuestionAnswering,
    BermoForSequenceClassification,
    BermoForTokenClassification,
    BermoModel,
)


def set_mix(model, logits, scale):
    with torch.no_grad():
        model.base_model.layer_mix.logits.copy_(torch.tensor(logits))
        model.base_model.layer_mix.scale.fill_(scale)


def expected_mix(hidden_states, indices, logits, scale, layer_norm=False):
    weights = torch.softmax(torch.tensor(logits), dim=0)
    total = 0
    for weight, index in zip(weights, indices):
        hidden = hidden_states[index]
        if layer_norm:
            hidden = torch.nn.functional.layer_norm(hidden, hidden.shape[-1:], eps=1e-12)
        total = total + weight * hidden
    return scale * total


@pytest.mark.parametrize(
    "mix_layers, layer_norm", [(None, False), ([0, -1, 2], False), ([-1], False), (None, True), ([1, 3], True)]
)
def test_last_hidden_state_is_the_scaled_softmax_mix(tiny_config_kwargs, tiny_inputs, mix_layers, layer_norm):
    config = BermoConfig(**tiny_config_kwargs, mix_layers=mix_layers, mix_layer_norm=layer_norm)
    torch.manual_seed(0)
    model = BermoModel(config).eval()
    logits = torch.linspace(-1, 1, len(config.mix_layer_indices)).tolist()
    set_mix(model, logits, 1.3)
    with torch.no_grad():
        output = model(**tiny_inputs, output_hidden_states=True)
    assert len(output.hidden_states) == config.num_hidden_layers + 1
    expected = expected_mix(output.hidden_states, config.mix_layer_indices, logits, 1.3, layer_norm)
    torch.testing.assert_close(output.last_hidden_state, expected, atol=1e-6, rtol=1e-5)
    # the pooler reads the mix's first token, not the last layer
    pooled = torch.tanh(model.pooler.dense(expected[:, 0]))
    torch.testing.assert_close(output.pooler_output, pooled, atol=1e-6, rtol=1e-5)
    weights, scale = model.layer_mix_weights()
    torch.testing.assert_close(weights, torch.softmax(torch.tensor(logits), 0))
    assert scale.item() == pytest.approx(1.3)


def test_hidden_states_are_only_returned_when_asked(tiny_config_kwargs, tiny_inputs):
    model = BermoModel(BermoConfig(**tiny_config_kwargs)).eval()
    with torch.no_grad():
        output = model(**tiny_inputs)
        first_only = model(**tiny_inputs, mix_first_token_only=True)
    assert output.hidden_states is None and output.attentions is None
    torch.testing.assert_close(first_only.last_hidden_state, output.last_hidden_state[:, :1])
    torch.testing.assert_close(first_only.pooler_output, output.pooler_output)


@pytest.mark.parametrize("mix_layers", [None, [0, 1]], ids=["all_layers", "top_layers_not_built"])
def test_hidden_state_indices_select_from_the_states_output_hidden_states_true_returns(
    tiny_config_kwargs, tiny_inputs, mix_layers
):
    # transformers 5 selects hidden states by index; with the top layers not built, -1 must still be the last state
    torch.manual_seed(0)
    config = BermoConfig(**tiny_config_kwargs, mix_layers=mix_layers, num_labels=2)
    model = BermoForSequenceClassification(config).eval()
    with torch.no_grad():
        every = model(**tiny_inputs, output_hidden_states=True).hidden_states
        count = len(every)
        assert count == max(config.mix_layer_indices) + 1
        cases = [([-1], {count - 1}), (-1, {count - 1}), ([0, -2], {0, count - 2}), ([count - 1], {count - 1}),
                 ([-count - 1], set()), ([count], set())]
        for selection, picked in cases:
            selected = model(**tiny_inputs, output_hidden_states=selection).hidden_states
            assert len(selected) == count, selection
            for index, state in enumerate(selected):
                if index in picked:
                    torch.testing.assert_close(state, every[index], atol=0, rtol=0, msg=f"{selection}: {index}")
                else:
                    assert state is None, (selection, index)


def test_backbone_equals_bert_and_every_mix_parameter_gets_a_gradient(tiny_config_kwargs, tiny_inputs, tmp_path):
    torch.manual_seed(0)
    bert = BertModel(BertConfig(**tiny_config_kwargs)).eval()
    bert.save_pretrained(tmp_path)
    model = BermoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        reference = bert(**tiny_inputs, output_hidden_states=True).hidden_states
    output = model(**tiny_inputs, output_hidden_states=True)
    for ours, theirs in zip(output.hidden_states, reference, strict=True):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    output.pooler_output.sum().backward()
    assert (model.layer_mix.logits.grad != 0).all() and (model.layer_mix.scale.grad != 0).all()


def test_mix_trainable_false_freezes_the_mix(tiny_config_kwargs):
    model = BermoModel(BermoConfig(**tiny_config_kwargs, mix_trainable=False))
    assert not model.layer_mix.logits.requires_grad and not model.layer_mix.scale.requires_grad


def test_layer_dropout_only_in_training_and_never_drops_every_layer(tiny_config_kwargs, tiny_inputs):
    config = BermoConfig(**tiny_config_kwargs, mix_dropout=0.9)
    torch.manual_seed(0)
    model = BermoModel(config)
    assert set(model.state_dict()) == set(BermoModel(BermoConfig(**tiny_config_kwargs)).state_dict())
    model.eval()
    with torch.no_grad():
        full = model(**tiny_inputs, output_hidden_states=True)
    expected = expected_mix(full.hidden_states, config.mix_layer_indices, [0.0] * 4, 1.0)
    torch.testing.assert_close(full.last_hidden_state, expected, atol=1e-6, rtol=1e-5)

    model.train()
    candidates = []  # every mix of a non-empty subset of the layers, uniform over that subset
    for subset in range(1, 16):
        members = [index for index in range(4) if subset >> index & 1]
        hidden = sum(full.hidden_states[index] for index in members) / len(members)
        candidates.append(hidden)
    seen_partial = False
    for _ in range(20):
        with torch.no_grad():
            mixed = model(**tiny_inputs).last_hidden_state
        assert torch.isfinite(mixed).all()
        matches = [i for i, candidate in enumerate(candidates) if torch.allclose(mixed, candidate, atol=1e-5)]
        assert matches, "a training forward must mix a non-empty subset of the layers"
        seen_partial |= matches[0] != 14
    assert seen_partial


def test_layer_dropout_is_finite_in_half_precision(tiny_config_kwargs, tiny_inputs):
    model = BermoModel(BermoConfig(**tiny_config_kwargs, mix_dropout=0.5)).to(torch.bfloat16).train()
    output = model(**tiny_inputs)
    assert output.last_hidden_state.dtype == torch.bfloat16 and torch.isfinite(output.last_hidden_state).all()
    output.last_hidden_state.float().sum().backward()
    assert torch.isfinite(model.layer_mix.logits.grad).all()


def bert_and_bermo_classifiers(tiny_config_kwargs, tmp_path, **config_kwargs):
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(**tiny_config_kwargs, **config_kwargs)).eval()
    bert.save_pretrained(tmp_path)
    bermo = BermoForSequenceClassification.from_pretrained(tmp_path, mix_init="last").eval()
    return bert, bermo


@pytest.mark.parametrize(
    "num_labels, labels",
    [
        (1, torch.tensor([0.5, -1.0, 2.0])),
        (3, torch.tensor([0, 2, 1])),
        (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])),
    ],
    ids=["regression", "single_label", "multi_label"],
)
def test_sequence_classification_losses_match_bert(tiny_config_kwargs, tiny_inputs, tmp_path, num_labels, labels):
    bert, bermo = bert_and_bermo_classifiers(tiny_config_kwargs, tmp_path, num_labels=num_labels)
    with torch.no_grad():
        theirs = bert(**tiny_inputs, labels=labels)
        ours = bermo(**tiny_inputs, labels=labels)
    assert ours.logits.shape == (3, num_labels)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=0)
    assert bermo.config.problem_type == bert.config.problem_type


def test_return_dict_false_gives_the_same_tuple(tiny_config_kwargs, tiny_inputs):
    model = BermoForSequenceClassification(BermoConfig(**tiny_config_kwargs, num_labels=2)).eval()
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        as_dict = model(**tiny_inputs, labels=labels, output_hidden_states=True)
        as_tuple = model(**tiny_inputs, labels=labels, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 3
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    assert len(as_tuple[2]) == 4
    base = BermoModel(BermoConfig(**tiny_config_kwargs)).eval()
    with torch.no_grad():
        last, pooled = base(**tiny_inputs, return_dict=False)
    assert last.shape == (3, 9, 32) and pooled.shape == (3, 32)


def test_token_classification_head(tiny_config_kwargs, tiny_inputs):
    model = BermoForTokenClassification(BermoConfig(**tiny_config_kwargs, num_labels=5)).eval()
    assert model.bert.pooler is None
    labels = torch.randint(0, 5, (3, 9))
    labels[tiny_inputs["attention_mask"] == 0] = -100
    output = model(**tiny_inputs, labels=labels)
    assert output.logits.shape == (3, 9, 5)
    mixed = model.bert(**tiny_inputs).last_hidden_state
    torch.testing.assert_close(output.logits, model.classifier(mixed))
    expected = torch.nn.functional.cross_entropy(output.logits.reshape(-1, 5), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(output.loss, expected)


def test_question_answering_head(tiny_config_kwargs, tiny_inputs):
    model = BermoForQuestionAnswering(BermoConfig(**tiny_config_kwargs)).eval()
    output = model(**tiny_inputs, start_positions=torch.tensor([1, 2, 30]), end_positions=torch.tensor([3, 4, 30]))
    assert output.start_logits.shape == (3, 9) and output.end_logits.shape == (3, 9)
    assert torch.isfinite(output.loss)  # positions past the sequence are clamped and ignored
    output.loss.backward()
    assert model.bert.layer_mix.logits.grad.abs().sum() > 0


def test_multiple_choice_head(tiny_config_kwargs, tiny_inputs):
    model = BermoForMultipleChoice(BermoConfig(**tiny_config_kwargs)).eval()
    choices = {name: tensor.unsqueeze(0).expand(2, -1, -1) for name, tensor in tiny_inputs.items()}
    output = model(**choices, labels=torch.tensor([0, 2]))
    assert output.logits.shape == (2, 3)
    with torch.no_grad():
        pooled = model.bert(**tiny_inputs).pooler_output
    torch.testing.assert_close(output.logits[0], model.classifier(pooled).view(-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, torch.tensor([0, 2])))


def test_sdpa_and_eager_attention_agree(tiny_config_kwargs, tiny_inputs, tmp_path):
    BermoForSequenceClassification(BermoConfig(**tiny_config_kwargs)).save_pretrained(tmp_path)
    outputs = {}
    for implementation in ("sdpa", "eager"):
        model = BermoForSequenceClassification.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        assert model.config._attn_implementation == implementation
        with torch.no_grad():
            outputs[implementation] = model(**tiny_inputs).logits
    torch.testing.assert_close(outputs["sdpa"], outputs["eager"], atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config_kwargs, tiny_inputs):
    torch.manual_seed(0)
    config = BermoConfig(**tiny_config_kwargs, num_labels=2)
    model = BermoForSequenceClassification(config).train()
    reference = BermoForSequenceClassification(config).train()
    reference.load_state_dict(model.state_dict())
    model.gradient_checkpointing_enable()
    assert model.bert.encoder.layer[0].gradient_checkpointing
    labels = torch.tensor([0, 1, 1])
    model(**tiny_inputs, labels=labels).loss.backward()
    reference(**tiny_inputs, labels=labels).loss.backward()
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-6, rtol=1e-5, msg=name)
    assert model.bert.layer_mix.logits.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_loading_keeps_the_mix_in_float32(tiny_config_kwargs, tiny_inputs, tmp_path, dtype):
    BermoForSequenceClassification(BermoConfig(**tiny_config_kwargs)).save_pretrained(tmp_path)
    model = BermoForSequenceClassification.from_pretrained(tmp_path, dtype=dtype).eval()
    assert model.bert.layer_mix.logits.dtype == torch.float32
    assert model.bert.encoder.layer[0].output.dense.weight.dtype == dtype
    with torch.no_grad():
        logits = model(**tiny_inputs).logits
    assert logits.dtype == dtype and torch.isfinite(logits).all()


def test_bf16_autocast_forward_and_backward(tiny_config_kwargs, tiny_inputs):
    model = BermoForSequenceClassification(BermoConfig(**tiny_config_kwargs)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(**tiny_inputs, labels=torch.tensor([0, 1, 0]))
    output.loss.backward()
    assert torch.isfinite(output.loss) and torch.isfinite(model.bert.layer_mix.scale.grad).all()
    with torch.no_grad():
        full = model.eval()(**tiny_inputs).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(**tiny_inputs).logits
    torch.testing.assert_close(half.float(), full, atol=0.05, rtol=0.05)


def test_torch_compile_matches_eager(tiny_config_kwargs, tiny_inputs):
    model = BermoForSequenceClassification(BermoConfig(**tiny_config_kwargs)).eval()
    compiled = torch.compile(model)
    with torch.no_grad():
        eager = model(**tiny_inputs).logits
        compiled_logits = compiled(**tiny_inputs).logits
    torch.testing.assert_close(compiled_logits, eager, atol=1e-5, rtol=1e-4)


def test_loading_a_bert_checkpoint_initializes_only_the_mix(tiny_config_kwargs, tmp_path):
    torch.manual_seed(0)
    bert = BertModel(BertConfig(**tiny_config_kwargs))
    bert.save_pretrained(tmp_path)
    for mix_init, expected in [("uniform", [0.25] * 4), ("last", [0.0, 0.0, 0.0, 1.0]), ([1.0, 0, 0, 0], None)]:
        model, info = BermoModel.from_pretrained(tmp_path, mix_init=mix_init, output_loading_info=True)
        assert sorted(info["missing_keys"]) == ["layer_mix.logits", "layer_mix.scale"]
        assert not info["unexpected_keys"] and not info["mismatched_keys"]
        weights, scale = model.layer_mix_weights()
        if expected is None:
            expected = torch.softmax(torch.tensor(mix_init), 0).tolist()
        torch.testing.assert_close(weights, torch.tensor(expected), atol=1e-8, rtol=0)
        assert scale.item() == 1.0
        for name, tensor in bert.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], tensor, atol=0, rtol=0)


def test_saved_mix_survives_a_round_trip(tiny_config_kwargs, tmp_path):
    model = BermoForSequenceClassification(BermoConfig(**tiny_config_kwargs))
    set_mix(model, [0.3, -0.2, 1.1, 0.7], 0.6)
    model.save_pretrained(tmp_path)
    loaded = BermoForSequenceClassification.from_pretrained(tmp_path)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, atol=0, rtol=0, msg=name)


def test_num_labels_mismatch_is_an_error_unless_ignored(tiny_config_kwargs, tmp_path):
    BertForSequenceClassification(BertConfig(**tiny_config_kwargs, num_labels=3)).save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match=r"classifier.weight: \(3, 32\) in the checkpoint, \(2, 32\) in the model"):
        BermoForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    model = BermoForSequenceClassification.from_pretrained(tmp_path, num_labels=2, ignore_mismatched_sizes=True)
    assert model.classifier.out_features == 2
