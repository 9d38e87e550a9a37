"""Structured logs: `key=value` text (default) or one JSON object per line.

Pass fields with `extra={...}`; they are printed after the message.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["configure_logging"]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or "=" in text or not text) else text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        parts = [ts, f"{record.levelname.lower():7}", f"{record.name}:", record.getMessage()]
        parts += [f"{k}={_text_value(v)}" for k, v in _fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        obj.update(_fields(record))
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # py-libp2p's logger does not propagate (shared/notes/libp2p.md): wire it in explicitly.
    # It logs ordinary peer churn (resets, refused dials) as errors; membership reports
    # peers coming and going, so libp2p speaks only when debugging.
    lib = logging.getLogger("libp2p")
    lib.handlers[:] = [handler]
    lib.setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.CRITICAL)
    lib.propagate = False
    # libp2p pins its auto-connector's logger at INFO (a line every 10 s): let it inherit.
    logging.getLogger("libp2p.network.auto_connector").setLevel(logging.NOTSET)
