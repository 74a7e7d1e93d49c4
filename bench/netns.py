"""The host-side figures run inside an empty network namespace: the benchmark re-executes itself
there (`unshare --net -- python -m bench.netns MODE`, parameters as JSON on stdin, the result as
one JSON line on stdout), brings loopback up and refuses to measure when any other interface
exists. Whatever a server under test does, its packets cannot leave loopback.

Modes: "host" (bench/host_compare.py), "mcp1" (bench/mcp1.py's host half), "fleet" and
"fleet_store" (bench/fleet_run.py).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from bench.docker import BenchError
from bench.lab import REPO

# A full run of the comparison (3+ servers, 400 rounds of calls, 10 starts each) takes minutes.
NETNS_RUN_TIMEOUT_SECONDS = 1800
IP_TIMEOUT_SECONDS = 10


async def run_in_netns(mode: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run `mode` in a new empty network namespace and return its result (BenchError if none).
    Its progress goes to our stderr; the servers' own logs to the files it names."""
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("ip") is None:
        raise BenchError("the host figures need unshare (util-linux) and ip (iproute2)")
    command = [unshare, "--net", "--", sys.executable, "-m", "bench.netns", mode]
    with anyio.fail_after(NETNS_RUN_TIMEOUT_SECONDS):
        done = await anyio.run_process(command, input=json.dumps(params).encode(), stderr=None, check=False, cwd=REPO)
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except ValueError:
        result = {}
    if done.returncode != 0 or not result:
        raise BenchError(result.get("error") or f"`bench.netns {mode}` exited {done.returncode} (its log is above)")
    return result


def _loopback_only() -> None:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    subprocess.run([ip, "link", "set", "lo", "up"], check=True, timeout=IP_TIMEOUT_SECONDS)
    names = sorted(name for _, name in socket.if_nameindex())
    if names != ["lo"]:
        raise BenchError(f"not an empty network namespace (interfaces: {', '.join(names)}); nothing measured")


def _modes() -> dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]:
    from bench import fleet_run, host_compare, mcp1

    return {"host": host_compare.run, "mcp1": mcp1.host_run, "fleet": fleet_run.run, "fleet_store": fleet_run.store_run}


def main(argv: list[str]) -> int:
    modes = _modes()
    if len(argv) != 1 or argv[0] not in modes:
        print(f"usage: python -m bench.netns {{{','.join(modes)}}} < params.json", file=sys.stderr)
        return 2
    params = json.loads(sys.stdin.read())
    try:
        _loopback_only()
        result = anyio.run(modes[argv[0]], params)
    except BenchError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - the parent reports it as this figure's error; traceback logged
        traceback.print_exception(exc)
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
