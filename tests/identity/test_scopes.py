"""Which scope each tool call needs, and the scopes a JWT carries (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from appliance.errors import PermissionDeniedError
from appliance.identity.scopes import check_scopes, may_list, token_scopes
from appliance.jobs.queries import CancelScanRequest, GetScanRequest
from appliance.tools.gobuster import GobusterRequest
from appliance.tools.masscan import MasscanRequest
from appliance.tools.nmap import NmapRequest

READ = {"scan:read"}
RUN = {"scan:read", "scan:run"}
INTRUSIVE = {"scan:read", "scan:run", "scan:intrusive"}


def nmap(**fields: Any) -> NmapRequest:
    return NmapRequest(target="10.20.0.5", **fields)


MASSCAN = MasscanRequest(target="10.20.0.5", ports="80")
GOBUSTER = GobusterRequest.model_validate({"target": "http://10.20.0.5/", "wordlist": "common"})


@pytest.mark.parametrize(
    ("tool", "request_", "granted"),
    [
        # safe
        ("nmap_scan", nmap(), RUN),
        ("nmap_scan", nmap(scan_type="ping"), RUN),
        ("nmap_scan", nmap(dry_run=True), RUN),
        ("gobuster_scan", GOBUSTER, RUN),
        ("nmap_scan", nmap(scan_type="syn"), INTRUSIVE),
        ("masscan_scan", MASSCAN, INTRUSIVE),
        ("get_scan", GetScanRequest(scan_id="scan_1"), READ),
        ("cancel_scan", CancelScanRequest(scan_id="scan_1"), RUN),
        ("masscan_scan", MASSCAN, None),  # no token at all: stdio's one caller
    ],
)
def test_call_allowed(tool: str, request_: BaseModel, granted: set[str] | None) -> None:
    check_scopes(tool, request_, granted)
    assert may_list(tool, granted)


@pytest.mark.parametrize(
    ("tool", "request_", "granted", "missing"),
    [
        # unsafe
        ("nmap_scan", nmap(), READ, "scan:run"),
        ("nmap_scan", nmap(dry_run=True), READ, "scan:run"),  # a dry run needs what the scan needs
        ("nmap_scan", nmap(scan_type="syn"), RUN, "scan:intrusive"),
        ("nmap_scan", nmap(scan_type="version"), RUN, "scan:intrusive"),
        ("nmap_scan", nmap(scripts=["http-title"]), RUN, "scan:intrusive"),
        ("masscan_scan", MASSCAN, RUN, "scan:intrusive"),
        ("masscan_scan", MASSCAN, {"scan:read", "scan:intrusive"}, "scan:run"),
        ("cancel_scan", CancelScanRequest(scan_id="scan_1"), READ, "scan:run"),
    ],
)
def test_call_refused_naming_the_missing_scope(tool: str, request_: BaseModel, granted: set[str], missing: str) -> None:
    with pytest.raises(PermissionDeniedError) as caught:
        check_scopes(tool, request_, granted)
    assert caught.value.rule == "insufficient_scope"
    assert missing in caught.value.message
    assert caught.value.error_type == "permission_denied"


def test_listing_hides_what_the_scopes_cannot_call() -> None:
    assert not may_list("masscan_scan", RUN)
    assert may_list("nmap_scan", RUN)  # its intrusive options are refused per call
    assert not may_list("cancel_scan", READ)
    assert may_list("list_scans", READ)


@pytest.mark.parametrize(
    ("claims", "scopes"),
    [
        ({"scope": "scan:read scan:run"}, ["scan:read", "scan:run"]),  # RFC 9068
        ({"scp": ["scan:read", "scan:run"]}, ["scan:read", "scan:run"]),  # Okta, Entra application tokens
        ({"scp": "scan:read"}, ["scan:read"]),  # Entra delegated tokens
        ({"scope": ["scan:read"]}, []),  # not the RFC's form: no scopes rather than a guess
        ({}, []),
    ],
)
def test_token_scopes(claims: dict[str, object], scopes: list[str]) -> None:
    assert token_scopes(claims) == scopes
