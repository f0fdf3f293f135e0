"""PyTorch BERMo: BERT whose task heads read an ELMo-style learned mix of all its layers.

BERMo (Kodge & Roy, 2021, arXiv:2110.15802) replaces BERT's last hidden state by

    m = scale * sum_j softmax(logits)_j * h_j

over the embedding output h_0 and the encoder outputs h_1..h_L. BERT's pooler reads m's first token, token-level
heads read m. The backbone is transformers' own `BertModel`, so the parameter names are BERT's (`bert.embeddings...`,
`bert.encoder.layer.N...`, `bert.pooler...`, `classifier...`) and any BERT checkpoint loads with only the mix
(`bert.layer_mix.logits`, `bert.layer_mix.scale`) new.

The mix is accumulated by forward hooks while the encoder runs, so no more than one running sum is alive besides
BERT's own activations; heads that read only the first position mix only that position.

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


class BermoLayerMix(nn.Module):
    """The learned scalar mix: one logit per mixed representation and one scale (the paper's gamma).

    The parameters are named `logits` and `scale` (never `gamma`/`beta`, which transformers 4.x renames on load),
    and are kept in float32 even when the rest of the model is half precision.
    """

    def __init__(self, config):
        super().__init__()
        self.layer_indices = config.mix_layer_indices
        self.logits = nn.Parameter(torch.zeros(len(self.layer_indices)), requires_grad=config.mix_trainable)
        self.scale = nn.Parameter(torch.ones(1), requires_grad=config.mix_trainable)
        self.layer_norm = config.mix_layer_norm
        self.layer_norm_eps = config.layer_norm_eps
        self.dropout = config.mix_dropout

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

    def extra_repr(self):
        return f"layers={self.layer_indices}, layer_norm={self.layer_norm}, dropout={self.dropout}"


class BermoMixAccumulator:
    """The running sum of one forward pass: `add` is called with each mixed representation as the encoder makes it."""

    def __init__(self, layer_mix, first_token_only):
        self.layer_mix = layer_mix
        self.weights = layer_mix.normalized_weights()
        self.first_token_only = first_token_only
        self.total = None
        self.seen = 0
        self.output_dtype = None
        self._result = None

    def add(self, position, hidden_state):
        if self.first_token_only:
            hidden_state = hidden_state[:, :1]
        self.output_dtype = hidden_state.dtype
        if self.layer_mix.layer_norm:
            hidden_state = F.layer_norm(hidden_state.float(), hidden_state.shape[-1:], eps=self.layer_mix.layer_norm_eps)
        weight = self.weights[position]
        if self.total is None:
            self.total = hidden_state.float() * weight
        elif torch.is_grad_enabled():
            self.total = torch.addcmul(self.total, hidden_state, weight)
        else:
            self.total.addcmul_(hidden_state, weight)  # in place: inference keeps a single running sum alive
        self.seen += 1

    def result(self):
        if self._result is None:
            if self.seen != len(self.layer_mix.layer_indices):
                raise RuntimeError(
                    f"BERMo mixed {self.seen} of {len(self.layer_mix.layer_indices)} representations: "
                    "the encoder did not run every layer"
                )
            self._result = (self.total * self.layer_mix.scale.float()).to(self.output_dtype)
        return self._result


def _first_output(output):
    # BertLayer returns a tensor in transformers 5 and a tuple in 4.x.
    return output[0] if isinstance(output, tuple) else output


class BermoPreTrainedModel(BertPreTrainedModel):
    config_class = BermoConfig
    config: BermoConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    # fp32 mix under fp16 (`_keep_in_fp32_modules`) and bf16 (`_strict`) loading
    _keep_in_fp32_modules = ["layer_mix"]
    _keep_in_fp32_modules_strict = ["layer_mix"]
    _no_split_modules = ["BertEmbeddings", "BertLayer", "BermoLayerMix"]

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

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with an error that names the tensors whose shapes do not fit.

        A head whose `num_labels` differs from the checkpoint's is refused unless `ignore_mismatched_sizes=True`
        (then transformers re-initializes those tensors, as usual).
        """
        if kwargs.get("ignore_mismatched_sizes"):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        output_loading_info = kwargs.pop("output_loading_info", False)
        kwargs["ignore_mismatched_sizes"] = True
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        if loading_info["mismatched_keys"]:
            details = "; ".join(
                f"{key}: {tuple(theirs)} in the checkpoint, {tuple(ours)} in the model"
                for key, theirs, ours in sorted(loading_info["mismatched_keys"])
            )
            raise ValueError(
                f"{pretrained_model_name_or_path}: shapes do not fit ({details}); a num_labels that differs from the "
                "checkpoint's head? Pass ignore_mismatched_sizes=True to re-initialize those tensors"
            )
        return (model, loading_info) if output_loading_info else model

    def layer_mix_weights(self):
        """The mix as it stands: (softmax weight per mixed representation, scale), float32, detached.

        The weights are ordered like `config.mix_layer_indices` (0 = embedding output); layer dropout is not applied.
        """
        layer_mix = self.base_model.layer_mix
        with torch.no_grad():
            weights = torch.softmax(layer_mix.logits.float(), dim=0)
        return weights.detach().cpu(), layer_mix.scale.detach().float().cpu().squeeze(0)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        # The mix is collected by forward hooks. transformers 4.x checkpoints a layer's whole `__call__`, hooks
        # included, and reentrant checkpointing runs it without autograd, which would cut the mix off from its
        # gradient; non-reentrant checkpointing keeps it. transformers 5 keeps hooks outside the checkpoint.
        gradient_checkpointing_kwargs = dict(gradient_checkpointing_kwargs or {})
        gradient_checkpointing_kwargs.setdefault("use_reentrant", False)
        if gradient_checkpointing_kwargs["use_reentrant"] and int(transformers.__version__.split(".")[0]) < 5:
            raise ValueError(
                "gradient_checkpointing_kwargs: use_reentrant=True is not supported by BERMo under transformers 4.x "
                "(the layer mix would get no gradient); use use_reentrant=False"
            )
        return super().gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def set_auto_map(self):
        """Point `config.auto_map` at AutoConfig, AutoModel and every head's Auto class, and record our version.

        transformers writes `auto_map` only for the class being saved; `save_pretrained` calls this first so that
        every Auto class loads the checkpoint with trust_remote_code=True.
        """
        config_module = type(self.config).__module__.rsplit(".", 1)[-1]
        model_module = type(self).__module__.rsplit(".", 1)[-1]
        auto_map = {"AutoConfig": f"{config_module}.{type(self.config).__name__}"}
        for model_class in BERMO_MODEL_CLASSES:
            auto_map[model_class._auto_class] = f"{model_module}.{model_class.__name__}"
        self.config.auto_map = auto_map
        self.config.bermo_version = BERMO_VERSION

    def save_pretrained(self, save_directory, *args, **kwargs):
        self.set_auto_map()
        return super().save_pretrained(save_directory, *args, **kwargs)


class BermoModel(BermoPreTrainedModel, BertModel):
    """BERT's encoder with the layer mix: `last_hidden_state` is the mix m, `pooler_output` is BERT's pooler on m.

    `hidden_states` (when asked) are the backbone's own h_0..h_L, unmixed.
    """

    _auto_class = "AutoModel"

    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)

    def post_init(self):
        # BertModel.__init__ ends with post_init(): create the mix there, so that it exists when the weights are
        # initialized and post_init runs once.
        if "layer_mix" not in self._modules:
            self.layer_mix = BermoLayerMix(self.config)
        super().post_init()

    def _mixed_modules(self):
        for position, index in enumerate(self.layer_mix.layer_indices):
            yield position, self.embeddings if index == 0 else self.encoder.layer[index - 1]

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
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        mix = BermoMixAccumulator(self.layer_mix, first_token_only=mix_first_token_only)
        handles = []
        try:
            for position, module in self._mixed_modules():
                handles.append(
                    module.register_forward_hook(
                        lambda _module, _args, output, position=position: mix.add(position, _first_output(output))
                    )
                )
            if self.pooler is not None:
                # The pooler reads the mix, not the last layer.
                handles.append(self.pooler.register_forward_pre_hook(lambda _module, _args: (mix.result(),)))
            outputs = super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
                **kwargs,
            )
        finally:
            for handle in handles:
                handle.remove()
        output = BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=mix.result(),
            pooler_output=outputs.pooler_output,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


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
