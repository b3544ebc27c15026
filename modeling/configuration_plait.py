"""`PlaitConfig`: the decoder LM's config: the shared block's (`PlaitBlockConfig`) plus the LM's fields."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_block import PlaitBlockConfig


@strict
class PlaitConfig(PlaitBlockConfig):
    r"""Configuration of the Plait decoder LM: the block's dimensions and switches (`PlaitBlockConfig`) plus
    the vocabulary, the context length of its 1-D rotary positions, the KV cache and the special tokens.
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

    def _validate(self) -> None:
        super()._validate()
        self._positive("vocab_size", "max_position_embeddings")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary position embeddings")


__all__ = ["PlaitConfig"]
