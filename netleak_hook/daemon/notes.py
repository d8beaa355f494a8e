"""The daemon's structured log lines, and clean-up steps that log their failure."""
from __future__ import annotations

import logging

log = logging.getLogger("netleak.daemon")


def note(event: str, msg: str, *args, level: int = logging.INFO, **fields) -> None:
    """A structured log line: EVENT and FIELDS as logfmt pairs, MSG for people."""
    log.log(level, msg, *args, extra={"fields": {"event": event, **fields}})


def step(what: str, fn, *args):
    """Run one clean-up step; a failure is logged and does not stop the rest."""
    try:
        return fn(*args)
    except Exception as e:
        log.warning("clean-up step '%s' failed: %s", what, e)
        return None
