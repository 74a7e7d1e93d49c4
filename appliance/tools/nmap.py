"""nmap_scan: request model, argv builder and result assembly."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.errors import ValidationError
from appliance.parsers.nmap_xml import nmap_progress, parse_nmap_xml
from appliance.policy.flags import NMAP_ALLOWED, NMAP_DENIED, check_extra_args
from appliance.policy.nse import nmap_datadir
from appliance.policy.ports import check_ports
from appliance.policy.targets import check_target
from appliance.results import NmapResult
from appliance.runner import RunResult
from appliance.tools.arguments import WAIT_SECONDS, PortsArgument
from appliance.tools.base import (
    PlanContext,
    ScanPlan,
    binary,
    check_timeout,
    report_fields,
    scanner_failed,
    summary_line,
)

TOOL = "nmap_scan"
DESCRIPTION = """Scan one lab host or CIDR block with nmap and get hosts -> ports -> services back.

Use it first to see what is listening. Costs: a `connect` scan of the default port set takes
seconds per host; `version` probes every open port (slower, much more traffic); `ping` only finds
live hosts (no ports). Targets outside the lab scope are refused before anything runs, with the
rule they broke; a hostname must be under an allowed lab suffix and is resolved and checked by
the appliance. Set dry_run to see the exact nmap command without running it."""


class NmapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(
        max_length=253,
        description="One IPv4 address (10.20.0.5), one CIDR block within the host limit (10.20.0.0/28), "
        "or one hostname under a lab suffix (web.lab.internal). No ranges, lists or spaces.",
    )
    ports: PortsArgument | None = Field(
        default=None,
        description="Ports like '22,80,443' or '8000-8100' (a number or a list of numbers works too). "
        "Omit for the policy's default top ports. "
        "More ports cost more time; not allowed with scan_type 'ping'.",
    )
    scan_type: Literal["connect", "syn", "version", "ping"] = Field(
        default="connect",
        description="connect: full TCP connect (default, no privileges). syn: half-open (needs raw mode). "
        "version: connect + service/version detection (slower). ping: host discovery only.",
    )
    timing: int = Field(default=3, ge=0, le=5, description="nmap -T template; 3 is normal, 4 faster. Policy-bounded.")
    scripts: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Safe NSE scripts from the policy allowlist, e.g. ['http-title', 'ssl-cert']. No arguments.",
    )
    extra_args: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Extra allowlisted flags, e.g. ['-Pn', '--open', '--max-retries', '2']. File output, "
        "spoofing, extra targets and script arguments are always refused.",
    )
    timeout_seconds: int | None = Field(
        default=None, ge=1, le=86400, description="Time budget; the policy caps it. Partial results on expiry."
    )
    wait_seconds: int | None = WAIT_SECONDS
    dry_run: bool = Field(default=False, description="Only check and show the argv; start nothing.")


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
        env={"NMAP_PRIVILEGED": "1"} if raw else {},
        progress_stream="stdout",
        progress=nmap_progress,
    )


def finish(plan: ScanPlan, request_id: str, run: RunResult | None) -> NmapResult:
    if run is None:
        return NmapResult(**report_fields(plan, request_id, None))
    parsed = parse_nmap_xml(run.stdout)
    if run.exit_code not in (0, None) and not parsed.hosts:
        raise scanner_failed(plan, run)
    return NmapResult(**report_fields(plan, request_id, run), hosts=parsed.hosts)


def summarize(result: NmapResult) -> str:
    up = [h for h in result.hosts if h.status == "up"]
    open_ports = [f"{h.address}:{p.port}/{p.service or '?'}" for h in up for p in h.ports if p.state == "open"]
    found = f"{len(up)} host(s) up; open: {', '.join(open_ports) if open_ports else 'none'}."
    return summary_line(result, found if not result.dry_run else " ".join(result.argv))
