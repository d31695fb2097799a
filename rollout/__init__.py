"""Rollouts on vLLM: the engine actor and in-place weight sync."""

from .engine import Completion, EngineConfig, GenerateResult, RolloutEngine, SamplingSpec, engine_actor

__all__ = ["Completion", "EngineConfig", "GenerateResult", "RolloutEngine", "SamplingSpec", "engine_actor"]
