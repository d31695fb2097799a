"""Which Ray cluster a ``posttrain`` command joins."""

from __future__ import annotations

import os
import socket
from pathlib import Path

# Where `ray start` records the cluster it started on this machine (Ray's default temp dir).
RECORDED_CLUSTER = Path("/tmp/ray/ray_current_cluster")


def init_ray() -> None:
    """Join ``RAY_ADDRESS`` (``ray job submit`` sets it for the job), else the cluster ``ray start`` left
    running on this machine, else start a local one.

    Plain ``ray.init()`` would follow Ray's record of the last cluster started here even when that
    cluster is gone, and wait on it forever; a record whose head does not answer is ignored.

    Nothing is cleaned up first: a SIGKILLed driver's local Ray dies with it (GCS and raylet at
    once, workers within seconds, two orphaned agents within about a minute; docs/ARCHITECTURE.md,
    Resume) and writes no record, so the next local start is fresh; ``ray stop`` would kill
    every Ray on the machine, other users' too.
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or ("auto" if recorded_cluster_alive() else "local")
    ray.init(address=address)


def recorded_cluster_alive(record: Path = RECORDED_CLUSTER, timeout_s: float = 1.0) -> bool:
    """True when Ray's record names a head (GCS) that accepts a connection."""
    try:
        host, port = record.read_text().strip().rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False
