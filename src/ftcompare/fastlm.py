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
  repeated per row. Vocabulary logits are computed only at positions whose log-probability is read.
- generate_until: the prompts of a batch share a token prefix (the few-shot examples). It is prefilled once,
  its KV cache copied to every row, and each row's own suffix follows after a masked gap; stop strings are
  checked per row (stock checks them per batch). Plain greedy decoding runs in our own loop, which drops a row
  from the batch (its KV cache rows too) as soon as it stops: generate() keeps computing finished rows until
  the last one stops, and on GSM8K a few rows run to max_gen_toks while most stop within ~60 tokens.
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
from transformers.cache_utils import DynamicCache, DynamicLayer


@register_model("ftc-hf")
class FtcHF(HFLM):
    """HFLM that scores each context once and shares few-shot prefixes in generation.

    `max_group_tokens` caps the tokens of one log-likelihood forward (rows x padded length): larger is faster
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
        # one packed row per context: the context, then every continuation but its last token (see _score_packed);
        # longest rows first (as stock: out-of-memory shows at once), batches of `bs` contexts whose rows x padded
        # length stays under max_group_tokens, so padding within a batch is small
        packed = {c: len(c) + sum(len(conts[i]) - 1 for i in m) for c, m in groups.items()}
        order = sorted(groups, key=lambda c: (-packed[c], c))
        bs = override_bs or (self.batch_size if isinstance(self.batch_size, int) else 8)
        answers: list[tuple[float, bool] | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=(disable_tqdm or self.rank != 0),
                    desc="Running loglikelihood requests (ftc-hf)")
        with torch.inference_mode():
            start = 0
            while start < len(order):
                n = 1
                while (n < bs and start + n < len(order)
                       and (n + 1) * packed[order[start]] <= max(self.max_group_tokens, packed[order[start]])):
                    n += 1
                batch = order[start:start + n]
                start += n
                for i, ans in self._score_packed(batch, [groups[c] for c in batch], conts):
                    answers[i] = ans
                    req_str = requests[i][0]
                    if req_str is not None:
                        self.cache_hook.add_partial("loglikelihood", req_str, ans)
                    pbar.update(1)
        pbar.close()
        return answers

    def _score_packed(self, ctxs: list[tuple[int, ...]], members: list[list[int]], conts: list[list[int]]):
        """One forward for a batch of contexts and all their continuations. Row r holds context r, then each of
        its continuations' tokens but the last (the last is only predicted), one after the other. An attention
        mask lets each continuation token see its context and the earlier tokens of its own continuation only,
        and its position ids continue from the context's end, so each token's log-probability is the one a
        separate (context + continuation) row gives. A token prefix that all contexts share (few-shot examples)
        is prefilled once and its KV cache repeated per row. Vocabulary logits are computed only at positions
        some log-probability needs. -> [(request index, (sum of log-probs, is_greedy))]."""
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
        if shared:
            allowed = torch.cat([torch.ones((B, L, shared), dtype=torch.bool), allowed], dim=2)
        mask = self._mask_4d(allowed[:, None]).to(dev)
        kw = {}
        if shared:
            pre = self.model(input_ids=torch.tensor([ctxs[0][:shared]], device=dev),
                             position_ids=torch.arange(shared, device=dev)[None], use_cache=True, logits_to_keep=1)
            cache = pre.past_key_values
            cache.batch_repeat_interleave(B)
            kw["past_key_values"] = cache
        rows = torch.tensor([r for r, _, _ in need], device=dev)
        at = torch.tensor([q for _, q, _ in need], device=dev)
        tgt = torch.tensor([t for _, _, t in need], device=dev)
        keep = torch.unique(at)                               # positions where some row reads a log-prob
        pairs = (rows, torch.searchsorted(keep, at))           # ... and the (row, position) pairs read
        with _head_only_at(self.model, pairs) as picked:
            logits = self.model(input_ids=ids.to(dev), attention_mask=mask, position_ids=pos.to(dev),
                                use_cache=bool(shared), logits_to_keep=keep, **kw).logits
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
        if getattr(self.model.config, "_attn_implementation", "eager") == "sdpa":
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
        kw = {}
        if prefix > 0:
            with torch.inference_mode():
                pre = self.model(input_ids=ids[:1, :prefix], use_cache=True, logits_to_keep=1)
            cache = pre.past_key_values
            if B > 1:
                cache.batch_repeat_interleave(B)
            kw["past_key_values"] = cache
        if set(generation_kwargs) <= {"do_sample"} and _plain_greedy(self.model.generation_config):
            # plain greedy (no logits processor would run): our loop, which drops finished rows
            gen = self._greedy_rows(ids, mask, prefix, kw.get("past_key_values"), new_tokens, stop, pad)
        else:
            stopping = StoppingCriteriaList([_RowStop(self.tokenizer, stop, ids.shape[1], B)])
            out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                      stopping_criteria=stopping, pad_token_id=pad, use_cache=True,
                                      **kw, **generation_kwargs)
            gen = out[:, ids.shape[1]:]
        # lm-eval slices the output at the width of its own (left-padded) context
        head = torch.full((B, width), pad, dtype=torch.long, device=dev)
        return torch.cat([head, gen], dim=1)

    @torch.inference_mode()
    def _greedy_rows(self, ids, mask, prefix: int, cache, new_tokens: int, stop: list[str], pad: int):
        """Greedy decoding as `generate(do_sample=False)` with per-row stops, but a row that has stopped (stop
        string or EOS) leaves the batch: its KV cache rows are dropped and no further step computes it. HF's
        generate keeps computing finished rows (emitting pad) until the last row stops; on a CPU each step's cost
        grows with the rows and their KV caches, and a few long rows would keep all of them alive.
        Same tokens as generate: argmax of fp32 logits, position ids from the attention mask as generate derives
        them, pad after a row's end. -> [rows, generated steps] token ids."""
        dev = ids.device
        B = ids.shape[0]
        eos = self.model.generation_config.eos_token_id
        eos = set([eos] if isinstance(eos, int) else (eos or []))
        rowstop = _RowStop(self.tokenizer, stop, 0, B)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        out = self.model(input_ids=ids[:, prefix:], attention_mask=mask, position_ids=pos[:, prefix:],
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = _preallocate(out.past_key_values, new_tokens)
        nxt = out.logits[:, -1].float().argmax(-1)
        gen = torch.full((B, new_tokens), pad, dtype=torch.long, device=dev)
        rows = torch.arange(B, device=dev)          # the original row of each live row
        n_real = mask.sum(-1)                       # real tokens per live row: the next token's position
        steps = 0
        for step in range(new_tokens):
            gen[rows, step] = nxt
            steps = step + 1
            done = torch.tensor([int(t) in eos for t in nxt.tolist()], dtype=torch.bool, device=dev)
            done |= rowstop.rows_done(gen[rows, :steps])
            if step == new_tokens - 1 or bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, nxt, mask, n_real = rows[keep], nxt[keep], mask[keep], n_real[keep]
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            out = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=n_real[:, None],
                             past_key_values=cache, use_cache=True)
            n_real = n_real + 1
            nxt = out.logits[:, -1].float().argmax(-1)
        return gen[:, :steps]


class _BufferLayer(DynamicLayer):
    """A DynamicLayer whose keys/values live in a buffer allocated once for the whole generation: a step writes its
    token in place and attention reads a view, where DynamicLayer concatenates (copies the whole cache) every step.
    On a CPU that copy, not the arithmetic, is most of a decoding step's cost once rows x cache length is large."""

    @classmethod
    def wrap(cls, layer: DynamicLayer, extra: int) -> "_BufferLayer":
        new = cls()
        new.dtype, new.device, new.is_initialized = layer.keys.dtype, layer.keys.device, True
        b, h, n, d = layer.keys.shape
        new.kbuf = layer.keys.new_empty((b, h, n + extra, d))
        new.vbuf = layer.values.new_empty((b, layer.values.shape[1], n + extra, layer.values.shape[3]))
        new.kbuf[:, :, :n], new.vbuf[:, :, :n] = layer.keys, layer.values
        new.n = n
        new.keys, new.values = new.kbuf[:, :, :n], new.vbuf[:, :, :n]
        return new

    def update(self, key_states, value_states, *args, **kwargs):
        q = key_states.shape[-2]
        if self.n + q > self.kbuf.shape[-2]:
            raise RuntimeError(f"generation cache buffer full ({self.kbuf.shape[-2]} positions)")
        self.kbuf[:, :, self.n:self.n + q] = key_states
        self.vbuf[:, :, self.n:self.n + q] = value_states
        self.n += q
        self.keys, self.values = self.kbuf[:, :, :self.n], self.vbuf[:, :, :self.n]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.kbuf, self.vbuf = self.kbuf[indices], self.vbuf[indices]
        self.keys, self.values = self.kbuf[:, :, :self.n], self.vbuf[:, :, :self.n]


def _preallocate(cache, extra: int):
    """`cache` (a DynamicCache) with each full-attention layer moved into a buffer `extra` positions longer."""
    if type(cache) is DynamicCache and all(type(la) is DynamicLayer for la in cache.layers):
        cache.layers = [_BufferLayer.wrap(la, extra) for la in cache.layers]
    return cache


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

    def rows_done(self, generated: torch.Tensor) -> torch.Tensor:
        """Which rows' generated tokens (so far) hold a stop string in their last `lookback` tokens."""
        texts = self.tokenizer.batch_decode(generated[:, -self.lookback:])
        return torch.tensor([any(s in t for s in self.stops) for t in texts], dtype=torch.bool,
                            device=generated.device)
