"""``harvest replay --fit-kill`` as a user runs it (issue 35): it fits the learned kill on the
entries before the split, judges it on the later ones against every policy, writes a model
file that loads (provenance checked), and that file is refused once damaged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harvest.domain.kill_model import PROVENANCE_FIELDS, KillModel

ROOT = Path(__file__).resolve().parents[2]
KLINES = ROOT / "harvest" / "data" / "klines"


def harvest(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "harvest.ops.cli", "replay", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_fit_kill_writes_a_model_that_loads_and_is_used(tmp_path):
    out = tmp_path / "kill.json"
    data = [str(KLINES / f"{s}-1m-2025-06-14_2025-06-24.csv.gz") for s in ("BTCUSDT", "ETHUSDT")]
    span = ["--start", "2025-06-16T00:00:00Z", "--end", "2025-06-19T00:00:00Z", "--every-minutes", "240"]
    p = harvest("--data", *data, *span, "--split", "2025-06-18T00:00:00Z", "--fit-kill", str(out))
    assert p.returncode == 0, p.stderr
    assert "paired against the learned kill" in p.stdout and "kill exits:" in p.stdout
    for name in ("no_kill", "first_kill", "bracket", "trailing", "time", "hold", "lsf_ladder"):
        assert f"\n{name} " in p.stdout
    doc = json.loads(out.read_text())
    model = KillModel.from_dict(doc)
    assert set(PROVENANCE_FIELDS) <= set(model.provenance)
    assert model.provenance["symbols"] == ["BTCUSDT", "ETHUSDT"]
    assert "--fit-kill" in model.provenance["command"]

    # the model is the one the lab's learned_kill runs with HARVEST_KILL_MODEL
    p = harvest("--data", *data, *span, "--policies", "default,learned_kill", env={"HARVEST_KILL_MODEL": str(out)})
    assert p.returncode == 0, p.stderr
    assert "learned_kill" in p.stdout

    # a damaged file is refused naming what is wrong
    del doc["provenance"]["data_sha256"]
    out.write_text(json.dumps(doc))
    p = harvest("--data", *data, *span, "--policies", "default,learned_kill", env={"HARVEST_KILL_MODEL": str(out)})
    assert p.returncode != 0
    assert "provenance lacks data_sha256" in p.stderr
