"""JobManager's in-memory parts: the diff views kept for rescans."""

from __future__ import annotations

from appliance.jobs.diff import result_view
from appliance.jobs.manager import ResultViews


def _nmap(hosts: int) -> dict[str, object]:
    return {
        "tool": "nmap_scan",
        "hosts": [
            {
                "address": f"10.20.{i // 256}.{i % 256}",
                "status": "up",
                "ports": [{"port": 80, "protocol": "tcp", "state": "open"}],
            }
            for i in range(hosts)
        ],
    }


def test_result_views_keep_the_newest_up_to_their_count() -> None:
    views = ResultViews(size=2)
    for scan in ("a", "b", "c"):
        views.keep(scan, result_view("nmap_scan", _nmap(1)))
    assert views.get("a") is None
    assert views.get("b") is not None and views.get("c") is not None


def test_result_views_of_large_results_are_bounded_by_their_entries() -> None:
    # Each view of 100 hosts weighs 1 + 100 hosts up + 100 ports: two of them pass 300 entries.
    views = ResultViews(size=64, entries=300)
    views.keep("big-1", result_view("nmap_scan", _nmap(100)))
    views.keep("big-2", result_view("nmap_scan", _nmap(100)))
    assert views.get("big-1") is None
    kept = views.get("big-2")
    assert kept is not None and len(kept.up) == 100


def test_a_view_kept_again_under_its_scan_id_replaces_the_first() -> None:
    views = ResultViews(size=64, entries=300)
    views.keep("scan", result_view("nmap_scan", _nmap(100)))
    views.keep("scan", result_view("nmap_scan", _nmap(100)))  # counted once, not twice
    views.keep("other", result_view("nmap_scan", _nmap(10)))
    assert views.get("scan") is not None and views.get("other") is not None
