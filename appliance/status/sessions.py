"""Login sessions of the status page: random ids in a cookie, the credential kept server-side.

The cookie holds only a random id; the token stays in this process's memory so that every page
load verifies it again (a revoked static token or an expired JWT ends the session at once, not
at the cookie's expiry). Bounded: at most `cap` sessions, each ending `lifetime` seconds after the
login; a full table drops the session that ends first. Not covered: sessions do not outlive a
restart, and two appliances behind one name do not share them.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# A working day: a person logs in once in the morning; the token is verified on every load anyway.
SESSION_LIFETIME_SECONDS = 8 * 3600
# Far more people than look at one appliance; caps memory if a token holder loops on /login.
MAX_SESSIONS = 1000
# 256 bits from the OS's CSPRNG: not guessable, not derived from the token.
SESSION_ID_BYTES = 32


@dataclass(frozen=True)
class Session:
    token: str = field(repr=False)
    expires_at: float


def _key(session_id: str) -> str:
    # Keyed by a digest: the dict lookup's timing then says nothing about live ids.
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    def __init__(
        self,
        lifetime: float = SESSION_LIFETIME_SECONDS,
        cap: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lifetime = lifetime
        self._cap = cap
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, token: str) -> tuple[str, Session]:
        """A new session for a verified token: (the cookie's id, the session)."""
        self._prune()
        while len(self._sessions) >= self._cap:
            first = min(self._sessions, key=lambda k: self._sessions[k].expires_at)
            del self._sessions[first]
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        session = Session(token, self._clock() + self.lifetime)
        self._sessions[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str) -> Session | None:
        """The live session of `session_id`; an expired one is dropped and reads as None."""
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is not None and session.expires_at <= self._clock():
            del self._sessions[key]
            return None
        return session

    def drop(self, session_id: str) -> None:
        self._sessions.pop(_key(session_id), None)

    def _prune(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]
