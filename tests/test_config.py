"""BermoConfig: defaults, index resolution, serialization and clear errors for bad values."""

import json

import pytest

from bermo import BermoConfig


def test_defaults_are_bert_base_with_a_uniform_mix_of_every_layer():
    config = BermoConfig()
    assert config.model_type == "bermo"
    assert (config.hidden_size, config.num_hidden_layers) == (768, 12)
    assert config.mix_layer_indices == list(range(13))
    assert config.initial_mix_logits() == [0.0] * 13
    assert config.mix_trainable is True and config.mix_layer_norm is False and config.mix_dropout == 0.0


def test_negative_indices_resolve_and_sort():
    config = BermoConfig(num_hidden_layers=4, mix_layers=[-1, 0, 2])
    assert config.mix_layer_indices == [0, 2, 4]
    last = BermoConfig(num_hidden_layers=4, mix_layers=[-1, 0, 2], mix_init="last").initial_mix_logits()
    assert last[-1] == 0.0 and all(value < -10 for value in last[:-1])


def test_round_trip_through_json(tmp_path):
    config = BermoConfig(num_hidden_layers=2, mix_layers=[1, 2], mix_init=[0.5, -0.5], mix_dropout=0.2, num_labels=3)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "bermo" and saved["mix_init"] == [0.5, -0.5]
    assert saved["auto_map"]["AutoConfig"] == "configuration_bermo.BermoConfig"
    assert (tmp_path / "configuration_bermo.py").is_file()
    loaded = BermoConfig.from_pretrained(tmp_path)
    assert loaded.mix_layers == [1, 2] and loaded.mix_init == [0.5, -0.5] and loaded.mix_dropout == 0.2
    assert loaded.num_labels == 3


@pytest.mark.parametrize("count, weight", [(13, 0.9), (13, 0.5), (7, 0.95), (3, 0.2), (2, 0.8)])
def test_last_biased_init_puts_exactly_p_on_the_last_and_spreads_the_rest(count, weight):
    import torch

    config = BermoConfig(num_hidden_layers=count - 1, mix_init=f"last:{weight}")
    softmax = torch.softmax(torch.tensor(config.initial_mix_logits(), dtype=torch.float64), dim=0)
    assert softmax[-1].item() == pytest.approx(weight, abs=1e-12)
    assert torch.allclose(softmax[:-1], torch.full((count - 1,), (1 - weight) / (count - 1), dtype=torch.float64))
    assert BermoConfig.from_dict(config.to_dict()).mix_init == f"last:{weight}"
    # a single mixed representation holds all the weight whatever P
    assert BermoConfig(num_hidden_layers=2, mix_layers=[-1], mix_init="last:0.3").initial_mix_logits() == [0.0]


@pytest.mark.parametrize("value", ["last:0", "last:1", "last:1.5", "last:-0.2", "last:", "last:x", "first:0.5",
                                   "last:nan"])
def test_bad_last_biased_init_is_one_line_naming_mix_init(value):
    with pytest.raises(ValueError, match="mix_init") as error:
        BermoConfig(num_hidden_layers=4, mix_init=value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(mix_layers=[0, 5]), "mix_layers"),
        (dict(mix_layers=[-6]), "mix_layers"),
        (dict(mix_layers=[]), "mix_layers"),
        (dict(mix_layers=[1, -4]), "mix_layers"),  # layer 1 twice
        (dict(mix_layers=[1.5]), "mix_layers"),
        (dict(mix_init="first"), "mix_init"),
        (dict(mix_init=[0.0, 0.0]), "mix_init"),  # 5 representations are mixed
        (dict(mix_init=[0.0, 0.0, float("nan"), 0.0, 0.0]), "mix_init"),
        (dict(mix_trainable="yes"), "mix_trainable"),
        (dict(mix_layer_norm=1), "mix_layer_norm"),
        (dict(mix_dropout=1.0), "mix_dropout"),
        (dict(mix_dropout=-0.1), "mix_dropout"),
        (dict(is_decoder=True), "is_decoder"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    kwargs.setdefault("num_hidden_layers", 4)
    with pytest.raises(ValueError, match=field):
        BermoConfig(**kwargs)


@pytest.mark.parametrize("model_type", ["gpt2", "t5"])
def test_a_checkpoint_of_an_unsupported_family_is_refused(tmp_path, model_type):
    from transformers import AutoConfig

    AutoConfig.for_model(model_type).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"model_type is '{model_type}'.*roberta, xlm-roberta, electra"):
        BermoConfig.from_pretrained(tmp_path)


def test_a_supported_family_checkpoint_gives_its_fields_flat(tmp_path):
    from transformers import DistilBertConfig

    DistilBertConfig(dim=48, n_layers=2, n_heads=4, hidden_dim=64).save_pretrained(tmp_path)
    config = BermoConfig.from_pretrained(tmp_path)
    assert config.backbone_model_type == "distilbert"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (48, 2, 4)
    assert (config.dim, config.n_layers, config.hidden_dim) == (48, 2, 64)
    reloaded = BermoConfig.from_dict(config.to_dict())
    assert reloaded.backbone_config().to_dict()["dim"] == 48


def test_an_unknown_backbone_is_refused_with_the_supported_list():
    with pytest.raises(ValueError, match="backbone_model_type 'gpt2'.*bert, roberta"):
        BermoConfig(backbone_model_type="gpt2")
