"""The demo's handlers without a browser (tiny models), the politeness scorer, and the demo command's bad input."""
from __future__ import annotations

import pytest

from ftcompare import config, politeness
from ftcompare.demo import app
from ftcompare.demo.models import ModelPool
from tiny_smol import BASE_135M, build_tiny_smol

needs_135m = pytest.mark.skipif(not (BASE_135M / "config.json").is_file(), reason="needs models/base/135m (make setup)")

POLITE = "Hi Anna,\nCould you please send me the report by Friday? Thanks a lot for your help!\nBest, Tom"
RUDE = "Send me the report. Why is it late AGAIN? This is unacceptable!!"


def test_politeness_orders_polite_neutral_rude_and_names_its_cues():
    p, n, r = politeness.score(POLITE), politeness.score("The meeting is at 3pm in room 2."), politeness.score(RUDE)
    assert p.score > n.score == 50.0 > r.score
    assert {c.strategy for c in p.cues} == {"greeting", "counterfactual modal", "please (inside a sentence)", "gratitude"}
    assert {c.strategy for c in r.cues} >= {"direct imperative", "direct question", "demands (extension)",
                                           "shouting (extension)"}
    assert r.raw == sum(c.weight for c in r.cues)  # the score is exactly the listed cues


def test_politeness_counts_a_strategy_at_most_twice_and_please_depends_on_position():
    many = politeness.score("Thanks! Thank you. Thanks again, I appreciate it.")
    assert [c.strategy for c in many.cues] == ["gratitude", "gratitude"]
    assert [c.strategy for c in politeness.score("Please call me.").cues] == ["please (sentence start)"]
    assert [c.strategy for c in politeness.score("Could you call me back, please.").cues] == [
        "counterfactual modal", "please (inside a sentence)"]


def test_sentiment_is_vader():
    assert app.sentiment(POLITE)["compound"] > 0.5 > -0.3 > app.sentiment(RUDE)["compound"]


def test_diff_marks_removed_and_added_words_and_escapes_html():
    d = app.diff_html("send <b>me</b> the report", "please send <b>me</b> the report")
    assert "<ins" in d and "please" in d and "<del" not in d and "&lt;b&gt;" in d


def test_email_limits_are_messages():
    with pytest.raises(app.FtcError, match="the email is empty"):
        app.check_email("  \n", 8000)
    with pytest.raises(app.FtcError, match="20,000 characters, more than the limit of 8,000"):
        app.check_email("x" * 20_000, 8000)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    d = tmp_path_factory.mktemp("pool")
    return ModelPool({"base": build_tiny_smol(d / "b", 0, init_range=0.2), "full": build_tiny_smol(d / "f", 1, init_range=0.2)}, max_loaded=2)


@needs_135m
def test_chat_turn_streams_both_sides(pool):
    steps = list(app.chat_turn(pool, "Hello", [], [], "full", 0.0, 1.0, 12, 1.0))
    base, var, box, status = steps[-1]
    assert status.startswith("done: base vs full, greedy") and box == ""
    assert base[-1]["role"] == var[-1]["role"] == "assistant" and base[-1]["content"] and var[-1]["content"]
    assert base[-1]["content"] != var[-1]["content"]  # two different models answered
    assert len(steps) > 3  # streamed: intermediate updates before the last


@needs_135m
@pytest.mark.parametrize("message,variant,expected", [
    ("   ", "full", "type a message first"),
    ("hi", "lora", "no fine-tuned variant 'lora' here"),
    ("word " * 1200, "full", "more than the 1024-token context of 'base'"),
])
def test_chat_bad_input_is_a_message(pool, message, variant, expected):
    *_, status = list(app.chat_turn(pool, message, [], [], variant, 0.7, 0.9, 16, 1.1))[-1]
    assert expected in status and status.startswith("⚠️")


@needs_135m
def test_inspect_bad_input_is_a_message(pool):
    assert "give both a prompt and a reply" in app.inspect(pool, "", "x", "full", 0, 0)[2]
    assert "layer must be 0..1 and head 0..3" in app.inspect(pool, "q", "a", "full", 5, 0)[2]
    html, fig, status = app.inspect(pool, "word " * 1200, "a", "full", 0, 0)
    assert "more than the 1024-token context" in status and fig is None


@needs_135m
def test_inspect_losses_are_the_models_own(pool):
    """The coloured losses are the models' real next-token losses on the reply (checked against a forward pass)."""
    import torch

    model, tok = pool.get("full")
    ids, in_reply = app._conversation_ids(tok, "What is 2+2?", "4")
    losses, att = app.token_losses(model, ids)
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(model(torch.tensor([ids])).logits[0, :-1], torch.tensor(ids[1:]),
                                                reduction="none")
    assert losses[0] is None and torch.allclose(torch.tensor(losses[1:]), ref, atol=1e-5)
    assert len(att) == 2 and att[0].shape == (4, len(ids), len(ids))
    assert sum(in_reply) >= 2  # the reply and its end-of-turn token


def test_pool_keeps_at_most_max_loaded(tmp_path, monkeypatch):
    p = ModelPool({"a": tmp_path, "b": tmp_path, "c": tmp_path}, max_loaded=2)
    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: object())

    class Fake:
        def eval(self):
            return self

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Fake())
    for name in ("a", "b", "a", "c"):
        p.get(name)
    assert list(p._loaded) == ["a", "c"]
    with pytest.raises(app.FtcError, match="no model 'd' here"):
        p.get("d")


def test_demo_command_bad_input_is_one_line(capsys):
    from ftcompare.demo.__main__ import main

    assert main(["--model", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown model alias 'nope'")


def test_demo_config_parses():
    cfg = config.load_file("demo", config.DemoConfig)
    assert cfg.host == "127.0.0.1" and cfg.max_email_chars < 20_000
