"""Rollouts on vLLM: the engine actor and in-place weight sync."""

from . import api_tasks as _builtin_api_tasks  # noqa: F401  (registers the built-in environments)
from . import builtin_envs as _builtin_envs  # noqa: F401
from .engine import Completion, EngineConfig, GenerateResult, RolloutEngine, SamplingSpec, engine_actor

__all__ = ["Completion", "EngineConfig", "GenerateResult", "RolloutEngine", "SamplingSpec", "engine_actor"]
