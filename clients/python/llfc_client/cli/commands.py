"""``llfc`` commands that talk to a running service through :mod:`llfc_client`.

Each command takes ``--url`` and ``--api-key`` (or LLFC_URL / LLFC_API_KEY). Commands that create
something (``upload``, ``upload-dataset``, ``submit``) print its id alone on stdout and their
description on stderr, so ``A=$(llfc upload a.pt --arch ...)`` works in a script. On failure a
command prints one line, ``Error: <the problem detail>``, on stderr and exits 1; it never shows
a traceback.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TextIO, TypeVar
from urllib.parse import urlsplit

import click

from llfc_client import ApiError, Checkpoint, Client, Dataset, Job, LLFCClientError
from llfc_client.cli.tables import (
    analysis_table,
    flatten,
    format_number,
    format_table,
    key_value_lines,
    sweep_table,
)
from llfc_client.client import DEFAULT_URL
from llfc_client.models import JobKind, JobProgress, JobStatus
from llfc_results import (
    MULTI_MODEL_KINDS,
    AnalysisResult,
    SweepResult,
    analysis_csv,
    sweep_csv,
    write_csv,
)

F = TypeVar("F", bound=Callable[..., Any])

# Values, not members: click matches enum members by their name (MATCH), not their value.
JOB_KINDS = tuple(kind.value for kind in JobKind)
JOB_STATUSES = tuple(status.value for status in JobStatus)
MATCH_CHOICES = ("none", "weight", "activation", "commutativity", "ste")

# --- Errors as one line ------------------------------------------------------------------------


def one_line(text: str) -> str:
    return " ".join(text.split())


class ClientCommand(click.Command):
    """A command whose failures are one ``Error: ...`` line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except LLFCClientError as error:
            message = error.detail if isinstance(error, ApiError) else str(error)
            raise click.ClickException(one_line(message)) from error
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            raise click.ClickException(one_line(f"{where}{error.strerror or error}")) from error
        except Exception as error:
            # A malformed answer or a bug: still one line, named, so it can be reported.
            raise click.ClickException(
                one_line(f"Unexpected {type(error).__name__}: {error}")
            ) from error


def with_client(func: F) -> F:
    """Add ``--url`` and ``--api-key``; pass a connected :class:`Client` as the first argument."""

    @functools.wraps(func)
    def wrapper(*args: Any, url: str, api_key: str | None, **kwargs: Any) -> Any:
        with Client(url, api_key or "") as client:
            return func(client, *args, **kwargs)

    wrapper = click.option(
        "--api-key",
        envvar="LLFC_API_KEY",
        default=None,
        help="API key, sent as 'Authorization: Bearer'. [env LLFC_API_KEY]",
    )(wrapper)
    wrapper = click.option(
        "--url",
        envvar="LLFC_URL",
        default=DEFAULT_URL,
        show_default=True,
        help="The service's base URL. [env LLFC_URL]",
    )(wrapper)
    return wrapper  # type: ignore[return-value]


def _json_option(text: str, what: str) -> Any:
    """JSON text, or ``@file`` holding it."""
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"{what} is not valid JSON: {error}") from error
    except (RecursionError, ValueError) as error:
        # Nesting past the recursion limit, or an integer past Python's digit limit.
        raise click.BadParameter(f"{what} is JSON too deep or too long to read.") from error


def _positive_seconds(ctx: click.Context, param: click.Parameter, value: float | None) -> Any:
    """A timeout, checked before anything is submitted: a number of seconds above 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a number of seconds above 0, got {value}.")
    return value


def _arch_option(text: str) -> dict[str, Any]:
    arch = _json_option(text, "--arch")
    if not isinstance(arch, dict):
        raise click.BadParameter("--arch must be a JSON object with a 'name'.")
    return arch


ARCH_HELP = 'The arch as JSON, e.g. \'{"name": "mlp", "widths": [64, 32, 10]}\', or @file.json.'
KEY_MAP_HELP = (
    "Rename the file's tensors to the arch's names: by_order (the renaming a refused upload "
    'suggests), or JSON {"name in the file": "arch name", ...}, or @file.json.'
)


def _key_map_option(text: str | None) -> dict[str, str] | Literal["by_order"] | None:
    """--key-map: by_order, or a JSON object of names (inline or @file); the service checks
    the names."""
    if text is None:
        return None
    if text.strip() == "by_order":
        return "by_order"
    key_map = _json_option(text, "--key-map")
    if not isinstance(key_map, dict) or not all(
        isinstance(value, str) for value in key_map.values()
    ):
        raise click.BadParameter(
            '--key-map must be by_order or a JSON object {"name in the file": "arch name"}.'
        )
    return key_map


# --- Checkpoints by id, name or file -------------------------------------------------------------


def checkpoint_by_id(client: Client, checkpoint_id: str) -> Checkpoint | None:
    """The owner's checkpoint of that id; None when there is none (or it cannot be an id)."""
    try:
        return client.get_checkpoint(checkpoint_id)
    except ApiError as error:
        # 422: not of an id's form (a name with spaces, say), so not an id either.
        if error.status in (404, 422):
            return None
        raise


def checkpoint_by_name(client: Client, name: str) -> Checkpoint | None:
    """The owner's one checkpoint called ``name``; None when none is; an error listing the ids
    when several are."""
    matches = [checkpoint for checkpoint in client.iter_checkpoints() if checkpoint.name == name]
    if len(matches) > 1:
        ids = ", ".join(checkpoint.id for checkpoint in matches)
        raise click.ClickException(
            f"{len(matches)} checkpoints are named {name!r} ({ids}); give one of their ids."
        )
    return matches[0] if matches else None


def find_checkpoint(client: Client, reference: str) -> Checkpoint:
    """The owner's checkpoint with ``reference`` as its id, else as its name."""
    checkpoint = checkpoint_by_id(client, reference) or checkpoint_by_name(client, reference)
    if checkpoint is None:
        raise click.ClickException(f"No checkpoint has the id or name {reference!r}.")
    return checkpoint


def resolve_model(client: Client, reference: str, arch_text: str | None, what: str) -> str:
    """The checkpoint id that ``reference`` stands for: a local file (uploaded first, checked
    against ``--arch``), else a checkpoint id, else a checkpoint name."""
    path = Path(reference)
    if path.is_file():
        if arch_text is None:
            raise click.ClickException(
                f"{what} {reference!r} is a local file; uploading it needs its arch: pass "
                "--arch, or upload it first with 'llfc upload' and give its id."
            )
        checkpoint = client.upload_checkpoint(path, _arch_option(arch_text))
        click.echo(f"Uploaded {reference} as checkpoint {checkpoint.id}.", err=True)
        return checkpoint.id
    found = checkpoint_by_id(client, reference) or checkpoint_by_name(client, reference)
    if found is None:
        raise click.ClickException(
            f"{what} {reference!r} is neither a local file nor the id or name of one of your "
            "checkpoints ('llfc checkpoints list' shows them)."
        )
    return found.id


# --- Jobs as text -----------------------------------------------------------------------------


def _local_time(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _duration(job: Job) -> str:
    if job.started_at and job.finished_at:
        return f"{(job.finished_at - job.started_at).total_seconds():.1f} s"
    return "-"


def _job_heading(job: Job) -> str:
    parts = [f"Job {job.id}: {job.kind}, {job.status}"]
    if job.finished and job.started_at:
        parts.append(f"in {_duration(job)}")
    inputs = [f"{key} {value}" for key, value in (("A", job.model_a), ("B", job.model_b)) if value]
    if job.models:
        inputs.append(f"models {', '.join(job.models)}")
    if job.dataset:
        inputs.append(f"data {job.dataset}")
    heading = " ".join(parts)
    return heading + (f" ({', '.join(inputs)})" if inputs else "")


def _artifact_lines(job: Job) -> list[str]:
    if not job.artifacts:
        return []
    return ["artifacts:"] + [
        f"  {artifact.name}: {artifact.checkpoint_id or artifact.url}" for artifact in job.artifacts
    ]


# --- Progress ----------------------------------------------------------------------------------


class ProgressDisplay:
    """A job's progress on a stream: one rewritten bar line with the stage on a terminal, and a
    plain line whenever the stage changes or another tenth is done otherwise (logs, CI)."""

    BAR_WIDTH = 28

    def __init__(self, stream: TextIO, interactive: bool | None = None) -> None:
        self.stream = stream
        self.interactive = stream.isatty() if interactive is None else interactive
        self._last: tuple[str, str, int] | None = None
        self._drawn = False

    def __call__(self, job: Job | JobProgress) -> None:
        percent = round(100 * min(max(job.progress.fraction, 0.0), 1.0))
        stage = job.progress.stage or job.status
        if self.interactive:
            filled = round(self.BAR_WIDTH * percent / 100)
            bar = "#" * filled + "-" * (self.BAR_WIDTH - filled)
            text = f"[{bar}] {percent:3d}%  {job.status}: {stage}"
            columns = shutil.get_terminal_size().columns
            self.stream.write("\r" + text[: columns - 1].ljust(columns - 1))
            self._drawn = True
        else:
            key = (job.status, stage, percent // 10)
            if key != self._last:
                self.stream.write(f"{job.id} {job.status} {percent:3d}% {stage}\n")
                self._last = key
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _wait_with_progress(client: Client, job_id: str, timeout: float | None, quiet: bool) -> Job:
    display = None if quiet else ProgressDisplay(sys.stderr)
    try:
        job = client.follow(job_id, timeout=timeout, on_progress=display)
    finally:
        if display is not None:
            display.close()
    return job


def _finish_waiting(job: Job) -> None:
    """Say how the job ended; a failed or cancelled job is an error (exit 1)."""
    if job.status == JobStatus.SUCCEEDED:
        click.echo(f"Job {job.id} succeeded in {_duration(job)}.", err=True)
        return
    if job.status == JobStatus.FAILED:
        raise click.ClickException(one_line(f"Job {job.id} failed: {job.error or 'no reason'}"))
    raise click.ClickException(f"Job {job.id} was cancelled.")


# --- Commands ----------------------------------------------------------------------------------


@click.command("upload", cls=ClientCommand)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--arch",
    "arch_text",
    required=True,
    help=ARCH_HELP,
)
@click.option("--name", default=None, help="A name to show instead of the file name.")
@click.option("--key-map", "key_map_text", default=None, help=KEY_MAP_HELP)
@with_client
def upload(
    client: Client, file: Path, arch_text: str, name: str | None, key_map_text: str | None
) -> None:
    """Upload a checkpoint (.safetensors, or a .pt/.pth state dict); prints its id."""
    checkpoint = client.upload_checkpoint(
        file, _arch_option(arch_text), name, _key_map_option(key_map_text)
    )
    renamed = f", {len(checkpoint.key_map)} tensors renamed" if checkpoint.key_map else ""
    click.echo(
        f"Checkpoint {checkpoint.name}: {json.dumps(checkpoint.arch)}, "
        f"{checkpoint.num_params:,} parameters, {checkpoint.format}, sha256 {checkpoint.sha256}"
        f"{renamed}",
        err=True,
    )
    click.echo(checkpoint.id)


@click.command("upload-dataset", cls=ClientCommand)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="A name to show instead of the file name.")
@with_client
def upload_dataset(client: Client, file: Path, name: str | None) -> None:
    """Upload a dataset (.npz or .safetensors with arrays x and y, or token sequences: an
    integer x and no y); prints its id."""
    dataset = client.upload_dataset(file, name)
    click.echo(
        f"Dataset {dataset.name}: {dataset.num_examples} examples of shape "
        f"{tuple(dataset.input_shape)}, {_classes_column(dataset)}"
        f"{'' if dataset.kind == 'tokens' else ' classes'}",
        err=True,
    )
    click.echo(dataset.id)


@click.command("datasets", cls=ClientCommand)
@with_client
def datasets(client: Client) -> None:
    """List the built-in and uploaded datasets (upload one with 'llfc upload-dataset'); a built-in
    whose files are not on the service shows 'not installed' for its examples."""
    rows = [
        [
            dataset.id,
            dataset.name,
            _examples_column(dataset),
            "x".join(map(str, dataset.input_shape)),
            _classes_column(dataset),
        ]
        for dataset in client.iter_datasets()
    ]
    click.echo(format_table(["id", "name", "examples", "input", "classes"], rows))


def _classes_column(dataset: Dataset) -> str:
    """The number of classes; for token sequences, of tokens (their vocabulary), so marked."""
    if dataset.kind == "tokens":
        return f"{dataset.num_classes} tokens"
    return str(dataset.num_classes)


def _examples_column(dataset: Dataset) -> str:
    if not dataset.installed:
        return "not installed"
    return "by split" if dataset.num_examples is None else str(dataset.num_examples)


def _no_constant(name: str) -> Any:
    raise click.BadParameter(f"{name} is not a JSON number; give a finite number.")


def _parse_param(text: str) -> tuple[str, Any]:
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise click.BadParameter(f"{text!r} is not key=value, e.g. epochs=2 or split=test.")
    if value.startswith("@"):
        return key.strip(), _json_option(value, f"The value of {key.strip()!r}")
    try:
        # NaN and Infinity would otherwise pass here and fail only when the body is encoded.
        return key.strip(), json.loads(value, parse_constant=_no_constant)
    except json.JSONDecodeError:
        return key.strip(), value
    except (RecursionError, ValueError) as error:
        # Nesting past the recursion limit, or an integer past Python's digit limit.
        raise click.BadParameter(
            f"The value of {key.strip()!r} is JSON too deep or too long to read."
        ) from error


def build_params(
    kind: str, params_json: str | None, param_pairs: Sequence[str], match: str | None
) -> dict[str, Any]:
    """The job params from ``--params`` JSON, then each ``--param key=value`` (a value is JSON
    when it parses as JSON, text otherwise), then ``--match`` (``match`` for analyze, ``method``
    for match jobs)."""
    params: dict[str, Any] = {}
    if params_json is not None:
        loaded = _json_option(params_json, "--params")
        if not isinstance(loaded, dict):
            raise click.BadParameter("--params must be a JSON object.")
        params.update(loaded)
    params.update(_parse_param(text) for text in param_pairs)
    if match is not None:
        if kind in (JobKind.ANALYZE, JobKind.SWEEP):
            params["match"] = match
        elif kind == JobKind.MATCH and match != "none":
            params["method"] = match
        else:
            raise click.BadParameter(
                f"--match {match} applies to analyze and sweep jobs ({', '.join(MATCH_CHOICES)}) "
                f"and to match jobs (the same but none), not to a {kind} job."
            )
    return params


# Options of both job-submitting verbs (submit, analyze), defined once.
PARAM_OPTION = click.option(
    "--param",
    "param_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="One parameter; VALUE is read as JSON when it is JSON (epochs=2, alphas=[0,0.5,1]), "
    "or from a JSON file as @file (arch=@arch.json).",
)
ARCH_OPTION = click.option(
    "--arch",
    "arch_text",
    default=None,
    help="The arch of A and B when they are local files to upload first. " + ARCH_HELP,
)
WAIT_OPTION = click.option(
    "--wait", "wait_for_it", is_flag=True, help="Wait for the job, showing progress."
)
TIMEOUT_OPTION = click.option(
    "--timeout",
    type=float,
    default=None,
    callback=_positive_seconds,
    help="With --wait: give up after seconds.",
)


@click.command("submit", cls=ClientCommand)
@click.argument("kind", type=click.Choice(JOB_KINDS))
@click.argument("models", nargs=-1, metavar="[MODEL]...")
@click.option("--dataset", default=None, help="An uploaded dataset id or e.g. builtin:digits.")
@click.option(
    "--match",
    type=click.Choice(MATCH_CHOICES),
    default=None,
    help="Matching of B onto A: analyze's 'match', a match job's 'method'.",
)
@PARAM_OPTION
@click.option("--params", "params_json", default=None, help="All parameters as JSON or @file.")
@ARCH_OPTION
@click.option("--idempotency-key", default=None, help="Resubmitting with it returns the same job.")
@WAIT_OPTION
@TIMEOUT_OPTION
@with_client
def submit(
    client: Client,
    kind: str,
    models: tuple[str, ...],
    dataset: str | None,
    match: str | None,
    param_pairs: tuple[str, ...],
    params_json: str | None,
    arch_text: str | None,
    idempotency_key: str | None,
    wait_for_it: bool,
    timeout: float | None,
) -> None:
    """Submit a job: KIND is match, interpolate or analyze (with models A and B), sweep (with
    two models or more: every pair analysed) or train; prints the job id.

    Each model is a checkpoint id, the name of one of your checkpoints, or a local
    .safetensors/.pt/.pth file, uploaded first and checked against --arch.

    \b
    llfc submit analyze A B --dataset builtin:digits --match weight --wait
    llfc submit analyze a.safetensors b.pt --arch @arch.json --dataset builtin:digits
    llfc submit sweep A B C D --dataset builtin:digits --match weight --wait
    llfc submit merge A B C --dataset builtin:digits --param method=weight_average --wait
    llfc submit train --dataset builtin:digits --param arch='{"name":"mlp","widths":[64,32,10]}'
    """
    params = build_params(kind, params_json, param_pairs, match)
    model_list: list[str] | None = None
    model_a = model_b = None
    if kind in MULTI_MODEL_KINDS:
        model_list = list(models)
    elif len(models) > 2:
        raise click.UsageError(
            f"{kind.capitalize()} jobs take at most two models, A and B, got {len(models)}; "
            f"{' and '.join(sorted(MULTI_MODEL_KINDS))} jobs take more."
        )
    else:
        model_a, model_b = (*models, None, None)[:2]
    _submit_and_report(
        client,
        kind,
        model_a,
        model_b,
        dataset,
        params,
        arch_text,
        idempotency_key,
        wait_for_it,
        timeout,
        model_list,
    )


def _submit_and_report(
    client: Client,
    kind: str,
    model_a: str | None,
    model_b: str | None,
    dataset: str | None,
    params: dict[str, Any],
    arch_text: str | None,
    idempotency_key: str | None,
    wait_for_it: bool,
    timeout: float | None,
    models: Sequence[str] | None = None,
) -> None:
    """Resolve A and B, or the N ``models`` of a job on N models (ids, names or local files),
    submit, print the job id; with ``wait_for_it``, follow the job to its end first."""
    if model_a is not None:
        model_a = resolve_model(client, model_a, arch_text, "A")
    if model_b is not None:
        model_b = resolve_model(client, model_b, arch_text, "B")
    if models is not None:
        models = [
            resolve_model(client, model, arch_text, f"Model {index + 1}")
            for index, model in enumerate(models)
        ]
    job = client.submit_job(kind, model_a, model_b, dataset, params, idempotency_key, models=models)
    click.echo(f"Submitted {job.kind} job {job.id} ({job.status}).", err=True)
    if wait_for_it:
        job = _wait_with_progress(client, job.id, timeout, quiet=False)
        click.echo(job.id)
        _finish_waiting(job)
        return
    click.echo(job.id)


@click.command("analyze", cls=ClientCommand)
@click.option("--a", "model_a", required=True, help="Model A: a checkpoint id, name or local file.")
@click.option("--b", "model_b", required=True, help="Model B: a checkpoint id, name or local file.")
@click.option("--dataset", required=True, help="An uploaded dataset id or e.g. builtin:digits.")
@click.option(
    "--match",
    type=click.Choice(MATCH_CHOICES),
    default=None,
    help="Matching of B onto A before the analysis (default: none).",
)
@PARAM_OPTION
@ARCH_OPTION
@WAIT_OPTION
@TIMEOUT_OPTION
@with_client
def analyze(
    client: Client,
    model_a: str,
    model_b: str,
    dataset: str,
    match: str | None,
    param_pairs: tuple[str, ...],
    arch_text: str | None,
    wait_for_it: bool,
    timeout: float | None,
) -> None:
    """Analyse models A and B (LMC, LLFC and the two conditions); prints the job id.

    The same as 'llfc submit analyze A B', with A and B named by option.

    \b
    llfc analyze --a model-a.safetensors --b model-b.safetensors --arch @arch.json \\
        --dataset builtin:digits --match weight --wait
    llfc results JOB --format table
    """
    params = build_params("analyze", None, param_pairs, match)
    _submit_and_report(
        client, "analyze", model_a, model_b, dataset, params, arch_text, None, wait_for_it, timeout
    )


@click.command("jobs", cls=ClientCommand)
@click.option("--status", type=click.Choice(JOB_STATUSES), default=None)
@click.option("--kind", type=click.Choice(JOB_KINDS), default=None)
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
@with_client
def jobs(client: Client, status: str | None, kind: str | None, limit: int) -> None:
    """List jobs, newest first."""
    page = client.list_jobs(status=status, kind=kind, limit=limit)
    rows = [
        [
            job.id,
            job.kind,
            job.status,
            f"{round(100 * job.progress.fraction)}%",
            _local_time(job.created_at),
            job.progress.stage,
        ]
        for job in page.items
    ]
    headers = ["id", "kind", "status", "progress", "created", "stage"]
    click.echo(format_table(headers, rows))
    if page.next_cursor is not None:
        click.echo(f"(newest {limit} shown; --limit shows more)", err=True)


@click.command("status", cls=ClientCommand)
@click.argument("job_id")
@with_client
def status(client: Client, job_id: str) -> None:
    """Show a job: status, progress, inputs, params, error and artifacts."""
    job = client.get_job(job_id)
    lines = [
        _job_heading(job),
        f"progress: {round(100 * job.progress.fraction)}% {job.progress.stage}",
        f"created: {_local_time(job.created_at)}",
        f"started: {_local_time(job.started_at)}",
        f"finished: {_local_time(job.finished_at)}",
    ]
    if job.error:
        lines.append(f"error: {job.error}")
    if job.params:
        lines += ["params:", *key_value_lines(job.params, "  ")]
    lines += _artifact_lines(job)
    click.echo("\n".join(lines))


@click.command("wait", cls=ClientCommand)
@click.argument("job_id")
@click.option(
    "--timeout",
    type=float,
    default=None,
    callback=_positive_seconds,
    help="Give up after this many seconds.",
)
@click.option("--quiet", is_flag=True, help="No progress display.")
@with_client
def wait(client: Client, job_id: str, timeout: float | None, quiet: bool) -> None:
    """Wait for a job, showing its progress and stage; exits 1 if it failed or was cancelled."""
    _finish_waiting(_wait_with_progress(client, job_id, timeout, quiet))


@click.command("results", cls=ClientCommand)
@click.argument("job_id")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(("table", "json", "csv")),
    default="table",
    show_default=True,
)
@with_client
def results(client: Client, job_id: str, output_format: str) -> None:
    """Print a finished job's result.

    For analyze: per layer the A-B baseline against the LLFC distance at each alpha, barriers
    naive against matched, Conditions I and II. For sweep: its N x N matrices. csv is long form
    (pair, metric, layer, alpha, value) for analyze, (pair, metric, model_a, model_b, value) for
    sweep, (key, value) otherwise.
    """
    job = client.get_job(job_id)
    if job.status == JobStatus.FAILED:
        raise click.ClickException(one_line(f"Job {job.id} failed: {job.error or 'no reason'}"))
    if job.status == JobStatus.CANCELLED:
        raise click.ClickException(f"Job {job.id} was cancelled; it has no result.")
    if job.status != JobStatus.SUCCEEDED or job.result is None:
        raise click.ClickException(
            f"Job {job.id} is {job.status} ({round(100 * job.progress.fraction)}%, "
            f"{job.progress.stage}); wait for it with 'llfc wait {job.id}'."
        )
    is_analysis = job.kind == JobKind.ANALYZE and "pairs" in job.result
    is_sweep = job.kind == JobKind.SWEEP and "matrices" in job.result
    if output_format == "json":
        click.echo(json.dumps(job.result, indent=2))
    elif output_format == "csv":
        if is_sweep:
            click.echo(sweep_csv(SweepResult.from_json(job.result)).rstrip("\n"))
        elif is_analysis:
            analysis = AnalysisResult.from_json(job.result)
            click.echo(analysis_csv(analysis).rstrip("\n"))
        else:
            artifact_rows = (
                (f"artifacts.{a.name}", a.checkpoint_id or a.url) for a in job.artifacts
            )
            rows = (*flatten(job.result), *artifact_rows)
            click.echo(write_csv(rows, ["key", "value"]).rstrip("\n"))
    else:
        lines = [_job_heading(job), ""]
        if is_sweep:
            lines.append(sweep_table(SweepResult.from_json(job.result)))
        elif is_analysis:
            lines.append(analysis_table(AnalysisResult.from_json(job.result)))
        else:
            lines += [*key_value_lines(job.result), *_artifact_lines(job)]
        click.echo("\n".join(lines))


@click.command("cancel", cls=ClientCommand)
@click.argument("job_id")
@with_client
def cancel(client: Client, job_id: str) -> None:
    """Cancel a job: a queued one never runs, a running one stops at its next batch."""
    job = client.cancel_job(job_id)
    if job.status == JobStatus.CANCELLED:
        click.echo(f"Job {job.id} cancelled.")
    else:
        click.echo(f"Job {job.id} is {job.status}; asked to stop at its next batch.")


@click.command("download", cls=ClientCommand)
@click.argument("resource_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="For a checkpoint: the file (default <id>.safetensors). For a job: the folder for its "
    "artifacts (default the current one).",
)
@with_client
def download(client: Client, resource_id: str, output: Path | None) -> None:
    """Download a checkpoint's tensors (by id or name), or every artifact of a job; prints the
    files written."""
    job = None
    checkpoint = checkpoint_by_id(client, resource_id)
    if checkpoint is None:
        try:
            job = client.get_job(resource_id)
        except ApiError as error:
            if error.status not in (404, 422):
                raise
            checkpoint = checkpoint_by_name(client, resource_id)
    if checkpoint is not None:
        dest = output or Path(f"{checkpoint.id}.safetensors")
        click.echo(client.download_checkpoint(checkpoint.id, dest))
        return
    if job is None:
        raise click.ClickException(
            f"No checkpoint or job with id {resource_id!r} exists, nor a checkpoint of that name."
        )
    if not job.artifacts:
        raise click.ClickException(
            f"Job {job.id} ({job.kind}, {job.status}) has no artifacts to download."
        )
    folder = output or Path()
    folder.mkdir(parents=True, exist_ok=True)
    for artifact in job.artifacts:
        dest = folder / f"{job.id}-{artifact.name}.safetensors"
        if artifact.checkpoint_id is not None:
            click.echo(client.download_checkpoint(artifact.checkpoint_id, dest))
        elif artifact.url is not None:
            suffix = PurePosixPath(urlsplit(artifact.url).path).suffix
            dest = folder / f"{job.id}-{artifact.name}{suffix}"
            click.echo(client.download_url(artifact.url, dest))


# --- llfc checkpoints ---------------------------------------------------------------------------


def _short_arch(arch: dict[str, Any]) -> str:
    return json.dumps(arch, separators=(",", ":"))


@click.group("checkpoints")
def checkpoints() -> None:
    """List, show and delete your checkpoints (uploads and job artifacts alike)."""


@checkpoints.command("list", cls=ClientCommand)
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(("table", "json")),
    default="table",
    show_default=True,
)
@with_client
def list_checkpoints(client: Client, limit: int, output_format: str) -> None:
    """List checkpoints, newest first."""
    page = client.list_checkpoints(limit=limit)
    if output_format == "json":
        click.echo(json.dumps([checkpoint.raw for checkpoint in page.items], indent=2))
    else:
        rows = [
            [
                checkpoint.id,
                checkpoint.name,
                _short_arch(checkpoint.arch),
                f"{checkpoint.num_params:,}",
                _local_time(checkpoint.created_at),
                checkpoint.source_job_id or "upload",
            ]
            for checkpoint in page.items
        ]
        headers = ["id", "name", "arch", "parameters", "created", "from"]
        click.echo(format_table(headers, rows))
    if page.next_cursor is not None:
        click.echo(f"(newest {limit} shown; --limit shows more)", err=True)


@checkpoints.command("show", cls=ClientCommand)
@click.argument("reference", metavar="ID_OR_NAME")
@with_client
def show_checkpoint(client: Client, reference: str) -> None:
    """Show one checkpoint: arch, size, hash and where it came from."""
    checkpoint = find_checkpoint(client, reference)
    lines = [
        f"Checkpoint {checkpoint.id}: {checkpoint.name}",
        f"arch: {json.dumps(checkpoint.arch)}",
        f"parameters: {checkpoint.num_params:,}",
        f"uploaded as: {checkpoint.format}, {checkpoint.size_bytes:,} bytes",
        f"sha256: {checkpoint.sha256}",
        f"created: {_local_time(checkpoint.created_at)}",
        f"from: {f'job {checkpoint.source_job_id}' if checkpoint.source_job_id else 'upload'}",
    ]
    if checkpoint.key_map:
        renaming = ", ".join(f"{old} -> {new}" for old, new in checkpoint.key_map.items())
        lines.append(f"renamed: {renaming}")
    click.echo("\n".join(lines))


@checkpoints.command("delete", cls=ClientCommand)
@click.argument("reference", metavar="ID_OR_NAME")
@with_client
def delete_checkpoint(client: Client, reference: str) -> None:
    """Delete a checkpoint; refused while a queued or running job uses it."""
    checkpoint = find_checkpoint(client, reference)
    client.delete_checkpoint(checkpoint.id)
    click.echo(f"Checkpoint {checkpoint.id} ({checkpoint.name}) deleted.")


def _proof_line(proof: dict[str, Any]) -> str:
    if proof.get("skipped"):
        return f"proof: not run here ({proof['skipped']})"
    verdict = "passed" if proof.get("passed") else "FAILED"
    return (
        f"proof: {verdict}, outputs changed by {format_number(proof.get('relative_change'))} of "
        f"their scale (tolerance {format_number(proof.get('tolerance'))}) under random "
        f"permutations, {proof.get('examples')} {proof.get('inputs')} inputs"
    )


def _group_size(group: dict[str, Any]) -> str:
    """``64``, or ``4x16`` for a nested (attention) permutation's heads and head size."""
    if group.get("heads") is not None:
        return f"{group['heads']}x{group['head_size']}"
    return str(group["size"])


def inspect_report_text(report: dict[str, Any]) -> str:
    """The inspect report as tables: the groups, what stays in place and why, the layers."""
    groups = report["permutations"]
    lines = [
        f"arch: {_short_arch(report['arch'])}",
        f"parameters: {report['num_params']:,}; input {report['input_shape']}; "
        f"{report['num_classes']} classes",
        _proof_line(report["proof"]),
        "",
        f"permutation groups: {len(groups)} "
        f"({sum(group['size'] for group in groups):,} hidden units)",
        format_table(
            ["group", "size", "axes", "observed at"],
            [
                [
                    group["name"],
                    _group_size(group),
                    str(len(group["axes"])),
                    ", ".join(group["observed_at"][:3])
                    + (" ..." if len(group["observed_at"]) > 3 else ""),
                ]
                for group in groups
            ],
            indent="  ",
        ),
        "",
        f"left in place: {len(report['unpermuted'])} axes",
    ]
    if report["unpermuted"]:
        lines.append(
            format_table(
                ["tensor", "axis", "why"],
                [[a["tensor"], str(a["axis"]), a["reason"]] for a in report["unpermuted"]],
                indent="  ",
            )
        )
    layers = report["feature_layers"]
    kinds = {
        kind: sum(layer["kind"] == kind for layer in layers) for kind in ("activation", "residual")
    }
    lines += [
        "",
        f"feature layers LLFC measures: {len(layers)} ({kinds['activation']} activations, "
        f"{kinds['residual']} residual streams, the logits)",
        "  " + ", ".join(layer["name"] for layer in layers),
        f"Condition II layers: {len(report['condition_ii_layers'])}",
    ]
    return "\n".join(lines)


@click.command("inspect", cls=ClientCommand)
@click.argument("arch_json")
@click.option("--no-proof", is_flag=True, help="Skip the proof on random weights (faster).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@with_client
def inspect(client: Client, arch_json: str, no_proof: bool, as_json: bool) -> None:
    """Show how an arch's hidden units can be permuted: the groups derived from its graph, the
    axes left in place and the op that stopped each, the feature layers LLFC measures, and the
    proof that the permutations keep the function. ARCH_JSON is JSON or @file.json."""
    report = client.inspect_arch(_arch_option(arch_json), prove=not no_proof)
    click.echo(json.dumps(report, indent=2) if as_json else inspect_report_text(report))


CLIENT_COMMANDS: list[click.Command] = [
    checkpoints,
    upload,
    upload_dataset,
    datasets,
    submit,
    analyze,
    jobs,
    status,
    wait,
    results,
    cancel,
    download,
    inspect,
]
