"""The `pipeserve` command line: one module per command group.

Owns the commands, the foreground server process (signals, exit codes), and turning any
pipeserve error into one clear line and an exit code.

May import anything in `service`; nothing imports it.
"""

from service.cli.main import main

__all__ = ["main"]
