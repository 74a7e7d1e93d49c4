"""The four OAuth scopes and what each allows: pure functions of a tool name and its request.

`scan:read` is needed for the endpoint at all (the SDK's auth middleware checks it: 403
`insufficient_scope`); the rest are per tool call and come back as tool results refused with
rule `insufficient_scope` naming the scope.

Intrusive (needs `scan:intrusive` besides `scan:run`): what sends more than connection attempts,
or sends them faster than a connect scan can. nmap `syn` (raw half-open packets), nmap `version`
(service probes with payloads), nmap `scripts` (NSE code run against the services), and every
masscan call (raw packets at a rate). A plain nmap connect or ping scan and gobuster are not.
"""

from __future__ import annotations

from collections.abc import Collection

from pydantic import BaseModel

from appliance.errors import PermissionDeniedError

SCAN_READ = "scan:read"
SCAN_RUN = "scan:run"
SCAN_INTRUSIVE = "scan:intrusive"
SCAN_ADMIN = "scan:admin"
ALL_SCOPES = (SCAN_READ, SCAN_RUN, SCAN_INTRUSIVE, SCAN_ADMIN)
# A static token whose line has no scopes column (and APPLIANCE_AUTH_TOKEN): everything a token
# could do before scopes were checked, which never included other principals' scans.
STATIC_DEFAULT_SCOPES = (SCAN_READ, SCAN_RUN, SCAN_INTRUSIVE)

SCANNER_TOOLS = frozenset({"nmap_scan", "masscan_scan", "gobuster_scan"})
# Tools that are intrusive whatever their arguments.
INTRUSIVE_TOOLS = frozenset({"masscan_scan"})
INTRUSIVE_NMAP_SCAN_TYPES = frozenset({"syn", "version"})
# Job tools that change a scan (the rest only read, which the endpoint's scan:read covers).
JOB_WRITE_TOOLS = frozenset({"cancel_scan"})


def required_for_listing(tool: str) -> tuple[str, ...]:
    """The scopes without which `tool` is not shown in tools/list."""
    if tool in INTRUSIVE_TOOLS:
        return (SCAN_RUN, SCAN_INTRUSIVE)
    if tool in SCANNER_TOOLS or tool in JOB_WRITE_TOOLS:
        return (SCAN_RUN,)
    return (SCAN_READ,)


def required_for_call(tool: str, request: BaseModel) -> tuple[str, ...]:
    """The scopes one validated request of `tool` needs (a dry run needs the same as the scan).

    Not covered: the engagement's own tool and option rules (appliance.policy decides those).
    """
    needed = required_for_listing(tool)
    if tool == "nmap_scan" and (
        getattr(request, "scan_type", None) in INTRUSIVE_NMAP_SCAN_TYPES or getattr(request, "scripts", None)
    ):
        needed = (*needed, SCAN_INTRUSIVE)
    return needed


def may_list(tool: str, granted: Collection[str] | None) -> bool:
    """`granted` None is a caller without scopes at all (stdio, the loopback no-auth test mode)."""
    return granted is None or all(scope in granted for scope in required_for_listing(tool))


def check_scopes(tool: str, request: BaseModel, granted: Collection[str] | None) -> None:
    """Raise PermissionDeniedError(rule insufficient_scope) naming the first scope missing."""
    if granted is None:
        return
    for scope in required_for_call(tool, request):
        if scope not in granted:
            raise PermissionDeniedError(
                f"{tool} with these arguments needs the scope {scope}, which this token does not carry",
                rule="insufficient_scope",
                recovery_suggestion=f"Ask for a token with the scope {scope}, or use options your scopes allow "
                "(tools/list shows only the tools your token may call).",
            )


def token_scopes(claims: dict[str, object]) -> list[str]:
    """The scopes a JWT carries: `scope` (RFC 9068, space-separated) or `scp` (a list, Entra/Okta)."""
    scope = claims.get("scope")
    if isinstance(scope, str):
        return scope.split()
    scp = claims.get("scp")
    if isinstance(scp, list):
        return [s for s in scp if isinstance(s, str)]
    if isinstance(scp, str):
        return scp.split()
    return []
