"""Export of a structurally pruned model: masked heads, neurons and layers physically removed.

    model = shrink_model(model, structures)   # in place where it can; returns the model to save

- Heads and neurons: each layer's Linears are sliced with transformers' `prune_linear_layer` (q/k/v rows and the
  attention output's columns of the kept heads; the intermediate rows and output columns of the kept neurons), and the
  layer's head count is set on its attention module. A layer whose masks keep no head (or no neuron) keeps one, with
  zero output columns: its output is then the output projection's bias, exactly what the masked layer gave, and every
  layer keeps the shapes BERT's attention code expects (a 0-head reshape fails).
- Layers: a masked layer passed its input on, so its output h_j equals h_(j-1). The layer is removed, and its mix
  logit folded into that representation's with logsumexp, so the mix is the same function (exact up to float
  rounding of exp/log).
- The per-layer sizes go to the config (`layer_num_attention_heads`, `layer_intermediate_sizes`, `kept_layers`;
  see modeling/structure_bermo.py), None where uniform, so an unchanged structure exports exactly as before.
- A BERT model whose structure changed becomes the BERMo model of the same head, mixing only its last layer (one
  logit: weight exactly 1, scale 1), because BertConfig cannot hold per-layer sizes.
"""

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from .structure import GroupMaskedLinear, kept_structure, remove_layer_gate


def _plain(linear):
    return linear.plain() if isinstance(linear, GroupMaskedLinear) else linear


def _head_rows(heads, head_size, device):
    return torch.cat([torch.arange(h * head_size, (h + 1) * head_size) for h in heads]).to(device)


@torch.no_grad()
def _shrink_layer(layer, heads, neurons):
    """Slice one layer to its kept heads and neurons (None: that kind is not pruned); returns (heads, width)."""
    attention = layer.attention.self
    output = layer.attention.output
    output.dense = _plain(output.dense)  # the masked columns are zero
    layer.output.dense = _plain(layer.output.dense)
    if heads is not None:
        size = attention.attention_head_size
        keep = heads or [0]  # no head kept: one, whose output columns are zero
        rows = _head_rows(keep, size, output.dense.weight.device)
        for name in ("query", "key", "value"):
            setattr(attention, name, prune_linear_layer(getattr(attention, name), rows, dim=0))
        output.dense = prune_linear_layer(output.dense, rows, dim=1)
        attention.num_attention_heads = len(keep)
        attention.all_head_size = len(keep) * size
    if neurons is not None:
        keep = torch.tensor(neurons or [0], device=layer.output.dense.weight.device)
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, keep, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, keep, dim=1)
    return attention.num_attention_heads, layer.intermediate.dense.out_features


def _record(values, uniform):
    return None if all(value == uniform for value in values) else list(values)


def fold_mix_logits(indices, logits, kept):
    """The mix after dropping layers: representation j (0 = embeddings, j = output of layer j-1) of a dropped layer
    equals the last representation before it, so its logit is folded into that one's with logsumexp.
    `indices`: the mixed representations; `logits`: theirs (tensor); `kept`: per built layer, kept or not.
    Returns (new indices, new logits)."""
    new_index, position = [0], 0
    for layer_kept in kept:
        position += bool(layer_kept)
        new_index.append(position)
    targets = sorted({new_index[j] for j in indices})
    folded = []
    for target in targets:
        members = [logits[i] for i, j in enumerate(indices) if new_index[j] == target]
        folded.append(torch.logsumexp(torch.stack(members), dim=0))
    return targets, torch.stack(folded)


@torch.no_grad()
def _drop_layers(model, kept):
    """Remove the layers not kept (at least one stays), fold the mix (BERMo), and count the layers left (layers above
    the highest mixed one, never built, are gone from the config too)."""
    base = model.base_model
    config = model.config
    layer_mix = getattr(base, "layer_mix", None)
    if layer_mix is not None:
        indices, logits = fold_mix_logits(layer_mix.layer_indices, layer_mix.logits.detach().float(), kept)
        if isinstance(config.mix_init, list):
            _, initial = fold_mix_logits(layer_mix.layer_indices, torch.tensor(config.mix_init), kept)
            config.mix_init = initial.tolist()
        layer_mix.layer_indices = indices
        layer_mix.logits = nn.Parameter(logits.to(layer_mix.logits.device), requires_grad=config.mix_trainable)
    base.encoder.layer = nn.ModuleList([layer for layer, keep in zip(base.encoder.layer, kept) if keep])
    config.num_hidden_layers = len(base.encoder.layer)
    if layer_mix is not None:
        count = config.num_hidden_layers + 1
        config.mix_layers = None if layer_mix.layer_indices == list(range(count)) else list(layer_mix.layer_indices)


def _as_bermo(model):
    """The BERMo model of a BERT model's head, with the same weights and a mix of the last layer only."""
    from ..conversion import TASKS, bermo_config_for

    tasks = {bert_name: task for task, (_, bert_name, _, _) in TASKS.items()}
    task = tasks.get(type(model).__name__)
    if task is None:
        raise ValueError(f"structured pruning export: {type(model).__name__} has no BERMo counterpart")
    fields = model.config.to_dict()
    config = bermo_config_for(fields, task, None, "last", [-1])
    parameter = next(model.parameters())
    bermo = TASKS[task][0](config).to(device=parameter.device)
    missing, unexpected = bermo.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(".layer_mix." not in f".{name}" for name in missing):
        raise RuntimeError(f"structured pruning export: BERT to BERMo left {missing} missing, {unexpected} unexpected")
    bermo.base_model.layer_mix.restore_from_config(config, reinitialize=True)
    return bermo.train(model.training)


@torch.no_grad()
def shrink_model(model, structures):
    """In place: the masked heads, neurons and layers removed, the per-layer sizes in the config; returns the model to
    save (the same object, or for a BERT model whose structure changed, its BERMo counterpart)."""
    core = extract_model_from_parallel(model)
    plan = kept_structure(structures)
    config = core.config
    before_heads = [layer.attention.self.num_attention_heads for layer in structures.layers]
    before_widths = [layer.intermediate.dense.out_features for layer in structures.layers]
    sizes = []
    for layer, (_, heads, neurons) in zip(structures.layers, plan):
        sizes.append(_shrink_layer(layer, heads, neurons))
        remove_layer_gate(layer)
    kept = [layer_kept for layer_kept, _, _ in plan]
    changed = not all(kept) or [s[0] for s in sizes] != before_heads or [s[1] for s in sizes] != before_widths
    if not changed:
        return core
    previous = getattr(config, "kept_layers", None)
    originals = previous or list(range(len(kept)))
    _drop_layers(core, kept)  # also when all stay: num_hidden_layers then counts the built layers, as the lists do
    kept_sizes = [size for size, keep in zip(sizes, kept) if keep]
    config.layer_num_attention_heads = _record([h for h, _ in kept_sizes], config.num_attention_heads)
    config.layer_intermediate_sizes = _record([w for _, w in kept_sizes], config.intermediate_size)
    # recorded once layers were dropped (now or when the model was pruned before)
    dropped = not all(kept) or previous is not None
    config.kept_layers = [original for original, keep in zip(originals, kept) if keep] if dropped else None
    if not hasattr(core, "layer_mix_weights"):  # BERT: only a BERMo config holds per-layer sizes
        return _as_bermo(core)
    return core
