"""bermo-push against a local fake Hub (tests/fake_hub.py): upload, byte-exact store, reload with remote code, refusals.

The real huggingface_hub client talks to a server on 127.0.0.1 that the tests start; the Hub itself is never reached.
The push, the network refusals and the downloads run in child processes with HF_ENDPOINT pointing at the server
(huggingface_hub reads it at import), as a user would run them. The refusals of a bad folder fail before any request:
they call `bermo.hub.main` in this process (a child Python costs seconds), with huggingface_hub's endpoint and offline
switch patched all the same, so that a bug that let them through would push to the fake Hub and be seen.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

from bermo import BermoForSequenceClassification
from bermo.conversion import convert
from bermo.hub import main

from conftest import SENTENCES, TINY_BERT, no_bermo_env, run_python
from fake_hub import FakeHub

TOKEN = "hf_fake_test_token"
LABELS = {0: "negative", 1: "positive"}
REPO_ID = "user/bermo-sst2"


def hub_env(endpoint, tmp, base, token=TOKEN):
    """BASE with ENDPOINT as the Hub, TOKEN as the login, and an empty cache and home of its own under TMP."""
    env = dict(base)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(name, None)
    env.update(
        HF_ENDPOINT=endpoint, HF_TOKEN=token, HF_HOME=str(tmp / "hf_home"), HF_HUB_CACHE=str(tmp / "hub_cache"),
        HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


def push_cli(args, endpoint, tmp, token=TOKEN):
    """Run the bermo-push console script (or `python -m bermo.hub`) in a child process against ENDPOINT."""
    script = Path(sys.executable).with_name("bermo-push")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "bermo.hub"]
    return subprocess.run([*command, *args], env=hub_env(endpoint, tmp, os.environ, token), capture_output=True,
                          text=True, timeout=300)


def folder_files(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


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
    """`bermo-push CHECKPOINT user/bermo-sst2` in a child process."""
    return push_cli([str(checkpoint), REPO_ID], hub.url, tmp_path_factory.mktemp("push"))


def test_push_uploads_every_file_byte_for_byte_in_one_commit(hub, checkpoint, pushed):
    assert pushed.returncode == 0, pushed.stderr
    [(_, commit_id, summary, paths)] = [commit for commit in hub.commits if commit[0] == REPO_ID]
    assert summary == "Upload BERMo checkpoint"
    assert f"pushed {checkpoint} to {hub.url}/{REPO_ID}/commit/{commit_id}" in pushed.stdout
    assert "from transformers import AutoModelForSequenceClassification" in pushed.stdout
    assert (f"AutoModelForSequenceClassification.from_pretrained({REPO_ID!r}, revision={commit_id!r}, "
            "trust_remote_code=True)") in pushed.stdout
    local = folder_files(checkpoint)
    assert {"config.json", "model.safetensors", "configuration_bermo.py", "modeling_bermo.py", "README.md",
            "tokenizer.json", "vocab.txt", "tokenizer_config.json"} <= set(local)
    stored = hub.files(REPO_ID, commit_id)
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
classifier = pipeline("text-classification", model="user/bermo-sst2", trust_remote_code=True)  # main
errors = {}
from huggingface_hub import hf_hub_download
for repo, name in [("user/no-such-repo", "config.json"), ("user/bermo-sst2", "no_such_file.json")]:
    try:
        hf_hub_download(repo, name)
    except Exception as error:
        errors[name] = type(error).__name__
print(json.dumps({"module": type(model).__module__, "class": type(model).__name__,
                  "predictions": classifier(json.loads(sentences)), "errors": errors}))
"""


@pytest.fixture(scope="module")
def downloaded(hub, pushed, minilm_inputs, tmp_path_factory):
    """Load the pushed model in a child process without bermo (the printed snippet), and run a pipeline on it."""
    assert pushed.returncode == 0, pushed.stderr
    snippet = textwrap.dedent(pushed.stdout.split("load it with:\n", 1)[1])
    tmp = tmp_path_factory.mktemp("download")
    torch.save(minilm_inputs, tmp / "inputs.pt")
    child = run_python(["-c", DOWNLOAD, snippet, str(tmp / "inputs.pt"), str(tmp / "logits.pt"), json.dumps(SENTENCES)],
                       env=hub_env(hub.url, tmp, no_bermo_env()))
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


def test_unknown_repos_and_files_are_not_found(downloaded):
    report, _ = downloaded
    assert report["errors"] == {"config.json": "RepositoryNotFoundError", "no_such_file.json": "RemoteEntryNotFoundError"}


# --------------------------------------------------------------------------------------------------------------------
# Refusals: exit code 2, one line on stderr, nothing committed


def assert_refused(hub, repo_id, code, stderr, commits_before):
    """Exit code 2, a single `bermo-push: error:` line, no commit and no repo on the Hub; return the line."""
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bermo-push: error: "), stderr
    assert hub.commits == commits_before and repo_id not in hub.repos
    return lines[0]


def test_unreachable_endpoint_is_reported(checkpoint, hub, tmp_path):
    with socket.socket() as sock:  # a port that was just free: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    commits_before = list(hub.commits)
    result = push_cli([str(checkpoint), "user/unreachable"], f"http://127.0.0.1:{port}", tmp_path)
    line = assert_refused(hub, "user/unreachable", result.returncode, result.stderr, commits_before)
    assert f"Hub at http://127.0.0.1:{port} refused the token or is unreachable" in line


def test_rejected_token_is_reported_before_anything_is_created(checkpoint, hub, tmp_path):
    commits_before, requests_before = list(hub.commits), len(hub.requests)
    result = push_cli([str(checkpoint), "user/bad-token"], hub.url, tmp_path, token="hf_wrong_token")
    line = assert_refused(hub, "user/bad-token", result.returncode, result.stderr, commits_before)
    assert "refused the token or is unreachable" in line and "Invalid user token" in line
    assert [path for _, path in hub.requests[requests_before:]] == ["/api/whoami-v2"]


@pytest.fixture
def push_here(monkeypatch, hub, capsys):
    """`push_here(argv)`: run bermo.hub.main in this process against the fake Hub; (exit code, stdout, stderr)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)  # as in the children: no extra requests
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    def push(argv):
        code = main(argv)
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return push


def test_incomplete_folder_is_refused_naming_what_is_missing(copy_of, hub, push_here):
    folder, commits_before = copy_of(), list(hub.commits)
    for name in ("modeling_bermo.py", "tokenizer.json", "vocab.txt"):
        (folder / name).unlink()
    code, _, err = push_here([str(folder), "user/incomplete"])
    line = assert_refused(hub, "user/incomplete", code, err, commits_before)
    assert line.endswith("is not a complete BERMo checkpoint: missing modeling_bermo.py, tokenizer.json or vocab.txt")


def test_broken_card_metadata_is_refused(copy_of, hub, push_here):
    folder, commits_before = copy_of(), list(hub.commits)
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "\ntags:\n" in card
    (folder / "README.md").write_text(card.replace("\ntags:\n", "\ntags: [bermo\n", 1))  # an unclosed YAML list
    code, _, err = push_here([str(folder), "user/broken-card"])
    line = assert_refused(hub, "user/broken-card", code, err, commits_before)
    assert "README.md: invalid model card metadata (" in line


def test_stale_modeling_code_is_refused_unless_allowed(copy_of, hub, push_here):
    folder, commits_before = copy_of(), list(hub.commits)
    with open(folder / "modeling_bermo.py", "a") as file:
        file.write("\n# edited by hand\n")
    code, _, err = push_here([str(folder), "user/stale"])
    line = assert_refused(hub, "user/stale", code, err, commits_before)
    assert "modeling files differ from the installed bermo" in line and "modeling_bermo.py" in line and "--allow-stale-code" in line

    code, out, err = push_here([str(folder), "user/stale", "--allow-stale-code", "--commit-message", "old code"])
    assert code == 0, err
    [(_, commit_id, summary, _)] = [commit for commit in hub.commits if commit[0] == "user/stale"]
    assert summary == "old code" and f"revision='{commit_id}'" in out
    assert hub.files("user/stale", commit_id) == folder_files(folder)


# --------------------------------------------------------------------------------------------------------------------
# The weights must hold the config's tensors; --private must not be silently ignored; the card's snippet never prompts


def rewrite_weights(folder, change):
    """Rewrite FOLDER's model.safetensors with CHANGE applied to its state dict (a dict of tensors)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("damage, message", [
    ("empty", "model.safetensors: not a readable safetensors file (Error while deserializing header: header too small)"),
    ("truncated", "model.safetensors: not a readable safetensors file (Error while deserializing header: incomplete"),
    ("tensor missing", "the weights do not fit the BermoForSequenceClassification of config.json: "
                       "missing bert.encoder.layer.1.output.dense.weight"),
    ("extra tensor", "unexpected bert.adapter.weight"),
    ("config with another width", "shape mismatch bert.embeddings.LayerNorm.bias (32,) vs (48,)"),
])
def test_weights_that_cannot_load_are_refused_before_anything_is_sent(copy_of, hub, push_here, damage, message):
    folder, commits_before, requests_before = copy_of(), list(hub.commits), len(hub.requests)
    weights = folder / "model.safetensors"
    if damage == "empty":
        weights.write_bytes(b"")
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 100])
    elif damage == "tensor missing":
        rewrite_weights(folder, lambda tensors: tensors.pop("bert.encoder.layer.1.output.dense.weight"))
    elif damage == "extra tensor":
        rewrite_weights(folder, lambda tensors: tensors.update({"bert.adapter.weight": torch.zeros(3)}))
    else:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 48, "intermediate_size": 40}))
    code, _, err = push_here([str(folder), "user/broken-weights"])
    line = assert_refused(hub, "user/broken-weights", code, err, commits_before)
    assert message in line
    assert len(hub.requests) == requests_before  # refused before any request


def test_a_converted_checkpoint_without_its_new_head_passes_the_weight_check(tmp_path):
    """bermo-convert leaves a new task head (and a missing pooler) to be initialized on load: that is not damage."""
    from bermo.hub import check_weights

    source = tmp_path / "source"
    torch.manual_seed(0)
    BertModel(BertConfig(**TINY_BERT), add_pooling_layer=False).save_pretrained(source)
    result = convert(source, tmp_path / "out", task="sequence-classification", num_labels=4, verify=False,
                     show_progress=False, log=lambda *_: None)
    assert sorted(result.plan.initialized_on_load) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight",
                                                       "classifier.bias", "classifier.weight"]
    check_weights(tmp_path / "out", json.loads((tmp_path / "out" / "config.json").read_text()))


def test_private_is_refused_for_an_existing_public_repo(copy_of, hub, push_here):
    folder = copy_of()
    code, out, err = push_here([str(folder), "user/public-model"])
    assert code == 0, err
    assert out.splitlines()[0].endswith("(public)") and hub.repos["user/public-model"].private is False
    commits_before = list(hub.commits)
    code, _, err = push_here([str(folder), "user/public-model", "--private", "--commit-message", "again"])
    assert code == 2 and hub.commits == commits_before and hub.repos["user/public-model"].private is False
    [line] = err.strip().splitlines()
    assert line == ("bermo-push: error: user/public-model exists and is public: --private does not change an existing "
                    "repository's visibility; make it private on the Hub first (its settings, or "
                    "HfApi().update_repo_settings(repo_id, private=True)), or push without --private")


def test_private_creates_a_private_repo_and_later_pushes_keep_it_private(copy_of, hub, push_here):
    folder = copy_of()
    for argv in (["--private"], []):
        code, out, err = push_here([str(folder), "user/private-model", *argv])
        assert code == 0, err
        assert out.splitlines()[0].endswith("(private)")
        assert hub.repos["user/private-model"].private is True


LOAD_AS_THE_CARD_SAYS = """
import sys
exec(open(sys.argv[1]).read())  # defines `tokenizer` and `model`
print("LOADED", type(tokenizer).__name__, type(model).__name__, type(model).__module__)
"""


def test_card_snippet_loads_tokenizer_and_model_from_the_hub_without_a_prompt(hub, pushed, tmp_path):
    """The converted card's "How to load" code, with the pushed repo and commit, in a process without bermo."""
    assert pushed.returncode == 0, pushed.stderr
    [(_, commit_id, _, _)] = [commit for commit in hub.commits if commit[0] == REPO_ID]
    card = hub.files(REPO_ID, commit_id)["README.md"].decode()
    snippet = card.split("## How to load", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "AutoTokenizer.from_pretrained(repo" in snippet
    script = tmp_path / "snippet.py"
    script.write_text(snippet.replace("YOUR_NAME/YOUR_REPO", REPO_ID).replace("COMMIT_SHA", commit_id))
    child = subprocess.run([sys.executable, "-c", LOAD_AS_THE_CARD_SAYS, str(script)], stdin=subprocess.DEVNULL,
                           env=hub_env(hub.url, tmp_path, no_bermo_env()), capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    assert "Do you wish to run the custom code" not in child.stdout + child.stderr
    assert "LOADED" in child.stdout and "BermoForSequenceClassification transformers_modules" in child.stdout
