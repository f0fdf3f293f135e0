"""BERMo: BERT with an ELMo-style learned mix of all its layers, as a transformers model.

Importing the package registers `BermoConfig` and every BERMo model class with transformers' Auto classes.
"""

import transformers

from .modeling.configuration_bermo import BERMO_VERSION, BermoConfig
from .modeling.modeling_bermo import (
    BERMO_MODEL_CLASSES,
    BermoForMultipleChoice,
    BermoForQuestionAnswering,
    BermoForSequenceClassification,
    BermoForTokenClassification,
    BermoModel,
    BermoPreTrainedModel,
)

__version__ = BERMO_VERSION


def _register_with_auto_classes():
    transformers.AutoConfig.register(BermoConfig.model_type, BermoConfig, exist_ok=True)
    for model_class in BERMO_MODEL_CLASSES:
        getattr(transformers, model_class._auto_class).register(BermoConfig, model_class, exist_ok=True)


_register_with_auto_classes()

__all__ = [
    "BermoConfig",
    "BermoPreTrainedModel",
    "BermoModel",
    "BermoForSequenceClassification",
    "BermoForTokenClassification",
    "BermoForQuestionAnswering",
    "BermoForMultipleChoice",
    "__version__",
]
