"""lm-eval through Plait: the offline task YAMLs are lm-eval's own definitions on the cached data, a Llama
model and its Plait conversion score identically, and a model that knows the answers scores 100%."""

from pathlib import Path

import lm_eval
import pytest
import torch
from lm_eval.tasks._yaml_loader import load_yaml
from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from plait.eval import task_docs
from plait.eval.harness import LOCAL_TASKS, LOCAL_TASKS_DIR, lm_eval_suite, task_manager
from plait.modeling.convert_llama import plait_from_llama

LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"
# lm-eval's own YAML per local task.
UPSTREAM = {
    "hellaswag": "hellaswag/hellaswag.yaml",
    "lambada_openai": "lambada/lambada_openai.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "piqa": "piqa/piqa.yaml",
    "winogrande": "winogrande/default.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "sciq": "sciq/sciq.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "copa": "super_glue/copa/default.yaml",
    "sst2": "glue/sst2/default.yaml",
    "rte": "glue/rte/default.yaml",
    "mrpc": "glue/mrpc/default.yaml",
    "mmlu_abstract_algebra": "mmlu/default/mmlu_abstract_algebra.yaml",
    "mmlu_world_religions": "mmlu/default/mmlu_world_religions.yaml",
}
LIMIT = 3


@pytest.fixture(scope="module")
def manager():
    return task_manager()


def upstream_task(name: str, manager):
    """lm-eval's own definition of `name`, reading the same cached documents as Plait's YAML (the data set
    and the splits the cache lacks are the only changes)."""
    config = load_yaml(LM_EVAL_TASKS / UPSTREAM[name])
    if name.startswith("mmlu_"):
        subject = config.pop("dataset_name")
        config["custom_dataset"] = lambda **_: task_docs.mmlu(subject)
    else:
        config["custom_dataset"] = getattr(task_docs, name)
    config.pop("dataset_path", None)
    config.pop("dataset_name", None)
    config.pop("tag", None)
    cached = config["custom_dataset"]()
    for split in ("training_split", "validation_split", "test_split"):
        if config.get(split) not in (None, *cached):  # sciq: lm-eval scores test, the cache has validation
            config[split] = None
    config["task"] = f"upstream_{name}"
    return manager.load([config])["tasks"][f"upstream_{name}"]


@pytest.mark.parametrize("name", list(UPSTREAM))
def test_local_yaml_gives_lm_evals_own_requests(name, manager):
    ours = manager.load([name])["tasks"][name]
    theirs = upstream_task(name, manager)
    for task in (ours, theirs):
        task.build_all_requests(limit=LIMIT, rank=0, world_size=1)
    assert len(ours.instances) >= LIMIT
    assert [i.args for i in ours.instances] == [i.args for i in theirs.instances]
    assert [i.doc for i in ours.instances] == [i.doc for i in theirs.instances]
    assert ours.OUTPUT_TYPE == theirs.OUTPUT_TYPE
    assert [m["metric"] for m in ours.config.metric_list] == [m["metric"] for m in theirs.config.metric_list]


def test_local_mmlu_has_lm_evals_subjects(manager):
    upstream = {p.stem for p in (LM_EVAL_TASKS / "mmlu" / "default").glob("mmlu_*.yaml")}
    ours = {p.stem for p in (LOCAL_TASKS_DIR / "mmlu").glob("mmlu_*.yaml")}
    assert ours == upstream and len(ours) == 57
    assert set(LOCAL_TASKS) <= set(manager.all_tasks)


def test_unknown_task_names_the_choices():
    with pytest.raises(ValueError, match="hellaswag"):
        lm_eval_suite(None, None, ["hellaswagg"])


def test_llama_and_its_plait_conversion_score_identically(byte_tokenizer):
    config = LlamaConfig(
        vocab_size=len(byte_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    llama = LlamaForCausalLM(config).eval()
    plait = plait_from_llama(llama).eval()
    tasks = [t for t in LOCAL_TASKS if t != "mmlu"] + ["mmlu_abstract_algebra"]
    kwargs = dict(limit=2, batch_size=4, bootstrap_iters=0, samples=True)
    a = lm_eval_suite(llama, byte_tokenizer, tasks, **kwargs)
    b = lm_eval_suite(plait, byte_tokenizer, tasks, **kwargs)
    assert a["tasks"].keys() == b["tasks"].keys() == set(tasks)
    for task in tasks:
        for doc_a, doc_b in zip(a["samples"][task], b["samples"][task], strict=True):
            assert doc_a["arguments"] == doc_b["arguments"]
            ll_a = torch.tensor([r[0][0] for r in doc_a["resps"]], dtype=torch.float64)
            ll_b = torch.tensor([r[0][0] for r in doc_b["resps"]], dtype=torch.float64)
            torch.testing.assert_close(ll_a, ll_b, rtol=1e-5, atol=1e-4)
        assert a["tasks"][task] == pytest.approx(b["tasks"][task], rel=1e-5)


class _AnswerKeyConfig(PretrainedConfig):
    model_type = "answer_key"


class AnswerKeyLM(PreTrainedModel):
    """A causal LM that has memorised the gold sequences (context + correct continuation): after a prefix of
    one, it puts all probability on the tokens that continue one; elsewhere it is uniform."""

    config_class = _AnswerKeyConfig

    def __init__(self, config, gold_sequences: list[list[int]]):
        super().__init__(config)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.trie: dict = {}
        for sequence in gold_sequences:
            node = self.trie
            for token in sequence:
                node = node.setdefault(token, {})

    def forward(self, input_ids, attention_mask=None, **kwargs):
        logits = torch.full((*input_ids.shape, self.config.vocab_size), -30.0)
        for row, ids in enumerate(input_ids.tolist()):
            node = self.trie
            for position, token in enumerate(ids):
                node = node.get(token) if node is not None else None
                if node is None:
                    logits[row, position:] = 0.0  # off every gold sequence: uniform from here on
                    break
                logits[row, position, list(node)] = 0.0
        return CausalLMOutput(logits=logits)


def test_model_that_knows_the_answers_scores_100_percent(byte_tokenizer, manager):
    tasks = ["hellaswag", "lambada_openai", "arc_challenge", "winogrande", "copa", "boolq", "mmlu_anatomy"]
    gold = []
    for name, task in manager.load(tasks)["tasks"].items():
        task.build_all_requests(limit=LIMIT, rank=0, world_size=1)
        for instance in task.instances:
            if name == "winogrande":  # partial scoring: the choices are contexts, doc_to_text gives the gold
                right = instance.idx == task.doc_to_text(instance.doc)
            else:
                right = instance.request_type == "loglikelihood" and (
                    task.OUTPUT_TYPE == "loglikelihood" or instance.idx == task.doc_to_target(instance.doc)
                )
            if right:
                context, continuation = instance.args
                gold.append(byte_tokenizer(context + continuation, add_special_tokens=False)["input_ids"])
    config = _AnswerKeyConfig(vocab_size=len(byte_tokenizer), max_position_embeddings=4096)
    model = AnswerKeyLM(config, gold).eval()
    results = lm_eval_suite(model, byte_tokenizer, tasks, limit=LIMIT, batch_size=4, bootstrap_iters=0)
    for name in tasks:
        assert results["tasks"][name]["acc"] == 1.0, name
        assert results["tasks"][name]["n_samples"] == LIMIT
