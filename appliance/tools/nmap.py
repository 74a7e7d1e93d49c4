"""nmap_scan: request model, argv builder and result assembly."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.errors import ValidationError
from appliance.parsers.nmap_xml import NmapStream, nmap_progress
from appliance.policy.flags import NMAP_ALLOWED, NMAP_DENIED, check_extra_args
from appliance.policy.nse import nmap_datadir
from appliance.policy.ports import check_ports
from appliance.policy.targets import check_target
from appliance.results import NmapResult
from appliance.runner import RunResult
from appliance.tools.arguments import ENGAGEMENT, WAIT_SECONDS, PortsArgument
from appliance.tools.base import (
    FindingStream,
    PlanContext,
    ScanPlan,
    binary,
    check_timeout,
    fed_stream,
    report_fields,
    scanner_failed,
    summary_line,
)

TOOL = "nmap_scan"
DESCRIPTION = """Scan one lab host or CIDR block with nmap: hosts -> open ports -> services.

Use it first to see what is listening. `connect` on the default ports takes seconds per host;
`version` probes each open port (slower, more traffic); `ping` finds live hosts only. Targets
outside the lab scope are refused before anything runs, naming the rule; hostnames must be under
a lab suffix and are resolved by the appliance. dry_run shows the exact command."""


class NmapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(
        max_length=253,
        description="One IPv4 address, CIDR block (host limit applies) or lab hostname: 10.20.0.5, 10.20.0.0/28, "
        "web.lab.internal.",
    )
    ports: PortsArgument | None = Field(
        default=None,
        description="'22,80,443', '8000-8100', a number or a list. Default: the policy's top ports. Not with ping.",
    )
    scan_type: Literal["connect", "syn", "version", "ping"] = Field(
        default="connect",
        description="connect (default); syn: half-open, raw mode only; version: + service detection (slower); "
        "ping: hosts only.",
    )
    timing: int = Field(default=3, ge=0, le=5, description="nmap -T template; policy-bounded.")
    scripts: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="NSE scripts from the policy allowlist, e.g. ['http-title']; no arguments.",
    )
    extra_args: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Allowlisted flags, e.g. ['-Pn', '--open']; file output, spoofing and extra targets are refused.",
    )
    timeout_seconds: int | None = Field(
        default=None, ge=1, le=86400, description="Time budget (policy-capped); partial result on expiry."
    )
    wait_seconds: int | None = WAIT_SECONDS
    engagement: str | None = ENGAGEMENT
    dry_run: bool = Field(default=False, description="Check and show the argv only.")


SCAN_FLAGS: dict[str, tuple[str, ...]] = {
    "connect": ("-sT",),
    "syn": ("-sS",),
    "version": ("-sT", "-sV"),
    "ping": ("-sn",),
}


async def plan(request: NmapRequest, ctx: PlanContext) -> ScanPlan:
    rules = ctx.policy.tools.nmap_scan
    raw = ctx.settings.privilege_mode == "raw"
    if request.scan_type == "syn" and not raw:
        raise ValidationError(
            "scan_type 'syn' needs raw sockets, and this appliance runs in connect mode",
            rule="scan_type_unavailable",
            recovery_suggestion="Use scan_type 'connect' (same ports, full handshakes) or a raw-mode deployment.",
        )
    if not rules.min_timing <= request.timing <= rules.max_timing:
        raise ValidationError(
            f"timing {request.timing} is outside the policy's {rules.min_timing}-{rules.max_timing}",
            rule="timing_out_of_bounds",
            recovery_suggestion=f"Use a timing from {rules.min_timing} to {rules.max_timing}.",
        )
    if request.scan_type == "ping" and (request.ports is not None or request.scripts):
        raise ValidationError(
            "a ping scan finds hosts only; it takes no ports or scripts",
            rule="ping_scan_options",
            recovery_suggestion="Drop ports and scripts, or use scan_type 'connect'.",
        )
    for script in request.scripts:
        if script not in rules.allowed_scripts:
            raise ValidationError(
                f"NSE script {script!r} is not on the policy allowlist",
                rule="script_not_allowed",
                recovery_suggestion=f"Allowed scripts: {', '.join(rules.allowed_scripts) or 'none'}.",
            )
    datadir = nmap_datadir(rules.allowed_scripts)
    if request.scan_type == "version" and datadir.problem is not None:
        raise ValidationError(
            f"version detection would run NSE scripts outside the allowlist ({datadir.problem})",
            rule="nse_allowlist_unenforceable",
            recovery_suggestion="Use scan_type 'connect' (named scripts still run). The operator can give the "
            "appliance a writable temporary directory, or allow every script nmap's data directory holds "
            "(the image ships exactly its default allowlist).",
        )
    max_ports = ctx.policy.limits.max_ports_per_call
    ports = check_ports(request.ports, max_ports) if request.ports is not None else None
    extra = check_extra_args(request.extra_args, NMAP_ALLOWED, NMAP_DENIED, ctx.policy, TOOL)
    timeout = check_timeout(request.timeout_seconds, ctx.policy)
    target = await check_target(request.target, ctx.scope, ctx.resolve)

    # No --noninteractive: it also silences --stats-every, and stdin is /dev/null anyway.
    argv = [binary(ctx.settings.nmap_path), "-n", "-oX", "-", "--stats-every", "2s"]
    # The server, not the caller, picks the privilege model; --unprivileged keeps a root host run
    # (developer mode) behaving like the zero-capability container.
    argv.append("--privileged" if raw else "--unprivileged")
    argv.extend(SCAN_FLAGS[request.scan_type])
    if request.scan_type != "ping":
        argv.extend(["-p", ports.text] if ports else ["--top-ports", str(min(rules.default_top_ports, max_ports))])
    argv.append(f"-T{request.timing}")
    # nmap writes a host only when its host group is done; a bounded group makes findings arrive
    # while a sweep runs (the flag table refuses the caller's own hostgroup flags).
    argv.extend(["--max-hostgroup", str(rules.max_hostgroup)])
    # The policy's rate is a cap on every scan, not only on the rates a caller names.
    if "--max-rate" not in extra:
        argv.extend(["--max-rate", str(rules.max_rate)])
    # Server-chosen (the flag table refuses --datadir from callers): without it -sV would run every
    # "version" script a host install has, allowed or not. See appliance.policy.nse.
    if datadir.path is not None:
        argv.extend(["--datadir", str(datadir.path)])
    if request.scripts:
        argv.extend(["--script", ",".join(request.scripts)])
    argv.extend(extra)
    if ":" in target.scan_arg:
        argv.append("-6")
    argv.append(target.scan_arg)
    return ScanPlan(
        tool=TOOL,
        target=target,
        argv=tuple(argv),
        timeout_seconds=timeout,
        arguments=request.model_dump(),
        findings=NmapStream,
        findings_stream="stdout",
        env={"NMAP_PRIVILEGED": "1"} if raw else {},
        progress_stream="stdout",  # --stats-every lines are inside the XML
        progress=nmap_progress,
    )


def finish(plan: ScanPlan, request_id: str, run: RunResult | None, stream: FindingStream | None = None) -> NmapResult:
    if run is None:
        return NmapResult(**report_fields(plan, request_id, None))
    found = fed_stream(plan, run, stream).fields()
    if run.exit_code not in (0, None) and not found["hosts"]:
        raise scanner_failed(plan, run)
    return NmapResult(**report_fields(plan, request_id, run), **found)


def summarize(result: NmapResult) -> str:
    up = [h for h in result.hosts if h.status == "up"]
    open_ports = [f"{h.address}:{p.port}/{p.service or '?'}" for h in up for p in h.ports if p.state == "open"]
    found = f"{len(up)} host(s) up; open: {', '.join(open_ports) if open_ports else 'none'}."
    return summary_line(result, found if not result.dry_run else " ".join(result.argv))
