"""The lock files keep up with pyproject.toml (issue 33, item 4), without the network.

``requirements/runtime.lock`` (the image's) and ``requirements/test.lock`` (the bootstrap's and
CI's) are written by ``bash scripts/lock.sh``. A dependency named in pyproject.toml but not
pinned in the lock, a pin its bounds no longer admit, or a pin without a hash fails here, so a
change to the dependencies that was not re-locked fails CI instead of installing something else."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements/runtime.lock"
TEST_LOCK = ROOT / "requirements/test.lock"
RELOCK = "run `bash scripts/lock.sh` and commit requirements/"


def parse_lock(text: str) -> dict[str, tuple[Version, int]]:
    """A lock file's pins: canonical name → (version, number of sha256 hashes).

    Reads pip's requirement-file form as uv writes it: ``name==version [; marker] \\`` then
    ``--hash=sha256:…`` continuation lines and ``# via`` comments. Raises ValueError on a
    requirement line that is not an exact ``==`` pin."""
    pins: dict[str, tuple[Version, int]] = {}
    current: str | None = None
    for raw in text.splitlines():
        line = raw.strip().rstrip("\\").strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--hash="):
            if current is None:
                raise ValueError(f"a hash before any requirement: {raw!r}")
            version, hashes = pins[current]
            if line.startswith("--hash=sha256:") and re.fullmatch(r"[0-9a-f]{64}", line.split(":", 1)[1]):
                pins[current] = (version, hashes + 1)
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise ValueError(f"not an exact pin: {raw!r}")
        spec = specs[0]
        current = canonicalize_name(req.name)
        pins[current] = (Version(spec.version), 0)
    return pins


def unpinned(requirements: list[str], pins: dict[str, tuple[Version, int]]) -> list[str]:
    """What of ``requirements`` (PEP 508 strings) the pins do not satisfy, one line each: not
    pinned, pinned at a version outside its bounds, or pinned without a hash."""
    problems = []
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req.name}: not in the lock")
            continue
        version, hashes = pins[name]
        if not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}: locked at {version}, pyproject.toml asks {req.specifier}")
        if hashes == 0:
            problems.append(f"{req.name}: pinned without a sha256")
    return problems


@pytest.fixture(scope="module")
def project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def runtime_pins() -> dict[str, tuple[Version, int]]:
    return parse_lock(RUNTIME_LOCK.read_text())


@pytest.fixture(scope="module")
def test_pins() -> dict[str, tuple[Version, int]]:
    return parse_lock(TEST_LOCK.read_text())


def test_the_runtime_lock_pins_every_runtime_dependency(project, runtime_pins):
    needed = project["project"]["dependencies"] + project["build-system"]["requires"]
    assert not unpinned(needed, runtime_pins), f"{unpinned(needed, runtime_pins)}: {RELOCK}"


def test_the_test_lock_pins_the_runtime_and_the_test_extra(project, test_pins):
    needed = (
        project["project"]["dependencies"]
        + project["project"]["optional-dependencies"]["test"]
        + project["build-system"]["requires"]
    )
    assert not unpinned(needed, test_pins), f"{unpinned(needed, test_pins)}: {RELOCK}"


def test_every_extra_the_set_up_installs_is_locked(project):
    """pyproject.toml has one extra, ``test``, and the test lock covers it; an extra added
    later needs a lock (and this test updated) before anything installs it."""
    assert set(project["project"].get("optional-dependencies", {})) == {"test"}


def test_the_tests_run_the_images_versions(runtime_pins, test_pins):
    """The test lock is held to the runtime lock's pins (scripts/lock.sh compiles it with
    ``-c requirements/runtime.lock``): what CI tests is what the image runs."""
    assert set(runtime_pins) <= set(test_pins)
    differ = {n: (runtime_pins[n][0], test_pins[n][0]) for n in runtime_pins if runtime_pins[n][0] != test_pins[n][0]}
    assert not differ, f"{differ}: {RELOCK}"


def test_every_pin_carries_hashes(runtime_pins, test_pins):
    """pip's --require-hashes refuses a requirement without one: every pin has a sha256."""
    for pins in (runtime_pins, test_pins):
        assert pins and not [name for name, (_, hashes) in pins.items() if hashes == 0]


def test_the_check_finds_what_was_not_relocked(runtime_pins):
    """The checks above can fail: a new dependency, a bound the pin left, a pin without a hash."""
    problems = unpinned(["scikit-learn>=1.5", "numpy<1", "celery[redis]>=5.5"], runtime_pins)
    assert problems[0] == "scikit-learn: not in the lock"
    assert problems[1].startswith("numpy: locked at ") and "asks <1" in problems[1]
    assert len(problems) == 2  # celery[redis] is pinned, within its bounds
    hashless = parse_lock("tqdm==4.66.0 \\\n    # via harvest\n")
    assert unpinned(["tqdm>=4.66"], hashless) == ["tqdm: pinned without a sha256"]
    with pytest.raises(ValueError, match="not an exact pin"):
        parse_lock("tqdm>=4.66\n")


def test_every_install_goes_through_a_lock():
    """The bootstrap (and so .ci/run) installs the test lock and the image the runtime lock, each
    with --require-hashes, and harvest itself without resolving anything (--no-deps)."""
    bootstrap = (ROOT / "scripts/bootstrap.sh").read_text()
    assert "lock=requirements/test.lock" in bootstrap
    assert re.search(r'pip install .*--require-hashes -r "\$lock"', bootstrap)
    assert re.search(r"pip install .*--no-deps .*-e \.", bootstrap)
    assert not re.search(r"pip install[^\n]*(\.\[test\]|--upgrade)", bootstrap)
    assert "bash scripts/bootstrap.sh test" in (ROOT / ".ci/run").read_text()
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    assert re.search(r"^COPY requirements/runtime.lock ", dockerfile, re.M)
    assert re.search(r"^RUN pip install --require-hashes -r requirements/runtime.lock$", dockerfile, re.M)
    installs = re.findall(r"pip install ([^\n\\&]*)", dockerfile)
    assert all("--require-hashes" in i or "--no-deps" in i for i in installs), installs


def test_the_changelog_starts_at_the_current_release(project):
    """CHANGELOG.md's newest entry is the version pyproject.toml gives (a release without an
    entry, or an entry for a release never made, fails)."""
    first = re.search(r"^## \[?(\d+\.\d+\.\d+[^\] ]*)\]?", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert first, "CHANGELOG.md has no '## <version>' entry"
    assert first.group(1) == project["project"]["version"]
