"""The weight-sync worker extension's log filter: known, harmless reload warnings go, others stay."""

import logging

import torch

from rollout.worker_ext import ROUTINE_PUSH_INFO, KnownReloadNoise, RoutineInfo


class ParallelLMHead(torch.nn.Module):
    def __init__(self, weight: torch.nn.Parameter):
        super().__init__()
        self.weight = weight


class TinyLM(torch.nn.Module):
    def __init__(self, tied: bool):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.lm_head = ParallelLMHead(self.embed.weight if tied else torch.nn.Parameter(torch.zeros(10, 4)))


def shown(noise: KnownReloadNoise, layer: str) -> bool:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "%s: Failed to load weights", (layer,), None)
    return noise.filter(record)


def test_tied_head_and_rotary_warnings_are_dropped_others_kept():
    tied = KnownReloadNoise(TinyLM(tied=True))
    assert not shown(tied, "ParallelLMHead") and not shown(tied, "Llama3RotaryEmbedding")
    assert shown(tied, "QKVParallelLinear")
    untied = KnownReloadNoise(TinyLM(tied=False))
    assert shown(untied, "ParallelLMHead"), "an untied head that failed to load is a real fault"
    other = logging.LogRecord("x", logging.WARNING, __file__, 1, "something else %s", ("RotaryEmbedding",), None)
    assert untied.filter(other)


def test_routine_push_info_is_dropped_warnings_of_the_same_loggers_kept():
    routine = RoutineInfo(ROUTINE_PUSH_INFO["vllm.model_executor.model_loader.reload.inplace"])

    def record(level, msg, args=()):
        return logging.LogRecord("x", level, __file__, 1, msg, args, None)

    assert not routine.filter(record(logging.INFO, "Reloading and processing weights took %.2f seconds", (1.3,)))
    assert not routine.filter(record(logging.INFO, "Reloading weights inplace..."))
    assert routine.filter(record(logging.WARNING, "Reloading and processing weights took %.2f seconds", (1.3,)))
    assert routine.filter(record(logging.INFO, "something else"))
    assert ROUTINE_PUSH_INFO["vllm.v1.core.block_pool"] == ("Successfully reset prefix cache",)


def test_the_cast_to_the_engine_dtype_is_quiet_other_casts_warn():
    from rollout.worker_ext import RequestedCast

    def record(source, target):
        msg = "Attempted to load weight %s with dtype %s into parameter with dtype %s"
        return logging.LogRecord("x", logging.WARNING, __file__, 1, msg, ("norm.weight", source, target), None)

    bf16 = RequestedCast("bfloat16")
    assert not bf16.filter(record(torch.float32, torch.bfloat16)), "the cast the recipe asked for"
    assert bf16.filter(record(torch.float32, torch.float16)), "a cast into another dtype still warns"
    assert bf16.filter(logging.LogRecord("x", logging.WARNING, __file__, 1, "other %s", ("torch.bfloat16",), None))
