"""Putting masks into a model and taking them out: swap the encoder's Linear layers for `MaskedLinear` (sharing
their parameters), load saved scores, and export (masks multiplied in, scores dropped: a plain BERT/BERMo model)."""

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn

from .modules import ENCODER_KEY, ENCODER_LINEAR_LAYOUTS, MaskedLinear, masked_modules


def encoder_layers(model):
    """The encoder layers of a BERT or BERMo model (any head), or [] when it has none."""
    core = extract_model_from_parallel(model)
    base = getattr(core, "base_model", core)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    return list(layers) if isinstance(layers, nn.ModuleList) else []


def mask_encoder_linears(model, method, mask_init="constant", mask_scale=0.0):
    """In place: the six Linear layers of every encoder layer become MaskedLinear (already masked ones are kept).
    Returns the masked modules in layer order; ValueError when the model has none."""
    replaced = []
    for layer in encoder_layers(model):
        names = {name for name, _ in layer.named_modules()}
        layout = next((paths for paths in ENCODER_LINEAR_LAYOUTS if set(paths) <= names), ())
        for path in layout:
            parent_path, _, child = path.rpartition(".")
            try:
                parent = layer.get_submodule(parent_path)
            except AttributeError:
                continue
            linear = getattr(parent, child, None)
            if isinstance(linear, MaskedLinear):
                replaced.append(linear)
            elif isinstance(linear, nn.Linear):
                masked = MaskedLinear.from_linear(linear, method, mask_init, mask_scale)
                setattr(parent, child, masked)
                replaced.append(masked)
    if not replaced:
        name = type(extract_model_from_parallel(model)).__name__
        raise ValueError(f"--pruning_method {method}: {name} has no encoder Linear layers to mask (described for "
                         "BERT, RoBERTa, XLM-R, ELECTRA and DeBERTa-v2: base_model.encoder.layer)")
    return replaced


def encoder_relative(name):
    """A parameter's name from `encoder.layer.N.` on (so a BERT head's names match a BERMo head's)."""
    found = ENCODER_KEY.search(name)
    return name[found.start() + (found.group(1) == "."):] if found else name


@torch.no_grad()
def load_mask_scores(model, path):
    """Copy a --save_masks file's scores into the model's masked layers, matched by `encoder_relative` names; every
    layer must be there, with its shape (ValueError, one line, naming the file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    where = f"--mask_scores_file {path}"
    try:
        saved = {encoder_relative(name): tensor for name, tensor in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{where}: not a safetensors file ({str(error).splitlines()[0]})") from None
    for name, module in masked_modules(model):
        tensor = saved.get(encoder_relative(f"{name}.mask_scores"))
        if tensor is None:
            raise ValueError(f"{where}: no scores for {encoder_relative(name)}")
        if tensor.shape != module.mask_scores.shape:
            raise ValueError(f"{where}: {encoder_relative(name)} has shape {tuple(tensor.shape)}, the model's is "
                             f"{tuple(module.mask_scores.shape)}")
        module.mask_scores.copy_(tensor)


@torch.no_grad()
def export_mask_scores(model):
    """{parameter name: mask scores} (CPU copies), for --save_masks; call before `export_masked_model`."""
    return {f"{name}.mask_scores": module.mask_scores.detach().cpu().clone()
            for name, module in masked_modules(model) if hasattr(module, "mask_scores")}


@torch.no_grad()
def export_masked_model(model):
    """In place: every MaskedLinear becomes a plain nn.Linear holding weight * mask at its current setting (l0: the
    deterministic gates); the scores are gone. Returns the unwrapped model, whose state dict is plain BERT's (or
    BERMo's) and whose evaluation-mode predictions are the masked model's."""
    core = extract_model_from_parallel(model)
    for name, module in masked_modules(core):
        weight = module.weight
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        linear.weight.copy_(weight * module.current_mask())
        if module.bias is not None:
            linear.bias.copy_(module.bias)
        linear.train(module.training)
        parent_name, _, child = name.rpartition(".")
        setattr(core.get_submodule(parent_name), child, linear)
    return core
