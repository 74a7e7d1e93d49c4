"""Fronts seal what they admit; segments run only what a front sealed (README "Fleet", bus security).

A segment re-checks every job against its own policy, but some of what it checks a job *as* comes
from the job's record: the principal and the caller's claims and scopes, the engagement, the
parent of a shard (a shard runs on its parent's budget place), and the human's approval. The
record lives in a bucket that segment logins may write (they record their jobs' runs), so without
more, whoever holds any fleet NATS login could record a job in another principal's name, or mark
it approved, and a segment would run it. A front's admission is therefore signed with the
fronts' Ed25519 key (only fronts hold it; segments hold the public keys), over those fields and
the scan_id; an approval a front records is signed apart, over the scan_id, the argv hash and the
decision. A segment refuses a job whose seal does not verify before it starts anything
(`job_unsealed`, `job_seal_invalid`), audited like every refusal.

Ed25519 from `cryptography` (already locked for the OAuth tokens' keys); the canonical form is
sorted, compact JSON with a domain label per kind of signature, so an admission's signature is
never an approval's.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.errors import ConfigError, PermissionDeniedError
from appliance.jobs.model import Job

VERSION = 1
# The record's fields a segment trusts when it re-checks a job (appliance.service adopt).
ADMITTED_FIELDS = ("scan_id", "tool", "request", "principal", "caller", "engagement", "segment", "parent")
ADMISSION = b"mcp-scanner-appliance job admission v1\n"
APPROVAL = b"mcp-scanner-appliance job approval v1\n"
PEM_PUBLIC = "-----BEGIN PUBLIC KEY-----"
# The refusals of a job no front sealed as it stands (the ApplianceFleetUnsealedJob alert).
SEAL_RULES = frozenset({"job_unsealed", "job_seal_invalid"})
RECOVERY = (
    "Queue jobs through a front of this fleet. The fronts' seal key (APPLIANCE_FLEET_SEAL_KEY_FILE) and the "
    "segments' public keys (APPLIANCE_FLEET_SEAL_PUBLIC_KEYS_FILE) must be a pair: scripts/create-nats-secrets "
    "writes both."
)


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of a public key (the first 16 hex digits of its raw bytes' sha256)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _canonical(label: bytes, fields: dict[str, Any]) -> bytes:
    return label + json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _admission(job: Job) -> bytes:
    record = job.to_record()
    return _canonical(ADMISSION, {name: record[name] for name in ADMITTED_FIELDS})


def _approval(job: Job) -> bytes:
    approval = job.approval or {}
    return _canonical(
        APPROVAL,
        {"scan_id": job.scan_id, "argv_sha256": approval.get("argv_sha256"), "decision": approval.get("decision")},
    )


@dataclass(frozen=True)
class Sealer:
    """A front's side: seals the jobs it admits and the approvals it records."""

    key: Ed25519PrivateKey

    @cached_property
    def key_id(self) -> str:
        # Once: every admission names it (a front call's path).
        return key_id(self.key.public_key())

    def admit(self, job: Job) -> None:
        """Seal `job` as admitted (its `seal`, replacing any): call once its admitted fields are final."""
        job.seal = {"v": VERSION, "key": self.key_id, "admission": _b64(self.key.sign(_admission(job)))}

    def approve(self, job: Job) -> None:
        """Add the signature of the approval decision `job` now carries to its seal. A job no
        front admitted (none sealed it: an older front's) stays unsealed, and a segment refuses it:
        sealing it now would vouch for whatever its record says."""
        if job.seal is None:
            return
        job.seal = {**job.seal, "approval": _b64(self.key.sign(_approval(job)))}

    @classmethod
    def from_file(cls, path: Path) -> Sealer:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise _unreadable("APPLIANCE_FLEET_SEAL_KEY_FILE", path, exc) from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise _unreadable("APPLIANCE_FLEET_SEAL_KEY_FILE", path, TypeError("not an Ed25519 private key"))
        return cls(key)


@dataclass(frozen=True)
class SealCheck:
    """A segment's side: the fronts' public keys (several while a key is rotated)."""

    keys: dict[str, Ed25519PublicKey]

    @classmethod
    def of(cls, keys: Sequence[Ed25519PublicKey]) -> SealCheck:
        return cls({key_id(key): key for key in keys})

    def check(self, job: Job) -> None:
        """Refuse a job no front sealed, or whose sealed fields or approval were changed since."""
        seal = job.seal
        if not isinstance(seal, dict) or not seal.get("admission"):
            raise PermissionDeniedError(
                f"scan {job.scan_id} carries no front's seal: it was not admitted by a front of this fleet",
                rule="job_unsealed",
                recovery_suggestion=RECOVERY,
            )
        key = self.keys.get(str(seal.get("key")))
        if key is None:
            raise PermissionDeniedError(
                f"scan {job.scan_id} is sealed with key {str(seal.get('key'))[:32]!r}, which this segment does not "
                f"know (it knows {', '.join(sorted(self.keys))})",
                rule="job_seal_invalid",
                recovery_suggestion=RECOVERY,
            )
        if not verifies(key, seal.get("admission"), _admission(job)):
            raise PermissionDeniedError(
                f"scan {job.scan_id}'s seal does not match its record: its caller, request, engagement, segment or "
                "parent was changed after a front admitted it",
                rule="job_seal_invalid",
                recovery_suggestion=RECOVERY,
            )
        if (job.approval or {}).get("decision") == "approved" and not verifies(
            key, seal.get("approval"), _approval(job)
        ):
            raise PermissionDeniedError(
                f"scan {job.scan_id} is marked approved, but no front sealed that approval",
                rule="job_seal_invalid",
                recovery_suggestion=RECOVERY,
            )

    @classmethod
    def from_file(cls, path: Path) -> SealCheck:
        try:
            text = path.read_text()
            blocks = [PEM_PUBLIC + part for part in text.split(PEM_PUBLIC)[1:]]
            keys = [serialization.load_pem_public_key(block.encode()) for block in blocks]
        except (OSError, ValueError, TypeError, UnicodeDecodeError) as exc:
            raise _unreadable("APPLIANCE_FLEET_SEAL_PUBLIC_KEYS_FILE", path, exc) from exc
        if not keys or not all(isinstance(key, Ed25519PublicKey) for key in keys):
            raise _unreadable(
                "APPLIANCE_FLEET_SEAL_PUBLIC_KEYS_FILE", path, TypeError("not one or more Ed25519 public keys (PEM)")
            )
        return cls.of([key for key in keys if isinstance(key, Ed25519PublicKey)])


def verifies(key: Ed25519PublicKey, signature: object, message: bytes) -> bool:
    if not isinstance(signature, str):
        return False
    try:
        key.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _b64(signature: bytes) -> str:
    return base64.b64encode(signature).decode()


def _unreadable(setting: str, path: Path, exc: Exception) -> ConfigError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    return ConfigError(
        f"{setting} {path} cannot be used: {reason}",
        rule="fleet_seal_key_invalid",
        recovery_suggestion="Mount the file scripts/create-nats-secrets writes (secrets/fleet_seal_key.pem for "
        "fronts, secrets/fleet_seal_pub.pem for segments).",
    )


def missing(role: str) -> ConfigError:
    """A fleet role started without its seal file."""
    setting, name = (
        ("APPLIANCE_FLEET_SEAL_KEY_FILE", "fleet_seal_key.pem")
        if role == "front"
        else ("APPLIANCE_FLEET_SEAL_PUBLIC_KEYS_FILE", "fleet_seal_pub.pem")
    )
    return ConfigError(
        f"a {role} needs {setting}: fronts seal the jobs they admit and segments run only sealed jobs",
        rule="fleet_seal_key_missing",
        recovery_suggestion=f"Run scripts/create-nats-secrets (scripts/up does) and mount secrets/{name}, "
        f"or set {setting}.",
    )
