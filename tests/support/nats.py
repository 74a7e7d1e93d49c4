"""A real NATS server with JetStream on 127.0.0.1, for the fleet's tests: Debian's `nats-server`
(pinned by scripts/install-checkers, which scripts/test runs). A missing binary fails the test with
what to run; it is never skipped.

The server picks its own port (`-p -1`) and writes it to a ports file, so parallel runs never
race for a port; its JetStream directory is the test's own temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NATS_SERVER = "/usr/sbin/nats-server"
# The binary starts in milliseconds; JetStream recovering its store on a loaded CI host takes longer.
START_SECONDS = 20.0


def nats_missing() -> str | None:
    if shutil.which(NATS_SERVER) is None:
        return f"{NATS_SERVER} is missing: run scripts/install-checkers (Debian's nats-server, pinned)"
    return None


@dataclass
class NatsServer:
    proc: subprocess.Popen[bytes]
    url: str
    store_dir: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def nats_server(directory: Path, port: int = -1, config: Path | None = None) -> Iterator[NatsServer]:
    """A JetStream-enabled server on 127.0.0.1 with its store and ports file under `directory`;
    `port` -1 lets it pick one (a restart test passes the port the first run had). `config`: a
    configuration file instead of the JetStream flags (these flags win over its listen address;
    its store must be under `directory`)."""
    problem = nats_missing()
    if problem is not None:
        raise AssertionError(problem)
    store_dir, ports_dir = directory / "jetstream", directory / "ports"
    store_dir.mkdir(parents=True, exist_ok=True)
    ports_dir.mkdir(parents=True, exist_ok=True)
    log = (directory / "nats.log").open("wb")
    proc = subprocess.Popen(
        [
            NATS_SERVER,
            # A configuration names its own JetStream store (nats-server refuses it twice).
            *(["-js", "-sd", str(store_dir)] if config is None else ["-c", str(config)]),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "--ports_file_dir",
            str(ports_dir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = NatsServer(proc, "", store_dir)
    try:
        deadline = time.monotonic() + START_SECONDS
        while not server.url:
            ports = list(ports_dir.glob(f"*_{proc.pid}.ports"))
            if ports:
                with contextlib.suppress(ValueError):  # written but not complete yet
                    server.url = json.loads(ports[0].read_text())["nats"][0]
            if proc.poll() is not None:
                raise AssertionError(f"nats-server exited {proc.returncode}: {(directory / 'nats.log').read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"nats-server did not start in {START_SECONDS} s")
            time.sleep(0.02)
        yield server
    finally:
        server.stop()
        log.close()


@contextlib.contextmanager
def small_payload_nats_server(directory: Path, max_payload: int) -> Iterator[NatsServer]:
    """A JetStream-enabled server whose messages carry at most `max_payload` bytes (1 MB by
    default), so a test reaches that limit with a record of a few hundred kB."""
    config = directory / "nats-small-payload.conf"
    config.write_text(f'max_payload: {max_payload}\njetstream {{ store_dir: "{directory / "jetstream"}" }}\n')
    with nats_server(directory, config=config) as server:
        yield server
