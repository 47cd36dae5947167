"""The service benchmarks still run: each is run at ``--size tiny`` and its JSON line checked.

They start real servers (``llfc serve``, ``llfc api``, ``llfc worker`` and their baselines), so
each takes seconds; the ones that need PostgreSQL and Redis on 127.0.0.1 skip without them.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = REPOSITORY_ROOT / "benchmarks"


def _run(name: str, *arguments: str) -> list[dict[str, Any]]:
    # As benchmarks/RESULTS.md runs them: with tests/ on the path for the shared server helpers,
    # then the caller's path (a worktree's checkout on it is then what runs, not the install's).
    path = [str(REPOSITORY_ROOT / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--size", "tiny", *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_service_upload_stores_the_checkpoint_and_reports_speed_memory_and_phases() -> None:
    [record] = _run("service_upload")
    assert record["benchmark"] == "service_upload"
    # 2048-2048-2048-10 in float32, plus the safetensors header.
    num_params = 2 * (2048 * 2048 + 2048) + 2048 * 10 + 10
    assert num_params * 4 < record["file_bytes"] < num_params * 4 + 4096
    for side in ("ours", "baseline"):
        measured = record[side]
        assert measured["seconds"] > 0
        assert measured["mb_per_s"] == pytest.approx(
            record["file_bytes"] / measured["seconds"] / 1e6, rel=0.01, abs=0.1
        )
        assert measured["rss_growth_mib"] >= 0
    assert record["ratio_mb_per_s"] == pytest.approx(
        record["ours"]["mb_per_s"] / record["baseline"]["mb_per_s"], abs=0.002
    )
    # The phases, seen from outside, cover the whole request one after the other.
    phases = record["ours"]["phases"]
    assert phases["stream"]["seconds"] > 0
    split = [phase["seconds"] for name, phase in phases.items() if name != "sample_interval_s"]
    assert len(split) >= 2
    assert sum(split) == pytest.approx(record["ours"]["seconds"], abs=0.01)


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.slow
def test_service_polling_reads_the_queued_job_under_load_in_every_mode() -> None:
    modes = ["postgres", "sqlite"] if _reachable(5432) else ["sqlite"]
    records = _run("service_polling", "--modes", ",".join(modes))
    assert [record["mode"] for record in records] == modes
    for record in records:
        assert record["benchmark"] == "service_polling"
        assert record["job_status"] == "queued"
        assert record["connections"] == 32
        for side in ("ours", "baseline"):
            measured = record[side]
            assert measured["all_200"], record
            assert measured["requests"] > 0
            assert measured["requests_per_s"] > 0
            percentiles = [measured[name] for name in ("p50_ms", "p90_ms", "p99_ms", "max_ms")]
            assert percentiles == sorted(percentiles)
        assert record["ratio_requests_per_s"] == pytest.approx(
            record["ours"]["requests_per_s"] / record["baseline"]["requests_per_s"], abs=0.002
        )


@pytest.mark.slow
@pytest.mark.postgres
def test_service_latency_times_every_job_from_submission_to_running() -> None:
    if not (_reachable(5432) and _reachable(6379)):
        pytest.skip("PostgreSQL and Redis are not running on 127.0.0.1")
    [record] = _run("service_latency")
    assert record["benchmark"] == "service_latency"
    assert record["jobs"] == 3
    ours, baseline = record["ours"], record["baseline"]
    for measured in (ours, baseline, ours["created_to_running"], ours["post_round_trip"]):
        assert measured["min_ms"] <= measured["p50_ms"] <= measured["p90_ms"] <= measured["max_ms"]
    # A job cannot run before it was submitted, nor before its row existed.
    assert ours["min_ms"] > 0
    assert ours["created_to_running"]["min_ms"] > 0
    # Sent-to-running spans the answer: the POST round trip plus answered-to-running.
    assert ours["answered_to_running"]["max_ms"] < ours["max_ms"]
    assert record["ratio_p50"] == pytest.approx(
        ours["p50_ms"] / baseline["p50_ms"], rel=0.01, abs=0.01
    )


@pytest.mark.slow
def test_service_path_times_the_job_and_the_engine_alone_on_the_same_data() -> None:
    [record] = _run("service_path")
    assert record["benchmark"] == "service_path"
    assert record["examples"] == 300
    for side in ("ours", "baseline"):
        runs = record[side]["runs_s"]
        assert len(runs) == record["repeats"] >= 1
        assert all(run > 0 for run in runs)
        assert record[side]["median_s"] == pytest.approx(statistics.median(runs), abs=1e-4)
    assert record["ratio_median"] == pytest.approx(
        record["ours"]["median_s"] / record["baseline"]["median_s"], abs=0.002
    )
    assert record["ratio_paired_median"] == pytest.approx(
        statistics.median(
            ours / engine
            for ours, engine in zip(
                record["ours"]["runs_s"], record["baseline"]["runs_s"], strict=True
            )
        ),
        abs=0.01,
    )
    assert record["met"] == (record["ratio_median"] <= record["target_ratio"])


@pytest.mark.slow
def test_service_sweep_times_one_sweep_against_its_pairs_analyze_jobs_with_equal_numbers() -> None:
    [record] = _run("service_sweep")
    assert record["benchmark"] == "service_sweep"
    assert (record["models"], record["pairs"]) == (6, 15)
    # 15 pairs, 2 pair kinds, 3 metrics, each entry and its mirror: all compared equal.
    assert record["entries_compared_equal"] == 15 * 2 * 3 * 2
    for side in ("ours", "baseline"):
        runs = record[side]["runs_s"]
        assert len(runs) == record["repeats"] >= 1
        assert all(run > 0 for run in runs)
        assert record[side]["job_seconds_median"] > 0
    assert record["speedup_median"] == pytest.approx(
        record["baseline"]["median_s"] / record["ours"]["median_s"], abs=0.002
    )
    assert record["met"] == (record["speedup_median"] >= record["target_speedup"])


@pytest.mark.slow
def test_service_waiting_compares_long_polls_with_polling_on_every_database() -> None:
    modes = ["postgres", "sqlite"] if _reachable(5432) else ["sqlite"]
    [record] = _run("service_waiting", "--modes", ",".join(modes))
    assert record["benchmark"] == "service_waiting"
    assert (record["jobs"], record["clients"]) == (64, 32)
    assert list(record["databases"]) == modes
    for compared in record["databases"].values():
        long_poll, polling = compared["long_poll"], compared["polling"]
        for measured in (long_poll, polling):
            delays = measured["delay_ms"]
            assert 0 <= delays["p50"] <= delays["p99"] <= delays["max"]
            assert measured["requests"] >= record["jobs"]
            assert measured["server_cpu_ms_per_wait"] == pytest.approx(
                measured["server_cpu_s"] / record["jobs"] * 1e3, abs=0.01
            )
        # A long poll is answered when its job ends; a poll waits for its next Retry-After.
        assert long_poll["requests_per_wait"] < 1.5
        assert long_poll["delay_ms"]["p50"] < polling["delay_ms"]["p50"]
        assert compared["meets_targets"]["p99_delay_ms"] == (
            long_poll["delay_ms"]["p99"] < record["targets"]["p99_delay_ms"]
        )
