"""The loop's features (pruning, distillation, ...) for `transformers.Trainer` users.

    from bermo.arguments import PruningArguments
    from bermo.pruning import PruningFeature
    from bermo.trainer import FeatureTrainer

    pruning = PruningFeature(PruningArguments(pruning_method="movement", final_threshold=0.15), max_train_steps=1000)
    trainer = FeatureTrainer(model=model, args=TrainingArguments(..., max_steps=1000), train_dataset=...,
                             features=[pruning])
    trainer.train()
    trainer.save_model("out")   # the final save exports: masks applied, scores dropped (a plain checkpoint)

Structured pruning the same way: `PruningFeature.from_arguments(PruningArguments(pruning_method="movement",
pruning_granularity="head,neuron", final_threshold=0.5), max_train_steps=1000)`; its final save writes the smaller
model (heads and neurons removed, per-layer sizes in the config).

`FeatureTrainer` is a `Trainer` whose features hook in where bermo's own loop calls them: `setup` when the trainer is
built, their `parameter_groups` in the optimizer, `on_step` before and after each step (`FeatureCallback`), `training_loss` and
`penalty` in `compute_loss` (training only), `eval_figures` logged with each evaluation, and `before_save` /
`after_save` at the final `save_model()` (the intermediate `checkpoint-*` saves keep the masked model, so that
training resumes from them).
"""

import os

from transformers import Trainer, TrainerCallback


class FeatureCallback(TrainerCallback):
    """Tells the features the optimizer step the Trainer is at (the pruning schedule follows it)."""

    def __init__(self, features):
        self.features = features

    def on_step_begin(self, args, state, control, **kwargs):
        for feature in self.features:
            feature.on_step(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):  # the completed steps: what evaluations and saves see
        for feature in self.features:
            feature.on_step(state.global_step)


class FeatureTrainer(Trainer):
    """`transformers.Trainer` with `features=[...]` (bermo.features.TrainingFeature instances)."""

    def __init__(self, *args, features=(), **kwargs):
        self.bermo_features = list(features)
        model = kwargs.get("model", args[0] if args else None)
        for feature in self.bermo_features:
            model = feature.setup(model)
        if "model" in kwargs or not args:
            kwargs["model"] = model
        else:
            args = (model, *args[1:])
        super().__init__(*args, **kwargs)
        self.add_callback(FeatureCallback(self.bermo_features))

    def create_optimizer(self, *args, **kwargs):
        """Trainer's optimizer, with the features' own parameter groups (their parameters leave Trainer's groups)."""
        if self.optimizer is None:
            extra = [group for feature in self.bermo_features for group in feature.parameter_groups(self.model)]
            optimizer = super().create_optimizer(*args, **kwargs)
            claimed = {id(parameter) for group in extra for parameter in group["params"]}
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in claimed]
            for group in extra:
                optimizer.add_param_group(dict(group))
            return optimizer
        return super().create_optimizer(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        if model.training:
            for feature in self.bermo_features:
                loss = feature.training_loss(loss, outputs, inputs, model)
            for feature in self.bermo_features:
                penalty = feature.penalty(model)
                if penalty is not None:
                    loss = loss + penalty
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, *args, **kwargs):
        """Trainer's evaluation at the current step's setting (e.g. pruning threshold), plus the features' figures."""
        for feature in self.bermo_features:
            feature.on_step(self.state.global_step)
        metrics = super().evaluate(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", "eval")
        figures = {}
        for feature in self.bermo_features:
            figures.update({f"{prefix}_{k}": v for k, v in feature.eval_figures(self.model).items()
                            if isinstance(v, (int, float))})
        if figures:
            self.log(figures)
            metrics.update(figures)
        return metrics

    def save_model(self, output_dir=None, _internal_call=False):
        """The final save (not the `checkpoint-*` ones) exports through the features first: for pruning, the masks
        are applied and dropped, so the saved model is a plain checkpoint. Call it once, after training."""
        if _internal_call or not self.bermo_features:
            return super().save_model(output_dir, _internal_call=_internal_call)
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        for feature in self.bermo_features:
            feature.on_step(self.state.global_step)
            model = feature.before_save(model, output_dir, self.is_world_process_zero())
        self.model = model
        super().save_model(output_dir, _internal_call=_internal_call)
        self.exported_figures = {}
        if self.is_world_process_zero():
            for feature in self.bermo_features:
                self.exported_figures.update(feature.after_save(model, output_dir))
        return None
