"""The ``llfc`` click group. Each module of commands adds itself here."""

from __future__ import annotations

import click

from llfc_cli.client_commands import CLIENT_COMMANDS
from llfc_cli.demo import DEMO_COMMANDS
from llfc_cli.server_commands import SERVER_COMMANDS


@click.group()
@click.version_option(package_name="llfc-align")
def main() -> None:
    """LLFC Align: tells whether, and why, two trained networks are connected, and aligns them."""


for command in [*SERVER_COMMANDS, *CLIENT_COMMANDS, *DEMO_COMMANDS]:
    main.add_command(command)
