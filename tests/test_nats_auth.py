"""What scripts/up's generator of the fleet bus's secrets writes (scripts/create-nats-secrets,
scripts/nats_auth.py): files, modes, kept passwords, and permission lists that hold what each
role needs and nothing another role owns. The servers' enforcement of them is
tests/fleet/test_bus_security.py, on a real nats-server."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from support import REPO
from support.bus_security import create_nats_secrets, nats_auth
from support.nats import NATS_SERVER

from appliance.fleet.seal import SealCheck, Sealer

NATS_AUTH = REPO / "scripts" / "nats_auth.py"


def users(conf: Path) -> dict[str, dict[str, Any]]:
    text = conf.read_text()
    body = text[text.index("authorization: ") + len("authorization: ") :]
    return {user["user"]: user for user in json.loads(body)["users"]}


def crypt_of(password: str, salt: str) -> str:
    """`crypt(3)` of `password` with `salt` (a whole hash): equal to it when the password is its own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return str(crypt.crypt(password, salt))


def publish(permissions: dict[str, Any]) -> list[str]:
    return list(permissions["publish"]["allow"])


def test_the_secrets_are_made_once_readable_by_the_containers_and_nobody_else(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    create_nats_secrets(folder)
    written = sorted(path.name for path in folder.iterdir())
    for name in [
        "nats_auth.conf",
        "nats_password_front",
        "nats_password_segment-seg-a",
        "nats_password_segment-seg-b",
        "nats_tls_cert.pem",
        "nats_tls_key.pem",
        "fleet_seal_key.pem",
        "fleet_seal_pub.pem",
    ]:
        assert name in written
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o444
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    passwords = {path.name: path.read_text() for path in folder.glob("nats_password_*")}
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", value) for value in passwords.values())
    assert len(set(passwords.values())) == 3
    cert = (folder / "nats_tls_cert.pem").read_bytes()
    # The fronts' seal key opens as a Sealer, its public key as the segments' check, a pair.
    sealer = Sealer.from_file(folder / "fleet_seal_key.pem")
    assert list(SealCheck.from_file(folder / "fleet_seal_pub.pem").keys) == [sealer.key_id]
    seal = (folder / "fleet_seal_key.pem").read_bytes()
    again = create_nats_secrets(folder, ["seg-a", "seg-b", "seg-c"])  # a third segment later
    assert (folder / "fleet_seal_key.pem").read_bytes() == seal
    kept = {path.name: path.read_text() for path in folder.glob("nats_password_*")}
    assert passwords.items() <= kept.items() and "nats_password_segment-seg-c" in kept
    assert (folder / "nats_tls_cert.pem").read_bytes() == cert
    assert "keeping it" in again.stderr
    found = users(folder / "nats_auth.conf")
    assert sorted(found) == ["front", "segment-seg-a", "segment-seg-b", "segment-seg-c"]
    # A bcrypt hash of the password, never the password (the servers' test below logs in with it).
    hashed = found["segment-seg-a"]["password"]
    assert hashed.startswith("$2b$04$")
    assert crypt_of(passwords["nats_password_segment-seg-a"], hashed) == hashed
    text = (folder / "nats_auth.conf").read_text()
    assert not any(password in text for password in kept.values())


def test_the_servers_accept_the_written_users(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    create_nats_secrets(folder)
    config = tmp_path / "nats.conf"
    config.write_text('include "secrets/nats_auth.conf"\nport: -1\n')
    checked = subprocess.run([NATS_SERVER, "-c", str(config), "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


def test_a_segment_name_that_is_not_one_subject_token_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    done = subprocess.run(
        [sys.executable, str(NATS_AUTH), str(folder), "seg-a", "seg.b"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "'seg.b' is not a segment name" in done.stderr
    assert not folder.exists() or not any(folder.iterdir())


def test_a_segments_user_holds_its_own_consumer_and_keys_and_nothing_of_another_segment() -> None:
    auth = nats_auth()
    names = auth.BusNames()
    seg_a = publish(auth.segment_permissions(names, "seg-a"))
    # its own: fetch, ack, its consumer bound to its own subject, its own registry keys
    assert "$JS.API.CONSUMER.MSG.NEXT.APPLIANCE_JOBS.segment_seg-a" in seg_a
    assert "$JS.ACK.APPLIANCE_JOBS.segment_seg-a.>" in seg_a
    assert "$JS.API.CONSUMER.CREATE.APPLIANCE_JOBS.segment_seg-a.jobs.seg-a" in seg_a
    assert "$KV.appliance_segments.seg.seg-a.*" in seg_a
    assert "$KV.appliance_segments.key.seg-a.*" in seg_a  # its appliances' record keys
    # nothing that queues a job, touches seg-b, or creates or deletes a stream, bucket or other consumer
    for subject in seg_a:
        assert not subject.startswith("jobs"), subject
        assert "seg-b" not in subject, subject
        assert ".DELETE." not in subject and "STREAM.CREATE" not in subject and "STREAM.UPDATE" not in subject
        assert "DURABLE.CREATE" not in subject, subject
    assert "$JS.API.CONSUMER.CREATE.APPLIANCE_JOBS.segment_seg-a" not in seg_a  # the form without a filter
    assert not any(subject.startswith("$JS.API.CONSUMER.CREATE.APPLIANCE_JOBS.>") for subject in seg_a)
    assert auth.segment_permissions(names, "seg-a")["subscribe"] == {"allow": ["_INBOX.segment-seg-a.>"]}


def test_a_fronts_user_queues_jobs_and_reads_the_registry_but_takes_no_segments_jobs() -> None:
    auth = nats_auth()
    front = publish(auth.front_permissions(auth.BusNames()))
    assert "jobs.*" in front
    assert "$JS.API.STREAM.CREATE.APPLIANCE_JOBS" in front
    assert "$KV.appliance_jobs.>" in front
    for subject in front:
        assert "CONSUMER.MSG.NEXT" not in subject and not subject.startswith("$JS.ACK."), subject
        assert not subject.startswith("$KV.appliance_segments"), subject
        assert ".DELETE.APPLIANCE_JOBS" not in subject and "STREAM.DELETE" not in subject, subject


@pytest.mark.parametrize(
    "segment",
    [
        # safe
        "seg-a",
        "lab01",
        "a",
    ],
)
def test_a_segment_name_of_one_subject_token_is_accepted(segment: str) -> None:
    auth = nats_auth()
    assert auth.segment_user(segment) in json.dumps(auth.segment_permissions(auth.BusNames(), segment))


@pytest.mark.parametrize(
    "segment",
    [
        # unsafe: each would widen a subject (a wildcard, another token) or break it
        "seg.a",
        "seg-*",
        "seg->",
        "",
        "Seg-A",
        "-seg",
    ],
)
def test_a_segment_name_that_would_widen_a_subject_is_refused(segment: str) -> None:
    auth = nats_auth()
    with pytest.raises(ValueError, match="is not a segment name"):
        auth.segment_permissions(auth.BusNames(), segment)


def test_without_bcrypt_the_passwords_are_written_and_it_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    auth = nats_auth()
    assert auth.hashed("p" * 43).startswith("$2b$04$")
    monkeypatch.setitem(sys.modules, "crypt", None)  # a python3 without the module (3.13 and later)
    assert auth.hashed("p" * 43) == "p" * 43
    assert "nats_auth.conf holds the NATS passwords themselves" in capsys.readouterr().err
