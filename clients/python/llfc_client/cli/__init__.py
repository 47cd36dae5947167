"""The ``llfc`` command: the client verbs, plus every command another installed distribution
offers through the ``llfc.commands`` entry-point group.

A client-only install (``pip install llfc-client``) gives the verbs that talk to a service; the
server package (``llfc-align``) registers its own (serve, api, worker, migrate, keys, requeue,
demo) in that group, so one ``llfc`` shows them all and only one distribution owns the script.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import click

from llfc_client.cli.commands import CLIENT_COMMANDS

COMMAND_GROUP = "llfc.commands"


@click.group()
@click.version_option(package_name="llfc-client")
def main() -> None:
    """LLFC Align: tells whether, and why, two trained networks are connected, and aligns them."""


def _plugin_commands() -> list[click.Command]:
    """Each entry point of the group names a list of click commands."""
    commands: list[click.Command] = []
    for entry_point in entry_points(group=COMMAND_GROUP):
        commands.extend(entry_point.load())
    return commands


for command in [*CLIENT_COMMANDS, *_plugin_commands()]:
    main.add_command(command)
