"""The Kubernetes manifests (deploy/kubernetes): rendered with kubectl's built-in kustomize,
validated offline against the v1.32 schemas (kubernetes-validate --strict), held to the Pod
Security level their namespace claims, and the NetworkPolicy generated from the scope."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO, run_cli
from support.pod_security import LEVELS, baseline, restricted

KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = ("connect", "raw", "seccomp-localhost", "fleet")
KUBERNETES_VERSION = "1.32.0"
VALIDATE = Path(sys.executable).with_name("kubernetes-validate")


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is missing (the machine image ships kubectl 1.32 with kustomize 5.5)")
    done = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def validate(path: Path) -> str:
    """kubernetes-validate --strict against the v1.32 schemas; its output (the test fails unless 0)."""
    done = subprocess.run(
        [str(VALIDATE), "--strict", "--kubernetes-version", KUBERNETES_VERSION, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = of_kind(docs, "Deployment")
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly_against_the_schemas(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    output = validate(rendered)
    # Every resource is checked, the NetworkPolicies too, not only the first one.
    for doc in docs:
        assert f"passed for resource {doc['kind'].lower()}/{doc['metadata']['name']} " in output, doc["kind"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_the_level_their_namespace_enforces(overlay: str) -> None:
    docs = render(overlay)
    [namespace] = of_kind(docs, "Namespace")
    level = namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    deployments = of_kind(docs, "Deployment")
    assert deployments  # the fleet overlay has two: the fronts and a segment's appliances
    for deployment in deployments:
        assert deployment["metadata"]["namespace"] == namespace["metadata"]["name"]
        assert LEVELS[level](deployment["spec"]["template"]["spec"]) == set(), deployment["metadata"]["name"]


def test_connect_mode_is_restricted_with_the_job_store_on_one_writer() -> None:
    docs = render("connect")
    [namespace] = of_kind(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    [deployment] = of_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    spec = pod_spec(docs)
    assert spec["securityContext"]["runAsUser"] == 65532
    assert spec["securityContext"]["fsGroup"] == 65532
    [container] = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    [pvc] = of_kind(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert {v["name"]: v for v in spec["volumes"]}["secrets"]["secret"]["secretName"] == "appliance-secrets"


def test_raw_mode_deviates_from_baseline_by_net_raw_alone_and_drops_to_65532() -> None:
    docs = render("raw")
    spec = pod_spec(docs)
    # What the privileged namespace allows that baseline would not: exactly NET_RAW.
    assert baseline(spec) == {"capabilities"}
    [container] = spec["containers"]
    added = set(container["securityContext"]["capabilities"]["add"])
    assert added == {"NET_RAW", "SETUID", "SETGID", "SETPCAP"}
    assert added - {"NET_RAW"} <= {"SETUID", "SETGID", "SETPCAP"}
    assert container["command"][:4] == ["/usr/bin/setpriv", "--reuid=65532", "--regid=65532", "--clear-groups"]
    assert "--bounding-set=-all,+net_raw" in container["command"]
    assert {e["name"]: e.get("value") for e in container["env"]}["APPLIANCE_PRIVILEGE_MODE"] == "raw"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_seccomp_localhost_overlay_names_the_appliance_profile() -> None:
    profile = pod_spec(render("seccomp-localhost"))["securityContext"]["seccompProfile"]
    assert profile == {"type": "Localhost", "localhostProfile": "mcp-scanner-appliance.json"}


# --- the Pod Security checks themselves: one failing fixture per rule -------------------------
def _mutate(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(pod_spec(render("connect")))
    target: Any = spec
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target.setdefault(key, {})
    target[keys[-1]] = value
    return spec


@pytest.mark.parametrize(
    ("path", "value", "rule"),
    [
        # baseline
        ("hostNetwork", True, "host_namespaces"),
        ("hostPID", True, "host_namespaces"),
        ("volumes.0.hostPath", {"path": "/"}, "host_path_volumes"),
        ("containers.0.securityContext.privileged", True, "privileged"),
        ("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"], "capabilities"),
        ("containers.0.ports.0.hostPort", 8080, "host_ports"),
        ("containers.0.securityContext.procMount", "Unmasked", "proc_mount"),
        ("securityContext.seccompProfile", {"type": "Unconfined"}, "seccomp"),
        ("containers.0.securityContext.appArmorProfile", {"type": "Unconfined"}, "apparmor"),
        ("securityContext.seLinuxOptions", {"type": "spc_t"}, "selinux"),
        ("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}], "sysctls"),
        ("securityContext.windowsOptions", {"hostProcess": True}, "host_process"),
        # restricted
        ("containers.0.securityContext.allowPrivilegeEscalation", True, "privilege_escalation"),
        ("containers.0.securityContext.runAsNonRoot", False, "run_as_non_root"),
        ("containers.0.securityContext.runAsUser", 0, "run_as_user"),
        ("containers.0.securityContext.capabilities.drop", [], "capabilities_drop_all"),
        ("containers.0.securityContext.capabilities.add", ["NET_RAW"], "capabilities"),
        ("volumes.0.nfs", {"server": "192.0.2.1", "path": "/"}, "volume_types"),
    ],
)
def test_pod_security_check_catches_each_rule(path: str, value: Any, rule: str) -> None:
    assert restricted(_mutate("containers.0.name", "appliance")) == set()  # the fixture's base passes
    assert rule in restricted(_mutate(path, value))


def test_restricted_needs_a_seccomp_profile_set() -> None:
    spec = copy.deepcopy(pod_spec(render("connect")))
    del spec["securityContext"]["seccompProfile"]
    assert "seccomp" in restricted(spec)
    assert "seccomp" not in baseline(spec)


# --- the NetworkPolicy generator --------------------------------------------------------------
CLUSTER = ("--pod-cidr", "10.244.0.0/16", "--service-cidr", "10.96.0.0/12")


def test_committed_networkpolicy_is_what_the_generator_prints_for_the_example_scope() -> None:
    code, out, err = run_cli(
        "policy", "networkpolicy", "deploy/kubernetes/base/scope.yaml", *CLUSTER, "--namespace", "mcp-scanner", cwd=REPO
    )
    assert code == 0, err
    committed = (KUBERNETES / "overlays" / "connect" / "networkpolicy.yaml").read_text()
    assert yaml.safe_load(committed) == yaml.safe_load(out)


def test_networkpolicy_denies_by_default_and_allows_the_scope_minus_its_denials(tmp_path: Path) -> None:
    policy = tmp_path / "scope.yaml"
    policy.write_text(
        "version: 2\nscope:\n  allow_networks: [192.0.2.0/24, 2001:db8::/64]\n"
        "  deny_networks: [192.0.2.1/32, 192.0.2.128/25, 198.51.100.0/24]\n"
    )
    code, out, err = run_cli(
        "policy",
        "networkpolicy",
        str(policy),
        *CLUSTER,
        "--egress",
        "203.0.113.10/32:443",
        "--egress",
        "[2001:db8:1::5/128]:4222",
    )
    assert code == 0, err
    document = yaml.safe_load(out)
    spec = document["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "mcp-scanner-appliance"}}
    assert spec["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 9090}]}]
    dns, scope, issuer, nats = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert "ports" not in scope  # the policy decides ports inside the scope
    assert [to["ipBlock"] for to in scope["to"]] == [
        {"cidr": "192.0.2.0/24", "except": ["192.0.2.1/32", "192.0.2.128/25"]},
        {"cidr": "2001:db8::/64"},
    ]
    assert issuer == {"to": [{"ipBlock": {"cidr": "203.0.113.10/32"}}], "ports": [{"protocol": "TCP", "port": 443}]}
    assert nats["to"][0]["ipBlock"]["cidr"] == "2001:db8:1::5/128"
    validated = tmp_path / "np.yaml"
    validated.write_text(out)
    validate(validated)


@pytest.mark.parametrize(
    ("allow", "deny", "cluster", "refused"),
    [
        # safe
        (["192.0.2.0/24"], [], CLUSTER, False),
        (["10.0.0.0/8"], ["10.244.0.0/16", "10.96.0.0/12"], CLUSTER, False),  # the cluster's part denied
        # unsafe
        (["10.0.0.0/8"], [], CLUSTER, True),  # holds both cluster ranges
        (["10.244.3.0/24"], [], CLUSTER, True),  # inside the pod range
        (["10.96.0.0/16"], [], CLUSTER, True),  # inside the service range
        (["10.0.0.0/8"], ["10.244.0.0/16"], CLUSTER, True),  # service range still in scope
    ],
)
def test_networkpolicy_refuses_a_scope_overlapping_the_cluster(
    tmp_path: Path, allow: list[str], deny: list[str], cluster: tuple[str, ...], refused: bool
) -> None:
    policy = tmp_path / "scope.yaml"
    policy.write_text(yaml.safe_dump({"version": 2, "scope": {"allow_networks": allow, "deny_networks": deny}}))
    code, _out, err = run_cli("policy", "networkpolicy", str(policy), *cluster)
    if refused:
        assert code == 1
        assert "networkpolicy_scope_overlaps_cluster" in err
        assert "deny_networks" in err
    else:
        assert code == 0, err


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        (("--pod-cidr", "10.244.0.0/16"), "networkpolicy_cluster_cidr_missing"),
        (("--pod-cidr", "banana", "--service-cidr", "10.96.0.0/12"), "networkpolicy_cluster_cidr_invalid"),
        ((*CLUSTER, "--egress", "203.0.113.10/32"), "networkpolicy_endpoint_invalid"),
        ((*CLUSTER, "--egress", "203.0.113.10/32:99999"), "networkpolicy_endpoint_invalid"),
    ],
)
def test_networkpolicy_bad_arguments_name_their_rule(tmp_path: Path, args: tuple[str, ...], rule: str) -> None:
    code, _out, err = run_cli("policy", "networkpolicy", str(KUBERNETES / "base" / "scope.yaml"), *args)
    assert code == 1
    assert rule in err


def test_fleet_overlay_runs_stateless_fronts_and_a_segments_appliances_on_nats() -> None:
    docs = render("fleet")
    deployments = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Deployment"}
    assert set(deployments) == {"appliance", "segment-seg-a"}
    assert not [doc for doc in docs if doc["kind"] == "PersistentVolumeClaim"]  # the jobs live in JetStream

    def env(name: str) -> dict[str, Any]:
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}

    front, segment = env("appliance"), env("segment-seg-a")
    assert (front["APPLIANCE_ROLE"], segment["APPLIANCE_ROLE"]) == ("front", "segment")
    assert front["APPLIANCE_NATS_URL"] == segment["APPLIANCE_NATS_URL"]
    assert segment["APPLIANCE_SEGMENT"] == "seg-a"
    # Bus security: TLS, the role's own NATS user, its password and the CA from its own Secret.
    assert front["APPLIANCE_NATS_URL"].startswith("tls://")
    assert (front["APPLIANCE_NATS_USER"], segment["APPLIANCE_NATS_USER"]) == ("front", "segment-seg-a")

    def secret_files(name: str) -> dict[str, str]:
        [volume] = [v for v in deployments[name]["spec"]["template"]["spec"]["volumes"] if v["name"] == "secrets"]
        sources = volume["projected"]["sources"] if "projected" in volume else [{"secret": volume["secret"]}]
        return {
            item["path"]: source["secret"].get("name", source["secret"].get("secretName"))
            for source in sources
            for item in source["secret"]["items"]
        }

    assert secret_files("appliance")["appliance_nats_password"] == "fleet-nats-front"
    assert secret_files("appliance")["appliance_auth_token"] == "appliance-secrets"
    # Every front mounts the same request-state key (approval answered through any front).
    assert secret_files("appliance")["appliance_request_state_key"] == "fleet-request-state"
    assert secret_files("segment-seg-a") == {
        "appliance_nats_password": "fleet-nats-segment-seg-a",
        "appliance_nats_ca": "fleet-nats-segment-seg-a",
        "appliance_fleet_seal_pub": "fleet-seal-public",  # the public key only: segments cannot seal
    }
    # Fronts seal what they admit; the private key is theirs alone.
    assert secret_files("appliance")["appliance_fleet_seal_key"] == "fleet-seal"
    assert "appliance_fleet_seal_pub" not in secret_files("appliance")
    assert deployments["appliance"]["spec"]["replicas"] == 2
    # The MCP Service selects the fronts only: a segment has no MCP endpoint.
    [service] = [doc for doc in docs if doc["kind"] == "Service"]
    segment_labels = deployments["segment-seg-a"]["spec"]["template"]["metadata"]["labels"]
    assert not set(service["spec"]["selector"].items()) <= set(segment_labels.items())


# --- the fleet overlay's NetworkPolicies: a front reaches NATS, a segment NATS and its scope ---
FLEET = KUBERNETES / "overlays" / "fleet"
NATS_PODS = ("--egress-pods", "app.kubernetes.io/name=nats:4222")
FLEET_POLICIES = {
    "networkpolicy-front.yaml": ("deploy/kubernetes/base/scope.yaml", "--role", "front"),
    "networkpolicy-segment-seg-a.yaml": (
        "deploy/kubernetes/overlays/fleet/seg-a-scope.yaml",
        "--role",
        "segment",
        "--segment",
        "seg-a",
    ),
}


@pytest.mark.parametrize("committed", sorted(FLEET_POLICIES))
def test_committed_fleet_networkpolicy_is_what_the_generator_prints(committed: str) -> None:
    code, out, err = run_cli(
        "policy",
        "networkpolicy",
        *FLEET_POLICIES[committed],
        *CLUSTER,
        *NATS_PODS,
        "--namespace",
        "mcp-scanner-fleet",
        cwd=REPO,
    )
    assert code == 0, err
    assert yaml.safe_load((FLEET / committed).read_text()) == yaml.safe_load(out)


def selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    return set(policy["spec"]["podSelector"]["matchLabels"].items()) <= set(labels.items())


def test_fleet_overlay_puts_each_role_under_its_own_networkpolicy() -> None:
    docs = render("fleet")
    policies = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "NetworkPolicy")}
    deployments = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "Deployment")}
    # Each role's pods fall under exactly one policy, its own: none runs without one, and the
    # fronts' (no scope egress) never also opens a segment's pods, or the other way round.
    chosen = {}
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        [chosen[name]] = [policy for policy, doc in policies.items() if selects(doc, labels)]
    assert chosen == {"appliance": "front", "segment-seg-a": "segment-seg-a"}
    for policy in policies.values():
        assert policy["metadata"]["namespace"] == "mcp-scanner-fleet"
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]

    def ports(rule: dict[str, Any]) -> set[int]:
        return {port["port"] for port in rule["ports"]}

    def nats_port(deployment: str) -> int:
        container = deployments[deployment]["spec"]["template"]["spec"]["containers"][0]
        url = {item["name"]: item.get("value") for item in container["env"]}["APPLIANCE_NATS_URL"]
        return int(url.rsplit(":", 1)[1])

    front, segment = policies["front"]["spec"], policies["segment-seg-a"]["spec"]
    # The front: MCP and the sidecar in; out, DNS and the NATS pods, nothing of any scope.
    [front_in] = front["ingress"]
    assert ports(front_in) == {8080, 9090}
    dns, nats = front["egress"]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert nats == {
        "to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nats"}}}],
        "ports": [{"protocol": "TCP", "port": nats_port("appliance")}],
    }
    assert not [to for rule in front["egress"] for to in rule["to"] if "ipBlock" in to]
    # The segment: the sidecar in (no MCP endpoint); out, DNS, seg-a's scope and the same NATS.
    [segment_in] = segment["ingress"]
    assert ports(segment_in) == {9090}
    dns, scope, nats = segment["egress"]
    assert ports(dns) == {53}
    assert [to["ipBlock"] for to in scope["to"]] == [{"cidr": "10.77.2.0/24", "except": ["10.77.2.1/32"]}]
    assert "ports" not in scope
    assert nats["to"][0]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "nats"}}
    assert ports(nats) == {nats_port("segment-seg-a")}


def test_networkpolicy_of_a_front_has_no_scope_egress_and_a_segment_no_mcp_ingress(tmp_path: Path) -> None:
    policy = tmp_path / "scope.yaml"
    policy.write_text("version: 2\nscope:\n  allow_networks: [192.0.2.0/24]\n")
    issuer = ("--egress", "203.0.113.10/32:443")
    code, out, err = run_cli("policy", "networkpolicy", str(policy), *CLUSTER, "--role", "front", *issuer)
    assert code == 0, err
    front = yaml.safe_load(out)
    assert front["metadata"]["name"] == "front"
    assert front["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "mcp-scanner-appliance"}}
    _dns, to_issuer = front["spec"]["egress"]
    assert to_issuer == {"to": [{"ipBlock": {"cidr": "203.0.113.10/32"}}], "ports": [{"protocol": "TCP", "port": 443}]}
    code, out, err = run_cli(
        "policy",
        "networkpolicy",
        str(policy),
        *CLUSTER,
        "--role",
        "segment",
        "--segment",
        "lab-2",
        "--egress-pods",
        "app.kubernetes.io/name=nats,app.kubernetes.io/instance=hub:4222",
    )
    assert code == 0, err
    segment = yaml.safe_load(out)
    assert segment["metadata"]["name"] == "segment-lab-2"
    assert segment["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/component": "segment-lab-2"}}
    assert segment["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 9090}]}]
    _dns, scope, nats = segment["spec"]["egress"]
    assert scope == {"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}
    assert nats["to"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "hub"}}}
    ]
    validated = tmp_path / "np.yaml"
    validated.write_text(yaml.safe_dump_all([front, segment]))
    validate(validated)


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        (("--role", "segment"), "networkpolicy_segment_mismatch"),  # which segment's pods?
        (("--segment", "seg-a"), "networkpolicy_segment_mismatch"),  # a segment without its role
        (("--role", "front", "--segment", "seg-a"), "networkpolicy_segment_mismatch"),
        (("--role", "segment", "--segment", "Seg_A"), "networkpolicy_segment_invalid"),  # not a segment name
        (("--role", "worker"), "networkpolicy_role_invalid"),
        (("--egress-pods", "nats:4222"), "networkpolicy_endpoint_invalid"),  # no KEY=VALUE
        (("--egress-pods", "app=nats"), "networkpolicy_endpoint_invalid"),  # no port
        (("--egress-pods", "app=nats:0"), "networkpolicy_endpoint_invalid"),
        (("--egress-pods", "app=na ts:4222"), "networkpolicy_endpoint_invalid"),  # not a label value
        (("--egress-pods", "app=nats,:4222"), "networkpolicy_endpoint_invalid"),
    ],
)
def test_networkpolicy_fleet_arguments_name_their_rule(args: tuple[str, ...], rule: str) -> None:
    code, _out, err = run_cli("policy", "networkpolicy", str(KUBERNETES / "base" / "scope.yaml"), *CLUSTER, *args)
    assert code == 1, err
    assert rule in err
