"""Debian's Prometheus (/usr/bin/prometheus, the host's `prometheus` package, as scripts/install-
checkers installs it) on 127.0.0.1, scraping sidecars on loopback and evaluating the alert rules;
its HTTP API for the tests. A missing binary fails the test with what to run; it is never skipped."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from support.listeners import closed_port
from support.policies import REPO
from support.waiting import wait_until

PROMETHEUS = "/usr/bin/prometheus"
RULES = REPO / "observability" / "prometheus" / "alerts.yaml"
# Scrape and evaluate every second: a rate over the dashboard's 1m window has points within seconds.
INTERVAL = "1s"
# TSDB start-up and the first rule load on a loaded CI host.
READY_SECONDS = 30
STOP_SECONDS = 10


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def api(self, path: str, **query: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (a fixed http URL on loopback)
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def instant(self, query: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=query)["result"]
        return result

    def targets_up(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return [target for target in targets if target["health"] == "up"]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:  # noqa: S310 (loopback)
            return int(response.status) == 200
    except (urllib.error.URLError, ConnectionError):
        return False


@contextlib.contextmanager
def prometheus(directory: Path, targets: Sequence[str], job: str = "appliance") -> Iterator[Prometheus]:
    """Prometheus on a free loopback port, its TSDB under `directory`, scraping `targets`
    (host:port of sidecars on 127.0.0.1, plain HTTP, no token) as `job` with the alert rules loaded."""
    if shutil.which(PROMETHEUS) is None:
        raise AssertionError(f"{PROMETHEUS} is missing: run scripts/install-checkers (Debian's prometheus package)")
    assert all(target.startswith("127.") for target in targets), "host tests scrape loopback only"
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
                "rule_files": [str(RULES)],
                "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
            }
        )
    )
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Prometheus(proc, url, log)
    try:

        def ready() -> bool:
            assert proc.poll() is None, f"prometheus exited {proc.returncode}: {log.read_text()[-3000:]}"
            return _ready(url)

        wait_until(ready, timeout=READY_SECONDS, interval=0.2, what="prometheus ready")
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
