"""What ``harvest --version`` says: the installed release and, where it can be known, its commit.

The release is the installed package's metadata (``importlib.metadata``), the version
pyproject.toml gave when it was installed. The commit is told only where it is certain:

* an install from a VCS URL (``pip install git+…@<sha>``) records it in the distribution's
  ``direct_url.json`` (PEP 610);
* a source checkout (``pip install -e .``, the bootstrap's ``.venv``) whose top level holds the
  imported ``harvest`` package is asked with ``git rev-parse``; ``modified`` follows when its
  tracked files differ from that commit.

A copy installed from a directory, a wheel or an image has no commit to tell: the line gives the
release alone. No failure of git (absent, not a checkout, too slow) ever fails the command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from importlib import metadata
from pathlib import Path

DIST = "harvest"
#: Seconds one git call may take before the commit is left out.
GIT_TIMEOUT_S = 2.0


def release() -> str:
    """The installed distribution's version (e.g. ``"0.2.0"``), or ``"unknown"`` when harvest
    runs from a tree that was never installed (no metadata)."""
    try:
        return metadata.version(DIST)
    except metadata.PackageNotFoundError:
        return "unknown"


def _vcs_commit() -> str | None:
    """The commit PEP 610's ``direct_url.json`` records for a VCS install, else None."""
    try:
        raw = metadata.distribution(DIST).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not raw:
        return None
    try:
        commit = json.loads(raw).get("vcs_info", {}).get("commit_id")
    except (ValueError, AttributeError):
        return None
    return commit[:12] if isinstance(commit, str) and commit else None


def _git(cwd: Path, *args: str) -> str | None:
    """``git <args>`` run in ``cwd``: its stripped stdout, or None on any failure."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def checkout_commit(package_dir: Path) -> tuple[str, bool] | None:
    """``(short sha, modified)`` of the git checkout whose top level holds ``package_dir``,
    else None: a package copied into site-packages inside some other repository (a venv in a
    clone) is not that repository's code, so its commit is not claimed."""
    root = package_dir.parent
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root.resolve():
        return None
    sha = _git(root, "rev-parse", "--short=12", "HEAD")
    if not sha:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return sha, bool(status)


def version_line(package_dir: Path | None = None) -> str:
    """One line: ``harvest 0.2.0``, ``harvest 0.2.0 (commit 1a2b3c4d5e6f)`` or
    ``harvest 0.2.0 (commit 1a2b3c4d5e6f, modified)``. ``package_dir``: the ``harvest`` package's
    directory (default: the one imported)."""
    if package_dir is None:
        import harvest

        package_dir = Path(harvest.__file__).resolve().parent
    line = f"{DIST} {release()}"
    vcs = _vcs_commit()
    if vcs:
        return f"{line} (commit {vcs})"
    found = checkout_commit(package_dir)
    if found:
        sha, modified = found
        return f"{line} (commit {sha}{', modified' if modified else ''})"
    return line


class VersionAction(argparse.Action):
    """``--version`` for argparse that asks git only when the flag is given (argparse's own
    ``version`` action takes its string when the parser is built, on every command)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(version_line())  # on stdout, as argparse's own version action
        parser.exit()
