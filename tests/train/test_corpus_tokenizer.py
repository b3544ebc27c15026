import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from plait.eval.corpus import default_corpus, stdlib_files, stdlib_root
from plait.train.data import tokenize_and_pack
from plait.train.tokenizer import train_bpe_tokenizer


@pytest.fixture(scope="module")
def corpus():
    return default_corpus(max_files=400, validation_percent=5.0)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_bpe_tokenizer(corpus["train"]["text"], vocab_size=1024)


def test_corpus_is_the_standard_library_in_a_deterministic_split(corpus):
    files = stdlib_files()
    assert all("site-packages" not in p.parts for p in files)
    assert any(p.name == "os.py" for p in files)
    relative = [p.relative_to(stdlib_root()).as_posix() for p in files]
    assert relative == sorted(relative)
    again = default_corpus(max_files=400, validation_percent=5.0)
    assert list(again["validation"]["path"]) == list(corpus["validation"]["path"])
    assert not set(corpus["train"]["path"]) & set(corpus["validation"]["path"])
    assert corpus["validation"].num_rows > 0


def test_tokenizer_round_trips_the_corpus(corpus, tokenizer):
    for text in list(corpus["validation"]["text"]) + list(corpus["train"]["text"])[:50]:
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        assert tokenizer.decode(ids) == text


def test_tokenizer_saves_and_reloads_with_auto_class(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    restored = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(restored, PreTrainedTokenizerFast)
    text = "import os\nprint(os.getcwd())  # ünïcode ✓\n"
    assert restored(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert restored.eos_token == "<|endoftext|>" and restored.pad_token == "<|pad|>"


def test_packing_gives_full_blocks_with_document_separators(corpus, tokenizer):
    blocks = tokenize_and_pack(corpus["validation"], tokenizer, block_size=64)
    assert all(len(ids) == 64 for ids in blocks["input_ids"])
    assert blocks["labels"] == blocks["input_ids"]
    total = sum(len(tokenizer(t, verbose=False)["input_ids"]) + 1 for t in corpus["validation"]["text"])
    assert len(blocks) == total // 64
    assert any(tokenizer.eos_token_id in ids for ids in blocks["input_ids"])


def test_packing_rejects_missing_column_and_too_little_text(corpus, tokenizer):
    with pytest.raises(ValueError, match="text_column='content'"):
        tokenize_and_pack(corpus["validation"], tokenizer, 64, text_column="content")
    with pytest.raises(ValueError, match="no complete block"):
        tokenize_and_pack(corpus["validation"].select([0]), tokenizer, 10**7)
