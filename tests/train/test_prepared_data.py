"""Prepared data: tokenise once into flat token files, train on windows of a weighted mixture, resume exactly
(also on another number of processes), and refuse every bad input with one line naming it."""

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny_model import tiny_model_config
from transformers import AutoTokenizer
from two_processes import launch, shipped_config

import plait.train.prepare as prepare_module
from plait.train.data import pack_documents
from plait.train.data_cli import main
from plait.train.mixture import BLOCK, MixtureDataset
from plait.train.prepare import _locked, prepare
from plait.train.prepared import MANIFEST, PreparedTokens
from plait.train.recipe import DataRecipe, RecipeError, recipe_from_dict
from plait.train.tokenizer import train_bpe_tokenizer
from plait.train.trainer import losses, run

TEXTS = [f"document {i}: " + " ".join(f"w{(i * j) % 97}" for j in range(i % 40)) for i in range(400)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    train_bpe_tokenizer(iter(TEXTS), vocab_size=300, model_max_length=64).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def reference_stream(tokenizer, texts: list[str]) -> list[int]:
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [t for doc in ids for t in [*doc, tokenizer.eos_token_id]]


def files(*paths: Path) -> DataRecipe:
    return DataRecipe(source="files", paths=[str(p) for p in paths])


def test_prepare_writes_the_tokenizers_stream_serially_and_in_parallel_chunks(
    tokenizer, tmp_path, monkeypatch
):
    corpus = write_jsonl(tmp_path / "a.jsonl", TEXTS)
    (tmp_path / "b.txt").write_text("one text file is one document")
    expected = reference_stream(tokenizer, [*TEXTS, "one text file is one document"])
    serial = PreparedTokens(prepare(files(corpus, tmp_path / "b.txt"), tokenizer, tmp_path / "serial"))
    monkeypatch.setattr(prepare_module, "CHUNK_BYTES", 2000)  # many pieces of one file, two workers
    out = prepare(files(corpus, tmp_path / "b.txt"), tokenizer, tmp_path / "parallel", num_proc=2)
    parallel = PreparedTokens(out)
    assert serial.read(0, serial.tokens).tolist() == parallel.read(0, parallel.tokens).tolist() == expected
    assert len(parallel.manifest["shards"]) > 5 and parallel.dtype == np.uint16
    assert (out / "tokens-00000.bin").stat().st_size == 2 * parallel.manifest["shards"][0]["tokens"]
    ends = np.cumsum([len(d) + 1 for d in tokenizer(TEXTS, add_special_tokens=False)["input_ids"]])
    assert parallel.doc_starts.tolist() == [0, *ends.tolist()]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["sources"][0]["documents"] == len(TEXTS) and manifest["tokens"] == len(expected)
    assert manifest["sources"][0]["size"] == corpus.stat().st_size and manifest["vocab_size"] == len(
        tokenizer
    )
    assert prepare(files(corpus, tmp_path / "b.txt"), tokenizer, out) == out  # reused, not redone


def test_an_interrupted_preparation_keeps_its_finished_shards(tokenizer, tmp_path, monkeypatch):
    corpus = write_jsonl(tmp_path / "a.jsonl", TEXTS)
    monkeypatch.setattr(prepare_module, "CHUNK_BYTES", 2000)
    original, calls = prepare_module._write_shard, []

    def crash_at_third(index, *args):
        calls.append(index)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(index, *args)

    monkeypatch.setattr(prepare_module, "_write_shard", crash_at_third)
    with pytest.raises(KeyboardInterrupt):
        prepare(files(corpus), tokenizer, tmp_path / "out")
    first = (tmp_path / "out" / "tokens-00000.bin").stat().st_ino
    calls.clear()
    monkeypatch.setattr(
        prepare_module, "_write_shard", lambda index, *a: calls.append(index) or original(index, *a)
    )
    resumed = PreparedTokens(prepare(files(corpus), tokenizer, tmp_path / "out"))
    assert calls[0] == 2 and (tmp_path / "out" / "tokens-00000.bin").stat().st_ino == first  # kept
    assert resumed.read(0, resumed.tokens).tolist() == reference_stream(tokenizer, TEXTS)


def test_plait_data_prepare_command(tokenizer_dir, tokenizer, tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "a.jsonl", TEXTS)
    out = tmp_path / "out"
    args = [
        "prepare",
        str(out),
        str(tmp_path / "*.jsonl"),
        "--tokenizer",
        str(tokenizer_dir),
        "--no-progress",
    ]
    main(args)
    assert f"plait-data: prepared {out}" in capsys.readouterr().out
    prepared = PreparedTokens(out)
    assert prepared.read(0, prepared.tokens).tolist() == reference_stream(tokenizer, TEXTS)
    again = [
        "prepare",
        str(out),
        "--tokenizer",
        str(tokenizer_dir),
        str(tmp_path / "*.jsonl"),
        "--no-progress",
    ]
    main(again)  # paths after the options: the same preparation, reused
    assert f"plait-data: prepared {out}" in capsys.readouterr().out
    corpus.write_text(corpus.read_text() + json.dumps({"text": "one more"}) + "\n")  # the source changed
    with pytest.raises(
        SystemExit, match=f"^plait-data: error: {out} already holds a preparation of other data"
    ):
        main(args)


def _prepare_and_wait(corpus, tokenizer, out):
    prepare(files(corpus), tokenizer, out, wait=True, progress=False)


def test_racing_preparations_are_refused_or_wait_for_one_another(tokenizer, tmp_path):
    corpus = write_jsonl(tmp_path / "a.jsonl", TEXTS)
    out = tmp_path / "out"
    out.mkdir()
    with _locked(out, wait=False):
        with pytest.raises(RecipeError, match=f"{out} is being prepared by pid {os.getpid()}"):
            prepare(files(corpus), tokenizer, out)
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_prepare_and_wait, args=(corpus, tokenizer, out)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    prepared = PreparedTokens(out)
    assert prepared.read(0, prepared.tokens).tolist() == reference_stream(tokenizer, TEXTS)


def test_bad_lines_are_named_in_the_streaming_pass(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "CHUNK_BYTES", 1000)  # the bad line is in a later piece
    lines = [json.dumps({"text": t}) for t in TEXTS[:100]]
    lines[70] = '{"text": broken'
    (tmp_path / "bad.jsonl").write_text("\n".join(lines))
    with pytest.raises(RecipeError, match=r"bad.jsonl' line 71: invalid JSON"):
        prepare(files(tmp_path / "bad.jsonl"), tokenizer, tmp_path / "out", num_proc=2)
    lines[70] = json.dumps({"body": "x"})
    (tmp_path / "bad.jsonl").write_text("\n".join(lines))
    with pytest.raises(RecipeError, match=r"line 71: the text field 'text' is missing"):
        prepare(files(tmp_path / "bad.jsonl"), tokenizer, tmp_path / "out2")


@pytest.fixture(scope="module")
def two_sources(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    a = prepare(files(write_jsonl(root / "a.jsonl", TEXTS[:300])), tokenizer, root / "a")
    b = prepare(files(write_jsonl(root / "b.jsonl", TEXTS[300:])), tokenizer, root / "b")
    return a, b


def test_mixture_shares_match_the_weights_and_each_epoch_reads_every_window_once(two_sources, tokenizer):
    a, b = (PreparedTokens(p) for p in two_sources)
    data = MixtureDataset([a, b], [3.0, 1.0], seq_len=16, seed=0, vocab_size=len(tokenizer), max_repeats=100)
    n = 3 * BLOCK // 2
    drawn = np.bincount([data.locate(g)[0] for g in range(n)], minlength=2)
    assert drawn.tolist() == data.drawn(n).tolist()
    assert abs(drawn[0] / n - 0.75) < 1 / BLOCK + 3 * np.sqrt(0.75 * 0.25 / (BLOCK / 2))
    assert data.tokens_consumed(n) == {
        "data_tokens/a": 16 * int(drawn[0]),
        "data_tokens/b": 16 * int(drawn[1]),
    }
    windows_b = [w for s, w in (data.locate(g) for g in range(n)) if s == 1]
    epoch = int(data.windows[1])
    assert sorted(windows_b[:epoch]) == list(range(epoch))  # a permutation, then a new one
    assert windows_b[:epoch] != windows_b[epoch : 2 * epoch]
    capped = MixtureDataset([a, b], [3.0, 1.0], seq_len=16, seed=0, vocab_size=len(tokenizer), max_repeats=2)
    at, past = capped.drawn(len(capped)), capped.drawn(len(capped) + 1)
    assert (at <= 2 * capped.windows).all() and (past > 2 * capped.windows).any()  # the cap, exactly
    with pytest.raises(IndexError):
        capped[len(capped)]


def test_windows_follow_the_packing_rules_of_document_masking(two_sources, tokenizer):
    """A window equals the block `pack_documents` cuts from the same documents: position ids restart per
    document, the label of each document's first token is -100 (the model test of such blocks is in
    test_data.py: logits of a document inside a window equal the document run alone)."""
    source = PreparedTokens(two_sources[1])
    docs = [
        [*d, tokenizer.eos_token_id] for d in tokenizer(TEXTS[300:], add_special_tokens=False)["input_ids"]
    ]
    for masking in (True, False):
        packed = pack_documents(docs, seq_len=16, document_masking=masking)
        data = MixtureDataset(
            [source], [1.0], 16, seed=0, vocab_size=len(tokenizer), document_masking=masking
        )
        for g in range(20):
            window = data.locate(g)[1]
            sample = data[g]
            for name, blocks in packed.items():
                assert sample[name].tolist() == blocks[window], (name, window)
        assert ("position_ids" in sample) == masking


def test_bad_prepared_data_is_refused_with_one_line(two_sources, tokenizer, tmp_path):
    a, b = two_sources

    def check(mixture, message):
        recipe = {"data": {"source": "prepared", "mixture": mixture}, "train": {"output_dir": str(tmp_path)}}
        with pytest.raises(RecipeError, match=message):
            recipe_from_dict(recipe)

    check([{"path": str(a), "weight": 0}], r"data.mixture\[0\].weight=0 is not valid; expected a positive")
    check([{"path": str(a), "weight": float("inf")}], r"weight=inf is not valid")
    check([{"path": str(a)}, {"path": str(a) + "/"}], r"data.mixture\[1\].path=.* repeats data.mixture\[0\]")
    check([{"path": str(tmp_path)}], r"is not a prepared directory \(no manifest.json\)")
    check([], "data.mixture is empty")
    damaged = tmp_path / "damaged"
    shutil.copytree(a, damaged)
    manifest = json.loads((damaged / MANIFEST).read_text())
    (damaged / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    check([{"path": str(damaged)}], r"format_version=99; this Plait reads version 1")
    (damaged / MANIFEST).write_text(json.dumps(manifest))
    tokens = damaged / "tokens-00000.bin"
    raw = tokens.read_bytes()
    tokens.write_bytes(raw[:-2])
    with pytest.raises(
        RecipeError, match=r"tokens-00000.bin holds \d+ bytes, the manifest says \d+ \(truncated"
    ):
        PreparedTokens(damaged)
    tokens.unlink()
    with pytest.raises(RecipeError, match=r"tokens-00000.bin is missing"):
        PreparedTokens(damaged)
    tokens.write_bytes(b"\xff\xff" + raw[2:])  # id 65535: beyond the 300-token vocabulary
    data = MixtureDataset([PreparedTokens(damaged)], [1.0], 16, seed=0, vocab_size=len(tokenizer))
    bad = next(g for g in range(len(data)) if data.locate(g)[1] == 0)
    with pytest.raises(RecipeError, match=r"holds token id 65535 at tokens 0-16, beyond the vocabulary of"):
        data[bad]
    other = train_bpe_tokenizer(iter(TEXTS[::-1]), vocab_size=280, model_max_length=64)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(RecipeError, match=r"was prepared with another tokenizer \(fingerprint"):
        run(recipe_from_dict(_recipe(tmp_path / "run", [a], data={"tokenizer": str(tmp_path / "other")})))


def _recipe(out: Path, sources: list[Path], micro_batch: int = 2, **extra) -> dict:
    recipe = {
        "model": {"config": tiny_model_config()},
        "data": {
            "source": "prepared",
            "mixture": [{"path": str(p), "weight": w} for p, w in zip(sources, (2.0, 1.0), strict=False)],
            "seq_len": 32,
        },
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "train": {
            "output_dir": str(out),
            "max_steps": 4,
            "micro_batch_size": micro_batch,
            "precision": "fp32",
        },
        "checkpoint": {"every": 2, "keep_last": 2, "resume_despite_changes": True},
        "logging": {"every": 1, "progress_bar": False},
    }
    for section, values in extra.items():
        recipe[section].update(values)
    return recipe


def test_two_processes_resumed_as_one_repeat_the_uninterrupted_losses(two_sources, tmp_path):
    """2 gloo processes x micro-batch 2 train a mixture; resumed from step 2 as 1 process x micro-batch 4
    (the same global batch) steps 3 and 4 repeat the uninterrupted losses."""
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(out, list(two_sources))))
    launch(shipped_config("ddp"), recipe)
    history = json.loads((out / "log_history.json").read_text())
    uninterrupted = losses(history)
    assert sorted(uninterrupted) == [1, 2, 3, 4]
    logged = [h for h in history if "loss" in h][-1]
    assert logged["data_tokens/a"] + logged["data_tokens/b"] == 4 * 4 * 32  # 4 steps of 4 windows of 32
    shutil.rmtree(out / "checkpoint-4")
    shutil.rmtree(out / "final")
    resumed = run(recipe_from_dict(_recipe(out, list(two_sources), micro_batch=4)))
    assert resumed.trainer.args.world_size == 1
    assert losses(resumed.log_history) == pytest.approx(uninterrupted, rel=1e-5, abs=1e-6)


def test_one_process_resumed_as_two_repeats_the_uninterrupted_losses(two_sources, tmp_path):
    """The other way: 1 process x micro-batch 4, resumed from step 2 as 2 gloo processes x micro-batch 2
    (each rank reads its half of every global batch), repeats the uninterrupted losses of steps 3 and 4."""
    out = tmp_path / "run"
    uninterrupted = losses(run(recipe_from_dict(_recipe(out, list(two_sources), micro_batch=4))).log_history)
    assert sorted(uninterrupted) == [1, 2, 3, 4]
    shutil.rmtree(out / "checkpoint-4")
    shutil.rmtree(out / "final")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(out, list(two_sources))))
    launch(shipped_config("ddp"), recipe)
    resumed = losses(json.loads((out / "log_history.json").read_text()))
    assert resumed == pytest.approx(uninterrupted, rel=1e-5, abs=1e-6)


def test_a_text_source_is_prepared_once_into_the_cache_and_reused(tokenizer_dir, tmp_path):
    corpus = write_jsonl(tmp_path / "a.jsonl", TEXTS)
    cache = tmp_path / "cache"

    def recipe(out):
        data = {
            "source": "files",
            "paths": [str(corpus)],
            "tokenizer": str(tokenizer_dir),
            "cache_dir": str(cache),
        }
        return recipe_from_dict(_recipe(out, [], data=data, train={"max_steps": 2}))

    first = run(recipe(tmp_path / "first"))
    (prepared,) = cache.glob("prepared-*")
    inode = (prepared / "tokens-00000.bin").stat().st_ino
    second = run(recipe(tmp_path / "second"))
    assert (
        list(cache.glob("prepared-*")) == [prepared]
        and (prepared / "tokens-00000.bin").stat().st_ino == inode
    )
    assert losses(first.log_history) == losses(second.log_history)
