"""Sync-free epoch statistics: same numbers as the per-step .item() loop, non-finite steps caught, few syncs."""
from __future__ import annotations

import pytest
import torch

from hf_animals.meters import EpochMeter, NonFiniteLoss, ProgressRefresher


class OneProcess:
    """Accelerator.reduce of a single process: the tensor itself."""

    def reduce(self, tensor, reduction):
        return tensor


def batches(seed: int, steps: int, classes: int = 5):
    g = torch.Generator().manual_seed(seed)
    for i in range(steps):
        n = 7 if i == steps - 1 else 16  # an uneven last batch, as in a real epoch
        logits = torch.randn(n, classes, generator=g) * 3
        y = torch.randint(0, classes, (n,), generator=g)
        yield torch.nn.functional.cross_entropy(logits, y), logits, y


def test_totals_are_bit_identical_to_the_old_per_step_item_loop():
    loss_sum = torch.zeros(())
    seen = correct = 0
    meter = EpochMeter("cpu")
    for loss, logits, y in batches(0, 9):
        loss_sum += loss.detach() * y.numel()  # the loop before issue 13
        correct += (logits.argmax(1) == y).sum().item()
        seen += y.numel()
        meter.update(loss, logits, y)
    stats = torch.tensor([loss_sum.item(), correct, seen])
    old = (stats[0].item() / stats[2].item(), stats[1].item() / stats[2].item(), stats[2].item())
    assert meter.totals(OneProcess()) == old
    assert 0 < old[1] < 1 and old[2] == 8 * 16 + 7


def test_first_non_finite_step_is_reported_at_the_next_read():
    meter = EpochMeter("cpu")
    for step, (loss, logits, y) in enumerate(batches(1, 6)):
        if step in (2, 4):
            loss = loss * float("inf") if step == 2 else loss * float("nan")
        meter.update(loss, logits, y)
        if step == 1:
            assert meter.read()["seen"] == 32  # finite so far
    with pytest.raises(NonFiniteLoss) as err:
        meter.read()
    assert err.value.step == 2
    with pytest.raises(NonFiniteLoss):
        meter.totals(OneProcess())


class FakeBar:
    def __init__(self):
        self.n, self.postfixes = 0, []

    def update(self, k):
        self.n += k

    def set_postfix(self, **kw):
        self.postfixes.append(kw)


def test_refresher_syncs_at_most_every_n_steps_and_interval():
    now = [0.0]
    meter, bar = EpochMeter("cpu"), FakeBar()
    refresher = ProgressRefresher(bar, meter, every=5, min_interval_s=1.0, clock=lambda: now[0])
    for loss, logits, y in batches(2, 40):
        now[0] += 0.1  # 10 steps a second: the interval, not the step count, limits syncs
        meter.update(loss, logits, y)
        refresher.step()
    assert bar.n == 40
    assert refresher.syncs == len(bar.postfixes) == 3  # at steps 10, 20, 30 (t = 1.0 s, 2.0 s, 3.0 s)
    assert set(bar.postfixes[-1]) == {"loss", "acc", "img_s"}


def test_refresher_raises_at_a_sync_point_when_a_step_diverged():
    now = [0.0]
    meter = EpochMeter("cpu")
    refresher = ProgressRefresher(FakeBar(), meter, every=3, min_interval_s=0.0, clock=lambda: now[0])
    with pytest.raises(NonFiniteLoss) as err:
        for step, (loss, logits, y) in enumerate(batches(3, 10)):
            meter.update(loss * float("nan") if step == 4 else loss, logits, y)
            refresher.step()
    assert err.value.step == 4 and meter.steps == 6  # found at the sync after step 5, not at the epoch end
