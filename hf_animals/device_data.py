"""Batches indexed straight out of tensors that live on the training device, without a DataLoader.

Why: the decoded-image cache (uint8, 3,000 x 3 x 224 x 224 = 452 MB; Animals-10's 4,500 at 256 px = 885 MB) and
the frozen-prefix feature caches fit on any training GPU. Moved there once, a batch is one gather kernel on the
device, instead of a DataLoader collating per-image host tensors and a host-to-device copy every step. On a CPU the
tensors already are in memory and the same code indexes them there, so CPU tests cover the GPU path.

Order: identical to the project's DataLoader path, `DataLoader(shuffle=True)` prepared by Accelerate with
`use_seedable_sampler=True`: each epoch's permutation is `torch.randperm(n)` from a CPU generator seeded with
`seed + epoch` (Accelerate's SeedableRandomSampler, with seed = torch's initial seed, which `set_seed(cfg.seed)`
sets), cut into batches, and dealt to processes by Accelerate's own BatchSamplerShard (batch i to process
i % num_processes, the last round padded from the epoch's first indices so every process steps equally often).
Evaluation batches (shuffle=False) give each process a contiguous, unpadded slice; `gather` puts per-image results
back in dataset order with nothing counted twice.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import BatchSampler

DEVICE_MEMORY_FRACTION = 0.5  # of the free GPU memory: the rest is for the model, activations and cuDNN workspaces


def tensors_nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def dataset_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of an in-memory dataset: a TensorDataset or the decoded-image cache's dataset."""
    if isinstance(dataset, torch.utils.data.TensorDataset):
        return dataset.tensors[0], dataset.tensors[1]
    if getattr(dataset, "transform", None) is not None:
        raise ValueError("a per-image transform cannot run on device-resident batches")
    return dataset.pixels, dataset.labels


def fits_on_device(nbytes: int, device: torch.device | str, fraction: float = DEVICE_MEMORY_FRACTION) -> bool:
    """Whether `nbytes` more can live on `device`: CUDA asks the driver for free memory; a CPU tensor is already in
    host memory, so indexing it in place costs nothing more."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return nbytes <= fraction * free
    return device.type == "cpu"


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The permutation Accelerate's SeedableRandomSampler yields for this epoch (seed + epoch, CPU generator)."""
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(n, generator=generator).tolist()


def shard_batches(order: list[int], batch_size: int, num_processes: int = 1, process_index: int = 0
                  ) -> list[list[int]]:
    """This process's batches of one epoch, dealt exactly as Accelerate deals a prepared DataLoader's batches."""
    from accelerate.data_loader import BatchSamplerShard

    batches = BatchSampler(order, batch_size, drop_last=False)
    if num_processes == 1:
        return list(batches)
    return list(BatchSamplerShard(batches, num_processes=num_processes, process_index=process_index,
                                  split_batches=False, even_batches=True))


def contiguous_shard(n: int, num_processes: int, process_index: int) -> range:
    """Evaluation slice of one process: contiguous, sizes differ by at most one, no padding."""
    per, extra = divmod(n, num_processes)
    start = process_index * per + min(process_index, extra)
    return range(start, start + per + (process_index < extra))


class DeviceBatches:
    """(x, y) batches gathered on the device from tensors moved there once.

    shuffle=True: the seeded, sharded training order of the DataLoader path (call `set_epoch` before iterating, as
    with a prepared DataLoader). shuffle=False: this process's contiguous slice, in order, for evaluation.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device | str, *,
                 shuffle: bool, seed: int = 0, num_processes: int = 1, process_index: int = 0):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        self.device = torch.device(device)
        self.x, self.y = x.to(self.device), torch.as_tensor(y, dtype=torch.int64).to(self.device)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.num_processes, self.process_index = num_processes, process_index
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches this process yields per epoch (the prepared DataLoader's len for shuffle=True)."""
        if self.shuffle:
            total = math.ceil(len(self.y) / self.batch_size)
            return math.ceil(total / self.num_processes)
        return math.ceil(len(self.shard()) / self.batch_size)

    def shard(self) -> range:
        return contiguous_shard(len(self.y), self.num_processes, self.process_index)

    def batch_indices(self) -> list[list[int]]:
        """This process's index lists for the current epoch."""
        if self.shuffle:
            order = epoch_order(len(self.y), self.seed, self.epoch)
            return shard_batches(order, self.batch_size, self.num_processes, self.process_index)
        rows = list(self.shard())
        return [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A DataLoader iterator draws one int64 from torch's global CPU generator (its workers' base seed); drawing it
        # too keeps every later random number (augmentation, dropout on a CPU) what the DataLoader path gives.
        torch.empty((), dtype=torch.int64).random_()
        batches = self.batch_indices()
        if not batches:
            return
        # One host-to-device copy of the epoch's indices; every batch is then a slice of it and one gather.
        flat = torch.tensor([i for b in batches for i in b], dtype=torch.int64).to(self.device, non_blocking=True)
        start = 0
        for b in batches:
            idx = flat[start:start + len(b)]
            start += len(b)
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)

    def gather(self, per_item: torch.Tensor, accelerator=None) -> torch.Tensor:
        """Per-image results of an evaluation pass (shuffle=False) from every process, in dataset order."""
        if accelerator is None or self.num_processes == 1:
            return per_item
        padded = accelerator.pad_across_processes(per_item, dim=0)
        everything = accelerator.gather(padded)
        width = len(padded)
        sizes = [len(contiguous_shard(len(self.y), self.num_processes, r)) for r in range(self.num_processes)]
        return torch.cat([everything[r * width:r * width + size] for r, size in enumerate(sizes)])
