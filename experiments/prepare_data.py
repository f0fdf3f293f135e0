"""Prepare the experiments' data from the shared data folder (GLUE TSVs, SentEval probing files), reproducibly.

    python experiments/prepare_data.py --shared_data ../shared/data --output_dir outputs/experiment_data

Writes, under OUTPUT_DIR:

- `glue/QQP/train.tsv`, `glue/QQP/dev.tsv`: the 23,497-line QQP training subset (GLUE's own rows, no header) split
  at random (numpy seed 0) into 22,496 training and 1,000 dev rows (23,496 valid rows; one malformed row dropped), with GLUE's header, so that
  `--task_name qqp --glue_dir OUTPUT_DIR/glue` reads them. GLUE's own QQP dev set is not available here.
- `corpus.txt`: real English sentences, one per line, for `bermo-experiment build-probing`: the original (label
  `O`) sentences of SentEval's bigram_shift and coordination_inversion files (BookCorpus sentences, SentEval's
  own source) and the sentences of GLUE's CoLA, MRPC, RTE and STS-B training files; duplicates removed, 5-40
  tokens.
"""

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

QQP_HEADER = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
QQP_DEV_ROWS = 1000


def split_qqp(shared, output):
    rows = []
    with open(shared / "glue" / "QQP" / "train_subset.tsv", encoding="utf-8", newline="") as file:
        for row in csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) == 6 and row[5] in ("0", "1"):
                rows.append(row)
    order = np.random.default_rng(0).permutation(len(rows))
    dev, train = [rows[i] for i in order[:QQP_DEV_ROWS]], [rows[i] for i in order[QQP_DEV_ROWS:]]
    folder = output / "glue" / "QQP"
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.tsv", train), ("dev.tsv", dev)):
        lines = ["\t".join(row) for row in [QQP_HEADER, *part]]  # GLUE's own unquoted TSV
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(train), len(dev), len(rows)


def corpus_sentences(shared):
    for name in ("bigram_shift.txt", "coordination_inversion.txt"):
        for line in (shared / "senteval_probing" / name).read_text(encoding="utf-8").splitlines():
            split, label, sentence = line.split("\t")
            if label == "O":
                yield sentence
    glue = shared / "glue"
    for task, columns, header in (("CoLA", [3], False), ("MRPC", [3, 4], True), ("RTE", [1, 2], True),
                                  ("STS-B", [7, 8], True)):
        with open(glue / task / "train.tsv", encoding="utf-8", newline="") as file:
            rows = list(csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
        for row in rows[1 if header else 0:]:
            for column in columns:
                if column < len(row):
                    yield row[column]


def write_corpus(shared, output):
    seen, kept = set(), []
    for sentence in corpus_sentences(shared):
        sentence = " ".join(sentence.split())
        if 5 <= len(sentence.split()) <= 40 and sentence not in seen:
            seen.add(sentence)
            kept.append(sentence)
    (output / "corpus.txt").write_text("\n".join(kept) + "\n", encoding="utf-8")
    return len(kept)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared_data", type=Path, required=True, help="the shared data folder (glue/, senteval_probing/)")
    parser.add_argument("--output_dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if not (args.shared_data / "glue" / "QQP" / "train_subset.tsv").is_file():
        print(f"prepare_data.py: error: {args.shared_data}: no glue/QQP/train_subset.tsv", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    train, dev, total = split_qqp(args.shared_data, args.output_dir)
    print(f"QQP: {total} rows -> {train} train, {dev} dev ({args.output_dir / 'glue' / 'QQP'})")
    print(f"corpus: {write_corpus(args.shared_data, args.output_dir)} sentences ({args.output_dir / 'corpus.txt'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
