"""``python -m llfc_cli``: the same as the ``llfc`` console script (the client's group, which
loads this package's commands through the ``llfc.commands`` entry points)."""

from llfc_client.cli import main

main()
