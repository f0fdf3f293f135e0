"""Per-layer sizes of a structurally pruned BERMo model: how many attention heads and FFN neurons each layer keeps.

transformers 5 removed `prune_heads` and `config.pruned_heads`, and a BERT config holds one `num_attention_heads` and
one `intermediate_size`. A pruned BERMo config records instead (each `None` = uniform, as every unpruned config):

    layer_num_attention_heads   heads per encoder layer (each 1..num_attention_heads; head size stays
                                hidden_size / num_attention_heads)
    layer_intermediate_sizes    FFN width per encoder layer (each >= 1)
    kept_layers                 which layers of the model it was pruned from these are (0-based, increasing); the
                                dropped ones are gone (num_hidden_layers counts the kept ones) and their mix weight
                                was folded into the representation they passed on, so this is a record only

The model is built with BERT's own uniform layers and `resize_encoder_layers` then gives each layer its Linear layers
of the recorded sizes (BertSelfAttention reshapes q/k/v with -1 heads, so only its head count attributes change).

This file travels with every BERMo checkpoint (`trust_remote_code=True`): it imports only `torch` and defines
functions, nothing else.
"""

from torch import nn

def _is_count(value, low):
    return not isinstance(value, bool) and isinstance(value, int) and value >= low


def validate_structure(config):
    """ValueError (one line) for per-layer sizes that do not fit the config; None lists pass."""
    family = getattr(config, "backbone_model_type", "bert")
    given = [name for name in ("layer_num_attention_heads", "layer_intermediate_sizes", "kept_layers")
             if getattr(config, name, None) is not None]
    if given and family != "bert":
        raise ValueError(f"{', '.join(given)}: per-layer sizes are supported on the BERT backbone only, not {family}")
    layers = config.num_hidden_layers
    for name, limit in (("layer_num_attention_heads", config.num_attention_heads),
                        ("layer_intermediate_sizes", None)):
        values = getattr(config, name, None)
        if values is None:
            continue
        if not isinstance(values, (list, tuple)) or len(values) != layers:
            raise ValueError(f"{name} must list one value per layer ({layers}), got {values!r}")
        for value in values:
            if not _is_count(value, 1) or (limit is not None and value > limit):
                bound = f" and at most num_attention_heads ({limit})" if limit is not None else ""
                raise ValueError(f"{name} values must be integers >= 1{bound}, got {value!r}")
    kept = getattr(config, "kept_layers", None)
    if kept is not None:
        if not isinstance(kept, (list, tuple)) or len(kept) != layers:
            raise ValueError(f"kept_layers must list one original layer index per layer ({layers}), got {kept!r}")
        if not all(_is_count(value, 0) for value in kept) or list(kept) != sorted(set(kept)):
            raise ValueError(f"kept_layers must be increasing integers >= 0, got {kept!r}")


def layer_sizes(config):
    """[(attention heads, FFN width)] of every encoder layer as the config says."""
    heads = config.layer_num_attention_heads or [config.num_attention_heads] * config.num_hidden_layers
    widths = config.layer_intermediate_sizes or [config.intermediate_size] * config.num_hidden_layers
    return list(zip(heads, widths))


def _linear_like(linear, in_features, out_features):
    return nn.Linear(in_features, out_features, bias=linear.bias is not None, device=linear.weight.device,
                     dtype=linear.weight.dtype)


def resize_encoder_layers(layers, config):
    """In place: each built BertLayer gets q/k/v/attention-output Linears for its head count and intermediate/output
    Linears for its FFN width (new, uninitialized modules where the size differs; `_init_weights` or the checkpoint
    fills them). Layers of the uniform size are left as they are."""
    hidden = config.hidden_size
    head_size = hidden // config.num_attention_heads
    for layer, (heads, width) in zip(layers, layer_sizes(config)):
        attention = layer.attention.self
        if heads != attention.num_attention_heads:
            size = heads * head_size
            for name in ("query", "key", "value"):
                setattr(attention, name, _linear_like(getattr(attention, name), hidden, size))
            attention.num_attention_heads = heads
            attention.all_head_size = size
            output = layer.attention.output
            output.dense = _linear_like(output.dense, size, hidden)
        if width != layer.intermediate.dense.out_features:
            layer.intermediate.dense = _linear_like(layer.intermediate.dense, hidden, width)
            layer.output.dense = _linear_like(layer.output.dense, width, hidden)
