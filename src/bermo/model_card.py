"""Model cards for BERMo checkpoints, filled from the templates in `model_cards/` with huggingface_hub's ModelCard."""

from importlib.resources import files
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .modeling.configuration_bermo import BERMO_VERSION


# The encoder families' names as their papers write them, by `backbone_model_type` (transformers' model_type)
FAMILY_NAMES = {
    "bert": "BERT",
    "roberta": "RoBERTa",
    "xlm-roberta": "XLM-RoBERTa",
    "electra": "ELECTRA",
    "distilbert": "DistilBERT",
    "deberta-v2": "DeBERTa-v2",
    "modernbert": "ModernBERT",
}


def family_of(config):
    """(model_type, name, what the mix reads differently from BERT or "") of a BERMo config's encoder family."""
    model_type = getattr(config, "backbone_model_type", "bert")
    note = ""
    if model_type == "electra" and getattr(config, "embedding_size", config.hidden_size) != config.hidden_size:
        note = "h<sub>0</sub> is taken after `embeddings_project`, as ELECTRA's first layer sees it."
    elif model_type == "modernbert":
        note = ("ModernBERT is pre-LN: every representation is mixed after its `final_norm`, so h<sub>L</sub> is "
                "ModernBERT's own output.")
    return model_type, FAMILY_NAMES.get(model_type, model_type), note


def template_path(name):
    return str(files("bermo.model_cards") / name)


def source_card_metadata(folder):
    """The YAML metadata of the source's own model card (license, language, ...), or {} if it has none."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return {}
    try:
        return ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict()
    except Exception:  # a card without valid metadata: nothing to carry over
        return {}


def mix_table(config, weights=None, scale=None):
    """Rows (representation, softmax weight) of the layer mix, from the given weights or the config's init."""
    import torch

    if weights is None:
        weights = torch.softmax(torch.tensor(config.initial_mix_logits()), dim=0)
        scale = 1.0
    names = ["embeddings" if index == 0 else f"layer {index}" for index in config.mix_layer_indices]
    return [(name, f"{float(weight):.4f}") for name, weight in zip(names, weights)], f"{float(scale):.4f}"


def converted_model_card(
    *, source, base_model, revision, source_architecture, task, config, plan, verification, dtype, source_folder,
    pipeline_tag, model_class, auto_class, notes=(),
):
    """The README.md of a converted checkpoint."""
    source_metadata = source_card_metadata(source_folder)
    model_type, family_name, family_note = family_of(config)
    shown_source = base_model or (source if not Path(source).is_dir() else f"local folder {Path(source).name}")
    card_data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["bermo", model_type, "custom_code", pipeline_tag],
        license=source_metadata.get("license"),
        language=source_metadata.get("language"),
    )
    if verification is None:
        verification_text = "Not verified (converted with `--no-verify`)."
    else:
        figures = ", ".join(f"{key.replace('_', ' ')} {value:.3g}" for key, value in verification.items()
                            if key not in ("inputs", "tolerance"))
        verification_text = (
            f"The output was reloaded and compared with the source on {verification['inputs']}: {figures}. "
            f"A difference above {verification['tolerance']:g} (the tolerance for {dtype} weights; relative to the "
            "largest activation when that exceeds 1) fails."
        )
    rows, scale = mix_table(config)
    return ModelCard.from_template(
        card_data,
        template_path=template_path("converted.md"),
        model_name=f"{Path(str(base_model or source)).name} (BERMo)",
        family_name=family_name,
        family_note=family_note,
        base_model=shown_source,
        base_model_url=f"https://huggingface.co/{base_model}" if base_model else "#",
        bermo_version=BERMO_VERSION,
        source_revision=revision,
        source_architecture=source_architecture,
        model_class=model_class.__name__,
        task=task,
        mix_layers=config.mix_layer_indices,
        mix_init=config.mix_init,
        kept_count=len(plan.sources),
        dropped_count=len(plan.dropped),
        dropped_summary=plan.dropped_summary(),
        new_summary=", ".join(plan.new + [f"{name} (initialized on load)" for name in plan.initialized_on_load]),
        head_is_new=any(name.startswith(("classifier.", "qa_outputs.")) for name in plan.initialized_on_load),
        dtype=dtype,
        notes=list(notes),
        verification=verification_text,
        mix_rows=rows,
        mix_scale=scale,
        auto_class=auto_class,
        repo_id="YOUR_NAME/YOUR_REPO",
        revision="COMMIT_SHA",
    )


def finetuned_model_card(*, model, task_data, base_model, final_metrics, hyperparameters, has_layer_plot, train_size):
    """The README.md of a fine-tuned BERMo checkpoint: metrics in the model-index, hyperparameters, the layer mix."""
    from huggingface_hub import EvalResult

    glue = task_data.name in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")
    dataset_id = "nyu-mll/glue" if glue else task_data.name
    dataset_name = f"GLUE {task_data.name.upper()}" if glue else task_data.name
    model_type, family_name, family_note = family_of(model.config)
    name_root = Path(str(base_model)).name
    if Path(str(base_model)).is_dir():  # a local folder: name it, and take its own card's base_model if it has one
        shown_base = f"local folder {name_root}"
        base_model = source_card_metadata(base_model).get("base_model")
    else:
        shown_base = base_model
    model_name = f"{Path(str(base_model)).name if base_model else name_root}-bermo-{task_data.name}"
    eval_results = [
        EvalResult(
            task_type="text-classification", dataset_type=dataset_id, dataset_name=dataset_name,
            dataset_config=task_data.name if glue else None, dataset_split=split, metric_type=metric,
            metric_value=round(float(value), 4),
        )
        for split, metrics in final_metrics.items()
        for metric, value in metrics.items()
    ]
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["bermo", model_type, "custom_code", "text-classification"],
        datasets=[dataset_id] if glue else None,
        metrics=sorted({metric for metrics in final_metrics.values() for metric in metrics}),
        eval_results=eval_results or None,
    )
    weights, scale = model.layer_mix_weights()
    rows, scale_text = mix_table(model.config, weights, scale)
    return ModelCard.from_template(
        card_data,
        template_path=template_path("finetuned.md"),
        model_name=model_name,
        dataset_name=dataset_name,
        family_name=family_name,
        family_note=family_note,
        base_model=shown_base,
        bermo_version=BERMO_VERSION,
        results=[(split, metric, f"{value:.4f}") for split, metrics in final_metrics.items()
                 for metric, value in metrics.items()],
        mix_rows=rows,
        mix_scale=scale_text,
        has_layer_plot=has_layer_plot,
        hyperparameters=sorted(hyperparameters.items()),
        repo_id="YOUR_NAME/YOUR_REPO",
        revision="COMMIT_SHA",
        train_size=train_size,
    )
