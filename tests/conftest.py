"""Shared fixtures. Unit tests run in seconds; ``-m integration`` ones start real vLLM / Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GSM8K = SHARED / "data" / "gsm8k" / "train.jsonl"


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    from posttrain.core.models import TINY_RANDOM, resolve_model

    return resolve_model(TINY_RANDOM)


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from posttrain.core.models import EMBEDDED_DEFAULT, resolve_model

    return resolve_model(EMBEDDED_DEFAULT)


@pytest.fixture(scope="session")
def ray_local():
    import ray

    # address="local": a fresh instance, even when a `ray start` cluster runs on this machine
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def require_gsm8k() -> Path:
    if not GSM8K.exists():
        pytest.skip(f"SKIPPED LOUDLY: {GSM8K} is missing (../shared is not beside the checkout)")
    return GSM8K
