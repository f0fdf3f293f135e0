"""FSDP end to end on 2 CPU processes: fine-tune, checkpoint, resume to the same weights, load the final save.

accelerate (1.16) never selects FSDP on CPU: `accelerate launch --use_fsdp` there runs its processes as plain data
parallel (MULTI_CPU). `FORCE_FSDP` turns that state into FSDP inside the launched processes, so that the code a GPU run
takes (FSDP2 `fully_shard` per `BertLayer`, sharded `save_state`/`load_state`, the full state dict gathered for the
final save) runs here over gloo. On a machine whose processes accelerate already runs as FSDP it changes nothing.
"""

import json
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT, no_bermo_env, run_python

SAMPLE = REPO_ROOT / "data" / "sst2_sample"

# The flags the README gives for FSDP (they work on GPUs and, unsharded, on CPU).
FSDP_FLAGS = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
              "--fsdp_transformer_layer_cls_to_wrap", "BertLayer", "--fsdp_cpu_ram_efficient_loading", "false"]

FORCE_FSDP = """
import sys
import accelerate.state
from accelerate.utils import DistributedType

original_init = accelerate.state.AcceleratorState.__init__
def init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU and kwargs.get("fsdp_plugin") is not None:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = kwargs["fsdp_plugin"]
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
accelerate.state.AcceleratorState.__init__ = init

import bermo.training
sys.exit(bermo.training.main(sys.argv[1:]))
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_fsdp(tmp_path, tiny_bert, glue, output_dir, *extra):
    script = tmp_path / "force_fsdp.py"
    script.write_text(FORCE_FSDP)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               *FSDP_FLAGS, str(script),
               "--model_name_or_path", str(tiny_bert), "--output_dir", str(output_dir), "--task_name", "sst2",
               "--glue_dir", str(glue), "--max_length", "32", "--per_device_train_batch_size", "8",
               "--per_device_eval_batch_size", "16", "--learning_rate", "1e-3", "--seed", "3",
               "--max_train_steps", "4", "--checkpointing_steps", "2", *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training on 2 process(es) (FSDP," in result.stdout, result.stdout[-2000:]
    return result


def test_fsdp_fine_tune_resumes_to_the_same_weights_and_saves_a_loadable_model(tiny_bert, tmp_path):
    glue = tmp_path / "glue"
    (glue / "SST-2").mkdir(parents=True)
    for name, count in (("train.tsv", 64), ("dev.tsv", 32)):
        lines = (SAMPLE / name).read_text().splitlines()[: count + 1]
        (glue / "SST-2" / name).write_text("\n".join(lines) + "\n")

    whole = tmp_path / "whole"
    launch_fsdp(tmp_path, tiny_bert, glue, whole)
    assert (whole / "step_2").is_dir() and (whole / "step_4").is_dir()
    resumed = tmp_path / "resumed"
    result = launch_fsdp(tmp_path, tiny_bert, glue, resumed, "--resume_from_checkpoint", str(whole / "step_2"))
    assert "resumed from" in result.stdout and "at step 2" in result.stdout

    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and "bert.layer_mix.logits" in a
    differences = {name: (a[name] - b[name]).abs().max().item() for name in a}
    assert max(differences.values()) <= 1e-6, sorted(differences.items(), key=lambda item: -item[1])[:3]
    assert (json.loads((whole / "final_metrics.json").read_text())
            == json.loads((resumed / "final_metrics.json").read_text()))
    # the final save is a plain BERMo checkpoint: the mix as trained, and the modeling code next to the weights
    mix = json.loads((whole / "layer_mix.json").read_text())
    torch.testing.assert_close(torch.tensor(mix["weights"]), torch.softmax(a["bert.layer_mix.logits"], 0))
    config = json.loads((whole / "config.json").read_text())
    assert set(config["auto_map"].values()) <= {"configuration_bermo.BermoConfig"} | {
        f"modeling_bermo.{name}" for name in ("BermoModel", "BermoForSequenceClassification",
                                              "BermoForTokenClassification", "BermoForQuestionAnswering",
                                              "BermoForMultipleChoice")}
    check = run_python(["-c", f"""
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained({str(whole)!r}, trust_remote_code=True)
saved = load_file({str(whole / "model.safetensors")!r})
assert type(model).__name__ == "BermoForSequenceClassification", type(model)
assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in saved.items())
print("loaded", type(model).__module__)
"""], env=no_bermo_env())
    assert check.returncode == 0, check.stderr[-3000:]
    assert "loaded transformers_modules." in check.stdout
