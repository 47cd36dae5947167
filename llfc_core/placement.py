"""Where a job's examples live while it computes: copied to the device once, or streamed.

An analysis reads its data some 26 times (every LMC alpha, every LLFC pass, BatchNorm
re-estimation, matching features); a blocking ``.to(device)`` of each batch from pageable host
memory copies the dataset that often and stalls the device at every copy. So a dataset held in
memory that fits in a share of the device's free memory is copied there once, and every pass
slices it in place; one that does not fit, or that is generated batch by batch, is streamed
through pinned host memory with asynchronous copies, which overlap the device's work.

On the CPU nothing moves: the dataset is returned as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from llfc_core.data import ArrayDataset, Batch, Dataset, DatasetView, ReshapedDataset

DEVICE_DATA_FRACTION = 0.25
"""The share of the device's free memory a job's examples may take: the rest is for the models,
their activations and the metrics' running sums."""

Placement = Literal["device", "streamed"]


def placement_for(data_bytes: int, free_bytes: int) -> Placement:
    """``"device"`` when ``data_bytes`` fit in :data:`DEVICE_DATA_FRACTION` of ``free_bytes``,
    else ``"streamed"``."""
    return "device" if data_bytes <= DEVICE_DATA_FRACTION * free_bytes else "streamed"


def device_free_bytes(device: torch.device) -> int:
    """The memory the CUDA ``device`` has free now (its caching allocator's reserve excluded)."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def place_dataset(dataset: Dataset, device: torch.device, free_bytes: int | None = None) -> Dataset:
    """``dataset`` with its batches on ``device``: held there whole when it is in memory and
    fits (see :func:`placement_for`; ``free_bytes`` defaults to what the device has free), else
    streamed batch by batch through pinned memory. The same batches, in the same order.
    """
    if device.type == "cpu":
        return dataset
    arrays = _arrays_of(dataset)
    if arrays is not None:
        if is_on(arrays.x.device, device):
            return dataset
        free = device_free_bytes(device) if free_bytes is None else free_bytes
        if placement_for(_held_bytes(arrays), free) == "device":
            return _with_arrays(dataset, _arrays_on(arrays, device))
    if isinstance(dataset, StreamedDataset):
        return dataset
    return StreamedDataset(dataset, device)


def is_on(at: torch.device, device: torch.device) -> bool:
    """Whether a tensor at ``at`` is on ``device`` (a bare ``cuda`` is the current GPU: cuda:0
    in a worker child, which sees only its own)."""
    return at.type == device.type and (device.index is None or at.index == device.index)


def _arrays_of(dataset: Dataset) -> ArrayDataset | None:
    """The in-memory arrays behind ``dataset`` (itself, or what it reshapes), if any."""
    if isinstance(dataset, ReshapedDataset):
        return _arrays_of(dataset.base)
    return dataset if isinstance(dataset, ArrayDataset) else None


def _with_arrays(dataset: Dataset, arrays: ArrayDataset) -> Dataset:
    """``dataset`` reading ``arrays`` instead of the arrays it holds."""
    if isinstance(dataset, ReshapedDataset):
        return ReshapedDataset(
            _with_arrays(dataset.base, arrays), dataset.input_shape, dataset.channels
        )
    return arrays


def _held_bytes(arrays: ArrayDataset) -> int:
    held = arrays.x.nbytes
    return held if arrays.y is arrays.x else held + arrays.y.nbytes


def _arrays_on(arrays: ArrayDataset, device: torch.device) -> ArrayDataset:
    x = arrays.x.to(device)
    # A token dataset's targets are its inputs: one copy serves both.
    y = x if arrays.y is arrays.x else arrays.y.to(device)
    return ArrayDataset(x, y, arrays.name, arrays.kind)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``: to a GPU through pinned memory without blocking the host (the
    pinned copy stays alive until the transfer ends: torch's host allocator records it)."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@dataclass(frozen=True)
class StreamedDataset(DatasetView):
    """Another dataset whose batches are copied to ``device`` as they are read."""

    device: torch.device

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.base.input_shape

    def limit(self, max_examples: int | None) -> StreamedDataset:
        return StreamedDataset(self.base.limit(max_examples), self.device)

    def _moved(self, batch: Batch) -> Batch:
        x, y = batch
        return to_device(x, self.device), to_device(y, self.device)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for batch in self.base.batches(batch_size):
            yield self._moved(batch)

    def shuffled_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        for batch in self.base.shuffled_batches(batch_size, generator):
            yield self._moved(batch)
