"""Teachers for on-policy distillation: checked before work, then served by Ray actors.

A teacher is a checkpoint registered under a (domain, mode) key: a full model
directory, or a peft adapter over a base. ``check_teachers`` runs while the recipe
is validated, so a missing checkpoint or a tokenizer that differs from the
student's (token ids would mean different strings) fails before any work starts.

``TeacherPool`` (a Ray actor) scores the student's own tokens, grouped by teacher; it loads
the teachers it ``serves`` (all, or one shard of them: ``shard_teachers``, driven as one by
``fleet.TeacherFleet``):

- adapter teachers over the same base share one copy of it; the pool switches the
  active adapter per group (``set_adapter``), so 12 LoRA teachers cost one base;
- full-model teachers are separate models, moved to the accelerator one group at a
  time and offloaded to CPU memory between groups;
- it returns last hidden states ``[T, H]`` (bf16), not ``[T, V]`` logits: the student
  rebuilds each teacher's logits chunk by chunk through that teacher's output head,
  which the trainer holds once (``heads()``). ``V / H`` (85x for SmolLM2) less to ship.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain.core.models import resolve_model
from rollout.priority import restore_priority
from .objective import TeacherHeads
from posttrain.core.policy import Sequences, causal_lm, engine_state_dict, length_sorted_chunks, pack_sequences, torch_actor


@dataclass(frozen=True)
class Teacher:
    """A resolved teacher: where its weights are and what it scores."""

    domain: str
    mode: str
    path: str  # the checkpoint directory
    base: str | None  # adapter teachers: the base model directory; None for full models
    weight: float = 1.0

    @property
    def key(self) -> tuple[str, str]:
        return (self.domain, self.mode)

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.mode}"


def resolve_teacher(cfg) -> Teacher:
    """A ``TeacherConfig`` -> ``Teacher``; raises ``ValueError`` saying what is wrong with it."""
    path = Path(cfg.path).expanduser()
    if not path.is_dir():
        if (Path(cfg.path).suffix or "/" in cfg.path) and not path.exists():
            raise ValueError(f"checkpoint {cfg.path!r} does not exist")
        path = Path(resolve_model(cfg.path))  # a built-in model name
    adapter_file = path / "adapter_config.json"
    if not adapter_file.exists():
        if not (path / "config.json").exists():
            raise ValueError(f"{str(path)!r} has neither config.json (a model) nor adapter_config.json (an adapter)")
        return Teacher(cfg.domain, cfg.mode, str(path), None, cfg.weight)
    adapter = json.loads(adapter_file.read_text())
    touched = set(adapter.get("modules_to_save") or []) | set(_as_list(adapter.get("target_modules")))
    if touched & {"lm_head", "embed_tokens"}:
        raise ValueError(f"adapter {str(path)!r} changes the output head or embeddings; only adapters that keep them are supported")
    base = cfg.base or adapter.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"adapter {str(path)!r} does not record its base model; set `base`")
    return Teacher(cfg.domain, cfg.mode, str(path), resolve_model(base), cfg.weight)


def _as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def check_teachers(teacher_cfgs, student_path: str, shards: int = 1) -> list[str]:
    """Problems with the teachers, each naming its field path: missing checkpoints, a tokenizer
    or vocabulary that differs from the student's, more shards than teacher models. Empty when
    all can be loaded and scored."""
    problems, resolved = [], []
    student = _Vocab.of(resolve_model(student_path))
    for index, cfg in enumerate(teacher_cfgs):
        where = f"distill.teachers.{index} ({cfg.domain}/{cfg.mode})"
        try:
            teacher = resolve_teacher(cfg)
        except (ValueError, OSError) as error:
            problems.append(f"{where}.path: {error}")
            continue
        resolved.append(teacher)
        if mismatch := _Vocab.of(teacher.path, teacher.base).differs_from(student):
            problems.append(f"{where}: {mismatch}; teachers and student must share one tokenizer")
    if not problems:
        try:
            shard_teachers(resolved, shards)
        except ValueError as error:
            problems.append(str(error))
    return problems


def shard_teachers(teachers: list[Teacher], shards: int) -> list[list[int]]:
    """Teacher indices per shard. A model (a full teacher, or a base with its adapters) is never split;
    each goes to the shard with the fewest models so far, then the fewest teachers."""
    by_model: dict[str, list[int]] = {}
    for index, teacher in enumerate(teachers):
        by_model.setdefault(teacher.base or teacher.path, []).append(index)
    if shards > len(by_model):
        raise ValueError(f"distill.teacher_shards: {shards} shards for {len(by_model)} distinct teacher models "
                         f"(adapters over one base count as one): a shard would hold no teacher")
    parts: list[list[int]] = [[] for _ in range(shards)]
    models = [0] * shards
    for indices in sorted(by_model.values(), key=len, reverse=True):
        target = min(range(shards), key=lambda s: (models[s], len(parts[s])))
        parts[target].extend(indices)
        models[target] += 1
    return [sorted(part) for part in parts]


@dataclass
class _Vocab:
    tokens: dict[str, int]
    embedding_rows: int

    @classmethod
    def of(cls, path: str, base: str | None = None) -> _Vocab:
        from transformers import AutoConfig, AutoTokenizer

        has_tokenizer = any((Path(path) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer = AutoTokenizer.from_pretrained(path if has_tokenizer or base is None else base)
        config = AutoConfig.from_pretrained(base or path)
        return cls(tokenizer.get_vocab(), config.vocab_size)

    def differs_from(self, student: _Vocab) -> str | None:
        if self.embedding_rows != student.embedding_rows:
            return f"vocabulary size {self.embedding_rows} != the student's {student.embedding_rows}"
        if self.tokens != student.tokens:
            diff = sorted(set(self.tokens.items()) ^ set(student.tokens.items()))[:3]
            return f"tokenizer differs from the student's ({len(self.tokens)} vs {len(student.tokens)} tokens; e.g. {diff})"
        return None


class TeacherPool:
    """Frozen teachers, scored group by group. Meant to live in a Ray actor (``teacher_pool_actor``)."""

    def __init__(self, teachers: list[Teacher], micro_batch_size: int = 16, threads: int | None = None,
                 trust_remote_code: bool = False, serves: list[int] | None = None):
        if not torch.cuda.is_available():
            restore_priority()  # before torch starts its threads: they inherit it
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.teachers = teachers  # every teacher of the run: routes name them by their index here
        self.serves = list(range(len(teachers))) if serves is None else list(serves)  # the ones loaded here
        self.micro_batch_size = micro_batch_size
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._adapted: dict[str, object] = {}  # base path -> peft model holding every adapter over it
        self._full: dict[str, object] = {}  # checkpoint path -> model (offloaded to CPU when idle)
        self._on_device: str | None = None
        self._trust_remote_code = trust_remote_code  # model.trust_remote_code: the bases may run their own code
        for index in self.serves:
            teacher = teachers[index]
            if teacher.base is None:
                self._full.setdefault(teacher.path, _load_frozen(teacher.path, "cpu", trust_remote_code))
            else:
                self._add_adapter(index, teacher)

    def _add_adapter(self, index: int, teacher: Teacher) -> None:
        from peft import PeftModel

        name = f"t{index}"
        if teacher.base not in self._adapted:
            base = _load_frozen(teacher.base, self.device, self._trust_remote_code)
            self._adapted[teacher.base] = PeftModel.from_pretrained(base, teacher.path, adapter_name=name)
        else:
            self._adapted[teacher.base].load_adapter(teacher.path, adapter_name=name)
        self._adapted[teacher.base].requires_grad_(False).eval()

    def _activate(self, index: int):
        """The model of teacher ``index``, on the device, with its adapter active."""
        teacher = self.teachers[index]
        if teacher.base is not None:
            model = self._adapted[teacher.base]
            model.set_adapter(f"t{index}")
            return model
        if self.device.type != "cpu" and self._on_device != teacher.path:
            if self._on_device is not None:
                self._full[self._on_device].to("cpu")  # offload the previous group's teacher
            self._full[teacher.path].to(self.device)
            self._on_device = teacher.path
        return self._full[teacher.path]

    def owner_heads(self) -> dict[str, torch.Tensor]:
        """The float32 output head ``[V, H]`` of each model served here, by its path (an adapter teacher's
        is its base's: 12 adapters over one base ship one head)."""
        heads = {}
        for index in self.serves:
            teacher = self.teachers[index]
            owner = teacher.base or teacher.path
            if owner not in heads:
                model = self._adapted[owner] if teacher.base else self._full[owner]
                heads[owner] = causal_lm(model).get_output_embeddings().weight.detach().float().cpu()
        return heads

    def heads(self) -> TeacherHeads:
        """The distinct output heads and which one each teacher uses (a pool serving every teacher)."""
        return TeacherHeads.of_owners([t.base or t.path for t in self.teachers], self.owner_heads())

    def score(self, seqs: Sequences, routing: list[list[tuple[int, float]]]) -> dict[str, list]:
        """The distillation extras ``{"routes": score_rows(seqs, routing)}``."""
        return {"routes": self.score_rows(seqs, routing)}

    @torch.no_grad()
    def score_rows(self, seqs: Sequences, routing: list[list[tuple[int, float]]]) -> list[list[tuple]]:
        """Teachers' last hidden states on the student's completions, grouped by teacher.

        ``routing[b]``: ``[(teacher index, weight), ...]`` for sequence b, every index one served here.
        Returns per sequence ``[(teacher index, weight, hidden_T_H bf16), ...]``.
        """
        groups: dict[int, list[int]] = {}
        for row, routes in enumerate(routing):
            for index, _ in routes:
                if index not in self.serves:
                    raise ValueError(f"teacher {index} is not served by this pool (it serves {self.serves})")
                groups.setdefault(index, []).append(row)
        hidden: dict[tuple[int, int], torch.Tensor] = {}
        for index in sorted(groups):
            model = self._activate(index)
            for row, states in zip(groups[index], self._hidden_states(model, seqs.select(groups[index]))):
                hidden[(index, row)] = states
        return [[(k, w, hidden[(k, row)]) for k, w in routes] for row, routes in enumerate(routing)]

    def score_chunks(self, seqs: Sequences, routing: list[list[tuple[int, float]]], sizes: list[int]):
        """``score_rows`` of the whole call (each teacher activated once: a full teacher offloaded between groups
        moves once, not once per micro-batch), then yielded as consecutive slices of ``sizes`` rows: as a Ray
        streaming generator, one object per micro-batch (``fleet.TeacherFleet``)."""
        scored = self.score_rows(seqs, routing)
        start = 0
        for size in sizes:
            yield scored[start : start + size]
            start += size

    def _hidden_states(self, model, seqs: Sequences) -> list[torch.Tensor]:
        decoder = causal_lm(model).get_decoder()
        pad_id = causal_lm(model).config.pad_token_id or 0
        out: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
        for indices in length_sorted_chunks(seqs, self.micro_batch_size):
            sub = seqs.select(indices)
            input_ids_B_L, attention_B_L, positions_B_T, _, _ = pack_sequences(sub, pad_id, self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                hidden_B_L_H = decoder(input_ids=input_ids_B_L, attention_mask=attention_B_L).last_hidden_state
            hidden_B_T_H = torch.gather(hidden_B_L_H, 1, positions_B_T.unsqueeze(-1).expand(-1, -1, hidden_B_L_H.shape[-1]))
            for i, row, completion in zip(indices, hidden_B_T_H, sub.completion_ids):
                out[i] = row[: len(completion)].to("cpu", torch.bfloat16)
        return out

    def engine_weights(self, index: int, dtype: str = "bfloat16") -> dict[str, torch.Tensor]:
        """Teacher ``index``'s full weights for a vLLM engine (adapter merged): to evaluate it."""
        return engine_state_dict(self._activate(index), dtype)

    def ready(self) -> bool:
        return True


def _load_frozen(path: str, device, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, trust_remote_code=trust_remote_code).to(device)
    return model.requires_grad_(False).eval()


def teacher_pool_actor(teachers: list[Teacher], num_cpus: float = 1, num_gpus: float = 0, micro_batch_size: int = 16,
                       trust_remote_code: bool = False, serves: list[int] | None = None):
    """A ``TeacherPool`` actor loading the teachers ``serves`` (default: all)."""
    return torch_actor(TeacherPool, num_cpus, num_gpus, teachers, micro_batch_size,
                       trust_remote_code=trust_remote_code, serves=serves)
