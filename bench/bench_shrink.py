"""Benchmark structured pruning's export: the shrunk model's CPU inference against the dense model's.

For each shape (random weights; the speed depends on the shapes only), a dense BermoForSequenceClassification and
the same model pruned to a fraction of its heads and FFN neurons in every layer (bermo.pruning, magnitude scores,
--pruning_granularity head,neuron, the fraction as --final_threshold) and exported (heads and neurons removed,
per-layer sizes in the config). Timed in one process, interleaved: model.eval(), torch.no_grad(), one forward of
batch 1 x SEQ (4 x --repeats times) and BATCH x SEQ tokens (--repeats times), after --warmup; medians. Also the
parameter count and the safetensors file size of each, saved with save_pretrained.

    minilm     all-MiniLM-L6-v2's shape: 6 layers, hidden 384, 12 heads, FFN 1536
    bert-base  12 layers, hidden 768, 12 heads, FFN 3072

Goals (speed-up = dense time / exported time, batch 32 x 128): >= 1.4x (minilm) and >= 1.7x (bert-base) at 50% of
heads and neurons kept; >= 2.0x at 25%.

Usage (from the repository root):
    python bench/bench_shrink.py                      # both shapes, 50% and 25%, batch 1 and 32 x 128
    python bench/bench_shrink.py --shapes minilm --repeats 3
"""

import argparse
import tempfile
from pathlib import Path

import torch

from bermo import BermoConfig, BermoForSequenceClassification
from bermo.arguments import PruningArguments
from bermo.pruning import PruningFeature
from bermo.pruning.timing import random_inputs, time_models

SHAPES = {
    "minilm": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
GOALS = {("minilm", 0.5): 1.4, ("bert-base", 0.5): 1.7, ("minilm", 0.25): 2.0, ("bert-base", 0.25): 2.0}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--keep", nargs="+", type=float, default=[0.5, 0.25],
                        help="fractions of heads and neurons kept")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; on a machine shared with other jobs, 1 gives steadier "
                             "figures)")
    return parser.parse_args(argv)


def dense_model(shape):
    torch.manual_seed(0)
    config = BermoConfig(**SHAPES[shape], num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BermoForSequenceClassification(config).eval()


def shrunk_model(shape, keep):
    """The dense model pruned to `keep` of its heads and neurons in every layer and exported."""
    feature = PruningFeature.from_arguments(PruningArguments(
        pruning_method="magnitude", pruning_granularity="head,neuron", final_threshold=keep), max_train_steps=1)
    model = feature.setup(dense_model(shape))
    feature.on_step(1)
    return feature.export(model).eval()


def saved_size(model):
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return sum(file.stat().st_size for file in Path(folder).glob("*.safetensors"))


inputs = random_inputs


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats (batch 1: "
          f"{4 * args.repeats}) after {args.warmup} warm-up, medians")
    rows = []
    for shape in args.shapes:
        models = {"dense": dense_model(shape)}
        for keep in args.keep:
            models[keep] = shrunk_model(shape, keep)
        parameters = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
        sizes = {name: saved_size(model) for name, model in models.items()}
        for batch_size in (1, args.batch):
            repeats = args.repeats * (4 if batch_size == 1 else 1)  # batch 1 is quick and noisier
            medians = time_models(models, inputs(batch_size, args.seq), repeats, args.warmup)
            for keep in args.keep:
                speedup = medians["dense"] / medians[keep]
                goal = GOALS.get((shape, keep)) if batch_size == args.batch else None
                verdict = "—" if goal is None else f"≥ {goal:.1f}x {'met' if speedup >= goal else 'NOT met'}"
                rows.append((shape, f"{keep:.0%}", f"{batch_size}x{args.seq}", f"{medians['dense'] * 1e3:.1f}",
                             f"{medians[keep] * 1e3:.1f}", f"{speedup:.2f}x", verdict,
                             f"{parameters[keep] / parameters['dense']:.3f}", f"{sizes[keep] / sizes['dense']:.3f}"))
    print("| shape | heads+FFN kept | batch | dense ms | exported ms | speed-up | goal | params ratio | file ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
