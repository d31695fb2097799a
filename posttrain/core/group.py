"""A trainer group: ``trainer.world_size`` PolicyTrainer ranks, FSDP2-sharded, driven as one trainer.

The driver talks to rank 0 only, through the same methods as a single ``PolicyTrainer`` actor
(``update``, ``logprobs``, ``evaluate``, ``install``, ``save``, ``load``, ``engine_weights``), so
no loop knows how many ranks there are. Rank 0 (the leader) starts ranks 1..N-1 as Ray actors
it owns (they die with it) in the group's placement group, and forwards every collective call
to them (the arguments put once in the object store) before running its own part::

    driver --update(seqs, loss, extras)--> rank 0 --same call--> ranks 1..N-1
    every rank: its share of the micro-batches -> forward/backward (FSDP2 all-gathers each decoder
    layer, reduce-scatters its gradients) -> metrics summed over ranks -> one AdamW step on its shard

The torch side is torch.distributed (gloo on CPU, NCCL on GPUs) and FSDP2: ``fully_shard`` per
decoder layer, then a root unit holding the embeddings, the final norm and the output head.
The root is ``CompletionStatesRoot``: its forward returns the hidden states at the completion
positions *and* the (unsharded) head, so the losses stream the head over token chunks exactly
as with a whole model (``Student``). Mixed precision is the trainer's autocast, as on one rank.

Equality with one rank: every loss is normalised for the whole batch (GRPO's ``LossNormalizer``,
``SftLoss.num_tokens``, ``DistillLoss.num_tokens``), so the batch loss is the sum of the
micro-batch losses wherever they run. FSDP2 averages gradients over ranks, so each rank's loss
is scaled by N before backward: the reduced gradient is then the sum, as on one rank.
Ranks run the same number of forward passes (FSDP's all-gathers are collective): one short of
micro-batches runs a zero-weight pass.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import socket
from datetime import timedelta
from pathlib import Path

import ray
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from rollout.weight_buckets import SharedWeights

from .policy import CompletionStates, PolicyTrainer, Sequences, length_sorted_chunks, merge_metrics, trainer_actor
from .sharded_checkpoint import adapter_record, is_sharded, load_sharded, load_whole, save_sharded, write_model_record
from .sharded_weights import engine_names, sharded_engine_tensors
from .weights import causal_lm, layer_buckets

log = logging.getLogger("posttrain.group")


class CompletionStatesRoot(torch.nn.Module):
    """FSDP2's root unit: the decoder's hidden states at the completion positions, and the output head.

    The head is returned from inside the root's forward, where FSDP2 holds it unsharded, so a loss can
    stream it over token chunks; its gradient is reduce-scattered with the root's at the end of backward.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids_R_L, attention_R_L, position_ids_R_L):
        model_lm = causal_lm(self.model)
        hidden_R_L_H = model_lm.get_decoder()(
            input_ids=input_ids_R_L, attention_mask=attention_R_L, position_ids=position_ids_R_L, use_cache=False
        ).last_hidden_state
        return hidden_R_L_H, model_lm.get_output_embeddings().weight


def shard_model(model) -> CompletionStatesRoot:
    """FSDP2 over ``model`` in place: one unit per decoder layer, the rest (embeddings, norm, head) in the root."""
    for layer in causal_lm(model).get_decoder().layers:
        fully_shard(layer)
    return fully_shard(CompletionStatesRoot(model))


def collective(method):
    """A method every rank runs together. Called on the leader, it is sent to the other ranks first (their
    results dropped, their errors raised), then run here; the leader's result is returned. A generator
    method stays one: the leader yields its items while the others run theirs to the end."""

    def start_peers(self, args, kwargs) -> list:
        packed = ray.put((args, kwargs))
        return [peer.run_as_peer.remote(method.__name__, packed) for peer in self.peers]

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def run_generator(self, *args, **kwargs):
            if not self.peers:  # a peer, or a rank started without Ray (tests): no Ray call at all
                yield from method(self, *args, **kwargs)
                return
            pending = start_peers(self, args, kwargs)
            yield from method(self, *args, **kwargs)
            ray.get(pending)

        return run_generator

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if not self.peers:
            return method(self, *args, **kwargs)
        pending = start_peers(self, args, kwargs)
        result = method(self, *args, **kwargs)
        ray.get(pending)
        return result

    return run


class ShardedTrainer(PolicyTrainer):
    """One rank of a trainer group (see the module docstring); rank 0 also starts and drives the others."""

    def __init__(self, model_path: str, trainer_cfg, seed: int, threads: int, rank: int, init_method: str = "",
                 placement=None, trust_remote_code: bool = False):
        self.rank, self.world_size = rank, trainer_cfg.world_size
        self.peers = []
        if rank == 0 and not init_method:  # the leader starts the others; the rendezvous is on its node
            init_method = f"tcp://{ray.util.get_node_ip_address()}:{free_port()}"
            self.peers = [
                rank_actor(trainer_cfg, placement, index, model_path, seed, threads, index, init_method,
                           trust_remote_code=trust_remote_code)
                for index in range(1, self.world_size)
            ]
        backend = "nccl" if trainer_cfg.num_gpus > 0 else "gloo"
        timeout = timedelta(minutes=10)
        if not dist.is_initialized():  # one group per process; a second trainer in it (tests) reuses it
            dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=self.world_size, timeout=timeout)
        if torch.cuda.is_available():
            torch.cuda.set_device(0)  # Ray shows each rank its own GPU only
        self._roots: dict[int, CompletionStatesRoot] = {}
        self._shared: SharedWeights | None = None  # rank 0's weight file, made on the first streamed sync
        super().__init__(model_path, trainer_cfg, seed, threads, trust_remote_code)  # same seed: same LoRA init

    def release(self) -> None:
        """Rank 0's shared weight file, removed (not a collective: the other ranks hold none)."""
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    def run_as_peer(self, name: str, packed) -> None:
        args, kwargs = packed
        result = getattr(self, name)(*args, **kwargs)
        if inspect.isgenerator(result):
            for _ in result:  # a collective generator (weight buckets): its gathers run as the leader's do
                pass

    def _shard(self, model):
        self._roots[id(model)] = shard_model(model)
        return model

    def completion_states(self, seqs: Sequences, model=None) -> CompletionStates:
        """As ``PolicyTrainer.completion_states`` (same token layout), through the FSDP root of ``model``."""
        model = model or self.model
        layout = self._layout(seqs, causal_lm(model).config)
        with self._autocast():
            hidden_R_L_H, head_V_H = self._roots[id(model)](layout.input_ids_R_L, layout.attention_R_L, layout.position_ids_R_L)
        return CompletionStates(layout.hidden_B_T_H(hidden_R_L_H), head_V_H, layout.targets_B_T, layout.mask_B_T)

    def _reference_logprobs(self, seqs: Sequences):
        if self._ref_model is None and not hasattr(self.model, "disable_adapter"):
            from transformers import AutoModelForCausalLM

            reference = AutoModelForCausalLM.from_pretrained(
                self.model_path, dtype=torch.float32, trust_remote_code=self.trust_remote_code).to(self.device)
            reference.requires_grad_(False).eval()
            self._ref_model = self._shard(reference)
        return super()._reference_logprobs(seqs)

    # ---- the batch split over ranks ---------------------------------------

    def _micro_batches(self, seqs: Sequences):
        """Every ``world_size``-th length-sorted micro-batch from this rank's index; as many passes on every
        rank, the missing ones zero-weighted. Weight ``world_size``: FSDP2 averages gradients over ranks."""
        chunks = list(length_sorted_chunks(seqs, self.cfg.micro_batch_size))
        mine = chunks[self.rank :: self.world_size]
        for index in range(math.ceil(len(chunks) / self.world_size)):
            yield (mine[index], float(self.world_size)) if index < len(mine) else (chunks[0][:1], 0.0)

    def _reduce_metrics(self, totals: dict[str, float]) -> dict[str, float]:
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, totals)
        merged: dict[str, float] = {}
        for part in gathered:
            merge_metrics(merged, part)
        return merged

    @torch.no_grad()
    def _clip_gradients(self) -> float:
        """The global gradient norm from every rank's shards (one all-reduce of the squared sums), clipped as
        ``clip_grad_norm_`` does. (``clip_grad_norm_`` over the DTensors reported a norm 1e-4 off for the
        distillation step on gloo while the gradients themselves matched one rank's to 1e-8.)"""
        shards = [p.grad.to_local() for p in self.model.parameters() if p.grad is not None]
        squares = torch.zeros((), dtype=torch.float32, device=self.device)
        for shard in shards:
            squares += shard.float().pow(2).sum()
        dist.all_reduce(squares)
        norm = squares.sqrt()
        scale = (self.cfg.max_grad_norm / (norm + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(shards, scale)
        return float(norm)

    # ---- the collective entry points --------------------------------------

    update = collective(PolicyTrainer.update)
    evaluate = collective(PolicyTrainer.evaluate)
    install = collective(PolicyTrainer.install)

    @collective
    @torch.no_grad()
    def logprobs(self, seqs: Sequences, reference: bool = False) -> list[list[float]]:
        rows: dict[int, list[float]] = {}
        for indices, weight in self._micro_batches(seqs):
            sub = seqs.select(indices)
            logprobs_B_T, _ = self._reference_logprobs(sub) if reference else self.token_logprobs(sub)
            if weight:
                rows.update({i: row[: len(c)].tolist() for i, row, c in zip(indices, logprobs_B_T, sub.completion_ids)})
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, rows)
        merged = {index: row for part in gathered for index, row in part.items()}
        return [merged[index] for index in range(len(seqs))]

    @collective
    def engine_weights(self, dtype: str = "bfloat16") -> dict[str, torch.Tensor]:
        """HF-named full weights (LoRA merged), gathered one FSDP unit at a time; the whole dict on rank 0
        (the cross-node push); ``weight_buckets`` streams them instead."""
        weights = {}
        for name, tensor in sharded_engine_tensors(self.model, dtype, self._roots[id(self.model)]):
            if self.rank == 0:
                weights[name] = tensor
        return weights

    @collective
    def weight_buckets(self, dtype: str = "bfloat16", full: bool = False, shared: bool = True):
        """The engine's tensors gathered one FSDP unit at a time on every rank; rank 0 writes each bucket into
        its shared file and yields its ``BucketRef`` (``PolicyTrainer.weight_buckets``'s stream, from shards).

        Rank 0 sends alone: the all-gather already brings each layer whole to every rank, and the engine
        loads whole HF tensors (vLLM shards them for its own tensor parallelism); ranks sending shard ranges
        would need the engine to reassemble every fused weight."""
        changed_only = hasattr(self.model, "peft_config") and not full
        if shared and self.rank == 0 and (self._shared is None or self._shared.dtype != dtype):
            layout = [(clean, shape) for _, clean, shape in engine_names(self.model)]
            self._shared = SharedWeights(layout, dtype)
        named = sharded_engine_tensors(self.model, dtype, self._roots[id(self.model)], changed_only)
        for bucket in layer_buckets(named, int(self.cfg.weight_bucket_mb * 2**20)):
            if self.rank == 0:  # shared=False (an engine on another node): the bucket's tensors, one Ray object
                yield self._shared.write(bucket) if shared else [(name, tensor.contiguous()) for name, tensor in bucket]

    @collective
    def save(self, directory: str, tokenizer=None) -> str:
        """Sharded: each rank writes its shards into ``<directory>.partial/dcp``; rank 0 adds the trainer state
        and renames the directory when every rank is done."""
        import shutil

        path = Path(directory)
        partial = path.with_name(path.name + ".partial")
        if self.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        dist.barrier()
        save_sharded(self.model, self.optimizer, partial)
        if self.rank == 0:
            state = {"steps": self.steps, "torch_rng": torch.get_rng_state(), "world_size": self.world_size}
            torch.save(state, partial / "trainer_state.pt")
            write_model_record(partial, self.model_path, adapter_record(self.model))
            if tokenizer is not None:
                tokenizer.save_pretrained(partial)
        dist.barrier()
        if self.rank == 0:
            shutil.rmtree(path, ignore_errors=True)
            partial.rename(path)
        dist.barrier()
        return str(path)

    @collective
    def load(self, directory: str) -> int:
        """A sharded checkpoint of any number of ranks, or a one-rank one (each rank keeping its shards)."""
        if not is_sharded(directory):
            return self._restore_state(load_whole(self.model, self.optimizer, directory))
        load_sharded(self.model, self.optimizer, directory)
        return self._restore_state(torch.load(Path(directory) / "trainer_state.pt", weights_only=False))


def rank_actor(trainer_cfg, placement, bundle: int, model_path: str, seed: int, threads: int, *rank_args, **kwargs):
    """Rank ``bundle``'s ``ShardedTrainer`` actor, in that bundle of ``placement`` (None: wherever the caller's
    placement group captures it)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = None if placement is None else PlacementGroupSchedulingStrategy(placement, placement_group_bundle_index=bundle)
    actor_cls = ray.remote(ShardedTrainer).options(
        num_cpus=trainer_cfg.num_cpus,
        num_gpus=trainer_cfg.num_gpus,
        scheduling_strategy=strategy,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads)}},
    )
    return actor_cls.remote(model_path, trainer_cfg, seed, threads, *rank_args, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def rank_placement(trainer_cfg):
    """One bundle per rank (PACK: on as few nodes as fit), ready; None inside a pipeline stage's placement group,
    which already holds every rank's resources and captures the actors started in it."""
    from ray.util.placement_group import get_current_placement_group, placement_group

    if get_current_placement_group() is not None:
        return None
    bundle = {key: value for key, value in {"CPU": trainer_cfg.num_cpus, "GPU": trainer_cfg.num_gpus}.items() if value > 0}
    if not bundle:
        return None
    group = placement_group([bundle] * trainer_cfg.world_size, strategy="PACK")
    ray.get(group.ready())
    return group


def start_trainer(model_path: str, trainer_cfg, seed: int = 0, trust_remote_code: bool = False):
    """The recipe's trainer as one actor handle: a plain ``PolicyTrainer`` for ``world_size: 1``, else rank 0
    of a group (which starts the other ranks)."""
    if trainer_cfg.world_size == 1:
        return trainer_actor(model_path, trainer_cfg, seed, trust_remote_code)
    placement = rank_placement(trainer_cfg)
    gpus = trainer_cfg.num_gpus > 0
    log.info("trainer group: %d FSDP2 ranks (%s)", trainer_cfg.world_size, "nccl" if gpus else "gloo")
    threads = int(trainer_cfg.num_cpus) if gpus else max(1, (os.cpu_count() or 1) // trainer_cfg.world_size)
    leader = rank_actor(trainer_cfg, placement, 0, model_path, seed, threads, 0, "", placement,
                        trust_remote_code=trust_remote_code)
    if placement is not None:
        _OWNED_PLACEMENTS[leader] = placement
    return leader


# rank 0's handle -> the placement group ``start_trainer`` reserved for its group (this process owns it:
# it outlives the actors unless removed, holding their CPUs/GPUs from the stages that follow)
_OWNED_PLACEMENTS: dict = {}


def stop_trainer(trainer) -> None:
    """Kill a trainer (rank 0 of a group takes its ranks with it) and free the placement group reserved for it."""
    from ray.util.placement_group import remove_placement_group

    try:  # its shared weight file (the sweep of the next sender on this node removes it otherwise)
        ray.get(trainer.release.remote(), timeout=5)  # queued behind a step still running: not waited for
    except Exception:  # noqa: BLE001 - a dead or hung trainer: killed below all the same
        pass
    ray.kill(trainer)
    placement = _OWNED_PLACEMENTS.pop(trainer, None)
    if placement is not None:
        remove_placement_group(placement)
