"""The `finetune:` recipe path: validation, a Plait LM fine-tuned with S-KAN through the trainer (phases,
checkpoints, exact resume, pruned adapter saved), and the real MiniLM on SST-2 with KappaTune."""

import json

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

from plait.eval.data_cache import path as data_path
from plait.modeling import PlaitConfig, PlaitForCausalLM
from plait.modeling.adapters import KANConfig, SKANPhi, kan_modules, load_kan_adapter
from plait.train.recipe import RecipeError, load_recipe, recipe_from_dict
from plait.train.tokenizer import train_bpe_tokenizer
from plait.train.trainer import PlaitTrainer, losses, run

TEXT = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(60)]


@pytest.fixture(scope="module")
def pretrained_lm(tmp_path_factory):
    """A tiny Plait LM with its tokenizer in a directory, as `make demo` leaves one."""
    out = tmp_path_factory.mktemp("base")
    tok = train_bpe_tokenizer(iter(TEXT), vocab_size=300, model_max_length=64)
    config = PlaitConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    PlaitForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    corpus = out / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in TEXT))
    return out, corpus


def _lm_recipe(base, corpus, out, steps, method="kan_skan"):
    return recipe_from_dict(
        {
            "model": {"pretrained": str(base)},
            "data": {"source": "files", "paths": [str(corpus)], "seq_len": 32},
            "optim": {"lr": 1e-2, "weight_decay": 0.0, "schedule": "constant"},
            "train": {"output_dir": str(out), "max_steps": steps, "micro_batch_size": 4, "precision": "fp32"},
            "checkpoint": {"every": 2, "keep_last": 3},
            "logging": {"every": 1, "progress_bar": False},
            "finetune": {"method": method, "r": 2, "alpha": 4, "target_modules": ["q_proj", "down_proj"]},
        }
    )


class _StepCounter(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True


def test_finetune_recipe_validation():
    base = {"model": {"pretrained": "somewhere"}}
    with pytest.raises(RecipeError, match="needs model.pretrained"):
        recipe_from_dict({"finetune": {"method": "lora"}})
    with pytest.raises(RecipeError, match="finetune.method='qlora' is not valid"):
        recipe_from_dict({**base, "finetune": {"method": "qlora"}})
    with pytest.raises(RecipeError, match="exactly one budget"):
        recipe_from_dict({**base, "finetune": {"method": "kappatune"}})
    with pytest.raises(RecipeError, match="finetune.kappa_fraction=2.0 is out of range"):
        recipe_from_dict({**base, "finetune": {"method": "kappatune", "kappa_fraction": 2.0}})
    with pytest.raises(RecipeError, match="finetune.r=0 is out of range"):
        recipe_from_dict({**base, "finetune": {"method": "lora", "r": 0}})
    with pytest.raises(RecipeError, match="skan_families"):
        recipe_from_dict({**base, "finetune": {"method": "kan_skan", "skan_families": ["fourier"]}})
    with pytest.raises(
        RecipeError, match=r"eval.held_out_fraction=1.0 is out of range; expected a number in \(0, 1\)"
    ):
        load_recipe("finetune-minilm-sst2", ["eval.held_out_fraction=1.0"])
    with pytest.raises(RecipeError, match="finetune.task='causal_lm' does not fit model.arch='plait-vit'"):
        load_recipe("finetune-vit-digits", ["finetune.task=causal_lm"])
    for name in ("finetune-lm-nera", "finetune-lm-kappatune", "finetune-minilm-sst2", "finetune-vit-digits"):
        assert load_recipe(name).finetune.method is not None


def test_skan_finetune_through_trainer_resumes_exactly_and_saves_the_pruned_adapter(pretrained_lm, tmp_path):
    base, corpus = pretrained_lm
    straight = run(_lm_recipe(base, corpus, tmp_path / "straight", steps=6))
    first = run(_lm_recipe(base, corpus, tmp_path / "resumed", steps=6), callbacks=[_StopAt(4)])
    assert first.final_dir is None and (tmp_path / "resumed" / "checkpoint-4").is_dir()
    steps_run = _StepCounter()
    resumed = run(
        _lm_recipe(base, corpus, tmp_path / "resumed", steps=6), callbacks=[steps_run]
    )  # from ckpt-4
    assert steps_run.steps == [5, 6]  # only the remaining steps ran
    expected, got = losses(straight.log_history), losses(resumed.log_history)
    assert sorted(got) == list(range(1, 7))
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-5)
    assert expected[6] < expected[1]

    final = resumed.final_dir
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["kan"] == "skan" and config["skan_pruned"] is True  # phase 3 ran before the save
    saved = load_file(final / "adapter_model.safetensors")
    assert all("lora_" in k for k in saved) and any(k.endswith("lora_kan.family") for k in saved)
    model = load_kan_adapter(AutoModelForCausalLM.from_pretrained(base), final)
    assert all(isinstance(p, SKANPhi) and p.pruned for p in kan_modules(model))
    trained = resumed.trainer.model.eval()
    ids = torch.randint(0, 300, (1, 16))
    torch.testing.assert_close(model(ids).logits, trained(ids).logits)


def test_kappatune_on_minilm_sst2_trains_only_the_lowest_kappa_tensors(tmp_path):
    recipe = load_recipe(
        "finetune-minilm-sst2",
        [
            f"train.output_dir={tmp_path}",
            "finetune.method=kappatune",
            "finetune.kappa_count=2",
            "finetune.kappa_max_dim=384",  # no SVD of the FFN and embedding matrices: faster
            "data.max_documents=48",
            "eval.every=2",
            "train.max_steps=3",
            "optim.warmup_steps=0",
            "optim.lr=1e-3",
            "logging.progress_bar=false",
            "checkpoint.every=0",
            "checkpoint.save_final=false",  # the trained model is compared in memory
        ],
    )
    result = run(recipe)
    held_out = json.loads((tmp_path / "held_out.json").read_text())  # one split: 30% carved off, recorded
    assert held_out["held_out"] == "carved" and held_out["documents"] == len(held_out["indices"]) == 14
    assert len(result.trainer.train_dataset) == 48 - 14
    evaluated = {e["step"]: e["eval_accuracy"] for e in result.log_history if "eval_accuracy" in e}
    assert evaluated.keys() == {2, 3}  # during (eval.every) and after training
    assert all(0 <= a <= 1 and round(a * 14) == a * 14 for a in evaluated.values())
    # throughput counts the tokens that ran: batches padded to their longest sentence, under data.seq_len
    logged = [e for e in result.log_history if "tokens_per_s" in e]
    assert logged and all(e["tokens_per_s"] / e["samples_per_s"] < 64 for e in logged)
    kappa = json.loads((tmp_path / "kappa.json").read_text())
    (by_weights,) = kappa.values()
    base = AutoModelForSequenceClassification.from_pretrained(str(data_path("minilm-l6")), num_labels=2)
    assert "bert.embeddings.word_embeddings.weight" not in by_weights  # above kappa_max_dim: no SVD
    eligible = {n: k for n, k in by_weights.items() if not n.startswith("classifier")}
    lowest = sorted(eligible, key=lambda n: (eligible[n], n))[:2]
    before, after = dict(base.named_parameters()), dict(result.trainer.model.named_parameters())
    changed = {n for n in after if not n.startswith("classifier") and not torch.equal(after[n], before[n])}
    assert changed == set(lowest)


def test_kan_knots_scales_and_family_weights_are_not_decayed(pretrained_lm):
    base, _ = pretrained_lm
    model = AutoModelForCausalLM.from_pretrained(base)
    model = get_peft_model(model, KANConfig(kan="skan", r=2, target_modules=["q_proj"]))
    model.add_adapter("nera", KANConfig(kan="nera", r=2, target_modules=["q_proj"]))
    decayed = PlaitTrainer.get_decay_parameter_names(None, model)
    assert any(n.endswith("lora_kan.default.coeff") for n in decayed)
    assert any(n.endswith("lora_kan.nera.coeff") for n in decayed)
    assert not any(n.endswith((".knots", ".logits", ".scale")) for n in decayed)


def test_image_classification_with_lora_trains_and_saves_a_loadable_adapter(tmp_path):
    import numpy as np
    from datasets import Dataset
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    base = tmp_path / "vit"  # a pretrained 3-class ViT, moved to a 4-class task (a new head)
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(base)
    ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5], image_std=[0.5]).save_pretrained(
        base
    )
    rng = np.random.default_rng(0)
    labels = [i % 4 for i in range(32)]  # the class is the brightness of the image
    images = [Image.fromarray((rng.random((20, 20)) * 40 + 60 * y).astype("uint8")) for y in labels]
    Dataset.from_dict({"image": images, "label": labels}).save_to_disk(tmp_path / "data")
    recipe = recipe_from_dict(
        {
            "model": {"pretrained": str(base)},
            "data": {"source": "disk", "paths": [str(tmp_path / "data")]},
            "optim": {"lr": 1e-2, "weight_decay": 0.0, "schedule": "constant"},
            "train": {
                "output_dir": str(tmp_path / "out"),
                "max_steps": 8,
                "micro_batch_size": 8,
                "precision": "fp32",
            },
            "checkpoint": {"every": 0},
            "logging": {"every": 1, "progress_bar": False},
            "finetune": {
                "method": "lora",
                "task": "image_classification",
                "target_modules": ["q_proj", "v_proj"],
                "modules_to_save": ["classifier"],
                "r": 4,
            },
        }
    )
    result = run(recipe)
    curve = losses(result.log_history)
    assert curve[8] < curve[1]
    model = PeftModel.from_pretrained(
        AutoModelForImageClassification.from_pretrained(base, num_labels=4, ignore_mismatched_sizes=True),
        result.final_dir,
    )
    pixels = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(
        model(pixel_values=pixels).logits, result.trainer.model.eval()(pixel_values=pixels).logits
    )


@pytest.mark.parametrize("method", ["lora", "kan_nera"])
def test_adapters_save_the_batch_norm_statistics_they_trained_with(method, tmp_path):
    """A ViT with the convolutional stem: training updates its BatchNorm statistics, so the saved adapter
    carries them and the reloaded model computes exactly the trained one."""
    from peft import PeftModel

    from plait.modeling import PlaitViTConfig, PlaitViTForImageClassification
    from plait.modeling.adapters import load_kan_adapter
    from plait.train.finetune import apply_method
    from plait.train.recipe import FinetuneRecipe

    config = PlaitViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=16,
        patch_size=4,
        num_channels=1,
        num_labels=3,
        patch_embedding="conv_stem",
    )
    torch.manual_seed(0)
    PlaitViTForImageClassification(config).save_pretrained(tmp_path / "base")
    base = PlaitViTForImageClassification.from_pretrained(tmp_path / "base")
    ft = FinetuneRecipe(
        method=method, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"], r=2
    )
    model = apply_method(base, ft).model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):  # shifted inputs: the BatchNorm running statistics move away from their init
        loss = model(pixel_values=torch.randn(8, 1, 16, 16) * 3 + 2, labels=torch.randint(0, 3, (8,))).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(tmp_path / "adapter")
    fresh = PlaitViTForImageClassification.from_pretrained(tmp_path / "base")
    load = load_kan_adapter if method == "kan_nera" else PeftModel.from_pretrained
    reloaded = load(fresh, tmp_path / "adapter").eval()
    pixels = torch.randn(2, 1, 16, 16) * 3 + 2
    torch.testing.assert_close(reloaded(pixel_values=pixels).logits, model.eval()(pixel_values=pixels).logits)


def test_held_out_documents_are_the_datas_own_split_or_a_recorded_carve_off(tmp_path):
    from datasets import Dataset, DatasetDict

    from plait.train.held_out import split_held_out

    docs = Dataset.from_dict({"text": [f"doc {i}" for i in range(20)], "label": [i % 2 for i in range(20)]})
    DatasetDict(train=docs, validation=docs.select(range(5))).save_to_disk(tmp_path / "two")
    docs.save_to_disk(tmp_path / "one")

    def recipe(folder, *overrides):
        sets = [
            f"data.paths=[{tmp_path / folder}]",
            "data.split=train",
            "data.max_documents=null",
            *overrides,
        ]
        return load_recipe("finetune-minilm-sst2", sets)

    train, held, record = split_held_out(recipe("two"), docs)
    assert (len(train), len(held), record) == (
        20,
        5,
        {"held_out": "split", "split": "validation", "documents": 5},
    )
    train, held, record = split_held_out(recipe("one", "eval.held_out_fraction=0.25", "train.seed=3"), docs)
    assert record["held_out"] == "carved" and len(held) == record["documents"] == 5 and len(train) == 15
    assert sorted([*held["text"], *train["text"]]) == sorted(docs["text"])  # a partition: never trained on
    assert list(held["text"]) == [f"doc {i}" for i in record["indices"]]
    again = split_held_out(recipe("one", "eval.held_out_fraction=0.25", "train.seed=3"), docs)[2]
    assert again == record  # deterministic: a resume holds out the same documents
    with pytest.raises(RecipeError, match="leaves 0 held out"):
        split_held_out(recipe("one", "eval.held_out_fraction=0.01"), docs)
