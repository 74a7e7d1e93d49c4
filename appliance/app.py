"""The running appliance: wires the parts together and owns start-up, reload and shutdown.

Start: self-check, policy, scanners probed once, job recovery, transport; then, once the
first answer is out (stdio) or the port listens (HTTP), what that answer does not need: the
sidecar, the retention sweep, the file watch and the cancel-request poll (README: Start-up).
Reload (SIGHUP or a file change): policy and tokens, each swapped whole or not at all. Shutdown (SIGTERM, SIGINT, stdin
EOF): not ready at once, queued calls refused, running scans get the drain window and are then
stopped (they return partial results), streams closed, audit flushed, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance import __version__
from appliance.audit import AuditSink
from appliance.auth import BearerTokenVerifier, TokenSource
from appliance.config import EPHEMERAL_DATA_DIR, Settings
from appliance.errors import ApplianceError, ConfigError, ExecutionError
from appliance.health import Health, ScannerStatus, probe_scanner
from appliance.identity.oauth import auth_settings, jwt_verifier, oauth_resource
from appliance.jobs.manager import JobManager
from appliance.jobs.model import STATES, Job
from appliance.jobs.sqlite import open_store
from appliance.jobs.store import JobStore
from appliance.metrics import Metrics, ServingState
from appliance.policy.store import PolicyStore
from appliance.privileges import (
    excess_privileges,
    load_capability_policy,
    missing_privileges,
    read_privileges,
)
from appliance.reaper import reap_orphans_forever
from appliance.server import ScannerServer
from appliance.service import ScanService
from appliance.startup import StartupClock
from appliance.stdio import run_stdio
from appliance.tls import server_tls
from appliance.tools import TOOLS

if TYPE_CHECKING:  # imported when used: the stdio start-up needs neither uvicorn nor aiohttp
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from appliance.fleet.observe import FleetObserver
    from appliance.fleet.roles import FleetParts
    from appliance.fleet.seal import SealCheck, Sealer
    from appliance.fleet.worker import SegmentWorker
    from appliance.http import ActiveRequests, QuietUvicorn
    from appliance.identity.jwt import JwtVerifier

log = logging.getLogger(__name__)

# How long shutdown waits for stopped scans to hand back their partial results: the runner's
# SIGTERM grace (0.5 s) plus parsing, with room for a loaded machine. Usually a few milliseconds.
STOP_WAIT_SECONDS = 3.0
# How long shutdown waits for answers (results of stopped scans) to be written to their streams.
RESPONSES_WAIT_SECONDS = 1.0
# After the last answer, how long no request must arrive before the HTTP transport closes: a
# client's follow-up to a result (the SDK client's tools/list, tens of ms later) is still served.
RESPONSES_QUIET_SECONDS = 0.25
# How long shutdown waits for the transport to finish once told to stop.
TRANSPORT_STOP_SECONDS = 1.5
# Retention runs at start and this often (policy: retention, limits.concurrency.per_principal.stored_jobs).
SWEEP_INTERVAL_SECONDS = 60.0
# How often the store is asked for `appliance jobs cancel` requests (one primary-key read of a
# table that is empty but for pending requests); the CLI waits a few of these for a pickup.
CANCEL_POLL_SECONDS = 1.0
# The audit chain's head is logged and exported at start, stop and this often (issue 11): an
# operator who keeps these can prove with `appliance audit verify --expect-head` that no line
# before them was cut off the end.
AUDIT_HEAD_SECONDS = 300.0
VERSION_ARGS = {"nmap_scan": ("--version",), "masscan_scan": ("--version",), "gobuster_scan": ("version",)}
# Work the first answer does not need waits for it (on one CPU it would only delay it), but no
# longer than this after the transport starts: a client that initializes and then idles still
# gets its sidecar, sweep and watches.
DEFERRED_START_SECONDS = 1.0
# The first answer is written within a millisecond of being handed to the SDK's writer.
ANSWER_WRITE_SECONDS = 0.01
# What waits for the first answer, by name (the "ready" line's `deferred`).
DEFERRED_WORK = ("metrics", "sidecar", "retention_sweep", "policy_watch", "cancel_poll", "audit_head")


def privilege_verdict(settings: Settings) -> dict[str, Any]:
    """The self-check: what the process holds against what its mode allows."""
    held = read_privileges()
    rules = load_capability_policy(settings.capability_policy_path).modes[settings.privilege_mode]
    excess = excess_privileges(held, rules)
    return {
        "ok": not excess or not settings.enforce_privileges,
        "enforced": settings.enforce_privileges,
        "mode": settings.privilege_mode,
        "excess": excess,
        "missing": missing_privileges(held, rules),
        "held": held.describe(),
    }


class FileWatch:
    """Notices a replaced or edited file by inode, size and mtime (bind mounts emit no events)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = self._signature()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def changed(self) -> bool:
        now = self._signature()
        if now == self._seen:
            return False
        self._seen = now
        return True


class Appliance:
    def __init__(
        self, settings: Settings, registry: CollectorRegistry | None = None, clock: StartupClock | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock if clock is not None else StartupClock()
        self.verdict = check_or_refuse(settings)
        self.store = PolicyStore(settings.policy_path)
        self.audit = AuditSink.from_settings(settings)
        self.fleet: FleetParts | None = None
        sealer: Sealer | None = None  # a front's (appliance.fleet.seal)
        seals: SealCheck | None = None  # a segment's
        self.job_store: JobStore
        if settings.role == "standalone":
            self.job_store = open_store(settings.data_dir, EPHEMERAL_DATA_DIR)
        else:
            from appliance.fleet import roles  # nats-py: fleet roles only

            # The seal files first: a role that could not seal or check jobs must not join the bus.
            if settings.role == "front":
                sealer = roles.sealer(settings)
            else:
                seals = roles.seal_check(settings)
            self.fleet = roles.connect(settings, roles.record_seals(settings, sealer, seals))
            self.job_store = self.fleet.store
        # Built at first use (appliance.metrics) unless `registry` is given.
        self.metrics = Metrics(
            registry,
            TOOLS,
            job_counts=self.job_store.counts,
            job_states=STATES,
            oldest_running=self._oldest_running_age,
            serving=self._serving_state(),
            audit=self.audit.figures,
        )
        front = None if self.fleet is None or sealer is None else self.fleet.front(sealer)
        follow = None if front is None else front.follow
        self.jobs = JobManager(self.job_store, self.audit, on_change=self._job_changed, follow=follow)
        self.service = ScanService(
            settings,
            self.store,
            self.audit,
            metrics=self.metrics,
            jobs=self.jobs,
            fleet=front,
            budgets=None if self.fleet is None else self.fleet.budgets(),
        )
        self.worker: SegmentWorker | None = None
        if self.fleet is not None and settings.role == "segment":
            from appliance.fleet.worker import SegmentWorker

            assert settings.segment is not None  # the settings refuse a segment role without it
            assert seals is not None  # read above for every segment
            fleet = self.fleet
            self.worker = SegmentWorker(
                self.service,
                fleet.store,
                fleet.queue.consumer(settings.segment),
                fleet.registry,
                settings.segment,
                settings.appliance_id,
                fleet.queue.settings,
                seals,
            )
        self.observer: FleetObserver | None = None
        if self.fleet is not None:
            from appliance.fleet.observe import FleetCollector, FleetObserver

            self.observer = FleetObserver(self.fleet, settings.role, settings.appliance_id, self.worker, front)
            self.metrics.registry.register(FleetCollector(self.observer.status))
        self.tokens: TokenSource | None = None
        # Both listeners' TLS (HTTP transport only: stdio has no listener but the sidecar, which
        # gets it too); built before anything listens, so a bad certificate refuses the start.
        self.tls = server_tls(settings.tls_cert_file, settings.tls_key_file)
        self.jwt: JwtVerifier | None = None
        verifier: BearerTokenVerifier | None = None
        self.oauth = oauth_resource(settings) if settings.transport == "http" else None
        if settings.transport == "http":
            secret = settings.auth_token.get_secret_value() if settings.auth_token else None
            self.tokens = TokenSource(secret, settings.auth_tokens_file, self.metrics.registry)
            # No token and no issuer at start: no verifier, and build_http_app refuses unless it is
            # the loopback test mode.
            if self.oauth is not None:
                self.jwt = jwt_verifier(self.oauth, settings.ca_file)
                verifier = BearerTokenVerifier(self.tokens, self.jwt)
            elif len(self.tokens.table):
                verifier = BearerTokenVerifier(self.tokens)
        auth = None if self.oauth is None else auth_settings(self.oauth)
        self.verifier = verifier  # the status page's too: one verifier for every bearer token
        self.server = ScannerServer(self.service, token_verifier=verifier, auth=auth)
        self.draining = False
        self.health_port: int | None = None
        self.http_port: int | None = None
        self._shutdown = asyncio.Event()
        self._wake = asyncio.Event()
        self._answered = asyncio.Event()  # the first answer after the handshake is out
        self._scanners: dict[str, ScannerStatus] = {}
        self._health_model: Health | None = None
        self._uvicorn: QuietUvicorn | None = None
        self._requests: ActiveRequests | None = None

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    # --- jobs -------------------------------------------------------------------------------
    def _job_changed(self, job: Job) -> None:
        if job.finished and job.finished_at is not None:
            self.metrics.job_duration.labels(job.tool, job.state).observe(job.finished_at - job.created_at)

    def _serving_state(self) -> ServingState:
        """The alert rules' gauges (appliance.metric_families.ServingState), read at scrape time."""
        return ServingState(
            ready=lambda: self._health().readiness()[0],
            sinks_writable=lambda: {"audit": self.audit.writable(), "job_store": self.job_store.writable() is None},
            queue_capacity=lambda: {tool: self.service.limiter.capacity(tool) for tool in TOOLS},
            max_job_seconds=lambda: float(self.store.current.policy.limits.max_timeout_seconds),
        )

    def _oldest_running_age(self) -> float:
        started = [live.job.created_at for live in self.jobs.live.values()]
        return max(time.time() - min(started), 0.0) if started else 0.0

    def sweep_jobs(self) -> list[str]:
        """Retention: finished jobs past the policy's age or over its counts go, oldest first."""
        policy = self.store.current.policy
        try:
            removed = self.job_store.sweep(
                time.time(),
                policy.retention.max_age_days * 86400,
                policy.retention.max_count,
                policy.limits.concurrency.per_principal.stored_jobs,
            )
        except ApplianceError as exc:
            log.error("retention sweep failed; it is retried in a minute", extra={"reason": exc.message})
            return []
        if removed:
            log.info("retention sweep removed finished scans", extra={"removed": len(removed)})
        return removed

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_SECONDS)
            self.sweep_jobs()

    def take_cancel_requests(self) -> list[str]:
        """Act on the operator CLI's cancel requests for jobs this process runs (each task then
        ends through the service's one bookkeeping end: state `cancelled`, the audit end line)
        and drop those of finished or deleted jobs. A request for an unfinished job that no
        process runs stays, for the CLI to see untaken and withdraw (`scan_not_live`)."""
        try:
            wanted = self.job_store.cancel_requests()
            stale = [scan_id for scan_id in wanted if scan_id not in self.jobs.live and self._over(scan_id)]
        except (ApplianceError, sqlite3.Error) as exc:
            log.error("cancel requests could not be read; retried in a second", extra={"reason": str(exc)})
            return []
        stopped = []
        for scan_id, requested_by in wanted.items():
            live = self.jobs.live.get(scan_id)
            if live is None or not self.jobs.cancel(live.job):
                continue
            stopped.append(scan_id)
            record = {"event": "cancel_request", "scan_id": scan_id, "requested_by": requested_by}
            try:
                self.audit.write({**record, "tool": live.job.tool, "principal": live.job.principal})
            except ApplianceError:
                # The scan is already told to stop; its end line (outcome cancelled) follows.
                log.error("audit line of an operator cancel could not be written", extra=record)
        if stopped or stale:
            try:
                self.job_store.drop_cancel_requests(stopped + stale)
            except ApplianceError as exc:
                # Taken again next time: cancelling a task that is already ending changes nothing.
                log.error("cancel requests could not be cleared", extra={"reason": exc.message})
        if stopped:
            log.info("operator cancel requests acted on", extra={"scans": stopped})
        return stopped

    def _over(self, scan_id: str) -> bool:
        job = self.job_store.get(scan_id)
        return job is None or job.finished

    async def _audit_head_forever(self) -> None:
        while True:
            await asyncio.sleep(AUDIT_HEAD_SECONDS)
            self.audit.checkpoint("interval")

    async def _cancel_requests_forever(self) -> None:
        while True:
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            self.take_cancel_requests()

    async def _flush_unsaved_forever(self) -> None:
        """Jobs whose store write failed are written again (a full disk freed, NATS back)."""
        while True:
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            if self.jobs.unsaved:
                self.jobs.flush_unsaved()

    # --- reload -----------------------------------------------------------------------------
    async def reload_policy(self) -> bool:
        ok = self.store.reload()
        self.metrics.policy_reloads.labels("ok" if ok else "rejected").inc()
        if ok:
            self.service.apply_policy()
            if self.server.sync_tools():
                await self.server.announce_tools_changed()
        return ok

    async def _watch(self) -> None:
        watches: dict[Path, Callable[[], Awaitable[bool]]] = {self.settings.policy_path: self.reload_policy}
        tokens = self.tokens
        if tokens is not None and tokens.path is not None:

            async def reload_tokens() -> bool:
                return tokens.reload()

            watches[tokens.path] = reload_tokens
        tls = self.tls
        if tls is not None:

            async def reload_tls() -> bool:
                return tls.reload()

            # A renewal writes two files: whichever changes, both are loaded again together.
            for path in tls.watched:
                watches[path] = reload_tls
        files = {path: FileWatch(path) for path in watches}
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.reload_poll_seconds)
            forced = self._wake.is_set()
            self._wake.clear()
            if forced:
                log.info("SIGHUP: reloading policy and tokens; process settings need a restart")
            for path, reload in watches.items():
                if files[path].changed() or forced:
                    await reload()

    def _audit_event(self, event: str) -> None:
        """Start and stop lines in the trail; a sink that fails here shows in readiness at once."""
        try:
            self.audit.write(
                {
                    "event": event,
                    "version": __version__,
                    "mode": self.settings.privilege_mode,
                    "transport": self.settings.transport,
                    "role": self.settings.role,
                    "policy": str(self.settings.policy_path),
                    "tools_unavailable": self.service.unavailable,
                }
            )
        except ExecutionError as exc:
            log.error("audit sink failed; calls are refused until it works", extra={"reason": exc.message})

    # --- run --------------------------------------------------------------------------------
    async def _probe_scanners(self) -> dict[str, ScannerStatus]:
        paths = {
            "nmap_scan": self.settings.nmap_path,
            "masscan_scan": self.settings.masscan_path,
            "gobuster_scan": self.settings.gobuster_path,
        }
        results = await asyncio.gather(*(probe_scanner(paths[t], VERSION_ARGS[t]) for t in TOOLS))
        return dict(zip(TOOLS, results, strict=True))

    def _runner_id(self) -> str | None:
        return None if self.settings.role == "standalone" else self.settings.appliance_id

    def _transport_ready(self) -> None:
        self.clock.report(self.settings.transport)
        if self.settings.transport == "http":
            self._answered.set()  # many clients, no first one: the sidecar follows the port

    async def _transport(self) -> None:
        if self.worker is not None:
            # A segment has no MCP endpoint: its "transport" is the job queue.
            self._answered.set()
            log.info("segment appliance running jobs", extra={"segment": self.settings.segment})
            await self.worker.run()
            await self.worker.drain()
            return
        if self.settings.transport == "stdio":
            await run_stdio(
                self.server.mcp,
                lambda error, record: self.service.refuse(error, record, tool=None),
                on_ready=self._transport_ready,
                on_answer=self._answered.set,
            )
            log.info("stdin closed: shutting down")
            return
        from appliance.http import QuietUvicorn, build_http_app, uvicorn_config

        assert self.tokens is not None
        app = build_http_app(self.server, self.settings, self.tokens, self.oauth)
        self._requests = app
        config = uvicorn_config(app, self.settings, None if self.tls is None else self.tls.context)
        self._uvicorn = QuietUvicorn(config, on_started=self._transport_ready)
        await self._uvicorn.serve()

    def _auth_status(self) -> dict[str, Any]:
        """/healthz `auth`: the tokens file and, with an issuer, its keys (a fetch problem only
        shows: the last good keys stay in use)."""
        assert self.tokens is not None
        status = self.tokens.status()
        if self.jwt is not None:
            status["oauth"] = self.jwt.keys.status()
        return status

    def _health(self) -> Health:
        """One health model for the sidecar and the metrics (built at first use)."""
        if self._health_model is None:
            self._health_model = self._build_health()
        return self._health_model

    def _build_health(self) -> Health:
        return Health(
            self.settings,
            self.store,
            self.audit,
            self._scanners,
            breakers=lambda: {name: b.snapshot() for name, b in self.service.breakers.items()},
            draining=lambda: self.draining,
            privilege_check=lambda: self.verdict,
            tokens=None if self.tokens is None else self._auth_status,
            jobs=self.job_store.describe,
            tls=None if self.tls is None else self.tls.status,
            fleet=None if self.observer is None else self.observer.status,
        )

    async def _start_sidecar(self) -> web.AppRunner:
        """Start the sidecar; aiohttp's import (~0.2 s) happens in a worker thread, so calls
        that arrive meanwhile are still answered."""
        sidecar = await asyncio.to_thread(importlib.import_module, "appliance.sidecar")
        token = self.settings.health_token.get_secret_value() if self.settings.health_token else None
        app = sidecar.build_sidecar(
            self._health(),
            self.registry,
            token,
            self.settings.health_allowed_hosts,
            sidecar.StatusSources(verifier=self.verifier, jobs=self.job_store),
        )
        runner, self.health_port = await sidecar.start_sidecar(
            app, self.settings.health_host, self.settings.health_port, None if self.tls is None else self.tls.context
        )
        return runner  # type: ignore[no-any-return]

    def _start_background(self) -> list[asyncio.Task[None]]:
        """The loops that run beside the transport (the sweep's first run included)."""
        self.sweep_jobs()
        tasks = [
            asyncio.create_task(self._watch()),
            asyncio.create_task(self._sweep_forever()),
            asyncio.create_task(self._audit_head_forever()),
            asyncio.create_task(self._flush_unsaved_forever()),
        ]
        if self.settings.role != "front":  # a front runs no job to cancel: the segments take the requests
            tasks.append(asyncio.create_task(self._cancel_requests_forever()))
        # As PID 1 (no init) orphaned scanner descendants are ours to reap.
        if os.getpid() == 1:
            tasks.append(asyncio.create_task(reap_orphans_forever()))
        return tasks

    @staticmethod
    async def _first_answer(answered: asyncio.Task[Any], *ends: asyncio.Task[Any]) -> None:
        """Until the first answer is written (or DEFERRED_START_SECONDS, or the end)."""
        await asyncio.wait({answered, *ends}, timeout=DEFERRED_START_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        if answered.done():
            # The SDK hands the answer to its writer, which writes from a worker thread: a thread
            # importing aiohttp at once would hold the GIL against that write.
            await asyncio.sleep(ANSWER_WRITE_SECONDS)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._scanners.update(await self._probe_scanners())  # in place: the health model holds it
        unavailable = {t: s for t, s in self._scanners.items() if not s.present}
        self.service.unavailable = {t: f"scanner unavailable: {s.reason}" for t, s in unavailable.items()}
        self.server.sync_tools()
        self._audit_event("appliance_start")
        self.audit.checkpoint("start")
        # Before the transport opens: no job query may see a scan a stop left `running`.
        # A front runs no job; a segment recovers only the jobs it had claimed itself.
        interrupted = [] if self.settings.role == "front" else self.jobs.recover(self._runner_id())
        if interrupted:
            log.warning("scans left unfinished by the last stop are interrupted", extra={"scans": len(interrupted)})
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._shutdown.set)
        loop.add_signal_handler(signal.SIGHUP, self._wake.set)
        built = {"metrics": self.metrics.built, "sidecar": not self.settings.health_enabled}
        self.clock.deferred = [name for name in DEFERRED_WORK if not built.get(name, False)]
        self.clock.mark("settings_policy")
        transport = asyncio.create_task(self._transport())
        stop = asyncio.create_task(self._shutdown.wait())
        answered = asyncio.create_task(self._answered.wait())
        background: list[asyncio.Task[None]] = []
        sidecar = None
        try:
            await self._first_answer(answered, transport, stop)
            if not (transport.done() or stop.done()):
                background = self._start_background()
                if self.settings.health_enabled:
                    sidecar = await self._start_sidecar()
            await asyncio.wait({transport, stop}, return_when=asyncio.FIRST_COMPLETED)
            # stdin closed: the one client that could follow these scans is gone.
            await self._stop(transport, client_gone=transport.done() and self.settings.transport == "stdio")
        finally:
            if not transport.done():
                transport.cancel()  # the sidecar could not start: nothing else stops it
            for task in (stop, answered, *background):
                task.cancel()
            if sidecar is not None:
                await sidecar.cleanup()
            self._audit_event("appliance_stop")
            self.audit.checkpoint("stop")
            self.audit.close()
            self.job_store.close()
            if self.fleet is not None:
                await self._stop_following()
                if self.worker is not None:
                    self.worker.withdraw()
                self.fleet.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        if transport.done() and not transport.cancelled() and transport.exception() is not None:
            raise transport.exception()  # type: ignore[misc]
        return 0

    async def _stop_following(self) -> None:
        """A front's follow tasks end before its connection closes (their scans go on, on
        their segments); a segment's jobs have already ended through the stop."""
        tasks = [live.task for live in self.jobs.live.values() if live.task is not None and not live.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=TRANSPORT_STOP_SECONDS)

    @staticmethod
    async def _wait_for(condition: Callable[[], bool], seconds: float) -> bool:
        """Poll `condition` for up to `seconds` (shutdown only); True once it holds."""
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def _idle(self) -> bool:
        """No scan holds a slot."""
        return not any(self.service.limiter.in_flight(t) for t in TOOLS)

    def _responses_sent(self) -> bool:
        """Every POST (tool results included) has finished its response, and clients went quiet."""
        return self._requests is None or self._requests.quiet_for(RESPONSES_QUIET_SECONDS)

    async def _stop(self, transport: asyncio.Task[None], *, client_gone: bool = False) -> None:
        """Running scans get the drain window, then are stopped and end `interrupted` with what
        they found; after stdin EOF (`client_gone`) they are stopped at once."""
        started = time.monotonic()
        self.draining = True
        log.info("shutting down: not ready, queued calls refused", extra={"drain_seconds": self.settings.drain_seconds})
        self.service.limiter.close()
        if self.worker is not None:
            self.worker.stopping.set()  # takes no new job; the ones it runs get the drain window
        drain = 0.0 if client_gone else self.settings.drain_seconds
        if not await self._wait_for(self._idle, drain):
            self.service.stop_scans.set()
            if not await self._wait_for(self._idle, STOP_WAIT_SECONDS):
                log.warning("scans still running after they were told to stop")
        log.info("scans ended; closing the transport", extra={"seconds": round(time.monotonic() - started, 3)})
        if self._uvicorn is not None:
            if not await self._wait_for(self._responses_sent, RESPONSES_WAIT_SECONDS):
                log.warning("HTTP responses still open at shutdown")
            self._uvicorn.should_exit = True
        elif not transport.done():
            # stdio: a client still connected gets no more answers; its scans are already stopped.
            transport.cancel()
        done, _ = await asyncio.wait({transport}, timeout=TRANSPORT_STOP_SECONDS)
        if not done:
            log.warning("transport did not stop in time")
        log.info("shutdown complete", extra={"seconds": round(time.monotonic() - started, 3)})


def check_or_refuse(settings: Settings) -> dict[str, Any]:
    """Run the self-check; raise when the process holds more than its mode allows."""
    verdict = privilege_verdict(settings)
    if not verdict["ok"]:
        raise ConfigError(
            f"refusing to start: this process holds more than {settings.privilege_mode} mode allows: "
            + "; ".join(verdict["excess"]),
            rule="privileges_exceed_policy",
            recovery_suggestion="Run with --cap-drop ALL, --security-opt no-new-privileges, --read-only, the seccomp "
            "profile and user 65532 (README: docker run flags); never --privileged.",
        )
    if verdict["excess"]:
        log.warning("privilege self-check (not enforced here)", extra={"excess": verdict["excess"]})
    return verdict
