"""Test harness: re-exports the process helpers of :mod:`harvest.procs`."""

from harvest.procs import CeleryProcess, RedisServer, free_port, wait_for, worker  # noqa: F401
