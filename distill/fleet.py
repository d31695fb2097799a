"""The teachers at scale: the pool split into shards, each shard replicated, states sent per micro-batch.

    distill.teacher_shards: S     # the teachers spread over S pools, each teacher whole on one
    distill.teacher_replicas: R   # R copies of each shard; a step's micro-batches alternate between them

Teachers that share weights (adapters over one base) stay in one shard, so each base is loaded
once per replica; shards balance the models they hold, then their teachers. Twelve 7B teachers on
four GPUs: ``teacher_shards: 4, teacher_num_gpus: 1`` (three models each).

A step's sequences are cut into the trainer's own micro-batches (``length_sorted_chunks`` with
the trainer's ``micro_batch_size``); each micro-batch is scored by the shards holding its teachers
(one replica of each, in turn) and its hidden states stay in Ray's object store, one object per
(micro-batch, shard). A replica scores all its micro-batches of a step in one call, grouped by
teacher (a full teacher offloaded between groups moves once a step), and streams them back. The update
receives only ``RemoteRow`` handles (``posttrain/core/remote_rows.py``) and each trainer rank
fetches a micro-batch's states when it runs it: neither the driver nor a trainer rank holds a
step's states whole (a pool holds its own share until it has streamed it).
"""

from __future__ import annotations

import ray

from posttrain.core.policy import Sequences, length_sorted_chunks
from posttrain.core.remote_rows import RemoteRow

from .objective import TeacherHeads
from .teachers import Teacher, shard_teachers, teacher_pool_actor


class TeacherFleet:
    """Every teacher pool actor of a run, driven as one: heads, per-micro-batch scoring, a teacher's weights."""

    def __init__(self, teachers: list[Teacher], cfg, micro_batch_size: int, trust_remote_code: bool = False):
        self.teachers = teachers
        self.micro_batch_size = micro_batch_size
        self.shards = shard_teachers(teachers, cfg.teacher_shards)
        self.shard_of = {index: shard for shard, part in enumerate(self.shards) for index in part}
        self.pools = [
            [teacher_pool_actor(teachers, cfg.teacher_num_cpus, cfg.teacher_num_gpus, micro_batch_size,
                                trust_remote_code, serves=part) for _ in range(cfg.teacher_replicas)]
            for part in self.shards
        ]

    @property
    def actors(self) -> list:
        return [pool for replicas in self.pools for pool in replicas]

    def heads(self) -> TeacherHeads:
        """Every teacher's output head, each distinct one once (from the first replica of each shard)."""
        owner_heads = {}
        for part in ray.get([replicas[0].owner_heads.remote() for replicas in self.pools]):
            owner_heads |= part
        return TeacherHeads.of_owners([t.base or t.path for t in self.teachers], owner_heads)

    def score(self, seqs: Sequences, routing: list[list[tuple[int, float]]]) -> dict[str, list]:
        """The distillation extras ``{"routes": [RemoteRow per sequence]}``.

        The trainer's micro-batches go round-robin over each shard's replicas (a micro-batch only to the shards
        holding its teachers); each replica scores all of its micro-batches in one call, grouped by teacher, and
        streams the states back as one object per micro-batch, left in Ray's object store."""
        chunks = list(length_sorted_chunks(seqs, self.micro_batch_size))
        parts: list[list[tuple[ray.ObjectRef, int]]] = [[] for _ in range(len(seqs))]
        streams = []
        for shard, replicas in enumerate(self.pools):
            work: list[list[tuple[list[int], list]]] = [[] for _ in replicas]
            sent = 0  # this shard's micro-batches so far: the next goes to replica sent % R
            for chunk in chunks:
                sub_routing = [[(k, w) for k, w in routing[row] if self.shard_of[k] == shard] for row in chunk]
                if any(sub_routing):
                    work[sent % len(replicas)].append((chunk, sub_routing))
                    sent += 1
            for replica, items in zip(replicas, work):
                if items:
                    rows = [row for chunk, _ in items for row in chunk]
                    stream = replica.score_chunks.options(num_returns="streaming").remote(
                        seqs.select(rows), [routes for _, sub in items for routes in sub], [len(chunk) for chunk, _ in items])
                    streams.append((stream, items))
        for stream, items in streams:
            for (chunk, sub_routing), ref in zip(items, stream):
                for position, row in enumerate(chunk):
                    if sub_routing[position]:
                        parts[row].append((ref, position))
        return {"routes": [RemoteRow(tuple(row_parts)) for row_parts in parts]}

    def engine_weights(self, index: int, dtype: str = "bfloat16") -> ray.ObjectRef:
        """Teacher ``index``'s full weights for a vLLM engine (adapter merged), from its shard: to evaluate it."""
        return self.pools[self.shard_of[index]][0].engine_weights.remote(index, dtype)

    def ready(self) -> None:
        ray.get([pool.ready.remote() for pool in self.actors])
