"""Notice, cheaply and without polling, that this host's addresses or routes changed.

A netlink socket subscribed to the kernel's address, link and route groups receives a message
for every change in this network namespace, queued before the `ip addr add` that caused it
returns. `generation()` drains it (non-blocking) and counts the batches seen: one failed
`recv` per call when nothing changed. Where netlink is unavailable it falls back to comparing
a fingerprint of the /proc/net tables (`netinfo.facts_signature`), which costs file reads per call.
Not covered: changes in other network namespaces (the scope only concerns this one).
"""

from __future__ import annotations

import atexit
import errno
import logging
import socket

from appliance.policy.netinfo import facts_signature

log = logging.getLogger(__name__)

# <linux/rtnetlink.h> multicast groups: links, IPv4/IPv6 addresses, IPv4/IPv6 routes.
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
# The content is not read (the facts are re-read whole); netlink drops the rest of a datagram.
RECV_BYTES = 4096


class NetlinkWatch:
    def __init__(self) -> None:
        kind = socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        self._socket = socket.socket(socket.AF_NETLINK, kind, socket.NETLINK_ROUTE)
        try:
            self._socket.bind((0, GROUPS))
        except OSError:
            self._socket.close()
            raise
        self._generation = 0

    def close(self) -> None:
        self._socket.close()

    def generation(self) -> int:
        """A counter that moves when a change notification arrived since the last call."""
        changed = False
        while True:
            try:
                self._socket.recv(RECV_BYTES)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # The queue overflowed and messages were lost: count it as a change, keep draining.
            changed = True
        if changed:
            self._generation += 1
        return self._generation


class SignatureWatch:
    def __init__(self) -> None:
        self._signature = facts_signature()
        self._generation = 0

    def generation(self) -> int:
        signature = facts_signature()
        if signature != self._signature:
            self._signature = signature
            self._generation += 1
        return self._generation


_watch: NetlinkWatch | SignatureWatch | None = None


def generation() -> int:
    """The process-wide change counter: equal values mean no address or route changed in between."""
    global _watch
    if _watch is None:
        try:
            _watch = NetlinkWatch()
            atexit.register(_watch.close)
        except OSError as exc:
            log.warning(
                "no netlink notifications; checking the /proc/net tables on every call instead",
                extra={"reason": exc.strerror},
            )
            _watch = SignatureWatch()
    return _watch.generation()
