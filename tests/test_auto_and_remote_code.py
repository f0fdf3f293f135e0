"""Auto-class registration on `import bermo`, auto_map on save, and loading with trust_remote_code=True in a
process that cannot import our package."""

import ast
import json

import pytest
import torch
import transformers
from transformers import AutoConfig

import bermo
from bermo import BermoConfig

from conftest import REPO_ROOT, TESTS_DIR, no_bermo_env, run_python

HEADS = {
    "AutoModel": bermo.BermoModel,
    "AutoModelForSequenceClassification": bermo.BermoForSequenceClassification,
    "AutoModelForTokenClassification": bermo.BermoForTokenClassification,
    "AutoModelForQuestionAnswering": bermo.BermoForQuestionAnswering,
    "AutoModelForMultipleChoice": bermo.BermoForMultipleChoice,
}


def test_import_registers_config_and_every_class(tiny_config_kwargs):
    config = AutoConfig.for_model("bermo", **tiny_config_kwargs)
    assert isinstance(config, BermoConfig)
    for auto_class, model_class in HEADS.items():
        assert type(getattr(transformers, auto_class).from_config(config)) is model_class


def test_every_save_writes_the_full_auto_map_and_the_modeling_files(tiny_config_kwargs, tmp_path):
    model = bermo.BermoForTokenClassification(BermoConfig(**tiny_config_kwargs))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"] == {
        "AutoConfig": "configuration_bermo.BermoConfig",
        **{auto_class: f"modeling_bermo.{cls.__name__}" for auto_class, cls in HEADS.items()},
    }
    assert saved["bermo_version"] == bermo.__version__
    for name in ("configuration_bermo.py", "modeling_bermo.py"):
        assert (tmp_path / name).read_text() == (REPO_ROOT / "modeling" / name).read_text()
    for auto_class, model_class in HEADS.items():  # (the multiple-choice head has one output, not two)
        loaded = getattr(transformers, auto_class).from_pretrained(tmp_path, ignore_mismatched_sizes=True)
        assert type(loaded) is model_class


def test_remote_code_loads_every_head_where_bermo_is_not_importable(tmp_path):
    written = run_python([str(TESTS_DIR / "remote_code_roundtrip.py"), "write", str(tmp_path)])
    assert written.returncode == 0, written.stderr
    blocked = run_python(["-c", "import bermo"], env=no_bermo_env())
    assert blocked.returncode != 0 and "No module named 'bermo'" in blocked.stderr
    env = no_bermo_env()
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    checked = run_python([str(TESTS_DIR / "remote_code_roundtrip.py"), "check", str(tmp_path)], env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "remote code OK: 35 checkpoints" in checked.stdout  # BERT and 6 families, 5 heads each


def test_remote_code_file_logits_match_the_saved_model(tiny_config_kwargs, tiny_inputs, tmp_path):
    torch.manual_seed(0)
    model = bermo.BermoForSequenceClassification(BermoConfig(**tiny_config_kwargs, num_labels=3)).eval()
    model.save_pretrained(tmp_path / "model")
    with torch.no_grad():
        expected = model(**tiny_inputs).logits
    torch.save({"inputs": tiny_inputs, "expected": expected}, tmp_path / "io.pt")
    script = f"""
import torch, transformers
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
path = {str(tmp_path / 'model')!r}
io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
config = AutoConfig.from_pretrained(path, trust_remote_code=True)
base = AutoModel.from_pretrained(path, trust_remote_code=True)
model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    logits = model(**io["inputs"]).logits
print("MAXDIFF", (logits - io["expected"]).abs().max().item(), type(config).__name__, type(base).__name__)
"""
    env = no_bermo_env()
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = run_python(["-c", script], env=env)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("MAXDIFF"))
    _, difference, config_name, base_name = line.split()
    assert float(difference) == 0.0 and config_name == "BermoConfig" and base_name == "BermoModel"


@pytest.mark.parametrize("name", ["configuration_bermo.py", "modeling_bermo.py"])
def test_modeling_files_import_only_torch_transformers_and_each_other(name):
    tree = ast.parse((REPO_ROOT / "modeling" / name).read_text())

    def check(node, in_fallback=False):
        if isinstance(node, ast.Import):
            assert all(alias.name.split(".")[0] in ("torch", "transformers") for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 1 or node.module.split(".")[0] in ("torch", "transformers"), node.module
        elif isinstance(node, ast.Try):  # only a version fallback: `try: import ... except ImportError: ...`
            assert [handler.type.id for handler in node.handlers] == ["ImportError"] and not node.finalbody
            for child in node.body:
                assert isinstance(child, (ast.Import, ast.ImportFrom)), ast.dump(child)[:80]
                check(child)
            for child in node.handlers[0].body:
                check(child, in_fallback=True)
        else:  # nothing runs at import time but definitions of classes, functions and constants
            assert isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.Assign, ast.Expr)), ast.dump(node)[:80]
            if isinstance(node, ast.Assign) and in_fallback:
                assert isinstance(node.value, (ast.Constant, ast.Name)), ast.dump(node)[:80]
            if isinstance(node, ast.Expr):
                assert isinstance(node.value, ast.Constant)  # the module docstring

    for node in tree.body:
        check(node)
