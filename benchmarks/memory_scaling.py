"""Peak memory of an analysis against the number of examples: it streams, so it should be flat.

Workload: ``analyze_pair`` with activation matching (so both the matching pass and the naive and
matched analyses run) of two random MLPs 784-512-512-512-10 on streamed synthetic data
(``SyntheticDataset``: never held whole), over 1,000, 10,000 and 50,000 examples. Each size runs
in a fresh process; after imports and a warm-up the peak-RSS counter is reset, and the peak
resident set of the measured analysis is read from ``/proc/self/status`` (VmHWM).

One JSON line per size, then one summary line with the growth of the peak from the smallest to
the largest size (target < 10%); the growth above the idle process is reported beside it.

    python benchmarks/memory_scaling.py [--size tiny|full]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from measure import emit, measure_call, run_worker

from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.archs import parse_arch
from llfc_core.data import SyntheticDataset

SIZES: dict[str, dict[str, Any]] = {
    "full": {"widths": [784, 512, 512, 512, 10], "examples": [1_000, 10_000, 50_000]},
    "tiny": {"widths": [784, 64, 64, 10], "examples": [100, 300, 600]},
}
CONFIG = AnalysisConfig(match="activation")
WARM_UP_EXAMPLES = 64
TARGET_GROWTH = 0.10


def _worker(widths: list[int], examples: int) -> dict[str, Any]:
    arch = parse_arch({"name": "mlp", "widths": widths})
    torch.manual_seed(0)
    state_a = arch.build().state_dict()
    state_b = arch.build().state_dict()
    cpu = torch.device("cpu")
    warm_up = SyntheticDataset(WARM_UP_EXAMPLES, arch.input_shape, arch.num_classes, seed=2)
    analyze_pair(arch, state_a, state_b, warm_up, CONFIG, device=cpu)
    data = SyntheticDataset(examples, arch.input_shape, arch.num_classes, seed=1)
    return measure_call(lambda: analyze_pair(arch, state_a, state_b, data, CONFIG, device=cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--worker", nargs=2, metavar=("WIDTHS", "EXAMPLES"))
    args = parser.parse_args()
    if args.worker:
        emit(_worker(json.loads(args.worker[0]), int(args.worker[1])))
        return
    setting = SIZES[args.size]
    records = []
    for examples in setting["examples"]:
        measured = run_worker(Path(__file__), [json.dumps(setting["widths"]), str(examples)])
        record = {
            "benchmark": "memory_scaling",
            "size": args.size,
            "widths": setting["widths"],
            "match": CONFIG.match,
            "batch_size": CONFIG.batch_size,
            "examples": examples,
            "seconds": round(measured["seconds"], 3),
            "peak_rss_mib": round(measured["peak_rss_mib"], 1),
            "rss_growth_mib": round(measured["rss_growth_mib"], 1),
        }
        emit(record)
        records.append(record)
    smallest, largest = records[0], records[-1]
    emit(
        {
            "benchmark": "memory_scaling",
            "size": args.size,
            "summary": True,
            "examples": [record["examples"] for record in records],
            "peak_growth": round(largest["peak_rss_mib"] / smallest["peak_rss_mib"] - 1, 4),
            "rss_growth_growth": round(
                largest["rss_growth_mib"] / max(smallest["rss_growth_mib"], 1) - 1, 4
            ),
            "target_peak_growth": TARGET_GROWTH,
        }
    )


if __name__ == "__main__":
    main()
