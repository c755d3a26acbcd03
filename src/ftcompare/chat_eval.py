"""Generation evaluation of chat models: replies to held-out prompts, scored against the reference replies.

The lm-eval tasks ftc_chat_gen_<setting> (lm-evaluation-harness/tasks/ftc_chitchat/ftc_chat_gen_*.yaml, one per
setting of `evaluation.generation.settings`, e.g. greedy, sampled) are `generate_until` tasks whose documents are
the first `n_prompts` held-out conversations of the generation data config (ftcompare.data.chat_split, 'eval'),
each cut before its last assistant message, the history rendered with the model's chat template and its
generation prompt (task_data.chat_documents). This module holds what those tasks and `ftc-hf` share:

- generate_replies: what ftc-hf's generate_until runs for them (fastlm.FtcHF, gen kwarg `ftc_chat_reply`):
  batches of `batch_size` in the prompts' order (left-padded), torch seeded with `seed` once before the first
  batch (sampled replies are reproducible on the same machine), stopping on the template's end-of-turn token (or
  EOS) or after `max_new_tokens`. Each reply comes back as a ChatReply: the text, plus what the text alone
  loses (whether it stopped, its length in tokens).
- reply_metrics: the per-item metrics the tasks' process_results return (floats): stopped (end-of-turn within
  max_new_tokens), length (generated tokens before it), chrf / bleu (sacrebleu sentence scores, 0-100), rougeL
  (rouge_score ROUGE-L F1 x 100), distinct_1 / distinct_2 (unique / total lowercased whitespace-word n-grams of the
  reply). lm-eval aggregates them (mean, mean_stderr).
- generation_block: corpus distinct-n and speed of a task's replies (results.json ftcompare.generation).
"""
from __future__ import annotations

from . import chat
from .config import DataConfig, GenerationSettings
from .errors import FtcError

METRICS = ("stopped", "length", "chrf", "bleu", "rougeL", "distinct_1", "distinct_2")
REPLY_KWARG = "ftc_chat_reply"   # generation_kwargs key of the ftc_chat_gen_* tasks: {batch_size, seed}


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


# --------------------------------------------------------------------------------------------------
# The ftc_chat_gen_* tasks: request kwargs, replies that carry their token counts, per-item metrics
# --------------------------------------------------------------------------------------------------
class ChatReply(str):
    """A generated reply: its text (what lm-eval and the samples file see), plus what the text alone loses:
    `stopped` (the end-of-turn token came within max_new_tokens), `length` (generated tokens before it) and
    `n_new_tokens` (tokens generated, the end-of-turn token included).

    Why a str subclass: lm-eval hands a generate_until response to the task untouched. The LM's generate_until
    returns it, lm-eval appends it to Instance.resps, the default filter ("none" = take_first) puts the same
    object into filtered_resps, and process_results(doc, [reply]) receives it; the samples file writes it as
    a plain JSON string (json treats a str subclass as str). So the exact counts reach process_results with the
    reply itself, no side channel keyed by prompt text, and anything that only wants the text sees a str."""

    def __new__(cls, text: str, stopped: bool, length: int, n_new_tokens: int):
        self = super().__new__(cls, text)
        self.stopped, self.length, self.n_new_tokens = bool(stopped), int(length), int(n_new_tokens)
        return self


def task_generation_kwargs(setting: dict, gen: GenerationSettings, end_of_turn: str) -> dict:
    """The generation_kwargs of task ftc_chat_gen_<setting> as the evaluate stage sets them from
    evaluation.generation: generate() kwargs (generate_kwargs), `until` (the end-of-turn token: what the
    replies stop on, as lm-eval names it) and REPLY_KWARG {batch_size, seed} (ftc-hf's chat-reply path)."""
    return {**generate_kwargs(setting, gen.max_new_tokens), "until": [end_of_turn],
            REPLY_KWARG: {"batch_size": gen.batch_size, "seed": gen.seed}}


def chat_replies(model, tokenizer, prompts: list[str], gen_kwargs: dict, desc: str = "generate") -> list[ChatReply]:
    """A task's requests (prompts in document order, their common generation_kwargs) -> ChatReply per prompt:
    generate_replies with the kwargs minus `until` (generation stops on chat.stop_token_ids) and REPLY_KWARG."""
    kw = dict(gen_kwargs)
    opts = kw.pop(REPLY_KWARG)
    kw.pop("until", None)
    if not isinstance(opts, dict) or set(opts) != {"batch_size", "seed"}:
        raise FtcError(f"generation_kwargs.{REPLY_KWARG} must be {{batch_size: N, seed: N}} (got {opts!r})")
    outs = generate_replies(model, tokenizer, prompts, kw, int(opts["batch_size"]), int(opts["seed"]), desc=desc)
    return [ChatReply(o["reply"], o["stopped"] == 1.0, int(o["length"]), o["n_new_tokens"]) for o in outs]


def reply_metrics(reply, reference: str) -> dict[str, float]:
    """process_results of the ftc_chat_gen_* tasks: the METRICS of one reply (floats), in that order."""
    if not isinstance(reply, ChatReply):
        raise FtcError("the ftc_chat_gen_* tasks need lm-eval model ftc-hf (ftcompare.fastlm, evaluation.lm_eval_model: "
                       f"ftc-hf): the reply came back as a plain {type(reply).__name__}, without its stop flag and length")
    text = str(reply)
    return {"stopped": 1.0 if reply.stopped else 0.0, "length": float(reply.length), **text_metrics(text, reference)}


def generation_block(replies: list[str], n_new_tokens: list[int], setting: dict, gen: GenerationSettings,
                     end_of_turn: str, seconds: float) -> dict:
    """results.json ftcompare.generation[<task>]: corpus distinct-n of the replies, what was asked, speed
    (seconds = the generation itself, in ftc-hf)."""
    new_tokens = sum(n_new_tokens)
    return {
        "corpus_distinct_1": corpus_distinct_n(replies, 1), "corpus_distinct_2": corpus_distinct_n(replies, 2),
        "settings": dict(setting), "seconds": round(seconds, 2), "new_tokens": new_tokens,
        "tokens_per_second": round(new_tokens / seconds, 2) if seconds > 0 else None, "end_of_turn": end_of_turn,
        "batch_size": gen.batch_size, "seed": gen.seed, "max_new_tokens": gen.max_new_tokens,
    }
