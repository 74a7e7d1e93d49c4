"""A killed container-test session's leftovers are removed by the next; one session at a time."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import docker
import pytest
from dockerlab import LAB_IMAGE
from support.leftovers import PROJECT_LABEL, TEST_PREFIX, SessionBusy, reap, session_lock


def test_a_second_session_is_refused_naming_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    with (
        session_lock(lock),
        pytest.raises(SessionBusy, match=rf"pid {os.getpid()}\) holds .*wait for it to end"),
        session_lock(lock),
    ):
        pass
    with session_lock(lock):  # released: the next session takes it
        pass


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        ("mcp-it-157cd2a7", True),
        ("mcp-fleet-4bba219f", True),
        ("mcp-it-stdio-0a1b2c3d", True),
        ("mcp-scanner-appliance", False),  # scripts/up's project: an operator's deployment
        ("my-mcp-it-thing", False),
        ("bridge", False),
    ],
)
def test_only_the_tests_own_names_count_as_leftovers(name: str, ours: bool) -> None:
    assert (TEST_PREFIX.match(name) is not None) is ours


@pytest.mark.integration
def test_a_killed_sessions_project_is_removed_even_when_it_restarts_with_the_engine(
    docker_client: docker.DockerClient, images: tuple[str, str]
) -> None:
    # This test's own prefix: reaping the session's prefix here would take down its live fixtures.
    project = f"mcp-reaptest-{uuid.uuid4().hex[:8]}"
    prefix = re.compile(rf"^{project}")
    labels = {PROJECT_LABEL: project}
    network = docker_client.networks.create(f"{project}_lab", internal=True, labels=labels)
    volume = docker_client.volumes.create(f"{project}_state", labels=labels)
    # As compose left it: restart unless-stopped, so it comes back with the engine; no traffic
    # (an internal network of its own, and the target only serves).
    container = docker_client.containers.run(
        LAB_IMAGE,
        name=f"{project}-web-1",
        detach=True,
        labels=labels,
        network=network.name,
        restart_policy={"Name": "unless-stopped"},
    )
    unrelated = docker_client.networks.create(f"keep-{project}", internal=True)
    try:
        removed = reap(docker_client, prefix)
        assert sorted(removed) == sorted(
            [f"container {project}-web-1", f"network {project}_lab", f"volume {project}_state"]
        )
        for gone, kind in ((container, docker_client.containers), (network, docker_client.networks)):
            with pytest.raises(docker.errors.NotFound):
                kind.get(gone.id)
        with pytest.raises(docker.errors.NotFound):
            docker_client.volumes.get(volume.name)
        docker_client.networks.get(unrelated.id)  # not ours: kept
    finally:
        unrelated.remove()
        for leftover in reap(docker_client, prefix):  # when the assertions above failed
            print(f"cleaned up {leftover}")
