"""`plait-eval` end to end on tiny saved models: every suite, the results JSON schema, the summary and plots,
and clear errors for bad input."""

import json

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from plait.eval.cli import main
from plait.modeling import PlaitConfig, PlaitForCausalLM


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, byte_tokenizer):
    path = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    config = PlaitConfig(
        vocab_size=len(byte_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
    )
    PlaitForCausalLM(config).save_pretrained(path)
    byte_tokenizer.save_pretrained(path)
    return path


def test_every_text_suite_writes_results_summary_and_plots(lm_dir, tmp_path):
    out = tmp_path / "eval"
    argv = [str(lm_dir), "--suites", "hellaswag", "lambada_openai", "perplexity", "extrapolation"]
    argv += ["--limit", "2", "--max-documents", "12", "--multiples", "1", "2", "4", "--no-progress"]
    argv += ["--max-length", "2048", "--variant", "lssar:attention=lssar", "--output-dir", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"model", "versions", "machine", "data", "seeds", "suites", "seconds", "wall_seconds"} <= set(
        results
    )
    assert results["model"]["config"]["model_type"] == "plait"
    assert {"torch", "transformers", "lm_eval", "datasets"} <= set(results["versions"])
    suites = results["suites"]
    assert set(suites) == {"lm_eval", "perplexity", "extrapolation"}
    hellaswag = suites["lm_eval"]["tasks"]["hellaswag"]
    assert {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"} <= set(hellaswag) and hellaswag[
        "n_samples"
    ] == 2
    assert {"perplexity", "acc"} <= set(suites["lm_eval"]["tasks"]["lambada_openai"])
    assert suites["perplexity"]["context_length"] == 64 and suites["perplexity"]["stride"] == 32
    assert {"loss", "perplexity", "bits_per_byte", "tokens"} <= set(suites["perplexity"])
    assert suites["extrapolation"]["lengths"] == [64, 128, 256]
    assert set(suites["extrapolation"]["results"]) == {"as trained", "lssar"}
    summary = (out / "summary.md").read_text()
    assert "| hellaswag | acc_norm |" in summary and "Length extrapolation" in summary
    assert (out / "lm_eval.png").stat().st_size > 0 and (out / "extrapolation.png").stat().st_size > 0


def test_image_suite(tmp_path):
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        id2label={0: "a", 1: "b", 2: "c"},
        label2id={"a": 0, "b": 1, "c": 2},
    )
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "vit")
    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(9)]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b", "c"])})
    Dataset.from_dict({"image": images, "label": [i % 3 for i in range(9)]}, features=features).save_to_disk(
        tmp_path / "images"
    )
    out = tmp_path / "eval"
    argv = [str(tmp_path / "vit"), "--suites", "image", "--image-data", str(tmp_path / "images")]
    assert main([*argv, "--output-dir", str(out), "--no-progress"]) == 0
    image = json.loads((out / "results.json").read_text())["suites"]["image"]
    assert image["examples"] == 9 and 0 <= image["top1"] <= image["top3"] == 1.0
    assert np.asarray(image["confusion_matrix"]).shape == (3, 3)
    assert (out / "confusion_matrix.png").stat().st_size > 0


def test_bad_input_gets_a_clear_error(lm_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(lm_dir), "--suites", "hellaswagg"])
    assert (
        "unknown suite 'hellaswagg'; valid choices: lm-eval, standard, perplexity" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main([str(lm_dir), "--suites", "image"])
    assert "needs --image-data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(lm_dir), "--limit", "-3"])
    assert "positive" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "--suites", "perplexity"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main([str(tmp_path), "--suites", "perplexity"]) == 2
    assert "holds no model" in capsys.readouterr().err
