"""Methods mixed into vLLM's worker (``LLM(worker_extension_cls=...)``).

They run inside the worker, next to the live model, and are reached through
``LLM.collective_rpc``. Kept import-light: vLLM imports this by dotted path.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class WeightSyncExtension:
    """In-place weight reload that survives the CPU backend's weight repacking.

    ``model.load_weights`` on the live model fails on CPU (linear weights are
    repacked after loading), so we go through ``reload_weights``, which re-runs
    the post-load processing and works the same on GPU.
    """

    def load_pushed_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        named_tensors = list(named_tensors)
        self.reload_weights(weights_iterator=iter(named_tensors), is_checkpoint_format=True)
        return len(named_tensors)

    def load_pushed_weights_file(self, path: str) -> int:
        # Multi-process engines: args cross a process boundary, so tensors travel
        # as a safetensors file (in /dev/shm on one node) instead of as lists.
        from safetensors.torch import load_file

        return self.load_pushed_weights(load_file(path).items())
