"""Packed micro-batches (sequences end to end, position ids restarting, no padding) equal padded ones."""

import pytest
import torch

from posttrain.core.packing import packed_layout, padded_layout
from posttrain.core.policy import PolicyTrainer, Sequences
from posttrain.core.schema import TrainerConfig
from specialists.grpo import GrpoLoss, LossNormalizer

SEQS = Sequences(
    prompt_ids=[[1, 5, 9, 11], [1, 7], [1, 3, 3], [1, 4, 4, 4, 4, 4], [1, 2]],
    completion_ids=[[20, 21, 2], [30, 31, 32, 33, 34, 35, 36, 2], [40], [50, 51], [60, 61, 62]],
    completion_mask=[[1, 1, 1], [1, 1, 1, 0, 1, 1, 1, 1], [1], [1, 1], [0, 1, 1]],
    temperature=0.7,
)
EXTRAS = {"advantages": [1.0, -0.5, 2.0, 0.3, -1.0], "rollout_logprobs": [[-1.0] * len(c) for c in SEQS.completion_ids]}


def _trainer(path, packing: bool, chunk: int = 1024):
    cfg = TrainerConfig(autocast="none", micro_batch_size=8, lr=1e-3, packing=packing, logprob_chunk_tokens=chunk)
    return PolicyTrainer(path, cfg, seed=0, threads=1)


def test_packed_rows_are_fewer_and_hold_every_token():
    layout = packed_layout(SEQS, 0, torch.device("cpu"))
    padded = padded_layout(SEQS, 0, torch.device("cpu"))
    assert layout.input_ids_R_L.shape[0] < padded.input_ids_R_L.shape[0]
    assert layout.input_ids_R_L.shape[1] == padded.input_ids_R_L.shape[1]  # no row longer than the longest sequence
    # the token after each source position is the completion token it predicts
    predicted = layout.input_ids_R_L[layout.source_row_N, layout.source_col_N + 1]
    assert torch.equal(predicted, layout.targets_B_T[layout.dest_B_N, layout.dest_T_N])
    assert torch.equal(layout.targets_B_T, padded.targets_B_T) and torch.equal(layout.mask_B_T, padded.mask_B_T)


@pytest.mark.parametrize("chunk", [0, 4])
def test_packed_logprobs_loss_and_gradients_equal_padded(tiny_model_path, chunk):
    results = []
    for packing in (False, True):
        trainer = _trainer(tiny_model_path, packing, chunk)
        trainer.optimizer.step = lambda: None  # compare gradients, not steps
        logprobs_B_T, mask_B_T = trainer.token_logprobs(SEQS)
        tokens = int(sum(map(sum, SEQS.completion_mask)))
        loss = GrpoLoss(LossNormalizer("token_mean", tokens, len(SEQS), 8), correction="tis")
        metrics = trainer.update(SEQS, loss, EXTRAS)
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results.append((logprobs_B_T.detach(), mask_B_T, metrics, grads))
    (padded_lp, padded_mask, padded_metrics, padded_grads), (packed_lp, packed_mask, packed_metrics, packed_grads) = results
    assert torch.equal(padded_mask, packed_mask)
    torch.testing.assert_close(packed_lp, padded_lp, atol=1e-5, rtol=1e-5)
    assert packed_metrics["loss"] == pytest.approx(padded_metrics["loss"], abs=1e-6)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-6, rtol=1e-4)
