"""``harvest replay`` as a user runs it: the paired comparison as JSON and as a table, the HTML
report, a downloaded archive ``.zip``, the tuning, and bad input refused with exit 2 and the
file and line named (issue 20)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT.parent / "shared" / "data" / "lab" / "klines"
SPARSE = ["--every-minutes", "720"]


def harvest(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harvest.ops.cli", "replay", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_json_and_html_on_the_shipped_data(tmp_path):
    html = tmp_path / "report.html"
    p = harvest("--policies", "default,lsf_ladder,bracket,trailing,time", *SPARSE, "--json", "--html", str(html))
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert list(doc["policies"]) == ["default", "lsf_ladder", "bracket", "trailing", "time"]
    n = doc["run"]["n_entries"]
    for s in doc["policies"].values():
        assert s["trades"] == n and len(s["mean_r_ci95"]) == 2 and s["exit_reasons"]
        assert set(s) >= {
            "win_rate",
            "profit_factor",
            "expectancy_usdt",
            "max_drawdown_usdt",
            "sharpe_daily",
            "sortino_daily",
            "calmar",
            "mae_r",
            "mfe_r",
            "by_symbol",
        }
    assert set(doc["paired"]) == {"lsf_ladder", "bracket", "trailing", "time"}
    assert doc["run"]["kernel_evaluations"] > 0 and doc["run"]["fill_model"]["scan_delay_s"] == 0.0
    page = html.read_text()
    assert page.startswith("<!doctype html>") and "plotly" in page and "Equity and drawdown" in page
    assert "fill model" in page and '<script src="http' not in page  # plotly.js inlined: no network


def test_the_table_and_an_archive_zip(tmp_path):
    src = ROOT / "harvest" / "data" / "klines"
    csv_gz = next(src.glob("ETHUSDT-1m-*.csv*"))
    import gzip

    body = gzip.decompress(csv_gz.read_bytes()) if csv_gz.suffix == ".gz" else csv_gz.read_bytes()
    z = tmp_path / "ETHUSDT-1m-2025-06.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("ETHUSDT-1m-2025-06.csv", body)
    p = harvest("--data", str(z), "--policies", "default,bracket", *SPARSE)
    assert p.returncode == 0, p.stderr
    assert "ETHUSDT" in p.stdout and "mean R [95% CI]" in p.stdout and "Δ mean R = policy − default" in p.stdout
    # a file with no funding beside it is charged none, and the table says so
    assert "no funding data for ETHUSDT" in p.stdout
    assert "fill model slippage; under trigger, default: mean R" in p.stdout
    assert "funding USDT paid / received: default 0.00 / 0.00" in p.stdout


def test_the_fill_models_and_the_trailing_stop_in_r():
    p = harvest("--policies", "default,trailing", *SPARSE, "--fill-model", "trigger", "--both-fills", "--trail-r", "1")
    assert p.returncode == 0, p.stderr
    assert "fill model trigger; under slippage, default" in p.stdout
    assert "every policy under the slippage fill model:" in p.stdout
    p = harvest("--policies", "default,trailing", *SPARSE, "--trail-r", "1", "--json")
    doc = json.loads(p.stdout)
    assert doc["run"]["fill_model"]["name"] == "slippage" and doc["run"]["fill_model"]["trail_r"] == 1.0
    assert doc["other_fill"]["fill_model"] == "trigger"
    for s in doc["policies"].values():
        assert s["funding_paid_usdt"] >= 0 and s["funding_received_usdt"] >= 0
    p = harvest("--trail-r", "-1")
    assert p.returncode == 2 and "trail_r" in p.stderr


def test_bad_input_is_refused_naming_the_file_and_line(tmp_path):
    bad = tmp_path / "BTCUSDT-1m-bad.csv"
    bad.write_text("open_time,open,high,low,close,volume\n1700000000000,1,2,0.5,1,1\n1700000060000,1,nan,0.5,1,1\n")
    p = harvest("--data", str(bad))
    assert p.returncode == 2 and str(bad) in p.stderr and "line 3" in p.stderr and "NaN" in p.stderr
    entries = tmp_path / "entries.csv"
    entries.write_text(
        "symbol,side,entry_time,entry_price,qty,leverage,stop\nFOOUSDT,LONG,2025-06-21T00:00:00Z,1,1,10,\n"
    )
    p = harvest("--entries", str(entries))
    assert p.returncode == 2 and "line 2" in p.stderr and "unknown symbol FOOUSDT" in p.stderr
    p = harvest("--policies", "default,martingale")
    assert p.returncode == 2 and "martingale" in p.stderr


def test_tuning_reports_the_test_span_and_the_lines_to_apply():
    p = harvest("--tune", "--trials", "3", "--policies", "default,bracket", *SPARSE, "--json", timeout=600)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["trials"] == 3 and doc["n_train"] > 0 and doc["n_test"] > 0
    for span in ("train", "test"):
        assert set(doc[span]["policies"]) == {"tuned", "configured", "bracket"}
        assert set(doc[span]["paired"]) == {"configured", "bracket"}
    assert all(line.startswith("HARVEST_THETA__") for line in doc["lines"])


@pytest.mark.skipif(not LAB.is_dir(), reason="the lab set (../shared/data/lab) is not here")
def test_the_lab_file_of_the_issue():
    f = LAB / "BTCUSDT-5m-2023-01-01_2025-12-24.csv.gz"
    p = harvest(
        "--data",
        str(f),
        "--policies",
        "default,lsf_ladder,bracket,trailing,time",
        "--every-minutes",
        "2880",
        "--json",
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["run"]["interval_s"] == {"BTCUSDT": 300} and doc["run"]["funding"] == {"BTCUSDT": True}


def test_walk_forward_folds_each_judged_after_its_training():
    p = harvest(
        "--tune", "--folds", "2", "--trials", "2", "--policies", "default,bracket", *SPARSE, "--json", timeout=600
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert len(doc["folds"]) == len(doc["summary"]) == 2
    first, second = doc["summary"]
    assert first["train_until"] < second["train_until"] and first["test_until"] == second["train_until"]
    assert second["test_until"] is None and set(first["vs"]) == {"configured", "bracket"}
    assert doc["folds"][1]["n_train"] > doc["folds"][0]["n_train"]  # an expanding window
