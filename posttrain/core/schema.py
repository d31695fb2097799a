"""Recipe schema: the sections a YAML recipe may hold, typed, each field documented.

Only the shape lives here. What the schema cannot see (registered names, files,
models, a domain's own source fields, teachers' checkpoints) is checked by
``posttrain/recipe.py``, which loads and validates a whole recipe on top of
everything. A task domain brings its own source schema(s): a ``SourceConfig``
subclass with a ``kind`` literal, declared on the task class
(``posttrain/core/tasks.py``); ``task.sources`` holds them open-ended here and
the whole-recipe validation types each one by its domain.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

DEFAULT_MODE = "default"
MIN_ANSWER_TOKENS = 16  # a thinking mode keeps this much room after its budget: close tag + answer
# Generous but finite caps: far past any run we can imagine, small enough that a typo (an extra
# six zeros) fails at load instead of allocating, looping or overflowing somewhere later.
MAX_STEPS = 10_000_000
MAX_COUNT = 1_000_000  # per-step counts (prompts, samples, micro-batch, logged samples, problems)
MAX_SAMPLES_PER_STEP = 10_000_000  # prompts x samples of one step
MAX_CONTEXT = 1 << 24  # tokens: context windows, chunks
MAX_TIMEOUT_S = 24 * 3600.0
MAX_MESSAGE_LINES = 60
MAX_LINE_CHARS = 400


def bounded_message(message: str) -> str:
    """At most ``MAX_MESSAGE_LINES`` lines of at most ``MAX_LINE_CHARS`` characters: an error may echo
    input (a value, a name, an override), and input has no bound of its own."""
    lines = [line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 3] + "..." for line in message.splitlines()]
    if len(lines) > MAX_MESSAGE_LINES:
        lines = lines[: MAX_MESSAGE_LINES - 1] + [f"  ... and {len(lines) - MAX_MESSAGE_LINES + 1} more line(s)"]
    return "\n".join(lines)


class RecipeError(ValueError):
    """A recipe that cannot run; the message lists every problem with its field path (bounded in size)."""

    def __init__(self, message: str = ""):
        super().__init__(bounded_message(str(message)))


class Strict(BaseModel):
    # allow_inf_nan=False: no recipe number means NaN or infinity (YAML's .nan/.inf, 1.0e+999), and
    # either would pass `gt=0` bounds (inf) or poison a loss silently (nan)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


Beta = Annotated[float, Field(ge=0, lt=1)]


class WandbSettings(Strict):
    project: str = Field("posttrain", description="W&B project")
    entity: str | None = Field(None, description="W&B entity (team or user); default: the logged-in user's")
    mode: Literal["online", "offline", "disabled"] | None = Field(None, description="default: WANDB_MODE, else online")


class MlflowSettings(Strict):
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default: MLFLOW_TRACKING_URI, else a file store `mlruns/` beside the run directories")
    experiment: str = Field("posttrain", description="MLflow experiment name (created if missing)")


class RunConfig(Strict):
    name: str = Field("run", min_length=1, max_length=200, description="run directory name: one directory inside output_dir (no path separators, not '..')")
    output_dir: str = Field("runs", min_length=1, description="where run directories go")
    seed: int = Field(0, ge=0, lt=1 << 63, description="seeds prompts, sampling and initialisation; a run's steps are a pure function of it")
    resume: bool = Field(True, description="continue from the newest complete checkpoint in the run directory")
    trackers: list[str] = Field(default_factory=lambda: ["tensorboard"], description="where step metrics go besides metrics.jsonl: tensorboard, wandb, mlflow (they need their packages), or a registered / 'module:attr' tracker")
    wandb: WandbSettings = Field(default_factory=WandbSettings, description="used when trackers names wandb")
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings, description="used when trackers names mlflow")

    @field_validator("name")
    @classmethod
    def _one_directory(cls, name: str) -> str:
        """The run directory (checkpoints, logs, rewinds) must stay inside output_dir."""
        if name in (".", "..") or any(sep in name for sep in ("/", "\\", "\x00")):
            raise ValueError("must be one directory name inside output_dir (no path separators, not '..')")
        return name


class ModelConfig(Strict):
    path: str = Field("smollm2-135m-instruct", description="built-in name, local directory, or hub id")
    max_model_len: int = Field(1024, gt=0, le=MAX_CONTEXT, description="the engine's context window (prompt + completion tokens)")
    prompt_room: int = Field(128, gt=0, le=MAX_CONTEXT, description="tokens kept for the prompt: every mode's max_tokens + this must fit")
    engine_dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="weights dtype in vLLM (and of the weights pushed to it)")
    chat_template: str | None = Field(None, description="a Jinja chat template (the text, or a path to a .jinja file) used instead of the tokenizer's own")
    trust_remote_code: bool = Field(False, description="allow a model whose config needs its own Python code (auto_map); refused otherwise")


class EngineSettings(Strict):
    kv_cache_gib: float = Field(1.0, gt=0, description="CPU only: KV cache memory")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="GPU only")
    tensor_parallel_size: int = Field(1, ge=1, le=1024, description="GPUs per engine (vLLM tensor parallelism)")
    replicas: int = Field(1, ge=1, le=1024, description="vLLM engines sharing the rollouts, each with the resources and tensor parallelism above: a step's prompts are spread by load (a prompt's samples together), a multi-turn episode stays on one engine, weights reach every one, samples do not depend on which engine drew them")
    num_cpus: float = Field(1, ge=0, description="Ray logical CPUs reserved for the engine actor")
    num_gpus: float = Field(0, ge=0, description="Ray GPUs reserved for the engine actor (0 on CPU)")
    budget_forcing: Literal["two_phase", "engine"] = Field("two_phase", description="how thinking budgets are forced: two_phase (stop at the budget, answer in a second request joining the running batch) or engine (vLLM's own thinking_token_budget, one request); forced tokens are masked out of the loss either way (bench/budget.py compares them)")


class LoraConfig(Strict):
    r: int = Field(16, gt=0, le=65536, description="LoRA rank")
    alpha: int = Field(32, gt=0, description="LoRA scale numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA branch")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="module names to adapt, or every linear layer but the output head")


class TrainerConfig(Strict):
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    betas: tuple[Beta, Beta] = Field((0.9, 0.99), description="AdamW betas, each in [0, 1)")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    micro_batch_size: int = Field(16, gt=0, le=MAX_COUNT, description="sequences per forward/backward")
    autocast: Literal["bfloat16", "none"] = Field("bfloat16", description="compute dtype of forward/backward; master weights stay float32")
    lora: LoraConfig | None = Field(None, description="train a LoRA adapter over the frozen float32 base (the checkpoint users merge it onto) instead of every weight")
    logprob_chunk_tokens: int = Field(
        1024, ge=0, le=MAX_CONTEXT, description="trained tokens whose [tokens, vocab] logits live at once when computing log-probs "
        "(each chunk recomputed in backward); a micro-batch with no more trained tokens than this runs the head "
        "in one piece, no recompute; 0 = always in one piece (faster, tokens*V floats of memory)"
    )
    num_cpus: float = Field(1, ge=0, description="Ray logical CPUs reserved for the trainer actor (per rank)")
    num_gpus: float = Field(0, ge=0, description="Ray GPUs reserved for the trainer actor (per rank: 0 or 1 with world_size > 1)")
    world_size: int = Field(1, ge=1, le=4096, description="trainer ranks: >1 shards the model with FSDP2 over that many Ray actors (gloo on CPU, NCCL on GPUs), the batch split over them")
    packing: bool = Field(True, description="pack a micro-batch's sequences end to end (position ids restart per sequence, no padding) where the model's attention takes it (sdpa, eager, flex, flash); false: right-padded rows")
    weight_bucket_mb: float = Field(256, gt=0, le=2**20, description="weight sync: MiB of engine-dtype tensors per bucket (whole decoder layers; the engine loads one while the next is written; each bucket costs the engine a fixed ~15-20 ms of vLLM reload bookkeeping on CPU)")


class SourceConfig(BaseModel):
    """A prompt source of a task. A domain subclasses it with ``kind: Literal["..."]`` and its own fields
    (``Strict``); until the domain types it, a source keeps every field it was given."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)
    kind: str = Field(description="the source's kind; the domain's source schemas say which exist")
    weight: float = Field(1.0, gt=0, description="sampling weight among the task's sources")


class Source(SourceConfig):
    """Base of a domain's own source schema: unknown fields are refused, as in every section."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class RewardSpec(Strict):
    name: str = Field(description="registered name, 'module:function', or an entry point")
    weight: float = Field(1.0, description="weight of this reward in the sample's total")
    timeout_s: float = Field(30.0, gt=0, le=MAX_TIMEOUT_S, description="a call running longer scores the sample as failed (counted, logged)")


class EffortMode(Strict):
    """A reasoning-effort mode (see ``posttrain/core/modes.py``): how much the model may think, and length shaping."""

    thinking: bool = Field(False, description="whether the model thinks (between the thinking tags) before answering")
    thinking_budget: int | None = Field(None, gt=0, le=MAX_CONTEXT, description="thinking tokens before the close tag is forced")
    max_tokens: int = Field(gt=0, le=MAX_CONTEXT, description="completion tokens in all: thinking + close tag + answer")
    instruction: str | None = Field(None, description="system instruction for this mode (e.g. a max-effort system line)")
    template_kwargs: dict[str, bool | int | float | str] = Field(
        default_factory=dict,
        description="extra chat-template switches for this mode, e.g. {enable_thinking: false} for a Qwen3-style "
        "template; a template whose text holds the open tag gets enable_thinking = thinking unless set here",
    )
    overlong_buffer: int = Field(0, ge=0, le=MAX_CONTEXT, description="DAPO soft overlong punishment: the last N tokens before max_tokens")
    overlong_penalty: float = Field(1.0, ge=0, description="DAPO: the penalty at max_tokens")
    target_length: int | None = Field(None, gt=0, le=MAX_CONTEXT, description="L1-style: penalise |completion tokens - target|")
    length_coef: float = Field(0.0, ge=0, description="L1-style: penalty per token of |length - target_length|")

    @model_validator(mode="after")
    def _budget_matches_thinking(self) -> EffortMode:
        if self.thinking and self.thinking_budget is None:
            raise ValueError("thinking_budget is required when thinking is true")
        if not self.thinking and self.thinking_budget is not None:
            raise ValueError("thinking_budget is set but thinking is false")
        if self.thinking_budget is not None and self.thinking_budget + MIN_ANSWER_TOKENS > self.max_tokens:
            raise ValueError(
                f"thinking_budget ({self.thinking_budget}) + {MIN_ANSWER_TOKENS} tokens for the close tag and "
                f"answer exceeds max_tokens ({self.max_tokens})"
            )
        if self.length_coef > 0 and self.target_length is None:
            raise ValueError("length_coef needs target_length")
        if self.target_length is not None and self.target_length > self.max_tokens:
            raise ValueError(f"target_length ({self.target_length}) exceeds max_tokens ({self.max_tokens}): no sample can reach it")
        if self.overlong_buffer > self.max_tokens:
            raise ValueError(f"overlong_buffer ({self.overlong_buffer}) exceeds max_tokens ({self.max_tokens})")
        return self


class ThinkingTags(Strict):
    """Thinking tags our chat formatting adds for templates that lack them (SmolLM2 has none)."""

    open: str = Field("<think>", description="tag that opens thinking (prefilled at the end of a thinking prompt)")
    close: str = Field("</think>", description="tag that ends thinking; forced at the budget")
    instruction: str = Field("Think step by step between {open} and {close}, then give the final answer after {close}.", description="system text telling templates without tags how to use them")


class TaskConfig(Strict):
    domain: str = Field("math", description="the task's domain: math, code, instruct, agent, one registered with @register_task, or 'module:TaskClass'")
    sources: list[SerializeAsAny[SourceConfig]] = Field(min_length=1, description="prompt sources, drawn by weight")
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="math_verify")], min_length=1, description="rewards summed with their weights")
    instruction: str = Field("Give the final answer as a number at the end.", description="appended to every question")
    modes: dict[str, float] = Field(default_factory=dict, description="mode name -> sampling weight; default: every mode")


class GrpoConfig(Strict):
    steps: int = Field(20, ge=0, le=MAX_STEPS, description="optimizer steps (each: generate, reward, update, weight sync)")
    prompts_per_step: int = Field(8, gt=0, le=MAX_COUNT, description="prompts per step, P")
    samples_per_prompt: int = Field(8, ge=2, le=MAX_COUNT, description="group size G; advantages need >= 2")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling; GRPO takes 1.0 only (the trainer's log-probs are of the full tempered distribution)")
    max_tokens: int = Field(128, gt=0, le=MAX_CONTEXT, description="completion tokens per sample of the default mode (no `modes:`)")
    advantage: Literal["grpo", "dr_grpo"] = Field("grpo", description="grpo: (r - mean) / std per group; dr_grpo: r - mean")
    clip_low: float = Field(0.2, ge=0, lt=1, description="PPO ratio clip below 1")
    clip_high: float = Field(0.2, ge=0, description="DAPO clip-higher: set above clip_low, e.g. 0.28")
    kl_coef: float = Field(0.0, ge=0, description="k3 KL to the reference model; 0 disables it")
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = Field("token_mean", description="how token losses are averaged (see specialists/grpo.py)")
    minibatches: int = Field(1, ge=1, le=MAX_COUNT, description="optimizer steps per batch (>1 recomputes old log-probs)")
    rollout_correction: Literal["none", "tis", "mis"] = Field("tis", description="weight each token's policy-gradient term for the engine-trainer mismatch: tis = min(pi_old/pi_vllm, correction_cap), mis = drop tokens whose ratio leaves [1/cap, cap], none = as sampled; mismatch/* is logged either way")
    correction_cap: float = Field(2.0, gt=1, le=1e6, description="C of the rollout correction (TIS truncation, MIS band [1/C, C]); also the mismatch/share_over_threshold threshold")
    max_staleness: int = Field(0, ge=0, le=8, description="overlap: sample step s+k while step s trains (k steps off-policy, corrected by rollout_correction against the engine's log-probs at sampling time; async/staleness is logged); 0 = the synchronous loop")
    truncation_warn: float = Field(0.2, ge=0, le=1, description="warn when more than this share of samples is truncated")
    checkpoint_every: int = Field(0, ge=0, le=MAX_STEPS, description="steps between checkpoints; 0: only the final one")
    log_samples: int = Field(4, ge=0, le=MAX_COUNT, description="completions saved to samples.jsonl per step")

    @model_validator(mode="after")
    def _stale_samples_corrected(self) -> GrpoConfig:
        if self.max_staleness and self.rollout_correction == "none":
            raise ValueError(
                "max_staleness > 0 trains on samples of an older policy: set rollout_correction to tis or mis "
                "(the importance correction against the engine's log-probs at sampling time)"
            )
        return self

    @field_validator("top_p")
    @classmethod
    def _full_nucleus(cls, top_p: float) -> float:
        if top_p < 1:
            raise ValueError(
                "GRPO samples with top_p = 1 only: the trainer scores tokens under the full tempered "
                "distribution, and under a nucleus it would train on another policy than the one sampled "
                "(lower grpo.temperature instead)"
            )
        return top_p


class EvalConfig(Strict):
    before: bool = Field(True, description="evaluate before training")
    after: bool = Field(True, description="evaluate after training")
    every: int = Field(0, ge=0, le=MAX_COUNT, description="GRPO: also evaluate every N steps (eval/step_N.json, logged as eval/<suite>/<mode>/<metric> at step N, drawn as a curve by the report); 0: before and after only")
    suites: list[str] | None = Field(None, description="held-out suites by name (e.g. humaneval, ifbench, bfcl_simple, gsm8k); default: the domain's own")
    num_problems: int = Field(100, gt=0, le=MAX_COUNT, description="per source")
    pass_k: int = Field(4, ge=1, le=1024, description="samples per problem for pass@k (1 disables)")
    temperature: float = Field(1.0, gt=0, description="for the pass@k samples; accuracy is greedy")
    max_tokens: int | None = Field(None, gt=0, le=MAX_CONTEXT, description="default: grpo.max_tokens")
    modes: list[str] | None = Field(None, description="modes to evaluate; default: the task's modes")
    sweep_mode: str | None = Field(None, description="thinking mode for the budget sweep; default: the largest budget")
    budget_sweep: list[int] = Field(default_factory=list, max_length=1024, description="thinking budgets for the accuracy curve")


class SftData(Strict):
    """Where SFT examples come from: the task's own reference completions, or a dataset."""

    source: Literal["task", "dataset"] = Field("task", description="task: the task writes a reference completion for each of its training problems in each mode (e.g. math's arithmetic_traces); dataset: rows of `path`")
    path: str | None = Field(None, description="dataset only: a local .jsonl / .json / .parquet / .csv file or directory, or a hub id (loaded with `datasets`, as a task's `dataset` source)")
    format: Literal["json", "parquet", "csv"] | None = Field(None, description="dataset only: file format; default: from the file suffix")
    split: str = Field("train", description="dataset only: the split to read (a local file is its one split)")
    subset: str | None = Field(None, description="dataset only: a hub dataset's configuration (subset) name")
    messages_column: str | None = Field(None, description="dataset only: a chat column ([{role, content}]): the last assistant turn is the completion, the turns before it the prompt (system + last user turn); unset: prompt_column + response_column")
    prompt_column: str = Field("prompt", description="dataset only: the user message (when messages_column is unset)")
    response_column: str = Field("response", description="dataset only: the assistant text; in a thinking mode it holds the thinking, the close tag, then the answer (a leading open tag is dropped: the prompt ends with it)")
    mode_column: str | None = Field(None, description="dataset only: a column naming each row's effort mode; unset: modes drawn by sft.modes")

    @model_validator(mode="after")
    def _path_matches_source(self) -> SftData:
        if self.source == "dataset" and not self.path:
            raise ValueError("path is required when source is dataset")
        if self.source == "task" and self.path:
            raise ValueError("path is set but source is task (set source: dataset)")
        return self


class SftConfig(Strict):
    """Supervised fine-tuning before GRPO (``specialists/sft.py``): chat-formatted in each mode, loss on the completion."""

    steps: int = Field(100, ge=0, description="optimizer steps")
    batch_size: int = Field(16, gt=0, description="examples per step (micro-batched by trainer.micro_batch_size, length-sorted)")
    lr: float | None = Field(None, gt=0, description="learning rate of the SFT stage; default: trainer.lr")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints; 0: only the final one")
    modes: dict[str, float] = Field(default_factory=dict, description="mode name -> share of examples formatted in it; default: task.modes")
    data: SftData = Field(default_factory=SftData, description="where the examples come from")
    log_samples: int = Field(2, ge=0, description="examples saved to samples.jsonl per step")


class TeacherConfig(Strict):
    domain: str = Field(description="a key of distill.domains: whose prompts this teacher scores")
    mode: str = Field(description="the effort mode of the prompts this teacher scores")
    path: str = Field(description="checkpoint directory: a full model, or a peft adapter over its base")
    base: str | None = Field(None, description="adapter base model; default: the adapter's own record")
    weight: float = Field(1.0, gt=0, description="w_i; teachers sharing a (domain, mode) all score it")


class DistillConfig(Strict):
    """On-policy distillation: the student samples, the teacher(s) of each prompt's key score it."""

    domains: dict[str, TaskConfig] = Field(min_length=1, description="prompt sources per domain")
    teachers: list[TeacherConfig] = Field(min_length=1, description="teachers by (domain, mode); see docs/distillation.md")
    steps: int = Field(20, ge=0, le=MAX_STEPS, description="optimizer steps (each: generate, teacher_score, update, weight sync)")
    prompts_per_step: int = Field(16, gt=0, le=MAX_COUNT, description="drawn uniformly across (domain, mode) keys")
    samples_per_prompt: int = Field(1, gt=0, le=MAX_COUNT, description="student samples per prompt")
    temperature: float = Field(1.0, gt=0, description="student sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="student nucleus sampling")
    divergence: str = Field("reverse_kl", description="per-token divergence over the full vocabulary: reverse_kl, forward_kl, generalized_jsd, sampled_token, or a registered / 'module:attr' one (distill/divergences.py)")
    jsd_beta: float = Field(0.5, ge=0, le=1, description="generalized_jsd only")
    chunk_size: int = Field(512, gt=0, le=MAX_CONTEXT, description="student tokens per [chunk, vocab] block")
    teacher_num_cpus: float = Field(0, ge=0, description="per teacher pool actor; 0: the pools share the cores (phases run one at a time)")
    teacher_num_gpus: float = Field(0, ge=0, description="Ray GPUs reserved per teacher pool actor")
    teacher_shards: int = Field(1, ge=1, le=MAX_COUNT, description="teacher pools the teachers are split over, each teacher whole on one (adapters over one base stay together)")
    teacher_replicas: int = Field(1, ge=1, le=MAX_COUNT, description="copies of each teacher shard; a step's micro-batches alternate between them")
    checkpoint_every: int = Field(0, ge=0, le=MAX_STEPS, description="steps between checkpoints; 0: only the final one")
    log_samples: int = Field(4, ge=0, le=MAX_COUNT, description="completions saved to samples.jsonl per step")

    @model_validator(mode="after")
    def _teachers_have_domains(self) -> DistillConfig:
        if self.prompts_per_step * self.samples_per_prompt > MAX_SAMPLES_PER_STEP:
            raise ValueError(
                f"prompts_per_step x samples_per_prompt is {self.prompts_per_step * self.samples_per_prompt} "
                f"samples per step (at most {MAX_SAMPLES_PER_STEP})"
            )
        for index, teacher in enumerate(self.teachers):
            if teacher.domain not in self.domains:
                raise ValueError(
                    f"teachers.{index}.domain {teacher.domain!r} is not one of distill.domains {sorted(self.domains)}"
                )
        return self


class StageRecipe(Strict):
    recipe: str = Field(description="path to the stage's recipe YAML (relative to the working directory)")
    overrides: list[str] = Field(default_factory=list, description="dotted key=value overrides applied to that recipe")

    @field_validator("recipe")
    @classmethod
    def _absolute(cls, path: str) -> str:
        """Resolved now: a Ray job driver may run stages after its working directory changed."""
        return str(Path(path).expanduser().resolve())


class PipelineConfig(Strict):
    """Specialists -> teachers -> on-policy distillation -> eval, in one driver (``posttrain/pipeline.py``)."""

    specialists: dict[str, StageRecipe] = Field(min_length=1, description="specialist name (its distillation domain) -> its GRPO recipe")
    distill: StageRecipe = Field(description="the distillation recipe; the pipeline fills in its distill.domains and distill.teachers")
    teacher_modes: list[str] | None = Field(None, description="modes each specialist teaches in; default: the modes it trained in")
    eval_suites: list[str] | None = Field(None, description="held-out suites for the final student; default: each domain's own")
    parallel_specialists: bool = Field(True, description="run specialists side by side when the cluster has room (a placement group each)")


class Recipe(Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    task: TaskConfig | None = Field(None, description="a GRPO specialist run")
    grpo: GrpoConfig = Field(default_factory=GrpoConfig)
    sft: SftConfig | None = Field(None, description="SFT before GRPO, into <run>/sft/; GRPO then starts from its final weights (grpo.steps: 0 = SFT only)")
    distill: DistillConfig | None = Field(None, description="an on-policy distillation run")
    pipeline: PipelineConfig | None = Field(None, description="a whole pipeline: specialists, teachers, distillation, eval")
    eval: EvalConfig = Field(default_factory=EvalConfig)
    modes: dict[str, EffortMode] = Field(default_factory=dict, description="reasoning-effort modes by name")
    thinking_tags: ThinkingTags = Field(default_factory=ThinkingTags)

    @model_validator(mode="before")
    @classmethod
    def _default_mode(cls, data):
        if isinstance(data, dict) and data.get("pipeline") is not None and not data.get("modes"):
            raise ValueError("a pipeline recipe defines `modes:` once, for every stage")
        return with_default_modes(data)

    @model_validator(mode="after")
    def _fits_context(self) -> Recipe:
        if self.sft is not None and self.task is None:
            raise ValueError("`sft` needs `task:` (its held-out suites; with sft.data.source: task, its problems too)")
        if sum(section is not None for section in (self.task, self.distill, self.pipeline)) != 1:
            raise ValueError(
                "a recipe has exactly one of `task` (GRPO specialist), `distill` (on-policy distillation) "
                "or `pipeline` (specialists -> distillation -> eval)"
            )
        if self.grpo.max_tokens >= self.model.max_model_len:
            raise ValueError(
                f"grpo.max_tokens ({self.grpo.max_tokens}) leaves no room for the prompt in "
                f"model.max_model_len ({self.model.max_model_len})"
            )
        if self.eval.max_tokens is not None and self.eval.max_tokens >= self.model.max_model_len:
            raise ValueError(
                f"eval.max_tokens ({self.eval.max_tokens}) leaves no room for the prompt in "
                f"model.max_model_len ({self.model.max_model_len})"
            )
        per_step = self.grpo.prompts_per_step * self.grpo.samples_per_prompt
        if self.task is not None and per_step > MAX_SAMPLES_PER_STEP:
            raise ValueError(
                f"grpo.prompts_per_step x grpo.samples_per_prompt is {per_step} samples per step "
                f"(at most {MAX_SAMPLES_PER_STEP})"
            )
        if self.grpo.prompts_per_step * self.grpo.samples_per_prompt % self.grpo.minibatches:
            raise ValueError("grpo.minibatches must divide prompts_per_step * samples_per_prompt")
        return self




def with_default_modes(data):
    """Raw recipe data with the default mode and the task's mode weights filled in (a copy).

    A recipe with no ``modes:`` gets one non-thinking mode named ``default`` whose
    ``max_tokens`` is ``grpo.max_tokens``, so recipes written before modes existed
    behave as they did.
    """
    if not isinstance(data, dict):
        return data
    data = copy.deepcopy(data)
    if not data.get("modes"):
        grpo = data.get("grpo") if isinstance(data.get("grpo"), dict) else {}
        max_tokens = grpo.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            max_tokens = GrpoConfig.model_fields["max_tokens"].default
        data["modes"] = {DEFAULT_MODE: {"thinking": False, "max_tokens": max_tokens}}
    task = data.get("task")
    if isinstance(task, dict) and not task.get("modes") and isinstance(data["modes"], dict):
        task["modes"] = {name: 1.0 for name in data["modes"]}
    return data
