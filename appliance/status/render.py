"""The status page's HTML: pure functions of plain values, every value escaped, no script.

No template engine (none is locked): f-strings over `_e()`, which escapes every value that is
not this module's own markup. Stable ids and classes (`#health`, `#tools`, `tr.tool`, ...) are
what the browser test and any scraper find. Inline CSS only: the Content-Security-Policy allows
nothing else (appliance.status.web).
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

ViewerKind = Literal["health_token", "access_token", "open"]
# How many of the newest scans the full view lists (the CLI and get_scan show the rest).
RECENT_SCANS_SHOWN = 20

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1b1f24;background:#f6f8fa}
h1{font-size:1.3rem;margin:0 0 1rem}h2{font-size:1.05rem;margin:0 0 .5rem}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:.8rem 1rem;margin:0 0 1rem}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25rem .5rem;border-top:1px solid #eaeef2}
th{font-weight:600;background:#f6f8fa}code{font:12px ui-monospace,monospace}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:1rem;font-weight:600}
.healthy,.closed,.yes{color:#116329;background:#dafbe1}.degraded,.half_open{color:#7d4e00;background:#fff8c5}
.unhealthy,.open,.no{color:#82071e;background:#ffebe9}.over{color:#82071e;font-weight:600}.muted{color:#57606a}
form{display:inline}input[type=password]{width:22rem;padding:.3rem}button{padding:.3rem .8rem}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def utc(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


@dataclass(frozen=True)
class ToolRow:
    name: str
    enabled: bool  # by the policy
    reason: str | None  # why it cannot be called now; None: available


@dataclass(frozen=True)
class ScanRow:
    scan_id: str
    tool: str
    target: str
    principal: str
    state: str
    created_at: float
    finished_at: float | None


@dataclass(frozen=True)
class Viewer:
    kind: ViewerKind
    principal: str | None = None
    scopes: tuple[str, ...] = ()
    sees_scans: bool = False  # the health token, or an access token with scan:admin
    session_expires_at: float | None = None  # logged in through the form (None: header or open)


@dataclass(frozen=True)
class StatusView:
    status: str
    ready_reasons: Sequence[str]
    resources: Mapping[str, tuple[float, float]]  # cpu, memory, disk: (percent used, degraded above)
    mode: str
    transport: str
    tools: Sequence[ToolRow]
    breakers: Mapping[str, Mapping[str, Any]]
    job_counts: Mapping[str, int] | None  # None: no job store at hand
    recent: Sequence[ScanRow] | None  # None: this viewer may not see scans
    policy_source: str
    policy_loaded_at: float
    policy_refused: tuple[float, str] | None
    viewer: Viewer
    can_log_in: bool  # a credential could show more than this viewer sees
    generated_at: float


def document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )


def login_form(note: str | None = None) -> str:
    """POST /login with one `token` field; the browser keeps the password out of any URL."""
    note_html = f'<p class="muted" id="login-note">{_e(note)}</p>' if note else ""
    return (
        '<section id="login"><h2>Log in</h2>'
        f"{note_html}"
        '<form id="login-form" method="post" action="/login">'
        '<label for="token">Health token or MCP access token </label>'
        '<input type="password" id="token" name="token" autocomplete="current-password" required> '
        '<button type="submit" id="login-submit">Log in</button></form></section>'
    )


def login_page(note: str | None = None) -> str:
    return document("mcp-scanner-appliance status: log in", f"<h1>mcp-scanner-appliance</h1>{login_form(note)}")


def refusal_page(rule: str, message: str, recovery: str) -> str:
    body = (
        f'<h1>mcp-scanner-appliance</h1><section id="refusal" data-rule="{_e(rule)}">'
        f"<h2>Refused</h2><p>{_e(message)}</p>"
        f'<p>Rule: <code id="refusal-rule">{_e(rule)}</code></p>'
        f'<p id="refusal-recovery">{_e(recovery)}</p><p><a href="/">Back to the status page</a></p></section>'
    )
    return document("mcp-scanner-appliance status: refused", body)


def _badge(text: str, css: str) -> str:
    return f'<span class="badge {_e(css)}">{_e(text)}</span>'


def _table(section: str, heads: Iterable[str], rows: Iterable[str]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in heads)
    return f'<table id="{_e(section)}-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _viewer(viewer: Viewer, can_log_in: bool) -> str:
    if viewer.kind == "open":
        who = "Not logged in (no health token is configured: this summary is open on the allowed hosts)."
    elif viewer.kind == "health_token":
        who = "Logged in with the health token (full view)."
    else:
        scopes = " ".join(viewer.scopes) or "none"
        view = "full view" if viewer.sees_scans else "counts only: recent scans need scan:admin"
        who = f"Logged in as {viewer.principal} with an MCP access token (scopes: {scopes}; {view})."
    parts = [f'<section id="viewer" data-kind="{_e(viewer.kind)}"><h2>Who is logged in</h2><p>{_e(who)}</p>']
    if viewer.session_expires_at is not None:
        parts.append(
            f'<p class="muted">Session ends {_e(utc(viewer.session_expires_at))}.</p>'
            '<form id="logout-form" method="post" action="/logout"><button type="submit">Log out</button></form>'
        )
    parts.append("</section>")
    if viewer.kind == "open" and can_log_in:
        parts.append(login_form("Log in with the health token or an MCP token with scan:admin to see recent scans."))
    return "".join(parts)


def _tools(rows: Sequence[ToolRow]) -> str:
    body = []
    for row in rows:
        available = row.reason is None
        body.append(
            f'<tr class="tool" data-tool="{_e(row.name)}" data-available="{str(available).lower()}">'
            f"<td><code>{_e(row.name)}</code></td>"
            f"<td>{_badge('yes', 'yes') if row.enabled else _badge('no', 'no')}</td>"
            f"<td>{_badge('yes', 'yes') if available else _badge('no', 'no')}</td>"
            f'<td class="reason">{_e(row.reason or "")}</td></tr>'
        )
    table = _table("tools", ("tool", "enabled", "available", "why not"), body)
    return f'<section id="tools"><h2>Tools</h2>{table}</section>'


def _breakers(breakers: Mapping[str, Mapping[str, Any]]) -> str:
    body = [
        f'<tr class="breaker" data-tool="{_e(tool)}" data-state="{_e(b.get("state"))}">'
        f"<td><code>{_e(tool)}</code></td><td>{_badge(str(b.get('state')), str(b.get('state')))}</td>"
        f"<td>{_e(b.get('consecutive_failures', '-'))}</td></tr>"
        for tool, b in breakers.items()
    ]
    table = _table("breakers", ("tool", "state", "consecutive failures"), body)
    return f'<section id="breakers"><h2>Circuit breakers</h2>{table}</section>'


def _jobs(counts: Mapping[str, int] | None, states: Sequence[str]) -> str:
    if counts is None:
        return '<section id="jobs"><h2>Jobs by state</h2><p class="muted">No job store here.</p></section>'
    body = [
        f'<tr class="job-count" data-state="{_e(s)}"><td>{_e(s)}</td><td>{_e(counts.get(s, 0))}</td></tr>'
        for s in states
    ]
    return f'<section id="jobs"><h2>Jobs by state</h2>{_table("jobs", ("state", "jobs"), body)}</section>'


def _recent(rows: Sequence[ScanRow] | None) -> str:
    if rows is None:
        return ""
    if not rows:
        return '<section id="recent-scans"><h2>Recent scans</h2><p class="muted">No scans stored.</p></section>'
    body = [
        f'<tr class="scan" data-scan-id="{_e(r.scan_id)}"><td><code>{_e(r.scan_id)}</code></td>'
        f"<td>{_e(r.tool)}</td><td>{_e(r.target)}</td><td>{_e(r.principal)}</td><td>{_e(r.state)}</td>"
        f"<td>{_e(utc(r.created_at))}</td><td>{_e(utc(r.finished_at))}</td></tr>"
        for r in rows
    ]
    heads = ("scan id", "tool", "target", "principal", "state", "created", "finished")
    return f'<section id="recent-scans"><h2>Recent scans (newest first)</h2>{_table("scans", heads, body)}</section>'


def status_page(view: StatusView, states: Sequence[str]) -> str:
    reasons = "".join(f"<li>{_e(r)}</li>" for r in view.ready_reasons)
    resources = ", ".join(
        f'<span class="resource{" over" if used > limit else ""}" data-resource="{_e(name)}">'
        f"{_e(name)} {_e(f'{used:.0f}')} % (degraded above {_e(f'{limit:.0f}')} %)</span>"
        for name, (used, limit) in view.resources.items()
    )
    not_ready = f'<p>Not ready:</p><ul id="ready-reasons">{reasons}</ul>' if reasons else ""
    refused = ""
    if view.policy_refused is not None:
        at, rule = view.policy_refused
        refused = (
            f'<p id="policy-refused">Last reload refused {_e(utc(at))} (rule <code>{_e(rule)}</code>): '
            "the policy above stays in force.</p>"
        )
    body = (
        "<h1>mcp-scanner-appliance</h1>"
        f"{_viewer(view.viewer, view.can_log_in)}"
        f'<section id="health" data-status="{_e(view.status)}"><h2>Health</h2>'
        f"<p>{_badge(view.status, view.status)} <span class='muted'>as of {_e(utc(view.generated_at))}</span></p>"
        f'<p id="resources">{resources}</p>{not_ready}</section>'
        f'<section id="mode" data-mode="{_e(view.mode)}" data-transport="{_e(view.transport)}"><h2>Mode</h2>'
        f"<p>Privilege mode <code>{_e(view.mode)}</code>, transport <code>{_e(view.transport)}</code></p></section>"
        f"{_tools(view.tools)}"
        f"{_breakers(view.breakers)}"
        f"{_jobs(view.job_counts, states)}"
        f"{_recent(view.recent)}"
        f'<section id="policy"><h2>Scope policy</h2><p>Source <code id="policy-source">{_e(view.policy_source)}</code>'
        f', loaded <span id="policy-loaded">{_e(utc(view.policy_loaded_at))}</span></p>{refused}</section>'
    )
    return document("mcp-scanner-appliance status", body)
