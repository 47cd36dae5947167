"""A job's inputs as its executor sees them: the job as claimed, its models and datasets loaded
from the blob store, limited to the examples it may use and fitted to its arch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llfc_core.archs import Architecture
from llfc_core.checkpoints import load_safetensors
from llfc_core.data import Dataset, fit_to_arch, load_builtin, open_normalised, read_arrays
from llfc_core.errors import DatasetError, LLFCError
from llfc_core.permutation import StateDict
from llfc_core.precision import DEFAULT_PRECISION, Precision
from llfc_core.progress import Reporter
from service.core.config import Settings
from service.datasets import BUILTIN_PREFIX, is_builtin
from service.db.models import Checkpoint, Job
from service.db.models import Dataset as DatasetRow
from service.db.session import session_scope
from service.storage import BlobStore


@dataclass
class JobContext:
    """Everything an executor needs: the job as claimed, its inputs' locations, a reporter,
    and the float32 precision the job runs under (``llfc_core/precision.py``)."""

    job: Job
    arch: Architecture
    settings: Settings
    store: BlobStore
    reporter: Reporter
    device: torch.device
    precision: Precision = DEFAULT_PRECISION

    def load_model(self, checkpoint_id: str | None) -> StateDict:
        assert checkpoint_id is not None
        with session_scope() as session:
            checkpoint = session.get(Checkpoint, checkpoint_id)
            if checkpoint is None:
                raise LLFCError(f"The checkpoint {checkpoint_id} was deleted before the job ran.")
            blob = checkpoint.blob_sha256
        return load_safetensors(self.store.local_path(blob))

    def load_dataset(self, split: str | None = None) -> Dataset:
        """The job's dataset (a built-in's ``split``, an upload whole), limited and fitted."""
        if self.job.dataset_ref is None:
            raise DatasetError("This job has no dataset.")
        return self._load(self.job.dataset_ref, split or self.job.params.get("split", "train"))

    def load_train_dataset(self) -> Dataset | None:
        """The job's ``train_dataset`` (a built-in's train split, an upload whole), limited and
        fitted; None when the job names none."""
        ref = self.job.train_dataset_ref
        return None if ref is None else self._load(ref, "train")

    def load_side_data(self) -> Dataset | None:
        """The data for BatchNorm re-estimation and activation matching of a match or
        interpolate job: its ``train_dataset``, else its dataset, else None."""
        train_dataset = self.load_train_dataset()
        if train_dataset is not None or self.job.dataset_ref is None:
            return train_dataset
        return self.load_dataset()

    def _load(self, ref: str, split: str) -> Dataset:
        requested = self.job.params.get("max_examples") or self.settings.max_examples
        max_examples = min(requested, self.settings.max_examples)
        if is_builtin(ref):
            builtin = load_builtin(
                ref[len(BUILTIN_PREFIX) :], split, root=self.settings.resolved_datasets_root
            )
            return fit_to_arch(self.arch, builtin.limit(max_examples))
        with session_scope() as session:
            row = session.get(DatasetRow, ref)
            if row is None:
                raise DatasetError(f"The dataset {ref} was deleted before the job ran.")
            upload_sha256, normalised_sha256 = row.sha256, row.blob_sha256
        if normalised_sha256 is not None:
            # Only the examples the job uses are read: the rest stay on disk, unmapped.
            dataset = open_normalised(self.store.local_path(normalised_sha256), max_examples, ref)
        else:
            # A row from before normalised copies: its upload, read whole, then limited.
            dataset = read_arrays(
                self.store.local_path(upload_sha256),
                self.settings.max_upload_bytes,
                self.settings.max_dataset_expansion,
            ).limit(max_examples)
        return fit_to_arch(self.arch, dataset)

    @property
    def uses_builtin_dataset(self) -> bool:
        return bool(self.job.dataset_ref and is_builtin(self.job.dataset_ref))
