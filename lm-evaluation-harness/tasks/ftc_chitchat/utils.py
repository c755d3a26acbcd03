"""Documents and per-item metrics of ftc_chitchat and of the generation tasks ftc_chat_gen_* (no network).

Documents: the held-out conversations of a chat data config (ftcompare.task_data.chat_documents: the 'eval'
split of ftcompare.data.chat_split), each split into history + reference reply (its last, assistant message),
with the prompt rendered by the chat template of the model being evaluated (task metadata `ftcompare_model`,
set by `ftcompare evaluate`). The generation tasks' replies come from lm-eval model ftc-hf (ftcompare.fastlm)
and are scored by ftcompare.chat_eval.reply_metrics (through task_data, the package's one surface for tasks).
"""
from __future__ import annotations


import datasets


def load(**metadata) -> datasets.DatasetDict:
    """lm-eval `custom_dataset` hook, called with the task's metadata (YAML `metadata` merged with the
    TaskManager's) as keyword arguments: `data` (a chat data config) and `ftcompare_model` (a model alias)."""
    from ftcompare.task_data import FtcError, chat_documents

    model = metadata.get("ftcompare_model")
    if not model:

        raise FtcError("ftc_chitchat and ftc_chat_gen_* render prompts with the evaluated model's chat template: run it through "
                       "`python -m ftcompare evaluate`, or give lm-eval --metadata '{\"ftcompare_model\": \"135m\"}'")
    rows = chat_documents(metadata.get("data") or "chitchat", model)
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})


def process_results(doc: dict, results: list) -> dict:
    """reply_nll: -loglikelihood of the reply (+ end-of-turn) in nats; reply_bytes: its UTF-8 bytes. Their
    ratio of means, / ln 2, is the bits per byte over all replies (a per-reply ratio would be dominated by
    one-word replies: 'k' alone costs ~45 bits per byte)."""
    ll, _is_greedy = results[0]
    return {"reply_nll": -ll, "reply_bytes": float(len(doc["reference"].encode("utf-8")))}


def load_generation(**metadata) -> datasets.DatasetDict:
    """custom_dataset of the ftc_chat_gen_* tasks: ftc_chitchat's documents without the scored continuation:
    {id, messages (the history), reference (the last, assistant message), context (the prompt)}."""
    split = load(**metadata)["validation"]
    return datasets.DatasetDict({"validation": split.remove_columns(["continuation"])})


def process_generation(doc: dict, results: list) -> dict:
    """stopped, length, chrf, bleu, rougeL, distinct_1, distinct_2 of the reply (ftcompare.chat_eval.reply_metrics);
    the reply must come from ftc-hf (a ChatReply, carrying its stop flag and token length)."""
    from ftcompare.task_data import chat_reply_metrics

    return chat_reply_metrics(results[0], doc["reference"])
