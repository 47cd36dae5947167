"""A real embedded service (``llfc serve``, auth on) for the client and CLI tests, one per session.

Two small digit MLPs trained by the service itself, and a weight-matched analysis of them, are
shared by the tests that need them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.client_service import JOB_TIMEOUT_S, MLP_ARCH, SERVICE_SETTINGS, RunningService
from support.servers import serve

from llfc_client import Client, Job


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    data_dir = tmp_path_factory.mktemp("llfc-client-data")
    with serve(data_dir, ["client-tests"], data_dir / "serve.log", **SERVICE_SETTINGS) as served:
        yield RunningService(served.base_url, served.keys["client-tests"])


@pytest.fixture()
def client(service: RunningService) -> Iterator[Client]:
    with Client(service.url, service.api_key) as connected:
        yield connected


@pytest.fixture(scope="session")
def train_job(service: RunningService) -> Job:
    """A finished train job: two MLP 64-32-10 modes trained on digits for 2 epochs."""
    with Client(service.url, service.api_key) as client:
        job = client.submit_job(
            "train", dataset="builtin:digits", params={"arch": MLP_ARCH, "epochs": 2, "seed": 3}
        )
        job = client.wait(job.id, timeout=JOB_TIMEOUT_S)
    assert job.status == "succeeded", job.error
    return job


@pytest.fixture(scope="session")
def trained_pair(train_job: Job) -> tuple[str, str]:
    """Checkpoint ids of the two modes of ``train_job``."""
    model_a, model_b = (artifact.checkpoint_id for artifact in train_job.artifacts)
    assert model_a and model_b
    return model_a, model_b


@pytest.fixture(scope="session")
def analyze_job(service: RunningService, trained_pair: tuple[str, str]) -> Job:
    """A finished weight-matched analysis of the trained pair on the digits test split."""
    with Client(service.url, service.api_key) as client:
        job = client.submit_job("analyze", *trained_pair, "builtin:digits", {"match": "weight"})
        job = client.wait(job.id, timeout=JOB_TIMEOUT_S)
    assert job.status == "succeeded", job.error
    return job
