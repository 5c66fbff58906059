"""deploy/k8s renders, validates against the Kubernetes schemas and keeps the
rules a platform team checks for: resources, probes, hardening, pinned
images, a PDB and an autoscaler per Deployment, probes on declared ports,
drains that fit their grace period, Secrets referenced and never inlined."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.render import (
    OVERLAYS,
    PARLEY_IMAGE,
    by_kind,
    config_map,
    containers,
    parley_config,
    pod_spec,
    port_number,
    probe_port,
    project_version,
    render,
    workloads,
)

# The Kubernetes release whose OpenAPI schemas the objects must satisfy: the
# newest kubernetes-validate knows (a current release).
K8S_VERSION = kubernetes_validate.latest_version()
STAGES = ("gateway", "vad", "asr", "llm", "tts", "tools")
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def stage_of(deployment: dict[str, Any]) -> str | None:
    name = deployment["metadata"]["name"]
    return name.removeprefix("parley-") if name.removeprefix("parley-") in STAGES else None


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        have = labels.get(expr["key"])
        if expr["operator"] == "In" and have not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and have in expr["values"]:
            return False
        if expr["operator"] == "Exists" and have is None:
            return False
    return True


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_every_object_validates_strictly(rendered) -> None:
    overlay, objects = rendered
    kinds = {o["kind"] for o in objects}
    # Only built-in kinds: no CRD (KEDA, ServiceMonitor) whose schema is elsewhere.
    assert kinds <= {
        "Namespace",
        "ConfigMap",
        "Service",
        "Deployment",
        "StatefulSet",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }, kinds
    failures = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    assert not failures, f"{overlay} against Kubernetes {K8S_VERSION}:\n" + "\n".join(failures)
    print(f"{overlay}: {len(objects)} objects valid against Kubernetes {K8S_VERSION} (strict)")


def test_every_container_is_hardened_with_resources_and_probes(rendered) -> None:
    overlay, objects = rendered
    for workload in workloads(objects):
        pod = pod_spec(workload)
        pod_sc = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False, workload["metadata"]["name"]
        for c in containers(workload):
            where = f"{overlay} {workload['metadata']['name']}/{c['name']}"
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{where}: {kind}"
            for probe in PROBES:
                assert probe in c, f"{where}: no {probe}"
            sc = c.get("securityContext", {})

            def effective(key: str, sc: dict = sc, pod_sc: dict = pod_sc) -> Any:
                return sc.get(key, pod_sc.get(key))

            assert effective("runAsNonRoot") is True, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert not sc.get("capabilities", {}).get("add"), where
            assert (effective("seccompProfile") or {}).get("type") == "RuntimeDefault", where
            assert not sc.get("privileged"), where
            # A pod user the image need not define: runAsNonRoot is checkable.
            assert isinstance(effective("runAsUser"), int) and effective("runAsUser") > 0, where


def test_images_are_pinned_and_parley_is_the_project_version(rendered) -> None:
    overlay, objects = rendered
    for workload in workloads(objects):
        for c in containers(workload):
            image = c["image"]
            name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
            assert name and tag and "/" not in tag, f"{overlay} {c['name']}: {image} has no tag"
            assert tag != "latest", f"{overlay} {c['name']}: {image}"
            assert c.get("imagePullPolicy") != "Always" or tag != "latest"
            if name == PARLEY_IMAGE:
                # `make image` tags pyproject's version; the overlays pin it.
                assert tag == project_version(), f"{overlay}: {image} vs {project_version()}"
            else:
                assert name != "parley", f"{overlay}: the base's placeholder image was not set"


def test_every_deployment_has_a_pdb_and_an_autoscaler(rendered) -> None:
    overlay, objects = rendered
    pdbs = by_kind(objects, "PodDisruptionBudget").values()
    hpas = by_kind(objects, "HorizontalPodAutoscaler").values()
    for workload in workloads(objects):
        name = workload["metadata"]["name"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert any(matches(p["spec"]["selector"], labels) for p in pdbs), (
            f"{overlay} {name}: no PDB"
        )
        if workload["kind"] != "Deployment":
            continue
        scalers = [h for h in hpas if h["spec"]["scaleTargetRef"]["name"] == name]
        assert len(scalers) == 1, f"{overlay} {name}: {len(scalers)} autoscalers"
        hpa = scalers[0]["spec"]
        # The HPA owns the count; a replicas field would reset it at every apply.
        assert "replicas" not in workload["spec"], f"{overlay} {name}"
        metrics = {m["type"]: m for m in hpa["metrics"]}
        assert metrics["Resource"]["resource"]["name"] == "cpu", f"{name}: no CPU fallback"
        if stage_of(workload):
            assert metrics["Pods"]["pods"]["metric"]["name"] == "parley_stage_load_ratio"
            # Scale-down waits: one pod per period, each draining first.
            down = hpa["behavior"]["scaleDown"]
            assert down["stabilizationWindowSeconds"] >= 300
            assert all(p["type"] == "Pods" and p["value"] == 1 for p in down["policies"])
            assert all(
                p["periodSeconds"] >= pod_spec(workload)["terminationGracePeriodSeconds"]
                for p in down["policies"]
            ), f"{name}: the next pod may go before the last one drained"
            minimum = {"dev": 1, "production": 3}[overlay]
            assert hpa["minReplicas"] == minimum, f"{overlay} {name}"
        spread = pod_spec(workload).get("topologySpreadConstraints", [])
        assert {t["topologyKey"] for t in spread} >= {"kubernetes.io/hostname"}, name


def test_probes_name_declared_ports_that_the_config_serves(rendered) -> None:
    overlay, objects = rendered
    config = parley_config(objects)
    for workload in workloads(objects):
        for c in containers(workload):
            for probe in PROBES:
                probe_port(c, c[probe])  # asserts the port is declared
        deployment_stage = stage_of(workload) if workload["kind"] == "Deployment" else None
        if deployment_stage is None:
            continue
        section = config[deployment_stage]
        c = pod_spec(workload)["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == section["metrics_port"], workload["metadata"]["name"]
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(section["metrics_port"])
        if deployment_stage == "gateway":
            assert ports["ws"] == section["port"]
            assert ports["http"] == section["http_port"]
            assert ports["grpc"] == section["grpc_port"]
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        else:
            assert ports["health"] == section["health_port"]
            for probe in PROBES:
                # The standard gRPC health service: NOT_SERVING while loading.
                assert probe_port(c, c[probe]) == section["health_port"]
                assert "grpc" in c[probe]


def test_grace_periods_fit_the_drain(rendered) -> None:
    overlay, objects = rendered
    config = parley_config(objects)
    for workload in workloads(objects):
        stage = stage_of(workload)
        if stage is None:
            continue
        pod = pod_spec(workload)
        c = pod["containers"][0]
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        drain = config[stage]["drain_timeout_s"]
        grace = pod["terminationGracePeriodSeconds"]
        # Sleep, drain, then a few seconds to close the bus and exit.
        assert grace >= pre_stop + drain + 5, f"{stage}: grace {grace} < {pre_stop}+{drain}+5"
        live = c["livenessProbe"]
        # A draining stage is NOT_SERVING: liveness must not kill it meanwhile.
        assert live["periodSeconds"] * live["failureThreshold"] > pre_stop + drain, stage
        start = c["startupProbe"]
        assert start["periodSeconds"] * start["failureThreshold"] >= 60, f"{stage}: model loading"


def test_secrets_are_referenced_never_inlined(rendered) -> None:
    overlay, objects = rendered
    assert not [o for o in objects if o["kind"] == "Secret"], "a Secret is rendered"
    text = repr(objects)
    assert not re.search(r"(api_key|password|auth_token)\s*=\s*\"", text)
    referenced = set()
    for workload in workloads(objects):
        for c in containers(workload):
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
                    continue
                # $(VAR) refers only to variables defined before it (the
                # kubelet leaves anything else as it is).
                defined = [e["name"] for e in c["env"][: c["env"].index(env)]]
                for var in re.findall(r"\$\(([A-Z_][A-Z0-9_]*)\)", env.get("value", "")):
                    assert var in defined, f"{c['name']}: {env['name']} uses {var} before it"
                inline = env.get("value", "").lower().replace("$(nats_password)", "")
                assert "password" not in inline, f"{c['name']}: {env['name']}"
    assert referenced == {"parley-secrets"}, referenced


def test_referenced_config_maps_exist_and_config_is_valid(rendered) -> None:
    overlay, objects = rendered
    names = set(by_kind(objects, "ConfigMap"))
    for workload in workloads(objects):
        for volume in pod_spec(workload).get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in names, volume
        for c in containers(workload):
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            declared = {v["name"] for v in pod_spec(workload).get("volumes", [])}
            templates = {
                t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])
            }
            assert mounts <= declared | templates, f"{c['name']}: {mounts - declared - templates}"
    # parley.toml passes the services' own validation.
    from parley.config import ParleySettings

    ParleySettings.model_validate(parley_config(objects))
    assert config_map(objects, "nats-config")["data"]["nats.conf"]


def test_services_select_pods_and_name_their_ports(rendered) -> None:
    overlay, objects = rendered
    pods = [
        (w["spec"]["template"]["metadata"]["labels"], containers(w)) for w in workloads(objects)
    ]
    for name, svc in by_kind(objects, "Service").items():
        selected = [
            cs for labels, cs in pods if matches({"matchLabels": svc["spec"]["selector"]}, labels)
        ]
        assert selected, f"Service {name} selects nothing"
        for port in svc["spec"]["ports"]:
            for cs in selected:
                if any(
                    p.get("name") == port.get("targetPort")
                    or p["containerPort"] == port.get("targetPort", port["port"])
                    for c in cs
                    for p in c.get("ports", [])
                ):
                    break
            else:
                raise AssertionError(f"Service {name}: port {port} is no container's")
    for ingress in by_kind(objects, "Ingress").values():
        annotations = ingress["metadata"]["annotations"]
        # One WebSocket (or gRPC stream) is one conversation: an hour, not 60 s.
        assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] == "parley-gateway"


def test_network_policies_open_only_the_gateway(rendered) -> None:
    overlay, objects = rendered
    policies = list(by_kind(objects, "NetworkPolicy").values())
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for workload in workloads(objects):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        open_rules = [
            rule
            for p in policies
            if matches(p["spec"]["podSelector"], labels)
            for rule in p["spec"].get("ingress", [])
            if not rule.get("from")
        ]
        name = workload["metadata"]["name"]
        if name == "parley-gateway":
            assert open_rules, "the gateway is not reachable"
        else:
            assert not open_rules, f"{name} is reachable from anywhere"
        # Metrics: only from the monitoring namespace.
        for p in policies:
            if not matches(p["spec"]["podSelector"], labels):
                continue
            for rule in p["spec"].get("ingress", []):
                if any(port["port"] == "metrics" for port in rule.get("ports", [])):
                    assert rule["from"] == [MONITORING]
    nats = by_kind(objects, "NetworkPolicy")["nats"]["spec"]["ingress"]
    client = [r for r in nats if {"protocol": "TCP", "port": 4222} in r["ports"]][0]
    allowed = set(client["from"][0]["podSelector"]["matchExpressions"][0]["values"])
    assert allowed == {f"parley-{s}" for s in STAGES}


def test_nats_is_a_three_server_jetstream_cluster_on_volumes(rendered) -> None:
    overlay, objects = rendered
    nats = by_kind(objects, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    conf = config_map(objects, "nats-config")["data"]["nats.conf"]
    assert "jetstream" in conf and "store_dir: /data/jetstream" in conf
    routes = re.findall(r"nats://(nats-\d)\.nats-headless:6222", conf)
    assert routes == ["nats-0", "nats-1", "nats-2"]
    users = re.findall(r"user: (parley-[a-z]+)", conf)
    assert sorted(users) == sorted(f"parley-{s}" for s in STAGES)
    annotations = nats["spec"]["template"]["metadata"]["annotations"]
    exporter = [c for c in containers(nats) if c["name"] == "exporter"][0]
    assert port_number(exporter, "metrics") == int(annotations["prometheus.io/port"])


def test_dashboard_and_alert_rules_ship_as_config_maps(rendered) -> None:
    overlay, objects = rendered
    from tests.deploy.render import ROOT

    maps = by_kind(objects, "ConfigMap")
    dashboard = maps["parley-grafana-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert (
        dashboard["data"]["parley-dashboard.json"]
        == (ROOT / "deploy/grafana/parley-dashboard.json").read_text()
    )
    rules = maps["parley-prometheus"]["data"]
    assert rules["alerts.yml"] == (ROOT / "deploy/prometheus/alerts.yml").read_text()
    assert "parley_stage_load_ratio" in rules["adapter-rules.yaml"]
