"""Documents and per-item metric of ftc_chitchat (no network).

Documents: the held-out conversations of a chat data config (ftcompare.data.chat_split(..., "eval")), each
split into history + reference reply (its last, assistant message), with the prompt rendered by the chat
template of the model being evaluated (task metadata `ftcompare_model`, set by `ftcompare evaluate`).
"""
from __future__ import annotations


import datasets


def docs(data: str, model: str) -> list[dict]:
    """-> [{id, messages (the history), reference, context, continuation}] in the split's stable order."""
    from ftcompare import chat, config
    from ftcompare.chat_eval import held_out  # the same documents, in the same order, as the generation prompts
    from ftcompare.modeling import load_tokenizer

    tok = load_tokenizer(config.load("models", model), chat=True)
    eot = chat.end_of_turn(tok)
    return [{**d, "context": chat.render(tok, d["messages"], add_generation_prompt=True),
             "continuation": d["reference"] + eot} for d in held_out(config.load("data", data))]


def load(**metadata) -> datasets.DatasetDict:
    """lm-eval `custom_dataset` hook, called with the task's metadata (YAML `metadata` merged with the
    TaskManager's) as keyword arguments: `data` (a chat data config) and `ftcompare_model` (a model alias)."""
    model = metadata.get("ftcompare_model")
    if not model:
        from ftcompare.errors import FtcError

        raise FtcError("ftc_chitchat renders prompts with the evaluated model's chat template: run it through "
                       "`python -m ftcompare evaluate`, or give lm-eval --metadata '{\"ftcompare_model\": \"135m\"}'")
    rows = docs(metadata.get("data") or "chitchat", model)
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})


def process_results(doc: dict, results: list) -> dict:
    """reply_nll: -loglikelihood of the reply (+ end-of-turn) in nats; reply_bytes: its UTF-8 bytes. Their
    ratio of means, / ln 2, is the bits per byte over all replies (a per-reply ratio would be dominated by
    one-word replies: 'k' alone costs ~45 bits per byte)."""
    ll, _is_greedy = results[0]
    return {"reply_nll": -ll, "reply_bytes": float(len(doc["reference"].encode("utf-8")))}
