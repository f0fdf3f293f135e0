"""PyTorch BERMo: BERT whose task heads read an ELMo-style learned mix of all its layers.

BERMo (Kodge & Roy, 2021, arXiv:2110.15802) replaces BERT's last hidden state by

    m = scale * sum_j softmax(logits)_j * h_j

over the embedding output h_0 and the encoder outputs h_1..h_L. BERT's pooler reads m's first token, token-level
heads read m. The backbone is transformers' own `BertModel`, so the parameter names are BERT's (`bert.embeddings...`,
`bert.encoder.layer.N...`, `bert.pooler...`, `classifier...`) and any BERT checkpoint loads with only the mix
(`bert.layer_mix.logits`, `bert.layer_mix.scale`) new.

`BermoModel.forward` runs BERT's own embedding and encoder-layer modules one after the other and adds each mixed
representation to a running sum as it is made, so no more than one running sum is alive besides BERT's own
activations, no state is kept between calls (concurrent forwards in threads or `nn.DataParallel` replicas are
independent), and the forward traces as one graph (`torch.compile(fullgraph=True)`, `torch.export`). Layers above
the highest mixed one are not built. Heads that read only the first position mix only that position.

This file travels with every BERMo checkpoint (`trust_remote_code=True`): it imports only `torch`, `transformers`
and its sibling `configuration_bermo.py`, and defines classes, nothing else.
"""

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.models.bert.modeling_bert import BertModel, BertPreTrainedModel

from .configuration_bermo import BERMO_VERSION, BermoConfig
from .structure_bermo import resize_encoder_layers

try:  # transformers 5: masks from masking_utils, hidden states and attentions captured by transformers' own hooks
    from transformers.masking_utils import create_bidirectional_mask
    from transformers.utils.output_capturing import capture_outputs
except ImportError:  # transformers 4.x: BertModel's own mask expansion; layers return (hidden state, attentions)
    create_bidirectional_mask = capture_outputs = None
    from transformers.modeling_attn_mask_utils import _prepare_4d_attention_mask_for_sdpa


class BermoLayerMix(nn.Module):
    """The learned scalar mix: one logit per mixed representation and one scale (the paper's gamma).

    The parameters are named `logits` and `scale` (never `gamma`/`beta`, which transformers 4.x renames on load),
    and are kept in float32 even when the rest of the model is half precision.
    """

    def __init__(self, config):
        super().__init__()
        config._validate_mix()  # values set after the config's __init__ (e.g. from_pretrained(..., mix_layers=...))
        self.layer_indices = config.mix_layer_indices
        # float32 whatever the default dtype (`from_config(..., dtype=torch.bfloat16)` sets it while building)
        self.logits = nn.Parameter(
            torch.zeros(len(self.layer_indices), dtype=torch.float32), requires_grad=config.mix_trainable
        )
        self.scale = nn.Parameter(torch.ones(1, dtype=torch.float32), requires_grad=config.mix_trainable)
        self.layer_norm = config.mix_layer_norm
        self.layer_norm_eps = config.layer_norm_eps
        self.dropout = config.mix_dropout

    @torch.no_grad()
    def restore_from_config(self, config, reinitialize=False):
        """After loading: float32 parameters (a half-precision load must not round the mix: in bf16, -20 + 0.05 is
        -20 again), `requires_grad` as `mix_trainable` says, and with `reinitialize`, the initial values anew."""
        for name in ("logits", "scale"):
            parameter = getattr(self, name)
            if parameter.dtype != torch.float32:
                setattr(self, name, nn.Parameter(parameter.detach().float()))
        if reinitialize:
            self.logits.copy_(torch.tensor(config.initial_mix_logits(), dtype=torch.float32))
            self.scale.fill_(1.0)
        self.logits.requires_grad_(config.mix_trainable)
        self.scale.requires_grad_(config.mix_trainable)

    def normalized_weights(self):
        """softmax(logits) in float32; in training with `mix_dropout`, over the representations kept this time."""
        logits = self.logits.float()
        if self.training and self.dropout > 0:
            count = logits.shape[0]
            keep = torch.rand(count, device=logits.device) >= self.dropout
            # Never drop every representation: if all were dropped, keep one at random.
            rescue = F.one_hot(torch.randint(count, (), device=logits.device), count).bool()
            keep = keep | (rescue & ~keep.any())
            # -inf is exact in float32 softmax (no -1e20 fills that overflow in fp16).
            logits = logits.masked_fill(~keep, float("-inf"))
        return torch.softmax(logits, dim=0)

    def forward(self):
        """(softmax weights, scale) for one forward pass. Read through this call, not from the parameters directly, so
        that accelerate's offloading hooks (device_map with CPU/disk offload) bring the parameters in for it."""
        return self.normalized_weights(), self.scale.float().clone()

    def extra_repr(self):
        return f"layers={self.layer_indices}, layer_norm={self.layer_norm}, dropout={self.dropout}"


class BermoMixAccumulator:
    """The running sum of one forward pass, local to that call: `add` takes each mixed representation as it is made."""

    def __init__(self, layer_mix, first_token_only, normalize=None):
        self.layer_mix = layer_mix
        self.weights, self.scale = layer_mix()
        self.first_token_only = first_token_only
        self.normalize = normalize  # a module applied to every representation first (a pre-LN encoder's final norm)
        self.total = None
        self.output_dtype = None

    def add(self, position, hidden_state):
        if self.first_token_only:
            hidden_state = hidden_state[:, :1]
        if self.normalize is not None:
            hidden_state = self.normalize(hidden_state)
        self.output_dtype = hidden_state.dtype
        if self.layer_mix.layer_norm:
            hidden_state = F.layer_norm(hidden_state.float(), hidden_state.shape[-1:], eps=self.layer_mix.layer_norm_eps)
        if self.total is not None and hidden_state.device != self.total.device:
            hidden_state = hidden_state.to(self.total.device)  # layers spread over devices (device_map="auto")
        weight = self.weights[position].to(hidden_state.device)
        if self.total is None:
            self.total = hidden_state.float() * weight
        elif torch.is_grad_enabled():
            self.total = torch.addcmul(self.total, hidden_state, weight)
        else:
            self.total.addcmul_(hidden_state, weight)  # in place: inference keeps a single running sum alive

    def result(self):
        return (self.total * self.scale.to(self.total.device)).to(self.output_dtype)


class BermoPreTrainedMixin:
    """What every BERMo model has, whatever its encoder family (BERT here, the others in `families_bermo.py`): the
    config class, the float32 mix and its initialization, the full `auto_map`, loading with clear errors."""

    config_class = BermoConfig
    config: BermoConfig
    # fp32 mix under fp16 and bf16 loading (`_strict` covers both; `from_pretrained` also restores it afterwards)
    _keep_in_fp32_modules_strict = ["layer_mix"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, BermoLayerMix):
            # `nn.init.*` (looked up at call time) is guarded by transformers 5 against re-initializing loaded
            # weights; the explicit check keeps the copy of non-constant logits equally safe.
            nn.init.ones_(module.scale)
            if not getattr(module.logits, "_is_hf_initialized", False):
                initial = torch.tensor(self.config.initial_mix_logits(), dtype=module.logits.dtype)
                with torch.no_grad():
                    module.logits.copy_(initial.to(module.logits.device))

    def post_init(self):
        # Every BERMo config carries the full auto_map (AutoConfig, AutoModel, every head), so that each Auto class
        # loads any saved checkpoint, Trainer's `checkpoint-*` folders included, with trust_remote_code=True;
        # transformers itself would write only the entry of the class being saved.
        self.set_auto_map()
        super().post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with an error that names the tensors whose shapes do not fit, and the
        layer mix as its config says: float32 whatever the model's dtype, frozen when `mix_trainable=False`.

        A head whose `num_labels` differs from the checkpoint's is refused unless `ignore_mismatched_sizes=True`
        (then transformers re-initializes those tensors, as usual).
        """
        family_class = cls._family_class_for(kwargs.get("config"), pretrained_model_name_or_path, kwargs)
        if family_class is not None:
            return family_class.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        output_loading_info = kwargs.pop("output_loading_info", False)
        refuse_mismatched = not kwargs.get("ignore_mismatched_sizes")
        kwargs["ignore_mismatched_sizes"] = True
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        if refuse_mismatched and loading_info["mismatched_keys"]:
            details = "; ".join(
                f"{key}: {tuple(theirs)} in the checkpoint, {tuple(ours)} in the model"
                for key, theirs, ours in sorted(loading_info["mismatched_keys"])
            )
            raise RuntimeError(  # what transformers raises for mismatched sizes, with a clearer message
                f"{pretrained_model_name_or_path}: shapes do not fit ({details}); a num_labels that differs from the "
                "checkpoint's head? Pass ignore_mismatched_sizes=True to re-initialize those tensors"
            )
        mix_missing = any(".layer_mix." in f".{key}" for key in loading_info["missing_keys"])
        model.base_model.layer_mix.restore_from_config(model.config, reinitialize=mix_missing)
        return (model, loading_info) if output_loading_info else model

    @classmethod
    def _from_config(cls, config, **kwargs):
        family_class = cls._family_class_for(config)
        if family_class is not None:  # e.g. AutoModel.from_config on a RoBERTa-based BERMo config
            return family_class._from_config(config, **kwargs)
        return super()._from_config(config, **kwargs)

    @classmethod
    def _family_class_for(cls, config, pretrained_model_name_or_path=None, kwargs=None):
        """For a BERT class given another family's config (the Auto classes map every BERMo config to the BERT
        classes when our package is installed): the class of that family with the same head; else None."""
        if cls not in BERMO_MODEL_CLASSES:
            return None
        if not isinstance(config, BermoConfig):
            if pretrained_model_name_or_path is None or isinstance(config, transformers.PretrainedConfig):
                return None
            hub = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
            config_dict, _ = BermoConfig.get_config_dict(
                pretrained_model_name_or_path, **{key: kwargs[key] for key in hub if key in kwargs}
            )
            model_type = config_dict.get("model_type")  # a BERMo checkpoint, or a vanilla one of any family
            backbone_model_type = config_dict.get("backbone_model_type", "bert") if model_type == "bermo" else model_type
        else:
            backbone_model_type = config.backbone_model_type
        if backbone_model_type == "bert":
            return None
        from .families_bermo import bermo_family_classes

        return bermo_family_classes(backbone_model_type)[cls._auto_class]

    def layer_mix_weights(self):
        """The mix as it stands: (softmax weight per mixed representation, scale), float32, detached.

        The weights are ordered like `config.mix_layer_indices` (0 = embedding output); layer dropout is not applied.
        """
        layer_mix = self.base_model.layer_mix
        with torch.no_grad():
            weights = torch.softmax(layer_mix.logits.float(), dim=0)
        return weights.detach().cpu(), layer_mix.scale.detach().float().cpu().squeeze(0)

    def set_auto_map(self):
        """Point `config.auto_map` at AutoConfig, AutoModel and every head's Auto class, and record our version."""
        config_module = type(self.config).__module__.rsplit(".", 1)[-1]
        auto_map = {"AutoConfig": f"{config_module}.{type(self.config).__name__}"}
        for model_class in self._bermo_model_classes():
            auto_map[model_class._auto_class] = f"{model_class.__module__.rsplit('.', 1)[-1]}.{model_class.__name__}"
        self.config.auto_map = auto_map
        self.config.bermo_version = BERMO_VERSION

    def _bermo_model_classes(self):
        """The classes of this model's family, one per Auto class."""
        return BERMO_MODEL_CLASSES


class BermoPreTrainedModel(BermoPreTrainedMixin, BertPreTrainedModel):
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BertEmbeddings", "BertLayer", "BermoLayerMix"]


class BermoModel(BermoPreTrainedModel, BertModel):
    """BERT's encoder with the layer mix: `last_hidden_state` is the mix m, `pooler_output` is BERT's pooler on m.

    `hidden_states` (when asked) are the backbone's own h_0..h_k, unmixed, up to the highest mixed layer k (the layers
    above it are not built); `output_hidden_states=[i, ...]` (transformers 5) selects among them, negative i from h_k.
    """

    _auto_class = "AutoModel"

    def __init__(self, config, add_pooling_layer=True):
        if capture_outputs is None and not hasattr(BertModel, "get_head_mask"):
            raise ImportError(
                f"BERMo runs on transformers 4.57+ or 5.5+ (transformers.utils.output_capturing); this is "
                f"transformers {transformers.__version__}: pip install 'transformers>=5.5'"
            )
        if getattr(config, "backbone_model_type", "bert") != "bert":
            raise ValueError(
                f"this BERMo config is on {config.backbone_model_type!r}, not BERT: build it with from_config / "
                "from_pretrained (or families_bermo.bermo_family_classes), which pick that family's classes"
            )
        super().__init__(config, add_pooling_layer=add_pooling_layer)

    def post_init(self):
        # BertModel.__init__ ends with post_init(): create the mix there, so that it exists when the weights are
        # initialized and post_init runs once.
        if "layer_mix" not in self._modules:
            self.layer_mix = BermoLayerMix(self.config)
            # Layers above the highest mixed one could not affect the output: they are not built, so they cost
            # nothing and hold no parameters without gradients (which DDP refuses). Their weights in a BERT
            # checkpoint are reported as unexpected and skipped.
            del self.encoder.layer[max(self.layer_mix.layer_indices) :]
            # a structurally pruned model's layers have their own head counts and FFN widths
            resize_encoder_layers(self.encoder.layer, self.config)
        super().post_init()

    def _encoder_attention_mask(self, attention_mask, embedding_output, output_attentions):
        """The attention mask in the form BERT's layers take, built by transformers' own helpers."""
        if create_bidirectional_mask is not None:  # transformers 5
            return create_bidirectional_mask(
                config=self.config, inputs_embeds=embedding_output, attention_mask=attention_mask
            )
        batch_size, length = embedding_output.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones((batch_size, length), device=embedding_output.device)
        if (
            self.config._attn_implementation == "sdpa"
            and self.config.position_embedding_type == "absolute"
            and not output_attentions
            and attention_mask.dim() == 2
        ):
            return _prepare_4d_attention_mask_for_sdpa(attention_mask, embedding_output.dtype, tgt_len=length)
        return self.get_extended_attention_mask(attention_mask, (batch_size, length))

    def _mixed_forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        mix_first_token_only=False,
        head_mask=None,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        # transformers 5 collects hidden states and attentions itself (`capture_outputs`); 4.x layers return them
        collect = capture_outputs is None
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        kwargs.pop("num_items_in_batch", None)  # a loss argument (Trainer), not the encoder's

        hidden_state = self.embeddings(
            input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds
        )
        layer_mask = self._encoder_attention_mask(attention_mask, hidden_state, output_attentions)
        if collect:
            layer_kwargs = {"output_attentions": bool(output_attentions)}
            head_masks = self.get_head_mask(head_mask, self.config.num_hidden_layers)
        else:
            layer_kwargs = kwargs
        positions = {index: position for position, index in enumerate(self.layer_mix.layer_indices)}
        mix = BermoMixAccumulator(self.layer_mix, first_token_only=mix_first_token_only)
        all_hidden_states = (hidden_state,) if collect and output_hidden_states else None
        all_attentions = () if collect and output_attentions else None
        if 0 in positions:
            mix.add(positions[0], hidden_state)
        for index, layer in enumerate(self.encoder.layer, start=1):  # only the layers the mix reads are built
            if collect:
                layer_output = layer(hidden_state, layer_mask, head_masks[index - 1], **layer_kwargs)
                hidden_state = layer_output[0]
                if all_attentions is not None:
                    all_attentions = all_attentions + (layer_output[1],)
                if all_hidden_states is not None:
                    all_hidden_states = all_hidden_states + (hidden_state,)
            else:
                hidden_state = layer(hidden_state, layer_mask, **layer_kwargs)
            if index in positions:
                mix.add(positions[index], hidden_state)
        mixed = mix.result()
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=mixed,
            pooler_output=self.pooler(mixed) if self.pooler is not None else None,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )

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
        mix_first_token_only=False,
        **kwargs,
    ):
        r"""
        mix_first_token_only (`bool`, defaults to `False`):
            Mix only the first position (all that the pooler reads): `last_hidden_state` then has length 1.
        """
        inputs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            mix_first_token_only=mix_first_token_only,
        )
        flags = _output_flags(self.config, output_attentions, output_hidden_states, len(self.encoder.layer) + 1)
        if capture_outputs is not None:  # transformers 5: its own thread-safe capture of hidden states, attentions
            if return_dict is not None:
                flags["return_dict"] = return_dict
            return self._captured_forward(**inputs, **flags, **kwargs)
        output = self._mixed_forward(**inputs, **flags, **kwargs)
        return _return(output, return_dict, self.config)

    if capture_outputs is not None:
        _captured_forward = capture_outputs(tie_last_hidden_states=False)(_mixed_forward)


def _output_flags(config, output_attentions, output_hidden_states, built_states):
    """The output flags a mixing backbone passes on: those left at None fall back to the config (an explicit None
    would hide `config.output_hidden_states`), and `output_hidden_states=[...]` (transformers 5) gets its negative
    indices counted from the last state built (`built_states` = h_0..h_k).

    transformers counts them from `config.num_hidden_layers`, whose top layers are not built when the mix stops below
    them: `[-1]` would select a state that never comes and return only `None`s. Here `hidden_states[i]` is what the
    same index picks from `output_hidden_states=True`'s states; an index past them selects nothing."""
    flags = dict(output_attentions=output_attentions, output_hidden_states=output_hidden_states)
    flags = {name: value for name, value in flags.items() if value is not None}
    selection = flags.get("output_hidden_states", config.output_hidden_states)
    if selection is not None and not isinstance(selection, bool):
        resolved = []
        for index in [selection] if isinstance(selection, int) else selection:
            if index < 0:  # from the end; before h_0 it selects nothing, as `built_states` (past the last) does
                index = index + built_states if index >= -built_states else built_states
            resolved.append(index)
        flags["output_hidden_states"] = resolved
    return flags


def _classifier_dropout(config):
    return nn.Dropout(config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob)


def _return(output, return_dict, config):
    return_dict = return_dict if return_dict is not None else getattr(config, "return_dict", True)
    return output if return_dict else output.to_tuple()


class BermoForSequenceClassification(BermoPreTrainedModel):
    """BERMo with BERT's sequence classification/regression head on the pooled mix."""

    _auto_class = "AutoModelForSequenceClassification"
    accepts_loss_kwargs = False

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.config = config
        self.bert = BermoModel(config)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)` or `(batch_size, num_labels)`, *optional*):
            As in `BertForSequenceClassification`: regression (MSE) if `num_labels == 1`, cross-entropy for integer
            labels, binary cross-entropy for multi-label float targets.
        """
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            mix_first_token_only=True,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))

        loss = None
        if labels is not None:
            if self.config.problem_type is None:
                if self.num_labels == 1:
                    self.config.problem_type = "regression"
                elif self.num_labels > 1 and labels.dtype in (torch.long, torch.int):
                    self.config.problem_type = "single_label_classification"
                else:
                    self.config.problem_type = "multi_label_classification"
            if self.config.problem_type == "regression":
                loss_fct = MSELoss()
                if self.num_labels == 1:
                    loss = loss_fct(logits.squeeze(), labels.squeeze().to(logits.dtype))
                else:
                    loss = loss_fct(logits, labels.to(logits.dtype))
            elif self.config.problem_type == "single_label_classification":
                loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
            else:
                loss = BCEWithLogitsLoss()(logits, labels.to(logits.dtype))

        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return _return(output, return_dict, self.config)


class BermoForMultipleChoice(BermoPreTrainedModel):
    """BERMo with BERT's multiple-choice head (one score per choice from the pooled mix)."""

    _auto_class = "AutoModelForMultipleChoice"
    accepts_loss_kwargs = False

    def __init__(self, config):
        super().__init__(config)
        self.bert = BermoModel(config)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, num_choices, sequence_length)`):
            One encoded sequence per choice.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            The index of the right choice.
        """
        num_choices = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]

        def flat(tensor):
            return tensor.reshape(-1, *tensor.shape[2:]) if tensor is not None else None

        outputs = self.bert(
            flat(input_ids),
            attention_mask=flat(attention_mask),
            token_type_ids=flat(token_type_ids),
            position_ids=flat(position_ids),
            inputs_embeds=flat(inputs_embeds),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            mix_first_token_only=True,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output)).view(-1, num_choices)
        loss = CrossEntropyLoss()(logits, labels) if labels is not None else None
        output = MultipleChoiceModelOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return _return(output, return_dict, self.config)


class BermoForTokenClassification(BermoPreTrainedModel):
    """BERMo with BERT's token classification head on the mix of every position."""

    _auto_class = "AutoModelForTokenClassification"
    accepts_loss_kwargs = False

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BermoModel(config, add_pooling_layer=False)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Label per token; -100 is ignored.
        """
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
        output = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return _return(output, return_dict, self.config)


class BermoForQuestionAnswering(BermoPreTrainedModel):
    """BERMo with BERT's extractive question-answering head (span start and end logits from the mix)."""

    _auto_class = "AutoModelForQuestionAnswering"
    accepts_loss_kwargs = False

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BermoModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        start_positions=None,
        end_positions=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        r"""
        start_positions, end_positions (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            The answer span's token positions; positions outside the sequence are clamped and ignored.
        """
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = logits.split(1, dim=-1)
        start_logits = start_logits.squeeze(-1).contiguous()
        end_logits = end_logits.squeeze(-1).contiguous()

        loss = None
        if start_positions is not None and end_positions is not None:
            ignored_index = start_logits.size(1)
            start_positions = start_positions.reshape(-1).clamp(0, ignored_index)
            end_positions = end_positions.reshape(-1).clamp(0, ignored_index)
            loss_fct = CrossEntropyLoss(ignore_index=ignored_index)
            loss = (loss_fct(start_logits, start_positions) + loss_fct(end_logits, end_positions)) / 2

        output = QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return _return(output, return_dict, self.config)


# Every BERMo model class, each with the Auto class it registers with (its `_auto_class`).
BERMO_MODEL_CLASSES = (
    BermoModel,
    BermoForSequenceClassification,
    BermoForTokenClassification,
    BermoForQuestionAnswering,
    BermoForMultipleChoice,
)

__all__ = [
    "BermoLayerMix",
    "BermoPreTrainedModel",
    "BermoModel",
    "BermoForSequenceClassification",
    "BermoForTokenClassification",
    "BermoForQuestionAnswering",
    "BermoForMultipleChoice",
]
