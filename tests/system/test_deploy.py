"""deploy/ validates offline: systemd units by ``systemd-analyze verify``; Kubernetes manifests
(kustomize base + overlays paper, testnet, live, rendered by ``kubectl kustomize``) against the
official schemas (kubernetes-validate, strict) and KEDA's ScaledObject against a schema written
from its CRD; docker-compose against the Compose Specification's schema and by what it must
say, with the settings each of its services loads; the Dockerfile by what it must say; the
Grafana dashboard queries only series the exporter serves. Every form runs every process."""

from __future__ import annotations

import json
import os
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
        "harvest-notify.service",
        "harvest-streams.service",
        "harvest-console.service",
        "harvest-emulator.service",
        "harvest.target",
    }
    target = (DEPLOY / "systemd/harvest.target").read_text()
    for unit in ("beat", "flower", "metrics", "notify", "streams", "console"):
        assert f"harvest-{unit}.service" in target, unit  # systemctl enable --now harvest.target starts it
    assert all(f"harvest-worker@{k}.service" in target for k in KINDS)
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


K8S = DEPLOY / "k8s"
OVERLAYS = ("paper", "testnet", "live")
#: Every process of a deployment (issue 33): a worker per queue, beat, streams, notify, the
#: exporter, the console, Flower; the paper overlay adds the emulator.
PROCESSES = {f"harvest-worker-{k}" for k in KINDS} | {
    "harvest-beat",
    "harvest-streams",
    "harvest-notify",
    "harvest-metrics",
    "harvest-console",
    "harvest-flower",
}
SO_SCHEMA = ROOT / "tests/schemas/keda-scaledobject-v1alpha1.json"
KEYS = {"harvest_api_key": "k" * 32, "harvest_api_secret": "s" * 64}


def _validate_k8s(docs: list[dict]) -> dict[str, list[dict]]:
    """Each document against Kubernetes 1.30's schemas (strict) or KEDA's; returns them by kind."""
    so_schema = json.loads(SO_SCHEMA.read_text())
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
        if d["apiVersion"] == "keda.sh/v1alpha1":
            jsonschema.validate(d, so_schema)
        else:
            kubernetes_validate.validate(d, "1.30", strict=True)
    return by_kind


def _resource_files() -> list[Path]:
    """The manifests the base and the overlays list (their kustomization.yaml ``resources``)."""
    out = []
    for k in [K8S / "base", *(K8S / "overlays" / o for o in OVERLAYS)]:
        kust = yaml.safe_load((k / "kustomization.yaml").read_text())
        out += [k / r for r in kust.get("resources", []) if r.endswith(".yaml")]
    return out


def test_kubernetes_manifests_validate_against_the_schemas():
    """Every file of the base and the overlays, validated as written (no kubectl needed)."""
    files = _resource_files()
    assert {f.name for f in files} >= {"workers.yaml", "beat.yaml", "console.yaml", "emulator.yaml", "keda.yaml"}
    by_kind = _validate_k8s([d for f in files for d in _docs(f)])
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    assert set(deployments) == PROCESSES | {"harvest-emulator"}
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
        jsonschema.validate(bad_so, json.loads(SO_SCHEMA.read_text()))


def _kustomize(tmp_path: Path, overlay: str, opt_in: bool = True) -> subprocess.CompletedProcess:
    """``kubectl kustomize`` of a copy of deploy/k8s (testnet/live: with the operator's opt-in file)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (it renders the kustomize overlays offline: apt-get install kubectl)")
    tree = tmp_path / overlay / "k8s"
    shutil.copytree(K8S, tree)
    if opt_in and overlay != "paper":
        (tree / "overlays" / overlay / "live-trading-opt-in.env").write_text("HARVEST_LIVE_TRADING_OPT_IN=true\n")
    return subprocess.run(
        [kubectl, "kustomize", str(tree / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )


def _settings_of(env: dict[str, str], secrets: dict[str, str], tmp_path: Path, monkeypatch):
    """The settings a process of a deployment loads from exactly ``env`` and its secret files."""
    from settings import load_settings

    for k in list(os.environ):
        if k.startswith("HARVEST_") and not k.startswith("HARVEST_TEST_"):
            monkeypatch.delenv(k)
    sdir = tmp_path / "secrets"
    sdir.mkdir(exist_ok=True)
    for f in sdir.iterdir():
        f.unlink()
    for name, value in secrets.items():
        (sdir / name).write_text(value)
    monkeypatch.chdir(tmp_path)  # no .env
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    monkeypatch.setenv("HARVEST_SECRETS_DIR", str(sdir))
    return load_settings()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_renders_each_overlay_with_every_process(overlay, tmp_path, monkeypatch):
    """``kubectl kustomize`` renders the overlay offline; the schemas accept every document; every
    process runs; the settings every pod loads are valid for its venue (the paper overlay's
    emulator is another host's: a Service name); testnet/live do not render without the opt-in."""
    out = _kustomize(tmp_path, overlay)
    assert out.returncode == 0, out.stderr
    by_kind = _validate_k8s([d for d in yaml.safe_load_all(out.stdout) if d])
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    assert set(deployments) == PROCESSES | ({"harvest-emulator"} if overlay == "paper" else set())
    (cm,) = by_kind["ConfigMap"]
    for dep in deployments.values():
        pod = dep["spec"]["template"]["spec"]
        assert {"configMapRef": {"name": cm["metadata"]["name"]}} in pod["containers"][0]["envFrom"]
        assert pod["volumes"][0]["secret"]["secretName"] == "harvest-api"
    services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    assert services["harvest-console"]["spec"]["ports"][0]["port"] == 8710
    data = cm["data"]
    assert data["HARVEST_VENUE"] == overlay
    if overlay == "paper":
        assert data["HARVEST_FAPI_URL"] == "http://harvest-emulator:8790/fapi"
        assert {p["port"] for p in services["harvest-emulator"]["spec"]["ports"]} == {8790, 8791}
        assert "HARVEST_LIVE_TRADING_OPT_IN" not in data
    else:
        assert data["HARVEST_LIVE_TRADING_OPT_IN"] == "true" and data["HARVEST_MODE"] == "shadow"
        assert "HARVEST_FAPI_URL" not in data and "harvest-emulator" not in services
        refused = _kustomize(tmp_path / "no-opt-in", overlay, opt_in=False)
        assert refused.returncode != 0 and "live-trading-opt-in.env" in refused.stderr
    env = {k: v for k, v in data.items() if k != "HARVEST_SECRETS_DIR"}
    s = _settings_of(env, KEYS, tmp_path, monkeypatch)
    assert s.venue == overlay and s.fapi_url == data.get("HARVEST_FAPI_URL")


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
    assert services["console"]["command"][:2] == ["harvest", "console"]
    # every process but the emulator reaches the emulator service, once it answers its handshake
    for name, svc in services.items():
        if name not in ("redis", "emulator"):
            assert svc["environment"]["HARVEST_FAPI_URL"] == "http://emulator:8790/fapi", name
            assert svc["depends_on"]["emulator"] == {"condition": "service_healthy"}, name
    assert "HARVEST_FAPI_URL" not in services["emulator"]["environment"]
    assert "/_emu/hello" in " ".join(services["emulator"]["healthcheck"]["test"])
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for pkg in ("harvest", "settings", "tasks", "workflows"):
        assert f"COPY {pkg} ./{pkg}" in dockerfile
    assert re.search(r"^USER harvest$", dockerfile, re.M)


def test_compose_file_passes_the_compose_schema():
    """deploy/docker-compose.yml against the Compose Specification's JSON schema (vendored:
    tests/schemas/compose-spec.json, its source in tests/schemas/SOURCES.md)."""
    schema = json.loads((ROOT / "tests/schemas/compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    # the check can fail: a misspelt key, a value the specification does not know
    bad = json.loads(json.dumps(compose))
    bad["services"]["beat"]["comand"] = bad["services"]["beat"].pop("command")
    bad["services"]["worker-scan"]["depends_on"]["emulator"]["condition"] = "started_eventually"
    assert len(list(validator.iter_errors(bad))) == 2


def test_the_compose_stack_starts_its_settings(tmp_path, monkeypatch):
    """Issue 33: every process of the compose stack got ``invalid setting HARVEST_FAPI_URL=
    'http://emulator:8790/fapi': must point at the local emulator on a loopback address`` and
    the documented paper stack never started. Each service's exact environment and secret files
    now load (the emulator is then checked by its handshake: tests/integration/test_remote_emulator.py)."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    secrets = dict(KEYS, harvest_console_password="a-long-console-password", harvest_notify_urls="json://127.0.0.1:9/h")
    for name, svc in compose["services"].items():
        if name == "redis":
            continue
        env = {k: v for k, v in svc["environment"].items() if k.startswith("HARVEST_") and k != "HARVEST_SECRETS_DIR"}
        s = _settings_of(env, {k: v for k, v in secrets.items() if k in svc["secrets"]}, tmp_path, monkeypatch)
        assert s.venue == "paper" and s.fapi_url == env.get("HARVEST_FAPI_URL"), name
        assert s.api_key.get_secret_value() == KEYS["harvest_api_key"], name


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
