"""transformers' own common model tests (`ModelTesterMixin`) on BERMo's RoBERTa, DeBERTa-v2 and ModernBERT classes.

The same set-up as test_bermo_common.py (BERT-based BERMo): a tiny-config tester, transformers' `ModelTesterMixin`
from the installed version's sdist, and BERMo's classes of the family listed in the Auto tables' names for the
duration of each test class (one family at a time: the tables map the one model_type "bermo" to one class each).
"""

import unittest
from unittest import mock

import pytest

from sdist_tests import SDIST_TESTS_ENV, load_test_modeling_common, sdist_tests_dir

if sdist_tests_dir() is None:
    pytest.skip(f"{SDIST_TESTS_ENV} is not set: run scripts/transformers_common_tests.sh", allow_module_level=True)

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.models.auto import modeling_auto  # noqa: E402
from transformers.testing_utils import require_torch, torch_device  # noqa: E402

import bermo  # noqa: E402
from bermo.modeling.families_bermo import bermo_family_classes  # noqa: E402

common = load_test_modeling_common(sdist_tests_dir())
ModelTesterMixin = common.ModelTesterMixin
ids_tensor = common.ids_tensor
random_attention_mask = common.random_attention_mask

TABLES = {
    "AutoModel": "MODEL_MAPPING_NAMES",
    "AutoModelForSequenceClassification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForTokenClassification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForQuestionAnswering": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    "AutoModelForMultipleChoice": "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES",
}
SHAPE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=512)
FAMILY_FIELDS = {
    "roberta": dict(type_vocab_size=16, pad_token_id=1),
    "deberta-v2": dict(relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16,
                       max_relative_positions=32, norm_rel_ebd="layer_norm", type_vocab_size=16),
    # a window as long as the inputs: with a shorter one, a left-padded position can see no key at all, whose output
    # eager and SDPA attention define differently (the sliding window itself is tested in tests/test_families.py)
    "modernbert": dict(local_attention=16, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                       sep_token_id=2),
}


class BermoFamilyModelTester:
    """A tiny BERMo configuration of one family and random inputs (the attributes the mixin reads)."""

    batch_size, seq_length, is_training, num_labels, num_choices = 13, 7, True, 3, 4

    def __init__(self, parent, family):
        self.parent, self.family = parent, family
        for name, value in {**SHAPE, **FAMILY_FIELDS[family]}.items():
            setattr(self, name, value)
        self.uses_token_types = family != "modernbert"

    def get_config(self):
        backbone = transformers.AutoConfig.for_model(self.family, **SHAPE, **FAMILY_FIELDS[self.family])
        return bermo.BermoConfig.for_backbone(backbone)

    def prepare_config_and_inputs_for_common(self):
        inputs = {
            # no padding token among the ids: RoBERTa numbers positions from the ids, skipping padding
            "input_ids": ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 3) + 3,
            "attention_mask": random_attention_mask([self.batch_size, self.seq_length]),
        }
        if self.uses_token_types:
            inputs["token_type_ids"] = ids_tensor([self.batch_size, self.seq_length], self.type_vocab_size)
        return self.get_config(), inputs


def family_test_case(family):
    classes = bermo_family_classes(family)

    @require_torch
    class BermoFamilyModelTest(ModelTesterMixin, unittest.TestCase):
        all_model_classes = tuple(classes.values())
        test_can_init_all_missing_weights_before_2023 = True

        @classmethod
        def setUpClass(cls):
            super().setUpClass()
            for auto_class, table in TABLES.items():
                patcher = mock.patch.dict(getattr(modeling_auto, table), {"bermo": classes[auto_class].__name__})
                patcher.start()
                cls.addClassCleanup(patcher.stop)

        def setUp(self):
            self.model_tester = BermoFamilyModelTester(self, family)

        def test_model(self):
            config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
            model = classes["AutoModel"](config).to(torch_device).eval()
            with torch.no_grad():
                output = model(**inputs)
            self.assertEqual(output.last_hidden_state.shape,
                             (self.model_tester.batch_size, self.model_tester.seq_length, self.model_tester.hidden_size))

        def test_sdpa_can_dispatch_composite_models(self):
            self.skipTest("not a composite model (one config, no sub-models)")

        def test_resize_position_vector_embeddings(self):
            self.skipTest("the family's own position embeddings: not resized by its own tester either")

        if family == "deberta-v2":

            def test_training_gradient_checkpointing_use_reentrant_true(self):
                self.skipTest(
                    "DeBERTa-v3's layer-normed relative embeddings (norm_rel_ebd='layer_norm') are computed once and "
                    "passed to every layer, which reentrant checkpointing backpropagates through twice: transformers' "
                    "own DebertaV2ForSequenceClassification fails the same way (non-reentrant checkpointing passes)"
                )

    BermoFamilyModelTest.__name__ = BermoFamilyModelTest.__qualname__ = f"Bermo{classes['AutoModel'].__name__[5:-5]}ModelTest"
    return BermoFamilyModelTest


BermoRobertaModelTest = family_test_case("roberta")
BermoDebertaV2ModelTest = family_test_case("deberta-v2")
BermoModernBertModelTest = family_test_case("modernbert")
