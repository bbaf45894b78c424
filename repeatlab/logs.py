"""Logging for every repeatlab process: one format, set up once by the CLI (or a component), used everywhere else
through `log = logging.getLogger(__name__)`.

- Human lines on a terminal: the message, with `warning: ` / `error: ` in front from WARNING up.
- JSON lines when asked (`--log-format json` or REPEATLAB_LOG_FORMAT=json): one object per record with `time`,
  `level`, `logger`, `message`, the torchrun `rank` when there is one, and the record's `data` (a dict passed as
  `extra={"data": ...}`) for machine-readable events.
- Rank 0 only under torchrun: other ranks log warnings and errors only (every rank's INFO lines would say the same
  thing WORLD_SIZE times).
- `progress(...)`: a tqdm bar on a terminal, for rank 0, in human mode; a plain iterator otherwise (logs and CI output
  never fill with carriage returns).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
FORMATS = ("human", "json")
FORMAT_ENV = "REPEATLAB_LOG_FORMAT"
_HANDLER_NAME = "repeatlab"


def rank() -> int | None:
    """This process's torchrun rank, or None outside torchrun."""
    value = os.environ.get("RANK")
    return int(value) if value is not None and value.isdigit() else None


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname.lower()}: {message}"
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return message


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if rank() is not None:
            entry["rank"] = rank()
        data = getattr(record, "data", None)
        if isinstance(data, dict):
            entry["data"] = data
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class RankZeroFilter(logging.Filter):
    """Pass everything on rank 0 (or outside torchrun); only WARNING and above elsewhere."""

    def filter(self, record: logging.LogRecord) -> bool:
        return rank() in (None, 0) or record.levelno >= logging.WARNING


class _StderrHandler(logging.StreamHandler):
    """A handler on whatever sys.stderr is when a record is emitted (not when logging was set up), so a replaced
    stderr (pytest's capture, a redirect) never receives records through a stale, closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it
        pass


def log_format() -> str:
    value = os.environ.get(FORMAT_ENV, "human").strip().lower() or "human"
    return value if value in FORMATS else "human"


def setup(fmt: str | None = None, level: int | str = logging.INFO, stream: Any = None) -> None:
    """Configure the `repeatlab` logger tree: one handler on stderr (replaced, never doubled, on a second call)."""
    fmt = fmt or log_format()
    os.environ[FORMAT_ENV] = fmt  # child processes (torchrun ranks) log the same way
    logger = logging.getLogger("repeatlab")
    for handler in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    handler.addFilter(RankZeroFilter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = True  # pytest's caplog and an application's root handlers still see the records


def ensure_configured() -> None:
    """setup() unless logging is configured already (by the CLI, or by an application's root handlers): the steps
    call it, so a KFP component's INFO lines reach its pod log without the component configuring anything."""
    if not logging.getLogger("repeatlab").handlers and not logging.getLogger().handlers:
        setup()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate with a tqdm bar where a person watches (a terminal, human format, rank 0), silently otherwise."""
    show = sys.stderr.isatty() and log_format() == "human" and rank() in (None, 0)
    if not show:
        yield from iterable
        return
    from tqdm import tqdm

    yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, file=sys.stderr)
