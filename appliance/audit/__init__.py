"""The audit trail: the sink every call writes to, its chain, its rotation and its verifier."""

from __future__ import annotations

import hashlib

from appliance.audit.sink import AuditFigures, AuditSink

__all__ = ["AuditFigures", "AuditSink", "output_digest"]


def output_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
