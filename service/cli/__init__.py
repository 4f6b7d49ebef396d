"""The `pipeserve` command line: one module per command group.

Owns the commands, the foreground server process (signals, exit codes), and turning any
pipeserve error into one clear line and an exit code.

Modules: `main` (the root group), `serve`, `keys`, `deploy`, `deployment`, `k8s` (the
commands), `server` (the foreground server process), `options` (options every command
shares), `params` (pipeline parameters from the command line), `errors` (stderr lines and
exit codes).

May import anything in `service`; nothing imports it.
"""

from service.cli.main import main

__all__ = ["main"]
