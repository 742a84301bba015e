"""The registry of counter names (harvest.store.counter_names): every name harvest writes is
in it, names outside it are refused under HARVEST_TEST_STRICT_COUNTERS=1, and /metrics reads its
families from it."""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import pytest

from harvest.store import counter_names as cn
from harvest.store.health import STRICT_ENV, check_name

ROOT = Path(__file__).resolve().parents[2]


def _sample(node: ast.expr) -> str | None:
    """The counter name a str literal or f-string stands for, each placeholder as ``{x}``;
    None when it starts with a placeholder (a name only the runtime check can see)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return "".join(v.value if isinstance(v, ast.Constant) else "{x}" for v in node.values)
    return None


def _known(sample: str) -> bool:
    """Whether the registry has the name: a literal exactly; an f-string when its placeholders
    (as ``x``) give a registered name, or, where a placeholder stands for a whole part
    (``scan:{held}``, ``streams:{name}``), when some entry has that shape. The values the code
    passes at run time are checked by HARVEST_TEST_STRICT_COUNTERS=1 in the integration suites."""
    try:
        cn.lookup(sample.replace("{x}", "x"))
        return True
    except cn.UnknownCounter:
        if "{x}" not in sample:
            return False
    rx = re.compile(".+".join(re.escape(part) for part in sample.split("{x}")))
    return any(rx.fullmatch(c.pattern) for c in cn.COUNTERS)


def written_names() -> list[tuple[str, str]]:
    """``(where, name)`` for each counter name written in harvest/ and tasks/: ``….count(name)``
    on the plans or counter store, ``cache.count(name)`` (harvest streams: ``streams:<name>``),
    ``hincrby(<counters key>, name, …)``."""
    out = []
    for path in [*ROOT.joinpath("harvest").rglob("*.py"), *ROOT.joinpath("tasks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            recv, attr = ast.unparse(node.func.value), node.func.attr
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if attr in ("count", "count_in") and node.args:
                arg = node.args[0] if attr == "count" else node.args[1] if len(node.args) > 1 else None
                if arg is None:
                    continue
                if recv.endswith(("plans", "counts", "counters")):
                    name = _sample(arg)
                elif recv.endswith("cache"):
                    name = _sample(arg)
                    name = None if name is None else "streams:" + name
                else:
                    continue
            elif attr == "hincrby" and len(node.args) >= 2 and "counter" in ast.unparse(node.args[0]):
                name = _sample(node.args[1])
            else:
                continue
            if name is not None:
                out.append((where, name))
    return out


def test_every_counter_harvest_writes_is_in_the_registry():
    names = written_names()
    assert len(names) > 40  # the scan finds the call sites (it would pass vacuously otherwise)
    unknown = []
    for where, name in names:
        if not _known(name):
            unknown.append(f"{where}: {name}")
    assert not unknown, unknown


def test_each_entry_owns_its_own_names():
    assert len({c.pattern for c in cn.COUNTERS}) == len(cn.COUNTERS)
    for c in cn.COUNTERS:
        name = c.field(**{lab: "x1" for lab in c.labels})
        assert cn.lookup(name) is c, (c.pattern, name)


@pytest.mark.parametrize("name", ["bogus", "guard:", "guard:a:b", "acct::scan:runs", "scan:run"])
def test_a_name_outside_the_registry_is_refused(name):
    with pytest.raises(cn.UnknownCounter):
        cn.lookup(name)


def test_field_checks_the_labels():
    guard = cn.entry("guard:{reason}")
    assert guard.field(reason="ghost_position") == "guard:ghost_position"
    with pytest.raises(cn.UnknownCounter):
        guard.field(reason="a:b")
    with pytest.raises(cn.UnknownCounter):
        guard.field(stage="x")


def test_strict_mode_raises_and_the_default_counts_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv(STRICT_ENV, "1")
    assert check_name("guard:ghost_position") == "guard:ghost_position"
    with pytest.raises(cn.UnknownCounter, match="counter_names"):
        check_name("no_such:counter")
    monkeypatch.delenv(STRICT_ENV)
    with caplog.at_level(logging.WARNING, logger="harvest.plans"):
        assert check_name("no_such:counter2") == "no_such:counter2"
    assert "no_such:counter2" in caplog.text


def test_samples_follow_the_registry():
    counters = {
        "guard:ghost_position": 3,
        "guard:dust_folded": 1,
        "reconcile:venue_error:-1021": 2,
        "reconcile:adopted_order": 1,
        "scan:duplicates_skipped": 2,
        "dedup:FILLED": 5,
        "streams:gap:audit": 4,
        "acct:a:scan:runs": 7,
        "acct:b:positions_open": 2,
        "acct:zz:scan:runs": 9,  # not an account of the deployment
    }
    assert cn.samples(cn.GUARD_BLOCKS, counters) == [(("dust_folded",), 1.0), (("ghost_position",), 3.0)]
    assert cn.samples(cn.RECONCILE_FINDINGS, counters) == [(("adopted_order",), 1.0), (("venue_error:-1021",), 2.0)]
    assert cn.samples(cn.DUPLICATES_BLOCKED, counters) == [((), 7.0)]
    assert cn.samples(cn.STREAM_AUDITS, counters) == [(("agreed",), 0.0), (("disagreed",), 4.0)]
    assert cn.samples(cn.STREAM_GAPS, counters) == [(("audit",), 4.0)]
    assert cn.samples(cn.SCANS, counters, ["a", "b"]) == [(("a",), 7.0), (("b",), 0.0)]
    assert cn.samples(cn.POSITIONS_OPEN, counters, ["a", "b"]) == [(("b",), 2.0)]
    assert cn.samples(cn.POSITIONS_UNPROTECTED, counters, ["a", "b"]) is None


def test_metrics_exports_every_family_of_the_registry_once():
    from harvest.ops import metrics

    exported = [*metrics.BLOCKS_AND_REPEATS, *metrics.SCANS_AND_STREAMS, *metrics.REJECTED_AND_UNPROTECTED]
    exported += metrics.RECONCILED
    assert exported == list(cn.FAMILIES)
    for fam in cn.FAMILIES:
        assert any(c.family is fam for c in cn.COUNTERS), fam.name
