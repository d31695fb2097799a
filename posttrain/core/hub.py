"""Can a hub id be used here? One cheap answer at validation time, never a download.

A model or dataset named by a hub id (``org/name``) is fetched when the run
starts, minutes after ``posttrain check`` said yes. Offline, that fetch fails
deep inside ``transformers`` / ``datasets`` with a long retry trace. So the
check asks two cheap questions first: is the id already in the local hub cache,
and can the hub's host be reached at all (one TCP connect, a few seconds at
most, once per process). Neither question downloads anything.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from huggingface_hub import constants, try_to_load_from_cache

CONNECT_TIMEOUT_S = 3.0
# the file whose presence in the cache says "this id was downloaded before"
MARKER_FILES = {"model": "config.json", "dataset": "README.md"}


def looks_like_hub_id(spec: str) -> bool:
    """``org/name``: one slash, both parts non-empty, not a path (no leading ``.``, ``/``, ``~``)."""
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~")) and "\\" not in spec


def offline_forced() -> bool:
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_DATASETS_OFFLINE", "") in ("1", "true", "TRUE")


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """One TCP connect to the hub's host (``HF_ENDPOINT``); False offline or when ``HF_HUB_OFFLINE`` is set."""
    if offline_forced():
        return False
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def cached(repo_id: str, repo_type: str) -> bool:
    """Whether ``repo_id`` was downloaded into the local hub cache before (its marker file is there)."""
    try:
        found = try_to_load_from_cache(repo_id, MARKER_FILES[repo_type], repo_type=repo_type)
    except Exception:  # noqa: BLE001 - a malformed id is "not cached"; the load reports it properly
        return False
    return isinstance(found, str)


def unreachable_message(repo_id: str, repo_type: str, local_hint: str) -> str | None:
    """One line when ``repo_id`` can be neither read from the cache nor fetched from the hub, else None."""
    if cached(repo_id, repo_type) or hub_reachable():
        return None
    why = "HF_HUB_OFFLINE is set" if offline_forced() else f"{constants.ENDPOINT} cannot be reached"
    return (f"{repo_type} {repo_id!r} looks like a hub id, but it is not in the local cache and the hub is "
            f"unreachable ({why}); {local_hint}")
