"""BERMo model configuration: a BERT configuration plus the fields of the layer mix.

This file travels with every BERMo checkpoint (`trust_remote_code=True`): it imports only `torch` and
`transformers` and defines classes and functions, nothing else.
"""

import torch
import transformers
from transformers import PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .structure_bermo import validate_structure

# Version of the BERMo code that wrote a checkpoint; recorded in its config.json.
BERMO_VERSION = "0.1.0"

# Logit given to the representations left out by `mix_init="last"`. softmax then puts weight exp(-20) ~ 2e-9 on
# each of them, so the last layer's weight is exactly 1.0 in float32 and the mix equals the last layer to float
# precision, while the others still receive a (tiny) gradient.
LAST_INIT_OTHER_LOGIT = -20.0

# The encoder families a BERMo model can be built on (`backbone_model_type`): transformers' model_type of each.
# BERT is the original BERMo; the others are described in `families_bermo.py`.
BACKBONE_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "modernbert")


def parse_last_weight(mix_init):
    """The weight P of a `"last:P"` mix_init (0 < P < 1); ValueError (one line) for anything else."""
    kind, _, value = mix_init.partition(":")
    try:
        weight = float(value) if kind == "last" and value else None
    except ValueError:
        weight = None
    if weight is None:
        raise ValueError(f"mix_init must be 'uniform', 'last' or a list of logits, or 'last:P' with 0 < P < 1 (e.g. "
                         f"'last:0.9'), got {mix_init!r}")
    if not 0 < weight < 1:
        raise ValueError(f"mix_init {mix_init!r}: the last representation's weight P must be in (0, 1)")
    return weight


def _modernbert_layer_types(num_hidden_layers, global_attn_every_n_layers):
    """ModernBERT's layer pattern: a global-attention layer every n layers (the first one included), the others
    sliding-window."""
    return ["sliding_attention" if i % global_attn_every_n_layers else "full_attention" for i in range(num_hidden_layers)]


class BermoConfig(PretrainedConfig):
    r"""
    Configuration of a BERMo model: BERT whose task heads read a learned scalar mix of every layer,
    `m = scale * sum_j softmax(logits)_j * h_j`, over the embedding output `h_0` and the encoder outputs `h_1..h_L`.

    The BERT fields and their defaults are those of `BertConfig` (bert-base-uncased). The mix fields:

    Args:
        mix_layers (`list[int]`, *optional*):
            The representations to mix, as indices into `0..num_hidden_layers` (0 is the embedding output, `L` the
            last layer); negative indices count from the end (-1 is the last layer). Defaults to all `L + 1`.
            Duplicates are refused. The mix logits are ordered like the sorted, resolved indices. Layers above the
            highest mixed one are neither built nor run (they could not affect the output): mixing `[0, 1, ..., 6]` of a
            12-layer BERT runs 6 layers, half the encoder's cost; their checkpoint weights are skipped on loading,
            and `hidden_states` hold `h_0..h_6`.
        mix_init (`str` or `list[float]`, *optional*, defaults to `"uniform"`):
            `"uniform"`: zero logits, every mixed representation weighs the same (as ELMo and AllenNLP's ScalarMix).
            `"last"`: all the weight on the last layer, so the model's outputs equal BERT's to float precision.
            `"last:P"` (0 < P < 1, e.g. `"last:0.9"`): softmax weight P on the last mixed representation, the rest
            spread evenly over the others (logits 0 for the others and log(P (n - 1) / (1 - P)) for the last).
            A list of floats: the initial logits, one per mixed representation.
        mix_trainable (`bool`, *optional*, defaults to `True`):
            Whether the mix logits and the scale are learned.
        mix_layer_norm (`bool`, *optional*, defaults to `False`):
            Apply a per-token layer norm (no affine parameters) to every representation before mixing.
        mix_dropout (`float`, *optional*, defaults to 0.0):
            Layer dropout: in training, each representation is left out of the mix with this probability (the
            softmax is taken over the ones kept); at least one is always kept. Never applied in evaluation.
        layer_num_attention_heads (`list[int]`, *optional*):
            Attention heads of each encoder layer, for a structurally pruned model (see `structure_bermo.py`); the
            head size stays `hidden_size / num_attention_heads`. Defaults to `num_attention_heads` everywhere.
        layer_intermediate_sizes (`list[int]`, *optional*):
            FFN width of each encoder layer, for a structurally pruned model. Defaults to `intermediate_size`.
        kept_layers (`list[int]`, *optional*):
            For a model whose layers were pruned: the 0-based indices, in the model it was pruned from, of the layers
            it kept (a record; `num_hidden_layers` counts the kept layers).
        backbone_model_type (`str`, *optional*, defaults to `"bert"`):
            The encoder family under the mix, as transformers' `model_type`: one of `BACKBONE_MODEL_TYPES` ("bert",
            "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "modernbert"). For a family other than
            BERT, the config also holds that family's own fields (flat, under their usual names): make it with
            `BermoConfig.for_backbone(family_config, mix_...)` or by converting a checkpoint; fields left out take the
            family's defaults. ModernBERT (pre-LN) mixes its representations after its final norm (see
            `families_bermo.py`).
    """

    model_type = "bermo"
    _auto_class = "AutoConfig"

    def __init__(
        self,
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=512,
        type_vocab_size=2,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        pad_token_id=0,
        position_embedding_type="absolute",
        use_cache=True,
        classifier_dropout=None,
        mix_layers=None,
        mix_init="uniform",
        mix_trainable=True,
        mix_layer_norm=False,
        mix_dropout=0.0,
        layer_num_attention_heads=None,
        layer_intermediate_sizes=None,
        kept_layers=None,
        backbone_model_type="bert",
        **kwargs,
    ):
        if kwargs.get("is_decoder") or kwargs.get("add_cross_attention"):
            raise ValueError("is_decoder/add_cross_attention: BERMo is an encoder-only model; both must be False")
        kwargs.setdefault("is_decoder", False)
        kwargs.setdefault("add_cross_attention", False)
        kwargs.setdefault("bermo_version", BERMO_VERSION)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.position_embedding_type = position_embedding_type
        self.use_cache = use_cache
        self.classifier_dropout = classifier_dropout
        self.mix_layers = None if mix_layers is None else list(mix_layers)
        self.mix_init = mix_init if isinstance(mix_init, str) else list(mix_init)
        self.mix_trainable = mix_trainable
        self.mix_layer_norm = mix_layer_norm
        self.mix_dropout = mix_dropout
        self.layer_num_attention_heads = None if layer_num_attention_heads is None else list(layer_num_attention_heads)
        self.layer_intermediate_sizes = None if layer_intermediate_sizes is None else list(layer_intermediate_sizes)
        self.kept_layers = None if kept_layers is None else list(kept_layers)
        self.backbone_model_type = backbone_model_type
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        if backbone_model_type not in BACKBONE_MODEL_TYPES:
            raise ValueError(
                f"backbone_model_type {backbone_model_type!r} is not supported; supported encoder families: "
                f"{', '.join(BACKBONE_MODEL_TYPES)}"
            )
        if backbone_model_type != "bert":
            self._complete_backbone_fields(kwargs)
        self._validate_mix()

    def _complete_backbone_fields(self, given):
        """A non-BERT family's fields: its defaults for those not given, its aliased names (DistilBERT's `dim` is
        `hidden_size`) in agreement, and the values its config class derives in properties (ModernBERT's
        `sliding_window`) stored plainly, since the family's modules read this config."""
        family_class = CONFIG_MAPPING[self.backbone_model_type]
        defaults = family_class().to_dict()
        if self.backbone_model_type == "modernbert":
            given = self._complete_modernbert_spellings(given, defaults)
            # read by transformers 4.x's ModernBERT modules, left out of its `to_dict` (None: decided at run time)
            self.reference_compile = given.get("reference_compile")
        for key, value in defaults.items():
            if key not in given and getattr(self, key, None) is None:
                setattr(self, key, value)
        for alias, name in getattr(family_class, "attribute_map", {}).items():
            if name in given or alias not in given:
                setattr(self, alias, getattr(self, name))
            else:
                setattr(self, name, getattr(self, alias))
        derived = [name for name, member in vars(family_class).items() if isinstance(member, property)]
        if derived:
            backbone = self.backbone_config()
            for name in derived:
                setattr(self, name, getattr(backbone, name))

    def _complete_modernbert_spellings(self, given, defaults):
        """ModernBERT's layer pattern and rotary bases have two spellings: transformers 5's `layer_types` and
        `rope_parameters`, transformers 4.x's `global_attn_every_n_layers`, `global_rope_theta` and `local_rope_theta`.
        The one given is completed with the other (before defaults are filled in), so that a config written under
        either version describes the same model under both. Returns `given` with the completed names."""
        given = dict(given)
        layer_types, every = given.get("layer_types"), given.get("global_attn_every_n_layers")
        if layer_types is not None and every is None:
            every = next((n for n in range(1, len(layer_types) + 1) if layer_types == _modernbert_layer_types(
                len(layer_types), n)), None)
            if every is None and "global_attn_every_n_layers" in defaults:  # the installed modules read it
                raise ValueError(f"ModernBERT layer_types {layer_types} are not one global layer every n layers, "
                                 f"which transformers {transformers.__version__}'s ModernBERT can express")
        elif layer_types is None and every is not None:
            layer_types = _modernbert_layer_types(self.num_hidden_layers, every)
        rope, thetas = given.get("rope_parameters"), (given.get("global_rope_theta"), given.get("local_rope_theta"))
        if rope is not None and None in thetas:
            for kind in ("full_attention", "sliding_attention"):
                if rope[kind].get("rope_type", "default") != "default" and "rope_parameters" not in defaults:
                    raise ValueError(f"ModernBERT rope_parameters {rope}: transformers {transformers.__version__}'s "
                                     f"ModernBERT has only the default rotary embedding")
            thetas = (rope["full_attention"]["rope_theta"], rope["sliding_attention"]["rope_theta"])
        elif rope is None and None not in thetas:
            rope = {kind: {"rope_type": "default", "rope_theta": theta}
                    for kind, theta in zip(("full_attention", "sliding_attention"), thetas)}
        completed = {"layer_types": layer_types, "global_attn_every_n_layers": every, "rope_parameters": rope,
                     "global_rope_theta": thetas[0], "local_rope_theta": thetas[1]}
        for name, value in completed.items():
            if value is not None and given.get(name) is None:
                setattr(self, name, value)
                given[name] = value
        return given

    def backbone_config(self):
        """The family's own config (e.g. `RobertaConfig`) with this config's values, mix fields left out."""
        family_class = CONFIG_MAPPING[self.backbone_model_type]
        fields = {
            key: value
            for key, value in self.to_dict().items()
            if not key.startswith("mix_") and key not in ("model_type", "auto_map", "architectures", "bermo_version",
                                                          "backbone_model_type", "transformers_version")
        }
        return family_class.from_dict(fields)

    @classmethod
    def for_backbone(cls, backbone_config, **kwargs):
        """A BERMo config on `backbone_config`'s family (a `RobertaConfig`, `ModernBertConfig`, ...) and its values;
        `kwargs` set the mix fields (and may override others)."""
        fields = {
            key: value
            for key, value in backbone_config.to_dict().items()
            if key not in ("model_type", "architectures", "transformers_version", "auto_map", "_name_or_path",
                           "dtype", "torch_dtype")
        }
        for alias in getattr(type(backbone_config), "attribute_map", {}):
            fields[alias] = getattr(backbone_config, alias)
        fields.update(kwargs)
        return cls(backbone_model_type=backbone_config.model_type, **fields)

    @property
    def mix_layer_indices(self):
        """The mixed representations as sorted indices into `0..num_hidden_layers` (0 = embedding output)."""
        count = self.num_hidden_layers + 1
        if self.mix_layers is None:
            return list(range(count))
        return sorted(index % count for index in self.mix_layers)

    def initial_mix_logits(self):
        """The initial mix logits that `mix_init` asks for, one per mixed representation."""
        count = len(self.mix_layer_indices)
        if self.mix_init == "uniform":
            return [0.0] * count
        if self.mix_init == "last":
            return [LAST_INIT_OTHER_LOGIT] * (count - 1) + [0.0]
        if isinstance(self.mix_init, str):  # "last:P", checked by _validate_mix
            weight = parse_last_weight(self.mix_init)
            if count == 1:
                return [0.0]
            ratio = torch.tensor(weight * (count - 1) / (1 - weight), dtype=torch.float64)
            return [0.0] * (count - 1) + [torch.log(ratio).item()]
        return [float(value) for value in self.mix_init]

    def _validate_mix(self):
        if not isinstance(self.num_hidden_layers, int) or self.num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers must be a positive integer, got {self.num_hidden_layers!r}")
        count = self.num_hidden_layers + 1
        if self.mix_layers is not None:
            if len(self.mix_layers) == 0:
                raise ValueError("mix_layers must name at least one representation, got an empty list")
            for index in self.mix_layers:
                if isinstance(index, bool) or not isinstance(index, int):
                    raise ValueError(f"mix_layers must hold integers, got {index!r}")
                if not -count <= index < count:
                    raise ValueError(
                        f"mix_layers index {index} is out of range for {self.num_hidden_layers} layers "
                        f"(valid: {-count}..{count - 1}, 0 = embedding output)"
                    )
            resolved = [index % count for index in self.mix_layers]
            if len(set(resolved)) != len(resolved):
                raise ValueError(f"mix_layers names a representation twice: {self.mix_layers}")
        mixed = len(self.mix_layer_indices)
        if isinstance(self.mix_init, str):
            if self.mix_init not in ("uniform", "last"):
                parse_last_weight(self.mix_init)
        else:
            if len(self.mix_init) != mixed:
                raise ValueError(
                    f"mix_init has {len(self.mix_init)} logits but {mixed} representations are mixed (mix_layers)"
                )
            for value in self.mix_init:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                    raise ValueError(f"mix_init logits must be finite numbers, got {value!r}")
                if abs(value) == float("inf"):
                    raise ValueError(f"mix_init logits must be finite numbers, got {value!r}")
        if not isinstance(self.mix_trainable, bool):
            raise ValueError(f"mix_trainable must be a bool, got {self.mix_trainable!r}")
        if not isinstance(self.mix_layer_norm, bool):
            raise ValueError(f"mix_layer_norm must be a bool, got {self.mix_layer_norm!r}")
        if (
            isinstance(self.mix_dropout, bool)
            or not isinstance(self.mix_dropout, (int, float))
            or not 0.0 <= self.mix_dropout < 1.0
        ):
            raise ValueError(f"mix_dropout must be a probability in [0, 1), got {self.mix_dropout!r}")
        validate_structure(self)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """`PretrainedConfig.from_dict`, then the mix fields validated again: transformers sets the keyword arguments
        of `from_pretrained(..., mix_layers=[...])` after `__init__` has run."""
        result = super().from_dict(config_dict, **kwargs)
        config = result[0] if isinstance(result, tuple) else result
        config._validate_mix()
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Like `PretrainedConfig.from_pretrained`, but refuses a checkpoint that is neither BERMo nor an encoder family
        BERMo supports (`BACKBONE_MODEL_TYPES`)."""
        config_dict, remaining = cls.get_config_dict(pretrained_model_name_or_path, **dict(kwargs))
        model_type = config_dict.get("model_type")
        if model_type not in ("bermo", *BACKBONE_MODEL_TYPES):
            raise ValueError(
                f"{pretrained_model_name_or_path}: config model_type is {model_type!r}; BERMo loads 'bermo' "
                f"checkpoints and the encoder families {', '.join(BACKBONE_MODEL_TYPES)}"
            )
        if model_type not in ("bert", "bermo"):  # a vanilla checkpoint of another family: its fields, flat
            backbone = CONFIG_MAPPING[model_type].from_dict(config_dict)
            return cls.from_dict(cls.for_backbone(backbone).to_dict(), **remaining)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)


__all__ = ["BACKBONE_MODEL_TYPES", "BermoConfig"]
