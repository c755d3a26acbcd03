"""Generation evaluation of chat models: replies to held-out prompts, scored against the reference replies.

For each setting of `evaluation.generation.settings` (e.g. greedy, sampled) one task ftc_chat_gen_<name>:
the first `n_prompts` held-out conversations of the generation data config (ftcompare.data.chat_split,
'eval'), each cut before its last assistant message; the history rendered with the model's chat template
and its generation prompt; replies generated in batches of `batch_size` (left-padded, in the fixed order
of the prompts, torch seeded with `seed` before each setting, so sampled replies are reproducible on the
same machine), stopping on the template's end-of-turn token (or EOS) or after `max_new_tokens`.

Per-item metrics (floats): stopped (end-of-turn within max_new_tokens), length (generated tokens before it),
chrf / bleu (sacrebleu sentence scores, 0-100), rougeL (rouge_score ROUGE-L F1 x 100), distinct_1 / distinct_2
(unique / total lowercased whitespace-word n-grams of the reply). Written in lm-eval's schema (results,
n-samples, configs, ..., samples_<task>.jsonl records) into the evaluate stage's results.json, plus corpus
distinct-n and speed under ftcompare.generation.
"""
from __future__ import annotations

import hashlib
import json
import math
import time

from . import chat
from .config import GENERATION_TASK_PREFIX, DataConfig, GenerationSettings
from .errors import FtcError

UPSTREAM = "ftc_chat_generation"
VERSION = 1.0
METRICS = ("stopped", "length", "chrf", "bleu", "rougeL", "distinct_1", "distinct_2")
HIGHER_IS_BETTER = {"stopped": True, "length": None, "chrf": True, "bleu": True, "rougeL": True,
                    "distinct_1": True, "distinct_2": True}


# --------------------------------------------------------------------------------------------------
# Metrics (pure functions)
# --------------------------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    return text.lower().split()


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    w = words(text)
    return [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]


def distinct_n(text: str, n: int) -> float:
    """Unique / total word n-grams of one text; 0 when it has none."""
    grams = ngrams(text, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def corpus_distinct_n(texts: list[str], n: int) -> float:
    """Unique / total word n-grams over all texts together; 0 when there are none."""
    grams = [g for t in texts for g in ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


_ROUGE = None


def rouge_l(reply: str, reference: str) -> float:
    """ROUGE-L F1 x 100 (rouge_score, its default tokenizer: lowercased alphanumeric words, no stemming)."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return 100.0 * _ROUGE.score(reference, reply)["rougeL"].fmeasure


def text_metrics(reply: str, reference: str) -> dict[str, float]:
    import sacrebleu

    return {
        "chrf": float(sacrebleu.sentence_chrf(reply, [reference]).score),
        "bleu": float(sacrebleu.sentence_bleu(reply, [reference]).score),
        "rougeL": float(rouge_l(reply, reference)),
        "distinct_1": distinct_n(reply, 1),
        "distinct_2": distinct_n(reply, 2),
    }


def mean_and_stderr(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std / sqrt(n) (lm-eval's mean_stderr; for 0/1 values = sqrt(p(1-p)/(n-1)))."""
    n = len(values)
    if n == 0:
        return None, None
    m = sum(values) / n
    if n < 2:
        return m, None
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------
# Prompts and generation
# --------------------------------------------------------------------------------------------------
def held_out(data_cfg: DataConfig) -> list[dict]:
    """[{id, messages (history), reference}] of every held-out conversation, in the split's stable order."""
    from .data import chat_split

    if data_cfg.format != "chat":
        raise FtcError(f"data config '{data_cfg.name}' has format {data_cfg.format}: chat evaluation (generation, "
                       "ftc_chitchat) needs a data config with format: chat")
    docs = []
    for conv in chat_split(data_cfg, "eval"):
        history, reference = chat.prompt_and_reference(conv["messages"])
        docs.append({"id": str(conv["id"]), "messages": history, "reference": reference})
    if not docs:
        raise FtcError(f"data '{data_cfg.name}': its held-out split has no conversation")
    return docs


def generate_kwargs(setting: dict, max_new_tokens: int) -> dict:
    """The generate() kwargs of a setting with every sampling knob explicit (nothing inherited from a
    model's generation_config or transformers' defaults, e.g. its top_k=50): sampling is plain
    temperature / top-p / top-k sampling only where the setting says so."""
    kw: dict = {"max_new_tokens": max_new_tokens, "do_sample": bool(setting.get("do_sample", False)),
                "repetition_penalty": 1.0}
    if kw["do_sample"]:
        kw.update(temperature=1.0, top_p=1.0, top_k=0)
    kw.update(setting)
    return kw


def _device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        import torch

        return torch.device("cpu")


def generate_replies(model, tokenizer, prompts: list[str], kwargs: dict, batch_size: int, seed: int,
                     desc: str = "generate") -> list[dict]:
    """-> per prompt {"reply", "stopped", "length", "n_new_tokens"}; batches in the prompts' order, torch seeded
    once before the first batch (the same seed, order and batches give the same sampled replies)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    stop_ids = chat.stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    gen_cfg = GenerationConfig(**kwargs, eos_token_id=stop_ids, pad_token_id=pad_id, use_cache=True)
    device = _device(model)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[dict] = []
    torch.manual_seed(seed)
    try:
        with torch.inference_mode(), tqdm(total=len(prompts), desc=desc, unit="prompt") as bar:
            for start in range(0, len(prompts), batch_size):
                batch = prompts[start:start + batch_size]
                enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                seqs = model.generate(**enc, generation_config=gen_cfg)
                new = seqs[:, enc["input_ids"].shape[1]:].tolist()
                for ids in new:
                    stop = next((i for i, t in enumerate(ids) if t in stop_ids), None)
                    kept = ids if stop is None else ids[:stop]
                    out.append({"reply": tokenizer.decode(kept, skip_special_tokens=True),
                                "stopped": 0.0 if stop is None else 1.0, "length": float(len(kept)),
                                "n_new_tokens": len(ids) if stop is None else stop + 1})
                bar.update(len(batch))
    finally:
        tokenizer.padding_side = old_side
    return out


def run_generation(model, tokenizer, gen: GenerationSettings, data_cfg: DataConfig,
                   n_prompts: int | None = None) -> tuple[dict, dict[str, list], dict]:
    """Every setting of `gen` on the first n_prompts (default gen.n_prompts) held-out prompts.
    -> (results_entries: {"results"|"n-samples"|"n-shot"|"versions"|"higher_is_better"|"configs": {task: ...}},
        samples_by_task: {task: [lm-eval in-memory sample records]} (evaluate.sample_lines writes them),
        generation_block: {task: {corpus_distinct_1/2, settings, seconds, new_tokens, tokens_per_second,
                                  end_of_turn}})."""
    all_docs = held_out(data_cfg)
    docs = all_docs[:n_prompts or gen.n_prompts]
    eot = chat.end_of_turn(tokenizer)
    prompts = [chat.render(tokenizer, d["messages"], add_generation_prompt=True) for d in docs]
    entries: dict = {k: {} for k in ("results", "n-samples", "n-shot", "versions", "higher_is_better", "configs")}
    samples: dict[str, list] = {}
    block: dict = {}
    for name, setting in gen.settings.items():
        task = GENERATION_TASK_PREFIX + name
        kwargs = generate_kwargs(setting, gen.max_new_tokens)
        t0 = time.time()
        outs = generate_replies(model, tokenizer, prompts, kwargs, gen.batch_size, gen.seed, desc=task)
        seconds = time.time() - t0
        logged_kwargs = {**kwargs, "until": [eot]}
        recs = []
        for i, (doc, prompt, o) in enumerate(zip(docs, prompts, outs)):
            metrics = {"stopped": o["stopped"], "length": o["length"], **text_metrics(o["reply"], doc["reference"])}
            recs.append({
                "doc_id": i, "doc": doc, "target": doc["reference"],
                "arguments": [(prompt, logged_kwargs)], "resps": [[o["reply"]]], "filtered_resps": [o["reply"]],
                "filter": "none", "metrics": list(METRICS), **{m: metrics[m] for m in METRICS},
                "doc_hash": sha256(json.dumps(doc, sort_keys=True)), "prompt_hash": sha256(prompt),
                "target_hash": sha256(doc["reference"]), "n_new_tokens": o["n_new_tokens"],
            })
        samples[task] = recs
        res = {"alias": task}
        for m in METRICS:
            mean, se = mean_and_stderr([r[m] for r in recs])
            res[f"{m},none"] = mean
            res[f"{m}_stderr,none"] = se if se is not None else "N/A"
        entries["results"][task] = res
        entries["n-samples"][task] = {"original": len(all_docs), "effective": len(recs)}
        entries["n-shot"][task] = 0
        entries["versions"][task] = VERSION
        entries["higher_is_better"][task] = dict(HIGHER_IS_BETTER)
        entries["configs"][task] = {
            "task": task, "output_type": "generate_until",
            "metadata": {"upstream_task": UPSTREAM, "version": VERSION, "generator": "ftcompare.chat_eval"},
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": HIGHER_IS_BETTER[m]}
                            for m in METRICS],
            "generation_kwargs": logged_kwargs,
            "custom_dataset": f"held-out conversations of data config {data_cfg.name} (ftcompare.data)",
        }
        new_tokens = sum(r["n_new_tokens"] for r in recs)
        replies = [r["resps"][0][0] for r in recs]
        block[task] = {
            "corpus_distinct_1": corpus_distinct_n(replies, 1), "corpus_distinct_2": corpus_distinct_n(replies, 2),
            "settings": dict(setting), "seconds": round(seconds, 2), "new_tokens": new_tokens,
            "tokens_per_second": round(new_tokens / seconds, 2) if seconds > 0 else None, "end_of_turn": eot,
            "batch_size": gen.batch_size, "seed": gen.seed, "max_new_tokens": gen.max_new_tokens,
        }
        print(f"[generate] {task}: {len(recs)} prompts, stopped {res['stopped,none']:.0%}, "
              f"chrF {res['chrf,none']:.1f}, {new_tokens} tokens in {seconds:.1f} s", flush=True)
    return entries, samples, block
