"""``llfc submit sweep`` takes N models by id, name or local file, and ``llfc results`` prints
a sweep's matrices as tables, JSON and CSV; pair kinds still take at most A and B."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from click.testing import CliRunner, Result
from support.client_service import (
    JOB_TIMEOUT_S,
    MLP_ARCH,
    RunningService,
    mlp_state_dict,
    write_mlp_checkpoint,
)

from llfc_client import Client
from llfc_client.cli import main


def _llfc(service: RunningService, *args: str) -> Result:
    env = {"LLFC_URL": service.url, "LLFC_API_KEY": service.api_key}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_submit_sweep_takes_ids_names_and_files_then_results_prints_the_matrices(
    service: RunningService, client: Client, trained_pair: tuple[str, str], tmp_path: Path
) -> None:
    model_a, _ = trained_pair
    named = client.upload_checkpoint(mlp_state_dict(seed=71), MLP_ARCH, name="sweep named")
    path = write_mlp_checkpoint(tmp_path / "sweep-local.safetensors", seed=72)
    submitted = _llfc(
        service, "submit", "sweep", model_a, "sweep named", str(path),
        "--arch", json.dumps(MLP_ARCH), "--dataset", "builtin:digits", "--match", "weight",
        "--param", "max_examples=100", "--wait", "--timeout", str(JOB_TIMEOUT_S),
    )  # fmt: skip
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip().splitlines()[-1]
    job = client.get_job(job_id)
    assert job.kind == "sweep" and job.status == "succeeded", job.error
    assert job.models is not None and job.models[:2] == [model_a, named.id]
    assert job.params["match"] == "weight"

    as_json = json.loads(_llfc(service, "results", job_id, "--format", "json").stdout)
    assert as_json["models"] == job.models
    matched_loss = as_json["matrices"]["matched"]["loss_barrier"]

    table = _llfc(service, "results", job_id)
    assert table.exit_code == 0, table.output
    assert table.stdout.startswith(f"Job {job_id}: sweep, succeeded")
    assert f"  2: {job.models[2]}" in table.stdout
    block = table.stdout.split("loss barrier, matched\n")[1].splitlines()
    assert block[0].split() == ["0", "1", "2"]
    assert block[1].split() == ["0", *(f"{value:.4f}" for value in matched_loss[0])]

    rows = list(
        csv.DictReader(io.StringIO(_llfc(service, "results", job_id, "--format", "csv").stdout))
    )
    assert len(rows) == 2 * 3 * 9
    [entry] = [
        row
        for row in rows
        if (row["pair"], row["metric"], row["model_a"], row["model_b"])
        == ("matched", "loss_barrier", job.models[0], job.models[1])
    ]
    assert float(entry["value"]) == matched_loss[0][1]


def test_a_pair_kind_given_three_models_is_a_usage_error(
    service: RunningService, trained_pair: tuple[str, str]
) -> None:
    refused = _llfc(service, "submit", "analyze", *trained_pair, trained_pair[0])
    assert refused.exit_code == 2
    assert (
        "Analyze jobs take at most two models, A and B, got 3; merge and sweep jobs take more."
        in refused.output
    )


def test_the_client_submits_a_sweep_and_reads_its_pairs_and_heat_map(
    client: Client, trained_pair: tuple[str, str]
) -> None:
    models = [*trained_pair, client.upload_checkpoint(mlp_state_dict(seed=73), MLP_ARCH).id]
    job = client.submit_job(
        "sweep", dataset="builtin:digits", params={"max_examples": 50}, models=models
    )
    assert job.models == models
    job = client.wait(job.id, timeout=JOB_TIMEOUT_S)
    assert job.status == "succeeded", job.error
    assert job.result is not None
    pairs = list(client.iter_sweep_pairs(job.id, page_size=2))
    assert [(pair["index_a"], pair["index_b"]) for pair in pairs] == [(0, 1), (0, 2), (1, 2)]
    assert all(pair["matched"] is None for pair in pairs)
    analysis = client.get_sweep_pair(job.id, 1, 2)
    barrier = job.result["matrices"]["naive"]["loss_barrier"][1][2]
    assert analysis.pairs["naive"].lmc.loss_barrier == barrier == pairs[2]["naive"]["loss_barrier"]
    assert client.get_plot(job.id, "sweep").startswith(b"\x89PNG")
