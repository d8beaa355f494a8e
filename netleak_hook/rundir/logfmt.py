"""The daemon's log lines: logfmt (key=value pairs), one line per record,
so they read as text and parse with any logfmt tool (pure).

    time=2026-11-23T10:00:00.123456Z level=info pid=42 event=kill-switch-on
    iface=wg0 cause=down sessions=2 msg="wg0 is down: kill switch on"

Records logged with `extra={"fields": {...}}` carry those pairs, an
`event` first; any other record still gets time, level, pid and msg.
"""
from __future__ import annotations

import logging

from ..core.events import iso


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def value(v: object) -> str:
    """A logfmt value: bare when it can be, else a quoted string."""
    if v is None:
        return '""'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        v = f"{v:.6g}"
    text = str(v)
    if text and not any(c in text for c in ' ="\\') and text.isprintable():
        return text
    escaped = "".join(_ESCAPES.get(c) or (c if c.isprintable() else f"\\u{ord(c):04x}")
                      for c in text)
    return f'"{escaped}"'


def line(ts: float, level: str, pid: int, msg: str, fields: dict | None = None) -> str:
    pairs = [("time", iso(ts)), ("level", level.lower()), ("pid", pid)]
    f = dict(fields or {})
    if "event" in f:
        pairs.append(("event", f.pop("event")))
    pairs.extend(f.items())
    pairs.append(("msg", msg))
    return " ".join(f"{k}={value(v)}" for k, v in pairs)


class Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return line(record.created, record.levelname, record.process or 0, msg,
                    getattr(record, "fields", None))
