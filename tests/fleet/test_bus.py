"""The bus's retry of repeatable operations over a JetStream leader election."""

from __future__ import annotations

import nats.errors
import pytest

from appliance.fleet.bus import transient_retry

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
