"""A training run and `generate` make no deprecated call into transformers from Plait's code, on whichever
supported transformers version is installed (a renamed argument is the usual first sign of the next break)."""

import logging
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

import plait.modeling  # noqa: F401  (registers Plait with the Auto classes)
from plait.train.recipe import load_recipe
from plait.train.trainer import run


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_log():
    """transformers' own deprecation notices go through its logger (`warning_once`), not `warnings`."""
    logging.Logger.warning_once.cache_clear()  # notices already given once in this process count again
    handler, logger = Records(), logging.getLogger("transformers")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


@pytest.mark.parametrize("layer_types", [["full_attention"] * 2, ["pararnn_gru", "full_attention"]])
def test_training_and_generate_make_no_deprecated_calls(tmp_path, transformers_log, layer_types):
    recipe = load_recipe(
        "tiny",
        [
            f"train.output_dir={tmp_path}",
            "train.max_steps=3",
            "data.max_documents=6",
            "data.seq_len=32",
            "checkpoint.every=2",
            "logging.every=1",
            "logging.progress_bar=false",
            f"model.config.layer_types={layer_types}",
        ],
    )
    with warnings.catch_warnings():
        # a warning attributed to Plait's code (transformers' deprecations use stacklevel=2) fails the test
        warnings.filterwarnings("error", module=r"plait(\.|$)")
        run(recipe)
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
        prompt = torch.randint(0, model.config.vocab_size, (2, 4))
        model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
        model.generate(
            prompt, max_new_tokens=4, do_sample=False, pad_token_id=0, cache_implementation="static"
        )
    assert not [m for m in transformers_log if "deprecat" in m.lower()], transformers_log
