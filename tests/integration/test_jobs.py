"""Scan jobs with a real scanner in real containers: a scan that outlives its call's wait and is
followed by its scan_id (HTTP, stdio, the MCP Inspector CLI), a restart mid-scan, diffs of a lab
target whose open ports change, two principals, and a data volume that fills up.

Every scan targets a lab target container: the test lab's (by its exact IP) or the compose
deployment's (web.lab.internal, which the appliance resolves itself). The appliance containers
are reached from this host by the address Docker gave them, or through compose's published
loopback ports. A scan is made longer than its `wait_seconds` by the scanner's own pause
between two probes (nmap `--scan-delay`, gobuster `--delay`), never by hoping the scan is slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from dockerlab import (
    LAB_ALIAS,
    LAB_PORT,
    ComposeStack,
    Lab,
    LabAppliance,
    ServiceSpec,
    audit_lines,
    container_logs,
    http_client,
    lab_appliance,
    lab_listener,
    open_ports,
    remove_container,
    start_appliance,
    stdio_client,
    unique_name,
)
from support import sidecar_get, wait_until
from support.inspector import InspectorCli, inspector_missing

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

# The scan calls' wait; the slow scan below takes at least three times as long.
WAIT_SECONDS = 1
# nmap sends no two probes to the host closer than this: four ports take at least 3 s.
SLOW_SCAN = {"ports": "8080,8081,8082,8083", "extra_args": ["--scan-delay", "1s"], "wait_seconds": WAIT_SECONDS}
# What a call that waited WAIT_SECONDS may take beyond it: the policy check, the job's first
# store write and the round trip into a container (a second here, on a loaded 2-core host).
RETURN_MARGIN_SECONDS = 4
# get_scan's own wait: far more than the slow scan needs, within the policy's max_wait_seconds.
GET_WAIT_SECONDS = 60
UNFINISHED = {"queued", "running"}
# The second listener a test starts inside a lab target.
EXTRA_PORT = 9000
# Every path of the lab site (lab/site) the `common` wordlist names; gobuster finds these only.
LAB_SITE_PATHS = {"/admin", "/login", "/robots.txt"}


def body(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    structured: dict[str, Any] = result.structured_content
    return structured


def refusal(result: Any) -> str:
    """The rule of a refused call."""
    assert result.is_error, result.structured_content
    rule: str = result.structured_content["rule"]
    return rule


def slow_scan(target: str) -> dict[str, Any]:
    return {"target": target, **SLOW_SCAN}


async def assert_outlives_wait_then_completes(client: Any, target: str) -> None:
    """The scan call returns `running` with a scan_id once its wait is over; get_scan on that id
    (same session) returns the whole result."""
    started = time.monotonic()
    first = body(await client.call_tool("nmap_scan", slow_scan(target)))
    took = time.monotonic() - started
    assert first["status"] == "running", first
    assert first["scan_id"].startswith("scan_") and first["resource_uri"] == f"scan://{first['scan_id']}"
    assert took < WAIT_SECONDS + RETURN_MARGIN_SECONDS, f"the call took {took:.1f} s"
    final = body(await client.call_tool("get_scan", {"scan_id": first["scan_id"], "wait_seconds": GET_WAIT_SECONDS}))
    assert final["scan_id"] == first["scan_id"]
    assert final["status"] == "completed", final
    assert final["exit_code"] == 0 and final["progress"] == 100.0
    assert open_ports(final) == {LAB_PORT}
    # Complete: every port of the four was scanned (the closed ones are counted, not listed).
    assert [host["port_counts"] for host in final["hosts"]] == [{"open": 1, "closed": 3}]


# --- the scan outlives its call: HTTP (compose), stdio (docker run -i) ----------------------


async def test_http_scan_longer_than_its_wait_is_followed_by_get_scan(compose_stack: ComposeStack) -> None:
    async with http_client(compose_stack.url, compose_stack.token, verify=compose_stack.verify) as client:
        await assert_outlives_wait_then_completes(client, LAB_ALIAS)


async def test_stdio_scan_longer_than_its_wait_is_followed_in_the_same_session(
    lab: Lab, services: dict[str, ServiceSpec]
) -> None:
    name = unique_name("jobs-stdio")
    try:
        async with stdio_client(services["appliance"], lab, name) as client:
            await assert_outlives_wait_then_completes(client, lab.target_ip)
    finally:
        remove_container(name)


async def test_stdio_without_a_data_volume_keeps_jobs_in_an_ephemeral_store(
    lab: Lab, services: dict[str, ServiceSpec]
) -> None:
    """A plain `docker run -i` (no volume at APPLIANCE_DATA_DIR): the read-only root file system
    cannot hold the store, /healthz says so, and scans still become jobs."""
    name = unique_name("jobs-ephemeral")
    try:
        async with stdio_client(services["appliance"], lab, name) as client:
            scan = body(await client.call_tool("nmap_scan", {"target": lab.target_ip, "ports": str(LAB_PORT)}))
            listing = body(await client.call_tool("list_scans", {}))
            status, health = lab_appliance(name, lab, mcp=False).sidecar("/healthz")
    finally:
        remove_container(name)
    assert status == 200, health
    store = health["checks"]["store"]
    assert store["kind"] == "ephemeral", store
    assert store["path"].startswith("/tmp/appliance-data/"), store
    assert store["jobs"] >= 1 and scan["status"] == "completed"
    assert [s["scan_id"] for s in listing["scans"]] == [scan["scan_id"]]


# --- the "Done when": the MCP Inspector CLI follows a version scan -----------------


@pytest.fixture
def inspector(compose_stack: ComposeStack, tmp_path: Path) -> InspectorCli:
    missing = inspector_missing()
    if missing is not None:
        pytest.fail(missing)
    return InspectorCli(compose_stack.url, compose_stack.token, tmp_path, ca_file=compose_stack.ca_file)


def test_inspector_cli_follows_a_version_scan_through_its_scan_id(inspector: InspectorCli, record: Any) -> None:
    """The README's flow with a real client: a version scan of the lab web server returns
    `running` and its scan_id; get_scan through the same CLI returns the finished version scan.

    `--version-light` keeps the scan to about 12 s: the full probe set takes about 90 s against
    the lab's busybox httpd, which nmap 7.93 does not recognise (no probe matches it).
    """
    started = time.monotonic()
    first = inspector.call_tool(
        "nmap_scan",
        f"target={LAB_ALIAS}",
        "scan_type=version",
        f"ports={LAB_PORT}",
        'extra_args=["--version-light"]',
        f"wait_seconds={WAIT_SECONDS}",
    )
    assert not first["isError"], first
    running = first["structuredContent"]
    assert running["status"] == "running", running
    scan_id = running["scan_id"]
    assert scan_id in first["content"][0]["text"]  # the text tells a model which id to follow

    def finished() -> dict[str, Any] | None:
        answer = inspector.call_tool("get_scan", f"scan_id={scan_id}", "wait_seconds=20")
        assert not answer["isError"], answer
        result: dict[str, Any] = answer["structuredContent"]
        return None if result["status"] in UNFINISHED else result

    final = wait_until(finished, timeout=180, interval=0, what=f"{scan_id} finished")
    record(f"Inspector CLI version scan via scan_id: {time.monotonic() - started:.1f} s")
    assert final["status"] == "completed", final
    assert "-sV" in final["argv"] and "--version-light" in final["argv"]
    (host,) = final["hosts"]
    (port,) = [p for p in host["ports"] if p["state"] == "open"]
    assert port["port"] == LAB_PORT
    # What nmap 7.93 says about busybox httpd 1.35 (no product or version: see the docstring).
    assert port["service"] == "http-proxy", port


# --- a restart mid-scan (the compose deployment and its data volume) -----------------------


def wait_ready(compose_stack: ComposeStack) -> None:
    """The appliance answers /readyz 200 again on its published sidecar port."""

    def ready() -> bool:
        try:
            return sidecar_get(compose_stack.health_port, "/readyz", compose_stack.verify)[0] == 200
        except OSError:  # the published port resets connections while the container restarts
            return False

    wait_until(ready, timeout=120, interval=0.5, what="the restarted appliance ready")


# gobuster reports each path as it finds it: one thread, a second between two requests, the
# lab's 42-word `common` list: about 40 s, and /admin (its first word) is found in the first.
SLOW_GOBUSTER = {
    "mode": "dir",
    "target": f"http://{LAB_ALIAS}:{LAB_PORT}/",
    "wordlist": "common",
    "threads": 1,
    "extra_args": ["--delay", "1s"],
    "wait_seconds": WAIT_SECONDS,
}
# The service records a running scan's findings at most once a second.
FINDINGS_SEEN_SECONDS = 30


async def findings_so_far(client: Any, scan_id: str) -> list[dict[str, Any]]:
    """Poll get_scan until the running scan shows a finding; those findings."""
    deadline = time.monotonic() + FINDINGS_SEEN_SECONDS
    while True:
        current = body(await client.call_tool("get_scan", {"scan_id": scan_id}))
        assert current["status"] == "running", current
        if current["findings"]:
            found: list[dict[str, Any]] = current["findings"]
            return found
        assert time.monotonic() < deadline, f"no finding of {scan_id} within {FINDINGS_SEEN_SECONDS} s"
        await anyio.sleep(0.5)


async def test_restart_mid_scan_interrupts_the_job_and_keeps_finished_jobs(
    compose_stack: ComposeStack, record: Any
) -> None:
    async with http_client(compose_stack.url, compose_stack.token, verify=compose_stack.verify) as client:
        done = body(await client.call_tool("nmap_scan", {"target": LAB_ALIAS, "ports": str(LAB_PORT)}))
        assert done["status"] == "completed", done
        # Ten ports 5 s apart: at least 45 s, so the restart surely lands while it runs.
        nmap = body(
            await client.call_tool(
                "nmap_scan",
                {"target": LAB_ALIAS, "ports": "8080-8089", "extra_args": ["--scan-delay", "5s"], "wait_seconds": 1},
            )
        )
        gobuster = body(await client.call_tool("gobuster_scan", SLOW_GOBUSTER))
        assert nmap["status"] == gobuster["status"] == "running", (nmap, gobuster)
        seen = await findings_so_far(client, gobuster["scan_id"])
    started = time.monotonic()
    restart = compose_stack.compose("restart", "appliance")
    assert restart.returncode == 0, restart.stderr
    wait_ready(compose_stack)
    record(f"docker compose restart appliance -> ready: {time.monotonic() - started:.1f} s")
    async with http_client(compose_stack.url, compose_stack.token, verify=compose_stack.verify) as client:
        nmap_after = body(await client.call_tool("get_scan", {"scan_id": nmap["scan_id"]}))
        gobuster_after = body(await client.call_tool("get_scan", {"scan_id": gobuster["scan_id"]}))
        kept = body(await client.call_tool("get_scan", {"scan_id": done["scan_id"]}))
        listing = body(await client.call_tool("list_scans", {"limit": 100}))
        (resource,) = (await client.read_resource(done["resource_uri"], cache_mode="bypass")).contents
        (raw,) = (await client.read_resource(f"{done['resource_uri']}/raw", cache_mode="bypass")).contents
    assert nmap_after["status"] == gobuster_after["status"] == "interrupted", (nmap_after, gobuster_after)
    # Findings so far are finished host groups (README): the one lab host had not finished.
    assert nmap_after["hosts"] == [], nmap_after
    # gobuster's findings arrive line by line: what it had found before the restart is kept.
    kept_paths = {f["value"] for f in gobuster_after["findings"]}
    assert {f["value"] for f in seen} <= kept_paths <= LAB_SITE_PATHS, kept_paths
    assert kept["status"] == "completed"
    assert kept["hosts"] == done["hosts"]
    # Its resources too: the JSON result and the scanner's own output, from the volume.
    assert resource.mime_type == "application/json"
    assert json.loads(resource.text)["hosts"] == done["hosts"]  # type: ignore[union-attr]
    assert "<nmaprun" in raw.text  # type: ignore[union-attr]
    states = {s["scan_id"]: s["status"] for s in listing["scans"]}
    assert states[done["scan_id"]] == "completed", states
    assert states[nmap["scan_id"]] == states[gobuster["scan_id"]] == "interrupted", states


# --- diffs of a lab target whose open ports change ------------------------------------------


async def test_diff_scans_names_the_port_a_second_listener_opened_and_closed(compose_stack: ComposeStack) -> None:
    web = compose_stack.container_id("web")
    scan = {"target": LAB_ALIAS, "ports": f"{LAB_PORT},{EXTRA_PORT}", "wait_seconds": GET_WAIT_SECONDS}
    async with http_client(compose_stack.url, compose_stack.token, verify=compose_stack.verify) as client:
        before = body(await client.call_tool("nmap_scan", scan))
        with lab_listener(web, EXTRA_PORT):
            opened = body(await client.call_tool("nmap_scan", scan))
        closed = body(await client.call_tool("nmap_scan", scan))
        diff_opened = body(await client.call_tool("diff_scans", {"scan_id": opened["scan_id"]}))
        diff_closed = body(await client.call_tool("diff_scans", {"scan_id": closed["scan_id"]}))
    assert open_ports(before) == {LAB_PORT}
    assert open_ports(opened) == {LAB_PORT, EXTRA_PORT}
    assert open_ports(closed) == {LAB_PORT}
    # The default comparison: the previous completed scan of this tool and target.
    assert diff_opened["against_scan_id"] == before["scan_id"]
    assert [(e["kind"], e["port"]) for e in diff_opened["entries"]] == [("port_opened", EXTRA_PORT)]
    assert diff_closed["against_scan_id"] == opened["scan_id"]
    assert [(e["kind"], e["port"]) for e in diff_closed["entries"]] == [("port_closed", EXTRA_PORT)]
    # Each rescan's own result names its changes too.
    for result, kind, previous in ((opened, "port_opened", before), (closed, "port_closed", opened)):
        changes = result["changes_since_previous"]
        assert changes["previous_scan_id"] == previous["scan_id"]
        assert [(e["kind"], e["port"]) for e in changes["entries"]] == [(kind, EXTRA_PORT)]
        assert str(EXTRA_PORT) in changes["summary"]


# --- who sees what: two principals over HTTP -------------------------------------------------

# Where the appliance reads its `principal token` lines (appliance/auth.py; README "Tokens").
CONTAINER_TOKENS_PATH = "/run/secrets/appliance_tokens"


@pytest.fixture(scope="module")
def two_principals(
    lab: Lab, services: dict[str, ServiceSpec], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LabAppliance, dict[str, str]]]:
    """One appliance on the test lab that knows two principals, each with its own token."""
    tokens = {name: f"{name}-{uuid.uuid4().hex}" for name in ("alice", "bob")}
    tokens_file = tmp_path_factory.mktemp("tokens") / "appliance_tokens"
    tokens_file.write_text("".join(f"{name} {token}\n" for name, token in tokens.items()))
    tokens_file.chmod(0o444)  # a bind mount: the container's UID 65532 reads it
    container = start_appliance(
        services["appliance"],
        lab,
        env={"APPLIANCE_AUTH_TOKENS_FILE": CONTAINER_TOKENS_PATH},
        mounts={tokens_file: (CONTAINER_TOKENS_PATH, "ro")},
    )
    try:
        yield lab_appliance(container.get_wrapped_container().name, lab), tokens
    finally:
        container.stop()


async def test_principal_cannot_list_read_diff_or_cancel_another_principals_scan(
    lab: Lab, two_principals: tuple[LabAppliance, dict[str, str]]
) -> None:
    appliance, tokens = two_principals
    async with (
        http_client(appliance.url, tokens["bob"], appliance.host_header) as bob,
        http_client(appliance.url, tokens["alice"], appliance.host_header) as alice,
    ):
        bobs = body(await bob.call_tool("nmap_scan", slow_scan(lab.target_ip)))
        alices = body(await alice.call_tool("nmap_scan", {"target": lab.target_ip, "ports": str(LAB_PORT)}))
        alice_sees = body(await alice.call_tool("list_scans", {}))
        alice_filtered = body(await alice.call_tool("list_scans", {"target": lab.target_ip, "status": "running"}))
        read = await alice.call_tool("get_scan", {"scan_id": bobs["scan_id"]})
        cancel = await alice.call_tool("cancel_scan", {"scan_id": bobs["scan_id"]})
        diff = await alice.call_tool("diff_scans", {"scan_id": bobs["scan_id"], "against_scan_id": alices["scan_id"]})
        bobs_end = body(await bob.call_tool("get_scan", {"scan_id": bobs["scan_id"], "wait_seconds": GET_WAIT_SECONDS}))
        bob_sees = body(await bob.call_tool("list_scans", {}))
        bob_reads_alices = await bob.call_tool("get_scan", {"scan_id": alices["scan_id"]})
    assert bobs["status"] == "running" and alices["status"] == "completed"
    assert [s["scan_id"] for s in alice_sees["scans"]] == [alices["scan_id"]]
    assert alice_filtered["scans"] == []
    # Another principal's scan is refused exactly like one that never existed.
    for refused in (read, cancel, diff, bob_reads_alices):
        assert refusal(refused) == "scan_not_found"
    assert bobs["scan_id"] in read.structured_content["message"]
    # Alice's cancel did not touch it: Bob's scan ran to its end.
    assert bobs_end["status"] == "completed", bobs_end
    assert [s["scan_id"] for s in bob_sees["scans"]] == [bobs["scan_id"]]


# --- a data volume that fills up -------------------------------------------------------------

CONTAINER_DATA_DIR = "/var/lib/appliance"
# The store refuses new scans below 8 MiB free (appliance.jobs.sqlite.MIN_FREE_BYTES).
DATA_VOLUME_BYTES = 24 * 1024 * 1024
LEFT_FREE_BYTES = 4 * 1024 * 1024


@pytest.fixture
def small_data_volume(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs on this host, owned by the appliance's UID, to bind-mount as its data dir:
    a volume the test can fill from outside the container."""
    folder = tmp_path / "data"
    folder.mkdir()
    options = f"size={DATA_VOLUME_BYTES},uid=65532,gid=65532,mode=0700"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        pytest.fail(f"mounting a small tmpfs for the data volume failed (needs root): {mounted.stderr}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], capture_output=True, check=False)


def fill(folder: Path, leave: int) -> Path:
    """A file that leaves `leave` bytes free on the volume."""
    stat = os.statvfs(folder)
    filler = folder / "filler"
    with filler.open("wb") as out:
        out.truncate(0)
        chunk = b"\0" * (1024 * 1024)
        for _ in range(max(stat.f_bavail * stat.f_frsize - leave, 0) // len(chunk)):
            out.write(chunk)
    return filler


async def test_full_data_volume_refuses_new_scans_keeps_stored_ones_and_heals(
    lab: Lab, services: dict[str, ServiceSpec], small_data_volume: Path
) -> None:
    container = start_appliance(
        services["appliance"],
        lab,
        env={"APPLIANCE_DATA_DIR": CONTAINER_DATA_DIR},
        mounts={small_data_volume: (CONTAINER_DATA_DIR, "rw")},
    )
    name = container.get_wrapped_container().name
    quick = {"target": lab.target_ip, "ports": str(LAB_PORT)}
    try:
        appliance = lab_appliance(name, lab)
        async with http_client(appliance.url, lab.token, appliance.host_header) as client:
            kept = body(await client.call_tool("nmap_scan", quick))
            durable = appliance.sidecar("/healthz")[1]["checks"]["store"]
            filler = fill(small_data_volume, LEFT_FREE_BYTES)
            refused = await client.call_tool("nmap_scan", quick)
            not_ready = appliance.sidecar("/readyz")
            full = appliance.sidecar("/healthz")[1]["checks"]
            still = body(await client.call_tool("get_scan", {"scan_id": kept["scan_id"]}))
            listing = body(await client.call_tool("list_scans", {}))
            filler.unlink()
            wait_until(lambda: appliance.sidecar("/readyz")[0] == 200, timeout=30, interval=0.2, what="ready again")
            healed = body(await client.call_tool("nmap_scan", quick))
        on_volume = (small_data_volume / "jobs.sqlite3").is_file()
        audit = audit_lines(container_logs(name))
    finally:
        container.stop()
    # The store was on this volume, not in the container's ephemeral fallback.
    assert durable["kind"] == "durable" and durable["path"] == f"{CONTAINER_DATA_DIR}/jobs.sqlite3", durable
    assert on_volume
    assert refusal(refused) == "store_full"
    assert refused.structured_content["recovery_suggestion"]
    assert not_ready == (503, {"ready": False})
    assert full["store"]["rule"] == "store_full", full["store"]
    assert "job store refuses writes" in full["ready"]["reasons"], full["ready"]
    assert still["status"] == "completed" and still["hosts"] == kept["hosts"]
    assert [s["scan_id"] for s in listing["scans"]] == [kept["scan_id"]]
    assert healed["status"] == "completed"
    assert any(r.get("verdict") == "refused" and r.get("rule") == "store_full" for r in audit), audit[-5:]


async def test_read_only_data_volume_refuses_new_scans_and_keeps_stored_ones_readable(
    lab: Lab, services: dict[str, ServiceSpec], tmp_path: Path
) -> None:
    """The operator's volume holds a store but comes back read-only: the appliance must not fall
    back to an empty temporary store; new scans are refused, and the stored scans stay readable."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, 65532, 65532)  # as a named volume copies it from the image
    quick = {"target": lab.target_ip, "ports": str(LAB_PORT)}
    env = {"APPLIANCE_DATA_DIR": CONTAINER_DATA_DIR}
    writer = start_appliance(services["appliance"], lab, env=env, mounts={data: (CONTAINER_DATA_DIR, "rw")})
    try:
        appliance = lab_appliance(writer.get_wrapped_container().name, lab)
        async with http_client(appliance.url, lab.token, appliance.host_header) as client:
            kept = body(await client.call_tool("nmap_scan", quick))
    finally:
        writer.stop()
    reader = start_appliance(services["appliance"], lab, env=env, mounts={data: (CONTAINER_DATA_DIR, "ro")})
    try:
        appliance = lab_appliance(reader.get_wrapped_container().name, lab)
        async with http_client(appliance.url, lab.token, appliance.host_header) as client:
            refused = await client.call_tool("nmap_scan", quick)
            not_ready = appliance.sidecar("/readyz")
            store = appliance.sidecar("/healthz")[1]["checks"]["store"]
            stored = await client.call_tool("get_scan", {"scan_id": kept["scan_id"]})
    finally:
        reader.stop()
    assert kept["status"] == "completed"
    assert refusal(refused) == "store_unwritable"
    assert not_ready == (503, {"ready": False})
    assert store["kind"] != "ephemeral" and store["rule"] == "store_unwritable", store
    # Nothing lost: the scan stored before the volume turned read-only is still there to read.
    assert body(stored)["hosts"] == kept["hosts"]
