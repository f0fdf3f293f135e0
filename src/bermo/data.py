"""Text classification data for fine-tuning: the nine GLUE tasks (from the Hub, or GLUE's own TSV folders) and
the user's own csv/tsv/json/jsonl files, as `datasets.DatasetDict`s that hold the text columns and `label` only
(integer class ids, or floats for regression).

Regression or classification is decided as transformers' `run_glue_no_trainer.py` does, by the label column's type:
a float column is regression (even if its values are all whole numbers, e.g. a 1-5 score), an integer, string or
`ClassLabel` column is classification. `--regression` / `--classification` (`args.label_type`) force it.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import datasets

from ._errors import one_line


class DataError(Exception):
    """Bad data input: reported as one line, exit code 2."""


@dataclass(frozen=True)
class GlueTask:
    text_columns: tuple  # one or two text columns, as the Hub's nyu-mll/glue names them
    label_names: tuple | None  # None: regression
    folder: str  # GLUE's folder name
    dev_files: tuple  # GLUE's dev file names, one per evaluation split
    eval_splits: tuple  # the Hub's validation split names, same order
    tsv_columns: tuple  # GLUE TSV column (index or header name) of each text column, then of the label
    tsv_header: bool = True
    metric: str = "accuracy"


GLUE_TASKS = {
    "cola": GlueTask(("sentence",), ("unacceptable", "acceptable"), "CoLA", ("dev.tsv",), ("validation",),
                     (3, 1), tsv_header=False, metric="matthews_correlation"),
    "sst2": GlueTask(("sentence",), ("negative", "positive"), "SST-2", ("dev.tsv",), ("validation",),
                     ("sentence", "label")),
    "mrpc": GlueTask(("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "MRPC", ("dev.tsv",),
                     ("validation",), ("#1 String", "#2 String", "Quality"), metric="f1"),
    "qqp": GlueTask(("question1", "question2"), ("not_duplicate", "duplicate"), "QQP", ("dev.tsv",),
                    ("validation",), ("question1", "question2", "is_duplicate"), metric="f1"),
    "stsb": GlueTask(("sentence1", "sentence2"), None, "STS-B", ("dev.tsv",), ("validation",),
                     ("sentence1", "sentence2", "score"), metric="pearson"),
    "mnli": GlueTask(("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), "MNLI",
                     ("dev_matched.tsv", "dev_mismatched.tsv"), ("validation_matched", "validation_mismatched"),
                     ("sentence1", "sentence2", "gold_label")),
    "qnli": GlueTask(("question", "sentence"), ("entailment", "not_entailment"), "QNLI", ("dev.tsv",),
                     ("validation",), ("question", "sentence", "label")),
    "rte": GlueTask(("sentence1", "sentence2"), ("entailment", "not_entailment"), "RTE", ("dev.tsv",),
                    ("validation",), ("sentence1", "sentence2", "label")),
    "wnli": GlueTask(("sentence1", "sentence2"), ("not_entailment", "entailment"), "WNLI", ("dev.tsv",),
                     ("validation",), ("sentence1", "sentence2", "label")),
}
GLUE_HUB_ID = "nyu-mll/glue"

# column names that hold text, by the pairs datasets commonly use (first match wins)
KNOWN_TEXT_COLUMNS = [
    ("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"), ("question", "sentence"),
    ("sentence",), ("text",), ("text_a", "text_b"),
]
KNOWN_LABEL_COLUMNS = ("label", "labels", "score", "gold_label")
STRING_DTYPES = ("string", "large_string")
FLOAT_DTYPES = ("float16", "float32", "float64")
LABEL_TYPES = (None, "regression", "classification")


@dataclass
class TaskData:
    """Splits with the columns `text_columns` and `label` (and nothing else), and what the labels mean.

    A "test" split may lack `label` (GLUE's test.tsv files): it is for predictions only.
    """

    splits: datasets.DatasetDict  # "train", one or more evaluation splits, maybe "test"
    eval_splits: list
    text_columns: tuple
    label_names: list | None  # None: regression
    metric: str
    name: str  # for cards and logs: the GLUE task or the training file's name

    @property
    def num_labels(self):
        return 1 if self.label_names is None else len(self.label_names)


# --------------------------------------------------------------------------------------------------------------------
# GLUE


def load_glue(task_name, glue_dir=None, test_file=None, label_type=None):
    task = GLUE_TASKS.get(task_name)
    if task is None:
        raise DataError(f"--task_name {task_name!r}: choose one of {', '.join(GLUE_TASKS)}")
    task_type = "regression" if task.label_names is None else "classification"
    if label_type not in (None, task_type):
        raise DataError(f"--{label_type}: GLUE {task_name} is a {task_type} task")
    if glue_dir is not None:
        splits = read_glue_dir(task_name, task, Path(glue_dir))
    else:
        splits = load_glue_from_hub(task_name, task)
    if test_file is not None:
        splits["test"] = read_glue_test_file(test_file, task)
    splits = keep_task_columns(splits, task.text_columns)
    return TaskData(splits, list(task.eval_splits), task.text_columns,
                    None if task.label_names is None else list(task.label_names), task.metric, task_name)


def load_glue_from_hub(task_name, task):
    try:
        loaded = datasets.load_dataset(GLUE_HUB_ID, task_name)
    except Exception as error:
        raise DataError(
            f"--task_name {task_name}: cannot load {GLUE_HUB_ID} from the Hub ({one_line(error)}); "
            "offline, pass --glue_dir (GLUE's folder of TSVs) or --train_file/--validation_file"
        ) from None
    keep = ["train", *task.eval_splits]
    return datasets.DatasetDict({split: loaded[split] for split in keep})


def read_glue_dir(task_name, task, glue_dir):
    folder = glue_dir / task.folder if (glue_dir / task.folder).is_dir() else glue_dir
    files = {"train": folder / "train.tsv", **{s: folder / f for s, f in zip(task.eval_splits, task.dev_files)}}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise DataError(f"--glue_dir {glue_dir}: {task_name} files missing: {', '.join(missing)}")
    return datasets.DatasetDict({split: read_glue_tsv(path, task) for split, path in files.items()})


def read_glue_tsv(path, task, test=False):
    """A GLUE TSV (its own quirks: no quoting, CoLA without a header, labels as text in the NLI tasks).

    `test`: a GLUE test.tsv, which has a header (CoLA's too), an `index` (QQP: `id`) column and usually no label:
    its text columns are found by name, and its label only if it has one.
    """
    try:
        # utf-8-sig: GLUE's own MRPC train.tsv starts with a byte-order mark, which would stick to the first column
        with open(path, encoding="utf-8-sig", newline="") as file:
            rows = list(csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({one_line(error)})") from None
    if not rows:
        raise DataError(f"{path}: no data rows")
    has_header = task.tsv_header or test
    if has_header:
        header, rows = rows[0], rows[1:]
        # CoLA's train/dev files have no header; its test.tsv names the text column as the Hub does
        names = task.tsv_columns if task.tsv_header else (*task.text_columns, "label")
        text_names, label_name = names[:-1], names[-1]
        missing = [column for column in text_names if column not in header]
        if missing or (not test and label_name not in header):
            expected = list(text_names) if test else list(names)
            raise DataError(f"{path}: expected columns {expected}, found {header}")
        indices = [header.index(column) for column in text_names]
        if label_name in header:
            indices.append(header.index(label_name))
    else:
        indices = list(task.tsv_columns)
    has_label = len(indices) > len(task.text_columns)
    columns = {name: [] for name in (*task.text_columns, *(("label",) if has_label else ()))}
    width = max(indices) + 1
    for number, row in enumerate(rows, start=2 if has_header else 1):
        if not row or row == [""]:
            continue
        if len(row) < width:
            raise DataError(f"{path}:{number}: expected at least {width} tab-separated fields, found {len(row)}")
        values = [row[index] for index in indices]
        for name, text in zip(task.text_columns, values):
            columns[name].append(text.strip())
        if has_label:
            columns["label"].append(glue_label(values[-1].strip(), task, path, number))
    if not columns[task.text_columns[0]]:
        raise DataError(f"{path}: no data rows")
    features = datasets.Features({name: datasets.Value("string") for name in task.text_columns})
    if has_label:
        features["label"] = datasets.Value("float32" if task.label_names is None else "int64")
    return datasets.Dataset.from_dict(columns, features=features)


def read_glue_test_file(path, task):
    """--test_file for a GLUE task: a GLUE-style test.tsv, or a csv/json file with the task's (Hub) text columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found")
    if path.suffix.lower() == ".tsv":
        return read_glue_tsv(path, task, test=True)
    dataset = read_text_file(path)
    missing = [name for name in task.text_columns if name not in dataset.column_names]
    if missing:
        raise DataError(f"{path}: column {missing[0]!r} missing (found {dataset.column_names})")
    if "label" in dataset.column_names:
        labels = [glue_label(str(value).strip(), task, path, number) for number, value in
                  enumerate(dataset["label"], start=2)]
        dataset = dataset.remove_columns(["label"]).add_column("label", labels)
    return dataset


def glue_label(value, task, path, number):
    if task.label_names is None:
        try:
            return float(value)
        except ValueError:
            raise DataError(f"{path}:{number}: label {value!r} is not a number (a regression task)") from None
    if value in task.label_names:
        return task.label_names.index(value)
    if value.isdigit() and int(value) < len(task.label_names):
        return int(value)
    raise DataError(f"{path}:{number}: label {value!r} is not one of {list(task.label_names)}")


# --------------------------------------------------------------------------------------------------------------------
# The user's own files


def read_text_file(path):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
        builder = "csv"
    elif suffix in (".json", ".jsonl"):
        builder, kwargs = "json", {}
    else:
        raise DataError(f"data file {path}: unsupported format {suffix!r}; use csv, tsv, json or jsonl")
    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty")
    try:
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as error:
        raise DataError(f"data file {path}: cannot be read as {suffix[1:]} ({one_line(error)})") from None
    if len(dataset) == 0:
        raise DataError(f"data file {path} has no rows")
    return dataset


def detect_columns(dataset, path, text_columns=None, label_column=None):
    """(text columns, label column): as named, else by the usual names, else the one column left beside the text."""
    names = dataset.column_names
    if label_column is not None and label_column not in names:
        raise DataError(f"{path}: --label_column {label_column!r} not among the columns {names}")
    if label_column is None:
        label_column = next((name for name in KNOWN_LABEL_COLUMNS if name in names), None)
    if text_columns is None:
        text_columns = next((pair for pair in KNOWN_TEXT_COLUMNS if all(name in names for name in pair)), None)
    if label_column is None and text_columns is not None:
        rest = [name for name in names if name not in text_columns]
        label_column = rest[0] if len(rest) == 1 else None
    if label_column is None:
        raise DataError(f"{path}: no label column among {names}; name it with --label_column")
    if text_columns is None:
        strings = [name for name in names if name != label_column and dataset.features[name].dtype in STRING_DTYPES]
        if not 1 <= len(strings) <= 2:
            raise DataError(f"{path}: cannot tell the text columns among {names}; name them with --text_columns")
        text_columns = tuple(strings)
    text_columns = tuple(text_columns)
    unknown = [name for name in text_columns if name not in names]
    if unknown or not 1 <= len(text_columns) <= 2 or label_column in text_columns:
        raise DataError(f"{path}: --text_columns {list(text_columns)}: expected one or two of the columns {names}")
    return text_columns, label_column


def load_files(train_file, validation_file, test_file=None, text_columns=None, label_column=None, label_type=None):
    """The user's own train/validation(/test) files; class labels are mapped to ids in sorted order.

    `label_type`: None (decide by the training label column's type), "regression" or "classification".
    """
    if train_file is None or validation_file is None:
        raise DataError("pass both --train_file and --validation_file (or --task_name with --glue_dir)")
    train = read_text_file(train_file)
    text_columns, label_column = detect_columns(train, train_file, text_columns, label_column)
    validation = read_text_file(validation_file)
    splits = {"train": train, "validation": validation}
    if test_file is not None:
        splits["test"] = read_text_file(test_file)
    for split, dataset in splits.items():
        needed = text_columns if split == "test" else (*text_columns, label_column)
        for name in needed:
            if name not in dataset.column_names:
                path = {"train": train_file, "validation": validation_file, "test": test_file}[split]
                raise DataError(f"{path}: column {name!r} missing (found {dataset.column_names})")
    label_names = label_space(train, label_column, label_type)
    for split, dataset in splits.items():
        if split == "test" and label_column not in dataset.column_names:
            continue
        splits[split] = encode_labels(dataset, label_column, label_names, split, train_file)
    splits = keep_task_columns(splits, text_columns)
    metric = "accuracy" if label_names is not None else "pearson"
    return TaskData(splits, ["validation"], text_columns, label_names, metric, Path(train_file).stem)


def keep_task_columns(splits, text_columns):
    """Every split with only the text columns and `label` (drops e.g. the Hub's `idx`, GLUE test.tsv's `index`)."""
    return datasets.DatasetDict({
        split: dataset.select_columns([name for name in (*text_columns, "label") if name in dataset.column_names])
        for split, dataset in splits.items()
    })


def is_float_column(dataset, column):
    feature = dataset.features[column]
    return isinstance(feature, datasets.Value) and feature.dtype in FLOAT_DTYPES


def label_key(value):
    """The class name of a label value: whole floats as integers ("4", not "4.0"), so int and float files agree."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def label_space(train, label_column, label_type=None):
    """Class names of the training labels, sorted (numerically for numbers); None for regression.

    Regression when the label column is a float column (as run_glue_no_trainer decides), unless `label_type`
    says otherwise.
    """
    if label_type not in LABEL_TYPES:
        raise DataError(f"label type {label_type!r}: choose regression or classification")
    values = list(train[label_column])
    if any(value is None or (isinstance(value, float) and value != value) for value in values):
        raise DataError(f"training data has rows without a {label_column!r}")
    if label_type is None:
        label_type = "regression" if is_float_column(train, label_column) else "classification"
    if label_type == "regression":
        for value in values:
            number_or_error(value, "training")
        return None
    keys = {label_key(value): value for value in values}
    return sorted(keys, key=lambda key: (isinstance(keys[key], str), keys[key]))


def number_or_error(value, split):
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"--regression: {split} label {value!r} is not a number") from None


def encode_labels(dataset, label_column, label_names, split, train_file):
    if label_names is None:
        mapped = [number_or_error(value, split) for value in dataset[label_column]]
    else:
        ids = {name: index for index, name in enumerate(label_names)}
        keys = [label_key(value) for value in dataset[label_column]]
        unseen = sorted(set(keys) - set(ids))
        if unseen:
            raise DataError(f"{split} label {unseen[0]!r} never seen in training data {train_file} (labels: {label_names})")
        mapped = [ids[key] for key in keys]
    return dataset.remove_columns([label_column]).add_column("label", mapped)


def load_task_data(args):
    """The data that the command line asks for: GLUE (Hub or --glue_dir) or the user's files.

    `args.label_type` (from --regression / --classification; absent or None: decided by the label column's type).
    """
    label_type = getattr(args, "label_type", None)
    if args.task_name is not None:
        return load_glue(args.task_name.lower(), args.glue_dir, args.test_file, label_type)
    return load_files(args.train_file, args.validation_file, args.test_file, args.text_columns, args.label_column,
                      label_type)
