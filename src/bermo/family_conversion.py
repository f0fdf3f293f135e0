"""What `bermo-convert` needs to know about a checkpoint's encoder family, BERT's or another's.

`conversion.convert` runs the same steps for every family (read, plan, stream the tensors, verify, rename into place);
a `FamilyConversion` answers the family-specific questions: which BERMo and vanilla class does each task use, which
task does the source's architecture do, and where does each source tensor go. BERT keeps its own mapping
(`conversion.plan_conversion`: old `gamma`/`beta` names, bare backbone names); the other families are rename-free,
since BERMo keeps their state-dict names.
"""

import re

from .modeling.configuration_bermo import BACKBONE_MODEL_TYPES, BermoConfig
from .modeling.families_bermo import FAMILIES, bermo_family_classes

# bermo-convert's task name -> the Auto class of its head
TASK_AUTO_CLASSES = {
    "base": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "multiple-choice": "AutoModelForMultipleChoice",
}
# architectures whose head is for pretraining (dropped: the output is a BERMo base model), by class-name suffix
PRETRAINING_SUFFIXES = ("ForMaskedLM", "ForPreTraining", "ForCausalLM", "LMHeadModel", "ForNextSentencePrediction")


def unsupported_model_type(model_type, folder):
    """The one-line error for a checkpoint of a family BERMo does not support."""
    from .conversion import ConversionError

    return ConversionError(
        f"{folder}: model_type {model_type!r} is not supported; bermo-convert takes encoder checkpoints of the "
        f"families {', '.join(BACKBONE_MODEL_TYPES)} (decoder-only and encoder-decoder models are not encoders)"
    )


class FamilyConversion:
    """A non-BERT family: BERMo classes from `families_bermo`, names carried over unchanged."""

    def __init__(self, model_type):
        self.model_type = model_type
        self.family = FAMILIES[model_type]
        self.classes = bermo_family_classes(model_type)

    def model_class(self, task):
        return self.classes[TASK_AUTO_CLASSES[task]]

    def vanilla_class(self, task):
        return self.family.vanilla_class(TASK_AUTO_CLASSES[task])

    def config(self, fields, **mix):
        return BermoConfig(**fields, backbone_model_type=self.model_type, **mix)

    def infer_task(self, source_config, source_shapes):
        from .conversion import ConversionError

        architectures = source_config.get("architectures") or []
        for architecture in architectures:
            for task, auto_class in TASK_AUTO_CLASSES.items():
                if architecture == self.family.vanilla_class(auto_class).__name__:
                    return task, architecture
            if architecture.endswith(PRETRAINING_SUFFIXES) and architecture.startswith(self.family.name):
                return "base", architecture
        if architectures:
            raise ConversionError(f"source architecture {architectures[0]} is not supported; pass --task")
        return "base", self.vanilla_class("base").__name__

    def head_labels(self, source_config, source_task, task):
        """The label count of the source's fine-tuned head for `task`, or None."""
        labels = source_config.get("id2label")
        return len(labels) if task == source_task and task != "base" and labels else None

    def plan(self, source_shapes, target_model, task, keep_source_head):
        """Map the source's names onto the BERMo model's: the family's own names, so a source tensor goes to the same
        name (a bare base-model checkpoint's names under the head's prefix). Every source tensor is used or dropped
        with a reason, every target tensor is filled, new (the mix) or a head the source does not have."""
        from .conversion import ConversionError, ConversionPlan, complete_plan

        prefix = self.model_class("sequence-classification").base_model_prefix
        is_base = task == "base"
        backbone = target_model if is_base else getattr(target_model, prefix)
        children = tuple(f"{name}." for name, _ in backbone.named_children() if name != "layer_mix")
        layers = self.family.layers(backbone)
        layers_name = next(name for name, module in backbone.named_modules() if module is layers)
        ignored = [re.compile(pattern) for pattern in (self.vanilla_class(task)._keys_to_ignore_on_load_unexpected or [])]
        target_shapes = {name: tuple(tensor.shape) for name, tensor in target_model.state_dict().items()}
        plan, mismatched = ConversionPlan(), []
        for name, shape in source_shapes.items():
            bare = name.removeprefix(f"{prefix}.")
            in_backbone = bare != name or name.startswith(children)
            output = (bare if is_base else f"{prefix}.{bare}") if in_backbone else name
            if output in target_shapes and (in_backbone or keep_source_head):
                if tuple(shape) != target_shapes[output]:
                    mismatched.append(f"{name} {tuple(shape)} vs {target_shapes[output]}")
                else:
                    plan.sources[output] = name
            elif not in_backbone:
                plan.dropped[name] = "head tensors of the source (pretraining or another task)"
            elif bare.startswith(f"{layers_name}.") and int(bare.split(".")[len(layers_name.split("."))]) >= len(layers):
                plan.dropped[name] = "tensors of layers above the highest mixed one"
            elif bare.startswith("pooler."):
                plan.dropped[name] = "pooler tensors (the head has no pooler)"
            elif bare.endswith(("position_ids", "token_type_ids")) or any(pattern.search(name) for pattern in ignored):
                plan.dropped[name] = "buffers and tensors the family ignores on loading"
            else:
                raise ConversionError(f"source tensor {name} is not part of {self.model_type}: refusing to drop it silently")
        # the head (outside the base model), or a pooler, is initialized when the model loads
        return complete_plan(plan, mismatched, target_shapes, f"{prefix}.",
                             lambda output, bare: bare == output and not is_base or bare.startswith("pooler."))

    def comparable_hidden_states(self, model, hidden_states):
        """Our hidden states as the vanilla model returns them: ModernBERT's last one after its final norm."""
        normalize = self.family.normalization(model.base_model)
        if normalize is None or len(hidden_states) != model.config.num_hidden_layers + 1:
            return hidden_states
        return (*hidden_states[:-1], normalize(hidden_states[-1]))
