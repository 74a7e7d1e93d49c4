"""`appliance jobs list|show|cancel|export|purge`: real CLI processes against a store the test
fills, and one cancel of a real nmap scan that a real `appliance serve` runs."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import (
    APPLIANCE,
    LOOPBACK_POLICY,
    http_client,
    scanner_processes,
    served,
    tcp_listener,
    wait_until,
    write_policy,
)
from support.jobs import stored_job

from appliance.jobs.model import Job, JobState
from appliance.jobs.sqlite import DB_NAME, SqliteJobStore
from appliance.jobs.store import JobFilter
from appliance.parsers.nmap_xml import parse_nmap_xml

DAY = 86400.0
NOW = time.time()


def jobs_cli(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    """`appliance jobs ARGS` as its own process, without our APPLIANCE_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    return subprocess.run(
        [APPLIANCE, "jobs", *args], env={**clean, **env}, capture_output=True, timeout=60, check=False
    )


def as_json(done: subprocess.CompletedProcess[bytes]) -> Any:
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def refusal(done: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert done.returncode == 1, (done.stdout, done.stderr)
    body: dict[str, Any] = json.loads(done.stderr)
    assert body["recovery_suggestion"]
    return body


def make_job(state: JobState = "completed", *, at: float = NOW - 3600, **fields: Any) -> Job:
    return stored_job(state, at=at, **fields)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data: Path) -> Iterator[SqliteJobStore]:
    opened = SqliteJobStore(data)
    yield opened
    opened.close()


def real_nmap_xml(port: int) -> bytes:
    """A genuine nmap report of one listener on 127.0.0.1 (connect scan, no root needed)."""
    done = subprocess.run(
        ["nmap", "-sT", "-Pn", "-n", "-p", f"{port},1", "-oX", "-", "127.0.0.1"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return done.stdout


# --- list ----------------------------------------------------------------------------------


def test_list_shows_every_principals_scans_newest_first(store: SqliteJobStore, data: Path) -> None:
    made = [make_job(principal=p, at=NOW - 100 + i) for i, p in enumerate(["alice", "bob", "carol"])]
    for job in made:
        store.put(job)

    listed = as_json(jobs_cli("list", "--data-dir", str(data), "--json"))

    assert [s["scan_id"] for s in listed["scans"]] == [j.scan_id for j in reversed(made)]
    assert [s["principal"] for s in listed["scans"]] == ["carol", "bob", "alice"]
    assert listed["next_cursor"] is None


def test_list_filters_by_principal_tool_target_and_status(store: SqliteJobStore, data: Path) -> None:
    wanted = make_job(target="web.lab.internal")
    store.put(wanted)
    store.put(make_job(principal="bob", target="web.lab.internal"))
    store.put(make_job(tool="gobuster_scan", target="web.lab.internal"))
    store.put(make_job("running", target="web.lab.internal"))
    store.put(make_job(target="db.lab.internal"))

    listed = as_json(
        jobs_cli(
            "list",
            "--data-dir",
            str(data),
            "--json",
            "--principal",
            "alice",
            "--tool",
            "nmap_scan",
            "--target",
            "Web.Lab.Internal.",
            "--status",
            "completed",
        )
    )

    assert [s["scan_id"] for s in listed["scans"]] == [wanted.scan_id]


def test_list_pages_with_the_cursor_it_gives_out(store: SqliteJobStore, data: Path) -> None:
    made = [make_job(at=NOW - 100 + i) for i in range(5)]
    for job in made:
        store.put(job)
    seen: list[str] = []
    cursor: list[str] = []
    while True:
        page = as_json(jobs_cli("list", "--data-dir", str(data), "--json", "--limit", "2", *cursor))
        seen += [s["scan_id"] for s in page["scans"]]
        if page["next_cursor"] is None:
            break
        cursor = ["--cursor", page["next_cursor"]]

    assert seen == [j.scan_id for j in reversed(made)]


def test_list_table_has_a_header_one_line_per_scan_and_the_next_page(store: SqliteJobStore, data: Path) -> None:
    older, newer = make_job(at=NOW - 200), make_job("running", principal="bob", at=NOW - 100)
    store.put(older)
    store.put(newer)

    done = jobs_cli("list", "--data-dir", str(data), "--limit", "1")

    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0].split() == ["SCAN_ID", "TOOL", "STATUS", "PRINCIPAL", "TARGET", "CREATED", "(UTC)", "PROGRESS"]
    assert lines[1].split()[:5] == [newer.scan_id, "nmap_scan", "running", "bob", "127.0.0.1"]
    assert lines[2] == f"more: appliance jobs list --cursor {newer.scan_id} (with the same filters)"
    assert len(lines) == 3


def test_list_finds_the_store_through_appliance_data_dir(store: SqliteJobStore, data: Path) -> None:
    job = make_job()
    store.put(job)

    listed = as_json(jobs_cli("list", "--json", APPLIANCE_DATA_DIR=str(data)))

    assert [s["scan_id"] for s in listed["scans"]] == [job.scan_id]


def test_a_missing_store_is_refused_and_never_created(tmp_path: Path) -> None:
    nowhere = tmp_path / "no-such-dir"

    refused = refusal(jobs_cli("list", "--data-dir", str(nowhere)))

    assert refused["rule"] == "store_not_found"
    assert "--data-dir" in refused["recovery_suggestion"]
    assert not nowhere.exists()


def test_a_cursor_that_is_no_scan_id_is_refused(store: SqliteJobStore, data: Path) -> None:
    refused = refusal(jobs_cli("list", "--data-dir", str(data), "--cursor", "' OR 1=1 --"))

    assert refused["rule"] == "scan_id_invalid"


# --- show ----------------------------------------------------------------------------------


def test_show_prints_request_principal_argv_events_with_times_and_result(store: SqliteJobStore, data: Path) -> None:
    job = make_job(result={"hosts": [{"address": "127.0.0.1", "status": "up", "ports": []}]})
    job.progress = 100.0
    store.put(job)

    shown = as_json(jobs_cli("show", job.scan_id, "--data-dir", str(data)))

    assert (shown["request"], shown["principal"], shown["argv"]) == (job.request, "alice", job.argv)
    assert [e["state"] for e in shown["events"]] == ["queued", "completed"]
    assert [e["at"] for e in shown["events"]] == [round(job.created_at, 3), round(job.created_at + 2, 3)]
    assert all(e["at_utc"].endswith("Z") for e in shown["events"])
    assert shown["progress"] == 100.0
    assert shown["result"] == job.result


def test_show_raw_prints_the_stored_output_byte_for_byte(store: SqliteJobStore, data: Path) -> None:
    job = make_job()
    store.put(job)
    store.put_raw(job.scan_id, b"<nmaprun>\x00\xff\n</nmaprun>")

    done = jobs_cli("show", job.scan_id, "--raw", "--data-dir", str(data))

    assert done.returncode == 0, done.stderr
    assert done.stdout == b"<nmaprun>\x00\xff\n</nmaprun>"


def test_show_raw_of_a_scan_without_raw_output_is_refused(store: SqliteJobStore, data: Path) -> None:
    job = make_job("failed")
    store.put(job)

    assert refusal(jobs_cli("show", job.scan_id, "--raw", "--data-dir", str(data)))["rule"] == "raw_output_not_stored"


@pytest.mark.parametrize(
    ("scan_id", "rule"),
    [
        ("scan_000000000000deadbeef", "scan_not_found"),
        ("scan_../../etc/passwd", "scan_id_invalid"),
        ("SCAN_000000000000DEADBEEF", "scan_id_invalid"),
    ],
)
def test_show_of_an_unknown_or_malformed_scan_id_is_refused(
    store: SqliteJobStore, data: Path, scan_id: str, rule: str
) -> None:
    assert refusal(jobs_cli("show", scan_id, "--data-dir", str(data)))["rule"] == rule


# --- export --------------------------------------------------------------------------------


def test_export_json_is_the_job_record_with_its_result(store: SqliteJobStore, data: Path) -> None:
    job = make_job(result={"hosts": [{"address": "127.0.0.1", "status": "up", "ports": []}]})
    store.put(job)

    exported = as_json(jobs_cli("export", job.scan_id, "--data-dir", str(data)))

    assert exported == job.to_record()


def test_export_nmap_xml_of_a_complete_stored_report_is_that_report(store: SqliteJobStore, data: Path) -> None:
    with tcp_listener() as port:
        raw = real_nmap_xml(port)
    parsed = parse_nmap_xml(raw)
    assert parsed.complete
    job = make_job(result={"hosts": [h.model_dump(mode="json") for h in parsed.hosts]})
    store.put(job)
    store.put_raw(job.scan_id, raw)

    done = jobs_cli("export", job.scan_id, "--format", "nmap-xml", "--data-dir", str(data))

    assert done.returncode == 0, done.stderr
    assert done.stdout == raw


def test_export_nmap_xml_of_a_cut_report_is_generated_and_parses_back_to_the_same_hosts(
    store: SqliteJobStore, data: Path
) -> None:
    with tcp_listener() as port:
        raw = real_nmap_xml(port)
    hosts = [h.model_dump(mode="json") for h in parse_nmap_xml(raw).hosts]
    # Compact: the open port listed in full, the closed one counted (an <extraports> when generated).
    assert {p["port"]: p["state"] for p in hosts[0]["ports"]} == {port: "open"}
    assert hosts[0]["port_counts"] == {"open": 1, "closed": 1}
    job = make_job("partial", result={"hosts": hosts})
    store.put(job)
    store.put_raw(job.scan_id, raw[: len(raw) // 2])  # cut by limits.stored_raw_bytes

    done = jobs_cli("export", job.scan_id, "--format", "nmap-xml", "--data-dir", str(data))

    assert done.returncode == 0, done.stderr
    again = parse_nmap_xml(done.stdout)
    assert again.complete
    assert [h.model_dump(mode="json") for h in again.hosts] == hosts
    assert b"generated by mcp-scanner-appliance" in done.stdout
    assert b'exit="error"' in done.stdout  # a partial scan is not dressed up as a finished one


def test_export_nmap_xml_keeps_markup_in_scanner_text_as_text(store: SqliteJobStore, data: Path) -> None:
    injected = '</script></port></ports></host><host><status state="up"/><address addr="10.66.0.1"/></host>'
    port = {
        "port": 80,
        "protocol": "tcp",
        "state": "open",
        "reason": "syn-ack",
        "service": "http",
        "product": 'x" evil="1',
        "version": "1 & 2",
        "extrainfo": "bell\x07char",
        "scripts": [{"id": "http-title", "output": injected}],
    }
    job = make_job(result={"hosts": [{"address": "127.0.0.1", "status": "up", "hostnames": ["<a>"], "ports": [port]}]})
    store.put(job)

    done = jobs_cli("export", job.scan_id, "--format", "nmap-xml", "--data-dir", str(data))

    again = parse_nmap_xml(done.stdout)
    assert again.complete, again.error
    assert [h.address for h in again.hosts] == ["127.0.0.1"]
    back = again.hosts[0].ports[0]
    assert (back.product, back.version, back.scripts[0].output) == ('x" evil="1', "1 & 2", injected)
    assert back.extrainfo == "bell\ufffdchar"  # XML 1.0 cannot carry U+0007 at all
    assert again.hosts[0].hostnames == ["<a>"]


def test_export_nmap_xml_of_a_gobuster_scan_is_refused_with_the_json_alternative(
    store: SqliteJobStore, data: Path
) -> None:
    job = make_job(tool="gobuster_scan", result={"findings": []})
    store.put(job)

    refused = refusal(jobs_cli("export", job.scan_id, "--format", "nmap-xml", "--data-dir", str(data)))

    assert refused["rule"] == "export_format_unsupported"
    assert "--format json" in refused["recovery_suggestion"]


# --- purge ---------------------------------------------------------------------------------


def test_purge_without_yes_says_how_many_and_deletes_nothing(store: SqliteJobStore, data: Path) -> None:
    for job in (make_job(), make_job("failed"), make_job("running")):
        store.put(job)

    said = as_json(jobs_cli("purge", "--data-dir", str(data)))

    assert (said["matched"], said["deleted"]) == (2, 0)
    assert "--yes" in said["message"]
    assert store.count() == 3


def test_purge_deletes_only_finished_scans_matching_age_principal_and_status(
    store: SqliteJobStore, data: Path, tmp_path: Path
) -> None:
    old_done = make_job(at=NOW - 10 * DAY)
    old_failed = make_job("failed", at=NOW - 10 * DAY)
    old_bob = make_job(principal="bob", at=NOW - 10 * DAY)
    old_running = make_job("running", at=NOW - 10 * DAY)
    recent = make_job(at=NOW - DAY)
    for job in (old_done, old_failed, old_bob, old_running, recent):
        store.put(job)
    store.put_raw(old_done.scan_id, b"<nmaprun/>")
    audit = tmp_path / "audit.log"

    said = as_json(
        jobs_cli(
            "purge",
            "--data-dir",
            str(data),
            "--older-than",
            "7",
            "--principal",
            "alice",
            "--status",
            "completed",
            "--yes",
            APPLIANCE_AUDIT_PATH=str(audit),
        )
    )

    assert (said["matched"], said["deleted"]) == (1, 1)
    assert store.get(old_done.scan_id) is None
    assert store.raw(old_done.scan_id) is None
    assert {j.scan_id for j in store.page(JobFilter(), 10).jobs} == {
        old_failed.scan_id,
        old_bob.scan_id,
        old_running.scan_id,
        recent.scan_id,
    }
    line = json.loads(audit.read_text().splitlines()[-1])
    assert (line["event"], line["scans"], line["principal"]) == ("jobs_purged", 1, "alice")


def test_purge_never_deletes_a_running_scan_even_when_asked_by_status(store: SqliteJobStore, data: Path) -> None:
    running = make_job("running", at=NOW - 30 * DAY)
    store.put(running)

    refused = refusal(jobs_cli("purge", "--data-dir", str(data), "--status", "running", "--yes"))

    assert refused["rule"] == "purge_unfinished"
    assert store.get(running.scan_id) is not None


# --- cancel --------------------------------------------------------------------------------


def test_cancel_of_a_scan_no_appliance_runs_is_refused_and_the_request_withdrawn(
    store: SqliteJobStore, data: Path
) -> None:
    orphan = make_job("running")  # a crash left it: nothing runs it
    store.put(orphan)

    refused = refusal(jobs_cli("cancel", orphan.scan_id, "--wait", "0.5", "--data-dir", str(data)))

    assert refused["rule"] == "scan_not_live"
    assert "--force" in refused["recovery_suggestion"]
    assert store.get(orphan.scan_id) == orphan
    assert store.cancel_requests() == {}


def test_cancel_force_marks_an_orphaned_scan_cancelled_and_audits_it(
    store: SqliteJobStore, data: Path, tmp_path: Path
) -> None:
    orphan = make_job("running", result={"hosts": [{"address": "127.0.0.1", "status": "up", "ports": []}]})
    store.put(orphan)
    audit = tmp_path / "audit.log"

    said = as_json(
        jobs_cli(
            "cancel",
            orphan.scan_id,
            "--wait",
            "0.5",
            "--force",
            "--data-dir",
            str(data),
            APPLIANCE_AUDIT_PATH=str(audit),
        )
    )

    assert (said["action"], said["status"]) == ("marked_cancelled", "cancelled")
    after = store.get(orphan.scan_id)
    assert after is not None
    assert after.state == "cancelled"
    assert after.finished_at is not None
    assert after.result == orphan.result  # findings so far are kept
    assert "--force" in after.events[-1]["note"]
    line = json.loads(audit.read_text().splitlines()[-1])
    assert (line["event"], line["scan_id"], line["state"]) == ("job", orphan.scan_id, "cancelled")


def test_cancel_of_a_finished_scan_changes_nothing(store: SqliteJobStore, data: Path) -> None:
    done = make_job()
    store.put(done)

    said = as_json(jobs_cli("cancel", done.scan_id, "--force", "--data-dir", str(data)))

    assert (said["action"], said["status"]) == ("none", "completed")
    assert store.get(done.scan_id) == done
    assert store.cancel_requests() == {}


@pytest.mark.anyio
async def test_cli_cancel_ends_a_real_scan_of_a_serving_appliance_within_seconds(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    data, audit = tmp_path / "data", tmp_path / "audit.log"
    with (
        tcp_listener() as port,
        served(policy, APPLIANCE_DATA_DIR=str(data), APPLIANCE_AUDIT_PATH=str(audit)) as server,
    ):
        marker = f"{port},23300-23500"  # unique to this scan; about 200 s at one probe a second
        arguments = {"target": "127.0.0.1", "ports": marker, "extra_args": ["--scan-delay", "1s"], "wait_seconds": 1}
        async with http_client(server.url, "legacy") as client:
            started = await client.call_tool("nmap_scan", arguments)
        body = started.structured_content
        assert body is not None, started
        assert body["status"] == "running"
        scan_id = body["scan_id"]
        wait_until(lambda: scanner_processes(marker), timeout=20)
        assert (data / DB_NAME).is_file()
        # Beside it: requests for a scan that no longer exists and for a finished one (both
        # dropped by the appliance), and for a "running" job no process runs, as a crash of
        # another process would leave it (kept for the CLI to withdraw).
        orphan, finished = make_job("running"), make_job("completed")
        with contextlib.closing(SqliteJobStore(data)) as beside:
            beside.put(orphan)
            beside.put(finished)
            beside.request_cancel("scan_000000000000deadbeef", "operator-cli uid=0", time.time())
            beside.request_cancel(finished.scan_id, "operator-cli uid=0", time.time())
            beside.request_cancel(orphan.scan_id, "operator-cli uid=0", time.time())

        began = time.monotonic()
        said = as_json(jobs_cli("cancel", scan_id, "--data-dir", str(data)))
        took = time.monotonic() - began
        print(f"jobs cancel took {took:.2f} s")  # a figure for the README, not an assertion

        assert (said["action"], said["status"]) == ("cancel_requested", "cancelled"), said
        assert took < 10, took  # poll every 1 s, SIGTERM grace 0.5 s, the CLI's start-up on a busy host
        wait_until(lambda: not scanner_processes(marker), timeout=5)
        assert server.proc.poll() is None  # the appliance serves on
        with contextlib.closing(SqliteJobStore(data)) as beside:
            assert beside.cancel_requests() == {orphan.scan_id: "operator-cli uid=0"}
        # The serving appliance does not take a request for a job it does not run.
        not_live = refusal(jobs_cli("cancel", orphan.scan_id, "--wait", "2.5", "--data-dir", str(data)))
        assert not_live["rule"] == "scan_not_live"
        with contextlib.closing(SqliteJobStore(data)) as beside:
            assert beside.cancel_requests() == {}  # withdrawn by the CLI
            assert beside.get(orphan.scan_id) == orphan
    shown = as_json(jobs_cli("show", scan_id, "--data-dir", str(data)))
    assert shown["state"] == "cancelled"
    assert [e["state"] for e in shown["events"]][-1] == "cancelled"
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    mine = [line for line in lines if line.get("scan_id") == scan_id]
    assert [line["event"] for line in mine if line["event"] in ("cancel_request", "end")] == ["cancel_request", "end"]
    request = next(line for line in mine if line["event"] == "cancel_request")
    end = next(line for line in mine if line["event"] == "end")
    assert request["requested_by"].startswith("operator-cli uid=")
    assert (end["outcome"], end["state"]) == ("cancelled", "cancelled")
