"""``python -m llfc_cli``: the same as the ``llfc`` console script."""

from llfc_cli.main import main

main()
