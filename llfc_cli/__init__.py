"""The ``llfc`` command line: server commands here, client commands registered alongside."""
