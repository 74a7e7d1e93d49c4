#!/usr/bin/env python3
"""`appliance serve` that, once its transport is ready (the "ready" line), writes one JSON line
on stderr naming which of the modules given as arguments are loaded at that moment."""

import json
import sys

from appliance import cli, startup

watched = sys.argv[1:]
report = startup.StartupClock.report


def report_and_list_modules(self: startup.StartupClock, transport: str) -> None:
    report(self, transport)
    loaded = [name for name in watched if name in sys.modules]
    print(json.dumps({"loaded_at_ready": loaded}), file=sys.stderr, flush=True)


startup.StartupClock.report = report_and_list_modules  # type: ignore[method-assign]
sys.exit(cli.main(["serve"]))
