"""Chat templates and assistant-only labels: conversations ({role, content} messages) -> tokens.

- The template: the tokenizer's own (model config `chat_template: tokenizer`), or ChatML installed on a
  tokenizer without one (`chat_template: chatml`): its special tokens `<|im_start|>`/`<|im_end|>` are added
  when the vocabulary lacks them (the model's embeddings are then resized: modeling.align_vocab, and the new
  rows are trained: all weights for full fine-tuning, peft `trainable_token_indices` for LoRA/QLoRA).
- The end-of-turn token is read from the template itself (what follows an assistant message), so that
  generation stops on it and training puts it in the labels.
- Labels: -100 everywhere except the assistant messages' tokens *and* their end-of-turn token (so the model
  learns to stop). Spans come from rendering the conversation's prefixes (the text before an assistant
  message, with the generation prompt, and the text up to its end), mapped to tokens by character offsets.
"""
from __future__ import annotations

from .errors import FtcError

# ChatML, as SmolLM2/Qwen write it, without a default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]
ROLES = ("system", "user", "assistant")
_SENTINEL = "\u2063ftcompare\u2063"   # a reply text no real conversation contains


def prepare_tokenizer(tok, model_cfg) -> dict:
    """Give `tok` the chat template the model config asks for (in place). Returns what was done:
    {"template_source", "added_tokens", "end_of_turn"}. Idempotent (a saved, prepared tokenizer stays as is)."""
    added: list[str] = []
    if model_cfg.chat_template == "tokenizer":
        if not getattr(tok, "chat_template", None):
            raise FtcError(f"model '{model_cfg.alias}': its tokenizer has no chat template; set "
                           f"`chat_template: chatml` in configs/models/{model_cfg.alias}.yaml to install ChatML")
        source = "tokenizer"
    else:
        vocab = tok.get_vocab()
        added = [t for t in CHATML_TOKENS if t not in vocab]
        if added:
            tok.add_special_tokens({"additional_special_tokens": added}, replace_extra_special_tokens=False)
        tok.chat_template = CHATML_TEMPLATE
        source = "chatml (installed)"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return {"template_source": source, "added_tokens": added, "end_of_turn": end_of_turn(tok)}


def render(tok, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def end_of_turn(tok) -> str:
    """The special token that closes an assistant message in this template (ChatML: <|im_end|>)."""
    text = render(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}])
    if _SENTINEL not in text:
        raise FtcError("the chat template drops the assistant message's content; it cannot be used for training")
    after = text[text.index(_SENTINEL) + len(_SENTINEL):]
    ids = tok(after, add_special_tokens=False)["input_ids"]
    special = set(tok.all_special_ids)
    for i in ids:
        if i in special:
            return tok.convert_ids_to_tokens(i)
    raise FtcError("the chat template puts no special token after an assistant message: the model could not "
                   "learn to stop; use `chat_template: chatml` in the model config")


def stop_token_ids(tok) -> list[int]:
    """Ids generation stops on: the end-of-turn token, and the tokenizer's EOS if different."""
    ids = [tok.convert_tokens_to_ids(end_of_turn(tok))]
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    return ids


def check_messages(messages, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise FtcError(f"{where}: expected a non-empty list of {{role, content}} messages")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise FtcError(f"{where}, message {j}: expected {{role: {'|'.join(ROLES)}, content: str}}, got {m!r:.120}")


def assistant_spans(tok, messages: list[dict], eot: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """(rendered text, [(start, end)] character spans of each assistant message's content + end-of-turn)."""
    eot = eot or end_of_turn(tok)
    full = render(tok, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tok, messages[:i], add_generation_prompt=True)
        upto = render(tok, messages[:i + 1])
        if not (full.startswith(before) and full.startswith(upto) and upto.startswith(before)):
            raise FtcError("the chat template renders earlier turns differently once later turns are added; "
                           "assistant-only labels cannot be derived from it (use `chat_template: chatml`)")
        end = upto.rfind(eot)
        end = end + len(eot) if end >= len(before) else len(upto)
        spans.append((len(before), end))
    return full, spans


def tokenize_conversation(tok, messages: list[dict], eot: str | None = None) -> tuple[list[int], list[int]]:
    """-> (input_ids, labels): labels = input_ids on assistant tokens (and their end-of-turn), else -100.
    A token is trained when it starts inside an assistant span."""
    text, spans = assistant_spans(tok, messages, eot)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = []
    for i, (s, e) in zip(ids, offsets):
        inside = e > s and any(a <= s < b for a, b in spans)
        labels.append(i if inside else -100)
    return ids, labels


def fit_conversation(tok, messages: list[dict], max_length: int, eot: str) -> tuple[list[int], list[int], list[dict]] | None:
    """Tokenize; while longer than max_length, drop the last exchange (ending the conversation on an earlier
    assistant message). None when not even the first exchange fits."""
    msgs = list(messages)
    while msgs:
        ids, labels = tokenize_conversation(tok, msgs, eot)
        if len(ids) <= max_length:
            return ids, labels, msgs
        msgs = end_on_assistant(msgs[:-1])
    return None


def end_on_assistant(messages: list[dict]) -> list[dict]:
    """Cut after the last assistant message; [] when there is none."""
    for j in range(len(messages) - 1, -1, -1):
        if messages[j]["role"] == "assistant":
            return messages[:j + 1]
    return []


def tokenize_chat(examples: list[dict], tok, max_length: int, where: str = "data"):
    """Conversations -> (datasets.Dataset with input_ids/labels, stats). A conversation longer than
    max_length loses its last exchanges until it fits (counted: n_shortened); one whose first exchange does
    not fit is left out (counted: n_dropped). Nothing is cut inside a message."""
    import datasets

    eot = end_of_turn(tok)
    rows = {"input_ids": [], "labels": []}
    stats = {"n_conversations": len(examples), "n_shortened": 0, "n_dropped": 0}
    for i, e in enumerate(examples):
        check_messages(e["messages"], f"{where} conversation {i} (id {e['id']})")
        fitted = fit_conversation(tok, e["messages"], max_length, eot)
        if fitted is None:
            stats["n_dropped"] += 1
            continue
        ids, labels, msgs = fitted
        if len(msgs) < len(e["messages"]):
            stats["n_shortened"] += 1
        if all(x == -100 for x in labels):
            raise FtcError(f"{where} conversation {i} (id {e['id']}): no assistant token to train on")
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
    if not rows["input_ids"]:
        raise FtcError(f"{where}: no conversation fits train.max_length={max_length}; raise it")
    return datasets.Dataset.from_dict(rows), stats


def template_view(tok, messages: list[dict], model_alias: str, info: dict) -> dict:
    """What the tokenizer makes of one conversation: every token, whether it is special, whether it is trained
    (template_view.json; the analyzer draws it)."""
    ids, labels = tokenize_conversation(tok, messages, info["end_of_turn"])
    special = set(tok.all_special_ids)
    return {
        "model": model_alias, "template_source": info["template_source"], "added_tokens": info["added_tokens"],
        "end_of_turn": info["end_of_turn"], "messages": messages,
        "tokens": [{"id": i, "text": tok.decode([i]), "special": i in special, "trained": lab != -100}
                   for i, lab in zip(ids, labels)],
    }


def prompt_and_reference(messages: list[dict]) -> tuple[list[dict], str]:
    """A held-out conversation ending on an assistant message -> (history, reference reply)."""
    if not messages or messages[-1]["role"] != "assistant":
        raise FtcError("a held-out conversation must end on an assistant message")
    return messages[:-1], messages[-1]["content"]
