"""The demo's pipeline end to end at toy size: Trainer lowers the loss, the saved model reloads."""

import torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from plait.eval.corpus import default_corpus
from plait.eval.perplexity import evaluate_loss, unigram_cross_entropy
from plait.modeling import PlaitConfig, PlaitForCausalLM
from plait.train.data import tokenize_and_pack
from plait.train.tokenizer import train_bpe_tokenizer


def test_trainer_run_on_default_corpus_beats_unigram_and_reloads(tmp_path):
    torch.manual_seed(0)
    corpus = default_corpus(max_files=120, validation_percent=10.0)
    tokenizer = train_bpe_tokenizer(corpus["train"]["text"], vocab_size=512)
    train_blocks = tokenize_and_pack(corpus["train"], tokenizer, block_size=64)
    eval_blocks = tokenize_and_pack(corpus["validation"], tokenizer, block_size=64).select(range(32))
    config = PlaitConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = PlaitForCausalLM(config)
    before = evaluate_loss(model, eval_blocks)["loss"]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=120,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        warmup_steps=10,
        lr_scheduler_type="cosine",
        report_to="none",
        save_strategy="no",
        logging_steps=20,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    Trainer(model=model, args=args, train_dataset=train_blocks).train()
    after = evaluate_loss(model, eval_blocks)["loss"]
    unigram = unigram_cross_entropy(train_blocks, eval_blocks, len(tokenizer))
    assert after < before - 1.5
    assert after < unigram - 0.3

    model.save_pretrained(tmp_path / "model")
    restored = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert abs(evaluate_loss(restored, eval_blocks)["loss"] - after) < 1e-6
