"""The appliance's one connection to NATS, on an event loop of its own.

The job store interface is synchronous (appliance/jobs/store.py says why) and NATS' client is
asyncio. The connection lives on its own loop in a daemon thread; synchronous callers hand it
one operation at a time and wait for it, bounded by `operation_timeout_seconds`. A caller on
the appliance's loop blocks that loop for one round trip to the server (about a millisecond on
a lab network); that is the price of one store interface for both stores, paid only in the fleet.

Only servers the operator configured are ever contacted (no discovery beyond what the servers
announce of their own cluster, which `no_discovery` turns off).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import SecretStr

from appliance.errors import ConfigError, ExecutionError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Connecting to a server on the lab network takes milliseconds; a wrong address must not hold start-up.
CONNECT_TIMEOUT_SECONDS = 5.0
# One KV or object operation: a JetStream cluster acks a write once a quorum has it (milliseconds);
# an election after a node loss takes a few seconds, which this must outlast.
OPERATION_TIMEOUT_SECONDS = 10.0
# The thread's loop must stop even when the server went away: draining waits at most this long.
CLOSE_TIMEOUT_SECONDS = 2.0
# How soon a server that vanished without closing the connection is noticed: a PING every
# PING_INTERVAL_SECONDS, the connection given up (and another server of the list dialled) after
# MAX_OUTSTANDING_PINGS unanswered. A SIGKILLed node or a cut link sends no FIN; with nats-py's
# defaults (120 s, 2) a client kept writing into a dead connection for up to four minutes.
PING_INTERVAL_SECONDS = 5.0
MAX_OUTSTANDING_PINGS = 2


# What a JetStream cluster answers while it elects a new leader for a stream (a node lost, a
# restart): no responder, a timeout, 503. An operation that is safe to repeat is tried again for
# up to TRANSIENT_RETRY_SECONDS; an election after one node's loss takes a few seconds.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    nats.errors.NoRespondersError,
    nats.errors.TimeoutError,
    nats.js.errors.ServiceUnavailableError,
)
TRANSIENT_RETRY_SECONDS = 8.0


async def transient_retry(operation: Callable[[], Awaitable[T]], seconds: float = TRANSIENT_RETRY_SECONDS) -> T:
    """`operation()`, tried again after a transient JetStream error until `seconds` have passed
    (then the last error is raised). Only for operations that may run twice: a write of the same
    value, a read, a compare-and-set that re-reads first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    delay = 0.1
    while True:
        try:
            return await operation()
        except TRANSIENT_ERRORS:
            if loop.time() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


@dataclass(frozen=True)
class BusSettings:
    servers: tuple[str, ...]
    name: str = "mcp-scanner-appliance"
    tls: ssl.SSLContext | None = None
    # A NATS .creds file (decentralized JWT auth, an operator's own NATS) or a user and password
    # (the users scripts/nats_auth.py writes; README "Fleet", bus security). Never logged.
    credentials: Path | None = None
    user: str | None = None
    password: SecretStr | None = field(default=None, repr=False)
    connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS
    operation_timeout_seconds: float = OPERATION_TIMEOUT_SECONDS
    # Retries of a repeatable operation over a leader election (transient_retry).
    transient_retry_seconds: float = TRANSIENT_RETRY_SECONDS
    ping_interval_seconds: float = PING_INTERVAL_SECONDS

    def redacted_servers(self) -> list[str]:
        """The server URLs without any user:password part, for logs and /healthz."""
        return [_redact(url) for url in self.servers]


def _redact(url: str) -> str:
    scheme, sep, rest = url.rpartition("://")
    host = rest.rpartition("@")[2]
    return f"{scheme}{sep}{host}"


def inbox_prefix(user: str | None) -> str:
    """Where this connection's replies arrive: `_INBOX.<user>` for a user of scripts/nats_auth.py,
    whose permissions let it subscribe there alone (no user reads another's replies)."""
    return "_INBOX" if user is None else f"_INBOX.{user}"


class BusUnavailable(ExecutionError):
    """NATS could not be reached or did not answer in time."""


class BusUnauthorized(ConfigError):
    """NATS refused this appliance's user, password or credentials: the start is refused."""


class BusThread:
    """A NATS connection (and its JetStream context) on a loop in a thread of its own."""

    def __init__(self, settings: BusSettings) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats-bus", daemon=True)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._closing = False
        # The last permission refusal the server sent: a refused request gets no answer, so a
        # timeout after one names it (the operator's fix is the permissions, not the network).
        self._refused: tuple[float, str] | None = None
        self._auth_refused = asyncio.Event()

    @property
    def nc(self) -> Client:
        assert self._nc is not None, "BusThread.start() first"
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "BusThread.start() first"
        return self._js

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def start(self) -> None:
        """Connect, or raise BusUnavailable naming the servers tried."""
        self._thread.start()
        try:
            self.call(self._connect, "connect to NATS", timeout=self.settings.connect_timeout_seconds + 1)
        except nats.errors.AuthorizationError as exc:
            self._stop_loop()
            raise self._unauthorized() from exc
        except BaseException:
            self._stop_loop()
            raise

    async def _connect(self) -> None:
        settings = self.settings
        options: dict[str, Any] = {
            "servers": list(settings.servers),
            "name": settings.name,
            "connect_timeout": settings.connect_timeout_seconds,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "ping_interval": settings.ping_interval_seconds,
            "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
            "no_echo": True,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        if settings.tls is not None:
            options["tls"] = settings.tls
        if settings.credentials is not None:
            options["user_credentials"] = str(settings.credentials)
        if settings.user is not None:
            options["user"] = settings.user
            options["password"] = "" if settings.password is None else settings.password.get_secret_value()
            options["inbox_prefix"] = inbox_prefix(settings.user)
        # A refused password is no reason to retry until the connect timeout: nats-py reports
        # the server's "Authorization Violation" to error_cb and tries again, so the first such
        # report ends the start (BusUnauthorized).
        self._auth_refused.clear()
        client = Client()
        connecting = asyncio.ensure_future(client.connect(**options))
        refused = asyncio.ensure_future(self._auth_refused.wait())
        await asyncio.wait({connecting, refused}, return_when=asyncio.FIRST_COMPLETED)
        refused.cancel()
        if self._auth_refused.is_set():  # first, even when the connect gave up at the same moment
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
            with contextlib.suppress(Exception):
                await client.close()
            raise nats.errors.AuthorizationError
        if connecting.exception() is not None:
            # A refused or failed connect (no server, a TLS handshake refused) must not leave its
            # socket to the garbage collector after this loop is closed.
            with contextlib.suppress(Exception):
                await client.close()
        connecting.result()
        self._nc = client
        self._js = self._nc.jetstream(timeout=settings.operation_timeout_seconds)

    async def _on_error(self, exc: Exception) -> None:
        reason = str(exc)
        if isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in reason.lower():
            # At start: the start is refused. Later (a reconnect after the password changed): said
            # once until a reconnect succeeds (nats-py tries twice a second), without the password.
            if not self._auth_refused.is_set():
                log.error("NATS refused this appliance's credentials", extra={"rule": "bus_unauthorized"})
            self._auth_refused.set()
            return
        if "permissions violation" in reason.lower():
            self._refused = (time.monotonic(), reason)
            log.warning("NATS refused an operation", extra={"rule": "bus_forbidden", "reason": reason})
            return
        log.warning("NATS connection error", extra={"reason": repr(exc)})

    async def _on_disconnected(self) -> None:
        if self._closing:  # our own close drains and disconnects: nothing to warn about
            return
        log.warning("NATS disconnected; reconnecting", extra={"servers": self.settings.redacted_servers()})

    async def _on_reconnected(self) -> None:
        self._auth_refused.clear()
        log.info("NATS reconnected", extra={"servers": self.settings.redacted_servers()})

    def call(self, operation: Callable[[], Awaitable[T]], what: str, *, timeout: float | None = None) -> T:
        """Run `operation()` on the bus loop and wait for its result; a timeout or a lost
        connection is BusUnavailable (`what` says what was being done); the operation's own
        exceptions are raised as they are."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("BusThread.call() from the bus thread itself would wait for itself")

        async def run() -> T:
            return await operation()

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        wait = self.settings.operation_timeout_seconds if timeout is None else timeout
        with self._lost_is_unavailable(what):
            try:
                return future.result(wait)
            except FutureTimeout:
                future.cancel()
                raise self._unavailable(what, f"no answer within {wait:g} s") from None

    @contextlib.contextmanager
    def _lost_is_unavailable(self, what: str) -> Iterator[None]:
        """A lost or never-made connection, as BusUnavailable naming `what` (call and run)."""
        try:
            yield
        except (nats.errors.NoServersError, nats.errors.ConnectionClosedError, nats.errors.TimeoutError) as exc:
            raise self._unavailable(what, type(exc).__name__) from exc
        except OSError as exc:  # refused, unreachable: before the first connection succeeded
            raise self._unavailable(what, exc.strerror or type(exc).__name__) from exc

    def call_repeatable(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        """`call` for an operation that may run twice (a read, a write of the same value, a
        compare-and-set that re-reads first): tried again over a leader election, bounded."""
        retry = self.settings.transient_retry_seconds
        return self.call(
            lambda: transient_retry(operation, retry), what, timeout=retry + self.settings.operation_timeout_seconds
        )

    async def run_repeatable(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        """`run` for an operation that may run twice, tried again over a leader election, as
        `call_repeatable` does for a caller that waits."""
        retry = self.settings.transient_retry_seconds
        return await self.run(
            lambda: transient_retry(operation, retry), what, seconds=retry + self.settings.operation_timeout_seconds
        )

    def submit_repeatable(self, operation: Callable[[], Awaitable[T]], what: str) -> concurrent.futures.Future[T]:
        """`call_repeatable` without the wait: the operation is queued on the bus loop when this
        returns, so operations submitted or called one after another start in that order (no
        inner task: its first step runs in the loop's next turn, as `call`'s does); `outcome`
        awaits its result."""
        if self._loop.is_closed() or not self._thread.is_alive():
            raise self._unavailable(what, "the connection is closed")
        retry = self.settings.transient_retry_seconds

        async def bounded() -> T:
            async with asyncio.timeout(retry + self.settings.operation_timeout_seconds):
                return await transient_retry(operation, retry)

        return asyncio.run_coroutine_threadsafe(bounded(), self._loop)

    async def outcome(self, sent: concurrent.futures.Future[T], what: str) -> T:
        """The result of a submitted operation, awaited on the caller's loop; errors as `call`
        raises them. Cancelling this wait leaves the operation running (a write still lands)."""
        with self._lost_is_unavailable(what):
            try:
                return await asyncio.shield(asyncio.wrap_future(sent))
            except TimeoutError:
                raise self._unavailable(what, "no answer in time") from None

    async def run(self, operation: Callable[[], Awaitable[T]], what: str, *, seconds: float | None = None) -> T:
        """`call` for a caller on another event loop: awaits the operation on the bus loop without
        blocking the caller's loop (a segment's fetch waits seconds for a job)."""

        async def bounded() -> T:
            wait = self.settings.operation_timeout_seconds if seconds is None else seconds
            return await asyncio.wait_for(operation(), wait)

        if self._loop.is_closed() or not self._thread.is_alive():
            raise self._unavailable(what, "the connection is closed")
        future = asyncio.run_coroutine_threadsafe(bounded(), self._loop)
        with self._lost_is_unavailable(what):
            try:
                return await asyncio.wrap_future(future)
            except asyncio.CancelledError:
                future.cancel()
                raise
            except TimeoutError:
                raise self._unavailable(what, "no answer in time") from None

    def recent_refusal(self) -> str | None:
        """The server's last permission refusal, when it came within one repeatable operation's time."""
        if self._refused is None:
            return None
        at, reason = self._refused
        # The refusal comes at once, the timeout of the request it refused later: one retry
        # period and two operation timeouts cover it.
        window = self.settings.transient_retry_seconds + 2 * self.settings.operation_timeout_seconds
        return reason if time.monotonic() - at <= window else None

    def _unauthorized(self) -> BusUnauthorized:
        servers = ", ".join(self.settings.redacted_servers())
        who = f"user {self.settings.user}" if self.settings.user is not None else "these credentials"
        return BusUnauthorized(
            f"NATS ({servers}) refused {who}: authorization violation",
            rule="bus_unauthorized",
            recovery_suggestion="Give this appliance the user and password the NATS servers know: "
            "APPLIANCE_NATS_USER and the file APPLIANCE_NATS_PASSWORD_FILE (scripts/up writes "
            "secrets/nats_password_<user> and the servers' nats_auth.conf from the same files), or a valid "
            "APPLIANCE_NATS_CREDENTIALS_FILE; then restart.",
        )

    def _unavailable(self, what: str, why: str) -> BusUnavailable:
        servers = ", ".join(self.settings.redacted_servers())
        refusal = self.recent_refusal()
        if refusal is not None:
            return BusUnavailable(
                f"could not {what}: NATS ({servers}) {why}, after refusing this appliance: {refusal}",
                rule="bus_forbidden",
                recovery_suggestion="The operator must give this appliance's NATS user the subjects its role "
                "needs (scripts/nats_auth.py writes them; README Fleet, bus security) or fix its role and segment.",
            )
        return BusUnavailable(
            f"could not {what}: NATS ({servers}) {why}",
            rule="bus_unavailable",
            recovery_suggestion="Retry shortly; the operator must check that the NATS servers are up and reachable "
            "and that this appliance's credentials are valid.",
        )

    def close(self) -> None:
        """Drain and close the connection (bounded), then stop the thread."""
        self._closing = True
        if self._nc is not None and self._thread.is_alive():
            nc = self._nc

            async def drain() -> None:
                try:
                    await asyncio.wait_for(nc.drain(), CLOSE_TIMEOUT_SECONDS)
                except Exception as exc:  # noqa: BLE001 - a server gone at stop: close anyway
                    log.info("NATS drain at close did not finish", extra={"reason": repr(exc)})
                    await nc.close()

            try:
                self.call(drain, "close the NATS connection", timeout=CLOSE_TIMEOUT_SECONDS + 1)
            except BusUnavailable:
                log.warning("NATS connection did not close in time")
        self._stop_loop()

    async def _release(self) -> None:
        """On the bus loop, before it stops: the connection closed and every task left on it
        (a reconnect in flight, a callback) cancelled and awaited, so no socket outlives the loop."""
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), CLOSE_TIMEOUT_SECONDS / 2)
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT_SECONDS / 4)

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):  # bounded: a stop never waits on a dead server
                asyncio.run_coroutine_threadsafe(self._release(), self._loop).result(CLOSE_TIMEOUT_SECONDS)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CLOSE_TIMEOUT_SECONDS)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()
