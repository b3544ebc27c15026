"""Training samples from prepared directories: `seq_len` windows of each token stream, mixed by weight.

Global sample g (g = 0, 1, ... is the order the run consumes, `train_sampling_strategy="sequential"`; each
rank's dataloader takes its slice of every global batch) is found in O(1), so a resume at any step, on any
number of processes with the same global batch, reads nothing it skips:

- the global order is cut into blocks of `BLOCK` samples; source s gets a fixed quota of each block (its
  weight's share, largest remainder: the shares hold exactly up to 1/BLOCK), in an order shuffled by
  (seed, block);
- the k-th sample drawn from source s is window `perm(seed, s, epoch)[k mod n_s]` of its n_s windows, with
  epoch = k div n_s: a source that runs out is read again in a new order, up to `max_repeats` times. The
  permutation is evaluated index by index (`plait.train.permutation`): no per-window array, whatever the
  size of the source.

Mixing by samples is mixing by tokens: every sample is `seq_len` tokens. This is Megatron's `BlendedDataset`
with a block-deterministic schedule (as Levanter's mixtures) instead of a precomputed index, so nothing
needs building before the first step.

Document masking (`window_fields`, also used by `plait.train.data.pack_documents`): `position_ids`
restart at 0 where a document starts (and at the window start). transformers' `create_causal_mask` reads
such position ids, when no attention mask is passed and no cache is used, as a packed batch and builds a
block-diagonal causal mask, so attention does not cross documents. The label of a document's first token
is -100, so no token is trained to predict the next document from the last.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import torch

from .permutation import Permutation
from .prepared import PreparedTokens
from .recipe import RecipeError

IGNORE_INDEX = -100
BLOCK = 1 << 14
logger = logging.getLogger(__name__)


def window_fields(ids: np.ndarray, starts: np.ndarray, document_masking: bool) -> dict[str, np.ndarray]:
    """`input_ids`, `labels` (and `position_ids` with `document_masking`) of one window whose documents
    start at offsets `starts`."""
    if not document_masking:
        return {"input_ids": ids, "labels": ids.copy()}
    labels = ids.copy()
    labels[starts] = IGNORE_INDEX  # never predict a document's first token from the previous document
    segment = np.zeros(len(ids), dtype=np.int64)
    segment[starts] = np.arange(len(ids))[starts]
    positions = np.arange(len(ids)) - np.maximum.accumulate(segment)  # index - latest start (or 0)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def quotas(weights: list[float], block: int = BLOCK) -> np.ndarray:
    """Samples of each source per block: `block` split by weight, largest remainder first."""
    share = np.asarray(weights, dtype=np.float64) / sum(weights) * block
    q = np.floor(share).astype(np.int64)
    q[np.argsort(-(share - q), kind="stable")[: block - q.sum()]] += 1
    return q


class MixtureDataset(torch.utils.data.Dataset):
    """Global sample g -> one window of one source (see the module docstring). Its length is the number of
    samples before some source would be read more than `max_repeats` times."""

    in_order = True  # PlaitTrainer reads it sequentially: the order is this dataset's own

    def __init__(
        self,
        sources: list[PreparedTokens],
        weights: list[float],
        seq_len: int,
        seed: int,
        vocab_size: int,
        document_masking: bool = True,
        max_repeats: int = 1,
    ):
        self.sources, self.seq_len, self.seed, self.vocab_size = sources, seq_len, seed, vocab_size
        self.document_masking, self.max_repeats = document_masking, max_repeats
        self.windows = np.array([s.tokens // seq_len for s in sources], dtype=np.int64)
        self.quota = quotas(weights)
        for i, (source, windows, quota) in enumerate(zip(sources, self.windows, self.quota, strict=True)):
            if windows == 0:
                raise RecipeError(
                    f"data.mixture[{i}]: {source.directory} holds {source.tokens} tokens, fewer than one "
                    f"window of data.seq_len={seq_len}"
                )
            if quota == 0:
                raise RecipeError(
                    f"data.mixture[{i}].weight={weights[i]} is below 1/{BLOCK} of the total weight; raise it"
                )
        self._epochs_seen: set[tuple[int, int]] = set()
        self.length = min(self._limit(s) for s in range(len(sources)))

    def __len__(self) -> int:
        return self.length

    @lru_cache(maxsize=2)  # noqa: B019  (one dataset per run: the cache lives as long as it)
    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """Block `block`'s source of each position and that sample's rank among its source's in the block."""
        order = np.repeat(np.arange(len(self.sources)), self.quota)
        order = np.random.default_rng([self.seed, block]).permutation(order)
        rank = np.zeros(BLOCK, dtype=np.int64)
        for s in range(len(self.sources)):
            where = order == s
            rank[where] = np.arange(where.sum())
        return order, rank

    @lru_cache(maxsize=64)  # noqa: B019
    def _permutation(self, source: int, epoch: int) -> Permutation:
        """The order of `source`'s windows in `epoch`, one index at a time (nothing materialised)."""
        return Permutation(int(self.windows[source]), (self.seed, source, epoch))

    def _limit(self, source: int) -> int:
        """The first global sample that would read `source` beyond `max_repeats` epochs."""
        allowed = self.max_repeats * int(self.windows[source])
        if allowed == 0:
            return 0
        full, rest = divmod(allowed, int(self.quota[source]))
        order, _ = self._block(full)
        return full * BLOCK + int(np.flatnonzero(order == source)[rest])

    def drawn(self, samples: int) -> np.ndarray:
        """How many samples each source has given in the first `samples` global samples."""
        full, rest = divmod(samples, BLOCK)
        order, _ = self._block(full)
        return full * self.quota + np.bincount(order[:rest], minlength=len(self.sources))

    def locate(self, index: int) -> tuple[int, int]:
        """(source, window) of global sample `index`."""
        block, position = divmod(index, BLOCK)
        order, rank = self._block(block)
        source = int(order[position])
        k = block * int(self.quota[source]) + int(rank[position])
        epoch, k = divmod(k, int(self.windows[source]))
        if epoch and (source, epoch) not in self._epochs_seen:
            self._epochs_seen.add((source, epoch))
            logger.warning(
                "data: source %s is being read again (repeat %d)", self.sources[source].name, epoch + 1
            )
        return source, self._permutation(source, epoch)(k)

    def tokens_consumed(self, samples: int) -> dict[str, int]:
        """Tokens each source has given in the first `samples` global samples (logged per source)."""
        drawn = self.drawn(samples) * self.seq_len
        return {f"data_tokens/{s.name}": int(n) for s, n in zip(self.sources, drawn, strict=True)}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"sample {index} is past the mixture's {self.length} samples")
        source, window = self.locate(index)
        tokens = self.sources[source]
        start = window * self.seq_len
        ids = tokens.read(start, start + self.seq_len)
        if ids.max() >= self.vocab_size:
            raise RecipeError(
                f"data: {tokens.directory} holds token id {int(ids.max())} at tokens {start}-"
                f"{start + self.seq_len}, beyond the vocabulary of {self.vocab_size} (damaged): prepare again"
            )
        fields = window_fields(ids, tokens.starts_in(start, start + self.seq_len), self.document_masking)
        return {name: torch.from_numpy(value) for name, value in fields.items()}
