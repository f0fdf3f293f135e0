"""transformers 4.x checkpoints with `config.pruned_heads` (`PreTrainedModel.prune_heads`, removed in transformers 5):
their per-layer head counts for a BERMo config, and the unpruned model of the same function for verification.

A 4.x pruned layer keeps its remaining heads in their original order: q/k/v rows and attention-output columns of
the kept heads, as `layer_num_attention_heads` describes (modeling/structure_bermo.py).
"""

import json
import tempfile
from pathlib import Path

import torch


def pruned_heads_of(config_fields):
    """{layer index: sorted pruned heads} of a config dict's `pruned_heads` ({} when none)."""
    pruned = config_fields.get("pruned_heads") or {}
    return {int(layer): sorted({int(head) for head in heads}) for layer, heads in pruned.items() if heads}


def heads_left(config_fields):
    """The per-layer head counts after `pruned_heads` (a list for `layer_num_attention_heads`), or None."""
    pruned = pruned_heads_of(config_fields)
    if not pruned:
        return None
    heads = config_fields.get("num_attention_heads", 12)
    return [heads - len(pruned.get(layer, [])) for layer in range(config_fields.get("num_hidden_layers", 12))]


def _rows(heads, size):
    return torch.cat([torch.arange(head * size, (head + 1) * size) for head in heads])


def load_source_model(source_class, folder, read_weights, **kwargs):
    """`source_class.from_pretrained(folder)`; for a checkpoint with `pruned_heads` (which transformers 5 no longer
    loads), the unpruned model whose removed heads have zero q/k/v rows and output columns: the same function.
    `read_weights(folder)` gives the checkpoint's state dict."""
    fields = json.loads((Path(folder) / "config.json").read_text())
    pruned = pruned_heads_of(fields)
    if not pruned:
        return source_class.from_pretrained(folder, **kwargs)
    heads = fields.get("num_attention_heads", 12)
    size = fields["hidden_size"] // heads
    state = dict(read_weights(folder))
    for name, tensor in list(state.items()):
        parts = name.split(".")
        if "layer" not in parts or "attention" not in parts:
            continue
        layer = int(parts[parts.index("layer") + 1])
        if layer not in pruned:
            continue
        rows = _rows([head for head in range(heads) if head not in pruned[layer]], size)
        if parts[-2] in ("query", "key", "value"):
            full = tensor.new_zeros((heads * size, *tensor.shape[1:]))
            full[rows] = tensor
        elif parts[-3:-1] == ["output", "dense"] and parts[-1] == "weight":
            full = tensor.new_zeros((tensor.shape[0], heads * size))
            full[:, rows] = tensor
        else:
            continue
        state[name] = full
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as unpruned:
        fields.pop("pruned_heads")
        (Path(unpruned) / "config.json").write_text(json.dumps(fields))
        save_file({name: tensor.contiguous() for name, tensor in state.items()},
                  str(Path(unpruned) / "model.safetensors"), metadata={"format": "pt"})
        return source_class.from_pretrained(unpruned, **kwargs)
