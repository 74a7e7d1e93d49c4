"""A Kubernetes NetworkPolicy from the scope policy: the cluster's network enforces the scope too.

Default deny both ways for the appliance's pods; ingress only to the MCP and health ports;
egress only to DNS (kube-dns), to each `allow_networks` range with its `deny_networks` as
`except`, and to the endpoints the operator names (identity provider, NATS, OTLP: given as
CIDR:PORT, since a NetworkPolicy holds addresses, not names; or, for a server in the cluster
such as NATS, as the labels of its pods in the same namespace and a port).

The fleet's roles (README "Fleet") get their own: a front (the base Deployment's pods) runs no
scanner, so it has no egress to the scope; a segment's appliances (the pods of Deployment
`segment-<name>`) have no MCP endpoint, so only the health port accepts connections.

Refused: a scope that overlaps the cluster's pod or service ranges (a scan of the cluster itself
would then be allowed by the network as well as by the policy). Not covered: `allow_hostname_
suffixes` (names are resolved by the appliance; an address outside `allow_networks` stays
unreachable under this NetworkPolicy), the built-in deny list (the appliance enforces it; the
NetworkPolicy names only what the policy file says), and IPv6 NAT64/6to4 forms.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.errors import PolicyError
from appliance.fleet.routing import SEGMENT_NAME
from appliance.policy.fields import within
from appliance.policy.model import Policy

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# The labels the manifests give the appliance's pods (deploy/kubernetes/base).
POD_LABELS = {"app.kubernetes.io/name": "mcp-scanner-appliance"}
LISTEN_PORTS = (8080, 9090)
HEALTH_PORT = 9090
ROLES = ("standalone", "front", "segment")
# A label key (optional DNS prefix, then a name) and value, as Kubernetes spells them.
LABEL_KEY = re.compile(r"^(?:[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
DNS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}


@dataclass(frozen=True)
class Endpoint:
    """An egress destination beyond the scope: a range and a TCP port."""

    network: IPNetwork
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """`CIDR:PORT` (IPv6 as `[CIDR]:PORT`)."""
        address, sep, port = text.rpartition(":")
        address = address.removeprefix("[").removesuffix("]")
        try:
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("no port")
            return cls(ipaddress.ip_network(address, strict=True), int(port))
        except ValueError as exc:
            raise PolicyError(
                f"egress endpoint {text!r} is not CIDR:PORT",
                rule="networkpolicy_endpoint_invalid",
                recovery_suggestion="Give the resolved address range and TCP port, e.g. 203.0.113.10/32:443 or "
                "[2001:db8::10/128]:4222.",
            ) from exc


@dataclass(frozen=True)
class PodEndpoint:
    """An egress destination inside the cluster: the pods with these labels in the policy's own
    namespace (a Service's pods: the NetworkPolicy sees the pod, not the Service address), a TCP port."""

    labels: dict[str, str]
    port: int

    @classmethod
    def parse(cls, text: str) -> PodEndpoint:
        """`KEY=VALUE[,KEY=VALUE...]:PORT`, e.g. `app.kubernetes.io/name=nats:4222`."""
        selector, sep, port = text.rpartition(":")
        labels: dict[str, str] = {}
        for pair in selector.split(",") if selector else []:
            key, equals, value = pair.partition("=")
            if not equals or not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
                labels = {}
                break
            labels[key] = value
        if not sep or not labels or not port.isdigit() or not 0 < int(port) < 65536:
            raise PolicyError(
                f"egress pods {text!r} is not KEY=VALUE[,KEY=VALUE...]:PORT",
                rule="networkpolicy_endpoint_invalid",
                recovery_suggestion="Give the labels of the server's pods in this namespace and its TCP port, e.g. "
                "app.kubernetes.io/name=nats:4222 (kubectl get pods --show-labels).",
            )
        return cls(labels, int(port))


@dataclass(frozen=True)
class Pods:
    """Whose NetworkPolicy it is: its name, the pods it selects (the labels deploy/kubernetes gives
    them), the ports they listen on, and whether they scan (egress to the scope)."""

    name: str
    labels: dict[str, str]
    ports: tuple[int, ...]
    scans: bool


def pods_of(role: str, segment: str | None = None) -> Pods:
    """The pods of `role` (`segment`: the appliances of segment `segment`)."""
    if role not in ROLES:
        raise PolicyError(
            f"role {role!r} is not one of {', '.join(ROLES)}",
            rule="networkpolicy_role_invalid",
            recovery_suggestion="Use --role standalone, front or segment (with --segment NAME).",
        )
    if (role == "segment") != (segment is not None):
        raise PolicyError(
            "--segment NAME goes with --role segment, and --role segment needs it",
            rule="networkpolicy_segment_mismatch",
            recovery_suggestion="Name the segment of a segment's appliances (--role segment --segment seg-a); "
            "leave --segment out for standalone and front.",
        )
    if segment is not None:
        if not SEGMENT_NAME.fullmatch(segment):
            raise PolicyError(
                f"{segment!r} is not a segment name (lower-case letters, digits, inner '-', 1-32)",
                rule="networkpolicy_segment_invalid",
                recovery_suggestion="Give the segment's APPLIANCE_SEGMENT, e.g. seg-a.",
            )
        # The labels of deploy/kubernetes/overlays/fleet/segment-<name>.yaml's pods.
        name = f"segment-{segment}"
        return Pods(name, {"app.kubernetes.io/component": name}, (HEALTH_PORT,), scans=True)
    if role == "front":
        return Pods("front", dict(POD_LABELS), LISTEN_PORTS, scans=False)
    return Pods("appliance", dict(POD_LABELS), LISTEN_PORTS, scans=True)


def _networks(texts: list[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(text, strict=False) for text in texts]


def _refuse_cluster_overlap(
    allowed: list[IPNetwork], denied: list[IPNetwork], cluster: dict[str, list[IPNetwork]]
) -> None:
    for kind, ranges in cluster.items():
        for net in allowed:
            for other in ranges:
                if net.version != other.version or not net.overlaps(other):
                    continue
                # CIDRs that overlap nest: the smaller one is the shared part.
                shared = net if net.prefixlen >= other.prefixlen else other
                if any(within(shared, d) for d in denied):
                    continue  # the scope denies exactly that part
                raise PolicyError(
                    f"allow_networks {net} overlaps the cluster's {kind} range {other}",
                    rule="networkpolicy_scope_overlaps_cluster",
                    recovery_suggestion="Scan the lab, not the cluster: narrow allow_networks so it holds no pod "
                    f"or service address, or add {shared} to deny_networks.",
                )


def _ip_block(net: IPNetwork, denied: list[IPNetwork]) -> dict[str, Any] | None:
    """`net` minus the denied ranges inside it; None when a denied range covers it whole."""
    if any(within(net, d) for d in denied):
        return None
    inside = sorted({d for d in denied if within(d, net)}, key=lambda d: (int(d.network_address), d.prefixlen))
    block: dict[str, Any] = {"cidr": str(net)}
    if inside:
        block["except"] = [str(d) for d in inside]
    return block


def network_policy(
    policy: Policy,
    *,
    pod_cidrs: list[str],
    service_cidrs: list[str],
    egress: Sequence[Endpoint] = (),
    egress_pods: Sequence[PodEndpoint] = (),
    pods: Pods | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    """The NetworkPolicy document for `policy` and `pods` (default: the standalone appliance's;
    see the module doc)."""
    pods = pods_of("standalone") if pods is None else pods
    allowed = _networks(policy.scope.allow_networks)
    denied = _networks(policy.scope.deny_networks)
    try:
        cluster = {"pod": _networks(pod_cidrs), "service": _networks(service_cidrs)}
    except ValueError as exc:
        raise PolicyError(
            f"cluster range is not a CIDR: {exc}",
            rule="networkpolicy_cluster_cidr_invalid",
            recovery_suggestion="Give the cluster's pod and service ranges, e.g. --pod-cidr 10.244.0.0/16 "
            "--service-cidr 10.96.0.0/12 (kubectl cluster-info dump | grep -m1 cluster-cidr).",
        ) from exc
    if not cluster["pod"] or not cluster["service"]:
        raise PolicyError(
            "the cluster's pod and service ranges are needed to check the scope against them",
            rule="networkpolicy_cluster_cidr_missing",
            recovery_suggestion="Pass --pod-cidr and --service-cidr (each may repeat).",
        )
    _refuse_cluster_overlap(allowed, denied, cluster)
    scope_blocks = [block for net in allowed if (block := _ip_block(net, denied)) is not None]
    rules: list[dict[str, Any]] = [
        {"to": [DNS], "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
    ]
    if scope_blocks and pods.scans:
        # Every port and protocol: what may be scanned inside the scope is the policy's business.
        rules.append({"to": [{"ipBlock": block} for block in scope_blocks]})
    for endpoint in egress:
        destination = {"ipBlock": {"cidr": str(endpoint.network)}}
        rules.append({"to": [destination], "ports": [{"protocol": "TCP", "port": endpoint.port}]})
    for server in egress_pods:
        selected = {"podSelector": {"matchLabels": dict(server.labels)}}
        rules.append({"to": [selected], "ports": [{"protocol": "TCP", "port": server.port}]})
    metadata: dict[str, Any] = {"name": pods.name, "labels": dict(POD_LABELS)}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": dict(pods.labels)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": port} for port in pods.ports]}],
            "egress": rules,
        },
    }
