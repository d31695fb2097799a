"""Methods mixed into vLLM's worker (``LLM(worker_extension_cls=...)``).

They run inside the worker, next to the live model, and are reached through
``LLM.collective_rpc``. Kept import-light: vLLM imports this by dotted path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from .weight_buckets import BucketRef, bucket_tensors

RELOAD_LOGGERS = ("vllm.model_executor.model_loader.reload.layerwise", "vllm.model_executor.model_loader.reload.inplace")
# Per push, vLLM also logs at INFO "Reloading weights inplace...", "Reloading and processing weights
# took N seconds" and "Successfully reset prefix cache": routine, and the step line already has the
# push's seconds (time/weight_sync). Dropped by message; any warning of these loggers still shows.
ROUTINE_PUSH_INFO = {
    "vllm.model_executor.model_loader.reload.inplace": ("Reloading weights inplace", "Reloading and processing weights took"),
    "vllm.v1.core.block_pool": ("Successfully reset prefix cache",),
}


class WeightSyncExtension:
    """In-place weight reload that survives the CPU backend's weight repacking.

    ``model.load_weights`` on the live model fails on CPU (linear weights are
    repacked after loading), so we go through ``reload_weights``, which re-runs
    the post-load processing and works the same on GPU.
    """

    def load_pushed_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], partial: bool = False) -> int:
        named_tensors = list(named_tensors)
        if getattr(self, "_reload_noise", None) is None:
            self._reload_noise = KnownReloadNoise(self.model_runner.model)
            for name in RELOAD_LOGGERS:
                logging.getLogger(name).addFilter(self._reload_noise)
            for name, prefixes in ROUTINE_PUSH_INFO.items():
                logging.getLogger(name).addFilter(RoutineInfo(prefixes))
        self._reload_noise.partial = partial
        try:
            self.reload_weights(weights_iterator=iter(named_tensors), is_checkpoint_format=True)
        finally:
            self._reload_noise.partial = False
        return len(named_tensors)

    def load_pushed_weights_file(self, path: str, partial: bool = False) -> int:
        # Multi-process engines: args cross a process boundary, so tensors travel
        # as a safetensors file (in /dev/shm on one node) instead of as lists.
        from safetensors.torch import load_file

        return self.load_pushed_weights(load_file(path).items(), partial)

    def load_weight_bucket(self, ref: BucketRef) -> int:
        # One bucket of a streamed sync (rollout/weight_buckets.py): its tensors are views of the
        # sender's shared file, loaded in place; a bucket holds whole layers, so each layer is
        # re-processed (CPU repacking) as soon as its bucket is in, and the others keep theirs.
        return self.load_pushed_weights(bucket_tensors(ref), partial=True)


LOAD_CAST_LOGGER = "vllm.model_executor.models.utils"


def quiet_requested_cast(dtype: str) -> None:
    """Install ``RequestedCast`` for an engine of ``dtype``: call before ``vllm.LLM`` loads the model."""
    logging.getLogger(LOAD_CAST_LOGGER).addFilter(RequestedCast(dtype))


class RequestedCast(logging.Filter):
    """Drops vLLM's per-tensor "Attempted to load weight W with dtype float32 into parameter with
    dtype bfloat16" when the parameter's dtype is the engine's own (``model.engine_dtype``): a model
    stored in float32 (the built-in SmolLM2, every full fine-tuning checkpoint) is cast on purpose,
    and vLLM warned once per tensor (122 lines for SmolLM2) at every engine start. A cast into any
    other dtype still warns. Installed in the engine's process: a multi-process engine's workers
    (GPU, tensor parallel) are not reached."""

    def __init__(self, dtype: str):
        super().__init__()
        self.engine_dtype = f"torch.{dtype}"

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Attempted to load weight %s with dtype %s") or len(record.args or ()) != 3:
            return True
        return str(record.args[2]) != self.engine_dtype


class RoutineInfo(logging.Filter):
    """Drops INFO (and lower) records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not str(record.msg).startswith(self.prefixes)


class KnownReloadNoise(logging.Filter):
    """Drops ``reload_weights``' "<Layer>: Failed to load weights" for the layers a push never
    carries on purpose: rotary embeddings (a computed cache, no weights) and an output head tied
    to the embeddings (it shares their storage, so the pushed embeddings are the head); and, while a
    bucket loads, the list of the layers outside it. On every weight sync these warnings read like
    a fault; any other layer's warning still shows."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        head = getattr(getattr(model, "lm_head", None), "weight", None)
        others = (p for name, p in model.named_parameters(remove_duplicate=False) if not name.startswith("lm_head."))
        self.tied_head = head is not None and any(p.data_ptr() == head.data_ptr() for p in others)
        self.head_class = type(model.lm_head).__name__ if self.tied_head else None

    partial = False  # a bucket is being loaded: the layers it does not carry keep their weights on purpose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.partial and str(record.msg).startswith("Following weights were not loaded"):
            return False  # a bucket's "every other layer was not loaded": by design
        if record.msg != "%s: Failed to load weights" or not record.args:
            return True
        if self.partial:
            return False
        layer = str(record.args[0])
        return not (layer.endswith("RotaryEmbedding") or layer == self.head_class)
