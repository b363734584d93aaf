"""Where the training loop's batches come from: one loop (imgpipe.training.loop), two sources of a split.

- ResidentSplit: the whole split on the device, still uint8, batches gathered there by index (airbench's
  way, and the fastest where the split fits).
- StreamedSplit: the split stays in its memory-mapped array file; a DataLoader's workers gather each
  batch's rows, pinned on CUDA, and the next batch is copied to the device while this one trains.

Both take the epoch's index batches from the loop (drawn from its seeded generator) and the same rows
reach the model in the same order, so a seeded run trains on the same batches, bit for bit on the CPU,
whichever source serves them. Normalization and augmentation stay on the device, in the loop.
"""

import os
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from imgpipe.data.imageset import ImageSet
from imgpipe.models.inference import logits_in_chunks, predict_logits

Batch = tuple[torch.Tensor, torch.Tensor]  # images uint8 (B, C, H, W), labels (B,), on the device


def fits_on_device(nbytes: int, device: torch.device, limit_mb: float) -> bool:
    """train.data_on_device: auto's rule. The splits stay resident when they take at most limit_mb and,
    on CUDA, at most half the GPU's free memory (the rest is for the model, its activations, the optimizer)."""
    if nbytes > limit_mb * 2**20:
        return False
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= free // 2
    return True


def gather_workers(workers: int | str, device: torch.device) -> int:
    """train.stream_workers as a number. Measured on a 2-core CPU (MNIST-size images, batch 64): with 0
    workers streamed training ran at 0.9-1.0x resident, with 2 at 0.2x (linear) and 0.75x (cnn)."""
    if workers != "auto":
        return workers
    return min(4, max((os.cpu_count() or 1) - 1, 0)) if device.type == "cuda" else 0


class ResidentSplit:
    """The split copied to the device once."""

    def __init__(self, split: ImageSet, device: torch.device):
        self.images = torch.from_numpy(np.array(split.images)).to(device)  # read whole here, if memory-mapped
        self.labels = torch.from_numpy(split.labels).to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order: list[torch.Tensor]) -> Iterator[Batch]:
        for index in order:
            yield self.images[index], self.labels[index]

    def logits(self, model: nn.Module, rows: slice = slice(None)) -> torch.Tensor:
        return predict_logits(model, self.images[rows])


class _Rows(Dataset):
    """Rows of an array by index batch. Spawned workers (macOS, Windows) reopen a memory-mapped file
    rather than receive its contents in a pickle."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[index]))  # reads only these rows

    def __getstate__(self) -> dict:
        if isinstance(self.images, np.memmap):
            return {"file": self.images.filename}
        return {"images": self.images}

    def __setstate__(self, state: dict) -> None:
        self.images = np.load(state["file"], mmap_mode="r") if "file" in state else state["images"]


class StreamedSplit:
    """The split read from its array file batch by batch; only the labels live on the device."""

    def __init__(self, split: ImageSet, device: torch.device, workers: int | str):
        self.rows = _Rows(split.images)
        self.labels = torch.from_numpy(split.labels).to(device)
        self.device = device
        self.workers = gather_workers(workers, device)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order: list[torch.Tensor]) -> Iterator[Batch]:
        cuda = self.device.type == "cuda"
        # Its own generator: a DataLoader seeds its workers from the global one otherwise, and so would
        # change the dropout masks the model draws from it after each epoch's start.
        loader = DataLoader(self.rows, sampler=[index.cpu().numpy() for index in order], batch_size=None,
                            num_workers=self.workers, pin_memory=cuda, prefetch_factor=4 if self.workers else None,
                            generator=torch.Generator())
        ahead = None  # the next batch, already on its way to the device (non_blocking from pinned memory)
        for index, images in zip(order, loader):
            current, ahead = ahead, (images.to(self.device, non_blocking=cuda), self.labels[index])
            if current is not None:
                yield current
        if ahead is not None:
            yield ahead

    def logits(self, model: nn.Module, rows: slice = slice(None)) -> torch.Tensor:
        return logits_in_chunks(model, self.rows.images[rows], self.device)
