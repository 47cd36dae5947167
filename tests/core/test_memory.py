"""The analysis streams: its peak memory does not grow with the number of examples.

Each size runs in a fresh Python process. After imports, model building and a warm-up run, the
process's peak-RSS counter is reset (``/proc/self/clear_refs``), so the reported peak (VmHWM) is
the resident memory the measured analysis needed, data generation included.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

MEASURE = textwrap.dedent(
    """
    import json, sys
    import torch
    from llfc_core.analysis import AnalysisConfig, analyze_pair
    from llfc_core.archs import parse_arch
    from llfc_core.data import SyntheticDataset

    def rss_kib(field):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1])

    torch.set_num_threads(1)
    arch = parse_arch({"name": "mlp", "widths": [64, 256, 256, 10]})
    torch.manual_seed(0)
    state_a = arch.build().state_dict()
    state_b = arch.build().state_dict()
    config = AnalysisConfig(match="activation", batch_size=256)
    cpu = torch.device("cpu")
    warm_up = SyntheticDataset(512, (64,), 10, seed=1)
    analyze_pair(arch, state_a, state_b, warm_up, config, device=cpu)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = rss_kib("VmRSS:")
    data = SyntheticDataset(int(sys.argv[1]), (64,), 10, seed=2)
    analyze_pair(arch, state_a, state_b, data, config, device=cpu)
    print(json.dumps({"peak_kib": rss_kib("VmHWM:"), "before_kib": before}))
    """
)


def _peak_kib(num_examples: int) -> dict[str, int]:
    completed = subprocess.run(
        [sys.executable, "-c", MEASURE, str(num_examples)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_grows_less_than_ten_percent_for_ten_times_more_examples() -> None:
    small = _peak_kib(2_000)
    large = _peak_kib(20_000)
    assert large["peak_kib"] < 1.10 * small["peak_kib"], (small, large)
    # The measurement is real: the analysis itself needs memory above the idle process.
    assert small["peak_kib"] > small["before_kib"]
