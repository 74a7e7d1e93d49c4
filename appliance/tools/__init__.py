"""The three tools. Each module turns a typed request into a checked argv and a result into a report."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from appliance.results import GobusterResult, MasscanResult, NmapResult, ScanReport
from appliance.runner import RunResult
from appliance.tools import gobuster, masscan, nmap
from appliance.tools.base import FindingStream, PlanContext, ScanPlan


class Finish(Protocol):
    """A tool's result assembly: `stream` is the findings stream the service fed during the run;
    without it (a dry run, or only a RunResult at hand) the tool parses `run`'s captured output."""

    def __call__(
        self, plan: ScanPlan, request_id: str, run: RunResult | None, stream: FindingStream | None = None
    ) -> ScanReport: ...


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    request_model: type[BaseModel]
    result_model: type[ScanReport]
    plan: Callable[[Any, PlanContext], Awaitable[ScanPlan]]
    finish: Finish
    summarize: Callable[[Any], str]


TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        ToolSpec(nmap.TOOL, nmap.DESCRIPTION, nmap.NmapRequest, NmapResult, nmap.plan, nmap.finish, nmap.summarize),
        ToolSpec(
            masscan.TOOL,
            masscan.DESCRIPTION,
            masscan.MasscanRequest,
            MasscanResult,
            masscan.plan,
            masscan.finish,
            masscan.summarize,
        ),
        ToolSpec(
            gobuster.TOOL,
            gobuster.DESCRIPTION,
            gobuster.GobusterRequest,
            GobusterResult,
            gobuster.plan,
            gobuster.finish,
            gobuster.summarize,
        ),
    )
}
