"""The bus: retries of repeatable operations over a JetStream leader election, and noticing a
server that stopped answering."""

from __future__ import annotations

import signal
from pathlib import Path

import nats.errors
import pytest
from support.nats import nats_server
from support.waiting import wait_until

from appliance.fleet.bus import MAX_OUTSTANDING_PINGS, BusSettings, BusThread, transient_retry

pytestmark = pytest.mark.anyio


async def test_a_repeatable_operation_is_tried_again_after_transient_errors_until_it_succeeds() -> None:
    tries: list[int] = []

    async def elected_on_the_third_try() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise nats.errors.NoRespondersError  # no stream leader yet
        return "stored"

    assert await transient_retry(elected_on_the_third_try, seconds=5.0) == "stored"
    assert len(tries) == 3


async def test_the_last_transient_error_is_raised_once_the_retry_time_is_spent() -> None:
    tries: list[int] = []

    async def never_elected() -> None:
        tries.append(1)
        raise nats.errors.TimeoutError

    with pytest.raises(nats.errors.TimeoutError):
        await transient_retry(never_elected, seconds=0.5)
    assert 2 <= len(tries) <= 6  # 0.1, 0.2, 0.4 s apart: a few tries, not a busy loop


async def test_an_error_that_is_not_transient_is_raised_at_once() -> None:
    tries: list[int] = []

    async def refused() -> None:
        tries.append(1)
        raise nats.errors.ConnectionClosedError

    with pytest.raises(nats.errors.ConnectionClosedError):
        await transient_retry(refused, seconds=5.0)
    assert len(tries) == 1


def test_a_server_that_stops_answering_without_closing_is_given_up_and_dialled_again(tmp_path: Path) -> None:
    # SIGSTOP keeps the server's sockets open and answers nothing: what a SIGKILLed node behind a
    # vanished network interface looks like to a client (no FIN, no RST). With nats-py's default
    # pings (every 120 s, two outstanding) the connection would look alive for minutes.
    with nats_server(tmp_path / "frozen") as server:
        bus = BusThread(BusSettings(servers=(server.url,), ping_interval_seconds=0.3, connect_timeout_seconds=1.0))
        bus.start()
        try:
            assert bus.connected
            server.proc.send_signal(signal.SIGSTOP)
            try:
                wait_until(lambda: not bus.connected, timeout=5.0, what="the stale connection given up")
            finally:
                server.proc.send_signal(signal.SIGCONT)
            wait_until(lambda: bus.connected, timeout=10.0, what="the bus connected again")
            assert bus.call(lambda: bus.js.account_info(), "read the account").streams >= 0
        finally:
            bus.close()


def test_the_appliance_pings_often_enough_to_notice_a_dead_server_within_seconds() -> None:
    settings = BusSettings(servers=("nats://127.0.0.1:4222",))
    assert settings.ping_interval_seconds * (MAX_OUTSTANDING_PINGS + 1) <= 15
