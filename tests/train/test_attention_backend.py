"""`model.attn_implementation`: "flex_attention" is a recipe choice, and "auto" (the default) trains packed
LM blocks on CUDA without a dense L×L mask."""

import pytest

from plait.train import attention_backend
from plait.train.recipe import RecipeError, load_recipe


def test_flex_attention_is_a_recipe_choice_and_bad_values_name_the_choices():
    assert load_recipe("tiny", ["model.attn_implementation=flex_attention"]).model.attn_implementation == (
        "flex_attention"
    )
    with pytest.raises(RecipeError, match=r"model.attn_implementation='flex'.*'flex_attention'"):
        load_recipe("tiny", ["model.attn_implementation=flex"])


@pytest.mark.parametrize(
    "cuda, flash, precision, packed, expected",
    [
        (False, False, "bf16", True, "sdpa"),  # CPU: SDPA
        (True, False, "bf16", False, "sdpa"),  # unpacked text or not an LM: SDPA's causal flag, no mask
        (True, False, "bf16", True, "flex_attention"),
        (True, True, "bf16", True, "flash_attention_2"),  # flash-attn's varlen kernel when installed
        (True, True, "fp32", True, "flex_attention"),  # flash-attn has no fp32 kernel
    ],
)
def test_auto_picks_a_path_without_a_dense_mask_for_packed_training_on_cuda(
    monkeypatch, cuda, flash, precision, packed, expected
):
    monkeypatch.setattr(attention_backend.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(attention_backend, "is_flash_attn_2_available", lambda: flash)
    recipe = load_recipe("tiny", [f"train.precision={precision}"])
    assert recipe.model.attn_implementation == "auto"
    assert attention_backend.attn_implementation(recipe, packed) == expected
    pinned = load_recipe("tiny", ["model.attn_implementation=sdpa"])
    assert attention_backend.attn_implementation(pinned, packed) == "sdpa"
