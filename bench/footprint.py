"""Figure 5: image size, and RSS growth of the server under an output flood (host mode).

The flood cannot be made honestly through the image's real nmap (its XML for one target stays
small), and the image has no shell for a fake scanner, so this figure runs the server on the
host in developer mode: `.venv/bin/appliance serve` (stdio) under `unshare -n` (an empty network
namespace: nothing can leave), with APPLIANCE_NMAP_PATH pointing at a small Python program that
writes an nmap XML header and then `flood_bytes` of XML comment lines to stdout, ignoring
SIGTERM (the worst case: the runner must SIGKILL it). The policy opens loopback
(insecure_allow_loopback) and caps output at `output_cap_bytes`. The scan target is 127.0.0.1,
and the fake sends no packet at all.

Growth = VmHWM of the server after the call (its peak RSS, reset just before the call by
writing 5 to /proc/<pid>/clear_refs) minus its settled VmRSS before the call. A warm-up call
with a 1 KiB answer runs first, so first-call imports do not count as flood growth.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import yaml

from appliance.config import DEFAULT_POLICY_PATH
from bench.clients import stdio_session
from bench.concurrency import settled_rss
from bench.docker import BenchError, docker, log, memory_bytes, reset_peak_rss, server_process
from bench.lab import IMAGE, REPO

FLOOD_PORT = "8080"
WARMUP_PORT = "1"
FAKE_NMAP = r'''#!{python}
"""A fake nmap for scripts/bench: floods stdout with XML; sends no packet, opens no socket."""
import os, signal, sys
if "--version" in sys.argv:
    print("Nmap version 7.93 ( flood writer of scripts/bench: not a scanner )")
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
total = {flood_bytes} if sys.argv[sys.argv.index("-p") + 1] == "{flood_port}" else 1024
line = b"<!-- " + b"x" * (65536 - 10) + b" -->\n"
counter = os.open("{count_path}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
written = os.write(1, b'<?xml version="1.0"?>\n<nmaprun scanner="nmap" args="flood">\n')
while written < total:
    written += os.write(1, line[: total - written])
    if written % (1 << 20) < len(line):
        os.pwrite(counter, b"%20d" % written, 0)
os.pwrite(counter, b"%20d" % written, 0)
os.write(1, b"</nmaprun>\n")
'''


@dataclass(frozen=True)
class FloodParams:
    flood_bytes: int
    output_cap_bytes: int


def image_facts() -> dict[str, Any]:
    raw = docker("image", "inspect", "--format", "{{.Id}} {{.Size}} {{.Created}}", IMAGE).split()
    labels = docker("image", "inspect", "--format", "{{json .Config.Labels}}", IMAGE).strip()
    version = yaml.safe_load(labels or "{}").get("org.opencontainers.image.version") if labels != "null" else None
    return {"image": IMAGE, "id": raw[0], "size_bytes": int(raw[1]), "created": raw[2], "version": version}


def _write_flood_setup(folder: Path, params: FloodParams) -> tuple[Path, Path, Path]:
    count_path = folder / "flood-bytes"
    fake = folder / "fake-nmap"
    fake.write_text(
        FAKE_NMAP.replace("{python}", sys.executable)
        .replace("{flood_bytes}", str(params.flood_bytes))
        .replace("{flood_port}", FLOOD_PORT)
        .replace("{count_path}", str(count_path))
    )
    fake.chmod(0o755)
    policy = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    policy["scope"].update(allow_networks=["127.0.0.1/32"], insecure_allow_loopback=True, deny_networks=[])
    policy["limits"]["output_cap_bytes"] = params.output_cap_bytes
    policy["tools"]["nmap_scan"]["allowed_scripts"] = []  # no dependency on the host's script.db
    policy_path = folder / "flood-scope.yaml"
    policy_path.write_text(yaml.safe_dump(policy))
    return fake, policy_path, count_path


async def measure_flood(params: FloodParams, log_dir: Path) -> dict[str, Any]:
    appliance = REPO / ".venv" / "bin" / "appliance"
    unshare = shutil.which("unshare")
    if unshare is None or not appliance.is_file():
        raise BenchError("the flood figure needs unshare (util-linux) and .venv/bin/appliance (scripts/bootstrap)")
    folder = Path(tempfile.mkdtemp(prefix="mcp-bench-flood-"))
    try:
        fake, policy_path, count_path = _write_flood_setup(folder, params)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "APPLIANCE_TRANSPORT": "stdio",
            "APPLIANCE_POLICY_PATH": str(policy_path),
            "APPLIANCE_NMAP_PATH": str(fake),
            "APPLIANCE_HEALTH_ENABLED": "false",
            # Its own job store: the default fallback, /tmp/appliance-data, is shared by every
            # host-mode appliance on the machine (another version's store there refuses to open).
            "APPLIANCE_DATA_DIR": str(folder / "data"),
        }
        command = [unshare, "--net", "--", str(appliance), "serve"]
        async with stdio_session(command, log_dir / "host-flood.log", env=env) as client:
            server = server_process(os.getpid())
            warm = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": WARMUP_PORT})
            if warm.is_error:
                raise BenchError(f"the warm-up call failed: {warm.structured_content}")
            before = await anyio.to_thread.run_sync(settled_rss, server.pid)
            reset_peak_rss(server.pid)
            result = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": FLOOD_PORT})
            after = memory_bytes(server.pid)
        structured: dict[str, Any] = result.structured_content or {}
        written = int(count_path.read_text().strip() or 0)
        growth = after["VmHWM"] - before
        log(f"flood: {written} bytes written, growth {growth / 1e6:.1f} MB, {structured.get('partial_reason')}")
        return {
            "mode": "host",
            "flood_bytes_attempted": params.flood_bytes,
            "flood_bytes_written": written,
            "output_cap_bytes": params.output_cap_bytes,
            "rss_before_bytes": before,
            "peak_rss_during_bytes": after["VmHWM"],
            "rss_after_bytes": after["VmRSS"],
            "rss_growth_bytes": growth,
            "partial_reason": structured.get("partial_reason"),
            "unexpected_errors": 0 if not result.is_error and structured.get("partial_reason") == "output_cap" else 1,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
