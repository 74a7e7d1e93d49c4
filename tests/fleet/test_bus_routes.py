"""The fleet's NATS cluster routes as deploy/nats/nats.conf ships them: mutual TLS with the
nodes' certificate from scripts/create-nats-secrets. Two nodes on loopback ports: they form a
cluster; a node presenting the appliance's own certificate (same CA, serverAuth only) does not
join. Nothing leaves 127.0.0.1 (the compose node names in the shipped routes are replaced)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from support.bus_security import create_nats_secrets, free_loopback_port, mount_node, node_config, routes
from support.nats import NatsServer, nats_server
from support.waiting import wait_until


@contextlib.contextmanager
def two_nodes(tmp_path: Path, second_cert: tuple[str, str]) -> Iterator[tuple[NatsServer, NatsServer]]:
    secrets = tmp_path / "secrets"
    create_nats_secrets(secrets)
    ports = [free_loopback_port(), free_loopback_port()]
    with contextlib.ExitStack() as stack:
        servers = []
        for index, (cert, key) in enumerate([("nats_tls_cert.pem", "nats_tls_key.pem"), second_cert]):
            root = tmp_path / f"node-{index + 1}"
            config = mount_node(root, secrets, cert, key)
            config.write_text(node_config(root, f"node-{index + 1}", ports[index], [ports[1 - index]]))
            servers.append(stack.enter_context(nats_server(root / "server", config=config)))
        yield servers[0], servers[1]


def test_two_nodes_with_the_nats_certificate_form_a_cluster_over_mutual_tls(tmp_path: Path) -> None:
    with two_nodes(tmp_path, ("nats_tls_cert.pem", "nats_tls_key.pem")) as (first, second):
        wait_until(lambda: routes(first, tmp_path / "node-1" / "server") >= 1, timeout=20, interval=0.2)
        assert routes(second, tmp_path / "node-2" / "server") >= 1


def test_a_node_with_the_appliances_certificate_is_not_let_into_the_cluster(tmp_path: Path) -> None:
    with two_nodes(tmp_path, ("appliance_tls_cert.pem", "appliance_tls_key.pem")) as (first, second):
        log = tmp_path / "node-1" / "server" / "nats.log"
        # Go's verifier: the peer's certificate is not for client authentication.
        refused = "TLS route handshake error: tls: failed to verify client certificate"
        wait_until(lambda: refused in log.read_text(), timeout=20, interval=0.2, what="the route refused")
        assert "incompatible key usage" in log.read_text()
        assert routes(first, tmp_path / "node-1" / "server") == 0
        assert routes(second, tmp_path / "node-2" / "server") == 0
