"""Fine-tuning after pruning: schedules, distillation, masks held in force, BN recalibration, deterministic
resume, NaN handling, bad inputs, early stopping, lottery rewinding."""

from __future__ import annotations

import copy
import json
import math
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch.nn.utils import prune as torch_prune
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, TensorDataset, WeightedRandomSampler
from torch.utils.data.distributed import DistributedSampler

import edgeprune as ep
from edgeprune import zoo
from edgeprune.distill import kd_loss
from edgeprune.finetune import rng
from edgeprune.finetune.checkpoints import latest_checkpoint, optimizer_state, save_checkpoint
from edgeprune.finetune.gradual import apply_gradual
from edgeprune.finetune.masks import ensure_mask, magnitude_mask, resolve_layers, sparsity
from edgeprune.metrics import accuracy, logits
from edgeprune.pruning.nm import apply_nm, satisfies_nm
from edgeprune.schedules import cosine_lr, cubic_sparsity
from helpers import randn


def _loader(x, y, batch_size=64, n=None):
    if n is not None:
        x, y = x[:n], y[:n]
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


@pytest.fixture(scope="module")
def data():
    xtr, ytr = zoo.digits("train")
    xte, yte = zoo.digits("test")
    return xtr, ytr, xte, yte


@pytest.fixture(scope="module")
def dense(data):
    """small_cnn trained briefly on digits (shared: tests must not change it)."""
    xtr, ytr, _, _ = data
    return ep.finetune(zoo.small_cnn(), _loader(xtr, ytr), epochs=2, lr=3e-3, quiet=True).model


def _unstructured(model, amount=0.5):
    work = copy.deepcopy(model)
    for name in ("res.0", "res.3", "expand.0", "branch_a.0", "branch_b.0", "fc1"):
        torch_prune.l1_unstructured(dict(work.named_modules())[name], "weight", amount=amount)
    return work


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -------------------------------------------------------------------------------------------- schedules

def test_cubic_sparsity_matches_hand_computed_values():
    kw = dict(initial=0.0, final=0.8, begin=10, end=20)
    assert cubic_sparsity(0, **kw) == 0.0
    assert cubic_sparsity(10, **kw) == 0.0
    assert cubic_sparsity(15, **kw) == pytest.approx(0.8 + (0.0 - 0.8) * 0.5 ** 3)  # 0.7
    assert cubic_sparsity(20, **kw) == 0.8 and cubic_sparsity(99, **kw) == 0.8


def test_cubic_sparsity_starts_at_exactly_the_initial_sparsity():
    # the formula's own value at `begin` is final + (initial - final) = 0.09999999999999998 here, not 0.1
    assert cubic_sparsity(10, initial=0.1, final=0.8, begin=10, end=20) == 0.1


def test_cubic_sparsity_accepts_a_sparsity_of_zero_and_one_just_below_one():
    assert cubic_sparsity(1, initial=0.0, final=0.0, begin=0, end=2) == 0.0
    assert cubic_sparsity(1, initial=0.99, final=0.0, begin=0, end=2) == pytest.approx(0.99 / 8)


@pytest.mark.parametrize("initial,final,begin,end,match", [
    (1.0, 0.5, 0, 10, r"^cubic_sparsity: initial=1.0, final=0.5 must be in \[0, 1\)$"),
    (-0.1, 0.5, 0, 10, r"^cubic_sparsity: initial=-0.1, final=0.5 must be in \[0, 1\)$"),
    (0.0, 1.0, 0, 10, r"^cubic_sparsity: initial=0.0, final=1.0 must be in \[0, 1\)$"),
    (0.0, 0.5, 5, 5, r"^cubic_sparsity: end=5 must be after begin=5$"),
], ids=["initial-1", "initial-negative", "final-1", "end-at-begin"])
def test_cubic_sparsity_refuses_a_sparsity_outside_0_1_or_an_end_not_after_begin_naming_them(initial, final, begin,
                                                                                              end, match):
    with pytest.raises(ep.EdgepruneError, match=match):
        cubic_sparsity(3, initial=initial, final=final, begin=begin, end=end)


def test_cosine_lr_warms_up_linearly_then_decays_to_min():
    kw = dict(total=12, warmup=2, base_lr=1.0, min_lr=0.1)
    assert cosine_lr(0, **kw) == pytest.approx(0.5)
    assert cosine_lr(1, **kw) == pytest.approx(1.0)
    assert cosine_lr(2, **kw) == pytest.approx(1.0)
    assert cosine_lr(7, **kw) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))  # 0.55
    assert cosine_lr(12, **kw) == pytest.approx(0.1)


def test_cosine_lr_decays_to_zero_unless_told_and_holds_min_lr_from_total_on():
    assert cosine_lr(12, total=12, warmup=2, base_lr=1.0) == 0.0
    assert cosine_lr(17, total=12, warmup=2, base_lr=1.0, min_lr=0.1) == pytest.approx(0.1)  # not back up the cosine
    assert cosine_lr(3, total=3, warmup=2, base_lr=1.0, min_lr=0.1) == pytest.approx(0.1)  # a one-step decay
    assert cosine_lr(0, total=1, warmup=0, base_lr=1.0) == 1.0  # the shortest run


@pytest.mark.parametrize("total,warmup", [(0, 0), (-3, 0), (10, -1)],
                         ids=["total-0", "total-negative", "warmup-negative"])
def test_cosine_lr_refuses_a_total_not_above_0_or_a_negative_warmup_naming_both(total, warmup):
    with pytest.raises(ep.EdgepruneError) as err:
        cosine_lr(0, total=total, warmup=warmup, base_lr=1.0)
    assert str(err.value) == f"cosine_lr: total={total} must be > 0 and warmup={warmup} >= 0"


# --------------------------------------------------------------------------------------------- distill

def test_kd_loss_is_ce_at_alpha_zero_and_zero_kl_for_identical_logits():
    s, y = randn(4, 10), torch.tensor([1, 2, 3, 4])
    assert kd_loss(s, s.clone(), y, alpha=0.0, temperature=4) == pytest.approx(float(torch.nn.functional.cross_entropy(s, y)))
    assert float(kd_loss(s, s.clone(), y, alpha=1.0, temperature=4)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temp", [2.0, 1.0, 0.5])
def test_kd_loss_is_t_squared_kl_from_the_teachers_softened_distribution_plus_ce(temp):
    s, t, y = randn(4, 10, seed=1), 3 * randn(4, 10, seed=2), torch.tensor([1, 2, 3, 4])
    p, q = torch.softmax(t / temp, dim=-1), torch.softmax(s / temp, dim=-1)  # teacher's, student's
    kl = float((p * (p.log() - q.log())).sum()) / 4  # summed over classes, averaged over the batch
    ce = float(torch.nn.functional.cross_entropy(s, y))
    assert float(kd_loss(s, t, y, alpha=0.75, temperature=temp)) == pytest.approx(0.75 * temp ** 2 * kl + 0.25 * ce)


def test_kd_loss_softens_over_the_last_dimension_for_logits_per_position():
    """Logits of shape (batch, positions, classes), as a token classifier gives: each position's distribution
    is over the classes, and the KL summed over positions and classes is averaged over the batch."""
    s, t, temp = randn(2, 3, 5, seed=3), 3 * randn(2, 3, 5, seed=4), 2.0
    p, q = torch.softmax(t / temp, dim=-1), torch.softmax(s / temp, dim=-1)
    kl = float((p * (p.log() - q.log())).sum()) / 2
    assert float(kd_loss(s, t, None, alpha=1.0, temperature=temp)) == pytest.approx(temp ** 2 * kl)


def test_kd_loss_needs_labels_only_when_alpha_is_below_one():
    s, t = randn(4, 10, seed=1), randn(4, 10, seed=2)
    assert float(kd_loss(s, t, None, alpha=1.0, temperature=2)) == pytest.approx(
        float(kd_loss(s, t, torch.tensor([1, 2, 3, 4]), alpha=1.0, temperature=2)))
    with pytest.raises(ep.ModelError) as err:
        kd_loss(s, t, None, alpha=0.99, temperature=2)
    assert str(err.value) == "kd_loss: labels are needed when alpha < 1"


@pytest.mark.parametrize("alpha,temperature", [(1.5, 2.0), (-0.5, 2.0), (0.5, 0.0), (0.5, -1.0)],
                         ids=["alpha-above-1", "alpha-negative", "temperature-0", "temperature-negative"])
def test_kd_loss_refuses_alpha_outside_0_1_or_a_temperature_not_above_0_naming_both(alpha, temperature):
    s, y = randn(4, 10), torch.tensor([1, 2, 3, 4])
    with pytest.raises(ep.ModelError) as err:
        kd_loss(s, s.clone(), y, alpha=alpha, temperature=temperature)
    assert str(err.value) == f"kd_loss: alpha={alpha} must be in [0, 1] and temperature={temperature} > 0"


def test_kd_loss_teacher_shape_mismatch_names_both_shapes():
    with pytest.raises(ep.ModelError, match=r"\(4, 5\).*\(4, 10\)"):
        kd_loss(randn(4, 10), randn(4, 5), None, alpha=1.0, temperature=2)


# -------------------------------------------------------------------------------------------- finetune

def test_finetuning_a_pruned_model_improves_held_out_accuracy(dense, data):
    xtr, ytr, xte, yte = data
    pruned = _unstructured(dense, 0.8)
    given = _unstructured(dense, 0.8)  # the same again, to compare with
    before = accuracy(pruned, _loader(xte, yte))
    result = ep.finetune(pruned, _loader(xtr, ytr), epochs=2, lr=2e-3, quiet=True)
    assert accuracy(result.model, _loader(xte, yte)) > before
    assert _same_weights(pruned, given) and not _same_weights(result.model, given)  # the caller's model untouched
    assert len(result.history) == 2 and result.history[-1]["sparsity"] > 0.3


class _Shifted(torch.nn.Module):
    """A teacher that disagrees with `dense` everywhere: its logits rolled by one class (it says y + 1)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.roll(self.model(x), 1, dims=-1)


def _agreement(student, teacher, x):
    with torch.no_grad():
        return float((student.eval()(x).argmax(-1) == teacher.eval()(x).argmax(-1)).float().mean())


def test_the_student_moves_toward_the_teacher_it_is_distilled_from(dense, data):
    xtr, ytr, xte, _ = data
    student, shifted = _unstructured(dense, 0.8), _Shifted(dense)
    kw = dict(epochs=2, lr=3e-3, kd_alpha=1.0, seed=2, quiet=True)  # alpha 1: the teacher alone teaches
    by = {"dense": ep.finetune(student, _loader(xtr, ytr, n=512), teacher=dense, **kw).model,
          "shifted": ep.finetune(student, _loader(xtr, ytr, n=512), teacher=shifted, **kw).model}
    assert not _same_weights(by["dense"], by["shifted"])
    for name, teacher in {"dense": dense, "shifted": shifted}.items():
        other = next(o for o in by if o != name)
        # the student distilled from this teacher agrees with it more than it did, and more than the other one
        # (measured: 0.78 against 0.20 and 0.09 for dense, 0.28 against 0.06 and 0.03 for shifted)
        assert _agreement(by[name], teacher, xte) > 0.15 + max(_agreement(student, teacher, xte),
                                                               _agreement(by[other], teacher, xte))


def test_distillation_runs_the_teacher_in_eval_mode_and_gives_it_back_in_its_mode(dense, data):
    xtr, ytr, _, _ = data
    teacher = copy.deepcopy(dense).train()
    stats = {k: v.clone() for k, v in teacher.state_dict().items() if "running" in k or "num_batches" in k}
    ep.finetune(_unstructured(dense, 0.8), _loader(xtr, ytr, n=256), epochs=1, teacher=teacher, quiet=True)
    assert teacher.training  # given back as it came
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in stats.items())  # BN ran on its running stats


def test_masks_stay_enforced_under_sgd_momentum_and_weight_decay(dense, data):
    xtr, ytr, _, _ = data
    pruned = _unstructured(dense, 0.5)
    apply_nm(pruned.classifier, 2, 4)
    result = ep.finetune(pruned, _loader(xtr, ytr, n=256), epochs=2, optimizer="sgd", lr=0.05, weight_decay=0.1,
                         quiet=True)
    for name in ("fc1", "res.0", "classifier"):
        m = dict(result.model.named_modules())[name]
        masked = m.weight_mask == 0
        assert masked.any()
        assert torch.all(m.weight[masked] == 0) and torch.all(m.weight_orig[masked] == 0)
    assert satisfies_nm(ep.finalize(result.model).classifier.weight, 2, 4)


def test_gradual_cubic_schedule_reaches_the_final_sparsity(dense, data):
    xtr, ytr, _, _ = data
    g = ep.GradualSchedule(final_sparsity=0.7, begin_step=0, end_step=6, every_k_steps=2)
    result = ep.finetune(dense, _loader(xtr, ytr, batch_size=64, n=256), epochs=2, gradual=g, quiet=True)
    m = result.model
    for name in ("res.0", "fc1", "branch_b.0"):
        w = dict(m.named_modules())[name].weight
        assert float((w == 0).float().mean()) == pytest.approx(0.7, abs=0.01)
    assert not hasattr(m.stem[0], "weight_mask") and not hasattr(m.classifier, "weight_mask")  # first/last kept


def test_gradual_pruning_applies_the_cubic_sparsity_at_every_step(dense, data):
    """Zhu & Gupta: pruning at t0, t0 + k, ... until t0 + n·Δt, at s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n·Δt))³; each
    training step runs with the sparsity of the last pruning step, rounded to whole weights."""
    xtr, ytr, _, _ = data
    s_i, s_f, t0, end, k = 0.1, 0.8, 2, 10, 2
    g = ep.GradualSchedule(initial_sparsity=s_i, final_sparsity=s_f, begin_step=t0, end_step=end, every_k_steps=k,
                           layers=("res.0", "fc1"))
    model, seen = copy.deepcopy(dense), {"res.0": [], "fc1": []}
    for name, zeros in seen.items():  # the weight each training forward runs with (hooks travel with the copy)
        dict(model.named_modules())[name].register_forward_hook(
            lambda m, i, o, zeros=zeros: zeros.append(int((m.weight == 0).sum())) if m.training else None)
    ep.finetune(model, _loader(xtr, ytr, batch_size=32, n=384), epochs=1, gradual=g, quiet=True)

    def expected(step):
        if step < t0:
            return 0.0  # not pruned yet
        if step >= end:
            return s_f
        pruned_at = t0 + (step - t0) // k * k
        return s_f + (s_i - s_f) * (1 - (pruned_at - t0) / (end - t0)) ** 3

    for name, zeros in seen.items():
        numel = dict(model.named_modules())[name].weight.numel()
        assert len(zeros) == 12
        for step, count in enumerate(zeros):
            assert abs(count - expected(step) * numel) <= 0.5, (name, step, count / numel, expected(step))


def test_gradual_nm_leaves_every_chosen_layer_2_of_4(dense, data):
    xtr, ytr, _, _ = data
    g = ep.GradualSchedule(final_sparsity=0.5, begin_step=0, end_step=3, method="n:m", layers=("fc1", "res.0"))
    result = ep.finetune(dense, _loader(xtr, ytr, n=256), epochs=1, gradual=g, quiet=True)
    fin = ep.finalize(result.model)
    assert satisfies_nm(fin.fc1.weight, 2, 4) and satisfies_nm(fin.res[0].weight, 2, 4)


# ------------------------------------------------------------------ gradual pruning, step by step (no training)

def _masked_linears(count, width=8):
    """`count` Linear(width, width) layers in a Sequential (named "0", "1", ...) with seeded weights and the
    all-ones masks finetune gives the layers a schedule prunes."""
    with torch.random.fork_rng(devices=[]):  # Linear's own initialization draws from the global RNG
        model = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(count)))
    with torch.no_grad():
        for i, layer in enumerate(model):
            layer.weight.copy_(randn(width, width, seed=10 + i))
    for layer in model:
        ensure_mask(layer)
    return model


def _alive_per_group(layer, m=4):
    """Non-zero weights in each group of m along the input dimension."""
    w = layer.weight_orig * layer.weight_mask
    return (w.reshape(w.shape[0], -1, m) != 0).sum(dim=-1)


def test_apply_gradual_prunes_at_begin_every_k_steps_after_and_at_every_step_from_end():
    """begin 1, k 3, end 6: prunings at steps 1 and 4, then at 6 = end although 6 - 1 is no multiple of 3, and at
    every step after. The layer's weight carries each new mask at once, before any forward recomputes it."""
    model = _masked_linears(1, width=10)
    layer, zeros = model[0], []
    g = ep.GradualSchedule(initial_sparsity=0.1, final_sparsity=0.8, begin_step=1, end_step=6, every_k_steps=3)
    for step in range(9):
        apply_gradual(model, g, ["0"], step)
        assert torch.equal(layer.weight, layer.weight_orig * layer.weight_mask), step
        zeros.append(int((layer.weight == 0).sum()))
    assert zeros == [0, 10, 10, 10, 76, 76, 80, 80, 80]  # of 100; at step 4: 0.8 - 0.7 * (1 - 3/5)^3 = 0.7552


def test_a_gradual_schedule_with_initial_equal_to_final_holds_that_sparsity_from_begin_on():
    model = _masked_linears(1, width=10)
    g = ep.GradualSchedule(initial_sparsity=0.5, final_sparsity=0.5, begin_step=2, end_step=4)
    zeros = []
    for step in range(5):
        apply_gradual(model, g, ["0"], step)
        zeros.append(int((model[0].weight == 0).sum()))
    assert zeros == [0, 0, 50, 50, 50]


def test_gradual_nm_masks_more_layers_as_the_schedule_advances_each_exactly_n_of_m():
    """s_t = 0, 0.289, 0.4375, 0.492, 0.5 at steps 0-4 of a ramp to 0.5: ceil(4 * s_t / 0.5) = 0, 3, 4, 4, 4 of the
    four layers carry 2:4 masks, and a layer masked again keeps 2 of every 4 of its weights."""
    model = _masked_linears(4)
    g = ep.GradualSchedule(final_sparsity=0.5, begin_step=0, end_step=4, method="n:m")
    for step, count in enumerate([0, 3, 4, 4, 4]):
        apply_gradual(model, g, ["0", "1", "2", "3"], step)
        for i, layer in enumerate(model):
            assert torch.all(_alive_per_group(layer) == (2 if i < count else 4)), (step, i)


def test_an_nm_schedule_without_a_ramp_final_sparsity_zero_masks_every_layer_from_the_first_step():
    model = _masked_linears(2)
    g = ep.GradualSchedule(final_sparsity=0.0, begin_step=0, end_step=4, method="n:m")
    apply_gradual(model, g, ["0", "1"], 0)
    assert all(torch.all(_alive_per_group(layer) == 2) for layer in model)


_SCHEDULE_RANGE = r"^GradualSchedule: need 0 <= initial_sparsity <= final_sparsity < 1 \(got {}, {}\)$"
_SCHEDULE_STEPS = r"^GradualSchedule: need begin_step < end_step and every_k_steps >= 1 \(got {}, {}, {}\)$"


@pytest.mark.parametrize("kw,match", [
    (dict(method="structured"), r"^GradualSchedule\(method='structured'\): expected 'unstructured' or 'n:m'$"),
    (dict(begin_step=5, end_step=5), _SCHEDULE_STEPS.format(5, 5, 1)),
    (dict(begin_step=6, end_step=5), _SCHEDULE_STEPS.format(6, 5, 1)),
    (dict(every_k_steps=0), _SCHEDULE_STEPS.format(0, 10, 0)),
    (dict(final_sparsity=1.0), _SCHEDULE_RANGE.format(0.0, 1.0)),
    (dict(initial_sparsity=0.6), _SCHEDULE_RANGE.format(0.6, 0.5)),
    (dict(initial_sparsity=-0.1), _SCHEDULE_RANGE.format(-0.1, 0.5)),
], ids=["method", "end-at-begin", "end-before-begin", "k-0", "final-1", "initial-above-final", "initial-negative"])
def test_gradual_schedule_refuses_settings_out_of_range_naming_them(kw, match):
    with pytest.raises(ep.EdgepruneError, match=match):
        ep.GradualSchedule(**{**dict(final_sparsity=0.5, begin_step=0, end_step=10), **kw})


def test_magnitude_mask_zeroes_the_round_s_times_n_smallest_weights_even_a_single_one():
    layer = _masked_linears(1, width=10)[0]
    w = layer.weight_orig.abs()
    assert torch.equal(magnitude_mask(layer, 0.01) == 0, w == w.min())  # round(0.01 * 100) = 1
    assert torch.all(magnitude_mask(layer, 0.004) == 1)  # round(0.4) = 0


def test_sparsity_is_the_zero_fraction_of_all_conv_and_linear_weights_each_mask_counted_as_it_is_now():
    model = _masked_linears(1, width=10)  # 100 weights under a mask
    plain = torch.nn.Linear(10, 5)  # 50 weights, 10 of them zero, no mask
    with torch.no_grad():
        plain.weight.copy_(randn(5, 10, seed=3))
        plain.weight[0] = 0
    model.append(plain)
    mask = torch.ones(100)
    mask[:30] = 0
    model[0].weight_mask.copy_(mask.view(10, 10))  # as load_state_dict does: no forward has recomputed `weight` yet
    assert sparsity(model) == 40 / 150
    assert sparsity(torch.nn.Sequential(torch.nn.ReLU())) == 0.0  # nothing to prune


def test_ensure_mask_gives_an_unmasked_layer_an_all_ones_mask_and_leaves_a_masked_one_as_it_was():
    """Schedules write into a layer's mask in place: a second pruning method stacked on a masked layer would
    replace its mask tensor and hook."""
    plain, pruned = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    torch_prune.l1_unstructured(pruned, "weight", amount=0.5)
    mask, hooks = pruned.weight_mask, list(pruned._forward_pre_hooks.values())
    ensure_mask(plain)
    ensure_mask(pruned)
    assert torch.equal(plain.weight_mask, torch.ones(8, 8))
    assert pruned.weight_mask is mask and list(pruned._forward_pre_hooks.values()) == hooks


def test_resolve_layers_refuses_names_that_are_no_conv_or_linear_layer_listing_those_there_are():
    with pytest.raises(ep.ModelError) as err:
        resolve_layers(zoo.small_cnn(), ["fc1", "stem.1", "nope"], None)
    assert str(err.value) == ("layers ['stem.1', 'nope'] are not Conv/Linear layers of SmallCNN (it has stem.0, res.0, "
                              "res.3, expand.0, depthwise.0, branch_a.0, branch_b.0, fc1, classifier)")


class _Keywords(torch.nn.Module):
    """Three Linear layers called with keyword inputs, as transformers models are."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

    def forward(self, pixels, scale=None):
        return self.c(self.b(self.a(pixels if scale is None else pixels * scale)))


def test_default_layers_are_all_but_the_first_and_last_run_with_a_batchs_inputs_as_training_runs_them():
    """A batch's inputs are one tensor or a dict of keyword tensors (metrics.logits); a tuple is neither, and
    training refuses it, so the layer search does too."""
    assert resolve_layers(zoo.small_cnn(), None, randn(2, 1, 8, 8)) == [
        "res.0", "res.3", "expand.0", "depthwise.0", "branch_a.0", "branch_b.0", "fc1"]
    assert resolve_layers(_Keywords(), None, {"pixels": randn(2, 4), "scale": randn(2, 4)}) == ["b"]
    pair = (randn(2, 4), randn(2, 4))
    with pytest.raises(ep.ModelError):
        logits(_Keywords(), pair)
    with pytest.raises(ep.ModelError):
        resolve_layers(_Keywords(), None, pair)


def test_bn_recalibration_sets_running_stats_to_the_data(dense, data):
    xtr, ytr, _, _ = data
    stale = copy.deepcopy(dense)
    stale.stem[1].running_mean.fill_(5.0)
    fixed = ep.recalibrate_bn(stale, _loader(xtr, ytr, batch_size=len(xtr)))
    with torch.no_grad():
        pre = fixed.stem[0](xtr)
    assert torch.allclose(fixed.stem[1].running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.all(stale.stem[1].running_mean == 5.0) and fixed.stem[1].momentum == stale.stem[1].momentum


class _Kill(Exception):
    pass


def _whole_and_resumed(model, train, checkpoint_dir, kill_at: tuple[int, int], **kw):
    """One uninterrupted run, and the same run killed at (epoch, step) by a callback and then resumed."""
    whole = ep.finetune(model, train, **kw)

    def kill(info):
        if (info["epoch"], info["step"]) == kill_at:
            raise _Kill

    with pytest.raises(_Kill):
        ep.finetune(model, train, checkpoint_dir=checkpoint_dir, callback=kill, **kw)
    return whole, ep.finetune(model, train, checkpoint_dir=checkpoint_dir, **kw)


def test_resume_after_a_kill_mid_epoch_is_bit_identical(dense, data, tmp_path):
    xtr, ytr, xte, yte = data
    pruned = _unstructured(dense)
    kw = dict(epochs=3, lr=2e-3, weight_decay=1e-4, quiet=True, seed=3, val_data=_loader(xte, yte))
    train = _loader(xtr, ytr, n=320)
    whole = ep.finetune(pruned, train, **kw)

    def kill(info):
        if info["epoch"] == 2 and info["step"] == 3:
            raise _Kill

    with pytest.raises(_Kill):
        ep.finetune(pruned, train, checkpoint_dir=tmp_path, callback=kill, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.json", "epoch-0001.safetensors"]
    resumed = ep.finetune(pruned, train, checkpoint_dir=tmp_path, **kw)
    assert resumed.resumed_from == 1
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole.history == resumed.history


def _dropout_mlp():
    """A model that draws from the global RNG while training (dropout), with a pruning mask on it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                    torch.nn.Dropout(0.5), torch.nn.Linear(64, 10))
    torch_prune.l1_unstructured(model[1], "weight", amount=0.5)
    return model


class _Augmented(Dataset):
    """Digits jittered with Python's `random` and numpy's global RNG, in this process (the loader has no workers)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] * (1 + 0.1 * random.random()) + 0.1 * float(np.random.rand()), self.y[i]


def test_resume_of_a_run_with_dropout_shuffling_and_random_augmentation_is_bit_identical(data, tmp_path):
    """Every global RNG a step draws from: torch's (dropout), Python's and numpy's (augmentation)."""
    xtr, ytr, _, _ = data
    model = _dropout_mlp()
    train = DataLoader(_Augmented(xtr[:256], ytr[:256]), batch_size=32, shuffle=True)
    whole, resumed = _whole_and_resumed(model, train, tmp_path, (2, 3), epochs=3, lr=3e-3, quiet=True, seed=4)
    assert resumed.resumed_from == 1
    assert _same_weights(whole.model, resumed.model)
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in resumed.history]


def test_a_resumed_run_draws_the_gaussians_python_and_numpy_held_over_at_the_checkpoint():
    """random.gauss and numpy's legacy randn make their values in pairs and hold the second for their next call: a
    checkpoint taken between the two calls hands those values back, to the last bit."""
    with rng.seeded(7):
        random.gauss(0, 1), np.random.randn()
        saved = rng.states()
        expected = random.gauss(0, 1), np.random.randn()
        random.seed(8), np.random.seed(8)
        rng.restore(saved)
        assert (random.gauss(0, 1), np.random.randn()) == expected


def test_finetune_seeds_the_global_rngs_for_the_run_and_gives_the_callers_back(data):
    xtr, ytr, _, _ = data
    train = DataLoader(_Augmented(xtr[:128], ytr[:128]), batch_size=32)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    before = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    a, b = (ep.finetune(_dropout_mlp(), train, epochs=1, quiet=True, seed=1).model for _ in range(2))
    assert _same_weights(a, b)  # repeatable: the augmentation drew the same numbers both times
    assert random.getstate() == before[0] and np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])


class _Poison(Dataset):
    def __init__(self, x, y):
        self.x, self.y, self.on = x, y, False

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return (self.x[i] * float("nan") if self.on else self.x[i]), self.y[i]


def test_nan_loss_raises_naming_the_step_and_keeps_the_last_good_checkpoint(dense, data, tmp_path):
    xtr, ytr, _, _ = data
    ds = _Poison(xtr[:256], ytr[:256])

    def poison(info):
        if info["epoch"] == 2 and info["step"] == 1:
            ds.on = True

    with pytest.raises(_Kill):
        ep.finetune(dense, DataLoader(ds, batch_size=64), epochs=3, checkpoint_dir=tmp_path, quiet=True,
                    callback=lambda i: (_ for _ in ()).throw(_Kill) if i["epoch"] == 2 else None)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ep.ModelError, match=r"loss became nan at epoch 2, step 2") as err:
        ep.finetune(dense, DataLoader(ds, batch_size=64), epochs=3, checkpoint_dir=tmp_path, quiet=True, callback=poison)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert all(torch.isfinite(v).all() for v in err.value.model.state_dict().values() if v.is_floating_point())


@pytest.mark.parametrize("case", ["empty", "teacher_shape", "metric_nan", "labels"])
def test_bad_input_raises_a_clear_error_and_writes_nothing(dense, data, tmp_path, case):
    xtr, ytr, xte, yte = data
    train, kw = _loader(xtr, ytr, n=128), {}
    if case == "empty":
        train, match = _loader(xtr[:0], ytr[:0]), "train_data is empty"
    elif case == "teacher_shape":
        kw["teacher"], match = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), r"teacher output shape \(64, 3\)"
    elif case == "metric_nan":
        kw.update(val_data=_loader(xte, yte), metric=lambda m, d: float("nan"))
        match = "returned nan"
    else:
        train, match = _loader(xtr, ytr + 5, n=128), r"labels out of range.*10 outputs"
    with pytest.raises(ep.ModelError, match=match):
        ep.finetune(dense, train, epochs=1, checkpoint_dir=tmp_path / "ckpt", quiet=True, **kw)
    assert not (tmp_path / "ckpt").exists()


def test_early_stopping_stops_and_restores_the_best_weights(dense, data):
    xtr, ytr, xte, yte = data
    scores = iter([0.5, 0.9, 0.4, 0.3, 0.2, 0.1])
    seen = {}

    def metric(model, loader):
        value = next(scores)
        if value == 0.9:
            seen["best"] = {k: v.clone() for k, v in model.state_dict().items()}
        return value

    result = ep.finetune(dense, _loader(xtr, ytr, n=128), epochs=6, val_data=_loader(xte, yte, n=64), metric=metric,
                         early_stopping_patience=2, quiet=True)
    # scores[0] is the pre-flight check; epochs get 0.9, 0.4, 0.3 -> stop after epoch 3
    assert result.stopped_early and result.best_epoch == 1 and result.best_metric == 0.9
    assert len(result.history) == 3
    assert all(torch.equal(v, seen["best"][k]) for k, v in result.model.state_dict().items())


def test_lottery_rewinds_survivors_to_their_saved_values(dense, data):
    xtr, ytr, _, _ = data
    result = ep.lottery(dense, _loader(xtr, ytr, n=256), rounds=2, sparsity_per_round=0.5, epochs_per_round=1,
                        retrain_final=False, quiet=True)
    m = result.model
    for name in ("res.0", "fc1"):
        layer, original = dict(m.named_modules())[name], dict(dense.named_modules())[name]
        mask = layer.weight_mask.bool()
        assert float(mask.float().mean()) == pytest.approx(0.25, abs=0.01)
        assert torch.equal(layer.weight_orig[mask], original.weight[mask])
        assert torch.all(layer.weight_orig[~mask] == 0)
    assert torch.equal(m.classifier.weight, dense.classifier.weight)
    assert [h["round"] for h in result.history] == [1, 2]


def test_iterative_prune_reaches_the_budget_in_steps_and_keeps_accuracy(dense, data):
    xtr, ytr, xte, yte = data
    inputs = zoo.small_cnn.example_inputs()
    result = ep.iterative_prune(dense, inputs, "raspberry-pi-5", ep.Budget(macs_ratio=0.6), _loader(xtr, ytr, n=512),
                                steps=2, epochs_per_step=1, quiet=True)
    ratios = [h["macs_ratio"] for h in result.history]
    assert [h["prune_step"] for h in result.history] == [1, 2] and ratios[0] > ratios[1]
    assert ratios[1] <= 0.6 + 1e-9
    assert ep.measure(ep.finalize(result.model), inputs).macs <= 0.6 * ep.measure(dense, inputs).macs
    assert accuracy(result.model, _loader(xte, yte)) > 0.5


def test_quiet_prints_nothing_and_otherwise_each_epoch_reports_loss(dense, data, capsys):
    xtr, ytr, _, _ = data
    ep.finetune(dense, _loader(xtr, ytr, n=64), epochs=1, quiet=True)
    assert capsys.readouterr().out == ""
    ep.finetune(dense, _loader(xtr, ytr, n=64), epochs=1)
    assert "epoch 1: loss" in capsys.readouterr().out


def test_resuming_with_other_settings_is_refused(dense, data, tmp_path):
    xtr, ytr, _, _ = data
    ep.finetune(dense, _loader(xtr, ytr, n=64), epochs=1, checkpoint_dir=tmp_path, quiet=True)
    with pytest.raises(ep.ModelError, match=r"other settings \(lr: 0.001 there, 0.01 now\)"):
        ep.finetune(dense, _loader(xtr, ytr, n=64), epochs=1, lr=0.01, checkpoint_dir=tmp_path, quiet=True)


def test_iterative_prune_applies_the_recipe_at_every_step(dense, data, tmp_path, jetson_small):
    """A recipe forcing 2:4 on one layer holds through each re-plan, and the budget counts it at the sparse rate
    (on a Jetson whose sparse kernels start at 16 channels, so that small_cnn's 32-channel res.0 has them)."""
    from safetensors.torch import load_file

    xtr, ytr, _, _ = data
    inputs = zoo.small_cnn.example_inputs()
    recipe = {"layers": {"res.0": {"method": "n:m"}}}
    result = ep.iterative_prune(dense, inputs, jetson_small, ep.Budget(macs_ratio=0.6),
                                _loader(xtr, ytr, n=256), steps=2, epochs_per_step=1, recipe=recipe,
                                checkpoint_dir=tmp_path, quiet=True)
    for step in (1, 2):  # each step's fine-tuned weights, as checkpointed
        [saved] = (tmp_path / f"step-{step}").glob("epoch-*.safetensors")
        tensors = load_file(str(saved))
        assert satisfies_nm(tensors["model.res.0.weight_orig"] * tensors["model.res.0.weight_mask"], 2, 4)
    assert result.history[-1]["macs_ratio"] <= 0.6 + 1e-9
    # counted at the dense rate, res.0 could not stay this wide within 0.6 of the MACs
    dense_macs = ep.measure(dense, inputs).macs
    assert ep.measure(ep.finalize(result.model), inputs).macs > 0.6 * dense_macs


def test_a_failed_bn_recalibration_leaves_the_statistics_as_they_were(dense):
    from edgeprune.batchnorm import recalibrate_

    model = copy.deepcopy(dense)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    bad = [(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)), (torch.zeros(4, 3, 8, 8), torch.zeros(4))]
    with pytest.raises(RuntimeError, match=r"expected input\[4, 3, 8, 8\] to have 1 channels"):
        recalibrate_(model, bad)  # the second batch has 3 channels: the model rejects it after one good batch
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


# ------------------------------------------------------------------------------ the loader, as given

class _Recording(Dataset):
    """Digits that note, in order, which sample indices were read."""

    def __init__(self, x, y):
        self.x, self.y, self.read = x, y, []

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.read.append(int(i))
        return self.x[i], self.y[i]


def test_a_weighted_random_sampler_decides_which_samples_training_sees(dense, data):
    xtr, ytr, _, _ = data
    ds = _Recording(xtr[:512], ytr[:512])
    weights = torch.zeros(512)
    weights[:64] = 1.0  # only the first 64 samples can ever be drawn
    loader = DataLoader(ds, batch_size=32, sampler=WeightedRandomSampler(weights, num_samples=256))
    ep.finetune(dense, loader, epochs=1, quiet=True)
    assert len(ds.read) >= 256 and set(ds.read) <= set(range(64))


def test_a_distributed_sampler_gives_each_epoch_its_ranks_shard_for_that_epoch(dense, data):
    xtr, ytr, _, _ = data
    ds = _Recording(xtr[:256], ytr[:256])

    def shard(epoch):
        sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=7)
        sampler.set_epoch(epoch)
        return list(sampler)

    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=7)
    ep.finetune(dense, DataLoader(ds, batch_size=32, sampler=sampler), epochs=2, quiet=True)
    assert len(shard(1)) == 128 and shard(1) != shard(2)
    assert ds.read[-256:] == shard(1) + shard(2)  # the two training epochs, as set_epoch(1), set_epoch(2) order them
    assert sampler.epoch == 0  # the caller's sampler is left at the epoch it was given at


def test_a_loader_with_a_batch_sampler_trains_on_its_batches(dense, data):
    xtr, ytr, xte, yte = data
    pruned = _unstructured(dense, 0.8)
    ds = TensorDataset(xtr[:256], ytr[:256])
    batches = BatchSampler(RandomSampler(ds), batch_size=48, drop_last=True)
    steps = []
    result = ep.finetune(pruned, DataLoader(ds, batch_sampler=batches), epochs=1, lr=2e-3, quiet=True,
                         callback=lambda info: steps.append(info["step"]))
    assert steps == list(range(1, len(batches) + 1))
    assert accuracy(result.model, _loader(xte, yte)) > accuracy(pruned, _loader(xte, yte))


def _shuffled(ds):
    return DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(11))


def _weighted(ds):
    return DataLoader(ds, batch_size=32, sampler=WeightedRandomSampler(torch.linspace(0.1, 1.0, len(ds)), len(ds)))


def _batched(ds):
    return DataLoader(ds, batch_sampler=BatchSampler(RandomSampler(ds), batch_size=40, drop_last=False))


@pytest.mark.parametrize("make_loader", [_shuffled, _weighted, _batched], ids=["shuffle", "weighted", "batch_sampler"])
def test_resume_after_a_kill_is_bit_identical_with_a_random_sampler(dense, data, tmp_path, make_loader):
    xtr, ytr, _, _ = data
    train = make_loader(TensorDataset(xtr[:128], ytr[:128]))  # one loader object for all three runs
    whole, resumed = _whole_and_resumed(dense, train, tmp_path, (2, 2), epochs=2, quiet=True, seed=5)
    assert resumed.resumed_from == 1
    assert _same_weights(whole.model, resumed.model)


def test_finetune_leaves_the_loaders_own_generator_as_it_was(dense, data):
    xtr, ytr, _, _ = data
    g = torch.Generator().manual_seed(3)
    before = g.get_state()
    loader = DataLoader(TensorDataset(xtr[:128], ytr[:128]), batch_size=32, shuffle=True, generator=g)
    ep.finetune(dense, loader, epochs=2, quiet=True)
    assert torch.equal(g.get_state(), before) and loader.sampler.generator is g and loader.generator is g


# --------------------------------------------------------------------------------------------- optimizers

def test_optimizer_adamw_is_torchs_adamw_with_decoupled_weight_decay(dense, data):
    xtr, ytr, _, _ = data
    train = _loader(xtr, ytr, n=128)
    adamw = ep.finetune(dense, train, epochs=1, optimizer="adamw", lr=2e-3, weight_decay=0.5, quiet=True).model
    torch_adamw = ep.finetune(dense, train, epochs=1, quiet=True,
                              optimizer=lambda params: torch.optim.AdamW(params, lr=2e-3, weight_decay=0.5)).model
    adam = ep.finetune(dense, train, epochs=1, optimizer="adam", lr=2e-3, weight_decay=0.5, quiet=True).model
    assert _same_weights(adamw, torch_adamw)
    assert not _same_weights(adamw, adam)  # Adam adds the decay to the gradient instead


def test_an_optimizer_factory_builds_the_optimizer_over_the_trained_copys_parameters(dense, data):
    xtr, ytr, _, _ = data
    given = []

    def factory(params):  # the classifier (small_cnn's last two parameters) frozen by a zero rate, the rest trained
        given.extend(params)
        return torch.optim.SGD([{"params": params[:-2], "lr": 0.05}, {"params": params[-2:], "lr": 0.0}], momentum=0.9)

    model = ep.finetune(dense, _loader(xtr, ytr, n=128), epochs=1, optimizer=factory, quiet=True).model
    assert [id(p) for p in given] == [id(p) for p in model.parameters()]
    assert torch.equal(model.classifier.weight, dense.classifier.weight)  # its group's rate is scaled, not replaced
    assert not torch.equal(model.fc1.weight, dense.fc1.weight)


@pytest.mark.parametrize("optimizer,kw,match", [
    ("adamx", {}, r"optimizer='adamx': unknown; expected one of adam, adamw, sgd"),
    (lambda params: torch.optim.SGD(params, lr=0.1), {"lr": 0.1}, r"optimizer factory given with lr"),
    (lambda params: "sgd", {}, r"optimizer factory .* returned str, expected a torch.optim.Optimizer"),
], ids=["unknown-name", "factory-with-lr", "factory-returns-no-optimizer"])
def test_an_optimizer_that_cannot_work_is_refused_before_anything_is_written(dense, data, tmp_path, optimizer, kw,
                                                                             match):
    xtr, ytr, _, _ = data
    with pytest.raises(ep.EdgepruneError, match=match):
        ep.finetune(dense, _loader(xtr, ytr, n=64), epochs=1, optimizer=optimizer, checkpoint_dir=tmp_path / "ckpt",
                    quiet=True, **kw)
    assert not (tmp_path / "ckpt").exists()


# ---------------------------------------------------------------------------------- the prune record

@pytest.fixture(scope="module")
def structured(dense):
    plan = ep.plan(dense, zoo.small_cnn.example_inputs(), "raspberry-pi-5", ep.Budget(macs_ratio=0.6))
    return plan, ep.prune(dense, plan)


def test_the_model_finetune_returns_is_recorded_as_finetuned(structured, data):
    xtr, ytr, _, _ = data
    _, pruned = structured
    tuned = ep.finetune(pruned, _loader(xtr, ytr, n=128), epochs=1, quiet=True).model
    assert ep.record_of(tuned).finetuned is True
    assert ep.record_of(pruned).finetuned is False  # the caller's model is not changed
    assert ep.record_of(tuned).removals == ep.record_of(pruned).removals


def test_the_finetuned_flag_survives_save_and_load(structured, data, tmp_path):
    xtr, ytr, _, _ = data
    plan, pruned = structured
    tuned = ep.finetune(pruned, _loader(xtr, ytr, n=128), epochs=1, quiet=True).model
    for name, model, flag in (("pruned", pruned, False), ("tuned", tuned, True)):
        directory = ep.save(model, plan, tmp_path / name, factory=zoo.small_cnn)
        assert json.loads((directory / "structure.json").read_text())["finetuned"] is flag
        assert ep.record_of(ep.load(zoo.small_cnn, directory)).finetuned is flag


# ------------------------------------------------------------------------- checkpoints, written and read back

class _CountingSGD(torch.optim.SGD):
    """SGD that also keeps a plain number per parameter in its state, as an optimizer from a factory may."""

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["steps"] = self.state[p].get("steps", 0) + 1
        return super().step(closure)


def _stepped():
    """A Linear layer and its optimizer after one step (momentum buffers and step counts in its state)."""
    with torch.random.fork_rng(devices=[]):
        model = torch.nn.Linear(4, 2)
    opt = _CountingSGD(model.parameters(), lr=0.1, momentum=0.9)
    model(randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


# what finetune records beside the tensors (loop.py)
_RECORD = {"settings": {"lr": 0.1}, "history": [], "best_metric": None, "best_epoch": None, "since_best": 0,
           "stopped_early": False}


def test_a_checkpoint_gives_back_weights_best_weights_and_optimizer_state_plain_numbers_included(tmp_path):
    model, opt = _stepped()
    best = {k: v + 1 for k, v in model.state_dict().items()}
    directory = tmp_path / "runs" / "first"  # neither exists yet
    save_checkpoint(directory, 3, model, opt, best, _RECORD)
    record, tensors = latest_checkpoint(directory)
    assert record["epoch"] == 3 and record["has_best"] is True and record["settings"] == {"lr": 0.1}
    assert (directory / "epoch-0003.json").read_text() == json.dumps(record, indent=2)  # readable by eye
    with safe_open(directory / "epoch-0003.safetensors", "pt") as weights:  # the tensors file says what it is
        assert weights.metadata() == {"schema": "edgeprune.finetune-checkpoint/1"}
    assert all(torch.equal(tensors[f"model.{k}"], v) for k, v in model.state_dict().items())
    assert all(torch.equal(tensors[f"best.{k}"], v) for k, v in best.items())
    resumed = _CountingSGD(torch.nn.Linear(4, 2).parameters(), lr=0.1, momentum=0.9)
    resumed.load_state_dict(optimizer_state(tensors, record["optimizer"]))
    was, now = opt.state_dict()["state"], resumed.state_dict()["state"]
    assert sorted(was) == sorted(now) == [0, 1]
    for i in was:
        assert now[i]["steps"] == 1 and torch.equal(now[i]["momentum_buffer"], was[i]["momentum_buffer"])


_REMEDY = "move it out of the checkpoint directory to resume from an older checkpoint, or start afresh"


@pytest.mark.parametrize("edit,says", [
    (lambda r: {k: v for k, v in r.items() if k != "history"}, "key 'history' is missing from the checkpoint record"),
    (lambda r: dict(r, epoch="1"), "key 'epoch' is '1', expected int"),
    (lambda r: dict(r, has_best=1), "key 'has_best' is 1, expected bool"),
    (lambda r: dict(r, since_best=True), "key 'since_best' is True, expected int"),
    (lambda r: dict(r, best_metric="high"), "key 'best_metric' is 'high', expected int or float or null"),
    (lambda r: dict(r, best_epoch=1.0), "key 'best_epoch' is 1.0, expected int or null"),
    (lambda r: [r], "not a checkpoint record (a JSON list, not an object)"),
], ids=["key-missing", "str-for-int", "int-for-bool", "bool-for-int", "str-for-number", "float-for-int", "no-object"])
def test_a_damaged_checkpoint_record_is_refused_naming_the_file_the_key_and_the_remedy(tmp_path, edit, says):
    model, opt = _stepped()
    save_checkpoint(tmp_path, 1, model, opt, None, _RECORD)
    marker = tmp_path / "epoch-0001.json"
    marker.write_text(json.dumps(edit(json.loads(marker.read_text()))))
    with pytest.raises(ep.MalformedError) as err:
        latest_checkpoint(tmp_path)
    assert str(err.value) == f"{marker}: {says}; {_REMEDY}"


def _two_epochs(directory):
    """Complete checkpoints of epochs 1 and 2 side by side, as a run killed between writing epoch 2 and removing
    epoch 1 leaves them."""
    model, opt = _stepped()
    save_checkpoint(directory, 1, model, opt, None, _RECORD)
    first = {p.name: p.read_bytes() for p in directory.iterdir()}
    save_checkpoint(directory, 2, model, opt, None, _RECORD)
    for name, content in first.items():
        (directory / name).write_bytes(content)


def _weights_missing(directory):
    (directory / "epoch-0002.safetensors").unlink()


def _weights_altered(directory):
    path = directory / "epoch-0002.safetensors"
    path.write_bytes(path.read_bytes()[:-1] + b"!")


def _other_schema(directory):
    path = directory / "epoch-0002.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), schema="edgeprune.finetune-checkpoint/2")))


@pytest.mark.parametrize("damage,epoch", [(None, 2), (_weights_missing, 1), (_weights_altered, 1), (_other_schema, 1)],
                         ids=["intact", "weights-missing", "weights-altered", "other-schema"])
def test_resuming_takes_the_newest_complete_checkpoint_passing_over_an_incomplete_or_foreign_one(tmp_path, damage,
                                                                                                   epoch):
    _two_epochs(tmp_path)
    if damage is not None:
        damage(tmp_path)
    record, _ = latest_checkpoint(tmp_path)
    assert record["epoch"] == epoch


def test_a_new_checkpoint_replaces_the_older_epochs_and_leaves_other_files_alone(tmp_path):
    model, opt = _stepped()
    (tmp_path / "epoch-0001.notes").write_text("the caller's")
    save_checkpoint(tmp_path, 1, model, opt, None, _RECORD)
    save_checkpoint(tmp_path, 2, model, opt, None, _RECORD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.notes", "epoch-0002.json",
                                                          "epoch-0002.safetensors"]


def test_an_epoch_saved_again_replaces_its_checkpoint(tmp_path):
    """A resumed run saves again an epoch whose checkpoint was damaged (and so passed over), or whose weights were
    written before the run was killed and its record not."""
    model, opt = _stepped()
    save_checkpoint(tmp_path, 1, model, opt, None, _RECORD)
    save_checkpoint(tmp_path, 1, model, opt, None, dict(_RECORD, since_best=1))
    record, _ = latest_checkpoint(tmp_path)
    assert record["epoch"] == 1 and record["since_best"] == 1
