"""A nats-server run from the deployment's own deploy/nats/nats.conf: client TLS with the
certificate scripts/create-nats-secrets makes, and the users scripts/nats_auth.py writes (README
"Fleet", bus security), on 127.0.0.1 with the test's own folders.

The shipped file is used as it is but for what must differ on a test host, each replaced
exactly (a change of the shipped file's shape fails here, not silently): the secrets folder,
the node's name, its store and the monitoring port; and the cluster block goes (a lone node
waits for its routes, and the compose node names in them would be DNS queries off this host).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import SecretStr

from support import REPO
from support.fleet import FleetNames
from support.nats import NatsServer, nats_server

NATS_CONF = REPO / "deploy" / "nats" / "nats.conf"
CREATE_NATS_SECRETS = REPO / "scripts" / "create-nats-secrets"
SEGMENTS = ("seg-a", "seg-b")


def nats_auth() -> ModuleType:
    """scripts/nats_auth.py (standard library only, not a package module)."""
    spec = importlib.util.spec_from_file_location("nats_auth", REPO / "scripts" / "nats_auth.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("nats_auth", module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules["nats_auth"])
    return sys.modules["nats_auth"]


def create_nats_secrets(folder: Path, segments: Sequence[str] = SEGMENTS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CREATE_NATS_SECRETS), str(folder), *segments], check=True, capture_output=True, text=True, timeout=60
    )


def test_config(root: Path, max_payload: str) -> str:
    """deploy/nats/nats.conf with the test host's secrets folder, name and ports (and
    `max_payload`, the file's own unless a test needs records to outgrow a message sooner)."""
    text = NATS_CONF.read_text()
    # The cluster block is the file's last: a lone node with it would wait for its routes.
    cluster = text.index("\ncluster {")
    assert text.rstrip().endswith("}") and text.count("\ncluster {") == 1
    text = text[:cluster]
    for shipped, here in [
        ('"/run/secrets/', f'"{root}/run/secrets/'),
        ("server_name: $NATS_SERVER_NAME", "server_name: test-node"),
        ("store_dir: /data", f"store_dir: {root.parent / 'server' / 'jetstream'}"),
        ("http: 127.0.0.1:8222", "http: 127.0.0.1:-1"),
        ("max_payload: 1MB", f"max_payload: {max_payload}"),
    ]:
        assert shipped in text, f"deploy/nats/nats.conf no longer has {shipped!r}"
        text = text.replace(shipped, here)
    return text


@dataclass
class SecuredBus:
    server: NatsServer
    secrets: Path
    names: FleetNames

    @property
    def url(self) -> str:
        return self.server.url

    def tls(self) -> ssl.SSLContext:
        """What an appliance with APPLIANCE_NATS_CA_FILE trusts (host names checked)."""
        return ssl.create_default_context(cafile=str(self.secrets / "appliance_tls_ca.pem"))

    def password(self, user: str) -> str:
        return (self.secrets / f"nats_password_{user}").read_text().strip()

    def settings(self, user: str, password: str | None = None) -> dict[str, Any]:
        """BusSettings of `user` (with its own password unless one is given)."""
        return {
            "tls": self.tls(),
            "user": user,
            "password": SecretStr(self.password(user) if password is None else password),
        }

    def credentials(self, segment: str | None) -> dict[str, Any]:
        """A front's (None) or a segment's appliance's, as scripts/up hands them out."""
        return self.settings("front" if segment is None else f"segment-{segment}")


@contextlib.contextmanager
def secured_nats(
    directory: Path, names: FleetNames, segments: Sequence[str] = SEGMENTS, max_payload: str = "1MB"
) -> Iterator[SecuredBus]:
    """The secrets as scripts/up makes them (the real script), with the users' subjects those of
    `names` (the test's own stream and buckets), and a server started from them."""
    secrets = directory / "secrets"
    create_nats_secrets(secrets, segments)
    auth = nats_auth()
    bus_names = auth.BusNames(
        stream=names.queue().stream,
        subject_prefix=names.queue().subject_prefix,
        jobs_bucket=names.jobs_bucket,
        raw_bucket=names.raw_bucket,
        segments_bucket=names.segments_bucket,
    )
    auth.write_all(secrets, list(segments), bus_names)  # the passwords kept, the subjects the test's
    mounted = directory / "root" / "run" / "secrets"
    (directory / "root" / "etc" / "nats").mkdir(parents=True)
    mounted.mkdir(parents=True)
    # The compose secrets' names inside the NATS containers (compose.yaml).
    for source, target in [
        ("nats_tls_cert.pem", "nats_tls_cert"),
        ("nats_tls_key.pem", "nats_tls_key"),
        ("appliance_tls_ca.pem", "nats_tls_ca"),
        ("nats_auth.conf", "nats_auth.conf"),
    ]:
        shutil.copyfile(secrets / source, mounted / target)
    config = directory / "root" / "etc" / "nats" / "nats.conf"
    config.write_text(test_config(directory / "root", max_payload))
    with nats_server(directory / "server", config=config) as server:
        yield SecuredBus(server, secrets, names)


def free_loopback_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def node_config(root: Path, name: str, cluster_port: int, peers: Sequence[int]) -> str:
    """deploy/nats/nats.conf for one node of a loopback cluster, its cluster block kept (TLS
    routes as shipped) but for its listen address and its routes, which name loopback ports."""
    text = NATS_CONF.read_text()
    shipped_routes = (
        "  routes: [\n    nats-route://nats-1:6222\n    nats-route://nats-2:6222\n    nats-route://nats-3:6222\n  ]\n"
    )
    ours = "".join(f"    nats-route://127.0.0.1:{port}\n" for port in peers)
    for shipped, here in [
        ('"/run/secrets/', f'"{root}/run/secrets/'),
        ("server_name: $NATS_SERVER_NAME", f"server_name: {name}"),
        ("store_dir: /data", f"store_dir: {root / 'jetstream'}"),
        ("http: 127.0.0.1:8222", "http: 127.0.0.1:-1"),
        ("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{cluster_port}"),
        (shipped_routes, f"  routes: [\n{ours}  ]\n"),
    ]:
        assert shipped in text, f"deploy/nats/nats.conf no longer has {shipped!r}"
        text = text.replace(shipped, here)
    return text


def mount_node(directory: Path, secrets: Path, cert: str = "nats_tls_cert.pem", key: str = "nats_tls_key.pem") -> Path:
    """A node's folders as its container has them: /etc/nats/nats.conf's place and /run/secrets."""
    mounted = directory / "run" / "secrets"
    (directory / "etc" / "nats").mkdir(parents=True)
    mounted.mkdir(parents=True)
    for source, target in [
        (cert, "nats_tls_cert"),
        (key, "nats_tls_key"),
        ("appliance_tls_ca.pem", "nats_tls_ca"),
        ("nats_auth.conf", "nats_auth.conf"),
    ]:
        shutil.copyfile(secrets / source, mounted / target)
    return directory / "etc" / "nats" / "nats.conf"


def monitoring_url(server: NatsServer, directory: Path) -> str:
    [ports] = list((directory / "ports").glob(f"*_{server.proc.pid}.ports"))
    return str(json.loads(ports.read_text())["monitoring"][0])


def routes(server: NatsServer, directory: Path) -> int:
    """The routes a node has up (its /routez)."""
    with urllib.request.urlopen(f"{monitoring_url(server, directory)}/routez", timeout=5) as answer:  # noqa: S310 - loopback
        return int(json.loads(answer.read())["num_routes"])
