"""transformers' own common model tests (`ModelTesterMixin`) run against the five BERMo classes.

Modelled on transformers' `tests/models/bert/test_modeling_bert.py`: a tiny-config `BermoModelTester`, and a
`unittest.TestCase` that mixes in `ModelTesterMixin` from the `tests/test_modeling_common.py` of the installed
transformers version's sdist. `scripts/transformers_common_tests.sh` downloads that sdist and runs this file; the main
test run does not collect this folder (tests/conftest.py), and without the sdist the module is skipped.
"""

import unittest
from unittest import mock

import pytest

from sdist_tests import SDIST_TESTS_ENV, load_test_modeling_common, sdist_tests_dir

if sdist_tests_dir() is None:
    pytest.skip(
        f"{SDIST_TESTS_ENV} is not set: run scripts/transformers_common_tests.sh, which downloads the "
        "transformers sdist",
        allow_module_level=True,
    )

import torch  # noqa: E402
from transformers.models.auto import modeling_auto  # noqa: E402
from transformers.testing_utils import require_torch, torch_device  # noqa: E402

import bermo  # noqa: E402

common = load_test_modeling_common(sdist_tests_dir())
ModelTesterMixin = common.ModelTesterMixin
ids_tensor = common.ids_tensor
random_attention_mask = common.random_attention_mask

# `ModelTesterMixin` recognizes a head (for the multiple-choice input layout, the labels it adds, the base model it
# leaves out of the training tests, ...) by the class name, looked up in the `*_MAPPING_NAMES` tables of transformers'
# Auto classes. A built-in model is listed there; BERMo registers with the Auto classes at run time instead
# (`AutoModel.register`, which those tables do not see). The tester lists BERMo's classes in them while it runs.
AUTO_MAPPING_NAMES = {
    "MODEL_MAPPING_NAMES": bermo.BermoModel,
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": bermo.BermoForSequenceClassification,
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": bermo.BermoForTokenClassification,
    "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES": bermo.BermoForQuestionAnswering,
    "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES": bermo.BermoForMultipleChoice,
}


# BERT's tester's tiny configuration (transformers' `BertModelTester`), passed to BermoConfig as they are...
CONFIG_DEFAULTS = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=512,
    type_vocab_size=16,
    initializer_range=0.02,
    mix_layers=None,
)
# ...and the input shapes and labels the mixin reads from the tester
INPUT_DEFAULTS = dict(
    batch_size=13,
    seq_length=7,
    is_training=True,
    use_input_mask=True,
    use_token_type_ids=True,
    use_labels=True,
    type_sequence_label_size=2,
    num_labels=3,
    num_choices=4,
)


class BermoModelTester:
    """A tiny BERMo configuration and random inputs, as transformers' `BertModelTester` makes them; every default
    above can be overridden by keyword and is an attribute, as the mixin expects."""

    def __init__(self, parent, **overrides):
        unknown = set(overrides) - set(CONFIG_DEFAULTS) - set(INPUT_DEFAULTS)
        if unknown:
            raise TypeError(f"BermoModelTester: unknown settings {sorted(unknown)}")
        self.parent = parent
        for name, value in {**CONFIG_DEFAULTS, **INPUT_DEFAULTS, **overrides}.items():
            setattr(self, name, value)

    def get_config(self):
        return bermo.BermoConfig(**{name: getattr(self, name) for name in CONFIG_DEFAULTS})

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        input_mask = random_attention_mask([self.batch_size, self.seq_length]) if self.use_input_mask else None
        token_type_ids = None
        if self.use_token_type_ids:
            token_type_ids = ids_tensor([self.batch_size, self.seq_length], self.type_vocab_size)
        sequence_labels = token_labels = choice_labels = None
        if self.use_labels:
            sequence_labels = ids_tensor([self.batch_size], self.type_sequence_label_size)
            token_labels = ids_tensor([self.batch_size, self.seq_length], self.num_labels)
            choice_labels = ids_tensor([self.batch_size], self.num_choices)
        config = self.get_config()
        return config, input_ids, token_type_ids, input_mask, sequence_labels, token_labels, choice_labels

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, token_type_ids, input_mask, *_ = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": input_mask}

    def _eval_model(self, model_class, config):
        return model_class(config).to(torch_device).eval()

    def create_and_check_model(self, config, input_ids, token_type_ids, input_mask, *labels):
        model = self._eval_model(bermo.BermoModel, config)
        for result in (
            model(input_ids, attention_mask=input_mask, token_type_ids=token_type_ids),
            model(input_ids, token_type_ids=token_type_ids),
            model(input_ids),
        ):
            self.parent.assertEqual(
                result.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size)
            )
            self.parent.assertEqual(result.pooler_output.shape, (self.batch_size, self.hidden_size))

    def create_and_check_for_sequence_classification(
        self, config, input_ids, token_type_ids, input_mask, sequence_labels, token_labels, choice_labels
    ):
        config.num_labels = self.num_labels
        model = self._eval_model(bermo.BermoForSequenceClassification, config)
        result = model(input_ids, attention_mask=input_mask, token_type_ids=token_type_ids, labels=sequence_labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels))
        self.parent.assertTrue(torch.isfinite(result.loss))

    def create_and_check_for_token_classification(
        self, config, input_ids, token_type_ids, input_mask, sequence_labels, token_labels, choice_labels
    ):
        config.num_labels = self.num_labels
        model = self._eval_model(bermo.BermoForTokenClassification, config)
        result = model(input_ids, attention_mask=input_mask, token_type_ids=token_type_ids, labels=token_labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.seq_length, self.num_labels))
        self.parent.assertTrue(torch.isfinite(result.loss))

    def create_and_check_for_question_answering(
        self, config, input_ids, token_type_ids, input_mask, sequence_labels, token_labels, choice_labels
    ):
        model = self._eval_model(bermo.BermoForQuestionAnswering, config)
        result = model(
            input_ids,
            attention_mask=input_mask,
            token_type_ids=token_type_ids,
            start_positions=sequence_labels,
            end_positions=sequence_labels,
        )
        self.parent.assertEqual(result.start_logits.shape, (self.batch_size, self.seq_length))
        self.parent.assertEqual(result.end_logits.shape, (self.batch_size, self.seq_length))
        self.parent.assertTrue(torch.isfinite(result.loss))

    def create_and_check_for_multiple_choice(
        self, config, input_ids, token_type_ids, input_mask, sequence_labels, token_labels, choice_labels
    ):
        model = self._eval_model(bermo.BermoForMultipleChoice, config)

        def per_choice(tensor):
            return tensor.unsqueeze(1).expand(-1, self.num_choices, -1).contiguous()

        result = model(
            per_choice(input_ids),
            attention_mask=per_choice(input_mask),
            token_type_ids=per_choice(token_type_ids),
            labels=choice_labels,
        )
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_choices))
        self.parent.assertTrue(torch.isfinite(result.loss))


@require_torch
class BermoModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = tuple(AUTO_MAPPING_NAMES.values())
    # BERMo's `_init_weights` must initialize every parameter, the mix included (the mixin would skip this check for
    # models older than 2023, judged by a copyright line that our files do not have).
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        for table, model_class in AUTO_MAPPING_NAMES.items():
            entry = {bermo.BermoConfig.model_type: model_class.__name__}
            patcher = mock.patch.dict(getattr(modeling_auto, table), entry)
            patcher.start()
            cls.addClassCleanup(patcher.stop)

    def setUp(self):
        self.model_tester = BermoModelTester(self)

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_for_sequence_classification(self):
        self.model_tester.create_and_check_for_sequence_classification(*self.model_tester.prepare_config_and_inputs())

    def test_for_token_classification(self):
        self.model_tester.create_and_check_for_token_classification(*self.model_tester.prepare_config_and_inputs())

    def test_for_question_answering(self):
        self.model_tester.create_and_check_for_question_answering(*self.model_tester.prepare_config_and_inputs())

    def test_for_multiple_choice(self):
        self.model_tester.create_and_check_for_multiple_choice(*self.model_tester.prepare_config_and_inputs())

    # Two common tests whose own skip message would be wrong for BERMo; the reason, stated:
    def test_sdpa_can_dispatch_composite_models(self):
        self.skipTest(
            "not a composite model (one config, no sub-models); BERMo's SDPA dispatch is checked by "
            "test_sdpa_can_dispatch_non_composite_models"
        )

    def test_resize_position_vector_embeddings(self):
        self.skipTest(
            "BERT's learned absolute position embeddings, which BERMo reuses, have no resize_position_embeddings "
            "(BERT's own tester does not run this test either)"
        )



@require_torch
class BermoPartialMixModelTest(BermoModelTest):
    """The same tests on a BERMo that mixes below its top layer (`mix_layers=[0, 1]` of 2 layers).

    By design (`BermoConfig.mix_layers`), BERMo builds and runs only the layers up to the highest mixed one: a layer
    above it could not change any output, and its parameters would get no gradient (which DDP refuses). This model
    therefore has one encoder layer, not `num_hidden_layers` = 2.
    """

    NOT_BUILT = (
        "BERMo builds only the layers up to the highest mixed one (BermoConfig.mix_layers): with mix_layers=[0, 1] "
        "of 2 layers, layer 2 does not exist"
    )

    def setUp(self):
        self.model_tester = BermoModelTester(self, mix_layers=[0, 1])

    def test_hidden_states_output(self):
        self.skipTest(f"{self.NOT_BUILT}, so hidden_states are h_0..h_1, not num_hidden_layers + 1 = 3 of them")

    def test_attention_outputs(self):
        self.skipTest(f"{self.NOT_BUILT}, so there is one attention map, not num_hidden_layers = 2")

    def test_can_capture_specific_layers_hidden_states(self):
        self.skipTest(f"{self.NOT_BUILT}, so the output of layer 2 cannot be captured")
