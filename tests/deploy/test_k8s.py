"""deploy/k8s/: schema-valid offline, and consistent with fastgate's flags and each other."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.helpers import DEPLOY, exec_form, fastgate_config, parse_dockerfile

# The Kubernetes API version the manifests are written for; kubernetes-validate ships its
# schemas inside the package, so validation needs no network.
K8S_VERSION = "1.33.0"
K8S_DIR = DEPLOY / "k8s"


def _load_all() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


MANIFESTS = _load_all()


def _container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = MANIFESTS["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _config() -> Any:
    container = _container()
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return fastgate_config(container["args"], env)


def _port_number(port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in _container()["ports"]:
        if p["name"] == port:
            return int(p["containerPort"])
    raise AssertionError(f"no container port named {port!r}")


def test_every_kind_is_shipped() -> None:
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "NetworkPolicy"} <= set(MANIFESTS)


@pytest.mark.parametrize("path", sorted(K8S_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schema(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        # strict: unknown fields (a typo such as "readinesProbe") are errors too.
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_really_rejects_a_broken_manifest() -> None:
    broken = copy.deepcopy(MANIFESTS["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = copy.deepcopy(MANIFESTS["Deployment"])
    broken["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "forty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_probes_use_fastgates_health_and_ready_paths_and_port() -> None:
    config = _config()
    container = _container()
    assert config.http.health_path and config.http.ready_path
    assert container["readinessProbe"]["httpGet"]["path"] == config.http.ready_path
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == config.http.health_path
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert _port_number(container[probe]["httpGet"]["port"]) == config.bind.port
    assert config.bind.host == "0.0.0.0"  # reachable by the kubelet and the Service


def test_grace_period_covers_shutdown_delay_plus_graceful_timeout() -> None:
    config = _config()
    pod = MANIFESTS["Deployment"]["spec"]["template"]["spec"]
    delay, graceful = config.process.shutdown_delay, config.process.timeout_graceful_shutdown
    assert delay > 0, "without a shutdown delay the listener closes before endpoints are updated"
    assert pod["terminationGracePeriodSeconds"] > delay + graceful


def test_readiness_fails_within_the_shutdown_delay() -> None:
    config = _config()
    probe = _container()["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] < config.process.shutdown_delay


def test_startup_probe_allows_the_worker_boot_timeout() -> None:
    config = _config()
    probe = _container()["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= config.process.timeout_worker_boot


def test_workers_follow_the_cpu_limit() -> None:
    container = _container()
    args = container["args"]
    assert args[args.index("--workers") + 1] == "auto"
    assert "cpu" in container["resources"]["limits"]
    assert "cpu" in container["resources"]["requests"]  # the HPA's utilisation is relative to it
    assert "memory" in container["resources"]["limits"]


def test_pod_runs_non_root_read_only_without_privileges() -> None:
    pod = MANIFESTS["Deployment"]["spec"]["template"]["spec"]
    container = _container()
    sc = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # A read-only root needs a writable /tmp (tempfile, multipart uploads).
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_pod_user_and_entrypoint_match_the_dockerfile() -> None:
    instructions = parse_dockerfile((DEPLOY / "docker" / "Dockerfile").read_text())
    last = max(i.stage for i in instructions)
    user = [i.args for i in instructions if i.keyword == "USER" and i.stage == last][-1]
    uid, _, gid = user.partition(":")
    pod_sc = MANIFESTS["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert (pod_sc["runAsUser"], pod_sc["runAsGroup"]) == (int(uid), int(gid))
    # Kubernetes' `args` replace the image's CMD and keep its ENTRYPOINT (fastgate as PID 1);
    # a `command` would replace the entrypoint.
    entrypoint = [i.args for i in instructions if i.keyword == "ENTRYPOINT"][-1]
    assert exec_form(entrypoint) == ["fastgate"]
    assert "command" not in _container()


def test_service_hpa_pdb_and_policy_select_the_deployment() -> None:
    deployment = MANIFESTS["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    service = MANIFESTS["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in _container()["ports"]}
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])

    pdb = MANIFESTS["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    hpa = MANIFESTS["HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # A node drain may evict one pod while another keeps serving.
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]

    policy = MANIFESTS["NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()


def test_trusting_every_forwarder_is_backed_by_a_network_policy() -> None:
    config = _config()
    if config.http.forwarded_allow_ips.strip() != "*":
        return
    policy = MANIFESTS["NetworkPolicy"]["spec"]
    assert "Ingress" in policy["policyTypes"]
    for rule in policy["ingress"]:
        assert rule.get("from"), "an ingress rule without 'from' admits every peer"
        assert [p["port"] for p in rule["ports"]] == ["http"]


def test_rollout_never_drops_capacity() -> None:
    strategy = MANIFESTS["Deployment"]["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
