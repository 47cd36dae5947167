"""The README stays true: every setting is documented and every `llfc` command it names exists."""

from __future__ import annotations

import re
from pathlib import Path

from llfc_cli.main import main
from service.core.config import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme() -> None:
    documented = set(re.findall(r"`(LLFC_[A-Z_]+)`", README))
    settings = {f"LLFC_{name.upper()}" for name in Settings.model_fields}
    assert settings - documented == set(), "settings missing from the README's table"
    assert documented - settings - {"LLFC_URL", "LLFC_API_KEY"} == set(), (
        "README names unknown settings"
    )


def test_every_llfc_command_in_the_readme_exists() -> None:
    named = set(re.findall(r"\bllfc ([a-z][a-z-]+)", README))
    assert named, "the README names no llfc command"
    assert named - set(main.commands) == set()
