"""data.py's tokenization on the tiny tokenizer: the prompt/completion boundary (trailing spaces move to the
completion, as lm-eval's HFLM._encode_pair does), loss masks, both formats' dispatch, and the two refusals
(an empty completion; an example longer than train.max_length, never truncated)."""
from __future__ import annotations

import pytest

from ftcompare import data
from ftcompare.config import DataConfig
from ftcompare.errors import FtcError


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_encode_pair_moves_trailing_spaces_to_the_continuation(tok):
    ctx, cont = data.encode_pair(tok, "A man is sitting on a roof.  ", "He starts pulling up roofing.")
    assert ctx == _ids(tok, "A man is sitting on a roof.")
    assert ctx + cont == _ids(tok, "A man is sitting on a roof.  He starts pulling up roofing.")
    ctx, cont = data.encode_pair(tok, "A man", " walks")                  # no trailing space: split as given
    assert ctx == _ids(tok, "A man") and ctx + cont == _ids(tok, "A man walks")


def test_tokenize_completion_masks_the_prompt(tok):
    ex = [{"id": "a", "prompt": "A man is", "completion": " walking."},
          {"id": "b", "prompt": "The cat ", "completion": "sleeps on the mat."}]
    ds = data.tokenize_completion(ex, tok, max_length=64)
    assert len(ds) == 2
    for e, row in zip(ex, ds):
        ctx, cont = data.encode_pair(tok, e["prompt"], e["completion"])
        assert row["input_ids"] == ctx + cont and row["labels"] == [-100] * len(ctx) + cont
    longest = len(ds[1]["input_ids"])                                          # b is the longer one
    assert longest > len(ds[0]["input_ids"])
    assert len(data.tokenize_completion(ex, tok, max_length=longest)) == 2       # max_length itself fits
    with pytest.raises(FtcError, match=rf"^train example 1 \(id b\) has {longest} tokens > train.max_length="
                                       rf"{longest - 1}; raise train.max_length \(examples are never silently "
                                       r"truncated\)$"):
        data.tokenize_completion(ex, tok, max_length=longest - 1, where="train")
    with pytest.raises(FtcError, match=r"^data example 0 \(id e\): the completion tokenizes to nothing$"):
        data.tokenize_completion([{"id": "e", "prompt": "A man", "completion": ""}], tok, max_length=64)


def test_tokenize_dispatches_on_the_format(tok):
    ex = [{"id": "a", "prompt": "A man is", "completion": " walking."}]
    ds, stats = data.tokenize(ex, tok, DataConfig("d", "hellaswag-packaged"), 64, "train")
    assert stats == {"n_examples": 1} and ds["input_ids"] == data.tokenize_completion(ex, tok, 64)["input_ids"]
    chat = [{"id": "c", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    from ftcompare.chat import tokenize_chat

    got = data.tokenize(chat, tok, DataConfig("d", "chitchat-packaged", format="chat"), 64, "train")
    want = tokenize_chat(chat, tok, 64, "train")
    assert got[0]["input_ids"] == want[0]["input_ids"] and got[0]["labels"] == want[0]["labels"]
