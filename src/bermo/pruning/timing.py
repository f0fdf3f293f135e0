"""CPU inference timing of models side by side (bench/bench_shrink.py and `bermo-experiment pruning --study
structured`): one copy of the logic. Forwards under torch.no_grad(), the models interleaved in each repeat, after
warm-up forwards; the median per model."""

import statistics
import time

import torch


def random_inputs(batch, seq, seed=0):
    """A batch of random token ids (all attended); the speed depends on the shapes only."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (batch, seq), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.no_grad()
def time_models(models, batch, repeats, warmup):
    """{name: median seconds of one forward of `batch`}, the models' forwards interleaved in each repeat."""
    for model in models.values():
        model.eval()
    times = {name: [] for name in models}
    for index in range(warmup + repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(**batch)
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
