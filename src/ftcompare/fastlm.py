"""`ftc-hf`: lm-eval's HFLM with shared-context scoring and shared-prefix generation (same answers, less work).

Stock HFLM (lm-eval 0.4.13) scores every (context, continuation) request as its own row: a HellaSwag item
with 4 endings runs its context through the model 4 times, and the vocabulary projection is computed at every
position of every row although only the continuation's positions are read. Its generation prefills every
prompt in full, although all GSM8K CoT prompts start with the same 8 worked examples (~730 tokens).

This subclass changes only *how* the numbers are computed, not *which* numbers:

- loglikelihood: requests are grouped by their (left-truncated, as stock) context, and each context becomes
  one packed row: the context, then each of its continuations' tokens but the last, one after the other. An
  attention mask lets a continuation token see its context and the earlier tokens of its own continuation
  only, and its position ids continue from the context's end, so every log-probability is the one a separate
  row would give; the context runs once, and there is no padding between a short ending and a long one. A
  token prefix all contexts of a batch share (GSM8K's 8 worked examples) is prefilled once and its KV cache
  kept once (below). Vocabulary logits are computed only at the (row, position) pairs whose log-probability
  is read. A batch stops taking rows much shorter than its longest once it is large enough.
- generate_until: the prompts of a batch share a token prefix (the few-shot examples). It is prefilled once;
  stop strings are checked per row (stock checks them per batch). Plain greedy decoding runs in our own loop
  (_greedy_rows), which drops a row from the batch (its KV cache rows too) as soon as it stops (generate()
  keeps computing finished rows until the last one stops, and on GSM8K a few rows run to max_gen_toks while
  most stop within ~60 tokens), feeds prompt-lookup drafts and keeps those equal to the argmax, and writes its
  KV cache into a buffer allocated once instead of concatenating per step.
- attention (gqa_sdpa, while ftc-hf computes): grouped-query attention is left to torch instead of copying
  every key/value head (transformers' sdpa does that whenever a mask is given), and a shared prefix's
  keys/values are kept once: one flash-attention call for all rows' queries over the prefix, merged by
  log-sum-exp with each row's attention over its own tokens.
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

import contextvars

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import DynamicCache, DynamicLayer

LOOKUP_TOKENS = 4        # prompt-lookup draft length of the greedy loop (0: none). GSM8K CoT, 135m: 2-4 best, 16 slower


@register_model("ftc-hf")
class FtcHF(HFLM):
    """HFLM that scores each context once and shares few-shot prefixes in generation.

    `max_group_tokens` caps the tokens of one log-likelihood forward (rows x padded length): larger is faster
    until memory runs out; it never changes a score beyond float rounding."""

    def __init__(self, *args, max_group_tokens: int = 8192, generation_batch_size: int | None = None,
                 lookup_tokens: int = LOOKUP_TOKENS, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_group_tokens = int(max_group_tokens)
        self.lookup_tokens = int(lookup_tokens)
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
        # one packed row per context: the context, then every continuation but its last token (see _score_packed);
        # longest rows first (as stock: out-of-memory shows at once), batches of up to `bs` contexts whose rows x
        # padded length stays under max_group_tokens; once a batch holds BATCH_MIN_TOKENS real tokens, a row shorter
        # than PAD_MIN_SHARE of its longest starts the next batch (padding costs as much as real tokens)
        packed = {c: len(c) + sum(len(conts[i]) - 1 for i in m) for c, m in groups.items()}
        order = sorted(groups, key=lambda c: (-packed[c], c))
        bs = override_bs or (self.batch_size if isinstance(self.batch_size, int) else 8)
        answers: list[tuple[float, bool] | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=(disable_tqdm or self.rank != 0),
                    desc="Running loglikelihood requests (ftc-hf)")
        with torch.inference_mode(), _gqa_attention(self.model) as ours:
            start = 0
            while start < len(order):
                n, longest = 1, packed[order[start]]
                real = longest
                while (n < bs and start + n < len(order)
                       and (n + 1) * longest <= max(self.max_group_tokens, longest)
                       and (real < BATCH_MIN_TOKENS or packed[order[start + n]] >= PAD_MIN_SHARE * longest)):
                    real += packed[order[start + n]]
                    n += 1
                batch = order[start:start + n]
                start += n
                for i, ans in self._score_packed(batch, [groups[c] for c in batch], conts, ours):
                    answers[i] = ans
                    req_str = requests[i][0]
                    if req_str is not None:
                        self.cache_hook.add_partial("loglikelihood", req_str, ans)
                    pbar.update(1)
        pbar.close()
        return answers

    def _score_packed(self, ctxs: list[tuple[int, ...]], members: list[list[int]], conts: list[list[int]],
                      keep_prefix_once: bool = False):
        """One forward for a batch of contexts and all their continuations. Row r holds context r, then each of
        its continuations' tokens but the last (the last is only predicted), one after the other. An attention
        mask lets each continuation token see its context and the earlier tokens of its own continuation only,
        and its position ids continue from the context's end, so each token's log-probability is the one a
        separate (context + continuation) row gives. A token prefix that all contexts share (few-shot examples)
        is prefilled once and its KV cache kept once (gqa_sdpa; repeated per row under another attention).
        Vocabulary logits are computed only at the (row, position) pairs some log-probability needs. -> [(request index, (sum of log-probs, is_greedy))]."""
        dev = self.device
        shared = _common_prefix(ctxs) if len(ctxs) > 1 else 0
        shared = shared if shared >= MIN_SHARED_PREFIX else 0
        seqs, poss, segs = [], [], []
        need: list[tuple[int, int, int]] = []     # (row, position in the row, token whose log-prob is read)
        spans: list[tuple[int, int, int]] = []    # (request, first entry in need, entries)
        for r, (ctx, m) in enumerate(zip(ctxs, members)):
            seq, pos = list(ctx[shared:]), list(range(shared, len(ctx)))
            seg = [-1] * len(seq)                  # -1: context; otherwise the request the token belongs to
            for i in m:
                c, at = conts[i], len(seq)
                spans.append((i, len(need), len(c)))
                need.append((r, len(ctx) - shared - 1, c[0]))        # first token: from the context's last
                need += [(r, at + k, c[k + 1]) for k in range(len(c) - 1)]
                seq += c[:-1]
                pos += range(len(ctx), len(ctx) + len(c) - 1)
                seg += [i] * (len(c) - 1)
            seqs.append(seq), poss.append(pos), segs.append(seg)
        B, L = len(seqs), max(len(q) for q in seqs)
        ids = torch.full((B, L), self._pad_id(), dtype=torch.long)
        pos = torch.zeros((B, L), dtype=torch.long)
        seg = torch.full((B, L), -2, dtype=torch.long)   # -2: padding
        for r in range(B):
            n = len(seqs[r])
            ids[r, :n], pos[r, :n], seg[r, :n] = torch.tensor(seqs[r]), torch.tensor(poss[r]), torch.tensor(segs[r])
        # key k is visible to query q: causal, and k is context or in q's own continuation; padding sees itself
        causal = torch.ones((L, L), dtype=torch.bool).tril()
        sq, sk = seg[:, :, None], seg[:, None, :]
        allowed = causal & (sk >= -1) & ((sk == -1) | (sk == sq))
        allowed |= torch.eye(L, dtype=torch.bool)
        kw, cache = {}, None
        if shared:
            pre = self.model(input_ids=torch.tensor([ctxs[0][:shared]], device=dev),
                             position_ids=torch.arange(shared, device=dev)[None], use_cache=True, logits_to_keep=1)
            if keep_prefix_once:   # gqa_sdpa: the prefix's keys/values kept once, the mask over the rows' own tokens
                cache = _RowCache(B, L, [(la.keys, la.values) for la in pre.past_key_values.layers])
                kw["past_key_values"] = cache
            else:
                allowed = torch.cat([torch.ones((B, L, shared), dtype=torch.bool), allowed], dim=2)
                pre.past_key_values.batch_repeat_interleave(B)
                kw["past_key_values"] = pre.past_key_values
        mask = self._mask_4d(allowed[:, None]).to(dev)
        rows = torch.tensor([r for r, _, _ in need], device=dev)
        at = torch.tensor([q for _, q, _ in need], device=dev)
        tgt = torch.tensor([t for _, _, t in need], device=dev)
        keep = torch.unique(at)                               # positions where some row reads a log-prob
        pairs = (rows, torch.searchsorted(keep, at))           # ... and the (row, position) pairs read
        token = _SHARED_PREFIX.set(cache)
        try:
            with _head_only_at(self.model, pairs) as picked:
                logits = self.model(input_ids=ids.to(dev), attention_mask=mask, position_ids=pos.to(dev),
                                    use_cache=bool(shared), logits_to_keep=keep, **kw).logits
        finally:
            _SHARED_PREFIX.reset(token)
        lp = F.log_softmax(logits[0] if picked else logits[pairs], dim=-1, dtype=self.softmax_dtype)
        tok = lp.gather(1, tgt[:, None]).squeeze(1)
        # is_greedy as stock's argmax == target; amax is a cheaper pass, and argmax (first maximum) runs only on
        # the rows where the target reaches the maximum
        hit = tok == lp.amax(-1)
        if bool(hit.any()):
            at_max = hit.nonzero().squeeze(1)
            hit[at_max] = lp[at_max].argmax(-1) == tgt[at_max]
        return [(i, (float(tok[a:a + n].sum()), bool(hit[a:a + n].all()))) for i, a, n in spans]

    def _mask_4d(self, allowed: torch.Tensor) -> torch.Tensor:
        """[B, 1, q, k] visibility -> the mask the model's attention takes as given (transformers passes a 4D
        mask through): boolean for sdpa, additive (0 / dtype min) for eager."""
        if getattr(self.model.config, "_attn_implementation", "eager") in ("sdpa", GQA_SDPA):
            return allowed
        dtype = self.model.dtype
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)

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
        if set(generation_kwargs) <= {"do_sample"} and _plain_greedy(self.model.generation_config):
            # plain greedy (no logits processor would run): our loop (drops finished rows, drafts, shared prefix)
            with _gqa_attention(self.model) as ours:
                gen = self._greedy_rows(ids, mask, prefix if ours else 0, new_tokens, stop)
        else:
            kw = {}
            if prefix > 0:
                with torch.inference_mode():
                    pre = self.model(input_ids=ids[:1, :prefix], use_cache=True, logits_to_keep=1)
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

    @torch.inference_mode()
    def _greedy_rows(self, ids, mask, prefix: int, new_tokens: int, stop: list[str]):
        """Greedy decoding as `generate(do_sample=False)` with per-row stops, computing less:
        - a row that has stopped (stop string or EOS) leaves the batch, its KV cache rows too (generate() keeps
          computing finished rows until the last one stops, and on GSM8K a few rows run to max_gen_toks);
        - prompt-lookup drafts (`lookup_tokens`): where a row's last 3 tokens occurred before in its prompt or
          output, the tokens that followed them then are fed along with the row's next token, and kept as far
          as each equals the model's own argmax at its position. Kept tokens are the greedy ones (up to float
          order); a row that repeats itself, or copies its few-shot examples, advances several tokens per
          forward. A rejected draft is overwritten: each row writes its cache at its own length (_RowCache);
        - the first `prefix` prompt tokens, the same in every row (few-shot examples), run once and are kept once:
          attention of every row's queries over them is one computation, merged with the attention over the
          row's own tokens by their log-sum-exp (gqa_sdpa; so only while gqa_sdpa is the attention: prefix 0
          otherwise). Repeating the prefix's cache per row made each step read it once per row.
        Same tokens as generate: argmax of fp32 logits, position ids from the attention mask as generate derives
        them, pad after a row's end. -> [rows, new_tokens] token ids (pad after each row's last token)."""
        dev = ids.device
        B = ids.shape[0]
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        shared = None
        if prefix > 0:
            pre = self.model(input_ids=ids[:1, :prefix], use_cache=True, logits_to_keep=1).past_key_values
            shared = [(la.keys, la.values) for la in pre.layers]
        cache = _RowCache(B, ids.shape[1] - prefix + new_tokens + self.lookup_tokens + 1, shared)
        prompt_cols = mask[:, prefix:].bool()       # the row's own prompt columns of the cache it attends to
        width0 = prompt_cols.shape[1]
        col = torch.arange(width0, device=dev)
        allowed = (col[None, :] <= col[:, None])[None] & prompt_cols[:, None, :]
        allowed |= torch.eye(width0, dtype=torch.bool, device=dev)[None]   # padding sees itself
        token = _SHARED_PREFIX.set(cache)
        try:
            out = self.model(input_ids=ids[:, prefix:], attention_mask=self._mask_4d(allowed[:, None]),
                             position_ids=pos[:, prefix:], past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.lens[:] = [width0] * B
            return self._decode_rows(out, cache, ids, mask, prompt_cols, new_tokens, stop)
        finally:
            _SHARED_PREFIX.reset(token)

    def _decode_rows(self, out, cache, ids, mask, prompt_cols, new_tokens: int, stop: list[str]):
        """_greedy_rows after the prompt (`out`: its forward; `cache` holds it): emit, stop, drop rows, draft,
        verify, until every row is done."""
        dev = ids.device
        B, width0 = ids.shape[0], prompt_cols.shape[1]
        K, pad = self.lookup_tokens, self._pad_id()
        eos = self.model.generation_config.eos_token_id
        eos = set([eos] if isinstance(eos, int) else (eos or []))
        rowstop = _RowStop(self.tokenizer, stop, 0, B)
        gen = torch.full((B, new_tokens), pad, dtype=torch.long, device=dev)
        rows = list(range(B))                       # the original row of each live row
        n_real = mask.sum(-1).tolist()              # real tokens per live row: its next token's position id
        drafts = [_Lookup(ids[b][mask[b].bool()].tolist()) for b in range(B)]
        count = [0] * B                             # tokens generated per original row
        emitted = [[t] for t in out.logits[:, -1].float().argmax(-1).tolist()]  # per live row: new, not in gen
        while True:
            done = []
            for i, r in enumerate(rows):
                new, stopped = emitted[i][: new_tokens - count[r]], False
                for k, t in enumerate(new):
                    if t in eos:
                        new, stopped = new[: k + 1], True
                        break
                gen[r, count[r]:count[r] + len(new)] = torch.tensor(new, dtype=torch.long)
                count[r] += len(new)
                drafts[r].extend(new)
                tail = gen[r, max(0, count[r] - len(new) - rowstop.lookback):count[r]]
                done.append(stopped or count[r] >= new_tokens or rowstop.text_done(tail))
            if all(done):
                break
            if any(done):
                keep = [i for i, d in enumerate(done) if not d]
                cache.select(keep)
                rows, n_real, emitted = [rows[i] for i in keep], [n_real[i] for i in keep], [emitted[i] for i in keep]
                prompt_cols = prompt_cols[keep]
            # each live row: its newest token (not yet in the cache), then its draft
            feed = [[e[-1]] + drafts[r].draft(K) for e, r in zip(emitted, rows)]
            q = max(len(f) for f in feed)
            inp = torch.tensor([f + [pad] * (q - len(f)) for f in feed], dtype=torch.long, device=dev)
            lens = torch.tensor(cache.lens, device=dev)
            col = torch.arange(int(lens.max()) + q, device=dev)
            # query j of row r sees its prompt's real columns, its tokens since, and feed[r][:j + 1]
            allowed = col[None, None, :] <= lens[:, None, None] + torch.arange(q, device=dev)[None, :, None]
            allowed[:, :, :width0] &= prompt_cols[:, None, :]
            position = torch.tensor(n_real, device=dev)[:, None] + torch.arange(q, device=dev)[None, :]
            out = self.model(input_ids=inp, attention_mask=self._mask_4d(allowed[:, None]).to(dev),
                             position_ids=position, past_key_values=cache, use_cache=True)
            best = out.logits.float().argmax(-1).tolist()
            for i, f in enumerate(feed):
                m = 0
                while m < len(f) - 1 and f[m + 1] == best[i][m]:
                    m += 1
                emitted[i] = best[i][: m + 1]     # the accepted drafts (each = the argmax) and the token after
                cache.lens[i] += m + 1            # the fed token and the accepted drafts stay in the cache
                n_real[i] += m + 1
        return gen


class _Lookup:
    """A row's tokens so far, indexed by their 3-grams: draft(k) = the k tokens that followed the most recent
    earlier occurrence of the row's last 3 tokens (none when those did not occur before)."""

    N = 3

    def __init__(self, tokens: list[int]):
        self.tokens: list[int] = []
        self.after: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for t in tokens:
            if len(self.tokens) >= self.N:
                self.after[tuple(self.tokens[-self.N:])] = len(self.tokens)
            self.tokens.append(t)

    def draft(self, k: int) -> list[int]:
        if k <= 0 or len(self.tokens) < self.N:
            return []
        j = self.after.get(tuple(self.tokens[-self.N:]))
        return [] if j is None else self.tokens[j:j + k]


class _RowLayer(DynamicLayer):
    """One layer of a _RowCache: keys/values in a buffer allocated (zeroed) at the first update for the whole
    generation, where row r writes its new tokens at its own length lens[r] (the cache's list, shared by all
    layers). A rejected draft is simply overwritten later, and no step copies the cache (DynamicLayer
    concatenates: a copy of the whole cache per step, on a CPU most of a decoding step's cost). Attention reads
    the first max(lens) + new positions; the caller's 4D mask says which of them a row sees."""

    def __init__(self, owner: "_RowCache"):
        super().__init__()
        self.owner = owner

    def update(self, key_states, value_states, *args, **kwargs):
        lens, cap = self.owner.lens, self.owner.capacity
        if not self.is_initialized:
            b, h, _, d = key_states.shape
            self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
            # zeros, not empty: a row's mask hides columns it never wrote, but 0 x NaN garbage would be NaN
            self.kbuf = key_states.new_zeros((b, h, cap, d))
            self.vbuf = value_states.new_zeros((b, value_states.shape[1], cap, value_states.shape[3]))
        q, top = key_states.shape[-2], max(lens)
        if top + q > cap:
            raise RuntimeError(f"generation cache buffer full ({cap} positions)")
        if min(lens) == top:
            self.kbuf[:, :, top:top + q], self.vbuf[:, :, top:top + q] = key_states, value_states
        else:  # row r's positions lens[r] .. lens[r] + q - 1, in one indexed write per tensor
            r = torch.arange(len(lens), device=self.device)[:, None]
            at = torch.tensor(lens, device=self.device)[:, None] + torch.arange(q, device=self.device)
            self.kbuf.transpose(1, 2)[r, at] = key_states.transpose(1, 2)
            self.vbuf.transpose(1, 2)[r, at] = value_states.transpose(1, 2)
        self.keys, self.values = self.kbuf[:, :, :top + q], self.vbuf[:, :, :top + q]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return max(self.owner.lens)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.kbuf, self.vbuf = self.kbuf[indices], self.vbuf[indices]


class _RowCache(DynamicCache):
    """The KV cache of ftc-hf's greedy loop: per-row lengths `lens` (advanced by the caller after a forward), room
    for `capacity` positions per row, and optionally `shared`: per layer the (keys, values) [1, kv heads, P, d]
    of a prefix every row starts with, kept once (gqa_sdpa attends to it; not part of the row buffers)."""

    def __init__(self, rows: int, capacity: int, shared: list | None = None):
        super().__init__()
        self.lens = [0] * rows
        self.capacity = capacity
        self.shared = shared
        self.layers = []

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        while len(self.layers) <= layer_idx:
            self.layers.append(_RowLayer(self))
        return self.layers[layer_idx].update(key_states, value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.lens)

    def select(self, keep: list[int]) -> None:
        """Keep only the live rows `keep` (indices, in order)."""
        self.lens[:] = [self.lens[i] for i in keep]
        idx = torch.tensor(keep, device=self.layers[0].kbuf.device)
        for la in self.layers:
            la.batch_select_indices(idx)


# generation_config fields that make generate() add a logits processor (greedy would then not be a plain argmax)
_PROCESSOR_DEFAULTS = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                       "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "min_length": 0,
                       "min_new_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
                       "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None,
                       "exponential_decay_length_penalty": None, "renormalize_logits": False,
                       "diversity_penalty": 0.0, "num_beams": 1, "guidance_scale": None,
                       "watermarking_config": None}


def _plain_greedy(gc) -> bool:
    return all(getattr(gc, k, d) in (d, None) for k, d in _PROCESSOR_DEFAULTS.items())


GQA_SDPA = "ftc_gqa_sdpa"
# the _RowCache whose shared prefix gqa_sdpa attends to (set by ftc-hf's greedy loop around its forwards)
_SHARED_PREFIX: contextvars.ContextVar = contextvars.ContextVar("ftc_shared_prefix", default=None)


def gqa_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
             **kwargs):
    """transformers' sdpa attention, with grouped-query attention left to torch (enable_gqa) in every case.
    transformers' own sdpa path copies every key/value head n_rep times (repeat_kv) whenever a mask is given and
    more than one query token is fed: on a CPU that copy of the whole KV cache, per layer and forward, costs more
    than the attention itself (ftc-hf always passes a mask: packed scoring, drafts). Same result: torch computes
    the same sums over the same keys (bitwise equal in our measurements).
    While ftc-hf's greedy loop runs with a shared prefix (_SHARED_PREFIX), `key`/`value` are each row's own
    tokens and the prefix's keys/values are kept once: see _prefix_attention."""
    cache = _SHARED_PREFIX.get()
    if cache is not None and cache.shared is not None:
        pk, pv = cache.shared[module.layer_idx]
        return _prefix_attention(query, pk, pv, key, value, attention_mask, scaling), None
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = query.shape[2] > 1 and attention_mask is None and is_causal
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, is_causal=is_causal,
                                         enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def _prefix_attention(query, pk, pv, key, value, mask, scale):
    """Attention of `query` [rows, heads, q, d] over a prefix every row sees in full (pk/pv [1, kv heads, P, d],
    stored once) followed by each row's own keys (key/value [rows, kv heads, S, d], boolean `mask` [rows, 1, q,
    S]): two attention calls, the prefix one for all rows' queries at once, merged by their log-sum-exps.
    Equal to one attention over the concatenated keys up to float rounding (tests/test_fastlm.py)."""
    R, H, q, d = query.shape
    hk = key.shape[1]
    rep = H // hk
    qg = query.reshape(R, hk, rep * q, d)                 # query heads of one key/value head side by side
    o1, l1 = _attention_lse(qg.permute(1, 0, 2, 3).reshape(1, hk, R * rep * q, d), pk, pv, None, scale)
    o1 = o1.reshape(hk, R, rep * q, d).transpose(0, 1)
    l1 = l1.reshape(hk, R, rep * q).transpose(0, 1)
    m = mask[:, :, None].expand(R, 1, rep, q, mask.shape[-1]).reshape(R, 1, rep * q, mask.shape[-1])
    bias = torch.zeros(m.shape, dtype=query.dtype, device=query.device).masked_fill_(~m, float("-inf"))
    o2, l2 = _attention_lse(qg, key, value, bias, scale)
    lse = torch.logaddexp(l1, l2)
    out = o1 * (l1 - lse).exp()[..., None].to(o1.dtype) + o2 * (l2 - lse).exp()[..., None].to(o2.dtype)
    return out.reshape(R, H, q, d).transpose(1, 2).contiguous()


def _attention_lse(q, k, v, bias, scale, flash: bool | None = None):
    """softmax(q k^T * scale + bias) v and the log-sum-exp of each query's scores: torch's CPU flash-attention
    kernel on a CPU (flash None), the plain computation elsewhere."""
    if flash if flash is not None else q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=bias,
                                                                             scale=scale)[:2]
        return out, lse
    s = (q @ k.transpose(-1, -2)).float() * scale
    if bias is not None:
        s = s + bias
    lse = torch.logsumexp(s, dim=-1)
    return ((s - lse[..., None]).exp().to(v.dtype) @ v), lse


class _gqa_attention:
    """Within the block, a model that uses sdpa uses gqa_sdpa (registered with transformers' AttentionInterface,
    with sdpa's mask function); anything else is left as is."""

    def __init__(self, model):
        self.config = model.config
        self.switched = getattr(self.config, "_attn_implementation", None) == "sdpa"

    def __enter__(self) -> bool:
        if self.switched:
            from transformers import AttentionInterface
            from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

            AttentionInterface.register(GQA_SDPA, gqa_sdpa)
            AttentionMaskInterface.register(GQA_SDPA, sdpa_mask)
            self.config._attn_implementation = GQA_SDPA
        return self.switched

    def __exit__(self, *exc):
        if self.switched:
            self.config._attn_implementation = "sdpa"


class _head_only_at:
    """Within the block, the model's output projection (vocabulary logits) sees only the hidden states at `pairs`
    (rows, positions after logits_to_keep): [1, needed, hidden] instead of [rows, kept positions, hidden]. The
    kept positions are the union over rows, so without this the projection also runs where no row reads a
    log-prob. `as` gives whether the hook was placed (a model without get_output_embeddings: the plain path)."""

    def __init__(self, model, pairs):
        self.head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.pairs, self.handle = pairs, None

    def __enter__(self) -> bool:
        if self.head is not None:
            self.handle = self.head.register_forward_pre_hook(
                lambda _, args: (args[0][self.pairs][None], *args[1:]))
        return self.handle is not None

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()


BATCH_MIN_TOKENS = 768   # log-likelihood batches: real tokens a batch gets before PAD_MIN_SHARE applies
PAD_MIN_SHARE = 0.8      # ... then a row shorter than this share of the batch's longest starts a new batch
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
        self.done |= self.rows_done(input_ids[:, self.start:]).cpu()
        return self.done.clone().to(input_ids.device)

    def text_done(self, tokens: torch.Tensor) -> bool:
        """Whether these generated tokens (one row's newest ones) hold a stop string."""
        text = self.tokenizer.decode(tokens)
        return any(s in text for s in self.stops)

    def rows_done(self, generated: torch.Tensor) -> torch.Tensor:
        """Which rows' generated tokens (so far) hold a stop string in their last `lookback` tokens."""
        return torch.tensor([self.text_done(g[-self.lookback:]) for g in generated], dtype=torch.bool,
                            device=generated.device)
