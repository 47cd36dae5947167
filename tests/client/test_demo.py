"""``llfc demo --small``: starts its own embedded service and shows the paper's experiment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _barrier(output: str, label: str) -> float:
    """The loss barrier printed in the demo's summary row for ``label``."""
    match = re.search(rf"^{re.escape(label)}\s+(\S+)", output, flags=re.MULTILINE)
    assert match, f"no summary row for {label!r} in:\n{output}"
    return float(match.group(1))


@pytest.mark.slow
def test_small_demo_trains_analyses_and_writes_plots(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {key: value for key, value in os.environ.items() if not key.startswith("LLFC_")}
    completed = subprocess.run(
        [sys.executable, "-m", "llfc_cli", "demo", "--small", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr + completed.stdout
    output = completed.stdout

    naive = _barrier(output, "independent, no matching")
    weight = _barrier(output, "independent, weight matching")
    activation = _barrier(output, "independent, activation matching")
    spawned = _barrier(output, "spawned, no matching")
    assert naive > 0.05
    assert weight < naive and activation < naive
    assert spawned < naive
    assert "=== spawned pair" in output

    plots = sorted(path.name for path in out.glob("*.png"))
    assert len(plots) == 12
    for slug in ("independent", "weight", "activation", "spawned"):
        for plot in ("lmc", "llfc", "conditions"):
            data = (out / f"{slug}-{plot}.png").read_bytes()
            assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert str(out.resolve()) in output
