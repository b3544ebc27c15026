"""Packing: fixed-length blocks, position ids restart per document, no attention or labels cross documents."""

import json

import pytest
import torch

from plait.modeling import PlaitConfig, PlaitForCausalLM
from plait.train.data import IGNORE_INDEX, load_documents, pack_documents
from plait.train.recipe import DataRecipe, RecipeError


def test_pack_documents_blocks_positions_and_labels():
    docs = [[1, 2, 3, 0], [4, 5, 0], [6, 7, 8, 9, 0], [10, 0]]  # 0 = EOS, 14 tokens
    out = pack_documents(docs, seq_len=5, document_masking=True)
    assert out["input_ids"] == [[1, 2, 3, 0, 4], [5, 0, 6, 7, 8]]  # the 4-token tail is dropped
    assert out["position_ids"] == [[0, 1, 2, 3, 0], [0, 1, 0, 1, 2]]
    assert out["labels"] == [[IGNORE_INDEX, 2, 3, 0, IGNORE_INDEX], [5, 0, IGNORE_INDEX, 7, 8]]
    plain = pack_documents(docs, seq_len=5, document_masking=False)
    assert plain["labels"] == plain["input_ids"] == out["input_ids"] and "position_ids" not in plain


def test_packed_block_attends_within_documents_only():
    """Logits of a packed block equal the logits of each document run alone (document-masked sdpa)."""
    torch.manual_seed(0)
    config = PlaitConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_cache=False,
    )
    config._attn_implementation = "sdpa"
    model = PlaitForCausalLM(config).eval()
    docs = [torch.randint(0, 128, (n,)).tolist() for n in (7, 5, 9)]
    block = pack_documents(docs, seq_len=21, document_masking=True)
    ids = torch.tensor(block["input_ids"])
    positions = torch.tensor(block["position_ids"])
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([d])).logits[0] for d in docs])
        unmasked = model(input_ids=ids).logits[0]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked[7:], alone[7:], atol=1e-3)  # without the mask documents would mix


def test_local_json_and_text_files(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"doc {i}", "id": i}) for i in range(3)))
    ds = load_documents(DataRecipe(source="files", paths=[str(jsonl)], text_field="body"))
    assert ds.column_names == ["text"] and ds["text"] == ["doc 0", "doc 1", "doc 2"]
    text = tmp_path / "a.txt"
    text.write_text("line one\nline two\n")
    ds = load_documents(DataRecipe(source="files", paths=[str(text)]))
    assert ds["text"] == ["line one\nline two\n"]  # one document per file
    with pytest.raises(RecipeError, match=r"line 1: the text field 'text' is missing.*set data.text_field"):
        load_documents(DataRecipe(source="files", paths=[str(jsonl)]))
    with pytest.raises(RecipeError, match=r"data.paths\[0\]=.*does not exist"):
        load_documents(DataRecipe(source="files", paths=[str(tmp_path / "missing.parquet")]))


def test_unreachable_hub_dataset_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(RecipeError, match="data.name='no-such-user/no-such-corpus' could not be loaded"):
        load_documents(DataRecipe(source="hub", name="no-such-user/no-such-corpus"))
