"""Remote-code round trip of a saved BERMo checkpoint, without our package.

    python tests/remote_code_roundtrip.py write DIR   # needs `bermo`: saves tiny heads + reference logits
    python tests/remote_code_roundtrip.py check DIR   # needs only torch + transformers + safetensors

`write` saves every head of BERT-based BERMo (DIR/<class>) and of every other supported encoder family
(DIR/<family>/<class>: RoBERTa, XLM-R, ELECTRA, DistilBERT, DeBERTa-v2, ModernBERT), and each family's own vanilla
model of every head (DIR/vanilla/<family>/<Auto class>). `check` loads every BERMo checkpoint in DIR through
AutoConfig, AutoModel and every Auto class named in its `auto_map` with trust_remote_code=True, asserts the classes
came from the checkpoint's own files (not an installed package) and are the ones `auto_map` names, and that the
outputs equal the reference saved by `write`; then it loads every vanilla checkpoint into the BERMo class of its head
(from the remote code) with the last-layer mix init (`mix_init="last"`) and asserts that its output equals the
vanilla model's, both run by the installed transformers. The test suite runs `check` in a process where `bermo`
cannot be imported; CI also runs it under transformers 4.57 in a virtual environment without our package.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HEADS = {
    "AutoModel": "BermoModel",
    "AutoModelForSequenceClassification": "BermoForSequenceClassification",
    "AutoModelForTokenClassification": "BermoForTokenClassification",
    "AutoModelForQuestionAnswering": "BermoForQuestionAnswering",
    "AutoModelForMultipleChoice": "BermoForMultipleChoice",
}


def example_inputs(auto_class):
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 99, (2, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if auto_class == "AutoModelForMultipleChoice":
        inputs = {name: tensor.unsqueeze(0).expand(2, -1, -1).contiguous() for name, tensor in inputs.items()}
    return inputs


def reference_outputs(model, auto_class):
    with torch.no_grad():
        output = model.eval()(**example_inputs(auto_class))
    return {name: value for name, value in output.items() if isinstance(value, torch.Tensor)}


FAMILY_AUTO_CLASSES = list(HEADS)
VANILLA = "vanilla"  # DIR/vanilla/<family>/<Auto class>: the family's own models


def family_folders(directory):
    """(family, folder holding its checkpoints) for every family other than BERT that `write` saved."""
    return sorted((path.name, path) for path in Path(directory).iterdir() if (path / "family.json").is_file())


def num_labels_of(auto_class):
    return 2 if auto_class == "AutoModelForQuestionAnswering" else 3  # extractive QA: a span's start and end


def write_families(directory):
    from conftest import FAMILIES, tiny_family_config

    from bermo import BermoConfig
    from bermo.modeling.families_bermo import bermo_family_classes

    for family in FAMILIES:
        for auto_class, model_class in bermo_family_classes(family).items():
            config = BermoConfig.for_backbone(tiny_family_config(family, num_labels=num_labels_of(auto_class)),
                                              mix_layers=[0, -2, -1])
            torch.manual_seed(0)
            model = model_class(config)
            with torch.no_grad():
                model.base_model.layer_mix.logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
                model.base_model.layer_mix.scale.fill_(1.7)
            folder = Path(directory) / family / model_class.__name__
            model.save_pretrained(folder)
            save_file(reference_outputs(model, auto_class), str(folder / "reference_outputs.safetensors"))
        (Path(directory) / family / "family.json").write_text(json.dumps({"backbone_model_type": family}))
        write_vanilla(directory, family, tiny_family_config)


def write_vanilla(directory, family, tiny_family_config):
    """The family's own model of every head, as transformers saves it. A ModernBERT config.json gets transformers
    4.x's spelling of its layer pattern and rotary bases too (`global_attn_every_n_layers`, ...), which transformers 5
    writes only as `layer_types` and `rope_parameters`: so that it is the same model under both."""
    import transformers

    for auto_class in FAMILY_AUTO_CLASSES:
        torch.manual_seed(0)
        model = getattr(transformers, auto_class).from_config(tiny_family_config(family, num_labels=num_labels_of(auto_class)))
        folder = Path(directory) / VANILLA / family / auto_class
        model.save_pretrained(folder)
        if family == "modernbert":
            fields = json.loads((folder / "config.json").read_text())
            layer_types, rope = fields["layer_types"], fields["rope_parameters"]
            every = layer_types[1:].index("full_attention") + 1 if "full_attention" in layer_types[1:] else len(layer_types)
            fields.update(global_attn_every_n_layers=every, global_rope_theta=rope["full_attention"]["rope_theta"],
                          local_rope_theta=rope["sliding_attention"]["rope_theta"])
            (folder / "config.json").write_text(json.dumps(fields, indent=2))


def check_families(directory):
    """Every family's BERMo checkpoints: their remote-code classes and outputs. Returns the count."""
    import transformers

    checked = 0
    for family, family_folder in family_folders(directory):
        for folder in sorted(path for path in family_folder.iterdir() if path.is_dir()):
            auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
            assert set(HEADS) | {"AutoConfig"} <= set(auto_map), f"{folder}: auto_map lacks entries: {auto_map}"
            auto_class = next(name for name, entry in auto_map.items() if entry.endswith("." + folder.name))
            reference = load_file(str(folder / "reference_outputs.safetensors"))
            for loader in sorted({auto_class, "AutoModel"}):
                model = getattr(transformers, loader).from_pretrained(folder, trust_remote_code=True)
                assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
                assert type(model).__name__ == auto_map[loader].rsplit(".", 1)[1], (loader, type(model).__name__)
                if loader != auto_class:
                    continue
                outputs = reference_outputs(model, auto_class)
                for name, expected in reference.items():
                    difference = (outputs[name] - expected).abs().max().item()
                    assert difference <= 1e-6, f"{family} {folder.name} {name} differs by {difference}"
            checked += 1
    return checked


def check_vanilla_equivalence(directory):
    """Every family's vanilla checkpoint of every head, loaded into BERMo's class of that head (the remote code's)
    with mix_init="last", gives the vanilla model's output (both on the installed transformers). Returns the count."""
    import transformers

    checked = 0
    for family, family_folder in family_folders(directory):
        bermo_classes = {}
        for folder in (path for path in family_folder.iterdir() if path.is_dir()):
            auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
            auto_class = next(name for name, entry in auto_map.items() if entry.endswith("." + folder.name))
            bermo_classes[auto_class] = folder
        for auto_class in FAMILY_AUTO_CLASSES:
            vanilla_folder = Path(directory) / VANILLA / family / auto_class
            vanilla = getattr(transformers, auto_class).from_pretrained(vanilla_folder).eval()
            bermo_class = type(getattr(transformers, auto_class).from_pretrained(
                bermo_classes[auto_class], trust_remote_code=True))
            verbosity = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()  # (the expected "newly initialized: [...layer_mix...]" notice)
            try:
                model = bermo_class.from_pretrained(vanilla_folder, mix_init="last").eval()
            finally:
                transformers.logging.set_verbosity(verbosity)
            missing = [name for name, _ in model.named_parameters() if "layer_mix." in name]
            assert len(missing) == 2, missing
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            assert model.config.mix_init == "last", model.config.mix_init
            key = {"AutoModel": "last_hidden_state", "AutoModelForQuestionAnswering": "start_logits"}.get(auto_class, "logits")
            for inputs in (example_inputs(auto_class), left_padded(example_inputs(auto_class))):
                with torch.no_grad():
                    expected, actual = vanilla(**inputs)[key], model(**inputs)[key]
                assert actual.shape == expected.shape, (family, auto_class, actual.shape, expected.shape)
                difference = (actual - expected).abs().max().item()
                assert difference <= 1e-5, f"{family} {auto_class}: BERMo (last) differs from vanilla by {difference}"
            checked += 1
    return checked


def left_padded(inputs):
    return {name: tensor.flip(-1) if name == "attention_mask" else tensor for name, tensor in inputs.items()}


def write(directory):
    import transformers

    import bermo

    torch.manual_seed(0)
    config = bermo.BermoConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, num_labels=3, mix_layers=[0, -2, -1], mix_layer_norm=True,
    )
    for auto_class, class_name in HEADS.items():
        config.num_labels = num_labels_of(auto_class)
        model = getattr(bermo, class_name)(config)
        with torch.no_grad():  # a mix away from its init, so that a silent re-initialization would show
            model.base_model.layer_mix.logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
            model.base_model.layer_mix.scale.fill_(1.7)
        folder = Path(directory) / class_name
        model.save_pretrained(folder)
        save_file(reference_outputs(model, auto_class), str(folder / "reference_outputs.safetensors"))
    write_shrunk(Path(directory) / SHRUNK)
    write_families(directory)
    print(f"wrote {len(HEADS)} BERT-based checkpoints, a structurally pruned one and every family's under "
          f"{directory} with transformers {transformers.__version__}")


# A structurally pruned checkpoint: layers of different head counts and FFN widths, one layer dropped.
SHRUNK = "shrunk"


def write_shrunk(folder):
    import bermo
    from bermo.arguments import PruningArguments
    from bermo.pruning import PruningFeature

    torch.manual_seed(0)
    config = bermo.BermoConfig(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                               intermediate_size=37, max_position_embeddings=64, num_labels=3)
    model = bermo.BermoForSequenceClassification(config)
    feature = PruningFeature.from_arguments(PruningArguments(
        pruning_method="movement", pruning_granularity="head,neuron,layer", final_threshold=0.67), 1)
    model = feature.setup(model)
    with torch.no_grad():
        for mask in feature.structures.all_masks():
            mask.scores.normal_()
    feature.on_step(1)
    model = feature.export(model)
    assert model.config.layer_num_attention_heads and model.config.kept_layers, model.config
    model.save_pretrained(folder)
    save_file(reference_outputs(model, "AutoModelForSequenceClassification"),
              str(folder / "reference_outputs.safetensors"))


def check(directory):
    import transformers
    from transformers import AutoConfig

    try:
        import bermo  # noqa: F401
    except ImportError:
        pass
    else:
        sys.exit("check must run where `bermo` is not importable")
    checked = 0
    for auto_class, class_name in HEADS.items():
        folder = Path(directory) / class_name
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert set(HEADS) | {"AutoConfig"} <= set(auto_map), f"{folder}: auto_map lacks entries: {auto_map}"
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        assert type(config).__name__ == "BermoConfig", type(config)
        assert type(config).__module__.startswith("transformers_modules"), type(config).__module__
        reference = load_file(str(folder / "reference_outputs.safetensors"))
        for loader in sorted({auto_class, "AutoModel"}):
            model = getattr(transformers, loader).from_pretrained(folder, trust_remote_code=True)
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            assert type(model).__name__ == HEADS[loader], (loader, type(model).__name__)
            if loader != auto_class:
                continue
            outputs = reference_outputs(model, auto_class)
            for name, expected in reference.items():
                difference = (outputs[name] - expected).abs().max().item()
                assert difference <= 1e-6, f"{class_name} {name} differs by {difference}"
            checked += 1
    check_outputs_and_training(Path(directory) / "BermoForSequenceClassification")
    check_shrunk(Path(directory) / SHRUNK)
    families = check_families(directory)
    vanilla = check_vanilla_equivalence(directory)
    print(f"remote code OK: {checked + families} checkpoints and a structurally pruned one, every auto_map entry, "
          f"transformers {transformers.__version__}")
    print(f"last-layer init OK: {vanilla} heads of {len(family_folders(directory))} families equal the family's own "
          f"model (<= 1e-5), transformers {transformers.__version__}")


def check_shrunk(folder):
    """The pruned checkpoint loads with its per-layer sizes and gives the exported model's outputs."""
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    config = model.config
    heads = [layer.attention.self.query.out_features // (config.hidden_size // config.num_attention_heads)
             for layer in model.base_model.encoder.layer]
    assert heads == config.layer_num_attention_heads, (heads, config.layer_num_attention_heads)
    outputs = reference_outputs(model, "AutoModelForSequenceClassification")
    for name, expected in load_file(str(folder / "reference_outputs.safetensors")).items():
        difference = (outputs[name] - expected).abs().max().item()
        assert difference <= 1e-5, f"shrunk {name} differs by {difference}"


def check_outputs_and_training(folder):
    """Under this transformers: hidden states and attentions on request, and training with (reentrant)
    gradient checkpointing reaches the mix."""
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager")
    ids = torch.tensor([[2, 7, 9, 11, 3, 0], [2, 5, 6, 3, 0, 0]])
    mask = (ids > 0).long()
    output = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    layers = model.config.num_hidden_layers
    assert len(output.hidden_states) == layers + 1 and len(output.attentions) == layers, (
        len(output.hidden_states), len(output.attentions))
    assert output.attentions[0].shape == (2, model.config.num_attention_heads, 6, 6)
    head = transformers.AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    head.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    head.train()
    loss = head(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert head.base_model.layer_mix.logits.grad is not None and head.base_model.layer_mix.logits.grad.abs().sum() > 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["write", "check"])
    parser.add_argument("directory")
    args = parser.parse_args()
    write(args.directory) if args.action == "write" else check(args.directory)


if __name__ == "__main__":
    main()
