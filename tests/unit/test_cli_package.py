"""The ``harvest`` command line as a package (issue 34): each command group's module builds its
commands' parsers beside their code (``register(subparsers)``), :func:`harvest.ops.cli.main`
lists them in the documented order (``python -m harvest.ops.cli`` as well), and the lab's
entry options travel as one :class:`harvest.lab.run.EntrySpec`."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest

from harvest.ops import cli
from harvest.ops.procs import ROOT

#: `harvest --help`'s commands, in its order (unchanged by the split into modules).
COMMANDS = [
    "demo",
    "emulator",
    "scorecard",
    "reconcile",
    "chaos",
    "streams",
    "metrics",
    "trading",
    "plans",
    "plan",
    "replay",
    "console",
    "notify",
    "schedule",
]


def _commands_of(group) -> list[str]:
    sub = argparse.ArgumentParser(prog="harvest").add_subparsers(dest="cmd")
    group.register(sub)
    return list(sub.choices)


def test_each_group_registers_its_own_commands_in_the_documented_order():
    per_group = [_commands_of(g) for g in cli.GROUPS]
    assert [c for cmds in per_group for c in cmds] == COMMANDS
    assert _commands_of(cli.plans) == ["plans", "plan"]
    assert _commands_of(cli.console) == ["console", "notify"]


def test_every_parser_runs_a_function_of_its_own_module():
    sub = argparse.ArgumentParser(prog="harvest").add_subparsers(dest="cmd")
    for group in cli.GROUPS:
        group.register(sub)
        for name in _commands_of(group):
            assert sub.choices[name].get_default("fn").__module__ == group.__name__, name


@pytest.mark.parametrize("argv", [["--help"], ["replay", "--help"], ["schedule", "set", "--help"]])
def test_python_m_harvest_ops_cli_prints_help(argv):
    out = subprocess.run(
        [sys.executable, "-m", "harvest.ops.cli", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: harvest " + " ".join(argv[:-1])), out.stdout[:200]


def test_the_replay_entry_options_become_one_entry_spec():
    from harvest.lab.run import EntrySpec
    from harvest.ops.cli.replay import entry_spec

    a = argparse.Namespace(
        entries=None,
        rule="random",
        every_minutes=30.0,
        n=12,
        seed=3,
        margin=50.0,
        leverage=5.0,
        start="2024-01-02T00:00:00Z",
        end=None,
    )
    spec = entry_spec(a)
    assert spec == EntrySpec(
        rule="random", every_s=1800.0, n_random=12, seed=3, margin=50.0, leverage=5.0, start=1704153600.0
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 4  # type: ignore[misc]
    with pytest.raises(ValueError):
        entry_spec(argparse.Namespace(**{**vars(a), "start": "not a time"}))
