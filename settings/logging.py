"""Logging of every harvest process: one format for workers, beat and the CLI.

``HARVEST_LOG_FORMAT=text`` (default) prints ``time level logger [task_name task_id] message``;
``json`` prints one JSON object per line (python-json-logger) with the same fields, plus the
structured fields a record carries. Plan transitions are logged in exactly one place
(:meth:`harvest.store.PlanStore.transition` / ``create``) as ``plan_transition`` records with
``plan_id``, ``symbol``, ``action``, ``from_state``, ``state``, ``reason``; the Celery task id
is added to every record emitted inside a task by :class:`TaskContextFilter`.

Records never carry API keys: they are not task arguments and no code logs settings.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(task_name)s %(task_id)s] %(message)s"
JSON_FIELDS = ["asctime", "levelname", "name", "task_name", "task_id", "message"]


class TaskContextFilter(logging.Filter):
    """Adds ``task_id`` and ``task_name`` (``-`` outside a task) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        from celery._state import get_current_task

        task = get_current_task()
        task_id = getattr(task.request, "id", None) if task is not None else None
        record.task_id = task_id or "-"
        record.task_name = task.name if task_id else "-"
        return True


def configure_logging(fmt: str = "text", level: int | str = logging.INFO, stream=None) -> None:
    """Route the root logger to ``stream`` (stderr) in ``fmt`` (``text`` | ``json``) at
    ``level``. Idempotent: replaces the handlers a previous call installed."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(JSON_FIELDS, rename_fields={"levelname": "level", "asctime": "time"}, timestamp=False)
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(TaskContextFilter())
    handler._harvest = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_harvest", False)]:
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
