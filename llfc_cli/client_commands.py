"""``llfc`` commands that talk to a running service through :mod:`llfc_client`.

Each command takes ``--url`` and ``--api-key`` (or LLFC_URL / LLFC_API_KEY). Commands that create
something (``upload``, ``upload-dataset``, ``submit``) print its id alone on stdout and their
description on stderr, so ``A=$(llfc upload a.pt --arch ...)`` works in a script. On failure a
command prints one line, ``Error: <the problem detail>``, on stderr and exits 1; it never shows
a traceback.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, TextIO, TypeVar
from urllib.parse import urlsplit

import click

from llfc_client import ApiError, Client, Dataset, Job, LLFCClientError
from llfc_client.client import DEFAULT_URL

F = TypeVar("F", bound=Callable[..., Any])

JOB_KINDS = ("match", "interpolate", "analyze", "train")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
MATCH_CHOICES = ("none", "weight", "activation")
LONG_LIST = 8
"""Lists longer than this are summarised in the key/value view (a permutation, a curve)."""

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
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"{what} is not valid JSON: {error}") from error
    except (RecursionError, ValueError) as error:
        # Nesting past the recursion limit, or an integer past Python's digit limit.
        raise click.BadParameter(f"{what} is JSON too deep or too long to read.") from error


# --- Formatting --------------------------------------------------------------------------------


def format_number(value: Any) -> str:
    """Four decimals; scientific notation for tiny non-zero values; '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4f}"
    return str(value)


def format_percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Columns padded to their widest cell; the first column left-aligned, the others right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(cell).ljust(width) if index == 0 else str(cell).rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return (indent + "  ".join(padded)).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def _local_time(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _duration(job: Job) -> str:
    if job.started_at and job.finished_at:
        return f"{(job.finished_at - job.started_at).total_seconds():.1f} s"
    return "-"


def _is_record_list(value: Any) -> bool:
    """A list of flat objects with the same keys, such as the modes of a train result."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) and item.keys() == value[0].keys() for item in value)
        and not any(isinstance(v, dict | list) for item in value for v in item.values())
    )


def key_value_lines(value: Any, indent: str = "") -> Iterator[str]:
    """A readable view of nested JSON: keys and values, nested objects indented, lists of flat
    objects as a table, long lists summarised by their length."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict) and item:
                yield f"{indent}{key}:"
                yield from key_value_lines(item, indent + "  ")
            elif _is_record_list(item):
                yield f"{indent}{key}:"
                headers = list(item[0])
                rows = [[format_number(record[h]) for h in headers] for record in item]
                yield format_table(headers, rows, indent + "  ")
            else:
                yield f"{indent}{key}: {_inline(item)}"
    else:
        yield f"{indent}{_inline(value)}"


def _inline(value: Any) -> str:
    if isinstance(value, list):
        if len(value) > LONG_LIST:
            return f"[{len(value)} values]"
        return "[" + ", ".join(_inline(item) for item in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value)
    return format_number(value)


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, scalar) pairs of nested JSON, for CSV: objects and lists of objects are
    opened (``modes.0.name``), lists of numbers kept whole as JSON text."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
        for index, item in enumerate(value):
            yield from flatten(item, f"{prefix}.{index}")
    elif isinstance(value, list):
        yield prefix, json.dumps(value)
    else:
        yield prefix, value


# --- The analyze result ------------------------------------------------------------------------


def _pair_label(pair_name: str, result: dict[str, Any]) -> str:
    if pair_name == "matched":
        method = (result.get("settings") or {}).get("match") or "matched"
        return f"{method}-matched"
    return pair_name


def analysis_rows(result: dict[str, Any]) -> Iterator[tuple[str, str, str, str, Any]]:
    """The analyze result in long form: (pair, metric, layer, alpha, value) rows.

    Metric names follow the result: ``lmc_loss``/``lmc_error`` per alpha, ``loss_barrier``,
    ``error_barrier``, ``cos_ab`` per layer, ``cos_alpha``/``scale_c`` per layer and alpha,
    ``weak_additivity`` (Condition I) per ReLU layer and alpha, ``commutativity`` (Condition II)
    per weighted layer, the lemma's ``epsilon``/``max_error_on_path``/``holds``, and the
    endpoints' ``loss`` and ``error`` (as the barriers measure them), ``loss_as_uploaded``,
    ``error_as_uploaded`` and ``batch_norm_reestimated`` as pair ``endpoints``, layer ``a``/``b``.
    """
    for side, endpoint in (result.get("endpoints") or {}).items():
        yield "endpoints", "loss", side, "", endpoint.get("loss")
        yield "endpoints", "error", side, "", endpoint.get("error")
        as_uploaded = endpoint.get("as_uploaded")
        if as_uploaded is not None:  # absent from the results of services before it was added
            yield "endpoints", "loss_as_uploaded", side, "", as_uploaded.get("loss")
            yield "endpoints", "error_as_uploaded", side, "", as_uploaded.get("error")
            reestimated = endpoint.get("batch_norm_reestimated")
            yield "endpoints", "batch_norm_reestimated", side, "", reestimated
    for pair_name, pair in result["pairs"].items():
        lmc = pair["lmc"]
        for metric in ("loss", "error"):
            for alpha, value in zip(lmc["alphas"], lmc[metric], strict=True):
                yield pair_name, f"lmc_{metric}", "", str(alpha), value
        yield pair_name, "loss_barrier", "", "", lmc["loss_barrier"]
        yield pair_name, "error_barrier", "", "", lmc["error_barrier"]
        llfc = pair["llfc"]
        layers = llfc["layers"]
        for layer, value in zip(layers, llfc["cos_ab"], strict=True):
            yield pair_name, "cos_ab", layer, "", value
        for metric in ("cos_alpha", "scale_c"):
            for alpha, values in (llfc.get(metric) or {}).items():
                for layer, value in zip(layers, values, strict=True):
                    yield pair_name, metric, layer, alpha, value
        relu_layers = pair.get("weak_additivity_layers") or layers[:-1]
        for alpha, values in (pair.get("weak_additivity") or {}).items():
            for layer, value in zip(relu_layers, values, strict=True):
                yield pair_name, "weak_additivity", layer, alpha, value
        commutativity = pair.get("commutativity") or []
        weighted = pair.get("commutativity_layers") or [str(i) for i in range(len(commutativity))]
        for layer, value in zip(weighted, commutativity, strict=True):
            yield pair_name, "commutativity", layer, "", value
        for key, value in (pair.get("lemma") or {}).items():
            yield pair_name, key, "", "", value


def endpoints_table(endpoints: dict[str, dict[str, Any]]) -> str:
    """A's and B's loss and error, labelled: where BatchNorm statistics were re-estimated on the
    job's data (what the barriers are measured against), also as uploaded."""
    sides = list(endpoints)
    reestimated = any(endpoint.get("batch_norm_reestimated") for endpoint in endpoints.values())
    labelled = all("as_uploaded" in endpoint for endpoint in endpoints.values())
    measured = ", BatchNorm re-estimated" if reestimated else ""
    rows = [
        [f"loss{measured}", *(format_number(endpoints[side].get("loss")) for side in sides)],
        [f"error{measured}", *(format_percent(endpoints[side].get("error")) for side in sides)],
    ]
    if reestimated:
        uploaded = [endpoints[side].get("as_uploaded") or {} for side in sides]
        rows += [
            ["loss as uploaded", *(format_number(numbers.get("loss")) for numbers in uploaded)],
            ["error as uploaded", *(format_percent(numbers.get("error")) for numbers in uploaded)],
        ]
    title = "Endpoints, as uploaded" if labelled and not reestimated else "Endpoints"
    return format_table([title, *(side.upper() for side in sides)], rows)


def analysis_table(result: dict[str, Any]) -> str:
    """The analyze result as text tables in the spirit of the paper's Fig. 3.

    The endpoints (:func:`endpoints_table`); barriers and the Lemma per pair (naive against
    matched); then, per pair and layer, the A–B baseline E[1 - cos(f(A), f(B))] against the LLFC
    distance E[1 - cos(f(θ_α), αf(A) + (1-α)f(B))] at each LLFC alpha (LLFC holds where the latter
    is far below the former), Condition I (weak additivity of ReLU) per alpha, and Condition II
    (commutativity) per weighted layer.
    """
    pairs: dict[str, dict[str, Any]] = result["pairs"]
    labels = {name: _pair_label(name, result) for name in pairs}
    blocks: list[str] = []

    endpoints = result.get("endpoints") or {}
    if endpoints:
        blocks.append(endpoints_table(endpoints))

    lemmas = [pair.get("lemma") or {} for pair in pairs.values()]
    summary_rows = [
        ["loss barrier", *(format_number(p["lmc"]["loss_barrier"]) for p in pairs.values())],
        ["error barrier", *(format_percent(p["lmc"]["error_barrier"]) for p in pairs.values())],
        [
            "max error on path",
            *(format_percent(lemma.get("max_error_on_path")) for lemma in lemmas),
        ],
        ["lemma: max error ≤ 2ε", *(format_number(lemma.get("holds")) for lemma in lemmas)],
    ]
    blocks.append(format_table(["Barriers", *labels.values()], summary_rows))

    for name, pair in pairs.items():
        llfc = pair["llfc"]
        layers: list[str] = llfc["layers"]
        cos_alpha: dict[str, list[float]] = llfc.get("cos_alpha") or {}
        weak: dict[str, list[float]] = pair.get("weak_additivity") or {}
        relu_layers = pair.get("weak_additivity_layers") or layers[:-1]
        weak_by_layer = {
            alpha: dict(zip(relu_layers, values, strict=True)) for alpha, values in weak.items()
        }
        headers = [
            "layer",
            "A-B",
            *(f"α={alpha}" for alpha in cos_alpha),
            *(f"Cond.I α={alpha}" for alpha in weak),
        ]
        rows = [
            [
                layer,
                format_number(llfc["cos_ab"][index]),
                *(format_number(values[index]) for values in cos_alpha.values()),
                *(format_number(weak_by_layer[alpha].get(layer)) for alpha in weak),
            ]
            for index, layer in enumerate(layers)
        ]
        blocks.append(
            f"LLFC, {labels[name]}: E[1 - cos] per layer, A-B baseline against "
            "the interpolation at α; Condition I per ReLU layer\n" + format_table(headers, rows)
        )
        commutativity = pair.get("commutativity") or []
        if commutativity:
            weighted = pair.get("commutativity_layers") or [
                str(i) for i in range(len(commutativity))
            ]
            blocks.append(
                f"Condition II (commutativity), {labels[name]}: per weighted layer\n"
                + format_table(
                    ["layer", "distance"],
                    [
                        [layer, format_number(value)]
                        for layer, value in zip(weighted, commutativity, strict=True)
                    ],
                )
            )
    return "\n\n".join(blocks)


def _job_heading(job: Job) -> str:
    parts = [f"Job {job.id}: {job.kind}, {job.status}"]
    if job.finished and job.started_at:
        parts.append(f"in {_duration(job)}")
    inputs = [f"{key} {value}" for key, value in (("A", job.model_a), ("B", job.model_b)) if value]
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


def _write_csv(rows: Iterator[Sequence[Any]], headers: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue().rstrip("\n")


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

    def __call__(self, job: Job) -> None:
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
        job = client.wait(job_id, timeout=timeout, on_progress=display)
    finally:
        if display is not None:
            display.close()
    return job


def _finish_waiting(job: Job) -> None:
    """Say how the job ended; a failed or cancelled job is an error (exit 1)."""
    if job.status == "succeeded":
        click.echo(f"Job {job.id} succeeded in {_duration(job)}.", err=True)
        return
    if job.status == "failed":
        raise click.ClickException(one_line(f"Job {job.id} failed: {job.error or 'no reason'}"))
    raise click.ClickException(f"Job {job.id} was cancelled.")


# --- Commands ----------------------------------------------------------------------------------


@click.command("upload", cls=ClientCommand)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--arch",
    "arch_text",
    required=True,
    help='The arch as JSON, e.g. \'{"name": "mlp", "widths": [64, 32, 10]}\', or @file.json.',
)
@click.option("--name", default=None, help="A name to show instead of the file name.")
@with_client
def upload(client: Client, file: Path, arch_text: str, name: str | None) -> None:
    """Upload a checkpoint (.safetensors, or a .pt/.pth state dict); prints its id."""
    arch = _json_option(arch_text, "--arch")
    if not isinstance(arch, dict):
        raise click.BadParameter("--arch must be a JSON object with a 'name'.")
    checkpoint = client.upload_checkpoint(file, arch, name)
    click.echo(
        f"Checkpoint {checkpoint.name}: {json.dumps(checkpoint.arch)}, "
        f"{checkpoint.num_params:,} parameters, {checkpoint.format}, sha256 {checkpoint.sha256}",
        err=True,
    )
    click.echo(checkpoint.id)


@click.command("upload-dataset", cls=ClientCommand)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="A name to show instead of the file name.")
@with_client
def upload_dataset(client: Client, file: Path, name: str | None) -> None:
    """Upload a dataset (.npz or .safetensors with arrays x and y); prints its id."""
    dataset = client.upload_dataset(file, name)
    click.echo(
        f"Dataset {dataset.name}: {dataset.num_examples} examples of shape "
        f"{tuple(dataset.input_shape)}, {dataset.num_classes} classes",
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
            str(dataset.num_classes),
        ]
        for dataset in client.iter_datasets()
    ]
    click.echo(format_table(["id", "name", "examples", "input", "classes"], rows))


def _examples_column(dataset: Dataset) -> str:
    if not dataset.installed:
        return "not installed"
    return "by split" if dataset.num_examples is None else str(dataset.num_examples)


def _parse_param(text: str) -> tuple[str, Any]:
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise click.BadParameter(f"{text!r} is not key=value, e.g. epochs=2 or split=test.")
    try:
        return key.strip(), json.loads(value)
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
        if kind == "analyze":
            params["match"] = match
        elif kind == "match" and match != "none":
            params["method"] = match
        else:
            raise click.BadParameter(
                f"--match {match} applies to analyze jobs (none, weight, activation) and to "
                f"match jobs (weight, activation), not to a {kind} job."
            )
    return params


@click.command("submit", cls=ClientCommand)
@click.argument("kind", type=click.Choice(JOB_KINDS))
@click.argument("model_a", required=False)
@click.argument("model_b", required=False)
@click.option("--dataset", default=None, help="An uploaded dataset id or e.g. builtin:digits.")
@click.option(
    "--match",
    type=click.Choice(MATCH_CHOICES),
    default=None,
    help="Matching of B onto A: analyze's 'match', a match job's 'method'.",
)
@click.option(
    "--param",
    "param_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="One parameter; VALUE is read as JSON when it is JSON (epochs=2, alphas=[0,0.5,1]).",
)
@click.option("--params", "params_json", default=None, help="All parameters as JSON or @file.")
@click.option("--idempotency-key", default=None, help="Resubmitting with it returns the same job.")
@click.option("--wait", "wait_for_it", is_flag=True, help="Wait for the job, showing progress.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after seconds.")
@with_client
def submit(
    client: Client,
    kind: str,
    model_a: str | None,
    model_b: str | None,
    dataset: str | None,
    match: str | None,
    param_pairs: tuple[str, ...],
    params_json: str | None,
    idempotency_key: str | None,
    wait_for_it: bool,
    timeout: float | None,
) -> None:
    """Submit a job: KIND is match, interpolate or analyze (with checkpoints A and B) or train;
    prints the job id.

    \b
    llfc submit analyze A B --dataset builtin:digits --match weight --wait
    llfc submit train --dataset builtin:digits --param arch='{"name":"mlp","widths":[64,32,10]}'
    """
    params = build_params(kind, params_json, param_pairs, match)
    job = client.submit_job(kind, model_a, model_b, dataset, params, idempotency_key)
    click.echo(f"Submitted {job.kind} job {job.id} ({job.status}).", err=True)
    if wait_for_it:
        job = _wait_with_progress(client, job.id, timeout, quiet=False)
        click.echo(job.id)
        _finish_waiting(job)
        return
    click.echo(job.id)


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
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
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
    naive against matched, Conditions I and II. csv is long form (pair, metric, layer, alpha,
    value) for analyze, (key, value) otherwise.
    """
    job = client.get_job(job_id)
    if job.status == "failed":
        raise click.ClickException(one_line(f"Job {job.id} failed: {job.error or 'no reason'}"))
    if job.status == "cancelled":
        raise click.ClickException(f"Job {job.id} was cancelled; it has no result.")
    if job.status != "succeeded" or job.result is None:
        raise click.ClickException(
            f"Job {job.id} is {job.status} ({round(100 * job.progress.fraction)}%, "
            f"{job.progress.stage}); wait for it with 'llfc wait {job.id}'."
        )
    is_analysis = job.kind == "analyze" and "pairs" in job.result
    if output_format == "json":
        click.echo(json.dumps(job.result, indent=2))
    elif output_format == "csv":
        if is_analysis:
            headers = ["pair", "metric", "layer", "alpha", "value"]
            click.echo(_write_csv(analysis_rows(job.result), headers))
        else:
            artifact_rows = (
                (f"artifacts.{a.name}", a.checkpoint_id or a.url) for a in job.artifacts
            )
            rows = (*flatten(job.result), *artifact_rows)
            click.echo(_write_csv(iter(rows), ["key", "value"]))
    else:
        lines = [_job_heading(job), ""]
        if is_analysis:
            lines.append(analysis_table(job.result))
        else:
            lines += [*key_value_lines(job.result), *_artifact_lines(job)]
        click.echo("\n".join(lines))


@click.command("cancel", cls=ClientCommand)
@click.argument("job_id")
@with_client
def cancel(client: Client, job_id: str) -> None:
    """Cancel a job: a queued one never runs, a running one stops at its next batch."""
    job = client.cancel_job(job_id)
    if job.status == "cancelled":
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
    """Download a checkpoint's tensors, or every artifact of a job; prints the files written."""
    try:
        checkpoint = client.get_checkpoint(resource_id)
    except ApiError as error:
        if error.status != 404:
            raise
        checkpoint = None
    if checkpoint is not None:
        dest = output or Path(f"{checkpoint.id}.safetensors")
        click.echo(client.download_checkpoint(checkpoint.id, dest))
        return
    try:
        job = client.get_job(resource_id)
    except ApiError as error:
        if error.status != 404:
            raise
        raise click.ClickException(
            f"No checkpoint or job with id {resource_id!r} exists."
        ) from error
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


CLIENT_COMMANDS: list[click.Command] = [
    upload,
    upload_dataset,
    datasets,
    submit,
    jobs,
    status,
    wait,
    results,
    cancel,
    download,
]
