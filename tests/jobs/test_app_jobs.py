"""The assembled appliance's job parts: its store under APPLIANCE_DATA_DIR, retention by the
policy, the job metrics, readiness when the store refuses writes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from support import LOOPBACK_POLICY, write_policy
from support.jobs import stored_job

from appliance.app import Appliance
from appliance.config import Settings
from appliance.errors import ExecutionError
from appliance.health import Health
from appliance.jobs.model import Job, JobState


def appliance_for(tmp_path: Path, *overrides: dict[str, Any]) -> Appliance:
    policy = write_policy(tmp_path, LOOPBACK_POLICY, *overrides)
    return Appliance(Settings(policy_path=policy, health_port=0), CollectorRegistry())


def finished(at: float, principal: str = "alice", state: JobState = "completed") -> Job:
    return stored_job(state, at=at, principal=principal)


def test_the_store_lives_in_the_configured_data_dir_durably(tmp_path: Path, own_data_dir: Path) -> None:
    app = appliance_for(tmp_path)

    assert app.job_store.describe()["kind"] == "durable"
    assert app.job_store.describe()["path"] == str(own_data_dir / "jobs.sqlite3")


def test_retention_sweep_applies_the_policy_age_and_per_principal_share(tmp_path: Path) -> None:
    app = appliance_for(
        tmp_path,
        {"retention": {"max_age_days": 1, "max_count": 100}},
        {"limits": {"concurrency": {"per_principal": {"stored_jobs": 2}}}},
    )
    now = time.time()
    old = finished(now - 3 * 86400)
    alice = [finished(now - 100 + i) for i in range(3)]
    bob = finished(now - 50, principal="bob")
    for job in (old, *alice, bob):
        app.job_store.put(job)

    removed = app.sweep_jobs()

    assert sorted(removed) == sorted([old.scan_id, alice[0].scan_id])
    assert app.job_store.count("alice") == 2
    assert app.job_store.count("bob") == 1


def test_job_metrics_count_the_store_by_state_at_scrape_time(tmp_path: Path) -> None:
    app = appliance_for(tmp_path)
    app.job_store.put(finished(1000.0))
    app.job_store.put(finished(1001.0, state="interrupted"))

    assert app.registry.get_sample_value("appliance_jobs", {"state": "completed"}) == 1
    assert app.registry.get_sample_value("appliance_jobs", {"state": "interrupted"}) == 1
    assert app.registry.get_sample_value("appliance_jobs", {"state": "running"}) == 0
    assert app.registry.get_sample_value("appliance_job_oldest_running_age_seconds", {}) == 0


def test_a_store_that_refuses_writes_makes_the_appliance_not_ready(tmp_path: Path) -> None:
    app = appliance_for(tmp_path)
    health = Health(
        app.settings,
        app.store,
        app.audit,
        {},
        breakers=dict,
        draining=lambda: False,
        privilege_check=lambda: {"ok": True},
        jobs=app.job_store.describe,
    )
    assert "job store refuses writes" not in health.readiness()[1]
    app.job_store._db.execute("PRAGMA query_only = ON")
    with pytest.raises(ExecutionError):
        app.job_store.put(finished(1.0))

    ready, reasons = health.readiness()

    assert not ready
    assert "job store refuses writes" in reasons
    assert health.report()["checks"]["store"]["rule"] == "store_unwritable"
