"""Probing pieces without a model: SentEval's file format, subsampling, the frozen protocol's probe, build-probing."""

import json
from collections import Counter

import numpy as np
import pytest

from bermo.experiments import build_probing
from bermo.experiments.cli import main
from bermo.experiments.probing import (
    ProbingDataError,
    find_tasks,
    fit_probe,
    probe_grid,
    read_probing_file,
    subsample,
)


def write_probing(path, rows):
    path.write_text("".join("\t".join(row) + "\n" for row in rows))
    return path


GOOD_ROWS = [("tr", "PAST", "He walked home ."), ("tr", "PRES", "She walks home ."), ("tr", "PAST", "It rained ."),
             ("va", "PRES", "It rains ."), ("va", "PAST", "They sang ."), ("te", "PRES", "They sing ."),
             ("te", "PAST", "We ate .")]


def test_reader_reads_senteval_format(tmp_path):
    task = read_probing_file(write_probing(tmp_path / "past_present.txt", GOOD_ROWS))
    assert task.name == "past_present" and task.short_name == "Tense" and task.group == "semantic"
    assert task.splits["tr"]["labels"] == ["PAST", "PRES", "PAST"]
    assert task.splits["te"]["sentences"] == ["They sing .", "We ate ."]
    assert task.labels == ["PAST", "PRES"]


@pytest.mark.parametrize("rows,message", [
    (GOOD_ROWS[:3] + [("va", "PRES")] + GOOD_ROWS[4:], r"past_present.txt:4: expected 3 tab-separated fields .* found 2"),
    (GOOD_ROWS[:2] + [("dev", "PAST", "It rained .")] + GOOD_ROWS[3:], r"past_present.txt:3: split 'dev' is not one"),
    ([(s, "PAST", t) for s, _, t in GOOD_ROWS], r"past_present.txt: one class only \('PAST'\)"),
    ([r for r in GOOD_ROWS if r[0] != "te"], r"past_present.txt: no rows of split te"),
    (GOOD_ROWS[:6] + [("te", "FUTURE", "We will eat .")], r"past_present.txt:7: label 'FUTURE' of split te never"),
    (GOOD_ROWS[:1] + [("tr", "", "Empty label .")] + GOOD_ROWS[1:], r"past_present.txt:2: empty label"),
])
def test_reader_refuses_malformed_files_naming_file_and_line(tmp_path, rows, message):
    path = write_probing(tmp_path / "past_present.txt", rows)
    with pytest.raises(ProbingDataError, match=message):
        read_probing_file(path)


def test_probing_command_reports_a_bad_file_in_one_line(tmp_path, capsys):
    folder = tmp_path / "probing"
    folder.mkdir()
    write_probing(folder / "bigram_shift.txt", GOOD_ROWS[:2] + [("xx", "O", "a b c")] + GOOD_ROWS[3:])
    out = tmp_path / "out"
    assert main(["probing", "--probing_dir", str(folder), "--output_dir", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.endswith("bigram_shift.txt:3: split 'xx' is not one of tr, va, te")
    assert not out.exists()
    assert main(["probing", "--probing_dir", str(tmp_path / "missing"), "--output_dir", str(out)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["probing", "--probing_dir", str(folder), "--tasks", "Tense", "--output_dir", str(out)]) == 2
    assert "--tasks Tense: no past_present.txt" in capsys.readouterr().err


def test_tasks_are_marked_senteval_or_built(tmp_path):
    senteval, built = tmp_path / "senteval", tmp_path / "built"
    senteval.mkdir(), built.mkdir()
    write_probing(senteval / "bigram_shift.txt", [(s, "O" if l == "PAST" else "I", t) for s, l, t in GOOD_ROWS])
    write_probing(built / "past_present.txt", GOOD_ROWS)
    (built / build_probing.MANIFEST).write_text(json.dumps({"tasks": {"past_present": {}}}))
    tasks = {task.name: task.source for task in find_tasks([senteval, built])}
    assert tasks == {"bigram_shift": "SentEval", "past_present": "built"}
    assert [t.name for t in find_tasks([senteval, built], ["tense"])] == ["past_present"]
    write_probing(built / "bigram_shift.txt", GOOD_ROWS)
    with pytest.raises(ProbingDataError, match="bigram_shift is in two folders"):
        find_tasks([senteval, built])


def test_subsample_is_class_balanced(tmp_path):
    rows = [("tr", "A" if i % 4 else "B", f"sentence {i}") for i in range(40)]  # 30 A, 10 B
    rows += [("va", "A", "x"), ("va", "B", "y"), ("te", "A", "z"), ("te", "B", "w")]
    task = subsample(read_probing_file(write_probing(tmp_path / "t.txt", rows)), {"tr": 12, "va": None, "te": None})
    assert Counter(task.splits["tr"]["labels"]) == {"A": 6, "B": 6}
    assert len(set(task.splits["tr"]["sentences"])) == 12
    assert Counter(task.splits["va"]["labels"]) == {"A": 1, "B": 1}


def _layered_features(rng, n, informative, layers=4, width=6):
    """Random features (n, layers, width) whose label is readable from one layer only."""
    labels = rng.integers(0, 2, size=n)
    features = rng.normal(size=(n, layers, width)).astype(np.float32)
    features[:, informative, 0] += 3.0 * (2 * labels - 1)
    return features, labels


def test_bermo_probe_with_its_mix_fixed_to_the_last_layer_is_the_last_layer_probe():
    rng = np.random.default_rng(0)
    splits = [_layered_features(rng, n, informative=3) for n in (80, 40, 40)]
    grid = probe_grid("mlp", [5], [0.2], [1e-4])  # dropout: the same random masks in both probes
    training = dict(max_epochs=30, epoch_size=5, tenacity=2, batch_size=16)
    last = [(x[:, 3].copy(), y) for x, y in splits]
    plain = fit_probe(*last, 2, grid, seed=7, **training)
    mixed = fit_probe(*splits, 2, grid, seed=7, mix=np.eye(4, dtype=np.float32)[3], **training)
    assert mixed["mix"] == {"weights": [0.0, 0.0, 0.0, 1.0], "scale": 1.0}
    assert np.array_equal(plain["predictions"], mixed["predictions"])
    assert (plain["dev"], plain["test"], plain["hidden"], plain["dropout"], plain["epochs"]) == (
        mixed["dev"], mixed["test"], mixed["hidden"], mixed["dropout"], mixed["epochs"])
    assert plain["test"] > 0.9


def test_learned_mix_moves_to_the_informative_layer():
    rng = np.random.default_rng(1)
    splits = [_layered_features(rng, n, informative=1) for n in (200, 60, 60)]
    result = fit_probe(*splits, 2, probe_grid("logreg", [], [], [1e-4]), seed=0, mix="learned",
                       max_epochs=20, epoch_size=4, tenacity=5, mix_learning_rate=5e-2)
    weights = result["mix"]["weights"]
    assert int(np.argmax(weights)) == 1 and weights[1] > 0.4  # from 0.25 each
    assert result["test"] > 0.9


# --------------------------------------------------------------------------------------------------------------------
# build-probing (spaCy)

SINGULAR = ["teacher", "farmer", "doctor", "pilot", "singer", "baker", "nurse", "driver", "painter", "writer",
            "lawyer", "sailor"]
VERBS = [("visit", "visits", "visited"), ("clean", "cleans", "cleaned"), ("paint", "paints", "painted"),
         ("watch", "watches", "watched"), ("open", "opens", "opened"), ("repair", "repairs", "repaired"),
         ("wash", "washes", "washed"), ("follow", "follows", "followed"), ("order", "orders", "ordered"),
         ("check", "checks", "checked"), ("photograph", "photographs", "photographed"), ("sell", "sells", "sold")]
OBJECTS = ["window", "car", "house", "boat", "letter", "table", "garden", "bridge", "fence", "truck", "basket",
           "door"]
TIMES = ["every morning", "on Sunday", "after lunch", "in the late evening before dinner", "twice a week"]


def corpus_sentences(count=200, seed=0):
    """Plain English sentences with known subjects, verbs and objects (for checking the lexical split)."""
    rng = np.random.default_rng(seed)
    sentences = []
    for i in range(count):
        plural_subject, plural_object = rng.random() < 0.5, rng.random() < 0.5
        subject = SINGULAR[rng.integers(len(SINGULAR))] + ("s" if plural_subject else "")
        obj = OBJECTS[rng.integers(len(OBJECTS))] + ("s" if plural_object else "")
        base, third, past = VERBS[rng.integers(len(VERBS))]
        verb = past if rng.random() < 0.5 else (base if plural_subject else third)
        sentence = f"The {subject} {verb} the old {obj} {TIMES[rng.integers(len(TIMES))]} ."
        if i % 4 == 0:
            other = SINGULAR[rng.integers(len(SINGULAR))]
            sentence = f"The {subject} {verb} the {obj} , but the {other} stayed at home ."
        sentences.append(sentence)
    return sentences


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("spacy", reason="build-probing needs spaCy: pip install 'bermo[probing]'")
    try:
        build_probing.load_spacy()
    except Exception as error:
        pytest.skip(f"no English spaCy pipeline installed ({error}); pip install 'bermo[probing]'")
    folder = tmp_path_factory.mktemp("build")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(corpus_sentences()) + "\n")
    out = folder / "built"
    assert main(["build-probing", "--corpus", str(corpus), "--output_dir", str(out), "--wc_words", "6",
                 "--wc_skip", "0", "--split_ratio", "0.6", "0.2", "0.2"]) == 0
    return corpus, out


def test_build_probing_writes_balanced_senteval_files_with_a_readme(built):
    corpus, out = built
    manifest = json.loads((out / build_probing.MANIFEST).read_text())
    expected = {"past_present", "subj_number", "obj_number", "bigram_shift", "coordination_inversion",
                "sentence_length"}
    assert expected <= set(manifest["tasks"])
    readme = (out / "README.md").read_text()
    assert "not SentEval's files" in readme and "corpus.txt" in readme and "VBD = PAST" in readme
    for name in manifest["tasks"]:
        task = read_probing_file(out / f"{name}.txt", source="built")
        for split in ("tr", "va", "te"):
            counts = Counter(task.splits[split]["labels"])
            assert len(counts) >= 2 and len(set(counts.values())) == 1, (name, split, counts)
            assert counts == manifest["tasks"][name]["labels"][split]
        sentences = [s for split in ("tr", "va", "te") for s in task.splits[split]["sentences"]]
        assert len(sentences) == len(set(sentences)), name  # a sentence at most once per task
    assert {t.name: t.source for t in find_tasks([out])}["past_present"] == "built"


def _target_word(task_name, sentence):
    words = sentence.split()
    if task_name == "past_present":
        return next(w for w in words if any(w in forms for forms in VERBS))
    if task_name == "subj_number":
        return words[1]
    position = words.index("the", 2) + 1
    return words[position + 1] if words[position] == "old" else words[position]


@pytest.mark.parametrize("task_name", ["past_present", "subj_number", "obj_number"])
def test_build_probing_target_words_occur_in_one_split_only(built, task_name):
    _, out = built
    task = read_probing_file(out / f"{task_name}.txt")
    words = {split: {_target_word(task_name, s) for s in task.splits[split]["sentences"]}
             for split in ("tr", "va", "te")}
    assert all(words.values())
    assert not words["tr"] & words["va"] and not words["tr"] & words["te"] and not words["va"] & words["te"]
    labels = dict(zip(task.splits["tr"]["sentences"], task.splits["tr"]["labels"]))
    for sentence, label in labels.items():  # the labels are right
        word = _target_word(task_name, sentence)
        if task_name == "past_present":
            assert label == ("PAST" if any(word == forms[2] for forms in VERBS) else "PRES")
        else:
            assert label == ("NNS" if word.endswith("s") else "NN")


def test_lexical_split_puts_a_word_form_in_one_split_across_labels():
    # "put" is the target as PAST and as PRES: SentEval puts the form in one split (the old split was per label
    # and word, so "put" landed in test as PRES and in train as PAST)
    examples = [(label, word, f"{word} {label} {i}") for i in range(6) for word in ("put", "cut", "read", "set")
                for label in ("PAST", "PRES")]
    examples += [("PAST", f"walked{i}", f"walked{i} sentence") for i in range(20)]
    examples += [("PRES", f"walks{i}", f"walks{i} sentence") for i in range(20)]
    for seed in range(5):
        splits = build_probing.lexical_split(examples, [0.6, 0.2, 0.2], np.random.default_rng(seed))
        where = {}
        for split, rows in splits.items():
            for _, text in rows:
                where.setdefault(text.split()[0], set()).add(split)
        assert all(len(splits_of_word) == 1 for splits_of_word in where.values()), where
        assert sorted(text for rows in splits.values() for _, text in rows) == sorted(t for _, _, t in examples)
        assert all({label for label, _ in rows} == {"PAST", "PRES"} for rows in splits.values())


def test_build_probing_measures_how_concentrated_the_target_forms_are(built):
    _, out = built
    manifest = json.loads((out / build_probing.MANIFEST).read_text())
    readme = (out / "README.md").read_text()
    assert "100-5,000" in readme and "**not applied**" in readme and "## Target forms of the lexical tasks" in readme
    for task_name in ("past_present", "subj_number", "obj_number"):
        task = read_probing_file(out / f"{task_name}.txt")
        forms = manifest["tasks"][task_name]["target_forms"]
        for split in ("tr", "va", "te"):
            counts = Counter(_target_word(task_name, s) for s in task.splits[split]["sentences"])
            entry = forms[split]
            assert entry["rows"] == sum(counts.values()) and entry["forms"] == len(counts)
            assert entry["top1_share"] == pytest.approx(counts.most_common(1)[0][1] / entry["rows"])
            assert entry["top5_share"] == pytest.approx(sum(c for _, c in counts.most_common(5)) / entry["rows"])
            assert f"| {build_probing.TASKS[task_name]} | {split} | {entry['rows']} | {entry['forms']} |" in readme


def test_build_probing_inversions_and_shifts_come_from_corpus_sentences(built):
    corpus, out = built
    originals = {" ".join(s.replace(",", " , ").split()) for s in corpus.read_text().splitlines()}
    shift = read_probing_file(out / "bigram_shift.txt")
    for split in ("tr", "va", "te"):
        for label, sentence in zip(shift.splits[split]["labels"], shift.splits[split]["sentences"]):
            if label == "O":
                assert sentence in originals
                continue
            words = sentence.split()
            swaps = [words[:i] + [words[i + 1], words[i]] + words[i + 2:] for i in range(len(words) - 1)]
            assert sentence not in originals and any(" ".join(w) in originals for w in swaps)
    inversion = read_probing_file(out / "coordination_inversion.txt")
    for label, sentence in zip(inversion.splits["tr"]["labels"], inversion.splits["tr"]["sentences"]):
        if label == "I":
            first, second = sentence.rstrip(" .").split(" , but ")
            assert f"{second[0].upper()}{second[1:]} , but {first[0].lower()}{first[1:]} ." in originals
        else:
            assert sentence in originals and ", but" in sentence


def test_build_probing_refuses_to_overwrite_and_bad_corpus(built, tmp_path, capsys):
    corpus, out = built
    before = (out / "past_present.txt").read_text()
    assert main(["build-probing", "--corpus", str(corpus), "--output_dir", str(out)]) == 2
    assert "holds an earlier build; pass --overwrite_output_dir" in capsys.readouterr().err
    assert (out / "past_present.txt").read_text() == before
    assert main(["build-probing", "--corpus", str(tmp_path / "nope.txt"), "--output_dir", str(tmp_path / "o")]) == 2
    assert "nope.txt: file not found" in capsys.readouterr().err
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("The cat sat on the mat today .\n")
    assert main(["build-probing", "--corpus", str(tiny), "--output_dir", str(tmp_path / "o2")]) == 2
    assert "no task could be built from 1 sentences" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_last_layer_with_learned_scale_control_keeps_its_weights_and_learns_its_scale():
    rng = np.random.default_rng(2)
    splits = [_layered_features(rng, n, informative=3) for n in (100, 40, 40)]
    result = fit_probe(*splits, 2, probe_grid("logreg", [], [], [1e-3]), seed=0, mix=np.eye(4)[3], learn_scale=True,
                       max_epochs=8, epoch_size=4, tenacity=2)
    assert result["mix"]["weights"] == [0.0, 0.0, 0.0, 1.0] and result["mix"]["scale"] != 1.0
