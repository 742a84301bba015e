"""The house's rules (ARCHITECTURE.md), checked on every module's imports, top-level and local:
rooms use only rooms below them, the domain does no I/O, no task module imports another, and
the canvases import no task. Pure: reads the source, imports nothing of it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Room → rank: a module may import modules of its own rank or below.
RANKS = {
    "harvest.data": 0,
    "settings": 1,  # validates theta with the domain's model
    "harvest.domain": 1,
    "harvest.kernel": 1,  # stable public re-exports of harvest.domain (docs/design.md §10.1)
    "harvest.exit_ladder": 1,
    "harvest.models": 1,
    "harvest.store": 2,
    "harvest.venues": 2,
    "harvest.lab": 2,  # the policy lab: domain + data, reads files
    "harvest.services": 3,
    "workflows": 4,
    "tasks": 4,
    "harvest.ops": 5,
}
#: What the pure domain may not import: I/O of any kind.
IO_MODULES = {
    "redis",
    "celery",
    "kombu",
    "binance",
    "requests",
    "socket",
    "subprocess",
    "http",
    "urllib",
    "os",
    "threading",
    "asyncio",
    "websockets",
}
#: Task modules that are infrastructure (the app, the shared base), not a stage.
TASK_INFRA = {"tasks", "tasks.app", "tasks.common", "tasks.poison", "tasks.consumer", "tasks.stale"}


def room(module: str) -> str | None:
    """The room a dotted module name belongs to (the longest prefix in RANKS)."""
    for prefix in sorted(RANKS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return None


def modules() -> list[tuple[str, Path]]:
    out = []
    for top in ("harvest", "settings", "tasks", "workflows"):
        for p in sorted((ROOT / top).rglob("*.py")):
            rel = p.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            out.append((name, p))
    return out


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


MODULES = modules()


@pytest.mark.parametrize("name,path", MODULES, ids=[m for m, _ in MODULES])
def test_rooms_use_only_rooms_below(name, path):
    mine = room(name)
    if mine is None:  # harvest/__init__.py
        return
    wrong = sorted(
        m for m in imports(path) if (r := room(m)) is not None and RANKS[r] > RANKS[mine] and not m.startswith(name)
    )
    # an import of a name inside a package counts once: keep the module paths only
    assert not [m for m in wrong if room(m) != mine], f"{name} ({mine}) imports rooms above it: {wrong}"


@pytest.mark.parametrize("name,path", [(n, p) for n, p in MODULES if room(n) == "harvest.domain"])
def test_the_domain_does_no_io(name, path):
    bad = sorted(m for m in imports(path) if m.split(".")[0] in IO_MODULES)
    assert not bad, f"{name} imports I/O: {bad}"


@pytest.mark.parametrize("name,path", [(n, p) for n, p in MODULES if room(n) == "tasks" and n not in TASK_INFRA])
def test_no_task_module_imports_another(name, path):
    others = sorted(
        m
        for m in imports(path)
        if room(m) == "tasks" and m not in TASK_INFRA and not m.startswith(name) and m.count(".") == 1
    )
    assert not others, f"{name} imports task modules {others}: shared logic belongs in harvest.services"


def test_workflows_import_no_task():
    assert not [m for m in imports(ROOT / "workflows/__init__.py") if m.split(".")[0] == "tasks"]


def test_canvases_import_on_their_own():
    """``from workflows import full_chain`` in a fresh interpreter (no circular import)."""
    code = "from workflows import full_chain; print(full_chain('BTCUSDT'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "harvest.evaluate" in out.stdout and "confirm" in out.stdout


#: What reaching Redis looks like from a module: the runtime's client (``rt.r``) or a module's
#: own (``_r``), a pipeline, a script, or a Redis command called on anything.
REDIS_ATTRS = {
    "r",
    "_r",
    "pipeline",
    "register_script",
    "evalsha",
    "execute_command",
    "get_redis",
    "hset",
    "hget",
    "hgetall",
    "hincrby",
    "hdel",
    "hmget",
    "xadd",
    "xrange",
    "lpush",
    "rpush",
    "zadd",
    "zrangebyscore",
    "expire",
    "setex",
    "sadd",
    "smembers",
}
#: Modules of ``harvest.store`` a task may import: the message and record schema (no Redis).
STORE_SCHEMA = {"harvest.store.records"}


def redis_access(path: Path) -> list[str]:
    """Where a file reaches Redis itself: imports of ``redis`` (or a store module other than
    :data:`STORE_SCHEMA`), ``from redbeat… import get_redis``, and attribute access or names in
    :data:`REDIS_ATTRS` (``rt.r``, ``p.hincrby``, ``self._r`` …), as ``line: what``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] == "redis"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mod = node.module
            if mod.split(".")[0] == "redis" or (mod.startswith("harvest.store") and mod not in STORE_SCHEMA):
                found.append(f"{node.lineno}: from {mod} import …")
            found += [f"{node.lineno}: import {a.name}" for a in node.names if a.name in REDIS_ATTRS]
        elif isinstance(node, ast.Attribute) and node.attr in REDIS_ATTRS:
            found.append(f"{node.lineno}: .{node.attr}")
    return found


TASK_MODULES = [(n, p) for n, p in MODULES if room(n) in ("tasks", "workflows")]


@pytest.mark.parametrize("name,path", TASK_MODULES, ids=[m for m, _ in TASK_MODULES])
def test_tasks_do_not_touch_redis(name, path):
    """Tasks decode, call one service, record through it: Redis is the services' and the
    store's (issue 34); beat's scheduler (its schedule and lock in Redis, celery-redbeat's) is
    :mod:`harvest.services.schedule`."""
    bad = redis_access(path)
    assert not bad, f"{name} reaches Redis itself (move it into harvest.services or harvest.store): {bad}"


def test_the_redis_check_sees_what_it_forbids(tmp_path):
    """The check is not vacuous: each way in is caught, plain attribute use is not."""
    f = tmp_path / "t.py"
    f.write_text(
        "import redis\nfrom harvest.store.plans import PlanStore\nfrom harvest.store.records import SCHEMA\n"
        "rt.r.set('k', 1)\np = x.pipeline()\np.hincrby('c', 'n', 1)\nself._r = None\nd.get('k')\n"
    )
    assert sorted(redis_access(f)) == [
        "1: import redis",
        "2: from harvest.store.plans import …",
        "4: .r",
        "5: .pipeline",
        "6: .hincrby",
        "7: ._r",
    ]
