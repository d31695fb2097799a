"""PolicyTrainer: the torch side of RL and distillation, meant to live in a Ray actor.

It holds the trainable model (full fine-tuning, or LoRA through peft), computes
per-token log-probs of completions, applies a loss-driven update with gradient
accumulation, and hands out engine-ready weights for the push into vLLM.

Log-probs are computed only where they are needed: the decoder runs over the
whole sequence, but the output head only over completion positions, so the
``[tokens, vocab]`` logits never include the prompt.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
import torch.utils.checkpoint

from rollout.priority import restore_priority

from .logits import LogitsPath, check_logits_path, logits_path
from .sharded_checkpoint import is_sharded, load_sharded
from .packing import TokenLayout, packed_layout, padded_layout, supports_packing
from .remote_rows import fetch_rows
from .weights import WeightSender, cast_buckets, causal_lm, engine_tensors


@dataclass
class Sequences:
    """Token-id sequences split into prompt and completion (what the engine returned).

    ``completion_mask`` (optional, 0/1 per completion token) marks tokens the loss
    ignores, e.g. a close tag forced by budget forcing; ``None`` trains on all.
    ``temperature`` is the one the completions were sampled at: their log-probs (policy,
    old policy, reference) are of ``softmax(logits / temperature)``, the distribution that
    sampled them. Distillation leaves it at 1: its loss compares the models themselves.
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    completion_mask: list[list[int]] | None = None
    temperature: float = 1.0

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def select(self, indices: list[int]) -> Sequences:
        mask = [self.completion_mask[i] for i in indices] if self.completion_mask is not None else None
        return Sequences(
            [self.prompt_ids[i] for i in indices], [self.completion_ids[i] for i in indices], mask, self.temperature
        )


@dataclass
class CompletionStates:
    """The student at its completion positions: what a distillation loss needs."""

    hidden_B_T_H: torch.Tensor  # last hidden state before the token at [b, t] (autocast dtype)
    head_V_H: torch.Tensor  # output head (tied to the embeddings where the model ties them)
    targets_B_T: torch.Tensor  # the completion token ids
    mask_B_T: torch.Tensor  # 1.0 on real completion tokens


class Student:
    """The model being trained at its completion positions, for one micro-batch: what a loss asks for.

    Losses take ``(student, extras, installed) -> (loss, metrics)``. A policy-gradient or SFT loss
    asks for ``student.logprobs()`` (the output head runs then, in checkpointed token chunks); a
    distillation loss reads ``student.states`` (hidden states + head) and streams its own head.
    Nothing is computed that the loss does not ask for.
    """

    def __init__(self, states: CompletionStates, chunk_tokens: int, autocast, path: LogitsPath):
        self.states, self._chunk_tokens, self._autocast, self.path = states, chunk_tokens, autocast, path
        self._logprobs_B_T: torch.Tensor | None = None

    @property
    def mask_B_T(self) -> torch.Tensor:
        return self.states.mask_B_T

    def logprobs(self) -> torch.Tensor:
        """``logprobs_B_T`` of the completion tokens (0 where masked) under the distribution that sampled them
        (``self.path``: the model's logit post-processing and the sampling temperature), computed once."""
        if self._logprobs_B_T is None:
            states = self.states
            trained_B_T = states.mask_B_T > 0  # the head runs on these tokens only, never on padding
            with self._autocast():
                logprobs_1_N = chunked_target_logprobs(
                    states.hidden_B_T_H[trained_B_T].unsqueeze(0), states.head_V_H,
                    states.targets_B_T[trained_B_T].unsqueeze(0), self._chunk_tokens, self.path,
                )
            logprobs_B_T = torch.zeros_like(states.mask_B_T).masked_scatter(trained_B_T, logprobs_1_N[0])
            self._logprobs_B_T = logprobs_B_T * states.mask_B_T
        return self._logprobs_B_T


class Installed:
    """Frozen inputs a loss reads every step (e.g. the teachers' output heads), installed once on the
    trainer and looked up by their class: ``installed[TeacherHeads]``."""

    def __init__(self):
        self._by_type: dict[type, object] = {}

    def add(self, item) -> None:
        self._by_type[type(item)] = item

    def __getitem__(self, cls: type):
        if cls not in self._by_type:
            raise KeyError(f"the trainer has no {cls.__name__} installed (PolicyTrainer.install)")
        return self._by_type[cls]


def chunked_target_logprobs(
    hidden_B_T_H: torch.Tensor,
    head_V_H: torch.Tensor,
    targets_B_T: torch.Tensor,
    chunk_tokens: int,
    path: LogitsPath = LogitsPath(),
) -> torch.Tensor:
    """``log_softmax(path(hidden @ head^T))[target]`` per token, ``chunk_tokens`` tokens at a time.

    ``path`` is the model's own logit post-processing and the sampling temperature.

    Only one chunk's ``[C, V]`` float32 logits live at once; under autograd each chunk is
    checkpointed (its logits recomputed in backward), so the ``[B, T, V]`` logits and their
    gradient are never whole. ``chunk_tokens=0``: the whole batch in one piece.
    """
    batch, length, width = hidden_B_T_H.shape
    hidden_N_H, targets_N = hidden_B_T_H.reshape(-1, width), targets_B_T.reshape(-1)
    total = hidden_N_H.shape[0]
    if chunk_tokens <= 0 or chunk_tokens >= total:
        return _target_logprobs(hidden_N_H, head_V_H, targets_N, path).view(batch, length)
    grad = torch.is_grad_enabled() and (hidden_N_H.requires_grad or head_V_H.requires_grad)
    pieces = []
    for start in range(0, total, chunk_tokens):
        chunk = (hidden_N_H[start : start + chunk_tokens], head_V_H, targets_N[start : start + chunk_tokens], path)
        if grad:
            pieces.append(torch.utils.checkpoint.checkpoint(_target_logprobs, *chunk, use_reentrant=False))
        else:
            pieces.append(_target_logprobs(*chunk))
    return torch.cat(pieces).view(batch, length)


def _target_logprobs(
    hidden_C_H: torch.Tensor, head_V_H: torch.Tensor, targets_C: torch.Tensor, path: LogitsPath
) -> torch.Tensor:
    logits_C_V = path.apply(torch.nn.functional.linear(hidden_C_H, head_V_H).float())
    return logits_C_V.gather(-1, targets_C.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits_C_V, dim=-1)


def peak_memory_gib() -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, peak RSS on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class PolicyTrainer:
    def __init__(self, model_path: str, trainer_cfg, seed: int = 0, threads: int | None = None,
                 trust_remote_code: bool = False):
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            restore_priority()  # before torch starts its threads: they inherit it
        torch.set_num_threads(threads or os.cpu_count() or 1)  # Ray pins actors to 1 thread otherwise
        self.cfg = trainer_cfg
        # The base stays float32 under LoRA too: the adapter is saved against the float32
        # checkpoint users merge onto (peft, `posttrain eval`), so it must be trained over it,
        # and the engine gets base + delta merged in float32, then cast once. (A bfloat16
        # base saved ~10-15% of a CPU step but made the saved adapter another model.)
        self.trust_remote_code = trust_remote_code  # model.trust_remote_code: validation refused it unless set
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, trust_remote_code=trust_remote_code)
        model = model.to(self.device)
        self.pad_id = model.config.pad_token_id or 0
        self.logits_path = logits_path(model.config)
        check_logits_path(model, self.logits_path, model_path)
        self._ref_model = None  # built on first use, full fine-tuning only
        self.model_path = model_path
        if trainer_cfg.lora is not None:
            model = self._wrap_lora(model, trainer_cfg.lora)
            for param in model.parameters():
                if param.requires_grad:
                    param.data = param.data.float()
        self.model = self._shard(model)
        params = [p for p in model.parameters() if p.requires_grad]
        # fused: one kernel over every tensor (CPU and CUDA); the per-tensor loop was ~1/10 of a CPU update
        self.optimizer = torch.optim.AdamW(
            params, lr=trainer_cfg.lr, weight_decay=trainer_cfg.weight_decay, betas=tuple(trainer_cfg.betas),
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.steps = 0
        self.installed = Installed()
        self._sender: WeightSender | None = None  # made on the first streamed weight sync

    def _shard(self, model):
        """Where a trainer group shards the model before the optimizer sees it (``core/group.py``); whole here."""
        return model

    @staticmethod
    def _wrap_lora(model, lora_cfg):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=lora_cfg.r,
            lora_alpha=lora_cfg.alpha,
            lora_dropout=lora_cfg.dropout,
            target_modules=lora_cfg.target_modules,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)

    # ---- log-probs -------------------------------------------------------

    def _autocast(self):
        enabled = self.cfg.autocast == "bfloat16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def completion_states(self, seqs: Sequences, model=None) -> CompletionStates:
        """Last hidden states at the positions that predict each completion token (autocast dtype).

        Sequences are packed end to end (``trainer.packing``, where the attention takes it), else padded.
        """
        model_lm = causal_lm(model or self.model)
        layout = self._layout(seqs, model_lm.config)
        with self._autocast():
            hidden_R_L_H = model_lm.get_decoder()(
                input_ids=layout.input_ids_R_L, attention_mask=layout.attention_R_L, position_ids=layout.position_ids_R_L,
                use_cache=False,  # a KV cache is useless here, and its presence hides packed rows from the mask
            ).last_hidden_state
        hidden_B_T_H = layout.hidden_B_T_H(hidden_R_L_H)
        return CompletionStates(hidden_B_T_H, model_lm.get_output_embeddings().weight, layout.targets_B_T, layout.mask_B_T)

    def _layout(self, seqs: Sequences, config) -> TokenLayout:
        if self.cfg.packing and supports_packing(config):
            return packed_layout(seqs, self.pad_id, self.device)
        return padded_layout(seqs, self.pad_id, self.device)

    def student(self, seqs: Sequences, model=None) -> Student:
        """``model`` (default: the one being trained) at the completion positions of ``seqs``."""
        path = self.logits_path.at(seqs.temperature)
        return Student(self.completion_states(seqs, model), self.cfg.logprob_chunk_tokens, self._autocast, path)

    def token_logprobs(self, seqs: Sequences, model=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-prob of each completion token under ``model`` at ``seqs.temperature``: ``(logprobs_B_T, mask_B_T)``."""
        student = self.student(seqs, model)
        return student.logprobs(), student.mask_B_T

    @torch.no_grad()
    def logprobs(self, seqs: Sequences, reference: bool = False) -> list[list[float]]:
        """No-grad log-probs per completion token (old-policy or reference)."""
        out: list[list[float]] = [[] for _ in range(len(seqs))]
        for indices in length_sorted_chunks(seqs, self.cfg.micro_batch_size):
            sub = seqs.select(indices)
            logprobs_B_T, _ = self._reference_logprobs(sub) if reference else self.token_logprobs(sub)
            for index, row, completion in zip(indices, logprobs_B_T, sub.completion_ids):
                out[index] = row[: len(completion)].tolist()
        return out

    def _reference_logprobs(self, seqs: Sequences):
        if hasattr(self.model, "disable_adapter"):  # LoRA: the base is the reference
            with self.model.disable_adapter():
                return self.token_logprobs(seqs)
        if self._ref_model is None:
            from transformers import AutoModelForCausalLM

            self._ref_model = AutoModelForCausalLM.from_pretrained(
                self.model_path, dtype=torch.float32, trust_remote_code=self.trust_remote_code)
            self._ref_model.to(self.device).requires_grad_(False).eval()
        return self.token_logprobs(seqs, model=self._ref_model)

    # ---- update ----------------------------------------------------------

    def update(self, seqs: Sequences, loss_fn: Callable, extras: dict[str, list]) -> dict[str, float]:
        """One optimizer step over ``seqs`` with gradient accumulation.

        ``loss_fn(student, extras_for_microbatch, installed) -> (loss, metrics)``: ``student`` is a
        ``Student`` (log-probs or hidden states on request), ``installed`` what ``install`` put
        here. The loss must already be normalised for the whole batch (see
        ``grpo.LossNormalizer``). ``extras`` holds per-sequence inputs; a ``remote_rows.RemoteRow`` among
        them is fetched from Ray's object store when its micro-batch runs.
        """
        start = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        totals = self._accumulate(seqs, loss_fn, extras, backward=True)
        totals["grad_norm"] = self._clip_gradients()
        self.optimizer.step()
        self.steps += 1
        totals["update_seconds"] = time.perf_counter() - start
        return totals

    @torch.no_grad()
    def evaluate(self, seqs: Sequences, loss_fn: Callable, extras: dict[str, list]) -> dict[str, float]:
        """The loss and metrics ``update`` would see, without a step (e.g. held-out KL to teachers)."""
        self.model.eval()
        return self._accumulate(seqs, loss_fn, extras, backward=False)

    def _clip_gradients(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return float(torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm))

    def _micro_batches(self, seqs: Sequences):
        """``(indices, weight)`` per forward pass this process runs; a trainer group's ranks split them
        and run zero-weight passes to stay in step (``core/group.py``)."""
        for indices in length_sorted_chunks(seqs, self.cfg.micro_batch_size):
            yield indices, 1.0

    def _reduce_metrics(self, totals: dict[str, float]) -> dict[str, float]:
        """Metrics of the whole batch from this process's share (all of it here)."""
        return totals

    def _accumulate(self, seqs: Sequences, loss_fn: Callable, extras: dict, backward: bool) -> dict[str, float]:
        totals: dict[str, float] = {"loss": 0.0}
        for indices, weight in self._micro_batches(seqs):
            sub = seqs.select(indices)
            micro_extras = fetch_rows({key: [values[i] for i in indices] for key, values in extras.items()})
            loss, metrics = loss_fn(self.student(sub), micro_extras, self.installed)
            if backward:
                (loss if weight == 1.0 else loss * weight).backward()
            if weight:
                totals["loss"] += float(loss.detach())
                merge_metrics(totals, metrics)
        return self._reduce_metrics(totals)

    def install(self, item) -> None:
        """Install a frozen input a loss reads every step (e.g. ``TeacherHeads``), sent once; by its class."""
        self.installed.add(item)

    # ---- weights out -----------------------------------------------------

    def engine_weights(self, dtype: str = "bfloat16") -> dict[str, torch.Tensor]:
        """HF-named full weights for the engine; LoRA deltas merged in (the model is not mutated)."""
        return engine_state_dict(self.model, dtype)

    def weight_buckets(self, dtype: str = "bfloat16", full: bool = False, shared: bool = True):
        """The engine's tensors written bucket by bucket into this trainer's shared file; yields each
        ``BucketRef`` once written (a Ray streaming generator: the engine loads one while the next is
        written). With LoRA only the blocks holding an adapter, unless ``full``. ``shared=False`` (an
        engine on another node): yields each bucket's ``(name, tensor)`` pairs, one Ray object each."""
        changed_only = hasattr(self.model, "peft_config") and not full
        if not shared:
            yield from cast_buckets(engine_tensors(self.model, changed_only), dtype, int(self.cfg.weight_bucket_mb * 2**20))
            return
        if self._sender is None or self._sender.dtype != dtype:
            self._sender = WeightSender(self.model, dtype, int(self.cfg.weight_bucket_mb * 2**20))
        yield from self._sender.buckets(self.model, changed_only)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def release(self) -> None:
        """Remove the shared weight file (``stop_trainer`` calls this before killing the actor)."""
        if self._sender is not None:
            self._sender.close()
            self._sender = None

    def save(self, directory: str, tokenizer=None) -> str:
        """Save the model (safetensors, or the peft adapter), optimizer and RNG state, and ``tokenizer`` (the
        run's, with the recipe's chat template) so that the checkpoint formats prompts as the run did.

        Written to ``<directory>.partial`` and renamed when complete, so a crash mid-save
        never leaves a checkpoint that looks whole.
        """
        path = Path(directory)
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        self.model.save_pretrained(partial)
        state = {"optimizer": self.optimizer.state_dict(), "steps": self.steps, "torch_rng": torch.get_rng_state()}
        torch.save(state, partial / "trainer_state.pt")
        if tokenizer is not None:
            tokenizer.save_pretrained(partial)
        shutil.rmtree(path, ignore_errors=True)
        partial.rename(path)
        return str(path)

    def load(self, directory: str) -> int:
        """Restore what ``save`` wrote (weights, optimizer, RNG); returns the optimizer steps taken."""
        from safetensors.torch import load_file

        path = Path(directory)
        if is_sharded(path):  # a trainer group's checkpoint, resharded onto this one process
            load_sharded(self.model, self.optimizer, path)
            return self._restore_state(torch.load(path / "trainer_state.pt", weights_only=False))
        if hasattr(self.model, "peft_config"):
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, load_file(path / "adapter_model.safetensors"))
        else:
            state = {}
            for shard in sorted(path.glob("*.safetensors")):
                state.update(load_file(shard))
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            missing = [name for name in missing if not name.startswith("lm_head")]  # tied to the embeddings
            if missing or unexpected:
                raise ValueError(f"checkpoint {path} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        saved = torch.load(path / "trainer_state.pt", weights_only=False)
        self.optimizer.load_state_dict(saved["optimizer"])
        return self._restore_state(saved)

    def _restore_state(self, saved: dict) -> int:
        self.steps = saved["steps"]
        if "torch_rng" in saved:
            torch.set_rng_state(saved["torch_rng"])
        return self.steps

    def peak_memory_gib(self) -> float:
        return peak_memory_gib()


def engine_state_dict(model, dtype: str = "bfloat16") -> dict[str, torch.Tensor]:
    """HF-named full weights of a causal LM or peft model, active LoRA deltas merged in, as one dict in ``dtype``.

    The model is not mutated; a tied ``lm_head`` is left out (the engine ties it too). A weight sync
    streams the same tensors in buckets instead (``weights.WeightSender``).
    """
    target = getattr(torch, dtype)
    return {name: tensor.detach().to("cpu", target).contiguous() for name, tensor in engine_tensors(model)}


def merge_metrics(totals: dict[str, float], metrics: dict[str, float]) -> dict[str, float]:
    """Add ``metrics`` into ``totals``: sums, but a ``*_max`` metric is a max."""
    for key, value in metrics.items():
        totals[key] = max(totals.get(key, value), value) if key.endswith("_max") else totals.get(key, 0.0) + value
    return totals


def pack_sequences(seqs: Sequences, pad_id: int, device: torch.device):
    """Right-pad prompt+completion; index the positions whose next token is a completion token.

    Returns ``input_ids_B_L, attention_B_L, positions_B_T, targets_B_T, mask_B_T``.
    """
    lengths = [len(p) + len(c) for p, c in zip(seqs.prompt_ids, seqs.completion_ids)]
    max_len, max_completion = max(lengths), max(max(len(c) for c in seqs.completion_ids), 1)
    batch = len(seqs)
    input_ids = torch.full((batch, max_len), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, max_len), dtype=torch.long)
    positions = torch.zeros((batch, max_completion), dtype=torch.long)
    targets = torch.zeros((batch, max_completion), dtype=torch.long)
    mask = torch.zeros((batch, max_completion), dtype=torch.float32)
    for row, (prompt, completion) in enumerate(zip(seqs.prompt_ids, seqs.completion_ids)):
        tokens = prompt + completion
        loss_mask = seqs.completion_mask[row] if seqs.completion_mask is not None else None
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        attention[row, : len(tokens)] = 1
        count = len(completion)
        positions[row, :count] = torch.arange(len(prompt) - 1, len(prompt) - 1 + count)
        targets[row, :count] = torch.tensor(completion, dtype=torch.long)
        mask[row, :count] = torch.tensor(loss_mask, dtype=torch.float32) if loss_mask is not None else 1.0
    return tuple(t.to(device) for t in (input_ids, attention, positions, targets, mask))


def length_sorted_chunks(seqs: Sequences, size: int):
    """Micro-batches of similar total length, so little of each is padding.

    Order does not matter to the result: the loss normaliser is batch-wide.
    """
    order = sorted(range(len(seqs)), key=lambda i: len(seqs.prompt_ids[i]) + len(seqs.completion_ids[i]))
    for start in range(0, len(order), size):
        yield order[start : start + size]


def torch_actor(cls, num_cpus: float, num_gpus: float, *args, **kwargs):
    """``cls(*args, threads, **kwargs)`` as a Ray actor with the resources asked for. On CPU it gets every core's
    thread: Ray pins an actor to ``num_cpus`` threads, and the phases that use torch run one at a time."""
    threads = int(num_cpus) if num_gpus else os.cpu_count()
    actor_cls = ray.remote(cls).options(
        num_cpus=num_cpus, num_gpus=num_gpus, runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads)}}
    )
    return actor_cls.remote(*args, threads, **kwargs)


def trainer_actor(model_path: str, trainer_cfg, seed: int = 0, trust_remote_code: bool = False):
    """Start a ``PolicyTrainer`` as a Ray actor with the resources the recipe asks for."""
    return torch_actor(PolicyTrainer, trainer_cfg.num_cpus, trainer_cfg.num_gpus, model_path, trainer_cfg, seed,
                       trust_remote_code=trust_remote_code)
