"""`PlaitConfig`: the decoder LM's config: the shared block's (`PlaitBlockConfig`) plus the LM's fields."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_block import PlaitBlockConfig


@strict
class PlaitConfig(PlaitBlockConfig):
    r"""Configuration of the Plait decoder LM: the block's dimensions and switches (`PlaitBlockConfig`) plus
    the vocabulary, the context length of its 1-D rotary positions, the KV cache, the special tokens and the
    chunking of the training loss.
    The LM is causal: every token mixer sees only the tokens before it. Unknown keys, wrong types and invalid
    values raise `ValueError` naming the field (see `PlaitBlockConfig`)."""

    model_type = "plait"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    is_causal = True

    vocab_size: int = 8192
    max_position_embeddings: int = 2048
    use_cache: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    # Training loss from the LM head in chunks of this many tokens, never forming the [tokens, vocab] logits
    # (plait.kernels.linear_cross_entropy); None computes the logits and then the loss.
    loss_chunk_size: int | None = None
    # z-loss weight w: the training loss adds w·logsumexp(logits)² per targeted token (PaLM; 1e-4 is usual);
    # 0 turns it off. Applied on both loss paths.
    z_loss: float = 0.0

    def _validate(self) -> None:
        super()._validate()
        self._positive("vocab_size", "max_position_embeddings")
        if self.loss_chunk_size is not None:
            self._positive("loss_chunk_size")
        if not 0 <= self.z_loss < float("inf"):
            raise ValueError(f"z_loss={self.z_loss!r} must be a finite number >= 0 (0 turns it off)")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary position embeddings")


__all__ = ["PlaitConfig"]
