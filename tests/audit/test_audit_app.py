"""The assembled appliance's audit chain: the head checkpointed on a timer, exported by metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support import LOOPBACK_POLICY, eventually, write_policy

from appliance import app as app_module
from appliance.app import Appliance
from appliance.config import Settings

pytestmark = pytest.mark.anyio


async def test_the_head_is_checkpointed_on_the_timer_and_exported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "AUDIT_HEAD_SECONDS", 0.05)
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    audit = tmp_path / "audit.jsonl"
    settings = Settings(policy_path=policy, health_port=0, audit_path=audit, audit_key_file=None, data_dir=tmp_path)
    app = Appliance(settings, CollectorRegistry())
    app.audit.write({"event": "call"})
    assert app.registry.get_sample_value("appliance_audit_chain_sequence") == 0  # not checkpointed yet
    tasks = app._start_background()
    try:
        head = app.audit.head
        assert head is not None and head.seq == 2
        await eventually(lambda: app.audit.checkpoint_head == head, within=5)
        labels = {"seq": "2", "chain": head.chain, "mode": "sha256"}
        assert app.registry.get_sample_value("appliance_audit_chain_head_info", labels) == 1
        assert app.registry.get_sample_value("appliance_audit_chain_sequence") == 2
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        app.audit.close()
        app.job_store.close()
