"""BERMo on the other encoder families: RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT, DeBERTa-v2 and ModernBERT.

One generic mix, one short description per family (`BermoFamily` below: where h_0 is, where the layers are and how
each is called, which attention-mask helper the family uses, what a representation is normalized with), and the
family's own modules for everything else. For each family:

- the backbone (`Bermo<Family>Model`, e.g. `BermoRobertaModel`) is the family's base model class with the mixed
  forward: it runs the family's embeddings and layers one after the other and adds each mixed representation to a
  running sum (`BermoMixAccumulator`), as `BermoModel` does for BERT: no hooks or attribute writes per call, no
  state kept between calls, one graph for `torch.compile(fullgraph=True)` and `torch.export`;
- each head (`Bermo<Family>ForSequenceClassification`, ...) is the family's own head class, whose base model is
  that backbone: the head's layers, losses (regression, multi-label), pooling and outputs are the family's, and
  read the mix where the family's head reads the last hidden state. The parameter names are the family's, so a
  vanilla checkpoint loads by name, with only the mix (`<prefix>.layer_mix.*`) new.

Family specifics: ELECTRA's h_0 is taken after `embeddings_project`. ModernBERT is pre-LN (its intermediate states
are the raw residual stream; only the last gets `final_norm`): every representation is normalized with its
`final_norm` before mixing, so the last one is exactly ModernBERT's output (and `mix_layer_norm` may add a
parameter-free layer norm on top). DeBERTa-v2 feeds the relative position embeddings to every layer and returns
hidden states itself (no `output_hidden_states=[...]` index lists): its layers are called with them, and hidden
states and attentions are collected here.

Every family runs on transformers 5 and on 4.57. Where a family's 4.x modules differ, its description follows what
the installed version offers: DistilBERT 4.x gets its own mask preparation and its layers return (attentions, hidden
state); ModernBERT 4.x builds its global and sliding-window masks itself (`_update_attention_mask`), applies rotary
embeddings inside attention, and takes flash_attention_2 only on unpadded inputs (refused there: sdpa and eager run).
This file travels with every checkpoint (`trust_remote_code=True`): it imports only `torch`, `transformers` and its
sibling files, and defines classes.
"""

import inspect

import torch
import transformers
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.models.deberta_v2 import modeling_deberta_v2
from transformers.models.distilbert import modeling_distilbert
from transformers.models.electra import modeling_electra
from transformers.models.modernbert import modeling_modernbert
from transformers.models.roberta import modeling_roberta
from transformers.models.xlm_roberta import modeling_xlm_roberta

from .modeling_bermo import BermoLayerMix, BermoMixAccumulator, BermoModel, BermoPreTrainedMixin, _output_flags, _return

try:  # transformers 5
    from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask
    from transformers.utils.output_capturing import capture_outputs
except ImportError:  # transformers 4.x: each family's own mask preparation; layers return tuples
    create_bidirectional_mask = create_bidirectional_sliding_window_mask = capture_outputs = None
    from transformers.modeling_attn_mask_utils import _prepare_4d_attention_mask_for_sdpa

HEAD_AUTO_CLASSES = (
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForMultipleChoice",
)


class BermoFamily:
    """How the mix meets one encoder family. This base describes the BERT-like post-LN encoders (RoBERTa, XLM-R):
    `embeddings` gives h_0, `encoder.layer[i]` takes (hidden state, mask) and returns the next hidden state."""

    model_type = None
    module = None  # the family's transformers modeling module
    name = None  # the family's class-name prefix: "Roberta" -> RobertaModel, RobertaForSequenceClassification, ...
    # Auto classes whose head reads only the first position (the mix then mixes that position only)
    first_token_heads = ("AutoModelForSequenceClassification", "AutoModelForMultipleChoice")

    def layers(self, backbone):
        return backbone.encoder.layer

    def embed(self, backbone, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        return backbone.embeddings(
            input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds
        )

    def layer_context(self, backbone, hidden_state, attention_mask, position_ids, output_attentions):
        """What every layer needs besides the hidden state (computed once per forward): here the attention mask, made
        as for BERT's layers (transformers' own helpers, in 4.x and 5)."""
        return BermoModel._encoder_attention_mask(backbone, attention_mask, hidden_state, output_attentions)

    def run_layer(self, backbone, index, layer, hidden_state, context, kwargs):
        return layer(hidden_state, context, **kwargs)

    def normalization(self, backbone):
        """A module applied to every representation before mixing, or None."""
        return None

    def reads_first_token(self, auto_class, config):
        return auto_class in self.first_token_heads

    def captures_outputs(self):
        """Whether transformers' own hooks collect this family's hidden states and attentions."""
        return capture_outputs is not None and bool(getattr(self.pretrained_class(), "_can_record_outputs", None))

    def pretrained_class(self):
        return getattr(self.module, f"{self.name}PreTrainedModel")

    def vanilla_class(self, auto_class):
        suffix = {"AutoModel": "Model"}.get(auto_class, auto_class.removeprefix("AutoModel"))
        return getattr(self.module, f"{self.name}{suffix}")


class RobertaFamily(BermoFamily):
    model_type, module, name = "roberta", modeling_roberta, "Roberta"


class XLMRobertaFamily(BermoFamily):
    model_type, module, name = "xlm-roberta", modeling_xlm_roberta, "XLMRoberta"


class ElectraFamily(BermoFamily):
    """h_0 after `embeddings_project` (present when embedding_size != hidden_size), as ELECTRA's encoder sees it."""

    model_type, module, name = "electra", modeling_electra, "Electra"

    def embed(self, backbone, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        hidden_state = super().embed(backbone, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        if hasattr(backbone, "embeddings_project"):
            hidden_state = backbone.embeddings_project(hidden_state)
        return hidden_state

    def reads_first_token(self, auto_class, config):
        if auto_class == "AutoModelForMultipleChoice":  # its sequence summary: "first", "last", "mean", ...
            return config.summary_type == "first"
        return super().reads_first_token(auto_class, config)


class DistilBertFamily(BermoFamily):
    """On transformers 4.x: DistilBertModel's own mask preparation, embeddings without position ids, and layers
    `(x, attn_mask, head_mask, output_attentions)` returning (hidden state,) or (attentions, hidden state)."""

    model_type, module, name = "distilbert", modeling_distilbert, "DistilBert"

    def layer_context(self, backbone, hidden_state, attention_mask, position_ids, output_attentions):
        if create_bidirectional_mask is not None:  # transformers 5
            return create_bidirectional_mask(
                config=backbone.config, inputs_embeds=hidden_state, attention_mask=attention_mask
            )
        # transformers 4.x, as DistilBertModel.forward: flash attention takes the (batch, length) mask (none without
        # padding), SDPA a 4-d additive one (unless attentions are returned: then eager, which takes (batch, length))
        implementation = backbone.config._attn_implementation
        if implementation == "flash_attention_2":
            return attention_mask if bool((attention_mask == 0).any()) else None
        if implementation == "sdpa" and not output_attentions:
            return _prepare_4d_attention_mask_for_sdpa(attention_mask, hidden_state.dtype, tgt_len=hidden_state.shape[1])
        return attention_mask

    def layers(self, backbone):
        return backbone.transformer.layer

    def embed(self, backbone, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        if position_ids is None:  # (transformers 4.x's embeddings take no position ids)
            return backbone.embeddings(input_ids, inputs_embeds)
        return backbone.embeddings(input_ids, inputs_embeds, position_ids)

    def run_layer(self, backbone, index, layer, hidden_state, context, kwargs):
        output = layer(hidden_state, context, **kwargs)  # the mask is `attention_mask` in 5, `attn_mask` in 4.x
        # transformers 4.x: (hidden state,) or (attentions, hidden state), turned into the loop's (hidden state, ...)
        return output[::-1] if isinstance(output, tuple) else output


class DebertaV2Family(BermoFamily):
    """Relative position embeddings and positions fed to every layer; the first layer's output through the encoder's
    convolution when it has one (`conv_kernel_size`); layers return (hidden state, attentions)."""

    model_type, module, name = "deberta-v2", modeling_deberta_v2, "DebertaV2"

    def embed(self, backbone, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        return backbone.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, mask=attention_mask,
            inputs_embeds=inputs_embeds,
        )

    def layer_context(self, backbone, hidden_state, attention_mask, position_ids, output_attentions):
        encoder = backbone.encoder
        return {
            "input_mask": attention_mask,
            "attention_mask": encoder.get_attention_mask(attention_mask),
            "relative_pos": encoder.get_rel_pos(hidden_state),
            "rel_embeddings": encoder.get_rel_embedding(),
        }

    def run_layer(self, backbone, index, layer, hidden_state, context, kwargs):
        output, attentions = layer(
            hidden_state, context["attention_mask"], relative_pos=context["relative_pos"],
            rel_embeddings=context["rel_embeddings"], output_attentions=kwargs.get("output_attentions", False),
        )
        if index == 0 and backbone.encoder.conv is not None:
            output = backbone.encoder.conv(hidden_state, output, context["input_mask"])
        return output, attentions


class ModernBertFamily(BermoFamily):
    """Pre-LN: every representation goes through `final_norm` before mixing. Global and sliding-window layers, each
    with its mask and rotary embeddings. On transformers 4.x the model makes both masks (`_update_attention_mask`)
    and each layer picks its own and applies rotary embeddings inside attention, from the position ids."""

    model_type, module, name = "modernbert", modeling_modernbert, "ModernBert"

    def layers(self, backbone):
        return backbone.layers

    def embed(self, backbone, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        return backbone.embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds)

    def layer_context(self, backbone, hidden_state, attention_mask, position_ids, output_attentions):
        if position_ids is None:
            position_ids = torch.arange(hidden_state.shape[1], device=hidden_state.device).unsqueeze(0)
        if hasattr(backbone, "_update_attention_mask"):  # transformers 4.x: the layers' own keyword arguments
            return self._layer_arguments_4x(backbone, attention_mask, position_ids, output_attentions)
        arguments = dict(config=backbone.config, inputs_embeds=hidden_state, attention_mask=attention_mask)
        return {
            "masks": {
                "full_attention": create_bidirectional_mask(**arguments),
                "sliding_attention": create_bidirectional_sliding_window_mask(**arguments),
            },
            "position_embeddings": {
                layer_type: backbone.rotary_emb(hidden_state, position_ids, layer_type)
                for layer_type in sorted(set(backbone.config.layer_types))
            },
        }

    def _layer_arguments_4x(self, backbone, attention_mask, position_ids, output_attentions):
        if backbone.config._attn_implementation == "flash_attention_2":
            raise ValueError(
                "BERMo on ModernBERT runs flash_attention_2 only on transformers 5 (transformers "
                f"{transformers.__version__}'s ModernBERT layers need unpadded inputs for it): load the model with "
                "attn_implementation='sdpa' or 'eager', or upgrade transformers"
            )
        backbone._maybe_set_compile()  # as ModernBertModel.forward: its `reference_compile` resolved
        # (with attentions asked for under sdpa, this switches the model to eager attention, as ModernBertModel does)
        global_mask, sliding_window_mask = backbone._update_attention_mask(attention_mask, output_attentions)
        return {"attention_mask": global_mask, "sliding_window_mask": sliding_window_mask, "position_ids": position_ids}

    def run_layer(self, backbone, index, layer, hidden_state, context, kwargs):
        if "sliding_window_mask" in context:  # transformers 4.x: returns (hidden state,) or (hidden state, attentions)
            return layer(hidden_state, **context, **kwargs)
        kind = layer.attention_type
        return layer(
            hidden_state, attention_mask=context["masks"][kind], position_embeddings=context["position_embeddings"][kind],
            **kwargs,
        )

    def normalization(self, backbone):
        return backbone.final_norm

    def reads_first_token(self, auto_class, config):
        # (its multiple-choice head takes the first non-padding token: with left padding not the first position)
        return auto_class == "AutoModelForSequenceClassification" and config.classifier_pooling == "cls"


FAMILIES = {
    family.model_type: family()
    for family in (RobertaFamily, XLMRobertaFamily, ElectraFamily, DistilBertFamily, DebertaV2Family, ModernBertFamily)
}


class BermoFamilyBackboneMixin(BermoPreTrainedMixin):
    """The mixed forward of a family's base model: `last_hidden_state` is the mix m (its first position only when
    the head reads no other), `pooler_output` the family's pooler on m when it has one. `hidden_states` (when asked)
    are the backbone's own h_0..h_k up to the highest mixed layer k (the layers above it are not built)."""

    family = None  # a BermoFamily, set on each backbone class

    def post_init(self):
        # the family's base model __init__ ends with post_init(): the mix is made there, and layers above the highest
        # mixed one are dropped (their checkpoint weights are reported as unexpected and skipped)
        if "layer_mix" not in self._modules:
            self.layer_mix = BermoLayerMix(self.config)
            del self.family.layers(self)[max(self.layer_mix.layer_indices) :]
        super().post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        inputs = dict(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds,
        )
        flags = _output_flags(self.config, output_attentions, output_hidden_states, len(self.family.layers(self)) + 1)
        if self.family.captures_outputs():
            if return_dict is not None:
                flags["return_dict"] = return_dict
            return self._captured_forward(**inputs, **flags, **kwargs)
        return _return(self._mixed_forward(**inputs, **flags, collect=True, **kwargs), return_dict, self.config)

    def _mixed_forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        collect=False,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        kwargs.pop("num_items_in_batch", None)  # a loss argument (Trainer), not the encoder's
        kwargs.pop("mix_first_token_only", None)
        if collect:  # the family returns hidden states and attentions itself (DeBERTa-v2): collected here
            output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
            wanted = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
            kwargs = {"output_attentions": bool(output_attentions)}
        if attention_mask is None and collect:
            shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
            device = input_ids.device if input_ids is not None else inputs_embeds.device
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        family = self.family
        hidden_state = family.embed(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        context = family.layer_context(self, hidden_state, attention_mask, position_ids, output_attentions)
        positions = {index: position for position, index in enumerate(self.layer_mix.layer_indices)}
        mix = BermoMixAccumulator(
            self.layer_mix, first_token_only=self.mix_first_token_only, normalize=family.normalization(self)
        )
        states = [hidden_state] if collect and wanted else None
        attentions = [] if collect and output_attentions else None
        if 0 in positions:
            mix.add(positions[0], hidden_state)
        for index, layer in enumerate(family.layers(self)):  # only the layers the mix reads are built
            output = family.run_layer(self, index, layer, hidden_state, context, kwargs)
            if isinstance(output, tuple):  # (hidden state,) or (hidden state, attentions): DeBERTa-v2, transformers 4
                hidden_state = output[0]
                if attentions is not None:
                    attentions.append(output[1])
            else:
                hidden_state = output
            if states is not None:
                states.append(hidden_state)
            if index + 1 in positions:
                mix.add(positions[index + 1], hidden_state)
        if states is not None and not isinstance(wanted, bool):
            selected = set(wanted)
            states = [state if i in selected else None for i, state in enumerate(states)]
        mixed = mix.result()
        pooler = getattr(self, "pooler", None)
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=mixed,
            pooler_output=pooler(mixed) if pooler is not None else None,
            hidden_states=tuple(states) if states is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )

    if capture_outputs is not None:
        _captured_forward = capture_outputs(tie_last_hidden_states=False)(_mixed_forward)

    def _bermo_model_classes(self):
        return tuple(bermo_family_classes(self.family.model_type).values())


class BermoFamilyHeadMixin(BermoPreTrainedMixin):
    """A family's own head class on the mixing backbone: the family's `__init__` builds its head layers and base
    model, whose place the BERMo backbone then takes (same attribute, same parameter names)."""

    family = None
    backbone_class = None
    auto_class = None
    # the heads' losses are means over the batch: Trainer divides them by gradient accumulation (as for BERMo's BERT
    # heads), instead of passing num_items_in_batch, which they would not use
    accepts_loss_kwargs = False

    def __init__(self, config, *args, **kwargs):
        self._bermo_building = True  # the family's __init__ ends with post_init: run once, with the mixing backbone
        # (the family's own base model, built and replaced below, consumes this old config flag in its post_init)
        checkpointing = getattr(config, "gradient_checkpointing", False)
        super().__init__(config, *args, **kwargs)
        vanilla = getattr(self, self.base_model_prefix)
        options = {}
        if "add_pooling_layer" in inspect.signature(type(vanilla).__init__).parameters:
            options["add_pooling_layer"] = getattr(vanilla, "pooler", None) is not None
        backbone = self.backbone_class(config, **options)
        backbone.mix_first_token_only = self.family.reads_first_token(self.auto_class, config)
        setattr(self, self.base_model_prefix, backbone)
        self._bermo_building = False
        self.post_init()
        if checkpointing and self.supports_gradient_checkpointing:
            self.gradient_checkpointing_enable()

    def post_init(self):
        if not self._bermo_building:
            super().post_init()

    def _bermo_model_classes(self):
        return tuple(bermo_family_classes(self.family.model_type).values())


def _make_family_classes(family):
    """The BERMo classes of one family: its backbone (AutoModel) and one class per head, each named Bermo + the
    family's class name (BermoRobertaModel, BermoRobertaForSequenceClassification, ...)."""
    vanilla_base = family.vanilla_class("AutoModel")

    def backbone_init(self, config, **options):
        self.mix_first_token_only = False
        vanilla_base.__init__(self, config, **options)

    backbone = type(
        f"Bermo{vanilla_base.__name__}",
        (BermoFamilyBackboneMixin, vanilla_base),
        {"family": family, "_auto_class": "AutoModel", "__init__": backbone_init, "__module__": __name__,
         "__doc__": f"BERMo's mixed forward on {vanilla_base.__name__} (see BermoFamilyBackboneMixin)."},
    )
    classes = {"AutoModel": backbone}
    for auto_class in HEAD_AUTO_CLASSES:
        vanilla = family.vanilla_class(auto_class)
        classes[auto_class] = type(
            f"Bermo{vanilla.__name__}",
            (BermoFamilyHeadMixin, vanilla),
            {"family": family, "backbone_class": backbone, "auto_class": auto_class, "_auto_class": auto_class,
             "__module__": __name__, "__doc__": f"{vanilla.__name__}'s head on the BERMo mix of its layers."},
        )
    return classes


_CLASSES = {model_type: _make_family_classes(family) for model_type, family in FAMILIES.items()}
globals().update({model_class.__name__: model_class for classes in _CLASSES.values() for model_class in classes.values()})


def bermo_family_classes(model_type):
    """{Auto class name: BERMo class} for an encoder family (`backbone_model_type`), e.g. "roberta"."""
    if model_type not in _CLASSES:
        raise ValueError(f"no BERMo classes for {model_type!r}; families: {', '.join(_CLASSES)}")
    return _CLASSES[model_type]
