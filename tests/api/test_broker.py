"""The broker contract (service/broker.py): importing the service builds nothing, and the worker
runs every job through one task, also under the per-kind names of messages queued before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def _python(code: str, data_dir: Path) -> str:
    env = {**os.environ, "LLFC_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPOSITORY,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_the_api_and_the_queue_builds_no_celery_app_and_creates_no_folders(
    tmp_path: Path,
) -> None:
    loaded = json.loads(
        _python(
            "import json, sys\n"
            "import service.main, service.queue, service.maintenance\n"
            "from service import broker\n"
            "print(json.dumps({'built': broker.celery_app.cache_info().currsize,\n"
            "  'worker': sorted(m for m in sys.modules if m.split('.')[0] == 'worker')}))",
            tmp_path,
        )
    )
    assert loaded == {"built": 0, "worker": []}
    assert not (tmp_path / "broker").exists()


def test_the_worker_runs_jobs_under_the_one_task_name_and_the_old_per_kind_names(
    tmp_path: Path,
) -> None:
    registered = json.loads(
        _python(
            "import json, sys\n"
            "import worker.tasks\n"
            "from service.broker import celery_app\n"
            "app = celery_app()\n"
            "print(json.dumps({name: app.tasks[name].run.__name__\n"
            "  for name in app.tasks if name.startswith('llfc.')}))",
            tmp_path,
        )
    )
    assert registered == {
        name: "job_task"
        for name in ("llfc.run_job", "llfc.match", "llfc.interpolate", "llfc.analyze", "llfc.train")
    }
