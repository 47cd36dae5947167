"""Service upload: a large safetensors checkpoint sent to ``POST /v1/checkpoints`` with curl.

Workload: a real MLP checkpoint (``full``: widths 8192-8192-8192-8192-8192-10, 268.5 M float32
parameters, 1.07 GB; ``tiny``: 2048-2048-2048-10, 33.6 MB) built with safetensors, uploaded once
to ``llfc serve`` (the embedded mode; its API is the main process) with
``LLFC_MAX_UPLOAD_BYTES`` and ``LLFC_MAX_PARAMS`` just above it.

Baseline, in the same run: the same curl command, with the same multipart body, to a minimal
HTTP server in this file that copies the request body from its socket into a file, flushes it
to disk and answers 201 (the loopback-plus-disk ceiling for any durable upload endpoint). A
plain file copy of the checkpoint (page cache, no flush) is reported beside it.

Reported: end-to-end MB/s (from starting curl to its exit after the 201) for both and their
ratio; the server's resident-set growth during the request (``VmHWM`` after, peak counter reset
just before, minus ``VmRSS`` before, read from ``/proc/<pid>/status``); and the server-side
split of the request, observed from outside by sampling the store's ``incoming/`` folder every
few milliseconds:

- ``stream``: until the upload's temporary file holds every byte (socket to disk, hashed);
- ``read_validate``: until the server starts writing the cleaned safetensors copy
  (``read_checkpoint`` + ``validate_state_dict``);
- ``store``: the rest (``save_safetensors``, re-hashing the copy, the database row, the answer).

A server that writes no cleaned copy shows ``stream`` and ``after_stream`` instead.

The memory samples of each phase give its own peak growth, split into ``RssAnon`` (the
process's own allocations) and ``RssFile`` (pages of files it mapped, e.g. a checkpoint read
through ``mmap``: page cache, but counted in ``VmRSS`` and so in the target).

    PYTHONPATH=tests python benchmarks/service_upload.py [--size tiny|full]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from measure import emit
from safetensors.torch import save_file
from service_servers import (
    Server,
    benchmark_env,
    free_port,
    machine_load,
    proc_status_kib,
    reset_peak_rss,
    server_group,
)

WIDTHS = {
    "full": [8192, 8192, 8192, 8192, 8192, 10],
    "tiny": [2048, 2048, 2048, 10],
}
WARM_UP_ARCH: dict[str, Any] = {"name": "mlp", "widths": [16, 4]}
TARGETS = {"mb_per_s": 200.0, "rss_growth_mib": 64.0}
SAMPLE_INTERVAL_S = 0.005
BASELINE_BUFFER_BYTES = 1024 * 1024
MB = 1e6
MIB = 1024 * 1024


def mlp_checkpoint(widths: list[int], path: Path) -> int:
    """Write a randomly initialised MLP's state dict (``0.weight``, ``0.bias``, ``2.weight``...)
    as safetensors; returns its number of parameters."""
    generator = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        bound = fan_in**-0.5
        for name, shape in (("weight", (fan_out, fan_in)), ("bias", (fan_out,))):
            tensor = torch.empty(shape).uniform_(-bound, bound, generator=generator)
            state[f"{2 * index}.{name}"] = tensor
    save_file(state, str(path))
    return sum(tensor.numel() for tensor in state.values())


# --- The baseline server ------------------------------------------------------------------------


def _read_request_head(connection: socket.socket) -> tuple[bytes, bytes]:
    """The request's header block and whatever body bytes arrived with it."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionError("The client closed the connection inside the headers.")
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    return head, rest


def serve_baseline(port: int, folder: Path) -> None:
    """Answer each POST by copying its body (Content-Length bytes) into a file, then 201.

    One connection at a time, one ``recv_into`` buffer, no parsing of the body, and an
    ``fsync`` before the answer, as the service does: the least work an HTTP endpoint can do to
    keep the bytes it was sent.
    """
    listener = socket.create_server(("127.0.0.1", port))
    buffer = bytearray(BASELINE_BUFFER_BYTES)
    view = memoryview(buffer)
    while True:
        connection, _ = listener.accept()
        with connection:
            head, body_start = _read_request_head(connection)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            with tempfile.NamedTemporaryFile(dir=folder, delete=False) as sink:
                sink.write(body_start)
                remaining = length - len(body_start)
                while remaining > 0:
                    count = connection.recv_into(view, min(remaining, len(buffer)))
                    if count == 0:
                        break
                    sink.write(view[:count])
                    remaining -= count
                sink.flush()
                os.fsync(sink.fileno())
            if not head.startswith(b"POST "):
                status = b"200 OK"
            elif remaining == 0:
                status = b"201 Created"
            else:
                status = b"400 Bad Request"
            connection.sendall(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            os.unlink(sink.name)


# --- Measuring one upload -----------------------------------------------------------------------


MEMORY_FIELDS = ("VmRSS", "RssAnon", "RssFile")


@dataclass(frozen=True)
class Sample:
    """The server's memory (KiB, ``MEMORY_FIELDS``) and its incoming files' sizes at a moment."""

    moment: float
    memory_kib: dict[str, int]
    incoming_sizes: dict[str, int]


@dataclass
class Sampler:
    """Samples a server's memory and the sizes of the files in its incoming folder, in a thread."""

    pid: int
    incoming: Path | None
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _incoming_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        if self.incoming is None or not self.incoming.is_dir():
            return sizes
        with os.scandir(self.incoming) as entries:
            for entry in entries:
                # A file can be renamed away between listing and stat.
                with suppress(FileNotFoundError):
                    sizes[entry.name] = entry.stat().st_size
        return sizes

    def _run(self) -> None:
        while not self._stop.is_set():
            memory = proc_status_kib(self.pid, *MEMORY_FIELDS)
            self.samples.append(Sample(time.perf_counter(), memory, self._incoming_sizes()))
            time.sleep(SAMPLE_INTERVAL_S)


def curl_upload(url: str, path: Path, arch: dict[str, Any], response_path: Path) -> int:
    """POST ``path`` as the multipart ``file`` part with ``arch``; returns the HTTP status."""
    command = [
        "curl",
        "--silent",
        "--show-error",
        "--output",
        str(response_path),
        "--write-out",
        "%{http_code}",
        # No "Expect: 100-continue" round trip: the two servers would answer it differently.
        "--header",
        "Expect:",
        "--form",
        f"file=@{path};type=application/octet-stream",
        "--form-string",
        f"arch={json.dumps(arch)}",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(done.stdout)


def _growth_mib(samples: list[Sample], before: dict[str, int]) -> dict[str, float]:
    """Peak growth over ``samples`` of the resident set and of its two parts, in MiB."""
    return {
        f"{name}_growth_mib": round(
            max((sample.memory_kib[name] - before[name] for sample in samples), default=0) / 1024,
            1,
        )
        for name in MEMORY_FIELDS
    }


def measure_upload(
    server: Server,
    url: str,
    path: Path,
    arch: dict[str, Any],
    incoming: Path | None,
    response_path: Path,
) -> dict[str, Any]:
    """One upload: its time, the server's RSS growth and (with ``incoming``) the phase split."""
    file_bytes = path.stat().st_size
    load = machine_load()
    before = proc_status_kib(server.pid, *MEMORY_FIELDS)
    reset_peak_rss(server.pid)
    sampler = Sampler(server.pid, incoming)
    sampler.start()
    started = time.perf_counter()
    status = curl_upload(url, path, arch, response_path)
    finished = time.perf_counter()
    sampler.stop()
    peak = proc_status_kib(server.pid, "VmHWM")["VmHWM"]
    if status != 201:
        raise RuntimeError(f"The upload answered {status}: {response_path.read_text()[:2000]}")
    seconds = finished - started
    measured: dict[str, Any] = {
        **load,
        "seconds": round(seconds, 6),
        "mb_per_s": round(file_bytes / seconds / MB, 1),
        "rss_before_mib": round(before["VmRSS"] / 1024, 1),
        "rss_growth_mib": round((peak - before["VmRSS"]) / 1024, 1),
        "sampled": _growth_mib(sampler.samples, before),
        "rss_after_mib": round(proc_status_kib(server.pid, "VmRSS")["VmRSS"] / 1024, 1),
    }
    if incoming is not None:
        measured["phases"] = _phases(sampler.samples, started, finished, file_bytes, before)
    return measured


def _first_moment(samples: list[Sample], seen: Callable[[str, int], bool]) -> float | None:
    return next(
        (
            sample.moment
            for sample in samples
            if any(seen(name, size) for name, size in sample.incoming_sizes.items())
        ),
        None,
    )


def _phases(
    samples: list[Sample],
    started: float,
    finished: float,
    file_bytes: int,
    before: dict[str, int],
) -> dict[str, Any]:
    """Split the request at the first sample where the upload's temporary file held every byte
    and at the first where the cleaned copy (``writing-*``) existed, if the server wrote one."""
    streamed = _first_moment(
        samples, lambda name, size: name.startswith("incoming-") and size >= file_bytes
    )
    if streamed is None:
        return {"note": "the request was too short for the sampler to see its phases"}
    storing = _first_moment(samples, lambda name, _size: name.startswith("writing-"))
    bounds = {"stream": (started, streamed)}
    if storing is None:
        bounds["after_stream"] = (streamed, finished)
    else:
        bounds["read_validate"] = (streamed, storing)
        bounds["store"] = (storing, finished)
    phases: dict[str, Any] = {"sample_interval_s": SAMPLE_INTERVAL_S}
    for name, (begin, end) in bounds.items():
        inside = [sample for sample in samples if begin <= sample.moment <= end]
        phases[name] = {
            "seconds": round(end - begin, 3),
            "mb_per_s": round(file_bytes / (end - begin) / MB, 1) if end > begin else None,
            **_growth_mib(inside, before),
        }
    return phases


def file_copy_mb_per_s(path: Path, folder: Path) -> float:
    """A plain copy of the checkpoint within the same filesystem (disk ceiling)."""
    target = folder / "copy.bin"
    started = time.perf_counter()
    shutil.copyfile(path, target)
    seconds = time.perf_counter() - started
    target.unlink()
    return round(path.stat().st_size / seconds / MB, 1)


def run(size: str, work_dir: Path) -> dict[str, Any]:
    widths = WIDTHS[size]
    arch = {"name": "mlp", "widths": widths}
    checkpoint = work_dir / "checkpoint.safetensors"
    num_params = mlp_checkpoint(widths, checkpoint)
    file_bytes = checkpoint.stat().st_size
    warm_up = work_dir / "warm-up.safetensors"
    mlp_checkpoint(WARM_UP_ARCH["widths"], warm_up)
    data_dir = work_dir / "llfc-data"
    env = benchmark_env(
        data_dir,
        LLFC_MAX_UPLOAD_BYTES=str(file_bytes + MIB),
        LLFC_MAX_PARAMS=str(num_params),
    )
    baseline_dir = work_dir / "baseline"
    baseline_dir.mkdir()
    with server_group(work_dir) as servers:
        port = free_port()
        ours = servers.start_llfc("llfc-serve", ["serve", "--port", str(port)], env, port)
        baseline_port = free_port()
        baseline = servers.start(
            "baseline",
            [sys.executable, __file__, "--baseline-server", str(baseline_port), str(baseline_dir)],
            os.environ,
            baseline_port,
        )
        ours.wait_ready("/readyz")
        baseline.wait_ready()
        response = work_dir / "response.json"
        # The first upload imports and initialises what any upload needs; it is not measured.
        curl_upload(f"{ours.base_url}/v1/checkpoints", warm_up, WARM_UP_ARCH, response)
        ours_measured = measure_upload(
            ours,
            f"{ours.base_url}/v1/checkpoints",
            checkpoint,
            arch,
            data_dir.resolve() / "blobs" / "incoming",
            response,
        )
        stored = json.loads(response.read_text())
        baseline_measured = measure_upload(
            baseline, f"{baseline.base_url}/upload", checkpoint, arch, None, response
        )
    if stored["sha256"] != _sha256(checkpoint) or stored["num_params"] != num_params:
        raise RuntimeError(f"The service stored something else than the upload: {stored}")
    return {
        "benchmark": "service_upload",
        "size": size,
        "arch": arch,
        "file_bytes": file_bytes,
        "server": "llfc serve (embedded: SQLite, filesystem broker, auth off), API process",
        "client": "curl -F file=@checkpoint.safetensors -F arch=...",
        "ours": ours_measured,
        "baseline": {
            "what": "the same curl upload to a minimal socket server that copies the body to "
            "a file and fsyncs it (benchmarks/service_upload.py --baseline-server)",
            **baseline_measured,
        },
        "file_copy_mb_per_s": file_copy_mb_per_s(checkpoint, work_dir),
        "ratio_mb_per_s": round(ours_measured["mb_per_s"] / baseline_measured["mb_per_s"], 3),
        "targets": TARGETS,
        "meets_targets": {
            "mb_per_s": ours_measured["mb_per_s"] >= TARGETS["mb_per_s"],
            "rss_growth_mib": ours_measured["rss_growth_mib"] < TARGETS["rss_growth_mib"],
        },
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(WIDTHS), default="full")
    parser.add_argument("--baseline-server", nargs=2, metavar=("PORT", "FOLDER"))
    args = parser.parse_args()
    if args.baseline_server:
        serve_baseline(int(args.baseline_server[0]), Path(args.baseline_server[1]))
        return
    with tempfile.TemporaryDirectory(prefix="llfc-upload-bench-") as work_dir:
        emit(run(args.size, Path(work_dir)))


if __name__ == "__main__":
    main()
