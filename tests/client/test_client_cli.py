"""The ``llfc`` client commands against a running embedded service, and their pure helpers."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import load_file
from support import servers
from support.client_service import (
    JOB_TIMEOUT_S,
    MLP_ARCH,
    SERVICE_SETTINGS,
    RunningService,
    mlp_state_dict,
    write_mlp_checkpoint,
)

from llfc_cli.embedded import free_port
from llfc_client import Client, Job, Progress
from llfc_client.cli import main
from llfc_client.cli.commands import ProgressDisplay, build_params

Cli = Callable[..., Result]


@pytest.fixture()
def llfc(service: RunningService) -> Cli:
    """Run ``llfc ARGS`` in-process against the test service (via LLFC_URL / LLFC_API_KEY)."""
    runner = CliRunner()
    env = {"LLFC_URL": service.url, "LLFC_API_KEY": service.api_key}

    def invoke(*args: str) -> Result:
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    return invoke


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def a_job(status: str, fraction: float, stage: str) -> Job:
    return Job(
        id="job_1",
        kind="train",
        status=status,
        progress=Progress(fraction, stage),
        error=None,
        created_at=None,
        started_at=None,
        finished_at=None,
        result=None,
        artifacts=[],
    )


# --- Pure helpers ------------------------------------------------------------------------------


def test_params_read_json_values_and_keep_text_otherwise() -> None:
    params = build_params(
        "analyze",
        '{"alphas": [0, 1], "split": "train"}',
        ["split=test", "max_examples=100", "llfc_alphas=[0.5]"],
        "weight",
    )
    assert params == {
        "alphas": [0, 1],
        "split": "test",
        "max_examples": 100,
        "llfc_alphas": [0.5],
        "match": "weight",
    }


def test_match_option_is_the_method_of_a_match_job_and_refused_for_train() -> None:
    assert build_params("match", None, [], "activation") == {"method": "activation"}
    with pytest.raises(click.BadParameter, match="train"):
        build_params("train", None, [], "weight")
    with pytest.raises(click.BadParameter, match="key=value"):
        build_params("train", None, ["epochs"], None)


def test_progress_on_a_terminal_rewrites_one_bar_line_with_the_stage() -> None:
    stream = io.StringIO()
    display = ProgressDisplay(stream, interactive=True)
    display(a_job("running", 0.5, "training epoch 1/2"))
    display(a_job("succeeded", 1.0, "done"))
    display.close()
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    first, second = text.split("\r")[1:]
    assert "[" + "#" * 14 + "-" * 14 + "]  50%  running: training epoch 1/2" in first
    assert "100%  succeeded: done" in second


def test_progress_in_a_log_prints_a_line_per_stage_or_tenth() -> None:
    stream = io.StringIO()
    display = ProgressDisplay(stream, interactive=False)
    steps = ((0.0, "queued"), (0.01, "queued"), (0.3, "epoch 1"), (0.35, "epoch 1"))
    for fraction, stage in steps:
        display(a_job("running", fraction, stage))
    display.close()
    assert stream.getvalue().splitlines() == [
        "job_1 running   0% queued",
        "job_1 running  30% epoch 1",
    ]


# --- Against the running service ---------------------------------------------------------------


def test_upload_prints_the_checkpoint_id_alone_on_stdout(
    llfc: Cli, client: Client, tmp_path: Path
) -> None:
    path = write_mlp_checkpoint(tmp_path / "a.safetensors", seed=51)
    result = llfc("upload", str(path), "--arch", json.dumps(MLP_ARCH), "--name", "cli mode")
    assert result.exit_code == 0, result.output
    checkpoint = client.get_checkpoint(result.stdout.strip())
    assert checkpoint.name == "cli mode"
    assert "2,410 parameters" in result.stderr


def test_upload_reads_the_arch_from_a_file(llfc: Cli, client: Client, tmp_path: Path) -> None:
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(MLP_ARCH))
    path = write_mlp_checkpoint(tmp_path / "b.safetensors", seed=52)
    result = llfc("upload", str(path), "--arch", f"@{arch_file}")
    assert result.exit_code == 0, result.output
    assert client.get_checkpoint(result.stdout.strip()).arch == MLP_ARCH


def test_upload_of_a_checkpoint_that_does_not_fit_fails_with_one_line(
    llfc: Cli, tmp_path: Path
) -> None:
    path = write_mlp_checkpoint(tmp_path / "c.safetensors", seed=53)
    result = llfc("upload", str(path), "--arch", '{"name": "mlp", "widths": [64, 16, 10]}')
    assert_one_line_error(result, "0.weight")
    assert result.stdout == ""


def write_class_style_mlp(path: Path, seed: int) -> dict[str, str]:
    """MLP_ARCH's model saved under a lab's names (fc1, out) with torch.save; returns the
    renaming to the arch's names."""
    state = mlp_state_dict(seed)
    renaming = {name: name.replace("0.", "fc1.", 1) for name in state if name.startswith("0.")}
    renaming |= {name: name.replace("2.", "out.", 1) for name in state if name.startswith("2.")}
    torch.save({renaming[name]: tensor for name, tensor in state.items()}, path)
    return {lab_name: arch_name for arch_name, lab_name in renaming.items()}


def test_upload_of_a_class_style_model_says_how_to_rename_then_by_order_stores_it(
    llfc: Cli, client: Client, tmp_path: Path
) -> None:
    path = tmp_path / "lab.pt"
    renaming = write_class_style_mlp(path, seed=54)
    refused = llfc("upload", str(path), "--arch", json.dumps(MLP_ARCH))
    assert_one_line_error(refused, "fc1 -> 0, out -> 2", 'key_map "by_order"')
    result = llfc("upload", str(path), "--arch", json.dumps(MLP_ARCH), "--key-map", "by_order")
    assert result.exit_code == 0, result.output
    assert "4 tensors renamed" in result.stderr
    assert client.get_checkpoint(result.stdout.strip()).key_map == renaming
    shown = llfc("checkpoints", "show", result.stdout.strip())
    assert "renamed: fc1.weight -> 0.weight" in shown.stdout


def test_upload_reads_an_explicit_key_map_from_a_file(
    llfc: Cli, client: Client, tmp_path: Path
) -> None:
    path = tmp_path / "lab.pt"
    renaming = write_class_style_mlp(path, seed=55)
    key_map_file = tmp_path / "key_map.json"
    key_map_file.write_text(json.dumps(renaming))
    result = llfc(
        "upload", str(path), "--arch", json.dumps(MLP_ARCH), "--key-map", f"@{key_map_file}"
    )
    assert result.exit_code == 0, result.output
    assert client.get_checkpoint(result.stdout.strip()).key_map == renaming


def test_a_key_map_that_is_not_an_object_of_names_is_refused_before_uploading(
    llfc: Cli, tmp_path: Path
) -> None:
    path = tmp_path / "lab.pt"
    write_class_style_mlp(path, seed=56)
    result = llfc("upload", str(path), "--arch", json.dumps(MLP_ARCH), "--key-map", "[1]")
    assert result.exit_code == 2
    assert "--key-map must be by_order or a JSON object" in result.stderr


def test_upload_of_a_missing_file_fails_with_one_line(llfc: Cli, tmp_path: Path) -> None:
    result = llfc("upload", str(tmp_path / "nope.pt"), "--arch", json.dumps(MLP_ARCH))
    assert_one_line_error(result, "nope.pt", "No such file")


def test_upload_dataset_then_datasets_lists_it_with_the_builtins(llfc: Cli, tmp_path: Path) -> None:
    path = tmp_path / "small.npz"
    rng = np.random.default_rng(1)
    np.savez(path, x=rng.random((30, 64), dtype=np.float32), y=np.arange(30) % 3)
    uploaded = llfc("upload-dataset", str(path), "--name", "small")
    assert uploaded.exit_code == 0, uploaded.output
    dataset_id = uploaded.stdout.strip()
    listed = llfc("datasets")
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows[dataset_id][1:] == ["small", "30", "64", "3"]
    assert rows["builtin:digits"][1:] == ["digits", "by", "split", "64", "10"]
    # The test service has no MNIST files, so submitting it would be refused.
    assert rows["builtin:mnist"][1:] == ["mnist", "not", "installed", "1x28x28", "10"]


def test_submit_train_waits_then_results_status_and_download(
    llfc: Cli, client: Client, tmp_path: Path
) -> None:
    submitted = llfc(
        "submit",
        "train",
        "--dataset",
        "builtin:digits",
        "--param",
        "arch=" + json.dumps(MLP_ARCH),
        "--params",
        '{"epochs": 1, "max_examples": 200, "seed": 9}',
        "--wait",
    )
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert f"Job {job_id} succeeded" in submitted.stderr
    job = client.get_job(job_id)
    assert job.params["epochs"] == 1 and job.params["max_examples"] == 200

    shown = llfc("results", job_id)
    assert shown.exit_code == 0, shown.output
    assert "num_examples: 200" in shown.stdout
    modes_table = shown.stdout.split("modes:\n")[1].splitlines()
    assert modes_table[0].split()[:3] == ["name", "train_loss", "train_error"]
    assert [line.split()[0] for line in modes_table[1:3]] == ["model_0", "model_1"]
    for artifact in job.artifacts:
        assert f"{artifact.name}: {artifact.checkpoint_id}" in shown.stdout
    as_csv = dict(csv.reader(io.StringIO(llfc("results", job_id, "--format", "csv").stdout)))
    assert as_csv["num_examples"] == "200"
    assert as_csv["modes.1.name"] == "model_1"
    assert 0.0 <= float(as_csv["modes.1.train_error"]) <= 1.0
    assert as_csv["artifacts.model_1"] == job.artifacts[1].checkpoint_id

    status = llfc("status", job_id)
    assert status.exit_code == 0, status.output
    assert f"Job {job_id}: train, succeeded" in status.stdout
    assert "progress: 100%" in status.stdout
    assert "max_examples: 200" in status.stdout

    downloaded = llfc("download", job_id, "-o", str(tmp_path / "modes"))
    assert downloaded.exit_code == 0, downloaded.output
    paths = [Path(line) for line in downloaded.stdout.splitlines()]
    assert [p.name for p in paths] == [f"{job_id}-model_{i}.safetensors" for i in (0, 1)]
    for path in paths:
        assert sorted(load_file(str(path))) == ["0.bias", "0.weight", "2.bias", "2.weight"]


def test_download_of_a_checkpoint_writes_its_tensors(
    llfc: Cli, trained_pair: tuple[str, str], tmp_path: Path
) -> None:
    dest = tmp_path / "a.safetensors"
    result = llfc("download", trained_pair[0], "-o", str(dest))
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip()) == dest
    assert load_file(str(dest))["0.weight"].shape == (32, 64)


def test_download_of_an_unknown_id_fails_with_one_line(llfc: Cli) -> None:
    assert_one_line_error(llfc("download", "ckpt_nothing"), "No checkpoint or job", "ckpt_nothing")


def test_submit_analyze_then_results_as_table_json_and_csv(
    llfc: Cli, trained_pair: tuple[str, str]
) -> None:
    model_a, model_b = trained_pair
    submitted = llfc(
        "submit", "analyze", model_a, model_b, "--dataset", "builtin:digits",
        "--match", "activation", "--param", "max_examples=300", "--wait",
    )  # fmt: skip
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip().splitlines()[-1]

    as_json = llfc("results", job_id, "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    result = json.loads(as_json.stdout)
    assert set(result["pairs"]) == {"naive", "matched"}
    for pair in result["pairs"].values():
        assert pair["llfc"]["layers"] == ["1", "logits"]
        assert isinstance(pair["lmc"]["loss_barrier"], float)
        assert isinstance(pair["lmc"]["error_barrier"], float)

    table = llfc("results", job_id)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"Job {job_id}: analyze, succeeded")
    [barrier_line] = [line for line in lines if line.startswith("loss barrier")]
    naive, matched = result["pairs"]["naive"]["lmc"], result["pairs"]["matched"]["lmc"]
    expected = [f"{pair['loss_barrier']:.4f}" for pair in (naive, matched)]
    assert barrier_line.split()[2:] == expected
    assert "activation-matched" in table.stdout
    layer_rows = [line.split() for line in lines if line.split()[:1] in (["1"], ["logits"])]
    # Per pair: the LLFC rows of layers 1 and logits; 8 cells with Condition I for the ReLU layer.
    assert [row[0] for row in layer_rows] == ["1", "logits", "1", "logits"]
    cos_ab = result["pairs"]["naive"]["llfc"]["cos_ab"][0]
    assert layer_rows[0][1] == f"{cos_ab:.4f}"
    assert len(layer_rows[0]) == 1 + 1 + 3 + 3

    rows = list(csv.DictReader(io.StringIO(llfc("results", job_id, "--format", "csv").stdout)))
    cos_ab_rows = [r for r in rows if r["metric"] == "cos_ab"]
    assert [(r["pair"], r["layer"]) for r in cos_ab_rows] == [
        ("naive", "1"), ("naive", "logits"), ("matched", "1"), ("matched", "logits")
    ]  # fmt: skip
    [barrier] = [r for r in rows if r["pair"] == "matched" and r["metric"] == "loss_barrier"]
    assert float(barrier["value"]) == pytest.approx(matched["loss_barrier"])
    weak = [r for r in rows if r["metric"] == "weak_additivity" and r["pair"] == "naive"]
    assert sorted(r["alpha"] for r in weak) == ["0.25", "0.5", "0.75"]


def test_jobs_lists_newest_first_and_filters_by_kind(llfc: Cli, analyze_job: Job) -> None:
    result = llfc("jobs", "--kind", "analyze", "--limit", "200")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert analyze_job.id in [row[0] for row in rows]
    assert {row[1] for row in rows} == {"analyze"}
    succeeded = llfc("jobs", "--status", "succeeded")
    assert {line.split()[2] for line in succeeded.stdout.splitlines()[1:]} == {"succeeded"}


def test_wait_on_a_finished_job_exits_zero(llfc: Cli, analyze_job: Job) -> None:
    result = llfc("wait", analyze_job.id)
    assert result.exit_code == 0, result.output
    assert f"Job {analyze_job.id} succeeded" in result.stderr


def test_wait_follows_the_event_stream_to_the_end(
    llfc: Cli, client: Client, trained_pair: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_polling(*_args: object, **_kwargs: object) -> Job:
        raise AssertionError("llfc wait polled instead of following the events")

    monkeypatch.setattr(Client, "wait", no_polling)
    job = client.submit_job("analyze", *trained_pair, "builtin:digits", {"match": "none"})
    result = llfc("wait", job.id, "--timeout", str(JOB_TIMEOUT_S))
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"Job {job.id} succeeded in")
    # Off a terminal, a line per stage or tenth done, the last one the finished job's.
    progress = [line.split() for line in lines[:-1]]
    assert {line[0] for line in progress} == {job.id}
    assert progress[-1][1:3] == ["succeeded", "100%"]
    assert len(progress) >= 2


def test_cancel_then_wait_and_results_exit_nonzero(llfc: Cli, client: Client) -> None:
    job = client.submit_job(
        "train", dataset="builtin:digits", params={"arch": MLP_ARCH, "epochs": 400}
    )
    early = llfc("results", job.id)
    assert_one_line_error(early, job.id, f"llfc wait {job.id}")
    cancelled = llfc("cancel", job.id)
    assert cancelled.exit_code == 0, cancelled.output
    assert job.id in cancelled.stdout
    waited = llfc("wait", job.id, "--timeout", str(JOB_TIMEOUT_S))
    assert waited.exit_code == 1
    assert waited.stderr.strip().splitlines()[-1] == f"Error: Job {job.id} was cancelled."
    assert client.get_job(job.id).status == "cancelled"


def test_submit_takes_a_checkpoint_name_and_uploads_a_local_file_with_its_arch(
    llfc: Cli, client: Client, tmp_path: Path
) -> None:
    named = client.upload_checkpoint(mlp_state_dict(seed=61), MLP_ARCH, name="cli named a")
    path = write_mlp_checkpoint(tmp_path / "cli-local-b.safetensors", seed=62)
    submitted = llfc(
        "submit", "analyze", "cli named a", str(path), "--arch", json.dumps(MLP_ARCH),
        "--dataset", "builtin:digits", "--param", "max_examples=100",
    )  # fmt: skip
    assert submitted.exit_code == 0, submitted.output
    job = client.wait(submitted.stdout.strip(), timeout=JOB_TIMEOUT_S)
    assert job.model_a == named.id
    assert job.model_b is not None
    uploaded = client.get_checkpoint(job.model_b)
    assert uploaded.name == "cli-local-b"
    assert f"Uploaded {path} as checkpoint {uploaded.id}." in submitted.stderr
    assert job.status == "succeeded", job.error


def test_analyze_takes_its_models_by_option_as_local_files_and_waits(
    llfc: Cli, client: Client, tmp_path: Path
) -> None:
    path_a = write_mlp_checkpoint(tmp_path / "analyze-a.safetensors", seed=91)
    path_b = write_mlp_checkpoint(tmp_path / "analyze-b.safetensors", seed=92)
    analysed = llfc(
        "analyze", "--a", str(path_a), "--b", str(path_b), "--arch", json.dumps(MLP_ARCH),
        "--dataset", "builtin:digits", "--match", "weight", "--param", "max_examples=100",
        "--wait", "--timeout", str(JOB_TIMEOUT_S),
    )  # fmt: skip
    assert analysed.exit_code == 0, analysed.output
    job = client.get_job(analysed.stdout.strip())
    assert job.kind == "analyze" and job.status == "succeeded", job.error
    assert job.params["match"] == "weight"
    assert client.get_checkpoint(job.model_a).name == "analyze-a"
    assert client.get_checkpoint(job.model_b).name == "analyze-b"
    assert "matched" in job.result["pairs"]


def test_submit_of_a_local_file_without_an_arch_says_it_needs_one(
    llfc: Cli, trained_pair: tuple[str, str], tmp_path: Path
) -> None:
    path = write_mlp_checkpoint(tmp_path / "no-arch.safetensors", seed=63)
    result = llfc("submit", "match", trained_pair[0], str(path), "--dataset", "builtin:digits")
    assert_one_line_error(result, "B", "is a local file", "needs its arch", "--arch")


def test_a_name_two_checkpoints_share_is_refused_listing_their_ids(
    llfc: Cli, client: Client
) -> None:
    twins = [
        client.upload_checkpoint(mlp_state_dict(seed), MLP_ARCH, name="twin") for seed in (64, 65)
    ]
    for args in (("submit", "analyze", "twin", "twin"), ("checkpoints", "show", "twin")):
        result = llfc(*args, "--dataset", "builtin:digits") if args[0] == "submit" else llfc(*args)
        assert_one_line_error(result, "2 checkpoints are named 'twin'", *(t.id for t in twins))


def test_an_unknown_model_is_neither_a_file_nor_a_checkpoint(llfc: Cli) -> None:
    result = llfc("submit", "analyze", "no-such-model", "ckpt_b", "--dataset", "builtin:digits")
    assert_one_line_error(
        result, "'no-such-model' is neither a local file nor", "llfc checkpoints list"
    )


def test_checkpoints_list_shows_the_newest_as_a_table_or_json(llfc: Cli, client: Client) -> None:
    newest = client.upload_checkpoint(mlp_state_dict(seed=66), MLP_ARCH, name="listed")
    table = llfc("checkpoints", "list", "--limit", "1")
    assert table.exit_code == 0, table.output
    header, row = table.stdout.splitlines()
    assert header.split() == ["id", "name", "arch", "parameters", "created", "from"]
    assert row.split()[:4] == [newest.id, "listed", '{"name":"mlp","widths":[64,32,10]}', "2,410"]
    assert row.split()[-1] == "upload"
    assert "(newest 1 shown; --limit shows more)" in table.stderr
    as_json = llfc("checkpoints", "list", "--format", "json", "--limit", "200")
    assert as_json.exit_code == 0, as_json.output
    listed = json.loads(as_json.stdout)
    assert listed[0] == newest.raw
    assert [item["id"] for item in listed] == [c.id for c in client.list_checkpoints(200).items]


def test_checkpoints_show_by_id_or_name(
    llfc: Cli, client: Client, trained_pair: tuple[str, str], train_job: Job
) -> None:
    by_id = llfc("checkpoints", "show", trained_pair[0])
    assert by_id.exit_code == 0, by_id.output
    checkpoint = client.get_checkpoint(trained_pair[0])
    assert by_id.stdout.splitlines()[0] == f"Checkpoint {checkpoint.id}: {checkpoint.name}"
    assert f"sha256: {checkpoint.sha256}" in by_id.stdout
    assert f"from: job {train_job.id}" in by_id.stdout
    client.upload_checkpoint(mlp_state_dict(seed=67), MLP_ARCH, name="shown by name")
    by_name = llfc("checkpoints", "show", "shown by name")
    assert by_name.exit_code == 0, by_name.output
    assert "parameters: 2,410" in by_name.stdout and "from: upload" in by_name.stdout
    assert_one_line_error(llfc("checkpoints", "show", "nothing-so-named"), "'nothing-so-named'")


def test_checkpoints_delete_by_name_and_refused_while_a_job_uses_it(
    llfc: Cli, client: Client, trained_pair: tuple[str, str]
) -> None:
    doomed = client.upload_checkpoint(mlp_state_dict(seed=68), MLP_ARCH, name="doomed")
    deleted = llfc("checkpoints", "delete", "doomed")
    assert deleted.exit_code == 0, deleted.output
    assert deleted.stdout.strip() == f"Checkpoint {doomed.id} (doomed) deleted."
    assert doomed.id not in {c.id for c in client.iter_checkpoints()}

    # The one worker runs the long train job, so the analysis using `kept` waits, queued.
    kept = client.upload_checkpoint(mlp_state_dict(seed=69), MLP_ARCH, name="kept")
    blocker = client.submit_job(
        "train", dataset="builtin:digits", params={"arch": MLP_ARCH, "epochs": 400}
    )
    user = client.submit_job("analyze", kept.id, trained_pair[1], "builtin:digits")
    try:
        refused = llfc("checkpoints", "delete", kept.id)
        assert_one_line_error(refused, f"is used by job {user.id}", "cancel it or wait")
        assert client.get_checkpoint(kept.id) == kept
    finally:
        for job in (user, blocker):
            client.cancel_job(job.id)
            client.wait(job.id, timeout=JOB_TIMEOUT_S)


def test_download_of_a_checkpoint_by_name(llfc: Cli, client: Client, tmp_path: Path) -> None:
    state = mlp_state_dict(seed=70)
    client.upload_checkpoint(state, MLP_ARCH, name="fetch me")
    dest = tmp_path / "fetched.safetensors"
    result = llfc("download", "fetch me", "-o", str(dest))
    assert result.exit_code == 0, result.output
    assert load_file(str(dest))["0.weight"].equal(state["0.weight"])


def test_submit_refused_by_the_service_fails_with_its_detail(
    llfc: Cli, trained_pair: tuple[str, str]
) -> None:
    result = llfc("submit", "analyze", *trained_pair, "--dataset", "builtin:nothing")
    assert_one_line_error(result, "builtin:nothing")


def test_a_malformed_param_is_a_usage_error(llfc: Cli) -> None:
    result = llfc("submit", "train", "--param", "epochs")
    assert result.exit_code == 2
    assert "key=value" in result.stderr


def test_a_wrong_api_key_fails_with_one_line(service: RunningService) -> None:
    result = CliRunner().invoke(main, ["jobs", "--url", service.url, "--api-key", "wrong"])
    assert_one_line_error(result)


def test_a_failing_command_in_a_real_process_prints_one_line_and_no_traceback(
    service: RunningService, tmp_path: Path
) -> None:
    env = servers.service_env(tmp_path, **SERVICE_SETTINGS)
    env.update(LLFC_URL=service.url, LLFC_API_KEY=service.api_key)
    missing = servers.llfc("status", "job_missing", env=env)
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == ["Error: No job with id 'job_missing' exists."]

    env["LLFC_URL"] = f"http://127.0.0.1:{free_port()}"
    unreachable = servers.llfc("jobs", env=env)
    assert unreachable.returncode == 1
    [line] = unreachable.stderr.splitlines()
    assert env["LLFC_URL"] in line and "Traceback" not in unreachable.stderr


def test_inspect_prints_the_groups_what_stays_in_place_and_the_proof(
    llfc: Cli, tmp_path: Path
) -> None:
    arch = {"name": "torchvision", "model": "resnet18", "kwargs": {"num_classes": 10}}
    arch["input_shape"] = [3, 32, 32]
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    result = llfc("inspect", f"@{tmp_path / 'arch.json'}")
    assert result.exit_code == 0, result.output
    text = result.output
    assert "parameters: 11,181,642" in text
    assert "proof: passed" in text
    assert "permutation groups: 12" in text
    assert "P_layer1.0.conv1" in text
    assert "fc.weight" in text and "the model's output (logits)" in text
    assert "layer1.0.relu#2" in text

    as_json = llfc("inspect", '{"name": "mlp", "widths": [4, 8, 2]}', "--no-proof", "--json")
    assert json.loads(as_json.output)["proof"]["skipped"].startswith("not asked for")


def test_inspect_shows_a_vits_attention_as_heads_by_head_size(llfc: Cli) -> None:
    kwargs = {"img_size": 8, "patch_size": 2, "in_chans": 1, "num_classes": 10}
    kwargs |= {"embed_dim": 32, "depth": 1, "num_heads": 4}
    arch = {"name": "timm", "model": "vit_tiny_patch16_224", "kwargs": kwargs}
    result = llfc("inspect", json.dumps(arch))
    assert result.exit_code == 0, result.output
    assert "proof: passed" in result.output
    qk_row = next(line for line in result.output.splitlines() if "qkv[0:32]" in line)
    assert qk_row.split()[1] == "4x8"
    stream_row = next(line for line in result.output.splitlines() if "P_patch_embed.proj" in line)
    assert stream_row.split()[1] == "32"


def test_inspect_of_an_unknown_model_fails_with_one_line(llfc: Cli) -> None:
    result = llfc("inspect", '{"name": "torchvision", "model": "resnet81"}')
    assert_one_line_error(result, "Close matches: resnet18")


def test_an_empty_id_is_refused_before_any_request(llfc: Cli) -> None:
    assert_one_line_error(llfc("status", ""), "An id is empty")
    assert_one_line_error(llfc("cancel", " "), "An id is empty")


def test_bad_timeouts_and_non_finite_params_are_refused_before_submitting(
    llfc: Cli, client: Client
) -> None:
    def newest() -> str | None:
        jobs = client.list_jobs(limit=1).items
        return jobs[0].id if jobs else None

    before = newest()
    for timeout in ("-5", "nan", "0"):
        refused = llfc("wait", "job_x", "--timeout", timeout)
        assert refused.exit_code == 2 and "seconds above 0" in refused.output
    submitted = llfc("submit", "train", "--dataset", "builtin:digits", "--wait", "--timeout", "nan")
    assert submitted.exit_code == 2
    nan = llfc(
        "submit", "analyze", "a", "b", "--dataset", "builtin:digits", "--param", "alphas=[NaN]"
    )
    assert nan.exit_code == 2 and "NaN is not a JSON number" in nan.output
    assert newest() == before
