"""Headless Chromium (Debian's `chromium`, driven by npm playwright-core, both pinned and installed
by scripts/install-browser) on a page the test serves on 127.0.0.1: one Node run of a script in
tests/browser, its JSON report parsed. Python playwright is not used: the browser is Debian's."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio

from support.inspector import NODE
from support.policies import REPO

BROWSER_DIR = REPO / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
PLAYWRIGHT = BROWSER_DIR / "node_modules" / "playwright-core" / "package.json"
# Chromium's start, a few page loads and a screenshot; a loaded CI host takes some seconds.
BROWSER_RUN_SECONDS = 120


def browser_missing() -> str | None:
    """Why the browser test cannot run here (not installed), or None."""
    for path, install in (
        (NODE, "scripts/conformance --install"),
        (CHROMIUM, "scripts/install-browser"),
        (PLAYWRIGHT, "scripts/install-browser"),
    ):
        if not path.is_file():
            return f"{path} is missing: run {install} (needs root, Debian's mirror and the npm registry)"
    return None


async def run_browser_script(script: str, *args: str, home: Path) -> dict[str, Any]:
    """Run tests/browser/`script` with `args` on the pinned Node; its stdout's JSON report.

    `home` keeps Chromium's and Node's files out of the real home directory. Asynchronous, so the
    sidecar the script talks to keeps serving on this event loop meanwhile.
    """
    missing = browser_missing()
    assert missing is None, missing
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "XDG_CONFIG_HOME": str(home)}
    with anyio.fail_after(BROWSER_RUN_SECONDS):
        done = await anyio.run_process(
            [str(NODE), str(BROWSER_DIR / script), *args], cwd=BROWSER_DIR, env=env, check=False
        )
    assert done.returncode == 0, f"{script} exited {done.returncode}: {done.stderr.decode(errors='replace')[-4000:]}"
    report: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return report
