"""The tiny Plait LM that the training, launcher, long-run, prepared-data and sweep tests train: a few
seconds a run on 2 CPU cores. Each call returns a fresh dict, so a test may change its copy."""


def tiny_model_config() -> dict:
    return {
        "vocab_size": 300,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }


def tiny_text_data() -> dict:
    """Six documents of the embedded corpus in 32-token blocks, with a BPE trained on them."""
    return {"source": "default", "max_documents": 6, "seq_len": 32, "tokenizer_train_documents": 6}
