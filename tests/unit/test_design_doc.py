"""docs/design.md is the design the code cites: every ``docs/design.md §N.M`` in the code, the
docs and the tests is a heading of it, no code cites a design text outside the repository, its
theta table holds the code's defaults, and every test it names exists. Reads files only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harvest.domain.models import HarvestTheta

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "docs" / "design.md"
#: Where citations live: the code, its tests, deploy and scripts, and the prose docs.
SCANNED_DIRS = ("harvest", "tasks", "workflows", "settings", "benchmarks", "tests", "scripts", "deploy", "docs")
SCANNED_TOP = ("README.md", "ARCHITECTURE.md")
SUFFIXES = {".py", ".md", ".sh", ".yml", ".yaml", ".toml", ".txt", ".cfg", ".service", ".ini"}

_HEADING = re.compile(r"^#{2,3} §(\d+(?:\.\d+)?) \S", re.M)
_CITATION = re.compile(r"docs/design\.md\s+(§\d+(?:\.\d+)?(?:(?:\s*,\s*|\s+and\s+|\s*–\s*)§\d+(?:\.\d+)?)*)")
_SECTION = re.compile(r"§(\d+(?:\.\d+)?)")
# The outside file as the code used to cite it ("DESIGN §2", "DESIGN.md", "DESIGN's first
# values"); built from parts so that this file does not match itself.
_OUTSIDE = re.compile("DES" + r"IGN(?:\.md|\s*§|'s\b)")
_TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _text() -> str:
    return DESIGN.read_text(encoding="utf-8")


def _headings() -> list[str]:
    return _HEADING.findall(_text())


def _scanned_files() -> list[Path]:
    out = [ROOT / n for n in SCANNED_TOP]
    for d in SCANNED_DIRS:
        out += [
            p
            for p in sorted((ROOT / d).rglob("*"))
            if p.is_file() and p.suffix in SUFFIXES and "reference" not in p.relative_to(ROOT).parts
        ]
    return out


def _citations() -> dict[str, list[str]]:
    """section → the files (relative paths) that cite it."""
    found: dict[str, list[str]] = {}
    for p in _scanned_files():
        for m in _CITATION.finditer(p.read_text(encoding="utf-8", errors="replace")):
            for sec in _SECTION.findall(m.group(1)):
                found.setdefault(sec, []).append(str(p.relative_to(ROOT)))
    return found


def test_headings_are_numbered_once_and_in_order():
    heads = _headings()
    assert len(heads) >= 30, heads
    assert len(heads) == len(set(heads)), [h for h in heads if heads.count(h) > 1]
    keys = [tuple(int(x) for x in h.split(".")) for h in heads]
    assert keys == sorted(keys), heads
    for h in heads:  # a sub-section lives under its section
        if "." in h:
            assert h.split(".")[0] in heads, h


def test_every_cited_section_is_a_heading():
    heads = set(_headings())
    cited = _citations()
    # the code cites the page widely (kernel, market, ladder, plans, trading, models, lab, …)
    assert sum(len(v) for v in cited.values()) >= 25, cited
    missing = {sec: files for sec, files in cited.items() if sec not in heads}
    assert not missing, f"cited but not a heading of docs/design.md: {missing}"


def test_the_pages_own_cross_references_exist():
    text = _text()
    heads = set(_headings())
    refs = set(_SECTION.findall(_HEADING.sub("", text)))
    assert refs, "the page refers to its own sections"
    assert refs <= heads, sorted(refs - heads)


def test_no_code_cites_a_design_text_outside_the_repository():
    me = Path(__file__).resolve()
    hits = []
    for p in _scanned_files():
        if p.resolve() == me:
            continue
        for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if _OUTSIDE.search(line):
                hits.append(f"{p.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "cite docs/design.md §N.M instead:\n" + "\n".join(hits)


def _theta_table() -> dict[str, str]:
    text = _text()
    section = text[text.index("### §2.8 ") : text.index("### §2.9 ")]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`(\w+)`", cells[0])
        values = [v.strip().strip("`") for v in cells[1].split(",")]
        assert len(names) == len(values), line
        rows.update(zip(names, values, strict=True))
    return rows


def test_the_theta_table_holds_the_codes_defaults():
    table = _theta_table()
    defaults = HarvestTheta().model_dump()
    assert set(table) == set(defaults), (sorted(set(defaults) - set(table)), sorted(set(table) - set(defaults)))
    for name, shown in table.items():
        value = defaults[name]
        if isinstance(value, str):
            assert shown == value, name
        else:
            assert float(shown) == pytest.approx(float(value), rel=0, abs=0), (name, shown, value)


def test_every_test_the_page_names_exists():
    refs = _TEST_REF.findall(_text())
    assert len(refs) >= 20, refs
    missing = []
    for path, name in refs:
        f = ROOT / path
        if not f.is_file() or not re.search(rf"^\s*(?:async\s+)?def {name}\(", f.read_text(encoding="utf-8"), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, missing
