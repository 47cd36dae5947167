"""docs/API.md is the contract, checked against what the running service serves.

Every route of the served /openapi.json is named in docs/API.md; every route it names is served,
or listed under "Not served yet" and then really not served; the keys of the documented analyze
result are those of a real analyze job's result, and the metrics route's paragraph names every
metric that job's rows hold.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.api import run_job, upload_mlp

API_DOC = (Path(__file__).resolve().parents[2] / "docs" / "API.md").read_text()
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
ROUTE = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s?]*)(\?[^`\s]*)?")
"""A route named in the doc, with its query if it names one (a parameter of the route)."""
NOT_SERVED_HEADING = "## Not served yet"


def _route(method: str, path: str) -> tuple[str, str]:
    """A route with its path parameters unnamed: `/v1/jobs/{job_id}` and `/v1/jobs/{id}` agree."""
    return method.upper(), re.sub(r"\{[^}]*\}", "{}", path)


def _documented(text: str, with_query: bool = True) -> set[tuple[str, str]]:
    """The routes ``text`` names; without those named with a query when ``with_query`` is
    False (under "Not served yet", a query names a parameter not served on a served route)."""
    return {
        _route(method, path)
        for method, path, query in ROUTE.findall(text)
        if with_query or not query
    }


@pytest.fixture(scope="module")
def served_routes(alice: httpx.Client) -> set[tuple[str, str]]:
    spec = alice.get("/openapi.json").json()
    return {
        _route(method, path)
        for path, operations in spec["paths"].items()
        for method in operations
        if method.upper() in HTTP_METHODS
    }


def test_every_served_route_is_documented(served_routes: set[tuple[str, str]]) -> None:
    served_part = API_DOC.split(NOT_SERVED_HEADING)[0]
    assert served_routes - _documented(served_part) == set()


def test_every_documented_route_is_served_or_marked_not_served_yet(
    served_routes: set[tuple[str, str]],
) -> None:
    served_part, not_served_part = API_DOC.split(NOT_SERVED_HEADING)
    assert _documented(served_part) - served_routes == set()
    not_served = _documented(not_served_part, with_query=False)
    assert not_served & served_routes == set(), "a route marked not served yet is served"


def test_the_pages_the_contract_names_are_served(alice: httpx.Client) -> None:
    for page in ("/", "/docs", "/openapi.json"):
        assert alice.get(page).status_code == 200, page


def _keys(value: Any) -> set[str]:
    """Every mapping key in ``value``, at any depth, but alphas ("0.5"): those are data."""
    if isinstance(value, dict):
        keys = {key for key in value if not re.fullmatch(r"[0-9.e+-]+", key)}
        return keys.union(*(_keys(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(item) for item in value))
    return set()


def _documented_result_keys() -> tuple[set[str], set[str]]:
    """The quoted keys of the analyze-result block: (served, marked not served yet)."""
    section = API_DOC.split("### The analyze result", 1)[1]
    block = section.split("```", 2)[1]
    served, not_served = set(), set()
    for line in block.splitlines():
        keys = set(re.findall(r'"([a-z_]+)"', line)) - {"name"}
        (not_served if "not served yet" in line else served).update(keys)
    return served, not_served - served


def test_the_documented_analyze_result_has_the_keys_of_a_real_one(alice: httpx.Client) -> None:
    widths = [64, 16, 16, 10]
    job = run_job(
        alice,
        {
            "kind": "analyze",
            "model_a": upload_mlp(alice, widths, 1),
            "model_b": upload_mlp(alice, widths, 2),
            "dataset": "builtin:digits",
            # A list of repairs: the result then holds every documented key.
            "params": {"match": "weight", "max_examples": 64, "repair": ["none", "repair"]},
        },
    )
    assert job["status"] == "succeeded", job["error"]
    real = _keys(job["result"])
    documented, not_served = _documented_result_keys()
    assert real - documented == set(), "result keys missing from docs/API.md"
    assert documented - real == set(), "docs/API.md documents keys a result does not have"
    assert not_served & real == set(), "a result key marked not served yet is served"
    served_metrics = {
        row["metric"] for row in alice.get(f"/v1/jobs/{job['id']}/metrics").json()["items"]
    }
    # A repair's rows are documented once, as `<repair>_lmc_loss` and so on.
    spelled = {re.sub(r"^(none|reset|repair)_", "<repair>_", metric) for metric in served_metrics}
    metrics_route = API_DOC[API_DOC.index("`GET /v1/jobs/{id}/metrics") :]
    metrics_route = metrics_route[: metrics_route.index("\n\n")]
    assert {m for m in spelled if f"`{m}`" not in metrics_route} == set(), (
        "metrics the route serves that its paragraph in docs/API.md does not name"
    )
