"""Model cards of BERMo checkpoints on encoder families other than BERT: bermo-convert's and fine-tuning's cards name
the family, tag its model_type, record the source as base_model, and say what the mix reads where it differs from
BERT; a BERT checkpoint's card keeps BERT's wording."""

import types

import pytest
import torch
import transformers
from huggingface_hub import ModelCard

from bermo import BermoConfig
from bermo.modeling.families_bermo import bermo_family_classes

from conftest import TINY_BERT, tiny_family_config

# family -> (its name in the card, the sentence on what the mix reads differently, or None)
FAMILY_TEXT = {
    "roberta": ("RoBERTa", None),
    "electra": ("ELECTRA", "h<sub>0</sub> is taken after `embeddings_project`"),
    "modernbert": ("ModernBERT", "every representation is mixed after its `final_norm`"),
}
# "BERT" where a card on another family may still say it: the paper (BERMo is BERT with a mix; its title)
PAPER_BERT = ("is BERT whose task heads read", "BERMo: What can BERT learn from ELMo?")


def save_source(family, auto_class, folder, **overrides):
    torch.manual_seed(0)
    if family == "bert":
        config = transformers.BertConfig(**TINY_BERT, num_labels=3, **overrides)
    else:
        config = tiny_family_config(family, num_labels=3, **overrides)
    getattr(transformers, auto_class).from_config(config).save_pretrained(folder)


def bert_left(text, family_name):
    """The text's "BERT"s that neither describe the paper nor are part of the family's name."""
    for allowed in PAPER_BERT:
        text = text.replace(allowed, "")
    return text.replace(family_name, "").count("BERT")


def convert_with_cli(source, out, *arguments):
    from bermo.conversion import main

    assert main([str(source), str(out), *arguments]) == 0
    return ModelCard.load(out / "README.md")


@pytest.mark.parametrize("family", list(FAMILY_TEXT))
def test_converted_card_names_the_family_its_tag_and_the_source(family, tmp_path):
    name, note = FAMILY_TEXT[family]
    save_source(family, "AutoModelForSequenceClassification", tmp_path / "source")
    card = convert_with_cli(tmp_path / "source", tmp_path / "out", "--base-model", f"someone/tiny-{family}")
    assert card.data.base_model == f"someone/tiny-{family}"
    assert card.data.tags == ["bermo", family, "custom_code", "text-classification"]
    assert f"This checkpoint's encoder is\n**{name}**: its heads read m where they read {name}'s last hidden state." \
        in card.text
    assert "[`someone/tiny-" + family + "`](https://huggingface.co/someone/tiny-" + family + ")" in card.text
    assert f"`{bermo_family_classes(family)['AutoModelForSequenceClassification'].__name__}`" in card.text
    for _, other_note in FAMILY_TEXT.values():
        if other_note is not None:
            assert (other_note in card.text) == (other_note == note)
    assert "BERT's pooler" not in card.text and bert_left(card.text, name) == 0


def test_bert_card_keeps_the_bert_wording(tmp_path):
    """The control: a BERT source's card is still BERT's (tag, pooler sentence, no family sentence)."""
    save_source("bert", "AutoModelForSequenceClassification", tmp_path / "source")
    card = convert_with_cli(tmp_path / "source", tmp_path / "out", "--base-model", "someone/tiny-bert")
    assert card.data.tags == ["bermo", "bert", "custom_code", "text-classification"]
    assert "BERT's pooler reads m's first\ntoken; token-level heads read m." in card.text
    assert "encoder is" not in card.text


def test_decoder_note_names_the_family(tmp_path):
    """A RoBERTa saved as a decoder: the card's note says it now attends as RoBERTa's encoder does, not BERT's."""
    save_source("roberta", "AutoModelForCausalLM", tmp_path / "source", is_decoder=True)
    card = convert_with_cli(tmp_path / "source", tmp_path / "out")
    assert "attends in both directions, as RoBERTa's encoder does" in card.text
    assert card.data.tags == ["bermo", "roberta", "custom_code", "feature-extraction"]
    assert bert_left(card.text, "RoBERTa") == 0


@pytest.mark.parametrize("family", ["roberta", "modernbert"])
def test_finetuned_card_names_the_family_and_the_converted_folders_source(family, tmp_path):
    from bermo.model_card import finetuned_model_card

    name, note = FAMILY_TEXT[family]
    save_source(family, "AutoModel", tmp_path / "source")
    convert_with_cli(tmp_path / "source", tmp_path / "converted", "--base-model", f"someone/tiny-{family}")
    torch.manual_seed(0)
    config = BermoConfig.for_backbone(tiny_family_config(family, num_labels=2))
    model = bermo_family_classes(family)["AutoModelForSequenceClassification"](config)
    card = finetuned_model_card(
        model=model, task_data=types.SimpleNamespace(name="sst2"), base_model=str(tmp_path / "converted"),
        final_metrics={"validation": {"accuracy": 0.5}}, hyperparameters={"learning_rate": 1e-3},
        has_layer_plot=False, train_size=10,
    )
    card = ModelCard(str(card))  # parsed back from its text, as the Hub reads it
    assert card.data.base_model == f"someone/tiny-{family}"
    assert card.data.tags == ["bermo", family, "custom_code", "text-classification"]
    assert card.data.model_name == f"tiny-{family}-bermo-sst2"
    assert f"This model's encoder is **{name}**: its head reads m\nwhere it reads {name}'s last hidden state." \
        in card.text
    assert (note in card.text) if note else "embeddings_project" not in card.text
    assert bert_left(card.text, name) == 0
