import pytest

from plait.train.tokenizer import train_bpe_tokenizer


@pytest.fixture(scope="session")
def byte_tokenizer():
    """Byte-level tokenizer with no merges (256 bytes + EOS + PAD): any text, one token per byte."""
    return train_bpe_tokenizer(["a"], vocab_size=258, model_max_length=4096)
