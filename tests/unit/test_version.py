"""``harvest --version`` (issue 33, item 4): the installed release from the package's metadata,
and a commit only where it is certain; never a failure when git cannot tell."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from harvest.ops import version

ROOT = Path(__file__).resolve().parents[2]
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


def pyproject_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def test_the_console_script_prints_the_installed_release(tmp_path):
    """The ``harvest`` script the install made, run outside the tree: its first words are the
    release pyproject.toml gives (a stale install, or metadata not read, fails)."""
    script = Path(sys.executable).with_name("harvest")
    if not script.exists():
        pytest.skip(f"no harvest console script beside {sys.executable}")
    done = subprocess.run([str(script), "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"harvest {pyproject_version()}")
    assert done.stdout.count("\n") == 1


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git checkout with a ``harvest`` package at its top level, one commit."""
    repo = tmp_path / "repo"
    (repo / "harvest").mkdir(parents=True)
    (repo / "harvest/__init__.py").write_text("")
    git(repo, "init", "-q")
    git(repo, "add", "harvest")
    git(repo, "commit", "-q", "-m", "one")
    return repo


@needs_git
def test_a_checkout_tells_its_commit_and_whether_it_was_modified(checkout):
    sha = git(checkout, "rev-parse", "--short=12", "HEAD")
    assert version.checkout_commit(checkout / "harvest") == (sha, False)
    assert version.version_line(checkout / "harvest").endswith(f"(commit {sha})")
    (checkout / "harvest/__init__.py").write_text("x = 1\n")
    assert version.checkout_commit(checkout / "harvest") == (sha, True)
    assert version.version_line(checkout / "harvest").endswith(f"(commit {sha}, modified)")


@needs_git
def test_a_copy_inside_another_checkout_claims_no_commit(checkout):
    """A venv inside a clone: site-packages/harvest lies in the clone's work tree, but it is an
    install, not the clone's code."""
    copy = checkout / ".venv/lib/python3.11/site-packages/harvest"
    copy.mkdir(parents=True)
    assert version.checkout_commit(copy) is None


def test_no_git_no_commit_and_no_failure(tmp_path, monkeypatch):
    (tmp_path / "harvest").mkdir()
    assert version.checkout_commit(tmp_path / "harvest") is None  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # git not found at all
    assert version.checkout_commit(tmp_path / "harvest") is None
    assert version.version_line(tmp_path / "harvest") == f"harvest {version.release()}"


class _Dist:
    def __init__(self, direct_url: str | None) -> None:
        self.direct_url = direct_url

    def read_text(self, name: str) -> str | None:
        return self.direct_url if name == "direct_url.json" else None


@pytest.mark.parametrize(
    ("direct_url", "expected"),
    [
        (
            '{"url": "https://example.invalid/h.git", "vcs_info": {"vcs": "git", "commit_id": "' + "ab" * 20 + '"}}',
            "abababababab",
        ),
        ('{"url": "file:///opt/harvest", "dir_info": {"editable": true}}', None),
        (None, None),
        ("not json", None),
    ],
)
def test_an_install_from_git_tells_the_commit_pip_recorded(monkeypatch, direct_url, expected):
    monkeypatch.setattr(version.metadata, "distribution", lambda name: _Dist(direct_url))
    assert version._vcs_commit() == expected
