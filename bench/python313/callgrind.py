"""Instruction counts (callgrind's Ir) of start-up in two appliance images: a figure that other
load on the machine does not move, unlike every wall-clock and, less so, CPU-time figure.

`.venv/bin/python -m bench.python313.callgrind [--runs N] [IMAGE ...]` runs the host's valgrind
(Debian's valgrind package: /usr/bin/valgrind.bin and the static tools in /usr/libexec/valgrind,
bind-mounted read-only) inside each image with PYTHONHASHSEED=0, on `--network none`, with
compose's hardening except its seccomp profile (valgrind makes calls of its own):

- pass: `python -c pass` (interpreter start-up, site and the venv's .pth files);
- imports: `python -c "import appliance.cli, appliance.app"` (what `serve` imports);
- session: `appliance serve` on stdio; initialize, the initialized notification and tools/list
  are written at once and stdin is closed once the tools/list answer is read, so the count
  is start-up, the two answers and the shutdown after stdin EOF (the scanner version probes
  are child processes, which callgrind does not follow).

Prints one JSON document on stdout: per image and kind, every run's Ir.
"""

from __future__ import annotations

import argparse
import json
import re
import select
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.docker import DOCKER, BenchError, log
from bench.python313.compare import MESSAGES

VALGRIND = ["/usr/bin/valgrind.bin", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
MOUNTS = [
    "--volume=/usr/bin/valgrind.bin:/usr/bin/valgrind.bin:ro",
    "--volume=/usr/libexec/valgrind:/usr/libexec/valgrind:ro",
]
FLAGS = [
    "--no-healthcheck", "--network=none", "--user=65532:65532", "--cap-drop=ALL",
    "--security-opt=no-new-privileges:true", "--read-only", "--tmpfs=/tmp:size=16m,noexec,nosuid,nodev",
    "--env=PYTHONHASHSEED=0",
]  # fmt: skip
COMMANDS = {
    "pass": ["/opt/venv/bin/python", "-c", "pass"],
    "imports": ["/opt/venv/bin/python", "-c", "import appliance.cli, appliance.app"],
    "session": ["/opt/venv/bin/appliance", "serve"],
}
# Under valgrind the server starts about 50 times slower than without it.
TIMEOUT_SECONDS = 600
COLLECTED = re.compile(r"^==\d+== Collected : (\d+)$", re.MULTILINE)


def _ir(stderr: str, name: str) -> int:
    counts = COLLECTED.findall(stderr)
    if len(counts) != 1:
        raise BenchError(f"{name}: expected one callgrind total, found {counts}: {stderr[-500:]}")
    return int(counts[0])


def run(image: str, kind: str, name: str) -> int:
    args = [DOCKER, "run", "--rm", "--name", name, "-i", *FLAGS, *MOUNTS]
    args += ["--env=APPLIANCE_TRANSPORT=stdio", f"--entrypoint={VALGRIND[0]}", image, *VALGRIND[1:], *COMMANDS[kind]]
    with tempfile.TemporaryFile("w+") as errlog:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog, text=True)
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            if kind == "session":
                proc.stdin.write("".join(json.dumps(m) + "\n" for m in MESSAGES))
                proc.stdin.flush()
                while True:
                    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT_SECONDS)
                    line = proc.stdout.readline() if ready else ""
                    if not line:
                        raise BenchError(f"{name}: no tools/list answer")
                    if json.loads(line).get("id") == 2:
                        break
            proc.stdin.close()
            code = proc.wait(timeout=TIMEOUT_SECONDS)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        errlog.seek(0)
        stderr = errlog.read()
    if code != 0:
        raise BenchError(f"{name}: exit {code}: {stderr[-500:]}")
    return _ir(stderr, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("images", nargs="*", default=["mcp-scanner-appliance:latest", "mcp-scanner-appliance:py313"])
    options = parser.parse_args()
    counts: dict[str, dict[str, list[int]]] = {image: {kind: [] for kind in COMMANDS} for image in options.images}
    for index in range(options.runs):
        for image in options.images:
            for kind in COMMANDS:
                counts[image][kind].append(run(image, kind, f"py313-callgrind-{Path(image).name.replace(':', '-')}"))
                log(f"callgrind {image} {kind}: {counts[image][kind][-1]:,} Ir (run {index + 1})")
    json.dump({"runs": options.runs, "ir": counts}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
