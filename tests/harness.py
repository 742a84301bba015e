"""Test harness: re-exports the process helpers of :mod:`harvest.ops.procs`."""

from harvest.ops.procs import CeleryProcess, RedisServer, free_port, wait_for, worker  # noqa: F401
