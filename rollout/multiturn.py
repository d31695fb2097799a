"""Multi-turn tool-use rollouts on the engine: model turn -> tool calls -> results -> next turn.

Every episode of the batch (all prompts x all samples) runs in the engine's one
continuous batch: the first turns are submitted together, and the moment an
episode's turn finishes, its calls run and its next turn joins the running
batch (``RolloutEngine.submit`` / ``poll``). No episode waits for the slowest
episode of its turn, as a turn-by-turn ``generate`` loop would.
A trajectory keeps the model's sampled token ids exactly as sampled and
appends only the environment's delta (the turn's end, the tool-result turn
rendered by the tokenizer's chat template, the next assistant header and the
first turn's prefill, e.g. ``<think>``)::

    prompt | model turn 1 (sampled) | env delta | model turn 2 (sampled) | ...
           |<--------------------- Completion.token_ids ------------------->|
    loss_mask  1 ... 1                0 ... 0      1 ... 1

so the existing GRPO loop trains on it unchanged. Budgets: the whole
trajectory (model + environment tokens) stays within the mode's ``max_tokens``
and the context window; thinking modes are budget-forced per turn by the engine.

Bad input never stops a batch: malformed calls, unknown tools, bad arguments,
and exceptions inside tools become error results the model reads next turn,
counted per kind (``Trajectory.errors``, ``GenerateResult.metrics``).

An environment with ``tool_choice = "required"`` gets its first model turn
decoded under the JSON schema of a call of one of its tools (vLLM structured
outputs): the call always parses and fits its tool's signature. Only the
sampling is constrained; the trainer scores the tokens under the free policy.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from .calls import parse_calls
from .engine import Completion, GenerateResult, SamplingSpec
from .environments import ERROR_KINDS, Environment
from .seeds import prompt_digest
from .tools import call_json_schema

MIN_ANSWER_TOKENS = 16  # a thinking turn keeps this much room for its close tag and answer (as modes do)


@dataclass
class Trajectory(Completion):
    """A multi-turn episode as one ``Completion`` (token ids after the prompt), plus what happened in it."""

    calls: list[dict] = field(default_factory=list)  # {"name", "arguments", "turn", "error": kind or None}
    errors: dict[str, int] = field(default_factory=dict)  # error kind -> count
    turns: int = 0  # model turns
    outcome: float = 0.0  # the environment's verdict on the episode
    stop_reason: str = ""  # final | max_turns | budget | truncated

    def record(self) -> dict:
        """What happened in the episode, for eval output files."""
        return {"calls": self.calls, "errors": self.errors, "turns": self.turns, "outcome": self.outcome,
                "stop_reason": self.stop_reason}

    @property
    def valid_calls(self) -> list[dict]:
        return [call for call in self.calls if call["error"] in (None, "tool_exception")]


@dataclass(frozen=True)
class MultiTurnConfig:
    max_turns: int = 4  # model turns per episode (an environment may allow fewer)
    max_context: int = 1024  # prompt + trajectory tokens (the engine's max_model_len)
    min_turn_tokens: int = 8  # a turn with less room than this ends the episode
    result_chars: int = 600  # a tool result longer than this is cut


class ChatDeltas:
    """Token deltas of the chat template: how an assistant turn ends and a tool-result turn reads."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tool_role = "tool" if self._renders_role("tool") else "user"
        closed = self._render([{"role": "user", "content": "u"}, {"role": "assistant", "content": "@@"}])
        self.turn_end = closed.split("@@")[-1]  # e.g. "<|im_end|>\n"
        self._closed = closed
        opened = self._render([{"role": "user", "content": "u"}], generation=True)
        self.assistant_header = opened[len(self._render([{"role": "user", "content": "u"}])):]
        self._stop_ids = set(tokenizer.all_special_ids)

    def _render(self, messages: list[dict], generation: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    def _renders_role(self, role: str) -> bool:
        try:
            text = self._render([{"role": "user", "content": "u"}, {"role": role, "content": "@@result"}])
        except Exception:  # noqa: BLE001 - templates raise on roles they do not know
            return False
        return "@@result" in text

    def prefill(self, prompt_ids: list[int]) -> str:
        """What the caller put after the assistant header of the first prompt (``<think>\\n`` in thinking modes)."""
        text = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        return text.rsplit(self.assistant_header, 1)[1] if self.assistant_header in text else ""

    def tool_turn(self, last_sampled_id: int | None, results: list[str], prefill: str) -> list[int]:
        """Ids after a model turn: the rest of its end tag, the result turn(s), the next header + prefill."""
        end = self.turn_end
        if last_sampled_id in self._stop_ids:  # the model wrote the end token itself
            written = self.tokenizer.decode([last_sampled_id], skip_special_tokens=False)
            end = end.removeprefix(written)
        messages = [{"role": self.tool_role, "content": text} for text in results]
        full = self._render([{"role": "user", "content": "u"}, {"role": "assistant", "content": "@@"}, *messages], True)
        if not full.startswith(self._closed):
            raise ValueError("the chat template renders earlier turns differently once a tool turn follows")
        text = end + full[len(self._closed):] + prefill
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class _Episode:
    index: int  # the prompt's index
    ordinal: int  # the episode's place in the rollout (prompt-major)
    env: Environment
    prompt: list[int]
    spec: SamplingSpec
    prefill: str
    max_turns: int
    out: Trajectory = None
    done: bool = False
    call_schema: str | None = None  # the first turn's constraint (``tool_choice: required``)

    def __post_init__(self) -> None:
        self.out = Trajectory(self.index, [], [], "", False, loss_mask=[], answer_text="")
        if self.env.tool_choice == "required":
            self.call_schema = json.dumps(call_json_schema(self.env.schemas()))


class TurnEngine(Protocol):
    """What a multi-turn rollout needs of an engine: ``RolloutEngine``, or ``engine_pool.engine_client(handle)``
    for a Ray actor (``EngineClient``) or an ``EnginePool`` of replicas (``PoolClient``)."""

    def submit(self, prompts: list[list[int]], specs: list[SamplingSpec]) -> list[int]: ...

    def poll(self) -> list[tuple[int, list[Completion]]]: ...


def multiturn_rollout(
    engine: TurnEngine,
    tokenizer,
    prompts: list[list[int]],
    specs: list[SamplingSpec],
    make_env: Callable[[int], Environment],
    config: MultiTurnConfig = MultiTurnConfig(),
) -> GenerateResult:
    """``spec.n`` episodes per prompt, each with a fresh ``make_env(prompt_index)``; prompt-major output.

    The engine must serve only this rollout while it runs (``poll`` returns every finished ticket).
    """
    if len(specs) != len(prompts):
        raise ValueError(f"{len(specs)} sampling specs for {len(prompts)} prompts")
    chat, start = ChatDeltas(tokenizer), time.perf_counter()
    episodes = []
    for index, (prompt, spec) in enumerate(zip(prompts, specs)):
        for _ in range(spec.n):
            env = make_env(index)
            turns = min(config.max_turns, env.max_turns)
            episodes.append(_Episode(index, len(episodes), env, prompt, spec, chat.prefill(prompt), turns))
    in_flight: dict[int, _Episode] = {}  # ticket -> the episode whose turn it samples
    submits = _submit_turns(engine, episodes, config, in_flight)
    while in_flight:
        finished = engine.poll()
        if not finished:
            raise RuntimeError(f"the engine returned nothing for {len(in_flight)} running episodes")
        going_on = []
        for ticket, (turn,) in finished:
            episode = in_flight.pop(ticket)
            _absorb(episode, turn, chat, config)
            if not episode.done:
                going_on.append(episode)
        submits += _submit_turns(engine, going_on, config, in_flight)
    trajectories = [episode.out for episode in episodes]
    rollout = GenerateResult(trajectories, time.perf_counter() - start)
    rollout.metrics = rollout_metrics(trajectories) | {"agent/submits": float(submits)}
    return rollout


def _submit_turns(engine: TurnEngine, episodes: list[_Episode], config: MultiTurnConfig, in_flight: dict) -> int:
    """Submit the next turn of each episode that has room for one (the others end): 1 if anything went."""
    ready, turn_specs = [], []
    for episode in episodes:
        spec = _turn_spec(episode, config)
        if spec is None:
            _finish(episode, "budget")
        else:
            ready.append(episode)
            turn_specs.append(spec)
    if not ready:
        return 0
    tickets = engine.submit([episode.prompt + episode.out.token_ids for episode in ready], turn_specs)
    in_flight.update(zip(tickets, ready))
    return 1


def _turn_spec(episode: _Episode, config: MultiTurnConfig) -> SamplingSpec | None:
    """This turn's allowance: what is left of the mode's ``max_tokens`` and of the context window.

    Its seed key is (prompt, episode, turn), never the order turns happened to be submitted in, and its
    affinity the prompt: an episode (and its prompt's other episodes) stays on one engine replica.
    """
    used = len(episode.out.token_ids)
    room = min(episode.spec.max_tokens - used, config.max_context - len(episode.prompt) - used)
    if room < config.min_turn_tokens:
        return None
    schema = episode.call_schema if episode.out.turns == 0 else None
    turn = replace(episode.spec, n=1, max_tokens=room, json_schema=schema, affinity=episode.index,
                   seed_key=(prompt_digest(episode.prompt), episode.ordinal, episode.out.turns))
    if episode.spec.thinking_budget is None:
        return turn
    budget = min(episode.spec.thinking_budget, room - MIN_ANSWER_TOKENS)
    return replace(turn, thinking_budget=budget) if budget > 0 else None


def _absorb(episode: _Episode, turn: Completion, chat: ChatDeltas, config: MultiTurnConfig) -> None:
    """Append a model turn; run its calls; end the episode or append the results for the next turn."""
    out = episode.out
    out.token_ids += turn.token_ids
    out.logprobs += turn.logprobs
    out.loss_mask += turn.loss_mask if turn.loss_mask is not None else [1] * len(turn.token_ids)
    out.text += turn.text
    out.thinking_tokens += turn.thinking_tokens
    out.forced_close |= turn.forced_close
    out.answer_text = turn.answer_text
    out.turns += 1
    if turn.truncated:
        out.truncated = True
        return _finish(episode, "truncated")
    parsed = parse_calls(turn.answer_text)
    if parsed.is_final:
        return _finish(episode, "final")
    results = []
    if parsed.malformed:
        out.errors["malformed"] = out.errors.get("malformed", 0) + 1
        results.append(f"Error: could not read your tool call ({parsed.malformed}). "
                       'Call a tool as {"name": "<tool>", "arguments": {...}}.')
    for call in parsed.calls:
        result = episode.env.execute(call)
        out.calls.append({**call.as_dict(), "turn": out.turns, "error": result.error})
        if result.error:
            out.errors[result.error] = out.errors.get(result.error, 0) + 1
        results.append(_cut(result.content, config.result_chars))
    if out.turns >= episode.max_turns:
        return _finish(episode, "max_turns")
    delta = chat.tool_turn(turn.token_ids[-1] if turn.token_ids else None, results, episode.prefill)
    if len(out.token_ids) + len(delta) + config.min_turn_tokens > min(
        episode.spec.max_tokens, config.max_context - len(episode.prompt)
    ):
        return _finish(episode, "budget")
    out.token_ids += delta
    out.logprobs += [0.0] * len(delta)
    out.loss_mask += [0] * len(delta)
    out.text += chat.tokenizer.decode(delta, skip_special_tokens=False)


def _finish(episode: _Episode, reason: str) -> None:
    episode.done, episode.out.stop_reason = True, reason
    try:
        episode.out.outcome = float(episode.env.outcome(episode.out.answer_text or ""))
    except Exception:  # noqa: BLE001 - an environment's checker bug must not stop the batch
        episode.out.outcome = 0.0
        episode.out.errors["outcome_exception"] = episode.out.errors.get("outcome_exception", 0) + 1


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " ...(cut)"


def rollout_metrics(trajectories: list[Trajectory]) -> dict[str, float]:
    """Per-episode means: turns, calls, errors by kind, stop reasons, outcome; the error rate per call attempt."""
    count = max(len(trajectories), 1)
    errors = Counter()
    for trajectory in trajectories:
        errors.update(trajectory.errors)
    attempts = sum(len(t.calls) for t in trajectories) + errors["malformed"]
    stops = Counter(t.stop_reason for t in trajectories)
    metrics = {
        "agent/turns_mean": sum(t.turns for t in trajectories) / count,
        "agent/calls_mean": sum(len(t.calls) for t in trajectories) / count,
        "agent/outcome_mean": sum(t.outcome for t in trajectories) / count,
        "agent/error_rate": sum(errors.values()) / max(attempts, 1),
        "agent/env_token_share": sum(len(t.token_ids) - t.sampled_tokens for t in trajectories)
        / max(sum(len(t.token_ids) for t in trajectories), 1),
    }
    metrics |= {f"agent/errors/{kind}": errors[kind] / count for kind in (*ERROR_KINDS, "outcome_exception")}
    metrics |= {f"agent/stop/{reason}": stops[reason] / count for reason in ("final", "max_turns", "budget", "truncated")}
    return metrics
