"""The 'repair' parameter of interpolate, match and analyze jobs, over real HTTP against the real
worker: what is stored and reported equals the engine's repaired midpoint, and bad requests are
refused with a sentence."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import torch
from support.api import mlp_arch, mlp_state, read_safetensors, run_job, submit, upload_mlp

from llfc_core.archs import parse_arch
from llfc_core.data import digits
from llfc_core.interpolation import interpolate_states
from llfc_core.repair import interpolate_checkpoint
from llfc_core.training import evaluate

WIDTHS = [64, 32, 32, 10]
CPU = torch.device("cpu")


def _checkpoint(http: httpx.Client, checkpoint_id: str) -> dict[str, torch.Tensor]:
    return read_safetensors(http.get(f"/v1/checkpoints/{checkpoint_id}/file").content)


def _run_on_digits(
    http: httpx.Client, kind: str, seeds: tuple[int, int], params: dict[str, Any]
) -> dict[str, Any]:
    """A ``kind`` job on two uploaded MLPs initialised from ``seeds``, with the digits as data."""
    model_a, model_b = (upload_mlp(http, WIDTHS, seed) for seed in seeds)
    body = {
        "kind": kind,
        "model_a": model_a,
        "model_b": model_b,
        "dataset": "builtin:digits",
        "params": params,
    }
    return run_job(http, body)


def test_an_interpolate_job_stores_the_engines_repaired_midpoint(alice: httpx.Client) -> None:
    job = _run_on_digits(alice, "interpolate", (51, 52), {"alpha": 0.5, "repair": "repair"})
    assert job["result"]["repair"] == "repair"
    assert job["result"]["batch_norm_reestimated"] is False
    stored = _checkpoint(alice, job["artifacts"][0]["checkpoint_id"])

    arch = parse_arch(mlp_arch(WIDTHS))
    state_a, state_b = mlp_state(WIDTHS, 51), mlp_state(WIDTHS, 52)
    engine = interpolate_checkpoint(arch, state_a, state_b, 0.5, digits("train"), "repair")
    test = digits("test")
    stored_loss, stored_error = evaluate(arch, stored, test, device=CPU)
    engine_loss, engine_error = evaluate(arch, engine, test, device=CPU)
    assert stored_loss == pytest.approx(engine_loss, rel=1e-5)
    assert stored_error == pytest.approx(engine_error, abs=1e-9)
    # The repair is folded into the weights: the stored model is not the plain average.
    plain = interpolate_states(state_a, state_b, 0.5)
    assert not torch.allclose(stored["0.weight"], plain["0.weight"], rtol=1e-3)
    assert torch.equal(stored["4.weight"], plain["4.weight"])  # the logits are no repair site


def test_a_match_job_with_repair_reports_its_repaired_midpoint(alice: httpx.Client) -> None:
    job = _run_on_digits(alice, "match", (53, 54), {"repair": "repair"})
    midpoint = job["result"]["midpoint"]
    assert set(midpoint) == {"repair", "loss", "error"} and midpoint["repair"] == "repair"

    arch = parse_arch(mlp_arch(WIDTHS))
    permuted_b = _checkpoint(alice, job["artifacts"][0]["checkpoint_id"])
    train = digits("train")
    engine = interpolate_checkpoint(
        arch, mlp_state(WIDTHS, 53), permuted_b, 0.5, train, "repair", device=CPU
    )
    loss, error = evaluate(arch, engine, train, device=CPU)
    assert midpoint["loss"] == pytest.approx(loss, rel=1e-5)
    assert midpoint["error"] == pytest.approx(error, abs=1e-9)


def test_a_match_job_without_repair_reports_no_midpoint(alice: httpx.Client) -> None:
    model_a, model_b = upload_mlp(alice, WIDTHS, 55), upload_mlp(alice, WIDTHS, 56)
    job = run_job(alice, {"kind": "match", "model_a": model_a, "model_b": model_b})
    assert "midpoint" not in job["result"]


def test_bad_repair_requests_are_refused_with_a_sentence(alice: httpx.Client) -> None:
    model_a, model_b = upload_mlp(alice, WIDTHS, 57), upload_mlp(alice, WIDTHS, 58)
    pair = {"model_a": model_a, "model_b": model_b}
    with_data = {**pair, "dataset": "builtin:digits"}
    cases = [
        (
            {"kind": "interpolate", **with_data, "params": {"repair": "renormalise"}},
            "invalid-parameter",
            "'repair' must be one of none, reset, repair",
        ),
        (
            {"kind": "match", **with_data, "params": {"repair": ["none", "repair"]}},
            "invalid-parameter",
            "'repair' must be one of none, reset, repair",
        ),
        (
            {"kind": "analyze", **with_data, "params": {"repair": ["none", "fix"]}},
            "invalid-parameter",
            "'repair' must be one of none, reset, repair or a non-empty list of them",
        ),
        (
            {"kind": "interpolate", **pair, "params": {"repair": "repair"}},
            "invalid-dataset",
            "needs a 'dataset' to measure REPAIR's statistics on",
        ),
        (
            {"kind": "match", **pair, "params": {"repair": "repair"}},
            "invalid-dataset",
            "needs a 'dataset' to measure the repaired midpoint on",
        ),
        (
            {"kind": "analyze", **with_data, "params": {"repair": "repair", "reset_bn": True}},
            "invalid-parameter",
            "give only 'repair'",
        ),
    ]
    for body, problem_type, sentence in cases:
        response = submit(alice, body)
        assert response.status_code == 422, (body, response.text)
        problem = response.json()
        assert problem["type"] == f"/problems/{problem_type}", (body, problem)
        assert sentence in problem["detail"], (body, problem)
        assert problem["detail"].endswith("."), problem
