"""A Kubernetes NetworkPolicy from the scope policy: the cluster's network enforces the scope too.

Default deny both ways for the appliance's pods; ingress only to the MCP and health ports;
egress only to DNS (kube-dns), to each `allow_networks` range with its `deny_networks` as
`except`, and to the endpoints the operator names (identity provider, NATS, OTLP: given as
CIDR:PORT, since a NetworkPolicy holds addresses, not names).

Refused: a scope that overlaps the cluster's pod or service ranges (a scan of the cluster itself
would then be allowed by the network as well as by the policy). Not covered: `allow_hostname_
suffixes` (names are resolved by the appliance; an address outside `allow_networks` stays
unreachable under this NetworkPolicy), the built-in deny list (the appliance enforces it; the
NetworkPolicy names only what the policy file says), and IPv6 NAT64/6to4 forms.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.errors import PolicyError
from appliance.policy.fields import within
from appliance.policy.model import Policy

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# The labels the manifests give the appliance's pods (deploy/kubernetes/base).
POD_LABELS = {"app.kubernetes.io/name": "mcp-scanner-appliance"}
LISTEN_PORTS = (8080, 9090)
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
    name: str = "appliance",
    namespace: str | None = None,
) -> dict[str, Any]:
    """The NetworkPolicy document for `policy` (see the module doc)."""
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
    if scope_blocks:
        # Every port and protocol: what may be scanned inside the scope is the policy's business.
        rules.append({"to": [{"ipBlock": block} for block in scope_blocks]})
    for endpoint in egress:
        destination = {"ipBlock": {"cidr": str(endpoint.network)}}
        rules.append({"to": [destination], "ports": [{"protocol": "TCP", "port": endpoint.port}]})
    metadata: dict[str, Any] = {"name": name, "labels": dict(POD_LABELS)}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": dict(POD_LABELS)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": port} for port in LISTEN_PORTS]}],
            "egress": rules,
        },
    }
