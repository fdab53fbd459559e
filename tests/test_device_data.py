"""Device-resident batches: the DataLoader path's seeded order, every image once per epoch, shards that partition."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from hf_animals import device_data


def prepared_loader_batches(n: int, batch_size: int, seed: int, epochs: list[int]) -> dict[int, list[list[int]]]:
    """What the training loop's own path yields: a shuffled DataLoader prepared by Accelerate, seeded sampler."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    set_seed(seed)
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    loader = accelerator.prepare(DataLoader(TensorDataset(torch.arange(n)), batch_size=batch_size, shuffle=True))
    out = {}
    for epoch in epochs:
        loader.set_epoch(epoch)
        out[epoch] = [b[0].tolist() for b in loader]
    return out


@pytest.mark.parametrize("n, batch_size", [(37, 8), (64, 16)])
def test_same_batches_as_the_prepared_dataloader(n, batch_size):
    seed = 7
    expected = prepared_loader_batches(n, batch_size, seed, [1, 2, 5])
    batches = device_data.DeviceBatches(torch.arange(n) * 10, torch.arange(n), batch_size, "cpu", shuffle=True,
                                        seed=seed)
    for epoch, want in expected.items():
        batches.set_epoch(epoch)
        got = list(batches)
        assert [y.tolist() for _, y in got] == want
        assert [x.tolist() for x, _ in got] == [[i * 10 for i in b] for b in want]  # x rows follow their labels
        assert len(batches) == len(want)


def test_every_index_once_per_epoch_and_the_order_is_the_seeds():
    batches = device_data.DeviceBatches(torch.zeros(50, 3), torch.arange(50), 16, "cpu", shuffle=True, seed=3)
    orders = {}
    for epoch in (1, 2):
        batches.set_epoch(epoch)
        orders[epoch] = [i for _, y in batches for i in y.tolist()]
        assert sorted(orders[epoch]) == list(range(50))
    assert orders[1] != orders[2]
    again = device_data.DeviceBatches(torch.zeros(50, 3), torch.arange(50), 16, "cpu", shuffle=True, seed=3)
    again.set_epoch(2)
    assert [i for _, y in again for i in y.tolist()] == orders[2]
    other = device_data.DeviceBatches(torch.zeros(50, 3), torch.arange(50), 16, "cpu", shuffle=True, seed=4)
    other.set_epoch(2)
    assert [i for _, y in other for i in y.tolist()] != orders[2]


@pytest.mark.parametrize("n, batch_size, procs", [(50, 8, 2), (37, 4, 3), (5, 4, 2)])
def test_training_shards_partition_the_epoch_plus_accelerates_padding(n, batch_size, procs):
    shards = [device_data.DeviceBatches(torch.zeros(n), torch.arange(n), batch_size, "cpu", shuffle=True, seed=1,
                                        num_processes=procs, process_index=r) for r in range(procs)]
    for s in shards:
        s.set_epoch(4)
    per_rank = [[y.tolist() for _, y in s] for s in shards]
    assert len({len(b) for b in per_rank}) == 1  # every process steps equally often (no DDP hang)
    assert all(len(per_rank[r]) == len(shards[r]) for r in range(procs))
    assert all(len(batch) == batch_size for b in per_rank for batch in b) or n < batch_size * procs
    counts = Counter(i for b in per_rank for batch in b for i in batch)
    assert set(counts) == set(range(n))
    # Padding repeats the epoch's first indices, each at most once more than the rest.
    order = device_data.epoch_order(n, 1, 4)
    extra = sum(counts.values()) - n
    padded = Counter(order[:extra]) if extra <= n else None
    if padded is not None:
        assert counts == Counter(range(n)) + padded


@pytest.mark.parametrize("n, procs", [(30, 2), (31, 4), (3, 4)])
def test_evaluation_shards_are_contiguous_and_cover_once(n, procs):
    rows = []
    for r in range(procs):
        batches = device_data.DeviceBatches(torch.zeros(n), torch.arange(n), 4, "cpu", shuffle=False,
                                            num_processes=procs, process_index=r)
        rows += [i for _, y in batches for i in y.tolist()]
    assert rows == list(range(n))


def test_gather_puts_uneven_shards_back_in_dataset_order():
    class FakeAccelerator:  # two processes' worth of pad_across_processes + gather, in one process
        def __init__(self, parts):
            self.parts = parts

        def pad_across_processes(self, t, dim=0):
            width = max(len(p) for p in self.parts)
            return torch.cat([t, t.new_full((width - len(t),), -1)])

        def gather(self, t):
            width = len(t)
            return torch.cat([torch.cat([p, p.new_full((width - len(p),), -1)]) for p in self.parts])

    n = 7
    shards = [device_data.DeviceBatches(torch.zeros(n), torch.arange(n), 2, "cpu", shuffle=False, num_processes=2,
                                        process_index=r) for r in range(2)]
    parts = [torch.cat([y for _, y in s]) for s in shards]
    assert [len(p) for p in parts] == [4, 3]
    assert shards[1].gather(parts[1], FakeAccelerator(parts)).tolist() == list(range(n))


def test_fits_on_device():
    assert device_data.fits_on_device(10**12, "cpu")  # host tensors are used in place
    assert not device_data.fits_on_device(1, "meta")
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        assert device_data.fits_on_device(free // 4, "cuda") and not device_data.fits_on_device(free, "cuda")


def test_training_on_device_batches_matches_the_dataloader_path(sample_dir, cache_dir, tmp_path, monkeypatch):
    """Augmentation and dropout on: same batches and the same global random stream give the same history."""
    import json

    from hf_animals import training

    def run(name):
        out = tmp_path / name
        training.train(training.TrainConfig(
            model="animals_cnn5", data_dir=str(sample_dir), output_dir=str(out), epochs=2, batch_size=8,
            image_size=32, train_per_class=4, val_per_class=2, test_per_class=2, progress=False, drop_rate=0.3,
            cache_dir=str(cache_dir), mixed_precision="no"))
        return json.loads((out / "history.json").read_text())

    on_device = run("device")
    monkeypatch.setattr(training, "fits_on_device", lambda nbytes, device: False)  # the DataLoader path
    loader = run("loader")
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    assert [[r[k] for k in keys] for r in on_device] == [[r[k] for k in keys] for r in loader]
