"""Where pipeline modules are imported from: the working directory, as `python -m` has it.

pipeserve runs as `python -P -m service`, so the working directory is not on `sys.path`
while pipeserve itself is imported: a project's own `service/` package there cannot shadow
it. The directory goes first only once pipeserve is loaded, in every process that loads
pipelines: the CLI's, and each `--workers` process (which would otherwise inherit it at
the front of `sys.path` before importing pipeserve, and import the project's `service`).
"""

from __future__ import annotations

import os
import sys


def put_cwd_first() -> None:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def drop_cwd() -> None:
    """Before starting worker processes: they copy this `sys.path` before importing us."""
    while os.getcwd() in sys.path:
        sys.path.remove(os.getcwd())
