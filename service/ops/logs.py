"""Logging as JSON lines on stdout (or plain text for a terminal).

Every line but the access log's (`service.ops.access_log` writes those, faster, in the same
shape): fields passed as `extra` follow the message; never a usersig, a secret or a body.
Fields are made safe by `service.ops.log_text`, and in text a traceback's lines are marked
as its own so none can pass for a log line; JSON escapes by itself.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Final, Literal

import msgspec

from service.ops.access_log import ACCESS
from service.ops.log_text import MAX_MESSAGE_CHARS, bounded, escaped

# uvicorn adds color_message, an ANSI-coloured copy of the message.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}
_encoder: Final = msgspec.json.Encoder()


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        name: bounded(value) if isinstance(value, str) else value
        for name, value in vars(record).items()
        if name not in _STANDARD and not name.startswith("_")
    }


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escaped(bounded(record.message, MAX_MESSAGE_CHARS))
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        # A traceback spans lines; each starts with "| " so none can pass for a log line.
        return "\n".join(f"| {line}" for line in super().formatException(ei).splitlines())

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(f"| {line}" for line in stack_info.splitlines())

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{name}={escaped(str(value))}" for name, value in _extras(record).items())
        line = super().format(record)
        if not extras:
            return line
        first, newline, rest = line.partition("\n")
        return f"{first} {extras}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": bounded(record.getMessage(), MAX_MESSAGE_CHARS),
        }
        line.update(_extras(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(line).decode()


def setup_logging(level: str, fmt: Literal["json", "text"]) -> None:
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    ACCESS.configure(fmt)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # uvicorn's access line holds the whole URL, usersig included; ours (service.access) replaces it.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers[:] = []
    uvicorn_access.propagate = False
    uvicorn_access.disabled = True
