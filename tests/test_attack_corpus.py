"""The attack corpus (tests/attack_corpus.yaml): every hostile call is refused before anything runs.

Each entry runs twice: straight into `ScanService.call` with the raw arguments (the one
validation path every transport uses), and through an in-process MCP client and the real MCP
server, as an agent's call arrives. The resolver is a dict (no DNS query leaves the test) and
the runner is a spy that fails the test if a scanner would start.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import Client
from support import LabService

from appliance.errors import ApplianceError, NotFoundError, UnexpectedError, ValidationError
from appliance.server import build_server
from appliance.tools import TOOLS

CORPUS_PATH = Path(__file__).parent / "attack_corpus.yaml"
CORPUS: list[dict[str, Any]] = yaml.safe_load(CORPUS_PATH.read_text(encoding="utf-8"))
ENTRY_KEYS = {"id", "tool", "args", "rule", "resolves", "policy", "privilege_mode"}
REQUIRED_KEYS = {"id", "tool", "args", "rule"}
MIN_ENTRIES = 150


async def call(lab: LabService, tool: str, arguments: Mapping[str, Any]) -> Any:
    return await lab.service.call(TOOLS[tool], arguments, "test-id")


# --- the corpus itself --------------------------------------------------------------------------


def test_corpus_has_enough_entries_with_unique_ids() -> None:
    ids = [entry["id"] for entry in CORPUS]

    assert len(CORPUS) >= MIN_ENTRIES
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


@pytest.mark.parametrize("entry", CORPUS, ids=[entry["id"] for entry in CORPUS])
def test_corpus_entry_is_well_formed(entry: dict[str, Any]) -> None:
    assert REQUIRED_KEYS <= set(entry) <= ENTRY_KEYS
    assert re.fullmatch(r"[a-z0-9]+(?:_[a-z0-9]+)*", entry["id"])
    assert entry["tool"] in TOOLS
    assert isinstance(entry["args"], dict)
    assert entry.get("privilege_mode", "raw") in ("connect", "raw")


def test_corpus_covers_every_tool_and_both_privilege_modes() -> None:
    assert {entry["tool"] for entry in CORPUS} == set(TOOLS)
    assert any(entry.get("privilege_mode") == "connect" for entry in CORPUS)


# --- every entry is refused with its rule, audited, and nothing starts --------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("entry", CORPUS, ids=[entry["id"] for entry in CORPUS])
async def test_attack_is_refused_before_any_scanner_starts(
    entry: dict[str, Any], lab_service: Callable[..., LabService]
) -> None:
    resolves = entry.get("resolves", {})
    h = lab_service(entry.get("policy"), resolves=resolves, privilege_mode=entry.get("privilege_mode", "raw"))

    with pytest.raises(ApplianceError) as refused:
        await call(h, entry["tool"], entry["args"])

    assert refused.value.rule == entry["rule"], refused.value.message
    assert isinstance(refused.value, ValidationError | NotFoundError)
    assert h.runner.calls == []
    # The resolver is only ever asked names the entry lists; usually none.
    assert set(h.resolver.calls) <= set(resolves)
    [line] = h.audit_lines()
    assert line["verdict"] == "refused"
    assert line["rule"] == entry["rule"]
    assert line["tool"] == entry["tool"]
    assert line["request_id"] == "test-id"


@pytest.mark.anyio
@pytest.mark.parametrize("entry", CORPUS, ids=[entry["id"] for entry in CORPUS])
async def test_attack_through_an_mcp_client_is_refused_before_any_scanner_starts(
    entry: dict[str, Any], lab_service: Callable[..., LabService]
) -> None:
    resolves = entry.get("resolves", {})
    h = lab_service(entry.get("policy"), resolves=resolves, privilege_mode=entry.get("privilege_mode", "raw"))

    async with Client(build_server(h.service), mode="legacy") as client:
        result = await client.call_tool(entry["tool"], entry["args"])

    assert result.is_error
    assert result.structured_content is not None
    assert result.structured_content["rule"] == entry["rule"], result.structured_content["message"]
    assert result.structured_content["recovery_suggestion"]
    assert json.loads(result.content[0].text) == result.structured_content  # type: ignore[union-attr]
    assert h.runner.calls == []
    assert set(h.resolver.calls) <= set(resolves)
    [line] = h.audit_lines()
    assert (line["verdict"], line["rule"], line["tool"]) == ("refused", entry["rule"], entry["tool"])


# --- the lab service lets clean calls through: the refusals above are not an artefact --------------


CLEAN_CALLS = [
    pytest.param("nmap_scan", {"target": "web.lab.internal", "ports": "22,80"}, id="nmap_lab_hostname"),
    pytest.param("nmap_scan", {"target": "10.20.1.0/28", "scan_type": "syn"}, id="nmap_syn_in_raw_mode"),
    pytest.param("masscan_scan", {"target": "10.20.1.0/28", "ports": "80", "rate": 1000}, id="masscan_block"),
    pytest.param("gobuster_scan", {"target": "http://web.lab.internal:8080/app/"}, id="gobuster_dir"),
    pytest.param(
        "gobuster_scan", {"mode": "dns", "target": "lab.internal", "wordlist": "subdomains"}, id="gobuster_dns"
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("tool", "arguments"), CLEAN_CALLS)
async def test_clean_dry_run_is_allowed_and_audited(
    tool: str, arguments: dict[str, Any], lab_service: Callable[..., LabService]
) -> None:
    h = lab_service(resolves={"web.lab.internal": ["10.20.0.5"]})

    report = await call(h, tool, {**arguments, "dry_run": True})

    assert report.dry_run
    assert h.runner.calls == []
    [line] = h.audit_lines()
    assert line["verdict"] == "allowed"


@pytest.mark.anyio
@pytest.mark.parametrize(("tool", "arguments"), CLEAN_CALLS)
async def test_spy_runner_catches_a_call_that_would_run(
    tool: str, arguments: dict[str, Any], lab_service: Callable[..., LabService]
) -> None:
    h = lab_service(resolves={"web.lab.internal": ["10.20.0.5"]})

    # The scan runs as a job: the spy's AssertionError reaches the caller as the job's failure.
    with pytest.raises(UnexpectedError) as failed:
        await call(h, tool, arguments)
    assert isinstance(failed.value.__cause__, AssertionError)
    assert "would have started" in str(failed.value.__cause__)

    [argv] = h.runner.calls
    assert "10.20.0.5" in " ".join(argv) or "10.20.1.0/28" in argv or "lab.internal" in argv
