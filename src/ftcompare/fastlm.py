"""`ftc-hf`: lm-eval's HFLM with shared-context scoring and shared-prefix generation (same answers, less work).

Stock HFLM (lm-eval 0.4.13) scores every (context, continuation) request as its own row: a HellaSwag item
with 4 endings runs its context through the model 4 times, and the vocabulary projection is computed at every
position of every row although only the continuation's positions are read. Its generation prefills every
prompt in full, although all GSM8K CoT prompts start with the same 8 worked examples (~730 tokens).

This subclass changes only *how* the numbers are computed, not *which* numbers:

- loglikelihood: requests are grouped by their (left-truncated, as stock) context. A batch of contexts is
  prefilled once (right-padded, explicit position ids; a token prefix all of them share, such as GSM8K's 8
  worked examples, prefilled once for the batch), keeping the vocabulary logits of each context's last
  position only; then every continuation of every context in the batch runs as one row on top of its
  context's KV cache (the cache rows repeated per continuation, the context's padding masked out).
  Continuations of one token (MMLU's " A".." D") need no second pass at all.
- generate_until: the prompts of a batch share a token prefix (the few-shot examples). It is prefilled once,
  its KV cache copied to every row, and each row's own suffix follows after a masked gap; stop strings are
  checked per row (stock checks them per batch) and the batch ends when every row has stopped.
- generate_until of ftcompare's chat generation tasks (ftc_chat_gen_*, recognised by the generation_kwargs key
  `ftc_chat_reply` = {batch_size, seed}; the key never reaches transformers): all requests of the call, in
  lm-eval's document order, go to ftcompare.chat_eval.generate_replies (batches of batch_size, left-padded,
  torch seeded once, stopping on the chat template's end-of-turn token), and each reply returns as a
  chat_eval.ChatReply (a str carrying its stop flag and token length for the task's process_results). Stock
  HFLM sorts requests by length and has no per-reply token counts, so these tasks run on ftc-hf only.

Each request returns (sum of log-probs, is-greedy) as stock does. The arithmetic is the same up to floating
point order: tests/test_fastlm.py checks every log-likelihood against stock HFLM (|d| < 1e-4) and identical
generations on tiny models, and `make bench` compares scores and wall time with the stock lm_eval CLI on the
default tasks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList


@register_model("ftc-hf")
class FtcHF(HFLM):
    """HFLM that scores each context once and shares few-shot prefixes in generation.

    `max_group_tokens` caps the tokens of one continuation forward (rows x padded length): larger is faster
    until memory runs out; it never changes a score beyond float rounding."""

    def __init__(self, *args, max_group_tokens: int = 8192, generation_batch_size: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_group_tokens = int(max_group_tokens)
        self.generation_batch_size = generation_batch_size
        # one {"prompts", "seconds"} per chat-reply generate_until call (the evaluate stage reads its speed here)
        self.chat_reply_runs: list[dict] = []

    # ------------------------------------------------------------------------------------------------
    # loglikelihood
    # ------------------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        # stock truncation: keep the last max_length+1 tokens of ctx+cont; the model sees all but the last
        groups: dict[tuple[int, ...], list[int]] = {}
        conts: list[list[int]] = []
        for i, (_, ctx, cont) in enumerate(requests):
            assert len(ctx) > 0 and 0 < len(cont) <= self.max_length
            full = (ctx + cont)[-(self.max_length + 1):]
            groups.setdefault(tuple(full[: len(full) - len(cont)]), []).append(i)
            conts.append(list(cont))
        # longest contexts first (as stock: out-of-memory shows at once, padding within a batch is small)
        order = sorted(groups, key=lambda c: (-len(c), c))
        bs = override_bs or (self.batch_size if isinstance(self.batch_size, int) else 8)
        answers: list[tuple[float, bool] | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=(disable_tqdm or self.rank != 0),
                    desc="Running loglikelihood requests (ftc-hf)")
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                batch = order[start:start + bs]
                for i, ans in self._score_contexts(batch, [groups[c] for c in batch], conts):
                    answers[i] = ans
                    req_str = requests[i][0]
                    if req_str is not None:
                        self.cache_hook.add_partial("loglikelihood", req_str, ans)
                    pbar.update(1)
        pbar.close()
        return answers

    def _score_contexts(self, ctxs: list[tuple[int, ...]], members: list[list[int]], conts: list[list[int]]):
        dev = self.device
        lens = [len(c) for c in ctxs]
        width = max(lens)
        ids = torch.full((len(ctxs), width), self._pad_id(), dtype=torch.long, device=dev)
        mask = torch.zeros((len(ctxs), width), dtype=torch.long, device=dev)
        for r, c in enumerate(ctxs):
            ids[r, : len(c)] = torch.tensor(c, dtype=torch.long)
            mask[r, : len(c)] = 1
        pos = torch.arange(width, device=dev).expand(len(ctxs), -1)
        need_cache = any(len(conts[i]) > 1 for m in members for i in m)
        # a token prefix every context of the batch shares (few-shot examples) is prefilled once, its KV cache
        # repeated per context; each context's own tokens follow on top of it
        shared = _common_prefix(ctxs) if len(ctxs) > 1 else 0
        shared = shared if shared >= MIN_SHARED_PREFIX else 0
        kw = {}
        if shared:
            pre = self.model(input_ids=ids[:1, :shared], position_ids=pos[:1, :shared], use_cache=True)
            cache = pre.past_key_values
            cache.batch_repeat_interleave(len(ctxs))
            kw = {"past_key_values": cache}
            need_cache = True
        # vocabulary logits only at each context's last position (a handful of distinct indices)
        last = torch.tensor([n - 1 - shared for n in lens], device=dev)
        keep = torch.unique(last)
        out = self.model(input_ids=ids[:, shared:], attention_mask=mask, position_ids=pos[:, shared:],
                         use_cache=need_cache, logits_to_keep=keep, **kw)
        col = torch.searchsorted(keep, last)
        first_lp = F.log_softmax(out.logits[torch.arange(len(ctxs), device=dev), col], dim=-1,
                                 dtype=self.softmax_dtype)  # [contexts, vocab]: log p(cont[0] | ctx)

        rows = [(r, i) for r, m in enumerate(members) for i in m]
        multi = [(r, i) for r, i in rows if len(conts[i]) > 1]
        results: dict[int, tuple[float, bool]] = {}
        for r, i in rows:
            if len(conts[i]) == 1:
                t = conts[i][0]
                lp = first_lp[r]
                results[i] = (float(lp[t]), bool(int(lp.argmax()) == t))
        if multi:
            cache = out.past_key_values
            # rows of continuations, chunked so that rows x padded length stays under max_group_tokens
            multi.sort(key=lambda ri: -len(conts[ri[1]]))
            chunk: list = []
            for ri in multi:
                longest = len(conts[chunk[0][1]]) - 1 if chunk else len(conts[ri[1]]) - 1
                if chunk and (len(chunk) + 1) * (width + longest) > self.max_group_tokens:
                    results.update(self._score_continuations(chunk, cache, mask, lens, first_lp, conts))
                    chunk = []
                chunk.append(ri)
            if chunk:
                results.update(self._score_continuations(chunk, cache, mask, lens, first_lp, conts))
        return [(i, results[i]) for r, i in rows]

    def _score_continuations(self, chunk, cache, ctx_mask, lens, first_lp, conts):
        dev = self.device
        idx = torch.tensor([r for r, _ in chunk], device=dev)
        n = max(len(conts[i]) - 1 for _, i in chunk)
        ids = torch.full((len(chunk), n), self._pad_id(), dtype=torch.long, device=dev)
        cmask = torch.zeros((len(chunk), n), dtype=torch.long, device=dev)
        for k, (_, i) in enumerate(chunk):
            feed = conts[i][:-1]  # the last continuation token is predicted, never fed
            ids[k, : len(feed)] = torch.tensor(feed, dtype=torch.long)
            cmask[k, : len(feed)] = 1
        start = torch.tensor([lens[r] for r, _ in chunk], device=dev)
        pos = start[:, None] + torch.arange(n, device=dev)[None, :]
        past = _select_rows(cache, idx)
        attn = torch.cat([ctx_mask.index_select(0, idx), cmask], dim=1)
        logits = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=past,
                            use_cache=False).logits
        lp_all = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        out = {}
        for k, (r, i) in enumerate(chunk):
            cont = conts[i]
            tgt = torch.tensor(cont[1:], dtype=torch.long, device=dev)
            lp = lp_all[k, : len(cont) - 1]
            total = float(first_lp[r, cont[0]]) + float(lp.gather(1, tgt[:, None]).sum())
            greedy = int(first_lp[r].argmax()) == cont[0] and bool((lp.argmax(-1) == tgt).all())
            out[i] = (total, greedy)
        return out

    def _pad_id(self) -> int:
        pid = self.tokenizer.pad_token_id
        return int(pid if pid is not None else self.tokenizer.eos_token_id or 0)

    # ------------------------------------------------------------------------------------------------
    # generate_until
    # ------------------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False):
        from .chat_eval import REPLY_KWARG

        chat = [REPLY_KWARG in r.args[1] for r in requests]
        if any(chat):
            return self._chat_replies(requests, all(chat))
        if self.generation_batch_size is None:
            return super().generate_until(requests, disable_tqdm)
        saved = self.batch_size_per_gpu
        self.batch_size_per_gpu = self.generation_batch_size
        try:
            return super().generate_until(requests, disable_tqdm)
        finally:
            self.batch_size_per_gpu = saved

    def _chat_replies(self, requests, all_chat: bool):
        """The ftc_chat_gen_* requests of one lm-eval call (one task: one setting) -> ChatReply per request, in
        the requests' order (lm-eval's: by document)."""
        import time

        from .chat_eval import REPLY_KWARG, chat_replies
        from .errors import FtcError

        kwargs = requests[0].args[1]
        if not all_chat or any(r.args[1] != kwargs for r in requests):
            raise FtcError(f"generate_until got chat-reply requests ({REPLY_KWARG}) mixed with others or with "
                           "different generation_kwargs: run one ftc_chat_gen_* task per lm-eval call")
        t0 = time.time()
        out = chat_replies(self.model, self.tokenizer, [r.args[0] for r in requests], kwargs,
                           desc=f"chat replies ({REPLY_KWARG})")
        self.chat_reply_runs.append({"prompts": len(out), "seconds": time.time() - t0})
        return out

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        if self.backend != "causal" or generation_kwargs.get("do_sample"):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        attn = generation_kwargs.pop("attention_mask", None)
        if attn is None:
            attn = torch.ones_like(context)
        generation_kwargs.pop("temperature", None)
        generation_kwargs["do_sample"] = False
        rows = [context[b][attn[b].bool()].tolist() for b in range(context.shape[0])]
        prefix = _common_prefix(rows)  # the few-shot examples every prompt starts with
        width = context.shape[1]
        new_tokens = max_length - width
        dev = self.device
        B = len(rows)
        pad = self._pad_id()
        suffix_w = max(len(r) for r in rows) - prefix
        ids = torch.full((B, prefix + suffix_w), pad, dtype=torch.long, device=dev)
        mask = torch.zeros_like(ids)
        for b, r in enumerate(rows):
            ids[b, :prefix] = torch.tensor(r[:prefix])
            ids[b, prefix + suffix_w - (len(r) - prefix):] = torch.tensor(r[prefix:])  # left-padded suffix
            mask[b, :prefix] = 1
            mask[b, prefix + suffix_w - (len(r) - prefix):] = 1
        kw = {}
        if prefix > 0:
            with torch.inference_mode():
                pre = self.model(input_ids=ids[:1, :prefix], use_cache=True)
            cache = pre.past_key_values
            if B > 1:
                cache.batch_repeat_interleave(B)
            kw["past_key_values"] = cache
        stopping = StoppingCriteriaList([_RowStop(self.tokenizer, stop, ids.shape[1], B)])
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                  stopping_criteria=stopping, pad_token_id=pad, use_cache=True,
                                  **kw, **generation_kwargs)
        gen = out[:, ids.shape[1]:]
        # lm-eval slices the output at the width of its own (left-padded) context
        head = torch.full((B, width), pad, dtype=torch.long, device=dev)
        return torch.cat([head, gen], dim=1)


MIN_SHARED_PREFIX = 64   # tokens: a shorter common prefix of a batch's contexts is not worth a separate forward


def _common_prefix(seqs) -> int:
    """Length of the token prefix every sequence shares, leaving each at least one token of its own."""
    n = min(len(q) for q in seqs) - 1
    first = seqs[0]
    for q in seqs[1:]:
        k = 0
        while k < n and q[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _select_rows(cache, idx: torch.Tensor):
    """A cache holding rows `idx` of `cache`; the prefill cache stays intact for the next chunk (reorder_cache
    replaces each layer's tensors, so it runs on copies of the layer objects)."""
    import copy

    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    new.reorder_cache(idx)
    return new


class _RowStop(StoppingCriteria):
    """Per-row stop strings (stock lm-eval answers one bool per batch): a row is done once its generated text
    contains a stop string; generate ends when every row is done. lm-eval cuts each text at its first stop
    string afterwards, so the kept text is what stock keeps."""

    def __init__(self, tokenizer, stops: list[str], prompt_width: int, batch: int):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.start = prompt_width
        # how many trailing tokens can hold a stop string (as stock's MultiTokenEOSCriteria, plus margin)
        self.lookback = max([len(tokenizer.encode(s, add_special_tokens=False)) for s in self.stops] or [1]) + 2
        self.done = torch.zeros(batch, dtype=torch.bool)

    def __call__(self, input_ids, scores, **kwargs):
        tail = input_ids[:, max(self.start, input_ids.shape[1] - self.lookback):]
        texts = self.tokenizer.batch_decode(tail)
        for b, t in enumerate(texts):
            if not self.done[b] and any(s in t for s in self.stops):
                self.done[b] = True
        return self.done.clone().to(input_ids.device)
