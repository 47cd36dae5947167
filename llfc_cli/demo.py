"""``llfc demo``: the paper's experiment on real handwritten digits, through the service.

It trains two MLPs from different seeds and one spawned pair, analyses the independent pair with
no matching, weight matching and activation matching and the spawned pair as it is, prints the
tables of the poster's Fig. 3 in text, and writes the plots as PNG files.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from llfc_client import Client
from llfc_client.cli.tables import analysis_table, format_table
from llfc_client.errors import LLFCClientError
from llfc_client.models import Job, JobKind, JobStatus
from llfc_results import AnalysisResult

DATASET = "builtin:digits"
PLOTS = ("lmc", "llfc", "conditions")


@dataclass(frozen=True)
class DemoSize:
    """How big the demo's models and training are."""

    widths: tuple[int, ...]
    epochs: int
    spawn_epochs: int


FULL = DemoSize(widths=(64, 512, 512, 512, 10), epochs=10, spawn_epochs=1)
SMALL = DemoSize(widths=(64, 128, 128, 10), epochs=8, spawn_epochs=1)


@dataclass(frozen=True)
class Analysis:
    """One analyze job of the demo and the label it is shown under."""

    label: str
    slug: str
    job: Job


def _say(message: str) -> None:
    click.echo(message, err=False)


def _progress_printer(label: str) -> Any:
    interactive = sys.stdout.isatty()
    last = {"line": ""}

    def show(job: Job) -> None:
        line = f"  {label}: {job.status} {job.progress.fraction:4.0%} {job.progress.stage}"
        if interactive:
            click.echo("\r" + line[:100].ljust(100), nl=False)
        elif line != last["line"] and job.finished:
            click.echo(line)
        last["line"] = line

    return show


def _run(client: Client, label: str, **submission: Any) -> Job:
    """Submit a job, wait for it with live progress, and insist that it succeeded."""
    job = client.submit_job(**submission)
    finished = client.wait(job.id, on_progress=_progress_printer(label))
    if sys.stdout.isatty():
        click.echo()
    if finished.status != JobStatus.SUCCEEDED:
        raise click.ClickException(
            f"The {label} job {finished.id} ended {finished.status}: {finished.error}"
        )
    return finished


def _artifact_ids(job: Job) -> list[str]:
    return [a.checkpoint_id for a in job.artifacts if a.checkpoint_id is not None]


def _mean(values: Sequence[float | None]) -> str:
    """The mean of the finite values (None stands for a non-finite one), four decimals."""
    finite = [value for value in values if value is not None]
    return f"{statistics.mean(finite):.4f}" if finite else "-"


def _summary_row(label: str, result: AnalysisResult, pair_name: str) -> list[str]:
    pair = result.pairs[pair_name]
    return [
        label,
        _mean([pair.lmc.loss_barrier]),
        _mean([pair.lmc.error_barrier]),
        _mean(pair.llfc.cos_alpha["0.5"]),
        _mean(pair.llfc.cos_ab),
        _mean(pair.weak_additivity["0.5"]),
        _mean(pair.commutativity),
        "yes" if pair.lemma is not None and pair.lemma.holds else "no",
    ]


@contextmanager
def _service(url: str | None, out: Path) -> Iterator[str]:
    if url:
        yield url
        return
    from llfc_cli.embedded import embedded_service

    _say("Starting the embedded service (SQLite, local files, one worker)...")
    with embedded_service(log_path=out / "service.log") as started_url:
        _say(f"  running at {started_url} (log: {out / 'service.log'})")
        yield started_url


def run_demo(out: Path, url: str | None, size: DemoSize) -> None:
    """The whole demo; raises click.ClickException with a sentence on failure."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    arch = {"name": "mlp", "widths": list(size.widths)}
    widths = "-".join(map(str, size.widths))
    with _service(url, out) as base_url, Client(base_url) as client:
        _say(f"Training on {DATASET}: MLP {widths}, {size.epochs} epochs")
        independent = _run(
            client,
            "two independent modes (seeds 0 and 1)",
            kind=JobKind.TRAIN,
            dataset=DATASET,
            params={"arch": arch, "epochs": size.epochs, "seed": 0},
        )
        spawned = _run(
            client,
            f"a spawned pair (forked after {size.spawn_epochs} epoch)",
            kind=JobKind.TRAIN,
            dataset=DATASET,
            params={
                "arch": arch,
                "epochs": size.epochs,
                "seed": 2,
                "spawn_epochs": size.spawn_epochs,
            },
        )
        model_a, model_b = _artifact_ids(independent)[:2]
        spawn_a, spawn_b = _artifact_ids(spawned)[:2]

        _say("Analysing on the digits test split (LMC, LLFC, Conditions I and II)")
        plan = [
            ("independent, no matching", "independent", model_a, model_b, "none"),
            ("independent, weight matching", "weight", model_a, model_b, "weight"),
            ("independent, activation matching", "activation", model_a, model_b, "activation"),
            ("spawned, no matching", "spawned", spawn_a, spawn_b, "none"),
        ]
        analyses = [
            Analysis(
                label,
                slug,
                _run(
                    client,
                    label,
                    kind=JobKind.ANALYZE,
                    model_a=a,
                    model_b=b,
                    dataset=DATASET,
                    params={"match": match, "split": "test"},
                ),
            )
            for label, slug, a, b, match in plan
        ]
        results = {
            analysis.slug: AnalysisResult.from_json(analysis.job.result or {})
            for analysis in analyses
        }

        _say("\nBarriers and mean distances over layers (alpha = 0.5):\n")
        header = [
            "pair",
            "loss barrier",
            "error barrier",
            "LLFC E[1-cos]",
            "E[1-cos(A,B)]",
            "Cond I",
            "Cond II",
            "err<=2eps",
        ]
        rows = [_summary_row("independent, no matching", results["independent"], "naive")]
        rows += [
            _summary_row(f"independent, {slug} matching", results[slug], "matched")
            for slug in ("weight", "activation")
        ]
        rows.append(_summary_row("spawned, no matching", results["spawned"], "naive"))
        _say(format_table(header, rows))
        endpoints = results["independent"].endpoints
        _say(
            f"\nTest error of the modes: A {_mean([endpoints['a'].measured.error])}, "
            f"B {_mean([endpoints['b'].measured.error])}"
        )
        for title, slug in (
            ("independent pair, naive against weight matching", "weight"),
            ("independent pair, naive against activation matching", "activation"),
            ("spawned pair", "spawned"),
        ):
            _say(f"\n=== {title}\n")
            _say(analysis_table(results[slug]))

        written = []
        for analysis in analyses:
            for plot in PLOTS:
                path = out / f"{analysis.slug}-{plot}.png"
                path.write_bytes(client.get_plot(analysis.job.id, plot))
                written.append(path)
    _say(f"\nWrote {len(written)} plots to {out.resolve()}/ :")
    for path in written:
        _say(f"  {path.name}")
    _say(f"Done in {time.monotonic() - started:.0f} s.")


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("llfc-demo"),
    show_default=True,
    help="Folder for the PNG plots.",
)
@click.option(
    "--url",
    envvar="LLFC_URL",
    default=None,
    help="Use this running service instead of starting an embedded one.",
)
@click.option(
    "--small",
    is_flag=True,
    help="Smaller models and fewer epochs (for CI); the default is the full demo.",
)
def demo(out: Path, url: str | None, small: bool) -> None:
    """Show LLFC and the effect of matching on real handwritten digits, with plots."""
    try:
        run_demo(out, url, SMALL if small else FULL)
    except LLFCClientError as error:
        raise click.ClickException(str(error)) from error
    except RuntimeError as error:
        raise click.ClickException(str(error)) from error


DEMO_COMMANDS = [demo]
