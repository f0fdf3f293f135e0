"""Runs of an experiment: each an independent, idempotent unit with a deterministic id, executed by an engine.

An experiment is a list of runs, each a JSON configuration ("kind" plus its arguments). A fine-tuning run's
arguments are its typed settings (`bermo.arguments.RunArguments`, built by the experiment with `dataclasses.replace`)
as `run_to_dict` gives them: the `dataclasses.asdict` of each settings dataclass, one flat object, every value
explicit (see `common.finetune_run`); the run process turns them back into the same typed values
(`run_from_dict`) for the loop. A run's id is a hash of its configuration (16 hex digits of the SHA-256 of its
canonical JSON: sorted keys, no spaces): the same settings give the same id, any changed setting another one.
Its folder OUTPUT_DIR/runs/ID holds `config.json`, whatever the run writes, and finally `result.json` (written
atomically: status "ok" or "failed" with the reason, the run's numbers, timings). The driver keeps OUTPUT_DIR/runs.jsonl: one line per finished run, with its configuration. OUTPUT_DIR/experiment.json
records the experiment's configuration; the same command run again skips what finished and runs the rest, and a
different configuration in the same folder is refused.

A run is executed by `python -m bermo.experiments.runner RUN_DIR` (a fresh process per run, so a crash, an
out-of-memory kill or a NaN loss is that run's failure, recorded with its reason) — by whichever engine:

- `--launcher local` (default): `--jobs N` runs side by side on this machine (concurrent.futures threads, each
  waiting on one run process); with GPUs, job slot i gets GPU i mod (number of GPUs), on CPU each run gets
  cores / N threads.
- `--launcher ray`: Ray Tune (`pip install bermo[ray]`), one trial per run with `--cpus_per_run`/`--gpus_per_run`,
  `--retries` on failure of the run process; on a cluster, start Ray there and set RAY_ADDRESS (see Ray's docs).
- `--launcher plan`: write the run folders and OUTPUT_DIR/pending.txt (one run folder per line) and stop, for
  another scheduler. On SLURM, with submitit (`pip install submitit`), a job array runs them:

      import submitit
      from bermo.experiments.runner import execute_run_dir
      run_dirs = open("OUT/pending.txt").read().split()
      executor = submitit.AutoExecutor(folder="OUT/slurm")
      executor.update_parameters(slurm_array_parallelism=16, gpus_per_node=1, cpus_per_task=8, timeout_min=240)
      jobs = executor.map_array(execute_run_dir, run_dirs)   # or: sbatch --array over
                                                             # `python -m bermo.experiments.runner "$(sed -n
                                                             #  ${SLURM_ARRAY_TASK_ID}p OUT/pending.txt)"`

  then run the same `bermo-experiment` command again: the finished runs are collected from their `result.json`
  (nothing is re-run), anything left runs locally, and the summary is written. OUTPUT_DIR must be on a file
  system that the nodes share.
"""

import concurrent.futures
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import one_line
from ..features import TrainingFeature
from .._io import write_text_atomic  # noqa: F401  (also imported from here by the experiment modules)

RESULT = "result.json"
CONFIG = "config.json"
RUNS_FILE = "runs.jsonl"
EXPERIMENT_FILE = "experiment.json"
PENDING_FILE = "pending.txt"
# run kinds and the function that executes each: f(config, run_dir) -> result dict, or raises RunFailed
KINDS = {
    "finetune": "bermo.experiments.runner:run_finetune",
    "frozen_probe": "bermo.experiments.probing:run_frozen_probe",
}


class ExperimentError(Exception):
    """Bad input for an experiment: reported as one line, exit code 2, nothing overwritten."""


class RunFailed(Exception):
    """A run that failed for a known reason (NaN loss, bad data, out of memory): recorded, not raised further."""


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)


def run_id(config):
    """A deterministic id of a run's configuration (16 hex digits of its canonical JSON's SHA-256)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def write_json_atomic(path, value, indent=2):
    """Write JSON to a temporary file in the same folder, then os.replace: readers see the old or the new file."""
    write_text_atomic(path, json.dumps(value, indent=indent, allow_nan=True) + "\n")


@dataclass
class Run:
    config: dict  # JSON-serializable; config["kind"] names the executor
    label: str = ""  # for people: "bermo seed 1", "past_present seed 0"

    @property
    def id(self):
        return run_id(self.config)


@dataclass
class Experiment:
    """An experiment's runs in OUTPUT_DIR: preparation, resumption, launching, the records of finished runs."""

    output_dir: Path
    command: str  # the subcommand: its configuration's name
    config: dict  # what defines the runs (not how they are launched, not how they are reported)
    runs: list
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        self.output_dir = Path(self.output_dir).resolve()  # engines may run a run in another working directory
        ids = [run.id for run in self.runs]
        if len(set(ids)) != len(ids):
            raise ExperimentError("two runs of this experiment have the same configuration")

    def run_dir(self, run):
        return self.output_dir / "runs" / run.id

    # ------------------------------------------------------------------------------------------------------------
    # Preparation and resumption

    def prepare(self):
        """Check (or record) the experiment's configuration in OUTPUT_DIR; write each run's folder and config."""
        claim_output_dir(self.output_dir, self.command, self.config)
        for run in self.runs:
            folder = self.run_dir(run)
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / CONFIG).is_file():
                write_json_atomic(folder / CONFIG, {"run_id": run.id, "label": run.label, "config": run.config})

    def finished(self):
        """{run id: record} of the finished runs: runs.jsonl, plus results that an engine wrote but no driver
        recorded yet (a SLURM array, a driver killed between the two writes)."""
        records = read_runs_file(self.output_dir / RUNS_FILE)
        wanted = {run.id: run for run in self.runs}
        records = {key: value for key, value in records.items() if key in wanted}
        collected = [self._record(run) for run in self.runs
                     if run.id not in records and (self.run_dir(run) / RESULT).is_file()]
        for record in collected:
            if record is not None:
                records[record["run_id"]] = record
        if any(collected):
            self._write_runs_file(records)
        return records

    def pending(self):
        done = self.finished()
        return [run for run in self.runs if run.id not in done]

    def _record(self, run):
        try:
            result = json.loads((self.run_dir(run) / RESULT).read_text())
        except (OSError, ValueError):
            return None  # a torn or unreadable result: the run is run again
        return {"run_id": run.id, "label": run.label, "config": run.config, **{k: v for k, v in result.items()
                                                                                if k != "run_id"}}

    def _write_runs_file(self, records):
        order = {run.id: index for index, run in enumerate(self.runs)}
        lines = [canonical_json(records[key]) for key in sorted(records, key=order.get)]
        write_text_atomic(self.output_dir / RUNS_FILE, "".join(line + "\n" for line in lines))

    def add_finished(self, run, crash_reason=None):
        """Record a run whose process ended: its result.json, or a failure with the reason it crashed."""
        folder = self.run_dir(run)
        if crash_reason is not None and not (folder / RESULT).is_file():
            write_json_atomic(folder / RESULT, {"run_id": run.id, "status": "failed", "error": crash_reason,
                                                "result": None})
        record = self._record(run)
        if record is None:
            record = {"run_id": run.id, "label": run.label, "config": run.config, "status": "failed",
                      "error": crash_reason or "the run ended without a readable result.json", "result": None}
        with self._lock:
            records = read_runs_file(self.output_dir / RUNS_FILE)
            records[run.id] = record
            self._write_runs_file(records)
        return record

    def records(self):
        """The finished runs' records in the experiment's run order."""
        done = self.finished()
        return [done[run.id] for run in self.runs if run.id in done]

    # ------------------------------------------------------------------------------------------------------------
    # Launching

    def launch(self, launcher="local", jobs=1, cpus_per_run=1, gpus_per_run=0, retries=0, retry_failed=False,
               progress=True):
        """Run every pending run with the launcher; return the records of all finished runs."""
        self.prepare()
        if retry_failed:
            self._forget_failed()
        pending = self.pending()
        if launcher == "plan":
            write_text_atomic(self.output_dir / PENDING_FILE,
                              "".join(f"{self.run_dir(run)}\n" for run in pending))
            return self.records()
        if pending:
            if launcher == "local":
                self._launch_local(pending, jobs, progress)
            elif launcher == "ray":
                self._launch_ray(pending, jobs, cpus_per_run, gpus_per_run, retries)
            else:
                raise ExperimentError(f"--launcher {launcher!r}: choose local, ray or plan")
        return self.records()

    def _forget_failed(self):
        records = read_runs_file(self.output_dir / RUNS_FILE)
        failed = {key for key, value in records.items() if value.get("status") != "ok"}
        for run in self.runs:
            if run.id in failed:
                (self.run_dir(run) / RESULT).unlink(missing_ok=True)
        with self._lock:
            self._write_runs_file({key: value for key, value in records.items() if key not in failed})

    def _launch_local(self, pending, jobs, progress):
        from tqdm.auto import tqdm

        jobs = max(1, jobs)
        slots = list(range(jobs))
        slot_lock = threading.Lock()
        gpus = _visible_gpu_count()
        threads = max(1, (os.cpu_count() or 1) // jobs)
        bar = tqdm(total=len(self.runs), initial=len(self.runs) - len(pending), desc=f"{self.command} runs",
                   unit="run", disable=not progress, position=0)
        failed = 0

        def one(run):
            with slot_lock:
                slot = slots.pop()
            try:
                env = dict(os.environ)
                env.setdefault("OMP_NUM_THREADS", str(threads))
                env["BERMO_RUN_THREADS"] = str(threads)
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
                quiet = jobs > 1  # side by side, each run's output goes to its log, not the terminal
                return self.add_finished(run, run_process(self.run_dir(run), env, quiet=quiet))
            finally:
                with slot_lock:
                    slots.append(slot)

        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(one, run) for run in pending]
                for future in concurrent.futures.as_completed(futures):
                    record = future.result()
                    failed += record["status"] != "ok"
                    bar.update(1)
                    bar.set_postfix(failed=failed)
                    if record["status"] != "ok":
                        bar.write(f"run {record['label']} ({record['run_id']}) failed: {record['error']}")
        finally:
            bar.close()

    def _launch_ray(self, pending, jobs, cpus_per_run, gpus_per_run, retries):
        try:
            import ray
            from ray import tune
        except ImportError:
            raise ExperimentError("--launcher ray needs Ray Tune: pip install 'bermo[ray]'") from None
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        try:
            trainable = tune.with_resources(_ray_trial, {"cpu": cpus_per_run, "gpu": gpus_per_run})
            by_folder = {str(self.run_dir(run)): run for run in pending}
            tuner = tune.Tuner(
                trainable,
                param_space={"run_dir": tune.grid_search(list(by_folder))},
                tune_config=tune.TuneConfig(max_concurrent_trials=jobs if jobs > 0 else None),
                run_config=tune.RunConfig(
                    name=f"bermo-{self.command}", storage_path=str((self.output_dir / "ray").resolve()),
                    failure_config=tune.FailureConfig(max_failures=retries), verbose=0,
                ),
            )
            results = tuner.fit()
            errors = {}
            for result in results:
                if result.error is not None:
                    errors[result.config["run_dir"]] = f"the run process failed under Ray: {one_line(result.error)}"
            for folder, run in by_folder.items():
                self.add_finished(run, errors.get(folder, "Ray ended the trial without a result"))
        finally:
            if started_here:
                ray.shutdown()


def _ray_trial(config):
    """One Ray Tune trial: the run's process; a crash (no result.json) raises, so that Ray retries it."""
    folder = Path(config["run_dir"])
    env = dict(os.environ)
    env["BERMO_RUN_THREADS"] = str(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    reason = run_process(folder, env, quiet=True)
    if reason is not None and not (folder / RESULT).is_file():
        raise RuntimeError(reason)
    result = json.loads((folder / RESULT).read_text())
    from ray import tune

    tune.report({"ok": result["status"] == "ok"})


def _visible_gpu_count():
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # pragma: no cover - torch is a dependency; be safe on broken CUDA setups
        return 0


def run_process(run_dir, env, quiet):
    """Execute a run in a fresh Python process; None when it wrote its result, else why it crashed."""
    run_dir = Path(run_dir)
    log_path = run_dir / "log.txt"
    command = [sys.executable, "-m", "bermo.experiments.runner", str(run_dir)]
    with open(log_path, "w") as log:
        completed = subprocess.run(command, env=env, stdout=log if quiet else None, stderr=log if quiet else None,
                                   stdin=subprocess.DEVNULL)
    if (run_dir / RESULT).is_file():
        return None
    if completed.returncode in (-signal.SIGINT, 130):  # Ctrl-C: the run stays pending, not failed
        raise KeyboardInterrupt
    reason = f"the run process exited with code {completed.returncode}"
    if completed.returncode < 0:
        reason += " (killed by a signal; out of memory?)"
    if quiet:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            reason += f": {lines[-1].strip()}"
    return reason


# --------------------------------------------------------------------------------------------------------------------
# The output folder


def claim_output_dir(output_dir, command, config):
    """Refuse a folder that holds another experiment (or anything else), nothing written; else record this one.

    OUTPUT_DIR/experiment.json holds the command and the configuration that defines the runs.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ExperimentError(f"--output_dir {output_dir} is a file, not a folder")
    experiment_file = output_dir / EXPERIMENT_FILE
    if experiment_file.is_file():
        try:
            recorded = json.loads(experiment_file.read_text())
        except ValueError:
            raise ExperimentError(f"--output_dir {output_dir}: {EXPERIMENT_FILE} is unreadable; "
                                  "use a new --output_dir") from None
        if recorded.get("command") != command:
            raise ExperimentError(
                f"--output_dir {output_dir} holds a '{recorded.get('command')}' experiment, not '{command}'; "
                "use a new --output_dir (nothing was changed)")
        if canonical_json(recorded.get("config")) != canonical_json(json.loads(canonical_json(config))):
            changed = sorted(key for key in set(recorded.get("config", {})) | set(config)
                             if canonical_json(recorded.get("config", {}).get(key)) != canonical_json(config.get(key)))
            raise ExperimentError(
                f"--output_dir {output_dir} holds runs of another configuration (differs in: "
                f"{', '.join(changed) or 'details'}); use a new --output_dir or the same arguments "
                "(nothing was changed)")
        return
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise ExperimentError(f"--output_dir {output_dir} is not empty and holds no experiment; "
                              "use an empty or new folder (nothing was changed)")
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(experiment_file, {"command": command, "config": config})


def read_runs_file(path):
    """{run id: record} from runs.jsonl (a torn last line from a killed driver is ignored: its run is re-collected)."""
    records = {}
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        records[record["run_id"]] = record
    return records


# --------------------------------------------------------------------------------------------------------------------
# Executing one run (in its own process)


def execute_run_dir(run_dir):
    """Execute the run in RUN_DIR (its config.json) and write RUN_DIR/result.json atomically; return the result.

    Idempotent: a run that already has a result.json is not run again. A failure of the run (a RunFailed, a
    training error, any exception) is written as status "failed" with its one-line reason.
    """
    import importlib

    run_dir = Path(run_dir)
    if (run_dir / RESULT).is_file():
        return json.loads((run_dir / RESULT).read_text())
    spec = json.loads((run_dir / CONFIG).read_text())
    config = spec["config"]
    threads = os.environ.get("BERMO_RUN_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    started = time.time()
    record = {"run_id": spec["run_id"], "status": "ok", "error": None, "result": None,
              "host": socket.gethostname(), "started_at": started}
    try:
        module_name, function_name = KINDS[config["kind"]].split(":")
        function = getattr(importlib.import_module(module_name), function_name)
        record["result"] = function(config, run_dir)
    except RunFailed as error:
        record["status"], record["error"] = "failed", str(error)
        record["result"] = getattr(error, "partial", None)
    except Exception as error:  # any other failure of the run is the run's, recorded with its reason
        traceback.print_exc()
        record["status"], record["error"] = "failed", f"{type(error).__name__}: {one_line(error)}"
    record["finished_at"] = time.time()
    record["wall_s"] = record["finished_at"] - started
    write_json_atomic(run_dir / RESULT, record)
    return record


class StepTimer(TrainingFeature):
    """A callback of the training loop: a time stamp after every optimizer step."""

    def __init__(self):
        self.stamps = []

    def on_step_end(self, step, loss):
        self.stamps.append(time.perf_counter())


def run_finetune(config, run_dir):
    """A fine-tuning run through bermo.training's loop; the learning curve and where its predictions are.

    config: {"kind": "finetune", "arguments": the run's settings (bermo.arguments.run_to_dict, without output_dir),
    ...} (see common.finetune_run). A training error (NaN loss, bad input) fails the run; its partial learning curve
    is kept with the failure. The median gap between the step time stamps is the time of a training step,
    evaluations and loading left out.
    """
    from bermo.arguments import run_from_dict
    from bermo.features import registered_features
    from bermo.training import TrainingError, train

    output = Path(run_dir) / "train"
    try:
        run = run_from_dict({**config["arguments"], "output_dir": str(output), "overwrite_output_dir": True},
                            registered_features())
    except (TypeError, ValueError) as error:
        raise RunFailed(f"the training loop refused the settings: {one_line(error)}") from None
    timer = StepTimer()
    started = time.perf_counter()
    try:
        final_metrics = train(run, callbacks=[timer])
        error = None
    except TrainingError as training_error:
        final_metrics, error = None, str(training_error)
    except MemoryError:
        final_metrics, error = None, "out of memory"
    except RuntimeError as runtime_error:
        if "out of memory" not in str(runtime_error).lower():
            raise
        final_metrics, error = None, f"out of memory: {one_line(runtime_error)}"
    seconds = time.perf_counter() - started
    gaps = [after - before for before, after in zip(timer.stamps, timer.stamps[1:])]
    result = finetune_outputs(output)
    result.update(final_metrics=final_metrics, train_seconds=seconds, steps=len(timer.stamps),
                  step_seconds=statistics.median(gaps) if gaps else None)
    if error is not None:
        failure = RunFailed(error)
        failure.partial = result
        raise failure
    return result


def finetune_outputs(output):
    """What a run of the loop left in its output folder: evaluations, layer mix, where the predictions are."""
    output = Path(output)
    evaluations, losses = [], []
    metrics_file = output / "metrics.jsonl"
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            record = json.loads(line)
            (losses if record["split"] == "train" else evaluations).append(record)
    mix_file = output / "layer_mix.json"
    result = {"evaluations": evaluations, "train_losses": losses,
              "layer_mix": json.loads(mix_file.read_text()) if mix_file.is_file() else None}
    for name, key in (("eval_predictions.jsonl", "eval_predictions"), ("predictions.tsv", "test_predictions")):
        if (output / name).is_file():
            result[key] = str(Path("train") / name)
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m bermo.experiments.runner RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    if not (run_dir / CONFIG).is_file():
        print(f"bermo.experiments.runner: error: {run_dir / CONFIG} not found", file=sys.stderr)
        return 2
    record = execute_run_dir(run_dir)
    if record["status"] != "ok":
        print(f"run {record['run_id']} failed: {record['error']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
