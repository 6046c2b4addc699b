"""Logging set-up: plain text for people, one JSON object per line for log collectors."""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "role", "pid"}`` plus ``exc`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "role": os.environ.get("KIT_ROLE", ""),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


# The kit's loggers (services, layers, uvicorn's): set up here, never left to the app's logging.
OWN = ("layerkit", "layer", "uvicorn")


def setup(log_format: str, level: str = "INFO") -> None:
    """Route the kit's loggers, and the root logger, to stderr in ``log_format``.

    The kit's loggers get a handler of their own and do not propagate, so an app's logging
    set-up (a Django ``LOGGING`` with its own root, or ``disable_existing_loggers``) cannot
    hide them; the CLI calls this again once the app is imported, which undoes any disabling.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        role = os.environ.get("KIT_ROLE", "")
        text = logging.Formatter(
            f"%(asctime)s %(levelname)s {role}[%(process)d] %(name)s: %(message)s",
            "%Y-%m-%dT%H:%M:%SZ",
        )
        # UTC: importing a Django app sets the process's TZ to its TIME_ZONE (America/Chicago
        # by default), which moved the kit's timestamps hours away from the JSON lines' and
        # from every other process's.
        text.converter = time.gmtime
        handler.setFormatter(text)
    for logger in (logging.getLogger(), *(logging.getLogger(name) for name in OWN)):
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = logger is logging.getLogger()
        logger.disabled = False
    for name, child in logging.root.manager.loggerDict.items():
        if isinstance(child, logging.Logger) and name.partition(".")[0] in OWN:
            child.disabled = False
            if name not in OWN:  # children reach the handler through their top logger
                child.handlers[:] = []
                child.propagate = True
