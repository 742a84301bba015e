"""The shipped learned-kill model (``kill_model.json``, fitted by ``harvest replay --fit-kill`` /
``python -m harvest.lab.kill_model``; its provenance inside): read as a JSON document. The
checks (format, basis version, features, provenance) are
:meth:`harvest.domain.kill_model.KillModel.from_dict`'s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The shipped model file.
KILL_MODEL = Path(__file__).resolve().parent / "kill_model.json"


def load_kill_model_doc(path: str | Path | None = None) -> Any:
    """The JSON document of ``path`` (default: the shipped :data:`KILL_MODEL`). Raises
    ValueError naming the file when it is missing or not JSON."""
    p = Path(path) if path is not None else KILL_MODEL
    try:
        text = p.read_text()
    except OSError as e:
        raise ValueError(f"kill model {p}: cannot read it ({e.strerror or e})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"kill model {p}: not JSON (line {e.lineno}: {e.msg})") from e
