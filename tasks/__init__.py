"""Celery tasks, one module per pipeline stage: evaluate → propose → guard → execute → confirm,
plus the beat scan (:mod:`tasks.scan`) and housekeeping (:mod:`tasks.housekeeping`)."""

from tasks import confirm, evaluate, execute, guard, housekeeping, propose, scan, stale  # noqa: F401,E402
from tasks.app import app  # noqa: F401

__all__ = ["app"]
