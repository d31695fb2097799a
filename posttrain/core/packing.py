"""How a micro-batch of prompt + completion sequences is laid out for the decoder: padded or packed.

``padded_layout``: one sequence per row, right-padded to the longest, with a 2D attention mask.
``packed_layout``: sequences placed end to end in rows no longer than the longest sequence
(first fit, longest first), each with position ids restarting at 0 and no attention mask:
transformers then derives a block-diagonal causal mask from the position ids (sdpa, eager,
flex) or varlen boundaries (flash attention), so no token sees another sequence and the
padding that short completions left is gone. Both give each completion token's position in
the decoder's output (``source_row_N``, ``source_col_N``: the position that predicts it) and
its place in the ``[B, T]`` view the losses read (``dest_B_N``, ``dest_T_N``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PACKED_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


@dataclass
class TokenLayout:
    input_ids_R_L: torch.Tensor
    attention_R_L: torch.Tensor | None  # padded: the 2D mask; packed: None (derived from the position ids)
    position_ids_R_L: torch.Tensor | None  # packed: restart at 0 per sequence; padded: None (0.. per row)
    source_row_N: torch.Tensor  # decoder output row / column predicting each completion token
    source_col_N: torch.Tensor
    dest_B_N: torch.Tensor  # where that token sits in the [B, T] view
    dest_T_N: torch.Tensor
    targets_B_T: torch.Tensor  # the completion token ids (0 past a sequence's end)
    mask_B_T: torch.Tensor  # 1.0 on completion tokens that carry the loss

    def hidden_B_T_H(self, hidden_R_L_H: torch.Tensor) -> torch.Tensor:
        """The decoder's hidden states at the positions predicting each completion token, as ``[B, T, H]``."""
        batch, length = self.targets_B_T.shape
        out_B_T_H = hidden_R_L_H.new_zeros((batch, length, hidden_R_L_H.shape[-1]))
        out_B_T_H[self.dest_B_N, self.dest_T_N] = hidden_R_L_H[self.source_row_N, self.source_col_N]
        return out_B_T_H


def supports_packing(config) -> bool:
    """Whether the model's attention takes packed rows (sequence boundaries from position ids)."""
    return getattr(config, "_attn_implementation", None) in PACKED_ATTENTION


def _targets_and_mask(seqs) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(max(len(c) for c in seqs.completion_ids), 1)
    targets = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.float32)
    for row, completion in enumerate(seqs.completion_ids):
        targets[row, : len(completion)] = torch.tensor(completion, dtype=torch.long)
        loss_mask = seqs.completion_mask[row] if seqs.completion_mask is not None else None
        mask[row, : len(completion)] = torch.tensor(loss_mask, dtype=torch.float32) if loss_mask is not None else 1.0
    return targets, mask


def _destinations(seqs) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [torch.full((len(c),), b, dtype=torch.long) for b, c in enumerate(seqs.completion_ids)]
    cols = [torch.arange(len(c)) for c in seqs.completion_ids]
    return torch.cat(rows), torch.cat(cols)


def padded_layout(seqs, pad_id: int, device: torch.device) -> TokenLayout:
    """One sequence per row, right-padded."""
    lengths = [len(p) + len(c) for p, c in zip(seqs.prompt_ids, seqs.completion_ids)]
    input_ids = torch.full((len(seqs), max(lengths)), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), max(lengths)), dtype=torch.long)
    source_cols = []
    for row, (prompt, completion) in enumerate(zip(seqs.prompt_ids, seqs.completion_ids)):
        input_ids[row, : lengths[row]] = torch.tensor(prompt + completion)
        attention[row, : lengths[row]] = 1
        source_cols.append(torch.arange(len(prompt) - 1, len(prompt) - 1 + len(completion)))
    dest_B, dest_T = _destinations(seqs)
    targets, mask = _targets_and_mask(seqs)
    tensors = (input_ids, attention, None, dest_B, torch.cat(source_cols), dest_B, dest_T, targets, mask)
    return TokenLayout(*(t.to(device) if t is not None else None for t in tensors))


def packed_layout(seqs, pad_id: int, device: torch.device) -> TokenLayout:
    """Sequences end to end in rows no longer than the longest one (first fit, longest first)."""
    lengths = [len(p) + len(c) for p, c in zip(seqs.prompt_ids, seqs.completion_ids)]
    capacity = max(lengths)
    rows: list[list[int]] = []  # sequence indices per row
    room: list[int] = []
    for index in sorted(range(len(seqs)), key=lambda i: -lengths[i]):
        fit = next((r for r, free in enumerate(room) if free >= lengths[index]), None)
        if fit is None:
            rows.append([])
            room.append(capacity)
            fit = len(rows) - 1
        rows[fit].append(index)
        room[fit] -= lengths[index]
    input_ids = torch.full((len(rows), capacity), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), capacity), dtype=torch.long)
    source_row = torch.zeros(sum(map(len, seqs.completion_ids)), dtype=torch.long)
    source_col = torch.zeros_like(source_row)
    starts = torch.cumsum(torch.tensor([0] + [len(c) for c in seqs.completion_ids[:-1]]), 0)
    for row, members in enumerate(rows):
        offset = 0
        for index in members:
            prompt, completion = seqs.prompt_ids[index], seqs.completion_ids[index]
            input_ids[row, offset : offset + lengths[index]] = torch.tensor(prompt + completion)
            positions[row, offset : offset + lengths[index]] = torch.arange(lengths[index])
            first = int(starts[index])
            source_row[first : first + len(completion)] = row
            source_col[first : first + len(completion)] = torch.arange(len(completion)) + offset + len(prompt) - 1
            offset += lengths[index]
        positions[row, offset:] = torch.arange(capacity - offset)  # the tail pad: a sequence of its own
    dest_B, dest_T = _destinations(seqs)
    targets, mask = _targets_and_mask(seqs)
    tensors = (input_ids, None, positions, source_row, source_col, dest_B, dest_T, targets, mask)
    return TokenLayout(*(t.to(device) if t is not None else None for t in tensors))
