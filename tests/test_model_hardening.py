"""The mix under concurrency, replication, compile, export and ONNX; frozen and half-precision mixes that stay so;
config validation on every path; only the layers the mix reads run; transformers 5 conventions (issue 8)."""

import os
import threading

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from bermo import BermoConfig, BermoForSequenceClassification, BermoForTokenClassification, BermoModel

from conftest import TINY_BERT


def tiny_bermo(head=BermoForSequenceClassification, seed=0, **overrides):
    torch.manual_seed(seed)
    return head(BermoConfig(**{**TINY_BERT, **overrides})).eval()


def batches(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    result = []
    for index in range(count):
        length = 5 + index % 7
        input_ids = torch.randint(1, TINY_BERT["vocab_size"], (2, length), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, length // 2:] = 0
        result.append({"input_ids": input_ids, "attention_mask": attention_mask})
    return result


def test_concurrent_forwards_in_threads_give_each_calls_own_output():
    model = tiny_bermo(BermoForTokenClassification)
    inputs = batches(12)
    with torch.no_grad():
        expected = [model(**batch).logits for batch in inputs]
    errors, mismatches = [], []

    def worker(offset):
        try:
            for round_ in range(15):
                index = (offset + round_) % len(inputs)
                with torch.no_grad():
                    logits = model(**inputs[index]).logits
                if not torch.equal(logits, expected[index]):
                    mismatches.append(index)
        except Exception as error:  # noqa: BLE001  (any error is a failure of the test)
            errors.append(repr(error))

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and mismatches == []


def cpu_replicas(module, count):
    """What `torch.nn.parallel.replicate` builds (it refuses CPU devices): module copies made by torch's own
    `_replicate_for_data_parallel`, which share hook tables and parameters with the original."""
    modules = list(module.modules())
    position = {id(m): i for i, m in enumerate(modules)}
    replicas = []
    for _ in range(count):
        copies = [m._replicate_for_data_parallel() for m in modules]
        for original, replica in zip(modules, copies):
            replica._parameters.update(original._parameters)  # replicate() broadcasts them; here they are shared
            for name, child in original._modules.items():
                replica._modules[name] = None if child is None else copies[position[id(child)]]
        replicas.append(copies[0])
    return replicas


def test_data_parallel_replicas_run_side_by_side():
    model = tiny_bermo()
    inputs = batches(2, seed=1)
    with torch.no_grad():
        expected = [model(**batch).logits for batch in inputs]
    replicas = cpu_replicas(model, 2)
    results, barrier = [[], []], threading.Barrier(2)

    def apply(index):  # as nn.DataParallel's parallel_apply: one thread per replica, started together
        for _ in range(20):
            barrier.wait()
            with torch.no_grad():
                results[index].append(replicas[index](**inputs[index]).logits)

    threads = [threading.Thread(target=apply, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(2):
        assert len(results[index]) == 20 and all(torch.equal(r, expected[index]) for r in results[index])


def test_compile_fullgraph_and_strict_export_match_eager_with_no_more_graph_breaks_than_bert():
    model = tiny_bermo()
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(**TINY_BERT)).eval()
    batch = batches(1)[0]
    with torch.no_grad():
        eager = model(**batch).logits
    counts = {}
    for name, candidate in (("bermo", model), ("bert", bert)):
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(candidate)(**batch)
        counts[name] = (explanation.graph_count, explanation.graph_break_count)
    assert counts["bermo"][1] <= counts["bert"][1] and counts["bermo"] == (1, 0), counts
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True)(**batch).logits
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    exported = torch.export.export(model, (), dict(batch), strict=True)
    torch.testing.assert_close(exported.module()(**batch).logits, eager, rtol=1e-5, atol=1e-6)


def test_onnx_export_runs_in_onnxruntime_with_the_same_logits(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = tiny_bermo()
    batch = batches(1)[0]
    with torch.no_grad():
        eager = model(**batch).logits
    path = tmp_path / "bermo.onnx"
    torch.onnx.export(model, (), str(path), kwargs=dict(batch), input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], dynamo=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {name: tensor.numpy() for name, tensor in batch.items()})
    torch.testing.assert_close(torch.from_numpy(logits), eager, rtol=1e-4, atol=1e-5)


def test_layers_above_the_highest_mixed_one_are_not_built_and_gradients_reach_every_layer(tmp_path):
    model = tiny_bermo(BermoModel, mix_layers=[0, 1])
    model.train()
    calls = []
    for index, layer in enumerate(model.encoder.layer):
        layer.register_forward_hook(lambda *_, index=index: calls.append(index))
    output = model(**batches(1)[0], output_hidden_states=True)
    assert calls == [0]
    assert len(output.hidden_states) == 2
    (output.last_hidden_state.sum() + output.pooler_output.sum()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert len(model.encoder.layer) == 1
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(**TINY_BERT)).save_pretrained(tmp_path / "bert")
    loaded = BermoForSequenceClassification.from_pretrained(tmp_path / "bert", mix_layers=[0, 1])
    reference = BertForSequenceClassification.from_pretrained(tmp_path / "bert").eval()
    with torch.no_grad():
        expected = reference(**batches(1)[0], output_hidden_states=True).hidden_states[1]
        ours = loaded.eval().bert(**batches(1)[0], output_hidden_states=True).hidden_states[1]
    assert torch.equal(ours, expected)


DDP_SCRIPT = r"""
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[2])
from conftest import TINY_BERT
from bermo import BermoConfig, BermoForSequenceClassification
dist.init_process_group("gloo", rank=int(sys.argv[1]), world_size=2)
torch.manual_seed(0)
model = BermoForSequenceClassification(BermoConfig(**TINY_BERT, mix_layers=[0, 1]))
ddp = torch.nn.parallel.DistributedDataParallel(model)
optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
generator = torch.Generator().manual_seed(int(sys.argv[1]))
for step in range(3):
    ids = torch.randint(1, 99, (4, 8), generator=generator)
    loss = ddp(input_ids=ids, labels=torch.tensor([0, 1, 0, 1])).loss
    loss.backward(); optimizer.step(); optimizer.zero_grad()
print("rank", sys.argv[1], "ok", float(model.bert.layer_mix.logits.detach().sum()), flush=True)
# Both ranks finish their collectives before either tears gloo down: without the barrier a rank
# that destroys its group while its peer still holds the connection can abort at exit (seen in CI).
dist.barrier()
del ddp
dist.destroy_process_group()
"""


def test_ddp_with_mix_layers_below_the_top_layer(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000))
    tests_dir = os.path.dirname(__file__)
    processes = [subprocess.Popen([sys.executable, str(script), str(rank), tests_dir], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for rank in range(2)]
    results = [process.communicate(timeout=300) for process in processes]
    for process, (stdout, stderr) in zip(processes, results):
        assert process.returncode == 0, stderr[-2000:]
        assert " ok " in stdout
    # both ranks end with the same (synchronized) mix
    assert results[0][0].split()[-1] == results[1][0].split()[-1]


@pytest.fixture
def bert_folder(tmp_path):
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(**TINY_BERT)).save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(mix_layers=[7]), "mix_layers index 7 is out of range"),
        (dict(mix_layers=[0, 4]), "mix_layers index 4 is out of range"),
        (dict(mix_layers=[0, -4]), "names a representation twice"),
        (dict(mix_dropout=1.5), "mix_dropout must be a probability"),
        (dict(mix_init="lsat"), "mix_init must be 'uniform', 'last' or a list"),
    ],
)
def test_from_pretrained_keyword_arguments_are_validated(bert_folder, overrides, message):
    with pytest.raises(ValueError, match=message):
        BermoForSequenceClassification.from_pretrained(bert_folder, **overrides)
    with pytest.raises(ValueError, match=message):
        BermoConfig.from_pretrained(bert_folder, **overrides)


def test_values_set_after_construction_are_refused_when_the_model_is_built():
    config = BermoConfig(**TINY_BERT)
    config.mix_layers = [9]
    with pytest.raises(ValueError, match="mix_layers index 9 is out of range"):
        BermoModel(config)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_load_of_a_vanilla_bert_gets_a_float32_mix(bert_folder, dtype):
    model = BermoForSequenceClassification.from_pretrained(bert_folder, dtype=dtype, mix_init="last")
    mix = model.bert.layer_mix
    assert mix.logits.dtype == mix.scale.dtype == torch.float32
    assert mix.logits.tolist() == [-20.0, -20.0, -20.0, 0.0] and mix.scale.item() == 1.0
    assert model.bert.encoder.layer[0].output.dense.weight.dtype == dtype
    with torch.no_grad():
        mix.logits[0] += 0.05  # a step that bf16 would round away at -20
    assert mix.logits[0].item() == pytest.approx(-19.95)
    with torch.no_grad():
        logits = model(**batches(1)[0]).logits
    assert logits.dtype == dtype and torch.isfinite(logits).all()


def test_frozen_mix_stays_frozen_through_from_pretrained(bert_folder, tmp_path):
    model = BermoForSequenceClassification.from_pretrained(bert_folder, mix_trainable=False)
    assert not model.bert.layer_mix.logits.requires_grad and not model.bert.layer_mix.scale.requires_grad
    model.save_pretrained(tmp_path / "frozen")
    reloaded = BermoForSequenceClassification.from_pretrained(tmp_path / "frozen")
    assert reloaded.config.mix_trainable is False
    assert not any(p.requires_grad for n, p in reloaded.named_parameters() if "layer_mix" in n)
    assert all(p.requires_grad for n, p in reloaded.named_parameters() if "layer_mix" not in n)


def test_heads_take_loss_keyword_arguments_as_bert_heads_do():
    model = tiny_bermo()
    batch = batches(1)[0]
    with torch.no_grad():
        plain = model(**batch, labels=torch.tensor([0, 1]))
        with_kwargs = model(**batch, labels=torch.tensor([0, 1]), num_items_in_batch=torch.tensor(2))
    assert torch.equal(plain.logits, with_kwargs.logits) and torch.equal(plain.loss, with_kwargs.loss)
    assert BermoForSequenceClassification.accepts_loss_kwargs is False


def test_trainer_with_gradient_checkpointing_trains(tmp_path):
    import datasets

    torch.manual_seed(0)
    model = BermoForSequenceClassification(BermoConfig(**TINY_BERT))
    rows = batches(8, seed=3)
    data = datasets.Dataset.from_dict({
        "input_ids": [row["input_ids"][0, :5].tolist() for row in rows],
        "labels": [index % 2 for index in range(8)],
    })
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=4,
                             gradient_checkpointing=True, learning_rate=1e-2, report_to=[], save_strategy="no",
                             use_cpu=True, logging_steps=1)
    before = model.bert.layer_mix.logits.detach().clone()
    Trainer(model=model, args=args, train_dataset=data).train()
    assert model.is_gradient_checkpointing
    assert not torch.equal(before, model.bert.layer_mix.logits.detach())


def test_config_output_flags_reach_the_heads_outputs():
    model = tiny_bermo(output_hidden_states=True, output_attentions=True, attn_implementation="eager")
    output = model(**batches(1)[0])
    assert len(output.hidden_states) == TINY_BERT["num_hidden_layers"] + 1
    assert len(output.attentions) == TINY_BERT["num_hidden_layers"]
    output = model(**batches(1)[0], output_hidden_states=False, output_attentions=False)
    assert output.hidden_states is None and output.attentions is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_from_config_keeps_a_float32_mix(dtype):
    model = BermoForSequenceClassification._from_config(BermoConfig(**TINY_BERT), dtype=dtype)
    assert model.bert.layer_mix.logits.dtype == model.bert.layer_mix.scale.dtype == torch.float32
    assert model.classifier.weight.dtype == dtype


def test_forward_keeps_berts_signature():
    import inspect

    parameters = list(inspect.signature(BermoModel.forward).parameters)
    assert parameters[:6] == ["self", "input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds"]


def test_gradient_checkpointing_the_transformers_5_way():
    model = tiny_bermo()
    model.train()
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable()
    else:
        model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    model(**batches(1)[0], labels=torch.tensor([0, 1])).loss.backward()
    assert model.bert.layer_mix.logits.grad is not None


def test_mismatched_head_raises_what_transformers_raises(bert_folder):
    config = BertConfig.from_pretrained(bert_folder)
    assert config.num_labels == 2
    with pytest.raises(RuntimeError, match=r"classifier.weight: \(2, 32\) in the checkpoint, \(5, 32\) in the model"):
        BermoForSequenceClassification.from_pretrained(bert_folder, num_labels=5)


def test_offloaded_model_gives_the_same_outputs(tmp_path):
    """device_map with disk offload: accelerate brings each module's weights in around its own forward call."""
    pytest.importorskip("accelerate")
    model = tiny_bermo(BermoModel)
    model.save_pretrained(tmp_path / "model")
    batch = batches(1)[0]
    with torch.no_grad():
        expected = model(**batch).last_hidden_state
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    offloaded = BermoModel.from_pretrained(tmp_path / "model", device_map="auto", max_memory={"cpu": int(0.5 * size)},
                                           offload_folder=str(tmp_path / "offload")).eval()
    assert "disk" in set(offloaded.hf_device_map.values())
    with torch.no_grad():
        torch.testing.assert_close(offloaded(**batch).last_hidden_state, expected, rtol=1e-5, atol=1e-6)
