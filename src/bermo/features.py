"""What hangs off the training loop: features (pruning, ...) and callbacks, one interface, one registry.

A *feature* is a `TrainingFeature` subclass with a `name`, an `arguments` dataclass (its command-line options, parsed
with the loop's by HfArgumentParser) and the hooks it needs; `register_feature` adds it to the registry, from which
the loop builds its features for a run and calls them at fixed points. The loop names no feature.

A *callback* is any `TrainingFeature` instance passed to `train(run, callbacks=[...])`: it sees the same hooks
(e.g. `on_step_end` to time steps, `on_evaluate` to look at the model), without arguments of its own. Benchmarks,
the experiments' runner and tests observe the loop this way, never by patching it.

The hooks, in the order the loop calls them (every one optional; the defaults do nothing):

    check stage     from_arguments(arguments, max_train_steps) -> feature | None   (None: off; ValueError: refused,
                                                                                     before anything is written)
                    setup(model) -> model              once, before the optimizer exists (e.g. swap modules)
                    check_resume(saved_config)         refuse a checkpoint written with another configuration
                    describe_missing(saved_config)     (class) why a checkpoint saved with it on needs it on
    prepare stage   parameter_groups(model) -> [group] extra optimizer groups; their parameters leave the default ones
                    state_dict() / load_state_dict()   saved with the training state (only where overridden)
    train stage     on_step(step)                      before each step's forward and each evaluation
                    penalty(model) -> tensor | None    added to the task loss
                    on_pre_optimizer_step(model, step) gradients are there, before optimizer.step()
                    on_step_end(step, loss)            after each optimizer step (`loss`: this step's task loss)
                    on_checkpoint(path)                after a complete checkpoint is in place
    evaluate stage  eval_figures(model) -> dict        logged beside each evaluation's metrics
                    on_evaluate(step, metrics, model)  after each evaluation
                    plot_panels() -> [(label, [figure names])]  extra panels of the learning-curve plot
    finish stage    before_save(model, output_dir, is_main_process) -> model   the model to save (e.g. masks applied)
                    after_save(model, output_dir) -> dict   figures of what was saved
                    card_info() -> dict                 for the model card and final_metrics.json
                    config() -> dict | None             stored in every checkpoint (FEATURES_FILE), checked on resume
"""

import importlib

# The features that come with bermo, by import path (imported when the registry is first read).
BUILTIN_FEATURES = ("bermo.pruning.feature:PruningFeature", "bermo.distillation:DistillationFeature")

_REGISTRY = {}


class TrainingFeature:
    """Base class of the loop's features and callbacks: every hook does nothing."""

    name = None  # the registry key, and the key of the feature's config in a checkpoint's FEATURES_FILE
    arguments = None  # a dataclass of the feature's options (HfArgumentParser), or None

    @classmethod
    def from_arguments(cls, arguments, max_train_steps):
        """The feature for these arguments, or None when they leave it off. Raise ValueError (one line, naming the
        flag) on bad input."""
        return None

    def setup(self, model):
        return model

    @classmethod
    def describe_missing(cls, saved_config):
        """Why a checkpoint saved with this feature on cannot resume a run that has it off."""
        return f"the checkpoint was saved with {cls.name} on ({saved_config}); resume it with the same flags"

    def check_resume(self, saved_config):
        """Raise ValueError when a checkpoint's stored `config()` (None: the feature was off) differs from ours."""
        current = self.config()
        if saved_config != current:
            raise ValueError(f"the checkpoint was saved with {self.name} settings {saved_config}, this run has "
                             f"{current}; resume with the same flags")

    def parameter_groups(self, model):
        return []

    def on_step(self, step):
        pass

    def training_loss(self, loss, outputs, batch, model):
        return loss

    def penalty(self, model):
        return None

    def on_pre_optimizer_step(self, model, step):
        pass

    def on_step_end(self, step, loss):
        pass

    def on_checkpoint(self, path):
        pass

    def eval_figures(self, model):
        return {}

    def on_evaluate(self, step, metrics, model):
        pass

    def plot_panels(self):
        return []

    def before_save(self, model, output_dir, is_main_process):
        return model

    def after_save(self, model, output_dir):
        return {}

    def card_info(self):
        return {}

    def config(self):
        return None

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    @property
    def stateful(self):
        """Whether the training state must hold this object's `state_dict()` (it overrides it)."""
        return type(self).state_dict is not TrainingFeature.state_dict


def register_feature(feature_class):
    """Add a feature class to the registry (usable as a decorator); its name must be new."""
    if not (isinstance(feature_class, type) and issubclass(feature_class, TrainingFeature)):
        raise TypeError(f"{feature_class!r} is not a TrainingFeature subclass")
    if not feature_class.name:
        raise ValueError(f"{feature_class.__name__} has no name")
    known = _REGISTRY.get(feature_class.name)
    if known is not None and known is not feature_class:
        raise ValueError(f"a feature named {feature_class.name!r} is already registered ({known.__name__})")
    _REGISTRY[feature_class.name] = feature_class
    return feature_class


def unregister_feature(name):
    _REGISTRY.pop(name, None)


def registered_features():
    """The registered feature classes, built-in ones first, in registration order."""
    for path in BUILTIN_FEATURES:
        module, _, attribute = path.partition(":")
        register_feature(getattr(importlib.import_module(module), attribute))
    return list(_REGISTRY.values())
