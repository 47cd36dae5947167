"""The client distribution works without the server's stack: importing it and running a client
verb's --help loads no torch, FastAPI, SQLAlchemy or Celery."""

from __future__ import annotations

import json
import subprocess
import sys

SERVER_STACK = ("torch", "fastapi", "sqlalchemy", "celery", "llfc_core", "service", "worker")

PROBE = """
import json, sys
import llfc_client, llfc_results
from llfc_client.cli import main
try:
    main(["results", "--help"])
except SystemExit:
    pass
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in {stack})))
"""


def test_the_client_and_its_verbs_import_no_server_stack() -> None:
    # A fresh interpreter: this one has torch loaded already. With the server installed too, the
    # `llfc` group also loads the server's commands (entry points), which must stay light.
    completed = subprocess.run(
        [sys.executable, "-c", PROBE.format(stack=repr(set(SERVER_STACK)))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "Usage: " in completed.stdout
    loaded = json.loads(completed.stdout.splitlines()[-1])
    assert loaded == []
