"""Structured logs: one JSON object a line (or plain text for a console), on stderr."""

from __future__ import annotations

import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson

# Attributes every LogRecord has; anything else came from `extra=` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        ]
        if extras:
            head, _, rest = line.partition("\n")
            line = f"{head} [{' '.join(extras)}]" + (f"\n{rest}" if rest else "")
        return line


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes lines to a block-buffered copy of stderr, flushed every `interval` seconds and
    at once for a warning or worse: one system call per batch of access lines, not one a
    request. A crash loses at most `interval` seconds of info lines, never an error."""

    def __init__(self, interval: float = 0.2) -> None:
        stream = open(sys.stderr.fileno(), "w", buffering=1 << 16, closefd=False)
        super().__init__(stream)
        self._stop = threading.Event()
        flusher = threading.Thread(
            target=self._flush_every, args=(interval,), name="pipeserve-log-flush", daemon=True
        )
        flusher.start()

    def _flush_every(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.flush()
            except (OSError, ValueError):  # the stream was closed or swapped under us
                pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """A line formatted already (an access line: see `log_access`)."""
        with self.lock:  # type: ignore[union-attr]
            self.stream.write(line + self.terminator)

    def close(self) -> None:
        self._stop.set()
        self.flush()
        super().close()
        self.stream.close()  # ours (stderr's descriptor stays open)


def configure_logging(level: str, fmt: str) -> None:
    """Route pipeserve's and uvicorn's loggers through one handler in the chosen format."""
    handler = BatchedStreamHandler()
    handler.setFormatter(JSONFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    for previous in root.handlers:
        previous.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True
    # Alembic narrates every migration check at info level; the run store logs its own line.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Our access log replaces uvicorn's.
    logging.getLogger("uvicorn.access").disabled = True


def flush_logs() -> None:
    """Write out buffered log lines: before a line printed straight to stderr, say."""
    for handler in logging.getLogger().handlers:
        handler.flush()


ACCESS = logging.getLogger("pipeserve.access")


def log_access(
    method: str, path: str, status: int, duration: float, run_id: str | None, request_id: str
) -> None:
    """One access line: what `ACCESS.info("%s %s %d", ..., extra={...})` would log.

    When the line would go to our own JSON handler only (as `pipeserve serve` sets up), it
    is written as that handler's formatter would write it, without a LogRecord and the
    logging machinery around it: 3 us instead of 14, on every request. Any other set-up
    (a handler or filter of the user's, the console format) gets a real record.
    """
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    handlers = logging.getLogger().handlers
    handler = handlers[0] if len(handlers) == 1 else None
    if (
        isinstance(handler, BatchedStreamHandler)
        and type(handler.formatter) is JSONFormatter
        and not (ACCESS.handlers or ACCESS.filters or handler.filters)
        and ACCESS.propagate
        and handler.level <= logging.INFO
    ):
        line = {
            "time": datetime.fromtimestamp(time.time(), UTC),
            "level": "info",
            "logger": ACCESS.name,
            "message": f"{method} {path} {status}",
            "method": method,
            "path": path,
            "status": status,
            "duration": round(duration, 6),
            "run_id": run_id,
            "request_id": request_id,
        }
        handler.write_line(orjson.dumps(line).decode())
        return
    record = logging.LogRecord(
        ACCESS.name, logging.INFO, __file__, 0, "%s %s %d", (method, path, status), None
    )
    record.method = method
    record.path = path
    record.status = status
    record.duration = round(duration, 6)
    record.run_id = run_id
    record.request_id = request_id
    ACCESS.handle(record)
