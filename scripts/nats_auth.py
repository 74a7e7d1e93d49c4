"""The fleet bus's users and their subject permissions: the `authorization` block nats-server reads.

Usage: python3 scripts/nats_auth.py DIR SEGMENT [SEGMENT ...]

Writes into DIR (scripts/up: secrets/, mode 0700), keeping every file that exists already:
  nats_password_front            the password of user `front` (every front, and `appliance jobs`)
  nats_password_segment-<seg>    the password of user `segment-<seg>` (the appliances of one segment)
  nats_auth.conf                 the servers' `authorization { users: [...] }` (rewritten from
                                 the password files each run: adding a segment adds its user)
The files are 0444 inside the 0700 folder, like the bearer token (scripts/create-token): compose
bind-mounts them with the host file's mode, and the NATS servers and the appliances run as UID
65532. nats_auth.conf holds bcrypt hashes of the passwords (nats-server compares a `$2...` value
as bcrypt), made with the standard library's `crypt` (libxcrypt's Blowfish): a host python3
without it (3.13 removed the module) writes the passwords themselves and says so on stderr.

What each user may do is a whitelist of subjects (README "Fleet", bus security): the JetStream
API subject of each operation a role performs on its own stream, consumer and buckets, and
nothing else. Standard library only: it runs on the host's python3 before any venv exists; the
names below are the appliance's defaults (tests/fleet/test_bus_security.py checks they match).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

# appliance.fleet.routing.SEGMENT_NAME: a segment name is one subject token.
SEGMENT_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
FRONT_USER = "front"
PASSWORD_BYTES = 32  # 43 URL-safe characters
# bcrypt's least cost: the passwords are 256 random bits, out of reach of any guessing whatever
# the cost, and the servers pay it at every connection (every appliance reconnects after a node's
# loss). bcrypt reads 72 bytes at most; the passwords have 43.
BCRYPT_ROUNDS = 2**4
AUTH_FILE = "nats_auth.conf"


def segment_user(segment: str) -> str:
    return f"segment-{segment}"


def inbox_prefix(user: str) -> str:
    """Where a user's replies arrive (appliance.fleet.bus sets it): no user can subscribe to
    another's replies, which carry job deliveries and store reads."""
    return f"_INBOX.{user}"


def password_file(user: str) -> str:
    return f"nats_password_{user}"


@dataclass(frozen=True)
class BusNames:
    """The stream, subjects and buckets of one fleet (appliance.fleet.queue, segments, jobs.jetstream)."""

    stream: str = "APPLIANCE_JOBS"
    subject_prefix: str = "jobs"
    jobs_bucket: str = "appliance_jobs"
    raw_bucket: str = "appliance_raw"
    segments_bucket: str = "appliance_segments"

    def consumer(self, segment: str) -> str:
        return f"segment_{segment}"

    @property
    def live_bucket(self) -> str:
        """The job bucket's keys of unfinished work (appliance.jobs.jetstream.live_bucket_of)."""
        return f"{self.jobs_bucket}_live"


def _read_stream(stream: str) -> list[str]:
    # Opening a stream or bucket (its info) and reading a stored message by subject.
    return [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.MSG.GET.{stream}"]


def _kv_read(bucket: str) -> list[str]:
    stream = f"KV_{bucket}"
    return [*_read_stream(stream), f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>"]


def _kv_write(bucket: str) -> list[str]:
    # Puts and compare-and-sets on any key, and the purge that takes a key out (kv.remove_key):
    # a purge request names its subject in the body, which subject permissions cannot see.
    return [f"$KV.{bucket}.>", f"$JS.API.STREAM.PURGE.KV_{bucket}"]


def _objects(bucket: str) -> list[str]:
    stream = f"OBJ_{bucket}"
    # Chunks and metadata; a put over an existing name purges the old chunks.
    return [*_read_stream(stream), f"$O.{bucket}.>", f"$JS.API.STREAM.PURGE.{stream}"]


def _ordered_reads(stream: str) -> list[str]:
    # An ordered push consumer (an object read): its ephemeral consumer, made and
    # deleted by the client, and the flow-control replies it sends; nats-py's object read looks
    # its stream up by subject first (the names of the account's streams, nothing else).
    return [
        "$JS.API.STREAM.NAMES",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _create(stream: str) -> list[str]:
    return [f"$JS.API.STREAM.CREATE.{stream}"]


def front_permissions(names: BusNames) -> dict[str, object]:
    """Queue jobs of any segment, read and write job records and raw output, read the segments;
    create the stream and buckets when missing. No fetch or ack on any segment's consumer, no
    stream or consumer deletion, no registry write."""
    publish = [
        f"{names.subject_prefix}.*",
        *_read_stream(names.stream),
        *_create(names.stream),
        f"$JS.API.CONSUMER.INFO.{names.stream}.*",  # queue depth per segment
        *_kv_read(names.jobs_bucket),
        *_kv_write(names.jobs_bucket),
        *_create(f"KV_{names.jobs_bucket}"),
        *_kv_read(names.live_bucket),
        *_kv_write(names.live_bucket),
        *_create(f"KV_{names.live_bucket}"),
        *_objects(names.raw_bucket),
        *_create(f"OBJ_{names.raw_bucket}"),
        *_ordered_reads(f"OBJ_{names.raw_bucket}"),
        *_kv_read(names.segments_bucket),
        *_create(f"KV_{names.segments_bucket}"),
    ]
    # A front follows a job's record with a core subscription to its key (appliance.fleet.kv.watch_key).
    return _permissions(FRONT_USER, publish, [f"$KV.{names.jobs_bucket}.job.*"])


def segment_permissions(names: BusNames, segment: str) -> dict[str, object]:
    """Fetch and ack its own consumer's jobs (and create that consumer, bound to its own subject);
    advertise under its own registry keys; read and write job records and raw output. No job
    publish, no other consumer, no stream, bucket or consumer creation beyond its own consumer,
    no deletion."""
    if not SEGMENT_NAME.fullmatch(segment):
        raise ValueError(f"{segment!r} is not a segment name (a-z, 0-9 and -, up to 32)")
    consumer = names.consumer(segment)
    publish = [
        *_read_stream(names.stream),
        f"$JS.API.CONSUMER.INFO.{names.stream}.{consumer}",
        # Only the create form that names the filter: the server refuses a config whose filter
        # differs from the subject's, so this consumer can only ever hold this segment's jobs.
        f"$JS.API.CONSUMER.CREATE.{names.stream}.{consumer}.{names.subject_prefix}.{segment}",
        f"$JS.API.CONSUMER.MSG.NEXT.{names.stream}.{consumer}",
        f"$JS.ACK.{names.stream}.{consumer}.>",
        *_kv_read(names.segments_bucket),
        f"$KV.{names.segments_bucket}.seg.{segment}.*",
        # Its appliances' record keys (appliance.fleet.records): what readers trust as this segment.
        f"$KV.{names.segments_bucket}.key.{segment}.*",
        *_kv_read(names.jobs_bucket),
        *_kv_write(names.jobs_bucket),
        *_kv_read(names.live_bucket),
        *_kv_write(names.live_bucket),
        *_objects(names.raw_bucket),  # writes raw output; reads none (no consumer of its own there)
    ]
    return _permissions(segment_user(segment), publish)


def _permissions(user: str, publish: list[str], subscribe: tuple[str, ...] | list[str] = ()) -> dict[str, object]:
    return {"publish": {"allow": publish}, "subscribe": {"allow": [f"{inbox_prefix(user)}.>", *subscribe]}}


def hashed(password: str) -> str:
    """A bcrypt hash of `password` for the servers' configuration, or the password itself (with a
    warning on stderr) where this python3 cannot make one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in 3.11, removed in 3.13
            import crypt
    except ImportError:
        crypt = None  # type: ignore[assignment]
    if crypt is not None and crypt.METHOD_BLOWFISH in crypt.methods:
        value = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=BCRYPT_ROUNDS))
        if value and value.startswith("$2"):
            return value
    print(
        "nats_auth: this python3 cannot make bcrypt hashes (no crypt module with Blowfish): nats_auth.conf holds "
        "the NATS passwords themselves, keep it as secret as they are",
        file=sys.stderr,
    )
    return password


def authorization(names: BusNames, passwords: dict[str, str], segments: list[str]) -> str:
    """The `authorization` block (nats-server's configuration syntax accepts JSON), with the
    passwords' bcrypt hashes."""
    users = [{"user": FRONT_USER, "password": hashed(passwords[FRONT_USER]), "permissions": front_permissions(names)}]
    for segment in segments:
        user = segment_user(segment)
        permissions = segment_permissions(names, segment)
        users.append({"user": user, "password": hashed(passwords[user]), "permissions": permissions})
    body = json.dumps({"users": users}, indent=2)
    return (
        "# Written by scripts/nats_auth.py (scripts/up) from the nats_password_* files; do not edit.\n"
        f"authorization: {body}\n"
    )


def _password(directory: Path, user: str) -> str:
    path = directory / password_file(user)
    if not (path.is_file() and path.stat().st_size > 0):
        _write(path, secrets.token_urlsafe(PASSWORD_BYTES))
    return path.read_text().strip()


def _write(path: Path, text: str) -> None:
    # Written aside and renamed: a server reloading it never reads half a file.
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    partial.chmod(0o444)
    partial.replace(path)


def write_all(directory: Path, segments: list[str], names: BusNames | None = None) -> Path:
    """The password files (kept when present) and nats_auth.conf; returns the latter's path."""
    names = names or BusNames()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    users = [FRONT_USER, *(segment_user(segment) for segment in segments)]
    for segment in segments:
        segment_permissions(names, segment)  # the name's check, before any file is written
    passwords = {user: _password(directory, user) for user in users}
    conf = directory / AUTH_FILE
    _write(conf, authorization(names, passwords, segments))
    return conf


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        conf = write_all(Path(argv[0]), argv[1:])
    except ValueError as exc:
        print(f"nats_auth: {exc}", file=sys.stderr)
        return 2
    print(conf)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
