"""Chat SFT: conversation loaders, chat templates (own / installed ChatML), assistant-only labels with the
end-of-turn token, training a tiny model until it stops, added-token rows through LoRA and merging."""
import hashlib
import json

import pytest
import torch

from conftest import add_tiny_model_config, build_tiny_model
from ftcompare import chat, config, data
from ftcompare.errors import FtcError


# --------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------
def _turn(sender, *texts):
    return [{"text": t, "sender": sender, "timestamp": "2018-01-01T00:00:00Z"} for t in texts]


def test_chitchat_speakers_alternate_user_assistant():
    raw = {
        "c1": {"messages": [_turn("a", "Hello", "How are you?"), _turn("b", "good"), _turn("a", " "),
                            _turn("a", "same here"), _turn("b", "", "bye")]},
        "mono": {"messages": [_turn("a", "anyone there?")]},
    }
    convs = data.chitchat_conversations(raw)
    assert [c["id"] for c in convs] == ["c1"]  # a monologue is no conversation
    assert convs[0]["messages"] == [
        {"role": "user", "content": "Hello\nHow are you?"},
        {"role": "assistant", "content": "good"},
        {"role": "user", "content": "same here"},        # the empty turn is skipped
        {"role": "assistant", "content": "bye"},
    ]


def test_packaged_chitchat_is_split_by_conversation():
    cfg = config.load("data", "chitchat")
    splits = {w: data.chat_split(cfg, w) for w in ("train", "val", "eval")}
    ids = {w: {c["id"] for c in convs} for w, convs in splits.items()}
    assert not ids["train"] & ids["eval"] and not ids["train"] & ids["val"] and not ids["val"] & ids["eval"]
    # every conversation with two or more non-empty turns, once (4,018 have two speakers; one has only empty
    # messages from one of them)
    assert sum(map(len, ids.values())) == len(data.load_chitchat_packaged(cfg)) == 4017
    for convs in splits.values():
        for c in convs:
            assert 2 <= len(c["messages"]) <= cfg.max_messages and c["messages"][-1]["role"] == "assistant"
    # pinned (the same in every process and Python: an order from the salted hash() would not be)
    held_out = [str(c["id"]) for c in splits["eval"]]
    assert len(held_out) == 788 and held_out[:3] == ["c0d2b9d3-d4eb-49c7-8498-cba450559f0d",
                                                     "adb98803-5c22-444b-95b2-b5e578dd168c",
                                                     "9e619e45-1c5c-4e6b-a163-d78c5e0724fd"]
    assert hashlib.sha256("\n".join(held_out).encode()).hexdigest() == \
        "6d39bb9fd4391b3a8046ce9a61a70716dd56146e0c1a2e3e6e9f189ded2f818f"
    assert len(data.load_split(cfg, "val")) == cfg.n_val


def test_sharegpt_maps_roles_and_names_the_row_of_an_unknown_one(monkeypatch):
    cfg = config.DataConfig(name="sg", loader="sharegpt-hub", format="chat", hub_id="someone/sharegpt")
    rows = [{"conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "hi"},
                               {"from": "gpt", "value": "hello"}]},
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "beep"}]}]
    monkeypatch.setattr(data, "_hub_rows", lambda c: rows[:1])
    assert data.load_sharegpt_hub(cfg)[0]["messages"] == [
        {"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}]
    monkeypatch.setattr(data, "_hub_rows", lambda c: rows)
    with pytest.raises(FtcError, match=r"someone/sharegpt row 1, turn 1: unknown role 'robot'"):
        data.load_sharegpt_hub(cfg)


def test_messages_loader_rejects_a_bad_role(monkeypatch):
    cfg = config.DataConfig(name="m", loader="messages-hub", format="chat", hub_id="x/y")
    monkeypatch.setattr(data, "_hub_rows", lambda c: [{"messages": [{"role": "user", "content": "a"}]},
                                                      {"messages": [{"role": "bot", "content": "b"}]}])
    with pytest.raises(FtcError, match=r"x/y row 1, message 0"):
        data.load_messages_hub(cfg)


# --------------------------------------------------------------------------------------------------
# Templates and labels
# --------------------------------------------------------------------------------------------------
def _embedded_tokenizer():
    from ftcompare.modeling import load_tokenizer

    return load_tokenizer(config.load("models", "135m"), chat=True)


def _check_mask(tok, messages):
    eot = chat.end_of_turn(tok)
    ids, labels = chat.tokenize_conversation(tok, messages)
    assert len(ids) == len(labels)
    # the tokens in the loss are exactly each assistant message followed by its end-of-turn token
    trained = tok.decode([i for i, lab in zip(ids, labels) if lab != -100])
    assert trained == "".join(m["content"] + eot for m in messages if m["role"] == "assistant")
    assert all(lab in (-100, i) for i, lab in zip(ids, labels))
    # and the token sequence is the rendered template, nothing lost or added
    assert tok.decode(ids) == chat.render(tok, messages)
    eot_id = tok.convert_tokens_to_ids(eot)
    n_assistant = sum(m["role"] == "assistant" for m in messages)
    assert sum(1 for i, lab in zip(ids, labels) if i == eot_id and lab != -100) == n_assistant
    assert sum(1 for i in ids if i == eot_id) > n_assistant  # the user/system turns' end-of-turn is not trained


def test_label_mask_matches_the_rendered_template_embedded_model():
    tok = _embedded_tokenizer()
    assert chat.end_of_turn(tok) == "<|im_end|>"
    assert "You are a helpful AI assistant named SmolLM" in chat.render(tok, [{"role": "user", "content": "x"}])
    convs = data.chat_split(config.load("data", "chitchat"), "train")[:25]
    for c in convs:
        _check_mask(tok, c["messages"])


def test_label_mask_on_the_tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "How are you?"},
            {"role": "assistant", "content": "Fine, thanks.\nAnd you?"}]
    _check_mask(tok, msgs)


def test_chatml_is_installed_on_a_base_tokenizer_and_round_trips(tmp_path):
    from transformers import AutoTokenizer

    base = build_tiny_model(tmp_path / "base", chatml=False)
    tok = AutoTokenizer.from_pretrained(base)
    assert not tok.chat_template and "<|im_start|>" not in tok.get_vocab()
    n = len(tok)
    cfg = config.ModelConfig(alias="b", source="local", path=str(base), lora_target_modules=["q_proj"],
                             chat_template="chatml")
    info = chat.prepare_tokenizer(tok, cfg)
    assert info == {"template_source": "chatml (installed)", "added_tokens": ["<|im_start|>", "<|im_end|>"],
                    "end_of_turn": "<|im_end|>"}
    assert len(tok) == n + 2
    msgs = [{"role": "user", "content": "Is it raining?"}, {"role": "assistant", "content": "No."}]
    text = chat.render(tok, msgs)
    assert text == "<|im_start|>user\nIs it raining?<|im_end|>\n<|im_start|>assistant\nNo.<|im_end|>\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 2 and tok.decode(ids) == text
    _check_mask(tok, msgs)
    # saved and reloaded, the tokenizer keeps template and tokens; preparing again changes nothing
    tok.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert chat.prepare_tokenizer(again, cfg)["added_tokens"] == [] and len(again) == n + 2
    assert again(text, add_special_tokens=False)["input_ids"] == ids
    # a model config asking for the tokenizer's own template, on a tokenizer without one: one clear error
    plain = AutoTokenizer.from_pretrained(base)
    with pytest.raises(FtcError, match="has no chat template.*chat_template: chatml"):
        chat.prepare_tokenizer(plain, config.ModelConfig(alias="b", source="local", path=str(base),
                                                         lora_target_modules=["q_proj"]))


def test_long_conversations_lose_whole_exchanges_never_part_of_a_message(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    long = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "tell me a story " * 10}, {"role": "assistant", "content": "once upon " * 20}]
    short_len = len(chat.tokenize_conversation(tok, long[:2])[0])
    ds, stats = chat.tokenize_chat([{"id": "a", "messages": long}], tok, max_length=short_len)
    assert stats == {"n_conversations": 1, "n_shortened": 1, "n_dropped": 0}
    assert ds["input_ids"][0] == chat.tokenize_conversation(tok, long[:2])[0]
    with pytest.raises(FtcError, match="no conversation fits train.max_length=3"):
        chat.tokenize_chat([{"id": "a", "messages": long}], tok, max_length=3)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
CHAT_TINY = {"data.n_train": 8, "data.n_val": 4, "data.max_messages": 2, "train.max_length": 256,
             "train.per_device_train_batch_size": 8, "train.per_device_eval_batch_size": 8, "train.save_steps": 1000,
             "train.warmup_steps": 0, "train.num_threads": 1}


def _greedy(model, tok, history, max_new_tokens=128):  # references are up to 81 tiny-tokenizer tokens
    prompt = chat.render(tok, history, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=chat.stop_token_ids(tok),
                             pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_a_tiny_model_trained_on_conversations_learns_to_stop(project, tiny_model_dir):
    """Loss on assistant tokens + end-of-turn: after training, greedy replies end with end-of-turn."""
    from transformers import AutoModelForCausalLM

    from ftcompare.train import train

    alias = add_tiny_model_config(project, tiny_model_dir)
    run = config.resolve_run("chat", alias, "full", {**CHAT_TINY, "train.max_steps": 40,
                                                     "method.learning_rate": 5e-3})
    res = train(run)
    tok = __import__("ftcompare.modeling", fromlist=["x"]).load_tokenizer(run.model, str(res.output_dir / "final"),
                                                                          chat=True)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    convs = data.load_split(run.data, "train")
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    after = AutoModelForCausalLM.from_pretrained(res.output_dir / "final").eval()
    stops_before = sum(eot in _greedy(before, tok, c["messages"][:-1]) for c in convs)
    stops_after = sum(eot in _greedy(after, tok, c["messages"][:-1]) for c in convs)
    assert stops_after == len(convs), f"stopped on {stops_after} of {len(convs)} prompts after training"
    assert stops_before < len(convs)
    view = json.loads((res.output_dir / "template_view.json").read_text())
    assert view["end_of_turn"] == "<|im_end|>" and view["template_source"] == "tokenizer"
    trained = "".join(t["text"] for t in view["tokens"] if t["trained"])
    assert trained == "".join(m["content"] + "<|im_end|>" for m in view["messages"] if m["role"] == "assistant")
    assert res.summary["data_format"] == "chat" and res.summary["data_stats"]["train"]["n_conversations"] == 8


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_added_chatml_tokens_are_trained_and_merged(project, tmp_path, method):
    """A base model without ChatML: tokens added, embeddings resized, the new rows trained (LoRA: peft
    trainable_token_indices), and the merged model computes what the adapter computes."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftcompare.merge import merge
    from ftcompare.modeling import align_vocab, load_base, load_tokenizer
    from ftcompare.train import train

    base_dir = build_tiny_model(tmp_path / "base", chatml=False)
    alias = add_tiny_model_config(project, base_dir, alias="tinybase", chat_template="chatml")
    run = config.resolve_run("chat", alias, method, {**CHAT_TINY, "train.max_steps": 2, "method.learning_rate": 1e-2})
    res = train(run)
    tok = load_tokenizer(run.model, str(res.output_dir / "final"), chat=True)
    new_ids = [tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")]
    assert new_ids == [len(tok) - 2, len(tok) - 1]
    final = res.output_dir / "final"
    merged = AutoModelForCausalLM.from_pretrained(merge(run)).eval()
    assert merged.get_input_embeddings().weight.shape[0] == len(tok)
    if method == "full":  # every weight trained: the merged checkpoint is the trained model itself
        assert not (final / "adapter_config.json").exists()
        trained = AutoModelForCausalLM.from_pretrained(final).eval()
    else:
        cfg = json.loads((final / "adapter_config.json").read_text())
        assert cfg["trainable_token_indices"] == {"embed_tokens": new_ids}
        base = load_base(run.model, run.method)
        align_vocab(base, tok)
        trained = PeftModel.from_pretrained(base, str(final)).eval()
    ids = tok(chat.render(tok, [{"role": "user", "content": "hi"}], add_generation_prompt=True),
              add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        a, m = trained(input_ids=ids).logits, merged(input_ids=ids).logits
    assert (a - m).abs().max().item() <= 1e-4
    # the new rows moved away from the rows training started from (grown with the training seed): trained
    fresh = load_base(run.model)
    align_vocab(fresh, tok, run.train.seed)
    moved = (merged.get_input_embeddings().weight[new_ids] - fresh.get_input_embeddings().weight[new_ids]).abs().max()
    assert moved > 1e-4


def test_chat_experiment_config_parses():
    exp = config.load("experiments", "chat")
    assert exp.evaluation.all_tasks() == ["ftc_chitchat", "ftc_chat_gen_greedy", "ftc_chat_gen_sampled"]
    assert config.load("data", exp.data).format == "chat"
    for name in ("smol-smoltalk", "finetome"):
        assert config.load("data", name).format == "chat"
    with pytest.raises(config.ConfigError, match="did you mean 'temperature'"):
        config.from_dict(config.GenerationSettings, {"data": "chitchat", "settings": {"s": {"temperatur": 1}}})
