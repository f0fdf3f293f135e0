"""Structured masks: whole attention heads, FFN neurons and encoder layers, one score per structure.

A head's contribution to its layer is its slice of the attention output's input features (its `head_size` columns of
`attention.output.dense`); a neuron's is one input column of `output.dense`. Masking those columns removes exactly
the head or neuron: the query/key/value rows (and the intermediate row) of a masked structure then receive no
gradient and are sliced away at export. So the mask sits on those two Linears (`GroupMaskedLinear`, which keeps
nn.Linear's `weight`/`bias` names), and a layer's mask is a forward hook on its BertLayer (`output = input` when
masked). Each layer owns its `StructureMask` modules (a `scores` parameter for movement and soft movement).

Scores (Lagunas et al. 2021, block movement with one block per structure):

    movement       learned scores S, straight-through: dL/dS = dL/dmask = sum over the structure's weights of
                   dL/dW' * W (for a head, Michel et al.'s first-order head importance accumulated over training)
    soft_movement  the same scores, kept where sigmoid(S) > threshold, L1 penalty on sigmoid(S)
    l0             a hard-concrete gate per head or neuron (CoFi's structured L0; sampled in training, deterministic
                   in evaluation) with the expected-L0 penalty; the export keeps the structures whose gate is not 0
                   and scales their output columns by it. Not for layers (a gate between 0 and 1 on a whole layer
                   would not survive its removal or keeping).
    magnitude      the L2 norm of all the structure's weights (a head: its q/k/v rows and output columns; a neuron:
                   its intermediate row and output column; a layer: its six matrices)

The masks are set by the feature at each schedule update (`on_step`), per layer or over all layers (--global_topk);
layers are always ranked over the whole model. Forward only reads them.
"""

import torch
from torch import nn

from ..arguments import STRUCTURES
from .masks import l0_gates
from .modules import init_scores
from .patching import encoder_layers


def parse_granularity(text):
    """--pruning_granularity: ("weight",) or a tuple of structures in STRUCTURES' order; ValueError (one line)."""
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    unknown = [part for part in parts if part not in ("weight", *STRUCTURES)]
    if unknown or not parts:
        raise ValueError(f"--pruning_granularity {text!r}: unknown {unknown[0] if unknown else 'empty value'!r}; "
                         f"choose weight, or a comma-separated set of {', '.join(STRUCTURES)} (e.g. head,neuron)")
    if "weight" in parts:
        if len(set(parts)) > 1:
            raise ValueError(f"--pruning_granularity {text!r}: weight does not combine with {', '.join(STRUCTURES)} "
                             "(weight masks would leave zeros in the shrunk model); choose one of the two kinds")
        return ("weight",)
    return tuple(kind for kind in STRUCTURES if kind in parts)


class StructureMask(nn.Module):
    """The masks of `count` structures of one kind in one layer: `mask` (0/1, set by the feature, not saved) and, for
    movement and soft movement, `scores`."""

    def __init__(self, count, method, mask_init="constant", mask_scale=0.0, device=None):
        super().__init__()
        self.method = method
        self.register_buffer("mask", torch.ones(count, device=device), persistent=False)
        if method != "magnitude":
            self.scores = nn.Parameter(torch.empty(count, device=device))
            init_scores(self.scores, mask_init, mask_scale)

    @property
    def count(self):
        return self.mask.numel()

    def straight_through(self):
        """A zero of the mask's shape whose gradient flows to the scores (dL/dS = dL/dmask), or 0 for magnitude."""
        if self.method == "magnitude":
            return 0.0
        return self.scores - self.scores.detach()

    def gate(self):
        """The mask, with the straight-through gradient to the scores; its value is exactly `mask`. For l0 the
        hard-concrete gates themselves (sampled in training; in evaluation the deterministic ones, which `mask`
        holds as of the last schedule update)."""
        if self.method == "l0":
            return l0_gates(self.scores, self.training)
        return self.mask + self.straight_through()

    def extra_repr(self):
        return f"count={self.count}, method={self.method}, kept={int(self.mask.sum())}"


class GroupMaskedLinear(nn.Linear):
    """nn.Linear whose input features are masked in groups of `group_size` (a head's columns, a neuron's column):
    W' = W * mask.repeat_interleave(group_size). Same `weight`/`bias` parameters; the mask is `structure`."""

    def __init__(self, in_features, out_features, bias=True, group_size=1, structure=None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.group_size = group_size
        self.structure = structure

    @classmethod
    def from_linear(cls, linear, structure, group_size):
        """A GroupMaskedLinear sharing `linear`'s weight and bias parameters (the same objects)."""
        masked = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, group_size=group_size,
                     structure=structure, device="meta")
        masked.weight = linear.weight
        masked.bias = linear.bias
        masked.train(linear.training)
        return masked

    def column_mask(self):
        return self.structure.gate().repeat_interleave(self.group_size).to(self.weight.dtype)

    def forward(self, input):
        return nn.functional.linear(input, self.weight * self.column_mask(), self.bias)

    def plain(self):
        """A plain nn.Linear holding W' (the masked columns zero)."""
        with torch.no_grad():
            linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                               device=self.weight.device, dtype=self.weight.dtype)
            linear.weight.copy_(self.weight * self.structure.mask.repeat_interleave(self.group_size))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        linear.train(self.training)
        return linear


def gate_layer_output(layer, args, kwargs, output):
    """Forward hook of a BertLayer with a `layer_gate`: a masked layer passes its input on unchanged (exactly), with
    the straight-through gradient dL/dS = sum g * (output - input) to its score."""
    hidden = args[0] if args else kwargs["hidden_states"]
    gate = layer.layer_gate
    result = output[0] if isinstance(output, tuple) else output
    kept = gate.mask.to(torch.bool)
    straight_through = gate.straight_through()
    if torch.is_tensor(straight_through):  # the model's dtype stays (a float32 score must not promote bf16 states)
        straight_through = straight_through.to(result.dtype)
    gated = torch.where(kept, result, hidden) + straight_through * (result - hidden)
    return (gated, *output[1:]) if isinstance(output, tuple) else gated


def remove_layer_gate(layer):
    """Drop a layer's gate and its forward hook (found in the layer's hook table, so that this works on a copy of the
    model too, e.g. the unsharded copy an FSDP run saves from)."""
    for key, hook in list(layer._forward_hooks.items()):
        if hook is gate_layer_output:
            del layer._forward_hooks[key]
            layer._forward_hooks_with_kwargs.pop(key, None)
    if hasattr(layer, "layer_gate"):
        del layer.layer_gate


class EncoderStructures:
    """The structure masks of a model's encoder layers, by kind: {"head": [StructureMask per layer], ...}."""

    def __init__(self, layers, masks):
        self.layers, self.masks = layers, masks

    @classmethod
    def of(cls, model, kinds):
        """The masks a model's layers hold (set up by `mask_encoder_structures`, on this model or the one it was copied
        from)."""
        layers = encoder_layers(model)
        found = {"head": lambda layer: getattr(layer.attention.output.dense, "structure", None),
                 "neuron": lambda layer: getattr(layer.output.dense, "structure", None),
                 "layer": lambda layer: getattr(layer, "layer_gate", None)}
        masks = {kind: [found[kind](layer) for layer in layers] for kind in kinds}
        if not layers or any(mask is None for masks in masks.values() for mask in masks):
            raise ValueError(f"{type(model).__name__}: its encoder layers hold no {', '.join(kinds)} masks")
        return cls(layers, masks)

    def all_masks(self):
        return [mask for masks in self.masks.values() for mask in masks]


def head_size_of(layer):
    return layer.attention.self.attention_head_size


def mask_encoder_structures(model, kinds, method, mask_init="constant", mask_scale=0.0):
    """In place: give every encoder layer masks for the structures of `kinds`; returns an `EncoderStructures`.
    ValueError (one line) for a model without BERT encoder layers or with heads that do not divide the hidden size."""
    layers = encoder_layers(model)
    if not layers:
        raise ValueError(f"--pruning_granularity {','.join(kinds)}: {type(model).__name__} has no BERT encoder layers")
    config = getattr(model, "config", None)
    if config is not None and config.hidden_size % config.num_attention_heads:
        raise ValueError(f"--pruning_granularity {','.join(kinds)}: hidden_size {config.hidden_size} is not a multiple "
                         f"of num_attention_heads {config.num_attention_heads}; heads cannot be cut out whole")
    for layer in layers:
        device = layer.output.dense.weight.device
        if "head" in kinds:
            output = layer.attention.output
            heads = layer.attention.self.num_attention_heads
            structure = StructureMask(heads, method, mask_init, mask_scale, device)
            output.dense = GroupMaskedLinear.from_linear(output.dense, structure, head_size_of(layer))
        if "neuron" in kinds:
            structure = StructureMask(layer.output.dense.in_features, method, mask_init, mask_scale, device)
            layer.output.dense = GroupMaskedLinear.from_linear(layer.output.dense, structure, 1)
        if "layer" in kinds:
            layer.layer_gate = StructureMask(1, method, mask_init, mask_scale, device)
            layer.register_forward_hook(gate_layer_output, with_kwargs=True)
    return EncoderStructures.of(model, kinds)


def _weight(linear):
    return linear.weight.detach().float()


@torch.no_grad()
def magnitudes(layer, kind):
    """The L2 norm of each structure's weights in one layer (heads, neurons or the layer as one structure)."""
    attention = layer.attention.self
    if kind == "head":
        heads, size = attention.num_attention_heads, attention.attention_head_size
        total = sum(_weight(getattr(attention, name)).reshape(heads, size, -1).pow(2).sum((1, 2))
                    for name in ("query", "key", "value"))
        total = total + _weight(layer.attention.output.dense).reshape(-1, heads, size).pow(2).sum((0, 2))
        return total.sqrt()
    if kind == "neuron":
        return (_weight(layer.intermediate.dense).pow(2).sum(1) + _weight(layer.output.dense).pow(2).sum(0)).sqrt()
    linears = (attention.query, attention.key, attention.value, layer.attention.output.dense,
               layer.intermediate.dense, layer.output.dense)
    return sum(_weight(linear).pow(2).sum() for linear in linears).sqrt().reshape(1)


def layer_parameter_count(hidden, head_size, heads, width, layer_norms=2):
    """Parameters of one BERT encoder layer with `heads` heads and FFN `width`: q/k/v/output and intermediate/output
    Linears with biases, and its LayerNorms."""
    attention = heads * head_size
    return (3 * (hidden * attention + attention) + attention * hidden + hidden
            + hidden * width + width + width * hidden + hidden + layer_norms * 2 * hidden)


def kept_structure(structures):
    """What the masks keep, per layer: [(layer kept, [kept head indices], [kept neuron indices])], with None lists
    for the kinds not pruned. A layer's kept list may be empty (the export then keeps one structure, zeroed)."""
    result = []
    for index, layer in enumerate(structures.layers):
        def kept(kind):
            masks = structures.masks.get(kind)
            return None if masks is None else torch.nonzero(masks[index].mask).flatten().tolist()
        layer_kept = kept("layer")
        result.append((layer_kept is None or bool(layer_kept), kept("head"), kept("neuron")))
    return result


def kept_parameter_counts(structures):
    """(kept encoder-layer parameters as the export will have them, the encoder layers' parameters now)."""
    kept = dense = 0
    for layer, (layer_kept, heads, neurons) in zip(structures.layers, kept_structure(structures)):
        hidden, head_size = layer.output.dense.out_features, head_size_of(layer)
        all_heads, width = layer.attention.self.num_attention_heads, layer.output.dense.in_features
        dense += layer_parameter_count(hidden, head_size, all_heads, width)
        if layer_kept:
            kept += layer_parameter_count(hidden, head_size, all_heads if heads is None else max(len(heads), 1),
                                          width if neurons is None else max(len(neurons), 1))
    return kept, dense
