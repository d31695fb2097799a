"""Weight buckets in shared memory: how new weights travel from a trainer to the engine on one node.

A sender owns one file in ``/dev/shm`` big enough for every tensor it may send
(``SharedWeights``); each weight sync writes the tensors of a bucket, cast to the
engine's dtype, straight into their fixed places in that file, and sends only a
small ``BucketRef`` (file, names, dtypes, shapes, offsets). The engine maps the
same file once (``bucket_tensors``) and reads each bucket's tensors as views:
no state dict is rebuilt, nothing is pickled, and the bytes are copied once
on each side (cast in, load into the engine's parameters).

Anything that yields ``(name, tensor)`` pairs can feed it: today the trainer's
model (``posttrain/core/weights.py``); a multi-rank trainer can write the buckets
its ranks gathered. Buckets never overlap in the file, so the engine can load
bucket ``k`` while the sender writes ``k + 1``.

Kept import-light (torch only): vLLM's worker imports it through ``worker_ext``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

ALIGN = 64  # bytes; every tensor starts on a cache line


@dataclass(frozen=True)
class TensorSlot:
    name: str  # HF checkpoint name, as the engine's load_weights expects
    dtype: str  # torch dtype name, e.g. "bfloat16"
    shape: tuple[int, ...]
    offset: int  # bytes into the file


@dataclass(frozen=True)
class BucketRef:
    """Where one bucket's tensors lie in a shared file: what crosses the process boundary."""

    path: str
    file_bytes: int
    slots: tuple[TensorSlot, ...]

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(slot.dtype, slot.shape) for slot in self.slots)


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count * getattr(torch, dtype).itemsize


FILE_PREFIX = "posttrain-weights-"


def remove_orphaned_files(directory: str) -> list[str]:
    """Remove the weight files in ``directory`` whose creating process no longer runs; their names.

    Pids are read in this process's pid namespace: two containers sharing ``/dev/shm`` (``--ipc=host``)
    but not their pids would take each other's live files for orphans (Ray's workers on a node share both)."""
    removed = []
    for path in Path(directory).glob(f"{FILE_PREFIX}*-*.bin"):
        pid = path.name.removeprefix(FILE_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent; PermissionError means it runs as another user
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


class SharedWeights:
    """The sender's side: a fixed layout of named tensors in one shared file, written in place.

    ``layout`` is every ``(name, shape)`` that may be sent, in ``dtype``; each gets a fixed
    slot. ``write(bucket)`` copies (and casts) a bucket's tensors into their slots and returns
    its ``BucketRef``. The file is removed by ``close`` (or when the process ends).
    """

    def __init__(self, layout: Iterable[tuple[str, tuple[int, ...]]], dtype: str, directory: str | None = None):
        self.dtype = dtype
        self.slots: dict[str, TensorSlot] = {}
        offset = 0
        for name, shape in layout:
            self.slots[name] = TensorSlot(name, dtype, tuple(shape), offset)
            offset += -(-_nbytes(dtype, tuple(shape)) // ALIGN) * ALIGN
        self.file_bytes = max(offset, ALIGN)
        directory = directory or shm_dir()
        remove_orphaned_files(directory)
        # the creator's pid in the name: a file whose creator is gone (a killed actor never runs ``close``) is
        # found and removed by the next sender on this node
        handle = tempfile.NamedTemporaryFile(prefix=f"{FILE_PREFIX}{os.getpid()}-", suffix=".bin", dir=directory, delete=False)
        handle.truncate(self.file_bytes)
        handle.close()
        self.path = handle.name
        self._buffer = torch.from_file(self.path, shared=True, size=self.file_bytes, dtype=torch.uint8)

    def view(self, name: str) -> torch.Tensor:
        return _slot_view(self._buffer, self.slots[name])

    @torch.no_grad()
    def write(self, bucket: Iterable[tuple[str, torch.Tensor]]) -> BucketRef:
        slots = []
        for name, tensor in bucket:
            if name not in self.slots:
                raise KeyError(f"{name} has no slot in the shared weight file (layout fixed at start)")
            slot = self.slots[name]
            if tuple(tensor.shape) != slot.shape:
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} does not match its slot {slot.shape}")
            self.view(name).copy_(tensor)
            slots.append(slot)
        return BucketRef(self.path, self.file_bytes, tuple(slots))

    def close(self) -> None:
        self._buffer = None
        if os.path.exists(self.path):
            os.unlink(self.path)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass


def _slot_view(buffer_N: torch.Tensor, slot: TensorSlot) -> torch.Tensor:
    size = _nbytes(slot.dtype, slot.shape)
    return buffer_N[slot.offset : slot.offset + size].view(getattr(torch, slot.dtype)).view(slot.shape)


_MAPPED: dict[tuple[str, int], torch.Tensor] = {}


def bucket_tensors(ref: BucketRef) -> list[tuple[str, torch.Tensor]]:
    """The receiver's side: the bucket's tensors as views of the shared file (mapped once per file)."""
    key = (ref.path, ref.file_bytes)
    if key not in _MAPPED:
        for old in [k for k in _MAPPED if k[0] == ref.path]:
            del _MAPPED[old]
        _MAPPED[key] = torch.from_file(ref.path, shared=True, size=ref.file_bytes, dtype=torch.uint8)
    return [(slot.name, _slot_view(_MAPPED[key], slot)) for slot in ref.slots]
