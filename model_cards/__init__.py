# Model card templates (Jinja, filled by huggingface_hub's ModelCard); installed as `bermo.model_cards`.
