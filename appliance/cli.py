"""The `appliance` command: serve, check (dry run), policy validate, version, config show, jobs, audit."""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.audit import AuditSink
from appliance.audit.chain import Chainer, load_key
from appliance.audit.verify import KeyNeeded, parse_head, verify
from appliance.config import DEFAULT_AUDIT_KEY_FILE, Settings, load_settings
from appliance.errors import ApplianceError, ConfigError, ExecutionError, NotFoundError
from appliance.jobs import operator
from appliance.jobs.export import FORMATS, export_json, export_nmap_xml
from appliance.jobs.model import STATES
from appliance.jobs.store import JobFilter, JobStore
from appliance.jobs.views import summary_of
from appliance.logs import configure_logging
from appliance.policy.netinfo import read_network_facts
from appliance.policy.store import PolicyStore, build_snapshot
from appliance.service import ScanService
from appliance.startup import StartupClock
from appliance.tools import TOOLS
from appliance.tools.arguments import parse_arguments
from appliance.tracing.export import start_export

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_PRIVILEGES = 3
# The sidecar answers /livez from the event loop at once; a slow answer means a stuck loop.
HEALTH_PROBE_TIMEOUT_SECONDS = 3
# `version` asks each scanner for its version; none takes more than a fraction of a second.
VERSION_PROBE_TIMEOUT_SECONDS = 5
# `jobs cancel --wait`: the appliance looks every second; a minute means it is not there.
MAX_CANCEL_WAIT_SECONDS = 60


def _print(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2))


def _refusal(error: ApplianceError) -> dict[str, Any]:
    return {
        "verdict": "refused",
        "error_type": error.error_type,
        "rule": error.rule,
        "message": error.message,
        "recovery_suggestion": error.recovery_suggestion,
    }


def _service(settings: Settings) -> ScanService:
    return ScanService(settings, PolicyStore(settings.policy_path), AuditSink.from_settings(settings))


def cmd_serve(args: argparse.Namespace) -> int:
    from appliance.app import Appliance  # the SDK import costs ~0.5 s; only serve needs it

    clock = StartupClock.of_process()
    clock.mark("imports")
    # What the imports built lives as long as the process: frozen, no collection walks it again.
    gc.freeze()
    gc.enable()  # off for the imports (appliance.__main__)
    given = {"transport": args.transport, "host": args.host, "port": args.port, "role": args.role}
    overrides = {k: v for k, v in given.items() if v}
    settings = load_settings(**overrides)
    configure_logging(settings.log_level)
    # The OTEL_* variables are the OpenTelemetry SDK's (the one exception to reading settings
    # only through appliance.config; README: Traces): nothing is imported or sent without them.
    export = start_export(os.environ, settings)

    async def serve() -> int:
        return await Appliance(settings, clock=clock).run()

    try:
        code = asyncio.run(serve())
    finally:
        if export is not None:
            export.shutdown()  # bounded: a dead collector does not hold the exit (SHUTDOWN_SECONDS)
    # Everything is written and closed (audit, store, streams). What is left is the interpreter's
    # teardown, whose garbage collections walk every object alive (about 0.5 s of CPU, most of
    # an exit); freezing them skips those walks, finalizers and atexit handlers still run.
    gc.freeze()
    return code


def cmd_health(args: argparse.Namespace) -> int:
    """The container HEALTHCHECK: is the sidecar's /livez answering? (No curl in the image.)"""
    import ssl
    import urllib.error  # urllib.request and its email parser: only this command needs them
    import urllib.request

    settings = load_settings()
    host = "127.0.0.1" if settings.health_host in ("0.0.0.0", "::") else settings.health_host  # noqa: S104
    scheme = "http" if settings.tls_cert_file is None else "https"
    url = f"{scheme}://{host}:{settings.health_port}/{'livez' if args.probe else 'healthz'}"
    request = urllib.request.Request(url)  # noqa: S310 (http or https, built above)
    # Over TLS the probe trusts exactly the appliance's own certificate (appliance.tls).
    context: ssl.SSLContext | None = None
    if settings.tls_cert_file is not None:
        from appliance.tls import pinned_context

        try:
            context = pinned_context(settings.tls_cert_file)
        except (OSError, ssl.SSLError) as exc:
            print(json.dumps({"ok": False, "url": url, "reason": f"certificate: {exc}"}), file=sys.stderr)
            return EXIT_REFUSED
    if settings.health_token is not None:
        request.add_header("Authorization", f"Bearer {settings.health_token.get_secret_value()}")
    try:
        with urllib.request.urlopen(  # noqa: S310
            request, timeout=HEALTH_PROBE_TIMEOUT_SECONDS, context=context
        ) as response:
            body = response.read().decode()
    except (OSError, urllib.error.URLError) as exc:
        print(json.dumps({"ok": False, "url": url, "reason": str(exc)}), file=sys.stderr)
        return EXIT_REFUSED
    if not args.probe:
        print(body)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from appliance.demo import run_demo  # a client; the server side never imports it

    token = Path(args.token_file).read_text(encoding="utf-8").strip()
    ca_file = None if args.ca_file is None else Path(args.ca_file)
    return asyncio.run(run_demo(args.url, token, args.target, args.ports, args.wait, ca_file))


def cmd_check(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging("WARNING")
    spec = TOOLS.get(args.tool)
    if spec is None:
        print(f"unknown tool {args.tool!r}; tools: {', '.join(TOOLS)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        arguments = json.loads(args.args_json)
    except json.JSONDecodeError as exc:
        print(f"--args-json is not JSON: {exc}", file=sys.stderr)
        return EXIT_USAGE
    service = _service(settings)
    try:
        request = parse_arguments(spec.request_model, arguments)
        plan = asyncio.run(service.check(spec, request))
    except ApplianceError as exc:
        _print({"tool": spec.name, **_refusal(exc)})
        return EXIT_REFUSED
    _print(
        {
            "tool": spec.name,
            "verdict": "allowed",
            "rule": None,
            "target": plan.target.requested,
            "scanned_address": plan.target.scan_arg,
            "argv": list(plan.argv),
            "timeout_seconds": plan.timeout_seconds,
        }
    )
    return EXIT_OK


def cmd_policy_networkpolicy(args: argparse.Namespace) -> int:
    """The Kubernetes NetworkPolicy of a scope policy, as YAML on stdout; a refusal on stderr."""
    import yaml

    from appliance.policy.model import load_policy
    from appliance.policy.networkpolicy import Endpoint, PodEndpoint, network_policy, pods_of

    try:
        document = network_policy(
            load_policy(Path(args.file)),
            pod_cidrs=args.pod_cidr,
            service_cidrs=args.service_cidr,
            egress=[Endpoint.parse(text) for text in args.egress],
            egress_pods=[PodEndpoint.parse(text) for text in args.egress_pods],
            pods=pods_of(args.role, args.segment),
            namespace=args.namespace,
        )
    except ApplianceError as exc:
        print(json.dumps({"file": args.file, **_refusal(exc)}), file=sys.stderr)
        return EXIT_REFUSED
    print(f"# Generated by: appliance policy networkpolicy {args.file} (do not edit; regenerate)")
    print(yaml.safe_dump(document, sort_keys=False), end="")
    return EXIT_OK


def cmd_policy_validate(args: argparse.Namespace) -> int:
    try:
        snapshot = build_snapshot(Path(args.file), read_network_facts())
    except ApplianceError as exc:
        _print({"file": args.file, "valid": False, **_refusal(exc)})
        return EXIT_REFUSED
    policy = snapshot.policy
    converted: dict[str, object] = {}
    if snapshot.file_version != policy.version:
        # What the file means, in the layout it should be rewritten in.
        converted = {
            "file_version": snapshot.file_version,
            "moved_keys": {moved.old: moved.new for moved in snapshot.moved},
            "converted_policy": policy.model_dump(mode="json", by_alias=True),
        }
    _print(
        {
            "file": args.file,
            "valid": True,
            "version": policy.version,
            **converted,
            "allow_networks": policy.scope.allow_networks,
            "allow_hostname_suffixes": policy.scope.allow_hostname_suffixes,
            "insecure_allow_loopback": policy.scope.insecure_allow_loopback,
            "denied_ranges": [f"{net} ({rule})" for net, rule in snapshot.scope.denied],
            "tools_enabled": [name for name in TOOLS if getattr(policy.tools, name).enabled],
            "concurrency": policy.limits.concurrency.model_dump(mode="json", by_alias=True),
            # None: no engagements (every principal has the global scope).
            "engagements": None
            if policy.engagements is None
            else [{"name": e.name, **e.window.model_dump(), "tools": sorted(e.tools)} for e in policy.engagements],
        }
    )
    return EXIT_OK


def _scanner_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=VERSION_PROBE_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc.__class__.__name__})"
    text = (done.stdout or done.stderr).decode(errors="replace").strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), "unknown")


def cmd_version(args: argparse.Namespace) -> int:
    settings = load_settings()
    from importlib.metadata import version

    _print(
        {
            "appliance": __version__,
            "mcp_sdk": version("mcp"),
            "python": sys.version.split()[0],
            "nmap": _scanner_version([str(settings.nmap_path), "--version"]),
            "masscan": _scanner_version([str(settings.masscan_path), "--version"]),
            "gobuster": _scanner_version([str(settings.gobuster_path), "version"]),
        }
    )
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    _print(load_settings().redacted())
    return EXIT_OK


JobsCommand = Callable[[argparse.Namespace, JobStore, Settings], int]


def _on_store(command: JobsCommand) -> Callable[[argparse.Namespace], int]:
    """Open the appliance's store for a `jobs` command and close it after: the SQLite store, or on
    a fleet appliance (APPLIANCE_ROLE front or segment) the fleet's JetStream store. A SQLite
    failure (locked past the busy timeout, a broken file) becomes a refusal that names the store."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        settings = load_settings()
        if settings.role != "standalone":
            from appliance.fleet.roles import connect_store  # nats-py: fleet roles only

            bus, fleet_store = connect_store(settings)
            try:
                return command(args, fleet_store, settings)
            finally:
                bus.close()
        store = operator.open_store(args.data_dir, settings.data_dir)
        try:
            return command(args, store, settings)
        except sqlite3.Error as exc:
            raise ExecutionError(
                f"the job store {store.path} failed: {exc}",
                rule="store_unreadable",
                recovery_suggestion="Retry; if it persists, check the data volume and the appliance's log.",
            ) from exc
        finally:
            store.close()

    return run


@_on_store
def cmd_jobs_list(args: argparse.Namespace, store: JobStore, settings: Settings) -> int:
    if args.cursor is not None:
        operator.checked_scan_id(args.cursor)  # a cursor is the last scan id a page showed
    where = JobFilter(
        principal=args.principal,
        tool=args.tool,
        target=args.target,
        states=None if args.status is None else frozenset({args.status}),
    )
    page = store.page(where, args.limit, args.cursor)
    if args.json:
        scans = [{**summary_of(job), "principal": job.principal} for job in page.jobs]
        _print({"scans": scans, "next_cursor": page.next_cursor})
        return EXIT_OK
    print(operator.table(page.jobs) if page.jobs else "no scans match")
    if page.next_cursor is not None:
        print(f"more: appliance jobs list --cursor {page.next_cursor} (with the same filters)")
    return EXIT_OK


@_on_store
def cmd_jobs_show(args: argparse.Namespace, store: JobStore, settings: Settings) -> int:
    job = operator.find(store, args.scan_id)
    if not args.raw:
        _print(operator.shown(job))
        return EXIT_OK
    raw = store.raw(job.scan_id)
    if raw is None:
        raise NotFoundError(
            f"scan {job.scan_id} ({job.state}) has no stored raw output",
            rule="raw_output_not_stored",
            recovery_suggestion=f"A scan that never ran stores none; see `appliance jobs show {job.scan_id}`.",
        )
    sys.stdout.buffer.write(raw)
    sys.stdout.flush()
    return EXIT_OK


@_on_store
def cmd_jobs_cancel(args: argparse.Namespace, store: JobStore, settings: Settings) -> int:
    audit = AuditSink.from_settings(settings)
    try:
        _print(operator.cancel(store, audit, args.scan_id, pickup_seconds=args.wait, force=args.force))
    finally:
        audit.close()
    return EXIT_OK


@_on_store
def cmd_jobs_export(args: argparse.Namespace, store: JobStore, settings: Settings) -> int:
    job = operator.find(store, args.scan_id)
    body = export_json(job) if args.format == "json" else export_nmap_xml(job, store.raw(job.scan_id))
    sys.stdout.buffer.write(body)
    sys.stdout.flush()
    return EXIT_OK


@_on_store
def cmd_jobs_purge(args: argparse.Namespace, store: JobStore, settings: Settings) -> int:
    doomed = operator.purge_candidates(
        store,
        now=time.time(),
        older_than_days=args.older_than,
        principal=args.principal,
        states=args.status,
    )
    scope = {"older_than_days": args.older_than, "principal": args.principal, "status": args.status}
    if not args.yes:
        message = f"would delete {len(doomed)} finished scan(s); nothing deleted: run again with --yes"
        _print({"matched": len(doomed), "deleted": 0, **scope, "message": message})
        return EXIT_OK
    audit = AuditSink.from_settings(settings)
    try:
        # The trail first: a purge the trail does not show does not happen.
        audit.write({"event": "jobs_purged", "scans": len(doomed), "by": operator.requested_by(), **scope})
    finally:
        audit.close()
    deleted = store.delete(job.scan_id for job in doomed)
    _print({"matched": len(doomed), "deleted": deleted, **scope, "message": f"deleted {deleted} finished scan(s)"})
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 (intact, the head printed) or 1 (the first problem); 2 when a keyed chain has no key."""
    if args.key_file is not None:
        key = load_key(args.key_file, default=DEFAULT_AUDIT_KEY_FILE)
    else:
        key = load_key(load_settings().audit_key_file, default=DEFAULT_AUDIT_KEY_FILE)
    try:
        report = verify(args.files, Chainer(key), args.expect_head)
    except KeyNeeded as exc:
        print(json.dumps({"intact": None, "message": str(exc)}), file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(json.dumps({"intact": None, "message": f"{exc.filename}: {exc.strerror}"}), file=sys.stderr)
        return EXIT_USAGE
    _print(report.as_json())
    return EXIT_OK if report.intact else EXIT_REFUSED


def _head(text: str) -> object:
    try:
        return parse_head(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _audit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="the audit trail (verify its chain)")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    check = audit_sub.add_parser(
        "verify", help="verify audit files as one chain (oldest first: FILE.2 FILE.1 FILE); exit 1 at a break"
    )
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.add_argument(
        "--expect-head", type=_head, metavar="SEQ:HASH", help="a head logged or scraped earlier: catches a cut tail"
    )
    check.add_argument(
        "--key-file", type=Path, help="the chain's HMAC key (default: APPLIANCE_AUDIT_KEY_FILE when present)"
    )
    check.set_defaults(func=cmd_audit_verify)


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r}: give a number >= 0")
    return value


def _wait(text: str) -> float:
    value = _non_negative(text)
    if value > MAX_CANCEL_WAIT_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r}: give at most {MAX_CANCEL_WAIT_SECONDS} seconds")
    return value


def _limit(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 to 1000")
    return value


def _jobs_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    jobs = sub.add_parser("jobs", help="the operator's view of stored scans (list, show, cancel, export, purge)")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--data-dir",
        type=Path,
        help="the appliance's data directory (default: APPLIANCE_DATA_DIR, then the ephemeral store)",
    )

    listing = jobs_sub.add_parser("list", parents=[where], help="stored scans of every principal, newest first")
    listing.add_argument("--principal", help="only this principal's scans")
    listing.add_argument("--tool", choices=list(TOOLS))
    listing.add_argument("--target", help="as the scan named it (case and a trailing dot ignored)")
    listing.add_argument("--status", choices=list(STATES))
    listing.add_argument("--limit", type=_limit, default=50, help="scans per page (1-1000, default 50)")
    listing.add_argument("--cursor", help="continue after this scan id (the 'more:' line of the previous page)")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    listing.set_defaults(func=cmd_jobs_list)

    show = jobs_sub.add_parser("show", parents=[where], help="one scan's record: request, argv, events, result")
    show.add_argument("scan_id")
    show.add_argument("--raw", action="store_true", help="print the stored raw scanner output instead")
    show.set_defaults(func=cmd_jobs_show)

    cancel = jobs_sub.add_parser("cancel", parents=[where], help="ask the running appliance to cancel a scan")
    cancel.add_argument("scan_id")
    cancel.add_argument(
        "--wait",
        type=_wait,
        default=operator.CANCEL_PICKUP_SECONDS,
        help=f"seconds to wait for the appliance to take the request (default {operator.CANCEL_PICKUP_SECONDS:g})",
    )
    cancel.add_argument(
        "--force", action="store_true", help="when no running appliance takes it, mark the scan cancelled here"
    )
    cancel.set_defaults(func=cmd_jobs_cancel)

    export = jobs_sub.add_parser("export", parents=[where], help="a scan as JSON or nmap XML, to stdout")
    export.add_argument("scan_id")
    export.add_argument("--format", choices=FORMATS, default="json")
    export.set_defaults(func=cmd_jobs_export)

    purge = jobs_sub.add_parser("purge", parents=[where], help="delete finished scans (dry run without --yes)")
    purge.add_argument("--older-than", type=_non_negative, metavar="DAYS", help="finished more than DAYS days ago")
    purge.add_argument("--principal", help="only this principal's scans")
    purge.add_argument("--status", action="append", choices=sorted(STATES), help="only this state (repeatable)")
    purge.add_argument("--yes", action="store_true", help="delete; without it, only say how many would go")
    purge.set_defaults(func=cmd_jobs_purge)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="appliance", description="MCP scanner appliance")
    sub = top.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the MCP server")
    serve.add_argument("--transport", choices=["stdio", "http"], help="default: stdio (APPLIANCE_TRANSPORT)")
    serve.add_argument(
        "--role",
        choices=["standalone", "front", "segment"],
        help="default: standalone (APPLIANCE_ROLE); front and segment form a fleet on NATS (README: Fleet)",
    )
    serve.add_argument("--host", help="HTTP listen address (APPLIANCE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP listen port (APPLIANCE_PORT, default 8080)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="dry run: verdict, rule and exact argv as JSON; exit 1 when refused")
    check.add_argument("tool", help=f"one of: {', '.join(TOOLS)}")
    check.add_argument("--args-json", required=True, help="the tool arguments as a JSON object")
    check.set_defaults(func=cmd_check)

    policy = sub.add_parser("policy", help="policy commands")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    validate = policy_sub.add_parser("validate", help="validate a policy file; exit 1 when invalid")
    validate.add_argument("file")
    validate.set_defaults(func=cmd_policy_validate)
    netpol = policy_sub.add_parser(
        "networkpolicy", help="print the Kubernetes NetworkPolicy of a scope policy (README: Kubernetes)"
    )
    netpol.add_argument("file")
    netpol.add_argument("--pod-cidr", action="append", default=[], help="the cluster's pod range (repeatable)")
    netpol.add_argument("--service-cidr", action="append", default=[], help="the cluster's service range (repeatable)")
    netpol.add_argument(
        "--egress", action="append", default=[], metavar="CIDR:PORT", help="also allow (identity provider, NATS, OTLP)"
    )
    netpol.add_argument(
        "--egress-pods",
        action="append",
        default=[],
        metavar="KEY=VALUE[,...]:PORT",
        help="also allow these pods of the namespace (NATS in the cluster), e.g. app.kubernetes.io/name=nats:4222",
    )
    netpol.add_argument(
        "--role",
        default="standalone",
        help="whose pods: standalone (default), front (no scope egress) or segment (health ingress only)",
    )
    netpol.add_argument("--segment", help="the segment of --role segment (its pods: Deployment segment-NAME)")
    netpol.add_argument("--namespace", help="metadata.namespace of the NetworkPolicy")
    netpol.set_defaults(func=cmd_policy_networkpolicy)

    sub.add_parser("version", help="versions of the appliance, the SDK and the scanners").set_defaults(func=cmd_version)
    demo = sub.add_parser("demo", help="scan the demo lab target through a running appliance (HTTP)")
    demo.add_argument("--url", default="http://127.0.0.1:8080/mcp")
    demo.add_argument("--token-file", required=True)
    demo.add_argument("--target", default="web.lab.internal")
    demo.add_argument("--ports", default="8080")
    demo.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the appliance to answer")
    demo.add_argument("--ca-file", help="PEM CA certificate that signed the appliance's (https URLs)")
    demo.set_defaults(func=cmd_demo)

    health = sub.add_parser("health", help="query the running appliance's sidecar")
    health.add_argument("--probe", action="store_true", help="liveness only, for HEALTHCHECK: exit 0 or 1")
    health.set_defaults(func=cmd_health)

    config = sub.add_parser("config", help="configuration commands")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_sub.add_parser("show", help="effective settings, secrets redacted").set_defaults(func=cmd_config_show)
    _jobs_parser(sub)
    _audit_parser(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.func is not cmd_serve:
        gc.enable()  # off for the imports (appliance.__main__); serve turns it on after its own
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(json.dumps(_refusal(exc)), file=sys.stderr)
        return EXIT_PRIVILEGES if exc.rule == "privileges_exceed_policy" else EXIT_USAGE
    except ApplianceError as exc:  # a policy that does not load: the server cannot start
        print(json.dumps(_refusal(exc)), file=sys.stderr)
        return EXIT_REFUSED
    return code


if __name__ == "__main__":
    sys.exit(main())
