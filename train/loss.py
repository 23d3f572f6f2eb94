"""Weighted Instruction Tuning loss (Chatterjee et al., TACL 2025).

Every target token has weight lambda_p (prompt) or lambda_r (response, EOS included):

    loss = -sum(w * log p) / #{tokens with w > 0}

with the count taken over the whole optimiser step: every micro-batch of gradient accumulation on
every worker. lambda_p=0, lambda_r=1 is response-only SFT; lambda_p=lambda_r=1 is full-text LM loss.

Normalising per micro-batch (or per worker) would weight tokens of short micro-batches more, so the
step's count is all-reduced *before* the backward passes and each micro-batch contributes
sum / N_step. DDP and FSDP2 average gradients over the world size W, so each worker's loss is
multiplied by W: the averaged gradient is then exactly d/dθ [sum over all workers / N_step].
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from train.packing import PROMPT, RESPONSE


def token_weights(kind: torch.Tensor, lambda_prompt: float, lambda_response: float) -> torch.Tensor:
    """Per-label weights from the target kinds of packing.collate (padding / no target -> 0)."""
    w = torch.zeros(kind.shape, dtype=torch.float32, device=kind.device)
    w[kind == PROMPT] = lambda_prompt
    w[kind == RESPONSE] = lambda_response
    return w


def weighted_nll(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of w * -log p(label), number of labels with w > 0).

    Labels are already shifted (labels[t] is the token after t), so logits are used in place; only
    positions with a non-zero weight go through log-softmax, which with lambda_p = 0 skips the vocab
    projection's softmax for every prompt token.
    """
    keep = weights.reshape(-1) > 0
    return kept_nll(logits.reshape(-1, logits.shape[-1])[keep], labels, weights)


def kept_nll(kept_logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, int]:
    """weighted_nll for logits already restricted to the positions with w > 0, in flattened order
    (what train.head.HeadSelect makes the model return)."""
    keep = weights.reshape(-1) > 0
    n = int(keep.sum())
    if kept_logits.shape[0] != n:
        raise ValueError(f"{kept_logits.shape[0]} logit rows for {n} positions with a non-zero weight")
    if n == 0:
        return kept_logits.sum() * 0.0, 0  # keeps the graph (DDP needs every parameter to get a grad)
    nll = F.cross_entropy(kept_logits.float(), labels.reshape(-1)[keep], reduction="none")
    return (nll * weights.reshape(-1)[keep]).sum(), n


def all_reduce_sum(value: float, device) -> float:
    """Sum a number over workers (identity outside torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def step_scale(step_count: float, world_size: int) -> float:
    """Factor for a micro-batch's weighted sum so gradients averaged over workers equal sum/N_step."""
    return world_size / max(step_count, 1.0)


def count_targets(kind: torch.Tensor, lambda_prompt: float, lambda_response: float) -> int:
    """Labels with a non-zero weight, computed before the forward pass (for the step's denominator)."""
    n = 0
    if lambda_prompt > 0:
        n += int((kind == PROMPT).sum())
    if lambda_response > 0:
        n += int((kind == RESPONSE).sum())
    return n
