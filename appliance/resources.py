"""Scan jobs as MCP resources: `scan://{scan_id}` (the result as JSON) and `scan://{scan_id}/raw`
(the scanner's stored output), listed per principal, with an update notice at each state change.

A principal sees only its own scans, exactly as the job tools do (`JobManager.visible`): another
principal's scan id and an id that never existed get the same `scan_not_found` refusal, for a
read, a subscription and a listen stream alike; so a notice never tells anyone of a scan that is
not theirs. Notices go out on both protocol eras: `resources/subscribe` per handshake-era session
(2025-11-25), and `subscriptions/listen` streams (2026-07-28) through the server's subscription
bus. Only state changes notify (queued, running, and the final state), not each finished host
group: a subscriber re-reads the resource, and findings so far are there whenever it does.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.subscriptions import ListenHandler, ResourceUpdated, SubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    Annotations,
    EmptyResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    PaginatedRequestParams,
    ReadResourceRequestParams,
    ReadResourceResult,
    Resource,
    ResourceLink,
    ResourceTemplate,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
    TextResourceContents,
    UnsubscribeRequestParams,
)

from appliance.compat import session_connection
from appliance.errors import ApplianceError, NotFoundError, ValidationError
from appliance.jobs.model import Job
from appliance.jobs.store import JobFilter
from appliance.jobs.views import error_of, report_of, resource_uri
from appliance.logs import new_request_id
from appliance.service import ScanService
from appliance.tools import TOOLS

log = logging.getLogger(__name__)

RESULT_MIME_TYPE = "application/json"
RAW_MIME_TYPE = "text/plain"
# resources/list pages: as many scans as list_scans shows at most, so a page stays a few KB.
LIST_PAGE_SIZE = 100
_URI = re.compile(r"scan://(scan_[0-9a-f]{20})(/raw)?")
# Results are per principal and change while a scan runs: no shared cache, no fresh period.
_NO_CACHE: dict[str, Any] = {"ttl_ms": 0, "cache_scope": "private"}

TEMPLATES = [
    ResourceTemplate(
        name="scan",
        uri_template="scan://{scan_id}",
        description="A scan's result (the object get_scan returns): status, findings so far while it runs.",
        mime_type=RESULT_MIME_TYPE,
    ),
    ResourceTemplate(
        name="scan-raw",
        uri_template="scan://{scan_id}/raw",
        description="The scanner's own output, stored when the scan ends (cut to the policy's "
        "limits.stored_raw_bytes; the text says so when it was).",
        mime_type=RAW_MIME_TYPE,
    ),
]

PrincipalOf = Callable[[ServerRequestContext[Any, Any]], str | None]


@dataclass(frozen=True)
class ScanUri:
    scan_id: str
    raw: bool


def parse_uri(uri: str) -> ScanUri | None:
    """`scan://{scan_id}` or `scan://{scan_id}/raw` with a well-formed id; None for anything else
    (does not say whether the scan exists or whose it is)."""
    match = _URI.fullmatch(uri)
    return None if match is None else ScanUri(match.group(1), match.group(2) is not None)


def raw_uri(scan_id: str) -> str:
    return f"{resource_uri(scan_id)}/raw"


def resource_link(scan_id: str, name: str) -> ResourceLink:
    """What each scan result carries besides its text: where the result lives as a resource."""
    return ResourceLink(type="resource_link", uri=resource_uri(scan_id), name=name, mime_type=RESULT_MIME_TYPE)


def _modified(job: Job) -> Annotations:
    return Annotations(last_modified=datetime.fromtimestamp(job.updated_at, UTC).isoformat(timespec="milliseconds"))


def result_body(job: Job) -> dict[str, Any]:
    """The job as get_scan shows it: its error object when it failed, else its (partial) report."""
    error = error_of(job)
    if error is not None:
        return error
    return report_of(job, TOOLS[job.tool].result_model, time.time()).model_dump(mode="json")


def raw_text(job: Job, raw: bytes | None) -> str:
    """The stored output as text; a last line says when it was cut to `limits.stored_raw_bytes`,
    and an unfinished scan's says when it will be there."""
    if raw is None:
        if not job.finished:
            return f"[appliance: scan {job.scan_id} is {job.state}; its raw output is stored when it ends]\n"
        return f"[appliance: scan {job.scan_id} ended {job.state} without scanner output]\n"
    text = raw.decode("utf-8", errors="replace")
    if job.raw_bytes is not None and job.raw_bytes > len(raw):
        text += (
            f"\n[appliance: cut to the first {len(raw)} of {job.raw_bytes} bytes (limits.stored_raw_bytes); "
            f"the parsed result in {resource_uri(job.scan_id)} covers the whole output]\n"
        )
    return text


class ScanResources:
    """The resources/* and subscriptions/listen handlers, and the notices a job's change sends."""

    def __init__(
        self,
        service: ScanService,
        bus: SubscriptionBus,
        principal_of: PrincipalOf,
        page_size: int = LIST_PAGE_SIZE,
        *,
        owner_of: PrincipalOf | None = None,
    ) -> None:
        """`owner_of` says whose scans a request may read (None: every scan, scan:admin);
        by default the principal's own."""
        self.service = service
        self.page_size = page_size
        self.bus = bus
        self._principal_of = principal_of
        self._owner_of = owner_of or (lambda ctx: service.owner(principal_of(ctx)))
        self._listen = ListenHandler(bus)
        # Handshake-era subscriptions: uri -> the connections (sessions) subscribed to it.
        self.subscribers: dict[str, weakref.WeakSet[Any]] = collections.defaultdict(weakref.WeakSet)
        # Listen streams open per uri, so a change nobody follows costs no task and no publish.
        self.listening: collections.Counter[str] = collections.Counter()
        self._sending: set[asyncio.Task[None]] = set()

    def register(self, lowlevel: Server[Any]) -> None:
        lowlevel.add_request_handler("resources/list", PaginatedRequestParams, self._list)
        lowlevel.add_request_handler("resources/templates/list", PaginatedRequestParams, self._templates)
        lowlevel.add_request_handler("resources/read", ReadResourceRequestParams, self._read)
        lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, self._subscribe)
        lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, self._unsubscribe)
        # Replaces MCPServer's own listen handler (same bus): that one honours any uri unchecked.
        lowlevel.add_request_handler("subscriptions/listen", SubscriptionsListenRequestParams, self._listen_checked)

    # --- refusals ----------------------------------------------------------------------------
    def _refuse(
        self, error: ApplianceError, ctx: ServerRequestContext[Any, Any], method: str, uri: str | None
    ) -> NoReturn:
        """Audit and count the refusal, then answer it as the protocol's error with the
        appliance's error object as data (as for an unknown tool)."""
        request_id = new_request_id()
        record: dict[str, Any] = {"request_id": request_id, "principal": self._principal_of(ctx), "method": method}
        if uri is not None:
            record["uri"] = uri[:256]
        self.service.refuse(error, record, tool=None)
        raise MCPError(code=INVALID_PARAMS, message=error.message, data=error.to_dict(request_id=request_id))

    def _visible(self, ctx: ServerRequestContext[Any, Any], method: str, uri: str) -> tuple[Job, ScanUri]:
        parsed = parse_uri(uri)
        if parsed is None:
            self._refuse(
                NotFoundError(
                    f"no resource {uri[:128]!r} here",
                    rule="resource_unknown",
                    recovery_suggestion="Use scan://{scan_id} or scan://{scan_id}/raw with a scan_id from a scan "
                    "result or resources/list.",
                ),
                ctx,
                method,
                uri,
            )
        owner = self._owner_of(ctx)
        try:
            return self.service.jobs.visible(parsed.scan_id, owner), parsed
        except ApplianceError as exc:
            self._refuse(exc, ctx, method, uri)

    # --- handlers ----------------------------------------------------------------------------
    async def _list(
        self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        cursor = params.cursor if params is not None else None
        if cursor is not None and parse_uri(resource_uri(cursor)) is None:
            self._refuse(
                ValidationError(
                    "cursor is not one this appliance gave out",
                    rule="cursor_invalid",
                    recovery_suggestion="Pass the nextCursor of the previous resources/list page, or omit it.",
                ),
                ctx,
                "resources/list",
                None,
            )
        owner = self._owner_of(ctx)
        page = self.service.jobs.page(JobFilter(principal=owner), self.page_size, cursor)
        resources = [
            Resource(
                uri=resource_uri(job.scan_id),
                name=f"{job.tool} {job.target}",
                title=f"{job.tool} {job.target} ({job.state})",
                description=f"Scan {job.scan_id}: {job.state}; raw output at {raw_uri(job.scan_id)}.",
                mime_type=RESULT_MIME_TYPE,
                annotations=_modified(job),
            )
            for job in page.jobs
        ]
        return ListResourcesResult(resources=resources, next_cursor=page.next_cursor, **_NO_CACHE)

    async def _templates(
        self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams | None
    ) -> ListResourceTemplatesResult:
        return ListResourceTemplatesResult(resource_templates=TEMPLATES, ttl_ms=0, cache_scope="public")

    async def _read(self, ctx: ServerRequestContext[Any, Any], params: ReadResourceRequestParams) -> ReadResourceResult:
        job, parsed = self._visible(ctx, "resources/read", params.uri)
        if parsed.raw:
            content = TextResourceContents(
                uri=params.uri, mime_type=RAW_MIME_TYPE, text=raw_text(job, self.service.jobs.store.raw(job.scan_id))
            )
        else:
            content = TextResourceContents(
                uri=params.uri, mime_type=RESULT_MIME_TYPE, text=json.dumps(result_body(job))
            )
        return ReadResourceResult(contents=[content], **_NO_CACHE)

    async def _subscribe(self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        self._visible(ctx, "resources/subscribe", params.uri)
        connection = session_connection(ctx.session)
        if connection is None:
            # No connection to send a notice on later: saying yes would promise notices that never come.
            self._refuse(
                ValidationError(
                    "this connection cannot receive resource notices",
                    rule="subscribe_unsupported",
                    recovery_suggestion="Open a subscriptions/listen stream (protocol 2026-07-28) naming the uri, "
                    "or poll get_scan with wait_seconds.",
                ),
                ctx,
                "resources/subscribe",
                params.uri,
            )
        self.subscribers[params.uri].add(connection)
        return EmptyResult()

    async def _unsubscribe(self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        # No visibility check: dropping a subscription this session may not have reveals nothing.
        connection = session_connection(ctx.session)
        if connection is not None and params.uri in self.subscribers:
            self.subscribers[params.uri].discard(connection)
            if not self.subscribers[params.uri]:
                del self.subscribers[params.uri]
        return EmptyResult()

    async def _listen_checked(
        self, ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams
    ) -> SubscriptionsListenResult:
        """The SDK's listen stream, after every resource uri it names passed the read check
        (refused before the acknowledgement, so the stream never starts)."""
        uris = list(params.notifications.resource_subscriptions or ())
        for uri in uris:
            self._visible(ctx, "subscriptions/listen", uri)
        self.listening.update(uris)
        try:
            return await self._listen(ctx, params)
        finally:
            self.listening.subtract(uris)
            for uri in uris:
                if self.listening[uri] <= 0:
                    del self.listening[uri]

    # --- notices -----------------------------------------------------------------------------
    def job_changed(self, job: Job) -> None:
        """JobManager.on_change hook (synchronous, after the change is stored): schedule the notices."""
        uris = [resource_uri(job.scan_id)]
        if job.finished:
            uris.append(raw_uri(job.scan_id))  # the raw output is stored as the job ends
        followed = [uri for uri in uris if self.listening[uri] > 0 or self.subscribers.get(uri)]
        if not followed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a change outside the event loop (recovery at start): no client is connected yet
        task = loop.create_task(self._announce(followed))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _announce(self, uris: Iterable[str]) -> None:
        for uri in uris:
            if self.listening[uri] > 0:
                await self.bus.publish(ResourceUpdated(uri=uri))
            for connection in list(self.subscribers.get(uri, ())):
                try:
                    await connection.send_resource_updated(uri)
                except Exception as exc:  # noqa: BLE001 - any transport failure: that session is gone
                    log.info("resource update notice not delivered; subscription dropped", extra={"reason": repr(exc)})
                    self.subscribers[uri].discard(connection)
