"""Benchmark `bermo-convert` on a bert-base-sized checkpoint: wall time against `cp -r`, peak RSS against the
interpreter, side by side in one run.

    python bench/bench_convert.py [--workdir DIR] [--repeats 3] [--json results.json]

A randomly initialized `BertForMaskedLM(BertConfig())` (bert-base-uncased's config, seeded) is saved once as a single
`model.safetensors` under --workdir (reused by later runs with the same --workdir; default: a temporary folder,
removed at the end). Then, --repeats times and interleaved, each of these runs as a fresh child process, which is the
measured command itself:

    cp -r SOURCE DEST                                               the copy baseline (wall time)
    sh -c 'cp -r SOURCE DEST && sync'                               for reference: the copy, flushed to disk as
                                                                    bermo-convert does (it fsyncs its output)
    python -c "import torch, transformers, bermo.conversion"        the interpreter baseline (peak RSS)
    python -m bermo.conversion SOURCE OUT --no-verify --overwrite   the conversion
    python -m bermo.conversion SOURCE OUT --overwrite               the conversion with verification

Wall time is the median over the repeats, peak RSS the maximum (`ru_maxrss` of that child, from `os.wait4`). The
source is read once (to /dev/null) before the first run, so every run reads it from the page cache; each run's
destination is removed before it starts, outside the timing.

This script never imports torch itself: a child's ru_maxrss also counts the memory of the process it was forked from
(up to exec), so the parent stays small. The checkpoint is made, and the versions read, in child processes.

Goals (the run without verification): wall time <= 2x the copy; peak RSS above the interpreter baseline
<= 1.2x the checkpoint size.
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 10**6
WALL_GOAL = 2.0  # conversion without verification: wall time / cp -r
RSS_GOAL = 1.2  # conversion without verification: (peak RSS - interpreter baseline) / checkpoint size

MAKE_CHECKPOINT = """
import sys, torch, transformers
torch.manual_seed(int(sys.argv[2]))
model = transformers.BertForMaskedLM(transformers.BertConfig())
model.save_pretrained(sys.argv[1], max_shard_size="100GB")
"""

VERSIONS = """
import json, torch, transformers, safetensors
print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
                  "safetensors": safetensors.__version__, "torch_threads": torch.get_num_threads()}))
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir", type=Path,
        help="folder for the source checkpoint (made once, then reused) and the runs' outputs (default: a temporary "
        "folder, removed at the end)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random checkpoint (default 0)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also save the results as JSON")
    parser.add_argument(
        "--online", action="store_true",
        help="let the children reach the Hub (default: HF_HUB_OFFLINE=1; the source is a local folder anyway)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def run_measured(command, env, log_path):
    """Run `command` as a child process; return (wall seconds, peak RSS bytes). Raises on a non-zero exit."""
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)  # so that Popen does not wait for it again
    if process.returncode != 0:
        tail = Path(log_path).read_text(errors="replace")[-3000:]
        raise SystemExit(f"{shlex.join(command)} exited with {process.returncode}; its output ends:\n{tail}")
    return wall, usage.ru_maxrss * 1024  # Linux: kilobytes


def remove(path):
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def make_checkpoint(folder, seed, env):
    """The seeded random bert-base checkpoint, made once: a marker file is written last."""
    marker = folder / ".bench-complete"
    if marker.is_file() and (folder / "model.safetensors").is_file():
        return False
    remove(folder)
    subprocess.run([sys.executable, "-c", MAKE_CHECKPOINT, str(folder), str(seed)], check=True, env=env)
    if not (folder / "model.safetensors").is_file():
        raise SystemExit(f"{folder}: save_pretrained did not write a single model.safetensors")
    marker.write_text(json.dumps({"seed": seed}) + "\n")
    return True


def warm_page_cache(folder):
    for path in sorted(folder.iterdir()):
        if path.is_file():
            with open(path, "rb") as file:
                while file.read(1 << 24):
                    pass


def main(argv=None):
    args = parse_args(argv)
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench-convert-")) if temporary else args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if not args.online:
        env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        return benchmark(args, workdir, env)
    finally:
        for name in ("copy", "converted", "logs"):
            remove(workdir / name)
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)


def benchmark(args, workdir, env):
    source = workdir / f"bert-base-random-seed{args.seed}"
    made = make_checkpoint(source, args.seed, env)
    checkpoint_bytes = (source / "model.safetensors").stat().st_size
    source_bytes = sum(path.stat().st_size for path in source.iterdir() if path.is_file())
    versions = json.loads(subprocess.run([sys.executable, "-c", VERSIONS], check=True, env=env,
                                         capture_output=True, text=True).stdout)
    copy, converted, logs = workdir / "copy", workdir / "converted", workdir / "logs"
    logs.mkdir(exist_ok=True)

    runs = {
        "cp -r": ["cp", "-r", str(source), str(copy)],
        "cp -r && sync (reference)": ["sh", "-c", 'cp -r "$0" "$1" && sync', str(source), str(copy)],
        "python + torch, transformers, bermo.conversion": [
            sys.executable, "-c", "import torch, transformers, bermo.conversion"],
        "bermo-convert --no-verify": [
            sys.executable, "-m", "bermo.conversion", str(source), str(converted), "--no-verify", "--overwrite"],
        "bermo-convert (verified)": [sys.executable, "-m", "bermo.conversion", str(source), str(converted), "--overwrite"],
    }
    outputs = {"cp -r": copy, "cp -r && sync (reference)": copy,
               "bermo-convert --no-verify": converted, "bermo-convert (verified)": converted}

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"python {platform.python_version()}, torch {versions['torch']}, transformers {versions['transformers']}, "
          f"safetensors {versions['safetensors']}; {os.cpu_count()} CPUs, torch threads {versions['torch_threads']}; "
          f"{platform.platform()}")
    print(f"source: {source} ({'made now' if made else 'reused'}): BertForMaskedLM(BertConfig()), seed {args.seed}, "
          f"model.safetensors {checkpoint_bytes / MB:.1f} MB (folder {source_bytes / MB:.1f} MB)")
    print(f"children run with HF_HUB_OFFLINE={env.get('HF_HUB_OFFLINE', '(unset)')}; "
          f"measured commands ({args.repeats} runs each, interleaved):")
    for name, command in runs.items():
        print(f"  {name}: {shlex.join(command)}")
    warm_page_cache(source)
    print("warm-up: the source was read once to /dev/null first, so every run reads it from the page cache; "
          "outputs are removed before each run, outside the timing")
    sys.stdout.flush()

    samples = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for index, (name, command) in enumerate(runs.items()):
            if name in outputs:
                remove(outputs[name])
            wall, rss = run_measured(command, env, logs / f"{index}-{repeat}.log")
            samples[name].append({"wall_s": wall, "peak_rss_bytes": rss})
            print(f"  run {repeat + 1}/{args.repeats} {name}: {wall:.2f} s, peak RSS {rss / MB:.0f} MB", flush=True)

    results = {
        name: {
            "command": runs[name],
            "wall_s": statistics.median(sample["wall_s"] for sample in runs_of),
            "peak_rss_bytes": max(sample["peak_rss_bytes"] for sample in runs_of),
            "samples": runs_of,
        }
        for name, runs_of in samples.items()
    }
    copy_wall = results["cp -r"]["wall_s"]
    baseline = results["python + torch, transformers, bermo.conversion"]
    baseline_rss = baseline["peak_rss_bytes"]
    for name, result in results.items():
        result["wall_over_cp"] = result["wall_s"] / copy_wall
        # the copies' RSS is only the floor that this (small) parent process sets: no ratio for them
        python = name.startswith(("python", "bermo"))
        result["rss_above_baseline_over_checkpoint"] = (
            (result["peak_rss_bytes"] - baseline_rss) / checkpoint_bytes if python else None)

    print()
    print(f"checkpoint size: {checkpoint_bytes / MB:.1f} MB (model.safetensors; MB = 10^6 bytes)")
    print()
    print("| run | wall s | wall / cp | peak RSS MB | (peak RSS - baseline) / checkpoint size |")
    print("|---|---:|---:|---:|---:|")
    for name, result in results.items():
        ratio = result["rss_above_baseline_over_checkpoint"]
        print(f"| {name} | {result['wall_s']:.2f} | {result['wall_over_cp']:.2f}x | {result['peak_rss_bytes'] / MB:.0f} "
              f"| {'—' if ratio is None else f'{ratio:.2f}x'} |")
    print()
    print(f"wall s: median of {args.repeats}; peak RSS: max of {args.repeats} (ru_maxrss: it counts the pages of "
          f"memory-mapped files too); baseline: the interpreter's peak RSS ({baseline_rss / MB:.0f} MB); the copies' "
          f"RSS is the floor set by this parent process, not cp's own")
    for name in ("bermo-convert --no-verify", "bermo-convert (verified)"):
        beyond = results[name]["wall_s"] - baseline["wall_s"]
        print(f"{name}: {beyond:.2f} s beyond the interpreter's start ({beyond / copy_wall:.2f}x cp -r)")

    plain = results["bermo-convert --no-verify"]
    goals = [
        {"goal": f"without verification: wall time <= {WALL_GOAL:g}x the copy", "value": plain["wall_over_cp"],
         "limit": WALL_GOAL},
        {"goal": f"without verification: peak RSS above the interpreter baseline <= {RSS_GOAL:g}x the checkpoint size",
         "value": plain["rss_above_baseline_over_checkpoint"], "limit": RSS_GOAL},
    ]
    print()
    for goal in goals:
        goal["met"] = goal["value"] <= goal["limit"]
        print(f"- {goal['goal']}: {goal['value']:.2f}x, {'met' if goal['met'] else 'MISSED'}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": [sys.executable, *sys.argv], "python": platform.python_version(), **versions,
            "platform": platform.platform(), "cpus": os.cpu_count(), "repeats": args.repeats, "seed": args.seed,
            "hf_hub_offline": env.get("HF_HUB_OFFLINE"), "page_cache": "source read once before the runs",
            "checkpoint_bytes": checkpoint_bytes, "baseline_rss_bytes": baseline_rss, "runs": results, "goals": goals,
        }, indent=2) + "\n")
        print(f"\nsaved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
