"""The `appliance` command: serve, check (dry run), policy validate, version, config show."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.audit import AuditSink
from appliance.config import Settings, load_settings
from appliance.errors import ApplianceError, ConfigError
from appliance.logs import configure_logging
from appliance.policy.netinfo import read_network_facts
from appliance.policy.store import PolicyStore, build_snapshot
from appliance.service import ScanService
from appliance.tools import TOOLS
from appliance.tools.arguments import parse_arguments

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_PRIVILEGES = 3
# The sidecar answers /livez from the event loop at once; a slow answer means a stuck loop.
HEALTH_PROBE_TIMEOUT_SECONDS = 3
# `version` asks each scanner for its version; none takes more than a fraction of a second.
VERSION_PROBE_TIMEOUT_SECONDS = 5


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
    return ScanService(settings, PolicyStore(settings.policy_path), AuditSink(settings.audit_path))


def cmd_serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in {"transport": args.transport, "host": args.host, "port": args.port}.items() if v}
    settings = load_settings(**overrides)
    configure_logging(settings.log_level)
    from appliance.app import Appliance  # the SDK import costs ~0.5 s; only serve needs it

    async def serve() -> int:
        return await Appliance(settings).run()

    return asyncio.run(serve())


def cmd_health(args: argparse.Namespace) -> int:
    """The container HEALTHCHECK: is the sidecar's /livez answering? (No curl in the image.)"""
    settings = load_settings()
    host = "127.0.0.1" if settings.health_host in ("0.0.0.0", "::") else settings.health_host  # noqa: S104
    url = f"http://{host}:{settings.health_port}/{'livez' if args.probe else 'healthz'}"
    request = urllib.request.Request(url)
    if settings.health_token is not None:
        request.add_header("Authorization", f"Bearer {settings.health_token.get_secret_value()}")
    try:
        with urllib.request.urlopen(request, timeout=HEALTH_PROBE_TIMEOUT_SECONDS) as response:  # noqa: S310
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
    return asyncio.run(run_demo(args.url, token, args.target, args.ports, args.wait))


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


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="appliance", description="MCP scanner appliance")
    sub = top.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the MCP server")
    serve.add_argument("--transport", choices=["stdio", "http"], help="default: stdio (APPLIANCE_TRANSPORT)")
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

    sub.add_parser("version", help="versions of the appliance, the SDK and the scanners").set_defaults(func=cmd_version)
    demo = sub.add_parser("demo", help="scan the demo lab target through a running appliance (HTTP)")
    demo.add_argument("--url", default="http://127.0.0.1:8080/mcp")
    demo.add_argument("--token-file", required=True)
    demo.add_argument("--target", default="web.lab.internal")
    demo.add_argument("--ports", default="8080")
    demo.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the appliance to answer")
    demo.set_defaults(func=cmd_demo)

    health = sub.add_parser("health", help="query the running appliance's sidecar")
    health.add_argument("--probe", action="store_true", help="liveness only, for HEALTHCHECK: exit 0 or 1")
    health.set_defaults(func=cmd_health)

    config = sub.add_parser("config", help="configuration commands")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_sub.add_parser("show", help="effective settings, secrets redacted").set_defaults(func=cmd_config_show)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
