"""The manifests run: the dev overlay's pods started as a kubelet would start
them, in the image `make image` builds, then probed, then spoken to.

For every Deployment and the NATS StatefulSet (three servers): each container
runs with its exact command, args and env ($(VAR) expansion, fieldRefs,
service links unless the pod turns them off), its ConfigMaps rendered to files
at their mount paths, the Secret's keys as env, a read-only root with a tmpfs
where the pod has an emptyDir (or a volume claim), the pod's user and groups,
capabilities dropped, no privilege escalation and the memory and CPU limits.
Each Service's name (and each StatefulSet pod's stable name) resolves on a
private Docker network with no way out. Then every startup, readiness and
liveness probe is checked the kubelet's way (HTTP GET, gRPC health, TCP),
one spoken turn goes through the gateway, and each pod is stopped the way
Kubernetes stops it: preStop, SIGTERM, and it must be gone (cleanly) within its
terminationGracePeriodSeconds. Any drift between manifests, image and code
fails here.

Containers of third-party images that cannot be had here (no registry: the
NATS exporter, the OTel Collector) are run too when their image is present,
and otherwise listed in the report; every container of the Parley image runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley.cli.client import ParleyClient
from tests.deploy.render import (
    PARLEY_IMAGE,
    ROOT,
    by_kind,
    containers,
    pod_spec,
    probe_port,
    render,
)
from tests.deploy.turn import spoken_turn

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

OVERLAY = "dev"
NAMESPACE_DOMAIN = "parley.svc.cluster.local"
REPORT_DIR = ROOT / "var" / "deploy-test"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
# Third-party images with no registry to pull them from get a stand-in from
# the Parley image on the same ports, with the same hardening, so what talks
# to them is tested: the collector's receives every service's spans.
STAND_INS = {
    "otel/opentelemetry-collector-contrib": ["python", "/stand-in/otlp_sink.py"],
}
# What a pod may not log: an error swallowed, a write the read-only root
# refused, a subject its NATS user may not use.
BAD_LOG_LINES = (
    "Traceback",
    "Read-only file system",
    "Permissions Violation",
    "Authorization Violation",
    "Publish Violation",
    "Subscription Violation",
)


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])}...: {result.stderr.strip()}")
    return result


# --- from manifests to `docker run` -------------------------------------------------


def quantity_bytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", str(q))
    assert m, q
    return int(float(m.group(1)) * units.get(m.group(2) or "", 1))


def quantity_cpus(q: str) -> float:
    q = str(q)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion: defined names are replaced, $$ escapes."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)


def service_links(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    """What the kubelet puts in a pod's env for each Service, unless the pod
    sets enableServiceLinks: false (Docker-link style variables)."""
    env: dict[str, str] = {}
    for n, (name, svc) in enumerate(sorted(services.items())):
        if svc["spec"].get("clusterIP") == "None":
            continue
        ip = f"10.96.0.{n + 10}"
        prefix = name.upper().replace("-", "_")
        ports = svc["spec"]["ports"]
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        env[f"{prefix}_PORT"] = f"tcp://{ip}:{ports[0]['port']}"
        for p in ports:
            proto = p.get("protocol", "TCP")
            base = f"{prefix}_PORT_{p['port']}_{proto}"
            env[base] = f"{proto.lower()}://{ip}:{p['port']}"
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = str(p["port"])
            env[f"{base}_ADDR"] = ip
            if p.get("name"):
                env[f"{prefix}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
    return env


@dataclass
class Pod:
    name: str
    workload: dict[str, Any]
    hostname: str
    subdomain: str | None = None
    containers: dict[str, str] = field(default_factory=dict)  # container name -> docker name
    not_run: list[str] = field(default_factory=list)
    stand_ins: list[str] = field(default_factory=list)  # container names
    ip: str = ""

    @property
    def spec(self) -> dict[str, Any]:
        return pod_spec(self.workload)

    @property
    def labels(self) -> dict[str, str]:
        return self.workload["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


class Cluster:
    """Just enough of a node to run the rendered pods with Docker."""

    def __init__(self, objects: list[dict[str, Any]], image: str, workdir: Path) -> None:
        self.objects = objects
        self.image = image
        self.workdir = workdir
        self.run_id = uuid.uuid4().hex[:8]
        self.network = f"parley-k8s-{self.run_id}"
        self.services = by_kind(objects, "Service")
        self.config_maps = by_kind(objects, "ConfigMap")
        self.secret_values: dict[str, str] = {}
        self.pods: list[Pod] = []

    def secret(self, ref: dict[str, Any]) -> str | None:
        """A value for each key the manifests require (random, as an operator
        would generate); optional keys are left out, as a minimal install does."""
        if ref.get("optional"):
            return None
        key = f"{ref['name']}/{ref['key']}"
        if key not in self.secret_values:
            self.secret_values[key] = secrets.token_hex(16)
        return self.secret_values[key]

    def aliases(self, pod: Pod) -> list[str]:
        names = [pod.hostname]
        for name, svc in self.services.items():
            selector = svc["spec"].get("selector", {})
            if selector and all(pod.labels.get(k) == v for k, v in selector.items()):
                names += [name, f"{name}.parley", f"{name}.{NAMESPACE_DOMAIN}"]
                if pod.subdomain == name:
                    names += [f"{pod.hostname}.{name}", f"{pod.hostname}.{name}.{NAMESPACE_DOMAIN}"]
        return names

    def env(self, pod: Pod, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        if pod.spec.get("enableServiceLinks", True):
            env.update(service_links(self.services))
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = expand(item["value"], env)
                continue
            source = item["valueFrom"]
            if "secretKeyRef" in source:
                value = self.secret(source["secretKeyRef"])
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                value = self.config_maps[ref["name"]]["data"][ref["key"]]
            elif "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                value = {"metadata.name": pod.name, "metadata.namespace": "parley"}.get(path)
                assert value is not None, f"fieldRef {path} is not emulated"
            else:
                raise AssertionError(f"env source {source} is not emulated")
            if value is not None:
                env[item["name"]] = value
        return env

    def run_args(
        self, pod: Pod, container: dict[str, Any], first: str | None, extra: list[str] = ()
    ) -> list[str]:
        spec = pod.spec
        psc = spec.get("securityContext", {})
        sc = {**psc, **container.get("securityContext", {})}
        docker_name = f"{self.network}-{pod.name}-{container['name']}"
        args = ["run", "-d", "--name", docker_name, "--label", f"parley-k8s-test={self.run_id}"]
        if first is None:
            args += ["--network", self.network, "--hostname", pod.hostname]
            args += [f"--network-alias={a}" for a in self.aliases(pod)]
        else:
            # The pod's containers share one network namespace (localhost).
            args += ["--network", f"container:{first}"]
        uid, gid = sc.get("runAsUser"), sc.get("runAsGroup")
        if uid is not None:
            args += ["--user", f"{uid}:{gid if gid is not None else 0}"]
        if psc.get("fsGroup") is not None:
            args += ["--group-add", str(psc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for cap in sc.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", cap]
        for cap in sc.get("capabilities", {}).get("add", []):
            args += ["--cap-add", cap]
        if sc.get("seccompProfile", {}).get("type") == "Unconfined":
            args += ["--security-opt", "seccomp=unconfined"]
        # RuntimeDefault is Docker's default seccomp profile.
        limits = container.get("resources", {}).get("limits", {})
        if "memory" in limits:
            args += ["--memory", str(quantity_bytes(limits["memory"]))]
        if "cpu" in limits:
            args += ["--cpus", f"{min(quantity_cpus(limits['cpu']), os.cpu_count() or 1):.2f}"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {
            t["metadata"]["name"] for t in pod.workload["spec"].get("volumeClaimTemplates", [])
        }
        fs_group = psc.get("fsGroup", 0)
        for mount in container.get("volumeMounts", []):
            path = mount["mountPath"]
            if mount["name"] in claims:
                # A fresh volume, group-owned as fsGroup makes it.
                args += ["--tmpfs", f"{path}:rw,exec,uid=0,gid={fs_group},mode=2775,size=512m"]
                continue
            volume = volumes[mount["name"]]
            if "emptyDir" in volume:
                size = volume["emptyDir"].get("sizeLimit")
                opts = "rw,exec,mode=1777" + (f",size={quantity_bytes(size)}" if size else "")
                args += ["--tmpfs", f"{path}:{opts}"]
            elif "configMap" in volume:
                source = self.workdir / f"{pod.name}-{mount['name']}"
                source.mkdir(parents=True, exist_ok=True)
                data = self.config_maps[volume["configMap"]["name"]]["data"]
                items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    target = source / item["path"]
                    target.write_text(data[item["key"]])
                    target.chmod(0o644)
                source.chmod(0o755)
                if "subPath" in mount:
                    args += ["-v", f"{source / mount['subPath']}:{path}:ro"]
                else:
                    args += ["-v", f"{source}:{path}:ro"]
            else:
                raise AssertionError(f"volume {volume} is not emulated")
        args += list(extra)
        env = self.env(pod, container)
        for name, value in env.items():
            args += ["-e", f"{name}={value}"]
        if container.get("workingDir"):
            args += ["-w", container["workingDir"]]
        command = [expand(c, env) for c in container.get("command", [])]
        rest = [expand(a, env) for a in container.get("args", [])]
        if command:
            args += ["--entrypoint", command[0], container["image"], *command[1:], *rest]
        else:
            args += [container["image"], *rest]
        return args

    def image_present(self, image: str) -> bool:
        return docker("image", "inspect", image, check=False).returncode == 0

    def start(self, pod: Pod) -> None:
        first: str | None = None
        for container in containers(pod.workload):
            extra: list[str] = []
            if not self.image_present(container["image"]):
                stand_in = STAND_INS.get(container["image"].rpartition(":")[0])
                if stand_in is None:
                    pod.not_run.append(f"{pod.name}/{container['name']} ({container['image']})")
                    continue
                pod.stand_ins.append(container["name"])
                container = {**container, "image": self.image, "command": stand_in, "args": []}
                extra = ["-v", f"{Path(__file__).parent}:/stand-in:ro"]
            args = self.run_args(pod, container, first, extra)
            docker_name = args[args.index("--name") + 1]
            docker(*args)
            pod.containers[container["name"]] = docker_name
            if first is None:
                first = docker_name
                pod.ip = docker(
                    "inspect",
                    "-f",
                    f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}',
                    docker_name,
                ).stdout.strip()
        self.pods.append(pod)

    def logs(self, docker_name: str) -> str:
        out = docker("logs", docker_name, check=False, timeout=30)
        return out.stdout + out.stderr

    def state(self, docker_name: str) -> dict[str, Any]:
        raw = docker("inspect", "-f", "{{json .State}}", docker_name).stdout
        return json.loads(raw)  # type: ignore[no-any-return]

    def save_logs(self) -> None:
        REPORT_DIR.mkdir(parents=True, exist_ok=True)
        for pod in self.pods:
            for cname, docker_name in pod.containers.items():
                (REPORT_DIR / f"{pod.name}-{cname}.log").write_text(self.logs(docker_name))

    def tail(self, pod: Pod, lines: int = 40) -> str:
        parts = []
        for cname, docker_name in pod.containers.items():
            text = self.logs(docker_name).splitlines()[-lines:]
            parts.append(f"--- {pod.name}/{cname}:\n" + "\n".join(text))
        return "\n".join(parts)


# --- probes, the kubelet's way ------------------------------------------------------


async def probe_once(pod: Pod, container: dict[str, Any], probe: dict[str, Any]) -> str | None:
    """None on success, else why it failed."""
    port = probe_port(container, probe)
    timeout = probe.get("timeoutSeconds", 1)
    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            url = f"{get.get('scheme', 'HTTP').lower()}://{pod.ip}:{port}{get.get('path', '/')}"
            async with httpx.AsyncClient(timeout=timeout) as client:
                response = await client.get(url)
            return None if 200 <= response.status_code < 400 else f"HTTP {response.status_code}"
        if "grpc" in probe:
            async with grpc.aio.insecure_channel(f"{pod.ip}:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")),
                    timeout=timeout,
                )
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            return (
                None if serving else health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            )
        if "tcpSocket" in probe:
            _, writer = await asyncio.wait_for(asyncio.open_connection(pod.ip, port), timeout)
            writer.close()
            return None
    except (OSError, httpx.HTTPError, grpc.RpcError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    raise AssertionError(f"probe {probe} is not emulated")


async def wait_probe(cluster: Cluster, pod: Pod, container: dict[str, Any], kind: str) -> float:
    """Seconds until the probe first succeeded, within what the kubelet allows
    (initialDelaySeconds + periodSeconds x failureThreshold); the container
    must stay up meanwhile."""
    probe = container[kind]
    period = probe.get("periodSeconds", 10)
    budget = probe.get("initialDelaySeconds", 0) + period * probe.get("failureThreshold", 3)
    start = time.monotonic()
    await asyncio.sleep(probe.get("initialDelaySeconds", 0))
    why = "never probed"
    while time.monotonic() - start <= budget:
        why = await probe_once(pod, container, probe)  # type: ignore[assignment]
        if why is None:
            return time.monotonic() - start
        state = cluster.state(pod.containers[container["name"]])
        if not state["Running"]:
            raise AssertionError(
                f"{pod.name}/{container['name']} exited ({state['ExitCode']},"
                f" OOMKilled={state['OOMKilled']}) before its {kind} passed:\n{cluster.tail(pod)}"
            )
        await asyncio.sleep(min(period, 2))
    where = f"{pod.name}/{container['name']}"
    raise AssertionError(f"{where}: {kind} failed for {budget} s ({why}):\n{cluster.tail(pod)}")


async def check_probes(cluster: Cluster, pod: Pod) -> dict[str, float]:
    """Startup first (the kubelet holds the others until it passes), then
    readiness and liveness."""
    took: dict[str, float] = {}
    for container in containers(pod.workload):
        if container["name"] not in pod.containers:
            continue
        took[f"{container['name']}.startup"] = await wait_probe(
            cluster, pod, container, "startupProbe"
        )
        for kind in ("readinessProbe", "livenessProbe"):
            took[f"{container['name']}.{kind[:-5]}"] = await wait_probe(
                cluster, pod, container, kind
            )
    return took


# --- the test -----------------------------------------------------------------------


def pods_of(objects: list[dict[str, Any]]) -> tuple[list[Pod], list[Pod]]:
    """(the NATS StatefulSet's pods, one pod per Deployment)."""
    nats: list[Pod] = []
    for sts in by_kind(objects, "StatefulSet").values():
        for i in range(sts["spec"]["replicas"]):
            name = f"{sts['metadata']['name']}-{i}"
            nats.append(Pod(name, sts, hostname=name, subdomain=sts["spec"]["serviceName"]))
    deployments = []
    for name, deployment in by_kind(objects, "Deployment").items():
        pod_name = f"{name}-{uuid.uuid4().hex[:5]}"
        deployments.append(Pod(pod_name, deployment, hostname=pod_name))
    return nats, deployments


async def check_bus_is_closed(cluster: Cluster, server: Pod) -> dict[str, Any]:
    """NATS takes no anonymous client, and a service's user may use only its
    own subjects: vad's may not hear the answer audio nor speak as the llm."""
    url = f"nats://{server.ip}:4222"
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0)
    refused: list[str] = []

    async def on_error(exc: Exception) -> None:
        refused.append(str(exc))

    password = cluster.secret_values["parley-secrets/nats-vad-password"]
    nc = await nats.connect(
        f"nats://parley-vad:{password}@{server.ip}:4222",
        error_cb=on_error,
        allow_reconnect=False,
    )
    try:
        await nc.subscribe("parley.v1.s.*.audio.out")
        await nc.publish("parley.v1.s.test.llm", b"")
        await nc.flush(timeout=2)
        for _ in range(20):
            if len(refused) >= 2:
                break
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
    assert any("subscription" in r.lower() and "audio.out" in r for r in refused), refused
    assert any("publish" in r.lower() and "parley.v1.s.test.llm" in r for r in refused), refused
    return {"anonymous": "refused", "vad_user_refused": refused}


def memory_mb(cluster: Cluster) -> dict[str, float]:
    names = [d for p in cluster.pods for d in p.containers.values()]
    out = docker("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *names, timeout=60)
    used = {}
    for line in out.stdout.splitlines():
        name, usage = line.split(" ", 1)
        m = re.match(r"([\d.]+)([KMG]i?B)", usage)
        assert m, usage
        scale = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "KB": 1 / 1000, "MB": 1, "GB": 1000}
        used[name.removeprefix(cluster.network + "-")] = round(
            float(m.group(1)) * scale[m.group(2)], 1
        )
    return used


async def stop_like_kubernetes(cluster: Cluster, pod: Pod) -> dict[str, Any]:
    """preStop, then SIGTERM: readiness must fail soon after, and the container
    must exit by itself, cleanly, within terminationGracePeriodSeconds."""
    grace = pod.spec.get("terminationGracePeriodSeconds", 30)
    started = time.monotonic()
    result: dict[str, Any] = {}
    for container in containers(pod.workload):
        name = container["name"]
        if name not in pod.containers:
            continue
        pre_stop = container.get("lifecycle", {}).get("preStop", {})
        if "sleep" in pre_stop:
            await asyncio.sleep(pre_stop["sleep"]["seconds"])
        elif "exec" in pre_stop:
            docker("exec", pod.containers[name], *pre_stop["exec"]["command"])
        docker("kill", "--signal", "TERM", pod.containers[name])
        signalled = time.monotonic()
        not_ready = None
        while time.monotonic() - signalled < 5:
            if await probe_once(pod, container, container["readinessProbe"]) is not None:
                not_ready = time.monotonic() - signalled
                break
            await asyncio.sleep(0.1)
        assert not_ready is not None, f"{pod.name}: still ready 5 s after SIGTERM"
        while cluster.state(pod.containers[name])["Running"]:
            assert time.monotonic() - started < grace, (
                f"{pod.name}/{name} outlived its {grace} s grace period:\n{cluster.tail(pod)}"
            )
            await asyncio.sleep(0.2)
        state = cluster.state(pod.containers[name])
        assert state["ExitCode"] == 0, (
            f"{pod.name}/{name} exited {state['ExitCode']}:\n{cluster.tail(pod)}"
        )
        result[name] = {
            "not_ready_after_s": round(not_ready, 2),
            "exited_after_s": round(time.monotonic() - started, 1),
        }
    return result


@pytest.fixture
def cluster(image: str, tmp_path: Path):
    objects = render(OVERLAY)
    c = Cluster(objects, image, tmp_path)
    for old in REPORT_DIR.glob("*-*.log"):
        if old.name != "make-image.log":
            old.unlink()
    # Internal: the pods reach each other and this host, nothing else (as the
    # NetworkPolicies would have it for the stages; no provider is needed).
    docker("network", "create", "--internal", c.network)
    try:
        yield c
    finally:
        c.save_logs()
        ids = docker("ps", "-aq", "--filter", f"label=parley-k8s-test={c.run_id}").stdout.split()
        if ids:
            docker("rm", "-f", *ids, check=False, timeout=120)
        docker("network", "rm", c.network, check=False)


async def test_dev_overlay_runs_probes_pass_and_a_turn_is_answered(cluster: Cluster) -> None:
    report: dict[str, Any] = {"overlay": OVERLAY, "image": cluster.image}
    nats, stages = pods_of(cluster.objects)
    assert len(nats) == 3 and {p.workload["metadata"]["name"] for p in stages} >= {
        f"parley-{s}" for s in ("gateway", "vad", "asr", "llm", "tts", "tools")
    }
    t0 = time.monotonic()
    for pod in nats:
        cluster.start(pod)
    report["probes"] = {}
    for pod, took in zip(
        nats, await asyncio.gather(*(check_probes(cluster, p) for p in nats)), strict=True
    ):
        report["probes"][pod.name] = took
    # All Deployments at once, as an apply starts them.
    for pod in stages:
        cluster.start(pod)
    for pod, took in zip(
        stages, await asyncio.gather(*(check_probes(cluster, p) for p in stages)), strict=True
    ):
        report["probes"][pod.workload["metadata"]["name"]] = took
    report["all_ready_s"] = round(time.monotonic() - t0, 1)

    # Prometheus scrapes the annotated port.
    for pod in [*nats, *stages]:
        meta = pod.workload["spec"]["template"]["metadata"].get("annotations", {})
        if "prometheus.io/port" not in meta:
            continue
        port = int(meta["prometheus.io/port"])
        if not any(
            port in [p["containerPort"] for p in c.get("ports", [])]
            for c in containers(pod.workload)
            if c["name"] in pod.containers and c["name"] not in pod.stand_ins
        ):
            continue  # a third-party container whose image is not here (in not_run)
        path = meta.get("prometheus.io/path", "/metrics")
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"http://{pod.ip}:{port}{path}")
        assert response.status_code == 200 and "parley_" in response.text, pod.name

    gateway = next(p for p in stages if p.workload["metadata"]["name"] == "parley-gateway")
    gw = pod_spec(gateway.workload)["containers"][0]
    ws_port = next(p["containerPort"] for p in gw["ports"] if p["name"] == "ws")
    url = f"ws://{gateway.ip}:{ws_port}/v1/ws"
    token = cluster.secret_values["parley-secrets/gateway-auth-token"]
    # The Secret reached the gateway: without the token, no session.
    with pytest.raises(Exception, match="401"):
        await ParleyClient.open(url)
    turn = await spoken_turn(url, token)
    report["turn"] = turn
    assert {"capital", "france"} <= set(re.findall(r"[a-z]+", turn["transcript"].lower())), turn
    assert turn["status"] == "completed" and turn["answer"].strip(), turn
    assert turn["audio_s"] > 0.5, turn

    memory = memory_mb(cluster)
    report["memory_mb"] = memory
    for pod in [*nats, *stages]:
        for container in containers(pod.workload):
            if container["name"] not in pod.containers:
                continue
            limit = quantity_bytes(container["resources"]["limits"]["memory"]) / 2**20
            used = memory[f"{pod.name}-{container['name']}"]
            assert used < 0.9 * limit, f"{pod.name}/{container['name']}: {used} MiB of {limit} MiB"

    # Nothing went wrong quietly: no traceback, no write refused by the
    # read-only root, no NATS permission refused.
    for pod in [*nats, *stages]:
        for cname, docker_name in pod.containers.items():
            logs = cluster.logs(docker_name)
            for bad in BAD_LOG_LINES:
                assert bad not in logs, f"{pod.name}/{cname}: {bad}\n{cluster.tail(pod)}"

    report["bus"] = await check_bus_is_closed(cluster, nats[0])

    # Parley's pods stop the Kubernetes way; the collector (stand-in) last,
    # so it receives what they flush on the way out.
    parley_pods = [p for p in stages if not p.stand_ins]
    report["stop"] = {}
    for pod, stopped in zip(
        parley_pods,
        await asyncio.gather(*(stop_like_kubernetes(cluster, p) for p in parley_pods)),
        strict=True,
    ):
        report["stop"][pod.workload["metadata"]["name"]] = stopped
    collector = next(p for p in stages if p.workload["metadata"]["name"] == "otel-collector")
    exports = [
        json.loads(line)
        for line in cluster.logs(collector.containers["otel-collector"]).splitlines()
        if line.startswith("{")
    ]
    spans: dict[str, int] = {}
    for export in exports:
        spans[export["service"]] = spans.get(export["service"], 0) + export["spans"]
    report["spans_received"] = spans
    # One turn is one trace across the stages (tools has no part in it).
    for stage in ("gateway", "vad", "asr", "llm", "tts"):
        assert spans.get(f"parley-{stage}"), f"no spans from {stage} at the collector: {spans}"
    assert all(e["path"] == "/v1/traces" and e["pod"] for e in exports), exports[:3]
    report["stand_ins"] = [f"{p.name}/{n}" for p in stages for n in p.stand_ins]
    report["not_run"] = [n for p in [*nats, *stages] for n in p.not_run]
    # Only third-party images may be missing; every Parley container ran.
    assert all(PARLEY_IMAGE not in n for n in report["not_run"]), report["not_run"]
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "report.json").write_text(json.dumps(report, indent=2))
    (ROOT / "var" / "deploy-memory.json").write_text(json.dumps(memory, indent=2))
    print(json.dumps(report, indent=2))
