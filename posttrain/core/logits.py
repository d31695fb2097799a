"""The logits the trainer scores tokens with: the model's own logits path, at the sampling temperature.

The trainer never materialises ``[B, T, V]`` logits: it runs the decoder, then the output
head in chunks (``policy.chunked_target_logprobs``). A model whose forward post-processes
the head's output would be trained on the wrong distribution if that post-processing were
skipped, so ``LogitsPath`` carries it:

- logit scaling: Cohere multiplies by ``logit_scale``; Granite divides by ``logits_scaling``;
- final-logit softcapping: Gemma 2/3, ``cap * tanh(logits / cap)``;
- then the sampling temperature: vLLM samples from ``softmax(logits / T)``, so the
  policy-gradient and KL terms must use the log-probs of that same distribution, or the
  expected gradient is biased (``tests/test_signal_policy.py`` enumerates it exactly).

A model with another post-processing step we do not know is caught at trainer start by
``check_logits_path`` (head + path vs the model's own forward), never trained silently.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class LogitsPath:
    """``head(h) * scale -> softcap -> / temperature``, in the order the model and vLLM apply them."""

    scale: float = 1.0
    softcap: float | None = None
    temperature: float = 1.0

    def apply(self, logits_C_V: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits_C_V = logits_C_V * self.scale
        if self.softcap:
            logits_C_V = torch.tanh(logits_C_V / self.softcap) * self.softcap
        if self.temperature != 1.0:
            logits_C_V = logits_C_V / self.temperature
        return logits_C_V

    def at(self, temperature: float) -> LogitsPath:
        return replace(self, temperature=temperature)


def logits_path(config) -> LogitsPath:
    """The post-processing a model's forward applies to its output head (T = 1)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = 1.0
    if getattr(text, "logit_scale", None):  # Cohere
        scale *= float(text.logit_scale)
    if getattr(text, "logits_scaling", None):  # Granite
        scale /= float(text.logits_scaling)
    softcap = getattr(text, "final_logit_softcapping", None)  # Gemma 2/3
    return LogitsPath(scale=scale, softcap=float(softcap) if softcap else None)


def postprocessing_problem(config, where: str = "model.path") -> str | None:
    """Why a run that scores tokens from hidden states + head alone (distillation) cannot take this model."""
    path = logits_path(config)
    if path.scale == 1.0 and path.softcap is None:
        return None
    return (
        f"{where}: this model post-processes its logits (scale {path.scale:g}, softcap {path.softcap}); "
        "the distillation loss streams logits from hidden states and the output head without it. "
        "Use a model without final-logit softcapping / logit scaling for distillation"
    )


@torch.no_grad()
def check_logits_path(causal_lm, path: LogitsPath, model_path: str, vocab_probe: int = 8) -> None:
    """Refuse a model whose forward does more to the head's output than ``path`` knows.

    One forward of ``vocab_probe`` tokens: ``log_softmax(path(head(decoder(x))))`` must equal
    ``log_softmax(model(x).logits)``.
    """
    device = next(causal_lm.parameters()).device
    ids_1_L = torch.arange(1, vocab_probe + 1, device=device).unsqueeze(0) % causal_lm.config.get_text_config().vocab_size
    hidden_L_H = causal_lm.get_decoder()(input_ids=ids_1_L).last_hidden_state[0]
    ours_L_V = path.apply(torch.nn.functional.linear(hidden_L_H, causal_lm.get_output_embeddings().weight).float())
    theirs_L_V = causal_lm(input_ids=ids_1_L).logits[0].float()
    gap = (ours_L_V.log_softmax(-1) - theirs_L_V.log_softmax(-1)).abs().max().item()
    if gap > 1e-3:
        raise ValueError(
            f"model.path {model_path!r}: its forward post-processes the output head's logits in a way the "
            f"trainer does not reproduce (max log-prob gap {gap:.3g} on a probe); training it would optimise "
            "another distribution than the one vLLM samples. Supported: Cohere logit_scale, Granite "
            "logits_scaling, Gemma final_logit_softcapping"
        )
