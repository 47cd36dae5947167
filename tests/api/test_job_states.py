"""Job kinds and statuses: one enum each (``llfc_results.jobs``, in the client distribution, which
imports nothing of the server) used by the server and the client, stored as the strings the
migrations created."""

from __future__ import annotations

from llfc_client import models as client_models
from service.api.problems import ERROR_TYPES
from service.db.models import JobKind, JobStatus
from service.errors import ServiceError


def test_the_client_and_the_server_share_one_definition_of_job_kinds_and_statuses() -> None:
    assert client_models.JobKind is JobKind
    assert client_models.JobStatus is JobStatus
    assert {"succeeded", "failed", "cancelled"} == client_models.FINISHED_STATUSES


def test_the_stored_strings_are_those_of_the_first_schema_and_new_kinds_follow() -> None:
    # Kinds are stored as text (no enum type): a new kind is appended, no migration needed.
    assert list(JobKind) == ["match", "interpolate", "analyze", "train", "sweep", "merge"]
    assert list(JobStatus) == ["queued", "running", "succeeded", "failed", "cancelled"]


def test_every_domain_error_has_its_own_status_and_problem_type() -> None:
    def subclasses(base: type[ServiceError]) -> set[type[ServiceError]]:
        found = set(base.__subclasses__())
        for sub in list(found):
            found |= subclasses(sub)
        return found

    assert subclasses(ServiceError) <= set(ERROR_TYPES)
