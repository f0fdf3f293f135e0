"""Pruning on tiny random BERT/BERMo configs: masks, schedule, gradients, gates, counts, export, bad input."""

import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from bermo import (
    BermoConfig,
    BermoForMultipleChoice,
    BermoForQuestionAnswering,
    BermoForSequenceClassification,
    BermoForTokenClassification,
    BermoModel,
)
from bermo.arguments import PruningArguments
from bermo.pruning import (
    ENCODER_LINEARS,
    MaskedLinear,
    PruningFeature,
    keep_count,
    l0_gates,
    masked_modules,
    schedule_threshold,
)

PENALTY_FLAGS = {"soft_movement": "--regularization l1 --final_lambda 10", "l0": "--regularization l0 --final_lambda 5"}


def parse(argv):
    from transformers import HfArgumentParser

    (arguments,) = HfArgumentParser(PruningArguments).parse_args_into_dataclasses(argv.split(),
                                                                                 look_for_args_file=False)
    return arguments


def make_pruner(flags, max_train_steps=10):
    return PruningFeature.from_arguments(parse(flags), max_train_steps)


def tiny_model(model_class, tiny_config_kwargs, seed=0):
    kwargs = dict(tiny_config_kwargs, num_hidden_layers=2)
    config_class = BertConfig if model_class is BertForSequenceClassification else BermoConfig
    torch.manual_seed(seed)
    return model_class(config_class(**kwargs)).eval()


def randomize_scores(model, seed=1, integers=False):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, module in masked_modules(model):
            shape = module.mask_scores.shape
            values = (torch.randint(0, 4, shape, generator=generator).float() if integers
                      else torch.randn(shape, generator=generator))
            module.mask_scores.copy_(values)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("method", ["magnitude", "movement", "soft_movement", "l0"])
@pytest.mark.parametrize("model_class", [BermoForSequenceClassification, BertForSequenceClassification])
def test_at_remaining_fraction_one_logits_equal_the_dense_model(tiny_config_kwargs, tiny_inputs, model_class, method):
    model = tiny_model(model_class, tiny_config_kwargs)
    dense = logits(model, tiny_inputs)
    # l0's deterministic gate clamp(1.2 sigmoid(s) - 0.1) is 1 from s = log 11 on; the others start at "keep all"
    extra = " --mask_scale 3" if method == "l0" else ""
    pruner = make_pruner(f"--pruning_method {method} --final_threshold 0.5 {PENALTY_FLAGS.get(method, '')}{extra}")
    pruner.setup(model)
    pruner.on_step(0)
    assert pruner.eval_figures(model)["remaining_encoder_fraction"] == 1.0
    torch.testing.assert_close(logits(model, tiny_inputs), dense, rtol=0, atol=0)


@pytest.mark.parametrize("model_class", [BermoForSequenceClassification, BertForSequenceClassification,
                                         BermoForTokenClassification, BermoForQuestionAnswering,
                                         BermoForMultipleChoice, BermoModel])
def test_exactly_six_linear_layers_swapped_per_encoder_layer_and_none_outside(tiny_config_kwargs, model_class):
    model = tiny_model(model_class, tiny_config_kwargs)
    names_before = [name for name, _ in model.named_parameters()]
    weights_before = {name: p for name, p in model.named_parameters()}
    make_pruner("--pruning_method movement").setup(model)
    swapped = [name for name, _ in masked_modules(model)]
    prefix = f"{model.base_model_prefix}." if model is not model.base_model else ""
    expected = [f"{prefix}encoder.layer.{i}.{path}" for i in range(2) for path in ENCODER_LINEARS]
    assert swapped == expected
    # the weights are the same parameter objects under the same names; only mask_scores were added
    after = dict(model.named_parameters())
    assert [name for name in after if not name.endswith("mask_scores")] == names_before
    assert all(after[name] is weights_before[name] for name in names_before)
    assert sorted(name[: -len(".mask_scores")] for name in after if name.endswith("mask_scores")) == sorted(expected)
    plain_linears = [name for name, module in model.named_modules()
                     if type(module) is nn.Linear and ".encoder.layer." in f".{name}"]
    assert plain_linears == []


def test_setup_rejects_a_model_without_encoder_linears():
    with pytest.raises(ValueError, match="no encoder Linear layers to mask"):
        make_pruner("--pruning_method magnitude").setup(nn.Sequential(nn.Linear(4, 4)))


@pytest.mark.parametrize("global_topk", [False, True])
@pytest.mark.parametrize("method", ["movement", "magnitude"])
def test_topk_keeps_exactly_floor_v_n_weights(tiny_config_kwargs, method, global_topk):
    model = tiny_model(BermoForSequenceClassification, tiny_config_kwargs)
    flags = f"--pruning_method {method} --final_threshold 0.37" + (" --global_topk" if global_topk else "")
    pruner = make_pruner(flags)
    pruner.setup(model)
    if method == "movement":
        randomize_scores(model, integers=True)  # many ties: still exact and deterministic
    pruner.on_step(10)
    assert pruner.threshold == 0.37
    modules = [module for _, module in masked_modules(model)]
    masks = [module.current_mask() for module in modules]
    keys = [module.weight.abs() if method == "magnitude" else module.mask_scores for module in modules]
    if global_topk:
        total = sum(mask.numel() for mask in masks)
        assert sum(int(mask.sum()) for mask in masks) == math.floor(0.37 * total)
        kept = torch.cat([key[mask.bool()] for key, mask in zip(keys, masks)])
        pruned = torch.cat([key[~mask.bool()] for key, mask in zip(keys, masks)])
        assert kept.min() >= pruned.max()
    else:
        for key, mask in zip(keys, masks):
            assert int(mask.sum()) == math.floor(0.37 * mask.numel())
            assert key[mask.bool()].min() >= key[~mask.bool()].max()
    assert keep_count(0.29, 100) == 29  # floor(v n) despite 0.29 * 100 == 28.999999999999996
    # recomputing gives the same mask (ties broken by position)
    for module, mask in zip(modules, masks):
        assert torch.equal(module.compute_mask(), mask)


def test_cubic_schedule_start_middle_end():
    values = dict(total_steps=100, initial_threshold=1.0, final_threshold=0.1, initial_warmup=0.1, final_warmup=0.2)
    # held at the initial threshold for the first 10 steps, cubic from step 10 to 80, final from 80 on
    assert schedule_threshold(0, **values) == 1.0
    assert schedule_threshold(10, **values) == 1.0
    assert schedule_threshold(45, **values) == pytest.approx(0.1 + 0.9 * 0.5 ** 3)
    assert schedule_threshold(80, **values) == pytest.approx(0.1)
    assert schedule_threshold(100, **values) == 0.1
    pruner = make_pruner("--pruning_method soft_movement --initial_threshold 0.0 --final_threshold 0.2 "
                         "--initial_warmup 0.1 --final_warmup 0.2 --regularization l1 --final_lambda 8", 100)
    pruner.on_step(45)
    assert pruner.threshold == pytest.approx(0.2 - 0.2 * 0.5 ** 3)
    assert pruner.lam == pytest.approx(8 * pruner.threshold / 0.2)  # lambda follows the threshold
    pruner.on_step(100)
    assert (pruner.threshold, pruner.lam) == (0.2, 8)


def test_straight_through_gradient_is_grad_of_masked_weight_times_weight():
    torch.manual_seed(0)
    linear = nn.Linear(12, 7)
    masked = MaskedLinear.from_linear(linear, "movement", "uniform", 1.0)
    masked.keep = 30
    masked.refresh_mask()
    inputs, target = torch.randn(5, 12), torch.randn(5, 7)
    ((masked(inputs) - target) ** 2).sum().backward()
    mask = masked.current_mask()
    assert int(mask.sum()) == 30
    masked_weight = (linear.weight.detach() * mask).requires_grad_()
    ((nn.functional.linear(inputs, masked_weight, linear.bias.detach()) - target) ** 2).sum().backward()
    torch.testing.assert_close(masked.mask_scores.grad, masked_weight.grad * linear.weight.detach())
    torch.testing.assert_close(masked.weight.grad, masked_weight.grad * mask)


def test_mask_follows_an_optimizer_step_even_without_on_step():
    torch.manual_seed(0)
    masked = MaskedLinear.from_linear(nn.Linear(6, 6), "movement", "uniform", 1.0)
    masked.keep = 10
    masked.refresh_mask()
    before = masked.current_mask().clone()
    optimizer = torch.optim.AdamW([masked.mask_scores], lr=10.0)
    masked(torch.randn(3, 6)).sum().backward()
    optimizer.step()
    after = masked.current_mask()
    assert torch.equal(after, masked.compute_mask())  # the kept mask is not reused for the changed scores
    assert not torch.equal(after, before)


def test_l0_gates_sampled_in_training_deterministic_in_evaluation():
    torch.manual_seed(0)
    scores = torch.linspace(-4, 4, 400).reshape(20, 20)
    first, second = l0_gates(scores, training=True), l0_gates(scores, training=True)
    assert not torch.equal(first, second)
    assert first.min() >= 0 and first.max() <= 1 and (first == 0).any() and (first == 1).any()
    evaluation = l0_gates(scores, training=False)
    assert torch.equal(evaluation, l0_gates(scores, training=False))
    torch.testing.assert_close(evaluation, (torch.sigmoid(scores) * 1.2 - 0.1).clamp(0, 1))
    masked = MaskedLinear.from_linear(nn.Linear(20, 20), "l0")
    with torch.no_grad():
        masked.mask_scores.copy_(scores)
    inputs = torch.randn(4, 20)
    masked.train()
    assert not torch.equal(masked(inputs), masked(inputs))
    masked.eval()
    expected = nn.functional.linear(inputs, masked.weight * evaluation, masked.bias)
    torch.testing.assert_close(masked(inputs), expected)
    assert masked.kept_count() == int((evaluation > 0).sum())


@pytest.mark.parametrize("method, regularization", [("soft_movement", "l1"), ("l0", "l0")])
def test_penalty_is_lambda_times_mean_over_matrices(tiny_config_kwargs, method, regularization):
    model = tiny_model(BermoForSequenceClassification, tiny_config_kwargs)
    pruner = make_pruner(f"--pruning_method {method} --regularization {regularization} --final_lambda 4")
    pruner.setup(model)
    randomize_scores(model)
    pruner.on_step(10)
    matrices = [module.mask_scores for _, module in masked_modules(model)]
    if regularization == "l1":
        per_matrix = [torch.sigmoid(s).mean() for s in matrices]
    else:  # P(gate != 0) = sigmoid(s - beta log(-gamma / zeta))
        per_matrix = [torch.sigmoid(s - 2 / 3 * math.log(0.1 / 1.1)).mean() for s in matrices]
    penalty = pruner.penalty(model)
    torch.testing.assert_close(penalty, 4 * torch.stack(per_matrix).mean())
    penalty.backward()
    assert all(s.grad is not None for s in matrices)
    assert make_pruner("--pruning_method movement").penalty(model) is None


def test_eval_figures_count_the_current_threshold_the_reference_way(tiny_config_kwargs):
    model = tiny_model(BermoForSequenceClassification, tiny_config_kwargs)
    pruner = make_pruner("--pruning_method movement --final_threshold 0.2 --initial_warmup 0 --final_warmup 0", 10)
    pruner.setup(model)
    randomize_scores(model)
    pruner.on_step(5)  # mid-schedule: 0.2 + 0.8 * 0.5 ** 3 = 0.3, not the final 0.2
    figures = pruner.eval_figures(model)
    assert figures["threshold"] == pytest.approx(0.3) and figures["lambda"] is None
    kept = sum(math.floor(0.3 * module.weight.numel() + 1e-6) for _, module in masked_modules(model))
    matrices = sum(module.weight.numel() for _, module in masked_modules(model))
    encoder = sum(p.numel() for n, p in model.bert.encoder.named_parameters() if "mask_scores" not in n)
    everything = sum(p.numel() for n, p in model.named_parameters() if "mask_scores" not in n)
    assert figures["remaining_encoder_fraction"] == pytest.approx((encoder - matrices + kept) / encoder)
    assert figures["remaining_model_fraction"] == pytest.approx((everything - matrices + kept) / everything)
    assert pruner.card_info()["remaining_encoder_fraction"] == figures["remaining_encoder_fraction"]


def test_parameter_groups_and_frozen_embeddings(tiny_config_kwargs):
    model = tiny_model(BermoForSequenceClassification, tiny_config_kwargs)
    pruner = make_pruner("--pruning_method movement --mask_scores_learning_rate 0.05 --freeze_embeddings")
    pruner.setup(model)
    (group,) = pruner.parameter_groups(model)
    assert group["lr"] == 0.05 and group["weight_decay"] == 0.0
    scores = [module.mask_scores for _, module in masked_modules(model)]
    assert len(group["params"]) == 12 and all(a is b for a, b in zip(group["params"], scores))
    assert not any(p.requires_grad for p in model.bert.embeddings.parameters())
    assert model.bert.encoder.layer[0].attention.self.query.weight.requires_grad
    plain = tiny_model(BermoForSequenceClassification, tiny_config_kwargs)
    magnitude = make_pruner("--pruning_method magnitude")
    assert magnitude.parameter_groups(magnitude.setup(plain)) == []


def test_state_dict_restores_the_schedule_and_refuses_other_flags(tiny_config_kwargs):
    model = tiny_model(BermoForSequenceClassification, tiny_config_kwargs)
    pruner = make_pruner("--pruning_method movement --final_threshold 0.2", 20)
    pruner.setup(model)
    pruner.on_step(9)
    state = pruner.state_dict()
    resumed = make_pruner("--pruning_method movement --final_threshold 0.2", 20)
    resumed.setup(model)
    resumed.load_state_dict(state)
    assert (resumed.step, resumed.threshold) == (9, pruner.threshold)
    with pytest.raises(ValueError, match="--final_threshold was 0.2, now 0.3"):
        make_pruner("--pruning_method movement --final_threshold 0.3", 20).load_state_dict(state)
    with pytest.raises(ValueError, match="--max_train_steps"):
        make_pruner("--pruning_method movement --final_threshold 0.2", 30).load_state_dict(state)
    assert "same pruning flags" in PruningFeature.describe_missing(pruner.config())
    with pytest.raises(ValueError, match="--pruning_method movement: the checkpoint is from a run without pruning"):
        pruner.check_resume(None)
    resumed.check_resume(pruner.config())


@pytest.mark.parametrize("model_class, method", [
    (BermoForSequenceClassification, "movement"), (BertForSequenceClassification, "movement"),
    (BermoForSequenceClassification, "magnitude"), (BermoForSequenceClassification, "soft_movement"),
    (BermoForSequenceClassification, "l0"),
])
def test_export_reload_gives_identical_logits_and_counted_zeros_match_the_mask(
        tmp_path, tiny_config_kwargs, tiny_inputs, model_class, method):
    model = tiny_model(model_class, tiny_config_kwargs)
    flags = f"--pruning_method {method} --final_threshold 0.4 {PENALTY_FLAGS.get(method, '')}"
    if method == "soft_movement":
        flags = flags.replace("0.4", "0.5")
    pruner = make_pruner(flags)
    pruner.setup(model)
    if method != "magnitude":
        randomize_scores(model)
    pruner.on_step(10)
    masked_logits = logits(model, tiny_inputs)
    pruned = sum(module.weight.numel() - module.kept_count() for _, module in masked_modules(model))
    assert pruned > 0
    figures = pruner.eval_figures(model)
    masks = pruner.export_masks(model)
    assert len(masks) == (0 if method == "magnitude" else 12)
    exported = pruner.export(model)
    assert masked_modules(exported) == [] and not any("mask_scores" in n for n in exported.state_dict())
    exported.save_pretrained(tmp_path)
    reloaded = model_class.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, tiny_inputs), masked_logits, rtol=0, atol=0)
    counts = PruningFeature.count_zeros(load_file(tmp_path / "model.safetensors"))
    assert counts["zero_weights"] == pruned
    assert counts["encoder_matrix_weights"] == 2 * sum(
        p.numel() for n, p in reloaded.base_model.encoder.layer[0].named_parameters()
        if n.endswith("weight") and "LayerNorm" not in n)
    assert counts["remaining_encoder_fraction"] == pytest.approx(figures["remaining_encoder_fraction"])


def test_every_flag_is_documented_with_an_example():
    import dataclasses

    from bermo.training import build_parser

    flags = {item.name: item.metadata["help"] for item in dataclasses.fields(PruningArguments)}
    assert all("e.g." in text for text in flags.values())
    assert "fraction" in flags["initial_warmup"]
    text = build_parser().format_help()
    assert all(f"--{name}" in text for name in flags)
    with pytest.raises(SystemExit) as exit_info:
        parse("--pruning_method prune_everything")
    assert exit_info.value.code == 2


@pytest.mark.parametrize("flags, steps, flag", [
    ("--pruning_method movement --final_threshold 0", 10, "--final_threshold"),
    ("--pruning_method movement --final_threshold 1.5", 10, "--final_threshold"),
    ("--pruning_method magnitude --initial_threshold -0.2", 10, "--initial_threshold"),
    ("--pruning_method soft_movement --final_threshold 1 --regularization l1 --final_lambda 1", 10,
     "--final_threshold"),
    ("--pruning_method soft_movement --final_lambda 1", 10, "--regularization"),
    ("--pruning_method soft_movement --regularization l1", 10, "--final_lambda"),
    ("--pruning_method l0 --regularization l0 --final_lambda -1", 10, "--final_lambda"),
    ("--pruning_method movement --regularization l1 --final_lambda 1", 10, "--regularization"),
    ("--pruning_method movement --initial_warmup 0.6 --final_warmup 0.5", 10, "--initial_warmup"),
    ("--pruning_method movement --initial_warmup 1 --final_warmup 2", 10, "--final_warmup"),
    ("--pruning_method movement", 0, "--max_train_steps"),
    ("--pruning_method l0 --regularization l0 --final_lambda 1 --global_topk", 10, "--global_topk"),
    ("--final_threshold 0.1", 10, "--final_threshold needs --pruning_method"),
])
def test_bad_input_raises_one_line_value_error_naming_the_flag(flags, steps, flag):
    with pytest.raises(ValueError, match=flag) as error:
        make_pruner(flags, steps)
    assert "\n" not in str(error.value)


def test_unknown_method_and_no_pruning():
    with pytest.raises(ValueError, match="--pruning_method 'prune_everything': unknown"):
        PruningFeature.from_arguments(PruningArguments(pruning_method="prune_everything"), 10)
    assert PruningFeature.from_arguments(parse(""), 10) is None


def test_masks_follow_the_scores_under_a_fused_optimizer():
    from bermo.pruning import MaskedLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    masked = MaskedLinear.from_linear(linear, "movement", mask_init="uniform", mask_scale=1.0)
    masked.keep = 40
    masked.schedule_step = 0
    masked.refresh_mask()
    optimizer = torch.optim.AdamW([masked.mask_scores], lr=1.0, fused=True)
    masked(torch.randn(4, 16)).pow(2).sum().backward()
    optimizer.step()
    masked.schedule_step = 1
    masked.refresh_mask()
    assert torch.equal(masked.current_mask(), masked.compute_mask())


def test_mask_scores_file_continues_from_saved_scores_across_heads(tmp_path, tiny_config_kwargs):
    """--save_masks' file starts a later run's scores (matched from `encoder.layer.N.` on, so a BERT run's scores
    start a BERMo run); a missing layer, a wrong shape, a broken file or magnitude are one-line errors."""
    from safetensors.torch import save_file

    pruner_source = make_pruner("--pruning_method movement --final_threshold 0.3")
    source = pruner_source.setup(tiny_model(BertForSequenceClassification, tiny_config_kwargs))
    randomize_scores(source)
    saved = pruner_source.export_masks(source)
    assert all(name.startswith("bert.encoder.layer.") for name in saved)
    save_file(saved, tmp_path / PruningFeature.MASKS_FILE)

    flags = f"--pruning_method movement --final_threshold 0.3 --mask_scores_file {tmp_path / PruningFeature.MASKS_FILE}"
    pruner_target = make_pruner(flags)
    target = pruner_target.setup(tiny_model(BermoForSequenceClassification, tiny_config_kwargs, seed=3))
    loaded = {name.split("encoder.", 1)[1]: module.mask_scores for name, module in masked_modules(target)}
    assert len(loaded) == len(saved) == 2 * len(ENCODER_LINEARS)
    for name, tensor in saved.items():
        torch.testing.assert_close(loaded[name.split("encoder.", 1)[1].removesuffix(".mask_scores")], tensor,
                                   rtol=0, atol=0)
    # the scores drive the mask: at the final threshold the same weights are kept as in the source run
    for pruner in (pruner_source, pruner_target):
        pruner.on_step(10)
    for (_, a), (_, b) in zip(masked_modules(source), masked_modules(target)):
        assert torch.equal(a.current_mask(), b.current_mask())

    partial = dict(saved)
    partial.pop(next(iter(partial)))
    save_file(partial, tmp_path / "partial.safetensors")
    save_file({name: tensor[:, :-1].contiguous() for name, tensor in saved.items()}, tmp_path / "shape.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    for file, message in (("partial", "no scores for encoder.layer.0.attention.self.query"),
                          ("shape", "has shape"), ("broken", "not a safetensors file")):
        with pytest.raises(ValueError, match=message) as error:
            make_pruner(f"--pruning_method movement --mask_scores_file {tmp_path / file}.safetensors").setup(
                tiny_model(BermoForSequenceClassification, tiny_config_kwargs))
        assert "--mask_scores_file" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="magnitude pruning has no mask scores"):
        make_pruner(f"--pruning_method magnitude --mask_scores_file {tmp_path / PruningFeature.MASKS_FILE}")
    with pytest.raises(ValueError, match="no such file"):
        make_pruner(f"--pruning_method movement --mask_scores_file {tmp_path / 'missing.safetensors'}")
    with pytest.raises(ValueError, match="--mask_scores_file needs --pruning_method"):
        make_pruner(f"--mask_scores_file {tmp_path / PruningFeature.MASKS_FILE}")
