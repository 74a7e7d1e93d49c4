"""gobuster_scan: request model, argv builder and result assembly."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace
from functools import partial
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.errors import NotFoundError, ValidationError
from appliance.parsers.gobuster_text import GobusterStream
from appliance.policy.flags import GOBUSTER_ALLOWED, GOBUSTER_DENIED, check_extra_args
from appliance.policy.model import RESOLVER
from appliance.policy.targets import CheckedTarget, check_address, check_hostname, check_target
from appliance.policy.urls import parse_lab_url
from appliance.results import GobusterResult
from appliance.runner import RunResult
from appliance.tools.arguments import ENGAGEMENT, WAIT_SECONDS
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

TOOL = "gobuster_scan"
DESCRIPTION = """Brute-force paths (dir), virtual hosts (vhost) or lab subdomains (dns) with gobuster.

Use dir mode on a web service nmap_scan found: reachable paths with status and size. One HTTP
request per wordlist entry (times extensions); threads are policy-capped. Wordlists are names:
'common' (web paths), 'subdomains' (vhost, dns). Redirects are never followed. dns mode asks only
the lab resolver the policy names."""

WORDLIST_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
EXTENSION = re.compile(r"[a-z0-9]{1,8}")
QUIET = ("-q", "--no-progress", "--no-color")  # no banner, no progress bar, no escape codes on stdout


class GobusterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["dir", "vhost", "dns"] = Field(
        default="dir", description="dir: paths on a web server. vhost: Host-header names. dns: lab subdomains."
    )
    target: str = Field(
        max_length=2048,
        description="dir/vhost: a URL such as http://web.lab.internal:8080/ (no user info, query or fragment). "
        "dns: a lab domain such as lab.internal.",
    )
    wordlist: str = Field(
        default="common", max_length=64, description="Name of a bundled wordlist: common, subdomains."
    )
    extensions: list[str] = Field(
        default_factory=list, max_length=8, description="dir mode: file extensions to try, e.g. ['php', 'txt']."
    )
    threads: int | None = Field(default=None, ge=1, le=1000, description="Parallel requests; policy-capped.")
    extra_args: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Allowlisted flags, e.g. ['-k', '--timeout', '5s', '-s', '200,301']. Never -r, -o, --proxy.",
    )
    timeout_seconds: int | None = Field(default=None, ge=1, le=86400, description="Time budget (policy-capped).")
    wait_seconds: int | None = WAIT_SECONDS
    engagement: str | None = ENGAGEMENT
    dry_run: bool = Field(default=False, description="Check and show the argv only.")


def _wordlist(name: str, ctx: PlanContext) -> str:
    path = ctx.settings.wordlist_dir / f"{name}.txt"
    if not WORDLIST_NAME.fullmatch(name) or not path.is_file():
        known = sorted(p.stem for p in ctx.settings.wordlist_dir.glob("*.txt"))
        raise NotFoundError(
            f"no bundled wordlist named {name!r} (wordlists are chosen by name, never by path)",
            rule="wordlist_unknown",
            recovery_suggestion=f"Bundled wordlists: {', '.join(known) or 'none'}.",
        )
    return str(path)


def _threads(request: GobusterRequest, ctx: PlanContext) -> int:
    rules = ctx.policy.tools.gobuster_scan
    threads = request.threads if request.threads is not None else rules.default_threads
    if threads > rules.max_threads:
        raise ValidationError(
            f"threads {threads} exceeds the policy cap of {rules.max_threads}",
            rule="threads_out_of_bounds",
            recovery_suggestion=f"Use at most {rules.max_threads} threads.",
        )
    return threads


def _resolver(ctx: PlanContext) -> str:
    configured = ctx.policy.tools.gobuster_scan.dns_resolver
    if configured is None:
        raise ValidationError(
            "dns mode needs a lab resolver named in the policy, and this policy names none",
            rule="dns_mode_requires_resolver",
            recovery_suggestion="Use dir or vhost mode, or ask the operator to set tools.gobuster_scan.dns_resolver.",
        )
    match = RESOLVER.fullmatch(configured)
    assert match is not None  # the policy model validated the form
    try:
        check_address(ipaddress.IPv4Address(match["ip"]), ctx.scope)
    except ValidationError as exc:
        raise ValidationError(
            f"the policy's dns_resolver {configured} is not in scope ({exc.rule})",
            rule="dns_resolver_out_of_scope",
            recovery_suggestion="The operator must name a resolver inside the lab scope.",
        ) from exc
    return configured


async def plan(request: GobusterRequest, ctx: PlanContext) -> ScanPlan:
    extensions = request.extensions
    for extension in extensions:
        if not EXTENSION.fullmatch(extension):
            raise ValidationError(
                f"extension {extension!r} is not 1-8 lower-case letters or digits",
                rule="extension_invalid",
                recovery_suggestion="Give extensions without dots, e.g. ['php', 'txt'].",
            )
    if extensions and request.mode != "dir":
        raise ValidationError(
            "extensions apply to dir mode only", rule="extension_invalid", recovery_suggestion="Drop extensions."
        )
    wordlist = _wordlist(request.wordlist, ctx)
    threads = _threads(request, ctx)
    extra = check_extra_args(
        request.extra_args, GOBUSTER_ALLOWED[request.mode], GOBUSTER_DENIED[request.mode], ctx.policy, TOOL
    )
    timeout = check_timeout(request.timeout_seconds, ctx.policy)
    argv = [binary(ctx.settings.gobuster_path), request.mode]
    if request.mode == "dns":
        domain = check_hostname(request.target, ctx.scope.suffixes, allow_bare_suffix=True)
        argv.extend(["-d", domain, "-r", _resolver(ctx), "--show-ips"])
        checked = CheckedTarget(request.target, "hostname", domain, domain, (), 0)
    else:
        url = parse_lab_url(request.target)
        checked = await check_target(url.host, ctx.scope, ctx.resolve, allow_cidr=False)
        argv.extend(["-u", url.with_host(checked.scan_arg)])
        if request.mode == "dir" and checked.hostname is not None:
            # The scan goes to the checked address; the name travels only in the Host header.
            argv.extend(["-H", f"Host: {checked.hostname}"])
        if request.mode == "vhost":
            argv.append("--append-domain")
            if checked.hostname is not None:
                argv.extend(["--domain", checked.hostname])
        checked = replace(checked, requested=request.target)  # report the URL the caller gave
    argv.extend(["-w", wordlist, "-t", str(threads), *QUIET])
    if extensions:
        argv.extend(["-x", ",".join(extensions)])
    argv.extend(extra)
    return ScanPlan(
        tool=TOOL,
        target=checked,
        argv=tuple(argv),
        timeout_seconds=timeout,
        arguments=request.model_dump(),
        # Results on stdout; with --no-progress there is no progress to parse.
        findings=partial(GobusterStream, request.mode),
        findings_stream="stdout",
    )


def finish(
    plan: ScanPlan, request_id: str, run: RunResult | None, stream: FindingStream | None = None
) -> GobusterResult:
    mode: Literal["dir", "vhost", "dns"] = plan.arguments["mode"]
    if run is None:
        return GobusterResult(**report_fields(plan, request_id, None), mode=mode)
    found = fed_stream(plan, run, stream).fields()
    if run.exit_code not in (0, None) and not found["findings"]:
        raise scanner_failed(plan, run)
    return GobusterResult(**report_fields(plan, request_id, run), mode=mode, **found)


def summarize(result: GobusterResult) -> str:
    shown = [f"{f.value} ({f.status})" if f.status else f.value for f in result.findings[:20]]
    more = f" and {len(result.findings) - 20} more" if len(result.findings) > 20 else ""
    found = f"{len(result.findings)} found: {', '.join(shown) or 'none'}{more}."
    return summary_line(result, found if not result.dry_run else " ".join(result.argv))
