"""masscan_scan: request model, argv builder and result assembly."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field

from appliance.errors import ValidationError
from appliance.parsers.masscan_json import MasscanStream, masscan_progress
from appliance.policy.flags import MASSCAN_ALLOWED, MASSCAN_DENIED, check_extra_args
from appliance.policy.ports import check_ports
from appliance.policy.targets import check_target, parse_target
from appliance.results import MasscanResult
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

TOOL = "masscan_scan"
DESCRIPTION = """Fast SYN sweep of one lab CIDR block (or address) for open TCP ports with masscan.

Find open ports across many hosts, then nmap_scan the hits for services. Raw packets: raw mode
only. `rate` is packets per second, policy-capped and shared by all running masscan calls."""

# How long masscan waits for late replies after sending, unless the caller asks otherwise:
# its own default (10 s) is longer than a lab segment ever needs.
DEFAULT_WAIT_SECONDS = 2


class MasscanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(max_length=64, description="One IPv4 address or CIDR block (host limit applies).")
    ports: PortsArgument = Field(description="'22,80,443', '1-1024', a number or a list.")
    rate: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Packets per second; omit for the policy's low default."
    )
    extra_args: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Allowlisted flags: --wait N, --retries N, --shard X/Y with --seed N (one part of a sweep).",
    )
    timeout_seconds: int | None = Field(default=None, ge=1, le=86400, description="Time budget (policy-capped).")
    wait_seconds: int | None = WAIT_SECONDS
    engagement: str | None = ENGAGEMENT
    dry_run: bool = Field(default=False, description="Check and show the argv only.")


async def plan(request: MasscanRequest, ctx: PlanContext) -> ScanPlan:
    rules = ctx.policy.tools.masscan_scan
    if ctx.settings.privilege_mode != "raw":
        raise ValidationError(
            "masscan sends raw packets, and this appliance runs in connect mode (no capabilities)",
            rule="tool_unavailable_in_connect_mode",
            recovery_suggestion="Use nmap_scan with scan_type 'connect', or ask for a raw-mode deployment.",
        )
    rate = request.rate if request.rate is not None else rules.default_rate
    if rate > rules.max_rate:
        raise ValidationError(
            f"rate {rate} pps exceeds the policy cap of {rules.max_rate}",
            rule="rate_out_of_bounds",
            recovery_suggestion=f"Use a rate of at most {rules.max_rate} packets per second.",
        )
    ports = check_ports(request.ports, ctx.policy.limits.max_ports_per_call)
    extra = check_extra_args(request.extra_args, MASSCAN_ALLOWED, MASSCAN_DENIED, ctx.policy, "masscan_scan")
    if "--shard" in extra and "--seed" not in extra:
        # Without a shared seed each shard randomises the order its own way: together they scan
        # some addresses twice and miss others.
        raise ValidationError(
            "masscan --shard needs --seed: shards of one sweep partition it only in the same random order",
            rule="masscan_shard_needs_seed",
            recovery_suggestion="Give every shard of the sweep the same seed, e.g. --shard 1/2 --seed 7 and "
            "--shard 2/2 --seed 7.",
        )
    timeout = check_timeout(request.timeout_seconds, ctx.policy)
    # Refuse names before any lookup: masscan scans addresses, and a lookup would leak the name.
    if parse_target(request.target).kind == "hostname":
        raise ValidationError(
            "masscan takes an address or CIDR block, not a hostname",
            rule="target_hostname_not_supported",
            recovery_suggestion="Give the lab address or block (nmap_scan resolves lab names).",
        )
    target = await check_target(request.target, ctx.scope, ctx.resolve)
    argv = [binary(ctx.settings.masscan_path), target.scan_arg, "-p", ports.text, "--rate", str(rate)]
    argv.extend(_link_options(target.scan_arg, ctx))
    if "--wait" not in extra:
        argv.extend(["--wait", str(min(DEFAULT_WAIT_SECONDS, rules.max_wait_seconds))])
    argv.extend(extra)
    argv.extend(["-oJ", "-"])
    return ScanPlan(
        tool=TOOL,
        target=target,
        argv=tuple(argv),
        timeout_seconds=timeout,
        arguments=request.model_dump(),
        findings=MasscanStream,
        findings_stream="stdout",  # -oJ -: records on stdout, the status line on stderr
        progress_stream="stderr",
        progress=masscan_progress,
        rate=rate,
    )


def _link_options(scan_arg: str, ctx: PlanContext) -> list[str]:
    """Adapter and next hop for an on-link target, derived from our own interfaces, never the caller.

    masscan sends from its own stack and picks the default route's interface and router MAC. A lab
    host on a directly attached subnet (a Docker internal network has no router at all) must be
    reached on that subnet's interface with the host's own MAC: `--router-ip <target>` makes
    masscan ARP the target itself. One MAC per call, so an on-link block cannot be swept.
    """
    network = ipaddress.ip_network(scan_arg)
    interface = ctx.facts.onlink_interface(network)
    if interface is None:
        return []  # routed: masscan's own default-route detection applies
    if network.num_addresses > 1:
        raise ValidationError(
            f"{scan_arg} is on the directly attached subnet of {interface}; masscan can reach one "
            "on-link host per call (it sends every packet to one MAC address)",
            rule="masscan_onlink_block",
            recovery_suggestion="Scan on-link hosts one address per call, or sweep the block with nmap_scan.",
        )
    return ["--adapter", interface, "--router-ip", str(network.network_address)]


def finish(
    plan: ScanPlan, request_id: str, run: RunResult | None, stream: FindingStream | None = None
) -> MasscanResult:
    if run is None:
        return MasscanResult(**report_fields(plan, request_id, None))
    found = fed_stream(plan, run, stream).fields()
    if run.exit_code not in (0, None) and not found["findings"]:
        raise scanner_failed(plan, run)
    return MasscanResult(**report_fields(plan, request_id, run), **found)


def summarize(result: MasscanResult) -> str:
    hits = [f"{f.ip}:{f.port}" for f in result.findings if f.status == "open"]
    found = f"open: {', '.join(hits) if hits else 'none'}." if not result.dry_run else " ".join(result.argv)
    return summary_line(result, found)
