"""bermo-convert: every supported source architecture and format, the real MiniLM checkpoint, bad inputs."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import BertConfig

from bermo.conversion import ConversionError, convert, main, plan_conversion

from conftest import REPO_ROOT, TINY_BERT, no_bermo_env, run_python

ARCHITECTURES = {
    "BertModel": ("base", "BermoModel"),
    "BertForPreTraining": ("base", "BermoModel"),
    "BertForMaskedLM": ("base", "BermoModel"),
    "BertForSequenceClassification": ("sequence-classification", "BermoForSequenceClassification"),
    "BertForTokenClassification": ("token-classification", "BermoForTokenClassification"),
    "BertForQuestionAnswering": ("question-answering", "BermoForQuestionAnswering"),
}


def save_bert(folder, architecture="BertModel", weights="safetensors", **config_kwargs):
    torch.manual_seed(0)
    config = BertConfig(**{**TINY_BERT, **config_kwargs})
    model = getattr(transformers, architecture)(config).eval()
    if weights == "bin":
        folder.mkdir(parents=True, exist_ok=True)
        config.architectures = [architecture]
        config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder, max_shard_size="20KB" if weights == "sharded" else "5GB")
    return model


def quiet(*_args, **_kwargs):
    pass


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
@pytest.mark.parametrize("weights", ["safetensors", "sharded", "bin"])
def test_every_architecture_and_format_converts_exactly(tmp_path, tiny_inputs, architecture, weights):
    source = tmp_path / "source"
    bert = save_bert(source, architecture, weights, num_labels=2 if "Question" in architecture else 3)
    if weights == "sharded":
        assert (source / "model.safetensors.index.json").is_file()
    result = convert(source, tmp_path / "out", mix_init="last", show_progress=False, log=quiet)
    task, class_name = ARCHITECTURES[architecture]
    assert result.task == task
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == "bermo" and saved["architectures"] == [class_name]
    assert {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification"} <= set(saved["auto_map"])
    assert result.verification["hidden_states_max_abs_diff"] <= 1e-5
    model = getattr(transformers, "AutoModel" if task == "base" else class_name.replace("Bermo", "AutoModel"))
    model = model.from_pretrained(tmp_path / "out").eval()
    assert type(model).__name__ == class_name
    with torch.no_grad():
        theirs, ours = bert(**tiny_inputs), model(**tiny_inputs)
    compared = ("last_hidden_state",) if task == "base" else ("logits", "start_logits", "end_logits")
    for name in compared:
        if getattr(theirs, name, None) is not None:
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), atol=1e-5, rtol=0)
    if architecture == "BertForSequenceClassification":
        assert saved["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    if architecture in ("BertForPreTraining", "BertForMaskedLM"):
        assert any("cls.*" in reason for reason in result.plan.dropped.values())


def test_plan_is_a_pure_function_that_accounts_for_every_tensor():
    source = {"embeddings.word_embeddings.weight": (10, 4), "encoder.layer.0.output.LayerNorm.gamma": (4,),
              "cls.predictions.bias": (10,), "pooler.dense.weight": (4, 4)}
    target = {"bert.embeddings.word_embeddings.weight": (10, 4), "bert.encoder.layer.0.output.LayerNorm.weight": (4,),
              "bert.pooler.dense.weight": (4, 4), "bert.layer_mix.logits": (2,), "bert.layer_mix.scale": (1,),
              "classifier.weight": (2, 4)}
    plan = plan_conversion(source, target, ("classifier.",))
    assert plan.sources == {
        "bert.embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
        "bert.encoder.layer.0.output.LayerNorm.weight": "encoder.layer.0.output.LayerNorm.gamma",
        "bert.pooler.dense.weight": "pooler.dense.weight",
    }
    assert list(plan.dropped) == ["cls.predictions.bias"]
    assert plan.new == ["bert.layer_mix.logits", "bert.layer_mix.scale"]
    assert plan.initialized_on_load == ["classifier.weight"]
    with pytest.raises(ConversionError, match="shape mismatch: pooler.dense.weight"):
        plan_conversion({**source, "pooler.dense.weight": (4, 5)}, target, ("classifier.",))
    with pytest.raises(ConversionError, match="missing: bert.embeddings.word_embeddings.weight"):
        plan_conversion({k: v for k, v in source.items() if "word" not in k}, target, ("classifier.",))
    with pytest.raises(ConversionError, match="not part of BERT"):
        plan_conversion({**source, "adapter.weight": (3,)}, target, ("classifier.",))


def test_task_change_drops_the_source_head_and_labels_new_head(tmp_path):
    save_bert(tmp_path / "source", "BertForSequenceClassification", num_labels=3)
    result = convert(tmp_path / "source", tmp_path / "out", task="token-classification", num_labels=5,
                     show_progress=False, log=quiet)
    assert "task-head tensors of another task" in result.plan.dropped.values()
    assert sorted(result.plan.initialized_on_load) == ["classifier.bias", "classifier.weight"]
    config = transformers.AutoConfig.from_pretrained(tmp_path / "out")
    assert config.num_labels == 5


def test_half_precision_output_keeps_the_mix_in_float32(tmp_path):
    save_bert(tmp_path / "source")
    convert(tmp_path / "source", tmp_path / "out", dtype="bfloat16", show_progress=False, log=quiet)
    tensors = load_file(tmp_path / "out" / "model.safetensors")
    assert tensors["embeddings.word_embeddings.weight"].dtype == torch.bfloat16
    assert tensors["layer_mix.logits"].dtype == torch.float32


def test_real_minilm_converts_with_card_tokenizer_and_pipeline(minilm_path, tmp_path):
    out = tmp_path / "minilm-bermo"
    code = main([str(minilm_path), str(out), "--task", "sequence-classification", "--num-labels", "2",
                 "--base-model", "sentence-transformers/all-MiniLM-L6-v2"])
    assert code == 0
    names = {path.name for path in out.iterdir()}
    assert {"model.safetensors", "config.json", "configuration_bermo.py", "modeling_bermo.py", "README.md",
            "tokenizer.json", "vocab.txt", "tokenizer_config.json"} <= names
    assert (out / "vocab.txt").read_bytes() == (minilm_path / "vocab.txt").read_bytes()
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-classification"
    assert {"bermo", "custom_code"} <= set(card.data.tags) and card.data.license == "apache-2.0"
    assert "trust_remote_code=True" in card.text and 'revision="' in card.text and "max abs diff" in card.text
    auto_map = json.loads((out / "config.json").read_text())["auto_map"]
    for auto_class in auto_map:  # every Auto class named in auto_map loads the output
        kwargs = {} if auto_class == "AutoConfig" else {"ignore_mismatched_sizes": True}  # one-output MC head
        loaded = getattr(transformers, auto_class).from_pretrained(out, **kwargs)
        assert type(loaded).__name__ == auto_map[auto_class].split(".")[-1]
    classify = f"""
from transformers import pipeline
classifier = pipeline("text-classification", model={str(out)!r}, trust_remote_code=True)
print(classifier(["a wonderful film", "a dull film"]))
print(type(classifier.model).__module__)
"""
    result = run_python(["-c", classify], env=no_bermo_env())
    assert result.returncode == 0, result.stderr
    assert "LABEL_" in result.stdout and "transformers_modules" in result.stdout


def run_cli(args, env=None):
    return subprocess.run([sys.executable, str(REPO_ROOT / "conversion" / "convert_bert_to_bermo.py"), *args],
                          capture_output=True, text=True, env=env)


def assert_refused(tmp_path, args, message):
    result = run_cli(args)
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("bermo-convert: error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.bermo-tmp-*"))


def test_missing_source(tmp_path):
    env_args = [str(tmp_path / "nope"), str(tmp_path / "out")]
    assert_refused(tmp_path, env_args, "not found")


@pytest.mark.parametrize("model_type", ["gpt2", "bart"])
def test_unsupported_model_type(tmp_path, model_type):
    transformers.AutoConfig.for_model(model_type).save_pretrained(tmp_path / "source")
    assert_refused(tmp_path, [str(tmp_path / "source"), str(tmp_path / "out")], f"model_type '{model_type}' is not supported")


def test_only_tensorflow_weights(tmp_path):
    BertConfig(**TINY_BERT).save_pretrained(tmp_path / "source")
    (tmp_path / "source" / "tf_model.h5").write_bytes(b"\x89HDF\r\n")
    assert_refused(tmp_path, [str(tmp_path / "source"), str(tmp_path / "out")], "found only tf_model.h5")


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_corrupted_safetensors(tmp_path, damage):
    save_bert(tmp_path / "source")
    weights = tmp_path / "source" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 16 + data[16:])
    before = weights.read_bytes()
    assert_refused(tmp_path, [str(tmp_path / "source"), str(tmp_path / "out")], "not a valid safetensors file")
    assert weights.read_bytes() == before


def test_missing_weights_are_named(tmp_path):
    model = save_bert(tmp_path / "source", weights="bin")
    state = model.state_dict()
    del state["encoder.layer.1.attention.self.query.weight"]
    torch.save(state, tmp_path / "source" / "pytorch_model.bin")
    assert_refused(tmp_path, [str(tmp_path / "source"), str(tmp_path / "out")],
                   "source weights missing: encoder.layer.1.attention.self.query.weight")


def test_shape_mismatch_is_named(tmp_path):
    model = save_bert(tmp_path / "source", weights="bin")
    state = model.state_dict()
    state["pooler.dense.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "source" / "pytorch_model.bin")
    assert_refused(tmp_path, [str(tmp_path / "source"), str(tmp_path / "out")], "shape mismatch: pooler.dense.bias")


def test_num_labels_conflicting_with_a_fine_tuned_head(tmp_path):
    save_bert(tmp_path / "source", "BertForSequenceClassification", num_labels=3)
    assert_refused(tmp_path, [str(tmp_path / "source"), str(tmp_path / "out"), "--num-labels", "2"],
                   "--num-labels 2 conflicts with the source's fine-tuned sequence-classification head, which has 3")


def test_bin_that_is_not_a_state_dict(tmp_path):
    BertConfig(**TINY_BERT).save_pretrained(tmp_path / "source")
    torch.save({"weights": [1, 2, 3], "step": 7}, tmp_path / "source" / "pytorch_model.bin")
    assert_refused(tmp_path, [str(tmp_path / "source"), str(tmp_path / "out")], "not a state dict of tensors")


def test_pickled_object_is_refused_without_running_it(tmp_path):
    import pickle

    BertConfig(**TINY_BERT).save_pretrained(tmp_path / "source")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "source" / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Exploit()}))
    assert_refused(tmp_path, [str(tmp_path / "source"), str(tmp_path / "out")], "cannot be read as a state dict")
    assert not marker.exists()


def test_existing_output_needs_overwrite_and_source_is_untouched(tmp_path):
    save_bert(tmp_path / "source")
    before = {path.name: path.read_bytes() for path in (tmp_path / "source").iterdir()}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = run_cli([str(tmp_path / "source"), str(tmp_path / "out")])
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert run_cli([str(tmp_path / "source"), str(tmp_path / "out"), "--overwrite"]).returncode == 0
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "model.safetensors").is_file()
    assert {path.name: path.read_bytes() for path in (tmp_path / "source").iterdir()} == before
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".out.")]


def test_killed_run_leaves_no_output(tmp_path):
    save_bert(tmp_path / "source")
    # slow the writer down so that the kill lands mid-write
    script = (
        "import time, sys, bermo.conversion as c\n"
        "original = c.write_safetensors\n"
        "def slow(*args, **kwargs):\n"
        "    print('writing', flush=True); time.sleep(60); original(*args, **kwargs)\n"
        "c.write_safetensors = slow\n"
        "sys.exit(c.main(sys.argv[1:]))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "source"), str(tmp_path / "out")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("writing"):
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "out").exists()
    staging = list(tmp_path.glob(".out.bermo-tmp-*"))
    assert staging, "the run was killed while writing its staging folder"
    # the next run cleans the dead run's staging folder and succeeds
    assert run_cli([str(tmp_path / "source"), str(tmp_path / "out")]).returncode == 0
    assert not list(tmp_path.glob(".out.bermo-tmp-*"))


def test_hub_id_resolves_from_the_offline_cache(tmp_path):
    from huggingface_hub import snapshot_download  # noqa: F401  (the real resolution path)

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-bert" / "snapshots" / ("a" * 40)
    save_bert(snapshot)
    (cache / "models--someone--tiny-bert" / "refs").mkdir()
    (cache / "models--someone--tiny-bert" / "refs" / "main").write_text("a" * 40)
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    result = run_cli(["someone/tiny-bert", str(tmp_path / "out")], env=env)
    assert result.returncode == 0, result.stderr
    from huggingface_hub import ModelCard

    assert ModelCard.load(tmp_path / "out" / "README.md").data.base_model == "someone/tiny-bert"
    missing = run_cli(["someone/other-bert", str(tmp_path / "out2")], env=env)
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_help_explains_every_option():
    result = run_cli(["--help"])
    assert result.returncode == 0
    for option in ("--task", "--num-labels", "--mix-init", "--mix-layers", "--dtype", "--revision", "--overwrite",
                   "--no-verify", "--push-to-hub", "example:"):
        assert option in result.stdout


def test_token_classification_and_question_answering_pipelines_with_remote_code(minilm_path, tmp_path):
    for architecture in ("BertForTokenClassification", "BertForQuestionAnswering"):
        source = tmp_path / architecture
        labels = {"id2label": {0: "O", 1: "B-PER", 2: "I-PER"}} if "Token" in architecture else {}
        save_bert(source, architecture, **{**labels, "vocab_size": 30522, "max_position_embeddings": 128})
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            (source / name).write_bytes((minilm_path / name).read_bytes())
        convert(source, tmp_path / f"{architecture}-bermo", show_progress=False, log=quiet)
    script = f"""
from transformers import pipeline
tagger = pipeline("token-classification", model={str(tmp_path / 'BertForTokenClassification-bermo')!r},
                  trust_remote_code=True)
tags = tagger("Alice met Bob in Paris")
assert tags and all(tag["entity"] in ("O", "B-PER", "I-PER") for tag in tags), tags
qa_path = {str(tmp_path / 'BertForQuestionAnswering-bermo')!r}
from transformers.pipelines import SUPPORTED_TASKS
if "question-answering" in SUPPORTED_TASKS:  # transformers 4.x; 5.x removed the question-answering pipeline
    reader = pipeline("question-answering", model=qa_path, trust_remote_code=True)
    answer = reader(question="Who met Bob?", context="Alice met Bob in Paris.")
    assert set(answer) >= {{"answer", "start", "end", "score"}}, answer
    reader = reader.model
else:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer
    reader = AutoModelForQuestionAnswering.from_pretrained(qa_path, trust_remote_code=True)
    inputs = AutoTokenizer.from_pretrained(qa_path)("Who met Bob?", "Alice met Bob in Paris.", return_tensors="pt")
    output = reader(**inputs)
    assert output.start_logits.shape == output.end_logits.shape == inputs["input_ids"].shape
print("PIPELINES OK", type(tagger.model).__module__, type(reader).__name__)
"""
    result = run_python(["-c", script], env=no_bermo_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PIPELINES OK transformers_modules" in result.stdout and "BermoForQuestionAnswering" in result.stdout


def folder_bytes(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("layout", ["output inside source", "source inside output", "same folder",
                                    "output inside source through a symlink", "same folder through a symlink"])
def test_source_and_output_never_overlap_even_with_overwrite(tmp_path, layout):
    source = {"source inside output": tmp_path / "out" / "source"}.get(layout, tmp_path / "source")
    save_bert(source)
    (tmp_path / "link").symlink_to(source, target_is_directory=True)
    output = {
        "output inside source": source / "bermo",
        "source inside output": tmp_path / "out",
        "same folder": tmp_path / "source" / ".." / "source",
        "output inside source through a symlink": tmp_path / "link" / "bermo",
        "same folder through a symlink": tmp_path / "link",
    }[layout]
    before = folder_bytes(tmp_path)
    result = run_cli([str(source), str(output), "--overwrite"])
    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("bermo-convert: error:")]
    expected = {"source inside output": "holds the source", "same folder": "is the source folder",
                "same folder through a symlink": "is the source folder"}.get(layout, "is inside the source")
    assert expected in line and "source" in line
    assert folder_bytes(tmp_path) == before  # nothing written, nothing deleted


def test_decoder_without_cross_attention_converts_as_an_encoder(tmp_path, tiny_inputs):
    save_bert(tmp_path / "source", "BertLMHeadModel", is_decoder=True)
    assert json.loads((tmp_path / "source" / "config.json").read_text())["is_decoder"] is True
    result = convert(tmp_path / "source", tmp_path / "out", mix_init="last", show_progress=False, log=quiet)
    assert result.task == "base" and result.verification["hidden_states_max_abs_diff"] <= 1e-5
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["architectures"] == ["BermoModel"] and saved["is_decoder"] is False
    encoder = transformers.BertModel.from_pretrained(tmp_path / "source", is_decoder=False).eval()
    model = transformers.AutoModel.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**tiny_inputs).last_hidden_state,
                                   encoder(**tiny_inputs).last_hidden_state, atol=1e-5, rtol=0)
    assert "`is_decoder` was cleared" in (tmp_path / "out" / "README.md").read_text()


def test_decoder_with_cross_attention_is_refused(tmp_path):
    save_bert(tmp_path / "source", "BertLMHeadModel", is_decoder=True, add_cross_attention=True)
    assert_refused(tmp_path, [str(tmp_path / "source"), str(tmp_path / "out")],
                   "source is a decoder with cross-attention (bert.encoder.layer.0.crossattention.")


@pytest.mark.parametrize("dtype, tolerance", [("float32", "1e-05"), ("float16", "0.01"), ("bfloat16", "0.05")])
def test_card_states_the_tolerance_used(tmp_path, dtype, tolerance):
    save_bert(tmp_path / "source")
    result = convert(tmp_path / "source", tmp_path / "out", dtype=dtype, show_progress=False, log=quiet)
    assert f"{result.verification['tolerance']:g}" == tolerance
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"A difference above {tolerance} (the tolerance for {dtype} weights;" in card
    assert card.count("1e-5") == 0 and (dtype == "float32") == ("1e-05" in card)


KILL_BETWEEN_RENAMES = """
import os, signal, sys
import bermo.conversion as c
rename = os.rename
def rename_then_die(src, dst):
    rename(src, dst)
    if os.path.basename(os.path.dirname(dst)).startswith(".out.bermo-old-"):  # the old output is aside
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename_then_die
sys.exit(c.main(sys.argv[1:]))
"""


def test_kill_between_the_two_renames_is_recovered_by_the_next_run(tmp_path):
    save_bert(tmp_path / "source")
    convert(tmp_path / "source", tmp_path / "out", mix_init="last", show_progress=False, log=quiet)
    before = folder_bytes(tmp_path / "out")
    killed = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(tmp_path / "source"),
                             str(tmp_path / "out"), "--overwrite", "--mix-init", "uniform"], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [aside] = tmp_path.glob(".out.bermo-old-*")
    assert not (tmp_path / "out").exists() and folder_bytes(aside / "old") == before
    assert list(tmp_path.glob(".out.bermo-tmp-*"))  # the dead run's finished staging folder

    # the next run puts the previous output back (then refuses to replace it without --overwrite), and cleans up
    result = run_cli([str(tmp_path / "source"), str(tmp_path / "out")])
    assert result.returncode == 2 and "exists and is not empty; pass --overwrite" in result.stderr
    assert f"restored {tmp_path / 'out'} from {aside.name}" in result.stdout
    assert folder_bytes(tmp_path / "out") == before
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".out.")]
    assert run_cli([str(tmp_path / "source"), str(tmp_path / "out"), "--overwrite"]).returncode == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["mix_init"] == "uniform"
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".out.")]


def test_failed_second_rename_puts_the_previous_output_back(tmp_path, monkeypatch):
    save_bert(tmp_path / "source")
    convert(tmp_path / "source", tmp_path / "out", mix_init="last", show_progress=False, log=quiet)
    before = folder_bytes(tmp_path / "out")
    rename = os.rename

    def failing_rename(src, dst):
        if str(dst) == str(tmp_path / "out") and ".out.bermo-tmp-" in str(src):
            raise OSError(28, "No space left on device")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="No space left"):
        convert(tmp_path / "source", tmp_path / "out", overwrite=True, show_progress=False, log=quiet)
    assert folder_bytes(tmp_path / "out") == before
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".out.")]


def test_last_biased_mix_init_from_the_command_line(tmp_path):
    save_bert(tmp_path / "source")
    result = run_cli([str(tmp_path / "source"), str(tmp_path / "out"), "--mix-init", "last:0.9"])
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "config.json").read_text())["mix_init"] == "last:0.9"
    assert "initial mix `last:0.9`" in (tmp_path / "out" / "README.md").read_text()
    logits = load_file(tmp_path / "out" / "model.safetensors")["layer_mix.logits"]
    assert torch.softmax(logits.double(), 0)[-1].item() == pytest.approx(0.9, abs=1e-6)
    assert_refused(tmp_path / "bad", [str(tmp_path / "source"), str(tmp_path / "bad" / "out"), "--mix-init",
                                      "last:1.5"], "--mix-init")
