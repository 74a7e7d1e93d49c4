"""As PID 1 the appliance reaps orphans its scanners leave behind; its own children stay asyncio's."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

FAKES = Path(__file__).parent / "fakes"

# Runs as PID 1 of a new PID namespace: starts a scanner (a fake) through the one runner that
# leaves an orphan, lets the reaper run, and reports zombies and the child's exit status.
HARNESS = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from appliance.reaper import reap_orphans_forever, zombie_children
    from appliance.runner import RunLimits, run

    async def main():
        assert os.getpid() == 1
        reaper = asyncio.create_task(reap_orphans_forever(interval=0.2))
        result = await run([sys.argv[1]], RunLimits(timeout_seconds=10, output_cap_bytes=4096))
        orphan = int(result.stdout.split()[0])
        deadline = asyncio.get_running_loop().time() + 10
        while os.path.exists(f"/proc/{orphan}") and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        reaper.cancel()
        print(json.dumps({"exit_code": result.exit_code, "orphan_gone": not os.path.exists(f"/proc/{orphan}"),
                          "zombies": sorted(zombie_children())}))

    asyncio.run(main())
    """
)


def test_pid1_reaps_orphans_and_keeps_its_childs_exit_status() -> None:
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", HARNESS, str(FAKES / "orphan_maker.py")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert report["exit_code"] == 0  # not 255: the reaper did not steal the direct child
    assert report["orphan_gone"] is True
    assert report["zombies"] == []


def test_without_the_reaper_the_orphan_stays_a_zombie() -> None:
    """The control: proves the test above can fail."""
    harness = HARNESS.replace("reaper = asyncio.create_task(reap_orphans_forever(interval=0.2))", "reaper = None")
    harness = harness.replace("reaper.cancel()", "")
    harness = harness.replace(
        "deadline = asyncio.get_running_loop().time() + 10", "deadline = asyncio.get_running_loop().time() + 1.5"
    )
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", harness, str(FAKES / "orphan_maker.py")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert report["orphan_gone"] is False
    assert len(report["zombies"]) == 1
