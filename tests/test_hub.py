"""bermo-push against a local fake Hub (tests/fake_hub.py): upload, byte-exact store, reload with remote code, refusals.

The real huggingface_hub client talks to a server on 127.0.0.1 that the tests start; the Hub itself is never reached.
The push and the downloads run in child processes with HF_ENDPOINT pointing at the server (huggingface_hub reads it
at import). The refusals run `bermo.hub.main` in this process, with huggingface_hub's endpoint and offline switch
patched, since most of them fail before any request and a child Python per case would cost seconds each.
"""

import json
import re
import shutil
import socket
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from bermo import BermoForSequenceClassification
from bermo.conversion import convert
from bermo.hub import main

from conftest import SENTENCES, TINY_BERT, no_bermo_env, run_python
from fake_hub import FakeHub

TOKEN = "hf_fake_test_token"
LABELS = {0: "negative", 1: "positive"}


def hub_env(endpoint, tmp, token=TOKEN, base=None):
    """Environment for a child Python that uses ENDPOINT as the Hub, with its own empty cache and no saved login."""
    env = dict(base if base is not None else no_bermo_env())
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(name, None)
    env.update(
        HF_ENDPOINT=endpoint, HF_TOKEN=token, HF_HOME=str(tmp / "hf_home"), HF_HUB_CACHE=str(tmp / "hub_cache"),
        HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


def folder_files(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def hub():
    with FakeHub(token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def checkpoint(minilm_path, tmp_path_factory):
    """A converted sequence-classification checkpoint: config, weights, modeling files, MiniLM tokenizer, card."""
    source = tmp_path_factory.mktemp("tiny-bert-sst2")
    torch.manual_seed(0)
    config = BertConfig(**{**TINY_BERT, "vocab_size": 30522, "max_position_embeddings": 128},
                        id2label=LABELS, label2id={name: i for i, name in LABELS.items()})
    BertForSequenceClassification(config).save_pretrained(source)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path / name, source / name)
    out = tmp_path_factory.mktemp("bermo-sst2") / "checkpoint"
    convert(source, out, show_progress=False, log=lambda *_: None)
    return out


@pytest.fixture
def copy_of(checkpoint, tmp_path):
    def make():
        folder = tmp_path / "checkpoint"
        shutil.copytree(checkpoint, folder)
        return folder
    return make


@pytest.fixture(scope="module")
def pushed(hub, checkpoint, tmp_path_factory):
    """`bermo-push CHECKPOINT user/bermo-sst2` in a child process: (completed process, repo id)."""
    tmp = tmp_path_factory.mktemp("push")
    script = Path(sys.executable).with_name("bermo-push")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "bermo.hub"]
    import subprocess

    result = subprocess.run([*command, str(checkpoint), "user/bermo-sst2"], env=hub_env(hub.url, tmp, base={}),
                            capture_output=True, text=True, timeout=300)
    return result, "user/bermo-sst2"


def test_push_uploads_every_file_byte_for_byte_in_one_commit(hub, checkpoint, pushed):
    result, repo_id = pushed
    assert result.returncode == 0, result.stderr
    [(repo, commit_id, summary, paths)] = [commit for commit in hub.commits if commit[0] == repo_id]
    assert summary == "Upload BERMo checkpoint"
    assert f"pushed {checkpoint} to {hub.url}/{repo_id}/commit/{commit_id}" in result.stdout
    assert "from transformers import AutoModelForSequenceClassification" in result.stdout
    assert (f"AutoModelForSequenceClassification.from_pretrained({repo_id!r}, revision={commit_id!r}, "
            "trust_remote_code=True)") in result.stdout
    local = folder_files(checkpoint)
    assert {"config.json", "model.safetensors", "configuration_bermo.py", "modeling_bermo.py", "README.md",
            "tokenizer.json", "vocab.txt", "tokenizer_config.json"} <= set(local)
    stored = hub.files(repo_id, commit_id)
    assert sorted(stored) == sorted(local) == sorted(paths)
    for name, content in local.items():
        assert stored[name] == content, f"{name} differs on the Hub"


DOWNLOAD = """
import json, sys, torch
from transformers import pipeline
snippet, inputs_path, logits_path, sentences = sys.argv[1:]
exec(snippet)  # the loading snippet bermo-push printed: defines `model`, at the pushed commit
inputs = torch.load(inputs_path, weights_only=True)
with torch.no_grad():
    logits = model.eval()(**inputs).logits
torch.save(logits, logits_path)
classifier = pipeline("text-classification", model="user/bermo-sst2", trust_remote_code=True)
print(json.dumps({"module": type(model).__module__, "class": type(model).__name__,
                  "predictions": classifier(json.loads(sentences))}))
"""


@pytest.fixture(scope="module")
def downloaded(hub, pushed, minilm_inputs, tmp_path_factory):
    """Load the pushed model in a child process without bermo (the printed snippet), and run a pipeline on it."""
    result, _ = pushed
    assert result.returncode == 0, result.stderr
    snippet = textwrap.dedent(result.stdout.split("load it with:\n", 1)[1])
    tmp = tmp_path_factory.mktemp("download")
    torch.save(minilm_inputs, tmp / "inputs.pt")
    child = run_python(["-c", DOWNLOAD, snippet, str(tmp / "inputs.pt"), str(tmp / "logits.pt"), json.dumps(SENTENCES)],
                       env=hub_env(hub.url, tmp))
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout.strip().splitlines()[-1]), torch.load(tmp / "logits.pt", weights_only=True)


def test_pushed_model_loads_with_remote_code_and_gives_identical_logits(checkpoint, minilm_inputs, downloaded):
    report, logits = downloaded
    assert report["class"] == "BermoForSequenceClassification"
    assert report["module"].startswith("transformers_modules")  # the Hub's copy of the code, not bermo
    local = BermoForSequenceClassification.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        expected = local(**minilm_inputs).logits
    assert torch.equal(logits, expected)


def test_pipeline_from_the_hub_names_labels(downloaded):
    report, _ = downloaded
    predictions = report["predictions"]
    assert len(predictions) == len(SENTENCES)
    assert {prediction["label"] for prediction in predictions} <= set(LABELS.values())
    assert all(0.0 <= prediction["score"] <= 1.0 for prediction in predictions)


# --------------------------------------------------------------------------------------------------------------------
# Refusals: exit code 2, one line on stderr, nothing committed


@pytest.fixture
def endpoint(monkeypatch, tmp_path):
    """Point this process's huggingface_hub at an endpoint: `endpoint(url, token)`."""
    from huggingface_hub import constants

    def use(url, token=TOKEN):
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", token)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    return use


def push_refused(capsys, hub, argv):
    """Run bermo-push ARGV; assert it exits 2 with one error line and commits nothing; return the line."""
    commits_before, repo_id = list(hub.commits), argv[1]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bermo-push: error: "), captured.err
    assert hub.commits == commits_before and repo_id not in hub.repos
    return lines[0]


def test_incomplete_folder_is_refused_naming_what_is_missing(copy_of, hub, endpoint, capsys):
    folder = copy_of()
    for name in ("modeling_bermo.py", "tokenizer.json", "vocab.txt"):
        (folder / name).unlink()
    endpoint(hub.url)
    line = push_refused(capsys, hub, [str(folder), "user/incomplete"])
    assert "missing modeling_bermo.py, tokenizer.json or vocab.txt" in line


def test_broken_card_metadata_is_refused(copy_of, hub, endpoint, capsys):
    folder = copy_of()
    card = (folder / "README.md").read_text()
    (folder / "README.md").write_text(card.replace("tags:", "tags: [bermo\n  unclosed:", 1))
    endpoint(hub.url)
    line = push_refused(capsys, hub, [str(folder), "user/broken-card"])
    assert "README.md: invalid model card metadata" in line


def test_unreachable_endpoint_is_reported(checkpoint, hub, endpoint, capsys):
    endpoint(f"http://127.0.0.1:{closed_port()}")
    line = push_refused(capsys, hub, [str(checkpoint), "user/unreachable"])
    assert "refused the token or is unreachable" in line


def test_rejected_token_is_reported_before_anything_is_created(checkpoint, hub, endpoint, capsys):
    endpoint(hub.url, token="hf_wrong_token")
    requests_before = len(hub.requests)
    line = push_refused(capsys, hub, [str(checkpoint), "user/bad-token"])
    assert "refused the token or is unreachable" in line and "Invalid user token" in line
    assert all(path == "/api/whoami-v2" or "harnesses" in path for _, path in hub.requests[requests_before:])


def test_stale_modeling_code_is_refused_unless_allowed(copy_of, hub, endpoint, capsys):
    folder = copy_of()
    with open(folder / "modeling_bermo.py", "a") as file:
        file.write("\n# edited by hand\n")
    endpoint(hub.url)
    line = push_refused(capsys, hub, [str(folder), "user/stale"])
    assert "modeling_bermo.py differ from the installed bermo's" in line and "--allow-stale-code" in line
    assert "configuration_bermo.py" not in line

    assert main([str(folder), "user/stale", "--allow-stale-code", "--commit-message", "old code"]) == 0
    [(_, commit_id, summary, _)] = [commit for commit in hub.commits if commit[0] == "user/stale"]
    assert summary == "old code"
    assert hub.files("user/stale", commit_id) == folder_files(folder)
    assert re.search(rf"revision='{commit_id}'", capsys.readouterr().out)
