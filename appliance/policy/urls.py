"""Gobuster URL check: `http(s)://host[:port][/path]` with nothing that could change the host.

The host part then goes through the ordinary target checks (`targets.py`). Refused shapes are
named after the trick they enable: userinfo (`http://lab@evil`), backslashes (parsers disagree on
them), percent-encoded or bracketed hosts, queries and fragments. Not covered: where a redirect
would lead (gobuster never follows redirects here: see `flags.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.errors import ValidationError

MAX_URL_LENGTH = 2048
URL = re.compile(
    r"(?P<scheme>https?)://(?P<host>[A-Za-z0-9.-]+|\[[0-9a-f:]+\])"
    r"(?::(?P<port>[1-9][0-9]{0,4}))?(?P<path>/[A-Za-z0-9._~/-]*)?"
)
URL_FORM = "Give a URL such as http://web.lab.internal:8080/app/ (scheme, host, optional port and path)."


@dataclass(frozen=True)
class LabUrl:
    scheme: str
    host: str
    port: int
    path: str

    def with_host(self, address: str) -> str:
        """The URL with `address` (a checked IP literal) in place of the host."""
        shown = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{shown}:{self.port}{self.path}"


def _refuse(rule: str, message: str) -> ValidationError:
    return ValidationError(message, rule=rule, recovery_suggestion=URL_FORM)


def parse_lab_url(text: str) -> LabUrl:
    """Split a lab URL into parts, refusing every form whose host is ambiguous."""
    if (
        not text
        or len(text) > MAX_URL_LENGTH
        or not text.isascii()
        or any(not c.isprintable() or c.isspace() for c in text)
    ):
        raise _refuse("url_invalid", "the URL is empty, too long, or holds non-ASCII, space or control characters")
    if "\\" in text:
        raise _refuse("url_backslash", "backslashes in URLs are read differently by different parsers")
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise _refuse("url_scheme", "only http:// and https:// URLs are scanned")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        raise _refuse("url_userinfo", "a URL with user info (user@host) hides its real host")
    if "%" in authority:
        raise _refuse("url_encoded_host", "percent-encoded hosts are refused")
    if "?" in rest or "#" in rest:
        raise _refuse("url_query_or_fragment", "queries and fragments are refused; give the base path only")
    match = URL.fullmatch(text)
    if match is None:
        raise _refuse("url_invalid", f"{text!r} is not a plain http(s) URL")
    port = int(match["port"]) if match["port"] else (443 if match["scheme"] == "https" else 80)
    if port > 65535:
        raise _refuse("url_port_invalid", f"port {port} is outside 1-65535")
    return LabUrl(match["scheme"], match["host"].strip("[]"), port, match["path"] or "/")
