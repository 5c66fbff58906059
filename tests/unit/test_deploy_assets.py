"""The dashboard, alert rules and manifests in deploy/ name only what the
services really export and serve."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import parley.metrics  # noqa: F401  (registers the metrics)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS_BUILTINS = {"up"}


def exported_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        for sample in family.samples:
            names.add(sample.name)
    # Histogram series that exist once observed.
    for family in list(names):
        names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count", f"{family}_total"}
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(parley_[a-z_]+|up)\b", expr))


def test_dashboard_is_grafana_json_on_exported_metrics() -> None:
    dash = json.loads((DEPLOY / "grafana/parley-dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    assert dash["panels"]
    exported = exported_names()
    seen: set[str] = set()
    ids = set()
    for panel in dash["panels"]:
        assert panel["type"] in ("timeseries", "stat")
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["id"] not in ids
        ids.add(panel["id"])
        assert panel["targets"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, target["expr"]
            unknown = names - exported - PROMETHEUS_BUILTINS
            assert not unknown, f"{panel['title']}: {unknown}"
            seen |= names
    hops = json.dumps(dash)
    assert "parley_turn_hop_seconds_bucket" in seen
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le, hop)" in hops


def test_alert_rules_use_exported_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    exported = exported_names()
    alerts = [r for group in rules["groups"] for r in group["rules"]]
    assert {a["alert"] for a in alerts} >= {
        "ParleySlowFirstAudio",
        "ParleyErrorRate",
        "ParleyStageMissing",
    }
    for alert in alerts:
        unknown = metric_names(alert["expr"]) - exported - PROMETHEUS_BUILTINS
        assert not unknown, f"{alert['alert']}: {unknown}"
    yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())


def test_manifests_run_every_service_with_its_probes() -> None:
    docs = []
    # The kustomize base; tests/deploy renders the overlays and checks them whole.
    for path in sorted((DEPLOY / "k8s" / "base").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    deployments = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Deployment"}
    for service in ("gateway", "vad", "asr", "llm", "tts", "tools"):
        container = deployments[f"parley-{service}"]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][:3] == ["python", "-m", f"services.{service}"]
        assert "readinessProbe" in container
