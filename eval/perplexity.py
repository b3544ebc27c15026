"""Perplexity of a causal LM: strided sliding windows over any text, loss on packed blocks, and the unigram
baseline a trained model must beat.

`sliding_window_perplexity` is the standard fixed-length-model evaluation (transformers' "Perplexity of
fixed-length models" guide): the token stream is cut into windows of `context_length` tokens that start every
`stride` tokens; each token is scored once, in the first window that predicts it, with up to
`context_length - stride` tokens of context before it. `stride == context_length` gives disjoint windows (the
fastest, the least context per token); a smaller stride gives every scored token more context.
Transformers has no function for it (the guide is a loop in the docs), so it is written here, batched.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from datasets import Dataset
from tqdm.auto import tqdm


def token_stream(tokenizer, texts, separator: int | None = None) -> torch.Tensor:
    """The texts tokenized without special tokens and joined, `separator` (default: EOS) between them."""
    separator = tokenizer.eos_token_id if separator is None else separator
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if separator is not None:
            ids.append(separator)
    if len(ids) < 2:
        raise ValueError("the texts hold fewer than 2 tokens; nothing to score")
    return torch.tensor(ids, dtype=torch.long)


def windows(n_tokens: int, context_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) per window: tokens [begin, end) go in, the last `scored` of them are predicted.
    A token is predicted at most once; the first of the stream never is, nor, when `stride ==
    context_length`, the first of each window (nothing before it is in the window)."""
    if not 0 < stride <= context_length:
        raise ValueError(f"stride={stride} must lie in [1, context_length={context_length}]")
    spans, scored_until = [], 1  # token 0 has no context: it is never predicted
    for begin in range(0, n_tokens, stride):
        end = min(begin + context_length, n_tokens)
        scored = min(end - scored_until, end - begin - 1)
        if scored > 0:
            spans.append((begin, end, scored))
            scored_until = end
        if end == n_tokens:
            break
    return spans


@torch.no_grad()
def sliding_window_perplexity(
    model,
    ids: torch.Tensor,
    context_length: int,
    stride: int | None = None,
    batch_size: int = 8,
    n_bytes: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Mean next-token cross-entropy (nats) and perplexity of `model` over the 1-D token stream `ids`.

    `n_bytes` (the UTF-8 size of the text) adds bits per byte, which compares models with different
    tokenizers. Windows of equal length are batched; the model runs without a KV cache.
    """
    if ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D token stream, got shape {tuple(ids.shape)}")
    if context_length < 2:
        raise ValueError(f"context_length={context_length} must be at least 2")
    stride = stride or context_length
    model.eval()
    device = next(model.parameters()).device
    spans = windows(len(ids), context_length, stride)
    total_nll, total_tokens = 0.0, 0
    bar = tqdm(total=len(spans), desc=f"perplexity @ {context_length}", disable=not progress, leave=False)
    for i in range(0, len(spans), batch_size):
        batch = spans[i : i + batch_size]
        # The last window may be shorter: score it on its own.
        for group in (
            [s for s in batch if s[1] - s[0] == context_length],
            [s for s in batch if s[1] - s[0] < context_length],
        ):
            if not group:
                continue
            x = torch.stack([ids[b:e] for b, e, _ in group]).to(device)
            logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
            for row, (_, _, scored) in enumerate(group):
                total_nll += nll[row, -scored:].sum().item()
                total_tokens += scored
        bar.update(len(batch))
    bar.close()
    loss = total_nll / total_tokens
    result = {
        "loss": loss,
        "perplexity": math.exp(loss),
        "tokens": total_tokens,
        "context_length": context_length,
        "stride": stride,
    }
    if n_bytes:
        result["bits_per_byte"] = total_nll / math.log(2) / n_bytes
    return result


def evaluate_loss(
    model, blocks: Dataset, batch_size: int = 8, max_blocks: int | None = None
) -> dict[str, float]:
    """Mean next-token cross-entropy (nats) and perplexity over `blocks` (`input_ids` of equal length, as
    packed for training), each block scored on its own: disjoint windows of the block length."""
    n = len(blocks) if max_blocks is None else min(max_blocks, len(blocks))
    if n == 0:
        raise ValueError("no blocks to evaluate")
    block = blocks[:n]["input_ids"]
    ids = torch.tensor(block, dtype=torch.long).reshape(-1)
    return sliding_window_perplexity(model, ids, len(block[0]), batch_size=batch_size, progress=False)


def unigram_cross_entropy(train_blocks: Dataset, eval_blocks: Dataset, vocab_size: int) -> float:
    """Cross-entropy (nats) on `eval_blocks` of add-one-smoothed unigram frequencies from `train_blocks`:
    the loss of a model that ignores context, which a trained LM must clearly beat."""
    counts = Counter(chain_ids(train_blocks))
    total = sum(counts.values()) + vocab_size
    eval_ids = list(chain_ids(eval_blocks))
    return -sum(math.log((counts[t] + 1) / total) for t in eval_ids) / len(eval_ids)


def chain_ids(blocks: Dataset):
    for ids in blocks["input_ids"]:
        yield from ids
