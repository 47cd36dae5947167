"""The README stays true: every setting is documented, every `llfc` command, repository path and
engine module it names exists, and the vgg keys it describes are the model's."""

from __future__ import annotations

import re
from pathlib import Path

from llfc_client.cli import main
from llfc_core.archs import parse_arch
from service.core.config import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.worker.yml")


def compose_variables() -> set[str]:
    """The ``LLFC_*`` variables the compose files substitute (``${LLFC_PORT:-8000}``): read by
    docker compose, not by the service."""
    root = Path(__file__).resolve().parents[1]
    texts = (root / name for name in COMPOSE_FILES)
    return {name for path in texts for name in re.findall(r"\$\{(LLFC_[A-Z_]+)", path.read_text())}


def test_every_setting_is_documented_in_the_readme() -> None:
    documented = set(re.findall(r"`(LLFC_[A-Z0-9_]+)`", README))
    settings = {f"LLFC_{name.upper()}" for name in Settings.model_fields}
    assert settings - documented == set(), "settings missing from the README's table"
    client_variables = {"LLFC_URL", "LLFC_API_KEY"}
    assert documented - settings - client_variables - compose_variables() == set(), (
        "README names unknown settings"
    )


def test_every_llfc_command_in_the_readme_exists() -> None:
    named = set(re.findall(r"\bllfc ([a-z][a-z-]+)", README))
    assert named, "the README names no llfc command"
    assert named - set(main.commands) == set()


ROOT = Path(__file__).resolve().parents[1]


def test_every_repository_path_the_readme_names_exists() -> None:
    top_level = {entry.name for entry in ROOT.iterdir()}
    named = {
        path
        for path in re.findall(r"`([A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]*)*)`", README)
        if path.split("/")[0] in top_level and ("/" in path or "." in path)
    }
    assert {"docs/API.md", "benchmarks/RESULTS.md", "RELIABILITY.md"} <= named
    assert {path for path in named if not (ROOT / path).exists()} == set()


def test_every_engine_module_the_readme_lists_exists() -> None:
    engine_section = README.split("## The engine: `llfc_core`", 1)[1].split("\n## ", 1)[0]
    modules = re.findall(r"^\| `([a-z_]+(?:/|\.py))` \|", engine_section, flags=re.MULTILINE)
    assert len(modules) >= 8
    assert [module for module in modules if not (ROOT / "llfc_core" / module).exists()] == []


def test_the_vgg_keys_the_readme_describes_are_the_models() -> None:
    vgg = README.split('**`{"name": "vgg"', 1)[1].split("- **", 1)[0]
    assert "`classifier.weight/bias`" in vgg and "`classifier.0/3/6`" in vgg
    keys = set(parse_arch({"name": "vgg", "depth": 11, "width": 0.0625}).build().state_dict())
    assert {"features.0.weight", "features.1.running_mean", "features.4.weight"} <= keys
    assert {key for key in keys if key.startswith("classifier")} == {
        "classifier.weight",
        "classifier.bias",
    }
