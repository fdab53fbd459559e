"""lr range test: a real sweep on a tiny real model picks an lr inside what it swept and leaves the weights as found."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from hf_animals.preprocess import load_rgb_resized, normalize_batch
from hf_animals.lr_probe import choose_lr, lr_range_test, smooth_losses
from hf_animals.models import create_model, data_config, param_groups


def test_range_test_on_a_tiny_cnn_picks_inside_its_range_and_restores_the_weights(sample_dir):
    torch.manual_seed(0)
    folders = sorted(d for d in sample_dir.iterdir() if d.is_dir())
    files = [(p, i) for i, d in enumerate(folders) for p in sorted(d.iterdir())[:4]]
    x = torch.stack([torch.from_numpy(load_rgb_resized(p, 32)).permute(2, 0, 1) for p, _ in files])
    y = torch.tensor([i for _, i in files])
    model = create_model("animals_cnn5", len(folders), widths=(8, 16, 16))
    cfg = data_config(model)
    batches = [(x[i::4], y[i::4]) for i in range(4)]
    before = copy.deepcopy(model.state_dict())

    def loss_of(batch):
        xb, yb = batch
        return F.cross_entropy(model(normalize_batch(xb, cfg["mean"], cfg["std"])), yb)

    probe = lr_range_test(model, lambda: torch.optim.AdamW(param_groups(model, 1e-3), lr=1e-3), batches, loss_of,
                          start_lr=1e-5, end_lr=10.0, steps=40)
    assert 2 <= len(probe.lrs) <= 40 and probe.lrs[0] == pytest.approx(1e-5)
    assert all(a < b for a, b in zip(probe.lrs, probe.lrs[1:]))
    assert min(probe.lrs) <= probe.chosen_lr <= max(probe.lrs)
    assert probe.chosen_lr == choose_lr(probe.lrs, probe.smoothed)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_groups_keep_their_lr_ratio_during_the_sweep(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    seen, step = [], torch.optim.SGD.step

    def spy(self, *args, **kwargs):  # records the group lrs the probe set for each step
        seen.append([g["lr"] for g in self.param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    make = lambda: torch.optim.SGD([dict(params=model[1].parameters(), lr=1.0),  # noqa: E731
                                    dict(params=model[0].parameters(), lr=0.1)], lr=1.0)
    probe = lr_range_test(model, make, [torch.randn(3, 4)], lambda b: model(b).pow(2).mean(), start_lr=1e-4,
                          end_lr=1e-2, steps=5)
    assert [head for head, _ in seen] == pytest.approx(probe.lrs)
    assert [body / head for head, body in seen] == pytest.approx([0.1] * 5)


def test_choose_lr_is_the_minimum_over_ten_clamped_into_the_sweep():
    lrs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert choose_lr(lrs, [2.0, 1.5, 1.0, 0.5, 3.0]) == pytest.approx(1e-2)
    assert choose_lr(lrs, [0.1, 1.5, 1.0, 2.0, 3.0]) == 1e-4  # minimum at the start: clamped to the first lr
    assert choose_lr(lrs, [2.0, 1.0, float("inf"), float("nan"), float("inf")]) == pytest.approx(1e-4)


def test_smoothing_is_bias_corrected():
    assert smooth_losses([3.0, 3.0, 3.0]) == pytest.approx([3.0, 3.0, 3.0])
