"""Packing several examples into one sequence, and collation into model inputs.

Attention isolation relies on position ids: they restart at 0 for every example, and with
`attention_mask=None` transformers' Llama (sdpa, eager and flash) derives a block-diagonal causal mask
from the restarts (`masking_utils.find_packed_sequence_indices`). tests/test_train_units.py checks
that a packed forward gives the same logits as separate forwards, so an upgrade that breaks this fails
loudly. Padding is one more "example" at the end of a row, with no loss weight.
"""
from __future__ import annotations

import torch

# Target kinds, per position t, for the label at t (= token t+1 of the same example).
NO_TARGET, PROMPT, RESPONSE = 0, 1, 2


class Packer:
    """Streaming best-fit packing: an example goes into the open bin with the least room that fits it.

    A bin closes when no example seen so far could still fit, or (fullest first) when more than
    `max_open` bins are open; a larger `max_open` packs tighter but holds more examples back.
    """

    def __init__(self, max_len: int, max_open: int = 8):
        self.max_len, self.max_open = max_len, max_open
        self.bins: list[list[dict]] = []
        self.min_len = max_len

    def _used(self, b: list[dict]) -> int:
        return sum(len(e["input_ids"]) for e in b)

    def add(self, ex: dict) -> list[list[dict]]:
        n = len(ex["input_ids"])
        self.min_len = min(self.min_len, n)
        fits = [b for b in self.bins if self._used(b) + n <= self.max_len]
        if fits:
            min(fits, key=lambda b: self.max_len - self._used(b)).append(ex)
        else:
            self.bins.append([ex])
        done = [b for b in self.bins if self.max_len - self._used(b) < self.min_len]
        self.bins = [b for b in self.bins if self.max_len - self._used(b) >= self.min_len]
        while len(self.bins) > self.max_open:
            full = max(self.bins, key=self._used)
            self.bins.remove(full)
            done.append(full)
        return done

    def flush(self) -> list[list[dict]]:
        done, self.bins = self.bins, []
        return done

    # Open bins are part of the data position: a resumed run continues with them.
    def state_dict(self) -> dict:
        return {"bins": self.bins, "min_len": self.min_len}

    def load_state_dict(self, state: dict) -> None:
        self.bins, self.min_len = state["bins"], state["min_len"]


def collate(rows: list[list[dict]], pad_id: int) -> dict:
    """Rows of examples -> tensors [B, L], L = longest row. Each row's examples are concatenated.

    input_ids, position_ids: model inputs (positions restart per example and for the padding tail).
    labels: the next token of the same example (pad where there is none).
    kind: NO_TARGET / PROMPT / RESPONSE of each label, for the WIT weights.
    tokens / slots: non-padding tokens and B*L, for the non-padding share.
    """
    length = max(sum(len(e["input_ids"]) for e in r) for r in rows)
    B = len(rows)
    ids = torch.full((B, length), pad_id, dtype=torch.long)
    pos = torch.zeros((B, length), dtype=torch.long)
    labels = torch.full((B, length), pad_id, dtype=torch.long)
    kind = torch.zeros((B, length), dtype=torch.uint8)
    tokens = 0
    for i, r in enumerate(rows):
        o = 0
        for e in r:
            x = torch.tensor(e["input_ids"], dtype=torch.long)
            resp = torch.tensor(e["response"], dtype=torch.uint8)
            n = len(x)
            ids[i, o:o + n] = x
            pos[i, o:o + n] = torch.arange(n)
            labels[i, o:o + n - 1] = x[1:]
            kind[i, o:o + n - 1] = PROMPT + resp[1:]  # 1 = prompt, 2 = response
            o += n
        tokens += o
        pos[i, o:] = torch.arange(length - o)
    return {"input_ids": ids, "position_ids": pos, "labels": labels, "kind": kind,
            "tokens": tokens, "slots": B * length}


class BatchFeed:
    """Endless micro-batches (lists of rows) over epochs of a source, with a resumable position.

    `source(epoch, skip)` yields the examples of an epoch from example `skip` on. The position
    (epoch, examples consumed, closed-but-unbatched rows, the packer's open bins) is exactly what a
    checkpoint must hold for a resumed run to see the same micro-batches as an uninterrupted one.
    Only whole micro-batches are produced; rows left at an epoch's end carry over into the next.
    """

    def __init__(self, source, micro_batch_size: int, packer: Packer | None):
        self.source, self.mbs, self.packer = source, micro_batch_size, packer
        self.epoch, self.consumed, self.pending = 0, 0, []
        self._it = None

    def next(self) -> list[list[dict]]:
        while len(self.pending) < self.mbs:
            if self._it is None:
                self._it = iter(self.source(self.epoch, self.consumed))
            ex = next(self._it, None)
            if ex is None:
                if self.consumed == 0:
                    raise RuntimeError(f"epoch {self.epoch} of this worker's data shard has no usable examples")
                self.epoch, self.consumed, self._it = self.epoch + 1, 0, None
                continue
            self.consumed += 1
            self.pending.extend(self.packer.add(ex) if self.packer else [[ex]])
        rows, self.pending = self.pending[:self.mbs], self.pending[self.mbs:]
        return rows

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "pending": self.pending,
                "packer": self.packer.state_dict() if self.packer else None}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed, self.pending = state["epoch"], state["consumed"], state["pending"]
        if self.packer and state["packer"]:
            self.packer.load_state_dict(state["packer"])
        self._it = None
