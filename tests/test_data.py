"""bermo.data: regression vs classification by the label column's type (and the overrides), only text and label
columns in every split, GLUE test.tsv files, the Hub's `idx` column."""

import argparse
import csv
import shutil

import datasets
import pytest

import bermo.data
from bermo.data import DataError, load_task_data

from conftest import REPO_ROOT

SST2_SAMPLE = REPO_ROOT / "data" / "sst2_sample"


def data_args(**kwargs):
    """The namespace finetune.py's parser gives (its data options), with KWARGS set."""
    defaults = dict(task_name=None, glue_dir=None, train_file=None, validation_file=None, test_file=None,
                    text_columns=None, label_column=None, label_type=None)
    return argparse.Namespace(**{**defaults, **kwargs})


def write_csv(path, header, rows):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def score_files(tmp_path):
    """A 1-5 score written as floats (4.0, not 4): a float column whose values are all whole numbers."""
    train = write_csv(tmp_path / "train.csv", ["text", "score"],
                      [[f"review {i}", f"{1 + i % 5}.0"] for i in range(10)])
    validation = write_csv(tmp_path / "validation.csv", ["text", "score"], [["good", "5.0"], ["bad", "1.0"]])
    return {"train_file": str(train), "validation_file": str(validation)}


def test_float_label_column_with_whole_numbers_is_regression(score_files):
    data = load_task_data(data_args(**score_files))
    assert data.label_names is None and data.num_labels == 1 and data.metric == "pearson"
    assert data.splits["train"]["label"][:5] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert data.splits["validation"]["label"] == [5.0, 1.0]
    assert data.splits["train"].features["label"].dtype.startswith("float")


def test_integer_label_column_is_classification(tmp_path):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], [[f"t{i}", 10 * (i % 3)] for i in range(9)])
    validation = write_csv(tmp_path / "dev.csv", ["text", "label"], [["a", 20], ["b", 0]])
    data = load_task_data(data_args(train_file=str(train), validation_file=str(validation)))
    assert data.label_names == ["0", "10", "20"] and data.num_labels == 3 and data.metric == "accuracy"
    assert data.splits["validation"]["label"] == [2, 0]


def test_classification_flag_makes_classes_of_a_float_column(score_files, tmp_path):
    data = load_task_data(data_args(**score_files, label_type="classification"))
    assert data.label_names == ["1", "2", "3", "4", "5"] and data.num_labels == 5
    assert data.splits["train"]["label"][:5] == [0, 1, 2, 3, 4]
    assert data.splits["validation"]["label"] == [4, 0]
    # a validation file that writes the same classes as integers agrees with the float training file
    validation = write_csv(tmp_path / "int_dev.csv", ["text", "score"], [["good", 5], ["bad", 1]])
    data = load_task_data(data_args(train_file=score_files["train_file"], validation_file=str(validation),
                                    label_type="classification"))
    assert data.splits["validation"]["label"] == [4, 0]


def test_regression_flag_makes_an_integer_column_regression_and_refuses_text_labels(tmp_path):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], [["a", 1], ["b", 2], ["c", 3]])
    data = load_task_data(data_args(train_file=str(train), validation_file=str(train), label_type="regression"))
    assert data.label_names is None and data.splits["train"]["label"] == [1.0, 2.0, 3.0]
    words = write_csv(tmp_path / "words.csv", ["text", "label"], [["a", "pos"], ["b", "neg"]])
    with pytest.raises(DataError, match="--regression: training label 'pos' is not a number"):
        load_task_data(data_args(train_file=str(words), validation_file=str(words), label_type="regression"))


def test_override_contradicting_a_glue_task_is_refused():
    with pytest.raises(DataError, match="--classification: GLUE stsb is a regression task"):
        load_task_data(data_args(task_name="stsb", glue_dir="unused", label_type="classification"))
    with pytest.raises(DataError, match="--regression: GLUE sst2 is a classification task"):
        load_task_data(data_args(task_name="sst2", glue_dir=str(SST2_SAMPLE), label_type="regression"))


def test_own_files_keep_only_text_and_label_columns(tmp_path):
    header = ["id", "sentence1", "sentence2", "label", "annotator"]
    rows = [[i, f"first {i}", f"second {i}", ["yes", "no"][i % 2], "ann"] for i in range(6)]
    train = write_csv(tmp_path / "train.csv", header, rows)
    validation = write_csv(tmp_path / "dev.csv", header + ["notes"], [row + ["x"] for row in rows[:2]])
    test = write_csv(tmp_path / "test.csv", ["index", "sentence1", "sentence2"], [[0, "a", "b"], [1, "c", "d"]])
    data = load_task_data(data_args(train_file=str(train), validation_file=str(validation), test_file=str(test)))
    assert data.text_columns == ("sentence1", "sentence2")
    assert {split: dataset.column_names for split, dataset in data.splits.items()} == {
        "train": ["sentence1", "sentence2", "label"],
        "validation": ["sentence1", "sentence2", "label"],
        "test": ["sentence1", "sentence2"],
    }
    assert data.label_names == ["no", "yes"] and data.splits["train"]["label"][:2] == [1, 0]


def test_own_test_file_without_the_text_columns_is_refused_before_training(tmp_path):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], [["a", 0], ["b", 1]])
    test = write_csv(tmp_path / "test.csv", ["index", "body"], [[0, "a"]])
    with pytest.raises(DataError, match=r"test.csv: column 'text' missing \(found \['index', 'body'\]\)"):
        load_task_data(data_args(train_file=str(train), validation_file=str(train), test_file=str(test)))


def test_glue_test_tsv_with_index_column_loads_for_predictions(tmp_path):
    # SST-2's test.tsv: "index<TAB>sentence", no label
    test = tmp_path / "test.tsv"
    test.write_text("index\tsentence\n0\tuneasy mishmash of styles and genres .\n1\tthis film 's \"relationship\" .\n")
    data = load_task_data(data_args(task_name="sst2", glue_dir=str(SST2_SAMPLE), test_file=str(test)))
    assert data.splits["test"].column_names == ["sentence"]
    assert data.splits["test"]["sentence"] == ["uneasy mishmash of styles and genres .", 'this film \'s "relationship" .']
    assert data.splits["train"].column_names == data.splits["validation"].column_names == ["sentence", "label"]
    assert len(data.splits["validation"]) == 872


def test_glue_tsv_with_a_byte_order_mark_loads(tmp_path):
    # GLUE's own MRPC train.tsv begins with a UTF-8 byte-order mark before "Quality"
    glue = tmp_path / "glue"
    (glue / "MRPC").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (glue / "MRPC" / name).write_bytes(("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                                           "1\t1\t2\tHe said so .\tHe told us .\n").encode("utf-8"))
    data = load_task_data(data_args(task_name="mrpc", glue_dir=str(glue)))
    assert data.splits["train"].to_dict() == {"sentence1": ["He said so ."], "sentence2": ["He told us ."], "label": [1]}


def test_glue_test_tsv_of_pair_tasks_and_cola(tmp_path):
    # MRPC's test.tsv names its text columns as its train.tsv does; CoLA's test.tsv has a header, unlike its train.tsv
    glue = tmp_path / "glue"
    (glue / "MRPC").mkdir(parents=True)
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    for name in ("train.tsv", "dev.tsv"):
        (glue / "MRPC" / name).write_text(header + "1\t1\t2\tHe said so .\tHe told us .\n0\t3\t4\tA cat .\tA dog .\n")
    (glue / "MRPC" / "test.tsv").write_text("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t5\t6\tOne .\tTwo .\n")
    data = load_task_data(data_args(task_name="mrpc", glue_dir=str(glue), test_file=str(glue / "MRPC" / "test.tsv")))
    assert data.splits["test"].to_dict() == {"sentence1": ["One ."], "sentence2": ["Two ."]}
    assert data.splits["train"].to_dict() == {"sentence1": ["He said so .", "A cat ."],
                                             "sentence2": ["He told us .", "A dog ."], "label": [1, 0]}

    (glue / "CoLA").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (glue / "CoLA" / name).write_text("gj04\t1\t\tThe sailors rode the breeze .\nclc95\t0\t*\tThe more we .\n")
    (glue / "CoLA" / "test.tsv").write_text("index\tsentence\n0\tBill whistled past the house .\n")
    data = load_task_data(data_args(task_name="cola", glue_dir=str(glue), test_file=str(glue / "CoLA" / "test.tsv")))
    assert data.splits["test"].to_dict() == {"sentence": ["Bill whistled past the house ."]}
    assert data.splits["train"]["label"] == [1, 0]

    (glue / "wrong.tsv").write_text("index\tquestion\n0\tWhy ?\n")
    with pytest.raises(DataError, match=r"wrong.tsv: expected columns \['sentence'\], found \['index', 'question'\]"):
        load_task_data(data_args(task_name="cola", glue_dir=str(glue), test_file=str(glue / "wrong.tsv")))


def test_glue_from_the_hub_drops_the_idx_column(monkeypatch):
    """nyu-mll/glue's splits carry `idx`; the Hub is unreachable here, so datasets.load_dataset answers as it would."""
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"]),
                                  "idx": datasets.Value("int32")})
    split = datasets.Dataset.from_dict({"sentence": ["good", "bad"], "label": [1, 0], "idx": [0, 1]}, features=features)
    calls = []

    def load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        return datasets.DatasetDict({"train": split, "validation": split, "test": split})

    monkeypatch.setattr(bermo.data.datasets, "load_dataset", load_dataset)
    data = load_task_data(data_args(task_name="sst2"))
    assert calls == [("nyu-mll/glue", "sst2")]
    assert sorted(data.splits) == ["train", "validation"]
    for dataset in data.splits.values():
        assert dataset.column_names == ["sentence", "label"] and dataset["label"] == [1, 0]
    assert data.label_names == ["negative", "positive"]


def test_glue_dir_stsb_is_regression(tmp_path):
    glue = tmp_path / "glue" / "STS-B"
    glue.mkdir(parents=True)
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    for name in ("train.tsv", "dev.tsv"):
        (glue / name).write_text(header + "0\tg\tf\t2012\t1\tnone\tnone\tA plane .\tA jet .\t5.000\n"
                                          "1\tg\tf\t2012\t2\tnone\tnone\tA man .\tA cat .\t0.500\n")
    shutil.copy(glue / "train.tsv", tmp_path / "labelled_test.tsv")
    data = load_task_data(data_args(task_name="stsb", glue_dir=str(glue.parent),
                                    test_file=str(tmp_path / "labelled_test.tsv")))
    assert data.label_names is None and data.num_labels == 1
    assert data.splits["train"].column_names == ["sentence1", "sentence2", "label"]
    assert data.splits["test"]["label"] == [5.0, 0.5]
