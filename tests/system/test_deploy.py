"""deploy/ validates offline: systemd units by ``systemd-analyze verify``; Kubernetes manifests
against the official schemas (kubernetes-validate, strict) and KEDA's ScaledObject against a
schema written from its CRD; docker-compose and the Dockerfile by what they must say; the
Grafana dashboard queries only series the exporter serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KINDS = ("scan", "orders", "housekeeping")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_verify(tmp_path):
    # The units name /opt/harvest/.venv/bin/… (the documented install path); verify checks
    # that every ExecStart binary exists, so point them at this interpreter's bin directory.
    bindir = str(Path(sys.executable).parent) + "/"
    units = sorted(DEPLOY.glob("systemd/*.service")) + sorted(DEPLOY.glob("systemd/*.target"))
    assert {u.name for u in units} >= {
        "harvest-worker@.service",
        "harvest-beat.service",
        "harvest-flower.service",
        "harvest-metrics.service",
        "harvest.target",
    }
    for u in units:
        text = u.read_text()
        if u.suffix == ".service":
            assert "ProtectSystem=strict" in text and "ReadWritePaths=/var/lib/harvest" in text, u.name
            assert "NoNewPrivileges=yes" in text and "User=harvest" in text, u.name
            assert re.search(r"^ExecStart=/opt/harvest/\.venv/bin/", text, re.M), u.name
        (tmp_path / u.name).write_text(text.replace("/opt/harvest/.venv/bin/", bindir))
    # the template, instantiated once per queue
    for kind in KINDS:
        shutil.copy(tmp_path / "harvest-worker@.service", tmp_path / f"harvest-worker@{kind}.service")
    names = [str(p) for p in sorted(tmp_path.iterdir()) if p.name != "harvest-worker@.service"]
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", *names], capture_output=True, text=True, timeout=120)
    # verify prints a line for every problem (unknown keys, bad values) even when it exits 0
    ours = [ln for ln in (out.stdout + out.stderr).splitlines() if "harvest" in ln]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr


def test_systemd_verify_catches_a_broken_unit(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    bad = tmp_path / "harvest-bad.service"
    bad.write_text("[Service]\nExecStart=/nonexistent/celery -A tasks beat\nProtectSystem=bogus\n")
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0 or "harvest-bad" in out.stdout + out.stderr


def test_kubernetes_manifests_validate_against_the_schemas():
    so_schema = json.loads((ROOT / "tests/schemas/keda-scaledobject-v1alpha1.json").read_text())
    docs = [d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in _docs(f)]
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
        if d["apiVersion"] == "keda.sh/v1alpha1":
            jsonschema.validate(d, so_schema)
        else:
            kubernetes_validate.validate(d, "1.30", strict=True)
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    # one Deployment per queue, each consuming exactly its queue, each scaled by KEDA on its length
    scaled = {so["spec"]["scaleTargetRef"]["name"]: so for so in by_kind["ScaledObject"]}
    for kind in KINDS:
        dep = deployments[f"harvest-worker-{kind}"]
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("-Q") + 1] == f"harvest.{kind}"
        trig = scaled[f"harvest-worker-{kind}"]["spec"]["triggers"][0]
        assert trig["type"] == "redis" and trig["metadata"]["listName"] == f"harvest.{kind}"
    assert deployments["harvest-beat"]["spec"]["replicas"] == 1
    assert deployments["harvest-beat"]["spec"]["strategy"]["type"] == "Recreate"
    assert "--read_only=True" in deployments["harvest-flower"]["spec"]["template"]["spec"]["containers"][0]["args"]
    for dep in deployments.values():
        c = dep["spec"]["template"]["spec"]["containers"][0]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert not any("SECRET" in str(e) or "API_KEY" in str(e) for e in c.get("env", []))
    # a broken manifest is caught (the check can fail)
    broken = json.loads(json.dumps(deployments["harvest-beat"]))
    broken["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30", strict=True)
    bad_so = json.loads(json.dumps(by_kind["ScaledObject"][0]))
    bad_so["spec"]["triggers"][0]["metadata"]["listLength"] = 5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad_so, so_schema)


def test_compose_and_dockerfile_wire_every_role():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    for kind in KINDS:
        cmd = services[f"worker-{kind}"]["command"]
        assert cmd[:4] == ["celery", "-A", "tasks", "worker"] and cmd[cmd.index("-Q") + 1] == f"harvest.{kind}"
    assert services["beat"]["command"][:4] == ["celery", "-A", "tasks", "beat"]
    flower = services["flower"]
    assert "--read_only=True" in flower["command"] and "FLOWER_BASIC_AUTH" in flower["environment"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert services["emulator"]["command"][:2] == ["harvest", "emulator"]
    assert services["metrics"]["command"][:2] == ["harvest", "metrics"]
    for name, svc in services.items():
        if name != "redis":
            env = svc["environment"]
            assert env["HARVEST_SECRETS_DIR"] == "/run/secrets" and "HARVEST_API_KEY" not in env, name
            assert {"harvest_api_key", "harvest_api_secret"} <= set(svc["secrets"]), name
    assert services["console"]["ports"] == ["127.0.0.1:8710:8710"]
    assert "harvest_console_password" in services["console"]["secrets"]
    assert services["notify"]["command"] == ["harvest", "notify"]
    assert services["streams"]["command"] == ["harvest", "streams"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for pkg in ("harvest", "settings", "tasks", "workflows"):
        assert f"COPY {pkg} ./{pkg}" in dockerfile
    assert re.search(r"^USER harvest$", dockerfile, re.M)


def test_grafana_dashboard_queries_only_served_series():
    from harvest.ops.metrics import HarvestCollector
    from harvest.services.runtime import build_runtime
    from settings import load_settings

    rt = build_runtime(load_settings())
    acct = rt.settings.account
    rt.r.hsetnx(rt.plans.k.counters, f"acct:{acct}:positions_open", 0)  # served once a reconcile has run
    rt.r.hsetnx(rt.plans.k.counters, f"acct:{acct}:positions_unprotected", 0)  # served once a scan has run
    served = set()
    for fam in HarvestCollector(rt, lambda: {}).collect():
        served.add(fam.name + ("_total" if fam.type == "counter" else ""))
        if fam.type == "histogram":
            served |= {fam.name + s for s in ("_bucket", "_sum", "_count")}
    dash = json.loads((DEPLOY / "grafana/harvest-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    used = {m for e in exprs for m in re.findall(r"\bharvest_[a-z0-9_]+", e)}
    assert used <= served, used - served
    assert {
        "harvest_plans",
        "harvest_orders_total",
        "harvest_guard_blocks_total",
        "harvest_queue_depth",
        "harvest_heartbeat_age_seconds",
        "harvest_exchange_weight_used",
        "harvest_scan_to_fill_seconds_bucket",
        "harvest_scan_duration_seconds_bucket",
    } <= used


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed (Debian's prometheus package; scripts/bootstrap.sh installs it as root)")
    return tool


def test_alert_rules_check_and_pass_their_unit_tests():
    """deploy/prometheus/harvest-rules.yml: valid (promtool check rules) and each alert fires when
    and only when it should (promtool test rules on harvest-rules.test.yml)."""
    tool = _promtool()
    d = ROOT / "deploy" / "prometheus"
    out = subprocess.run(
        [tool, "check", "rules", "harvest-rules.yml"], cwd=d, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
    out = subprocess.run(
        [tool, "test", "rules", "harvest-rules.test.yml"], cwd=d, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_every_alert_has_a_runbook_entry():
    rules = yaml.safe_load((ROOT / "deploy/prometheus/harvest-rules.yml").read_text())
    names = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    runbook = (ROOT / "deploy/README.md").read_text()
    for name in names:
        assert f"### {name}" in runbook, name
