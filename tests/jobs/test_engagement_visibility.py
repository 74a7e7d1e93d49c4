"""Who sees and cancels which job: the owner, its engagement's principals (scan:read), scan:admin.

The store's page filter and the manager's lookup answer the same question; both are checked on
a real SQLite store, and so is a store of schema 3 (before engagements) migrated to 4.
"""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest
from support.jobs import stored_job

from appliance.audit import AuditSink
from appliance.errors import NotFoundError, ValidationError
from appliance.jobs.manager import JobManager
from appliance.jobs.model import Job, Viewer
from appliance.jobs.queries import CancelScanRequest, JobQueries, ListScansRequest
from appliance.jobs.sqlite import DB_NAME, MIGRATIONS, SCHEMA_VERSION, SqliteJobStore
from appliance.jobs.store import JobFilter
from appliance.policy.model import Policy

pytestmark = pytest.mark.anyio

ALICE_RED = Viewer("alice", frozenset({"red"}))
CAROL_RED = Viewer("carol", frozenset({"red"}))
BOB_BLUE = Viewer("bob", frozenset({"blue"}))
ADMIN = Viewer("root", admin=True)


@pytest.fixture
def filled(tmp_path: Path) -> tuple[JobManager, dict[str, Job]]:
    store = SqliteJobStore(tmp_path / "data")
    jobs = {
        "alice_red": stored_job(principal="alice", engagement="red", at=1.0),
        "bob_blue": stored_job(principal="bob", engagement="blue", at=2.0),
        "alice_none": stored_job(principal="alice", at=3.0),  # stored before engagements
        "dave_red": stored_job(principal="dave", engagement="red", at=4.0),
    }
    for job in jobs.values():
        store.put(job)
    return JobManager(store, AuditSink(stream=io.StringIO())), jobs


@pytest.mark.parametrize(
    ("viewer", "seen"),
    [
        (ALICE_RED, {"alice_red", "alice_none", "dave_red"}),
        (CAROL_RED, {"alice_red", "dave_red"}),
        (BOB_BLUE, {"bob_blue"}),
        (Viewer("carol"), set()),  # in red, but without scan:read: its own scans only
        (ADMIN, {"alice_red", "bob_blue", "alice_none", "dave_red"}),
    ],
)
def test_each_viewer_sees_its_own_and_its_engagements_scans(
    filled: tuple[JobManager, dict[str, Job]], viewer: Viewer, seen: set[str]
) -> None:
    manager, jobs = filled
    queries = JobQueries(manager, lambda: Policy(version=3))

    listed = {s.scan_id for s in queries.list_scans(ListScansRequest(limit=100), viewer).scans}
    visible = {key for key, job in jobs.items() if key in seen and manager.visible(job.scan_id, viewer)}
    for key in set(jobs) - seen:
        with pytest.raises(NotFoundError) as hidden:
            manager.visible(jobs[key].scan_id, viewer)
        assert hidden.value.rule == "scan_not_found"

    assert visible == seen
    assert listed == {jobs[key].scan_id for key in seen}


async def test_only_the_owner_or_an_admin_cancels_an_engagement_scan(
    filled: tuple[JobManager, dict[str, Job]],
) -> None:
    manager, jobs = filled
    queries = JobQueries(manager, lambda: Policy(version=3))
    scan = CancelScanRequest(scan_id=jobs["alice_red"].scan_id)

    with pytest.raises(ValidationError) as not_owner:
        await queries.cancel_scan(scan, CAROL_RED)
    with pytest.raises(NotFoundError) as other_engagement:
        await queries.cancel_scan(scan, BOB_BLUE)
    owner = await queries.cancel_scan(scan, ALICE_RED)
    admin = await queries.cancel_scan(scan, ADMIN)

    assert not_owner.value.rule == "cancel_not_owner"
    assert not_owner.value.recovery_suggestion
    assert other_engagement.value.rule == "scan_not_found"
    assert owner == admin == (jobs["alice_red"], False)  # it had finished: nothing to stop


def test_a_plain_principal_filter_is_as_before(filled: tuple[JobManager, dict[str, Job]]) -> None:
    manager, jobs = filled

    page = manager.store.page(JobFilter(principal="alice"), 10)

    assert {j.scan_id for j in page.jobs} == {jobs["alice_red"].scan_id, jobs["alice_none"].scan_id}


def test_a_schema_3_store_migrates_to_4_and_keeps_its_jobs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / DB_NAME, isolation_level=None)
    db.executescript(";".join(MIGRATIONS[:3]))
    db.execute("PRAGMA user_version = 3")
    old = stored_job(principal="alice", at=5.0)
    record = old.to_record()
    del record["engagement"]  # what a schema 3 appliance wrote
    db.execute(
        "INSERT INTO jobs (scan_id, principal, tool, target_key, state, finished_at, record)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (old.scan_id, old.principal, old.tool, old.target, old.state, old.finished_at, json.dumps(record)),
    )
    db.close()

    store = SqliteJobStore(data)
    store.put(stored_job(principal="dave", engagement="red", at=6.0))

    assert store.version == SCHEMA_VERSION == 4
    assert store.get(old.scan_id) == old
    assert [j.principal for j in store.page(JobFilter(principal="carol", engagements=frozenset({"red"})), 10).jobs] == [
        "dave"
    ]
