"""Vocabulary projection only where the loss looks.

With lambda_p = 0 (response-only tuning) every prompt token's logits are thrown away, yet a plain
forward still projects every position onto the vocabulary: for SmolLM2-135M (49k vocab, 576 wide)
that projection is about a fifth of the forward FLOPs, and its backward as much again. A forward
pre-hook on the output embedding hands it only the positions with a non-zero weight, so the model
returns logits of shape (n_kept, vocab) in flattened (batch, position) order.

A hook, not a wrapper module: the state dict, tied embeddings, DDP, FSDP2 (the head stays in the
root's shard group) and peft see the unchanged model.
"""
from __future__ import annotations

import contextlib

import torch


class HeadSelect:
    def __init__(self, model: torch.nn.Module):
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(model).__name__} has no output embedding to select positions for")
        self.keep: torch.Tensor | None = None
        self._handle = head.register_forward_pre_hook(self._select)

    def _select(self, module, args):
        if self.keep is None:
            return None
        h = args[0]
        return (h.reshape(-1, h.shape[-1])[self.keep], *args[1:])

    @contextlib.contextmanager
    def only(self, keep: torch.Tensor):
        """Within the block, forwards return logits of the flattened positions where keep is True."""
        self.keep = keep.reshape(-1)
        try:
            yield
        finally:
            self.keep = None

    def remove(self) -> None:
        self._handle.remove()
