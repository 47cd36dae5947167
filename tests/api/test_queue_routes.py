"""Routing jobs to queues by device (LLFC_QUEUE_ROUTES): each default rule, the fallback, rules
from the environment, and the settings refused at start with a sentence."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from support.servers import llfc, service_env

from service.broker import celery_queue, consumed_celery_queues
from service.core.config import Settings
from service.db.models import JobKind
from service.routing import JobTraits, job_method, route_job

SMALL = 100_000
MIB = 1024**2


@pytest.fixture(autouse=True)
def no_llfc_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LLFC_"):
            monkeypatch.delenv(name)


def _queue(
    settings: Settings,
    kind: JobKind,
    params: dict[str, str],
    num_params: int = SMALL,
    memory_bytes: int = MIB,
) -> str:
    traits = JobTraits(kind, job_method(kind, params), num_params, memory_bytes)
    return route_job(settings.queue_routes, traits)


@pytest.mark.parametrize(
    ("kind", "params", "num_params", "queue"),
    [
        (JobKind.TRAIN, {}, SMALL, "gpu"),
        (JobKind.MATCH, {"method": "ste"}, SMALL, "gpu"),
        (JobKind.ANALYZE, {"match": "ste"}, SMALL, "gpu"),
        (JobKind.SWEEP, {"match": "ste"}, SMALL, "gpu"),
        (JobKind.INTERPOLATE, {}, 5_000_000, "gpu"),
        (JobKind.MERGE, {"method": "weight_average"}, 5_000_000, "gpu"),
        (JobKind.MATCH, {"method": "weight"}, 4_999_999, "cpu"),
        (JobKind.ANALYZE, {"match": "activation"}, SMALL, "cpu"),
        (JobKind.INTERPOLATE, {}, SMALL, "cpu"),
        (JobKind.MERGE, {"method": "feature_average"}, SMALL, "cpu"),
    ],
)
def test_the_default_rules_send_training_ste_and_large_models_to_gpu(
    kind: JobKind, params: dict[str, str], num_params: int, queue: str
) -> None:
    assert _queue(Settings(), kind, params, num_params) == queue


def test_rules_from_the_environment_apply_in_order_and_the_last_catches_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routes = [
        {"queue": "big", "min_memory_bytes": 8 * MIB},
        {"queue": "gpu", "kinds": ["train", "merge"], "methods": ["feature_average"]},
        {"queue": "gpu", "kinds": ["train"]},
        {"queue": "small"},
    ]
    monkeypatch.setenv("LLFC_QUEUE_ROUTES", json.dumps(routes))
    settings = Settings()
    assert settings.routed_queues == ["big", "gpu", "small"]
    assert settings.consumed_queues == ["big", "gpu", "small"]
    # The first rule that matches wins, even over a later one naming the kind.
    assert _queue(settings, JobKind.TRAIN, {}, memory_bytes=8 * MIB) == "big"
    assert _queue(settings, JobKind.TRAIN, {}) == "gpu"
    # Every condition of a rule must hold: the kind alone, or the method alone, is not enough.
    assert _queue(settings, JobKind.MERGE, {"method": "feature_average"}) == "gpu"
    assert _queue(settings, JobKind.MERGE, {"method": "weight_average"}) == "small"
    assert _queue(settings, JobKind.MATCH, {"method": "ste"}, 10**9) == "small"


def test_a_worker_consumes_the_queues_it_names_and_the_legacy_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLFC_WORKER_QUEUES", " cpu, cpu ,gpu")
    settings = Settings()
    assert settings.consumed_queues == ["cpu", "gpu"]
    assert consumed_celery_queues(settings.consumed_queues) == ["llfc", "llfc.cpu", "llfc.gpu"]
    assert celery_queue("gpu") == "llfc.gpu"


@pytest.mark.parametrize(
    ("routes", "sentence"),
    [
        ([{"queue": "gpu", "kinds": ["train"]}], "must end with a rule without conditions"),
        ([], "must end with a rule without conditions"),
        ([{"queue": "gpu", "methods": ["sgd"]}, {"queue": "cpu"}], "'sgd' is not a method"),
        ([{"queue": "gpu", "kinds": ["fit"]}, {"queue": "cpu"}], "kinds"),
        ([{"queue": "gpu", "kind": ["train"]}, {"queue": "cpu"}], "Extra inputs"),
        ([{"queue": "GPU queue"}], "pattern"),
        ([{"queue": "gpu", "min_params": 0}, {"queue": "cpu"}], "greater than or equal to 1"),
    ],
)
def test_bad_routes_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, routes: list[dict[str, object]], sentence: str
) -> None:
    monkeypatch.setenv("LLFC_QUEUE_ROUTES", json.dumps(routes))
    with pytest.raises(ValidationError, match="queue_routes") as refused:
        Settings()
    assert sentence in str(refused.value)


@pytest.mark.parametrize("listed", ["", " , ", "gpu;cpu", "GPU"])
def test_bad_worker_queues_are_refused_at_start(listed: str) -> None:
    with pytest.raises(ValidationError, match="LLFC_WORKER_QUEUES must list queue names"):
        Settings(worker_queues=listed)


@pytest.mark.parametrize(
    ("routes", "fragment"),
    [
        ("[{'queue': 'gpu'}]", "queue_routes"),
        ('[{"queue": "gpu", "kinds": ["train"]}]', "must end with a rule without conditions"),
    ],
)
def test_the_cli_refuses_bad_routes_in_one_line(tmp_path: Path, routes: str, fragment: str) -> None:
    refused = llfc("migrate", env=service_env(tmp_path, LLFC_QUEUE_ROUTES=routes))
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith("Error: Invalid configuration:")
    assert fragment in lines[0]
