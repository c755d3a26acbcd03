"""ftc-hf (ftcompare.fastlm) returns what stock lm-eval HFLM returns: every log-likelihood within 1e-4, the
same is-greedy flags, the same generations; on crafted requests and on the project's own lm-eval tasks."""
from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def lms(tiny_model_dir):
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftcompare.fastlm import FtcHF

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    # a random tiny model is nearly uniform: sharpen it so that greedy continuations and near-ties exist
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    stock = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=64)
    fast = FtcHF(pretrained=model, tokenizer=tok, batch_size=3, max_length=64, max_group_tokens=96)
    return stock, fast, model, tok


def _requests(model, vocab: int):
    """Contexts shared by several continuations (as HellaSwag), one-token continuations (as MMLU), greedy
    continuations (is_greedy True), and contexts longer than max_length (left truncation)."""
    rng = random.Random(0)
    reqs = []
    for c in range(7):
        ctx = [rng.randrange(3, vocab) for _ in range(rng.choice([1, 5, 17, 40, 63, 90]))]
        conts = [[rng.randrange(3, vocab) for _ in range(rng.choice([1, 2, 6, 12]))] for _ in range(4)]
        with torch.no_grad():  # the model's own greedy continuation of this context (is_greedy must be True)
            ids = torch.tensor([ctx[-63:]])
            greedy = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
        conts.append(greedy.tolist())
        conts.append([rng.randrange(3, vocab)])  # one-token continuation
        reqs += [((f"c{c}", f"k{k}"), ctx, cont) for k, cont in enumerate(conts)]
    rng.shuffle(reqs)
    return reqs


def test_loglikelihood_matches_stock(lms):
    stock, fast, model, tok = lms
    reqs = _requests(model, len(tok))
    a = stock._loglikelihood_tokens(reqs, disable_tqdm=True)
    b = fast._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert len(a) == len(b) == len(reqs)
    diffs = [abs(x[0] - y[0]) for x, y in zip(a, b)]
    assert max(diffs) < 1e-4, max(diffs)
    assert [x[1] for x in a] == [y[1] for y in b]
    assert sum(x[1] for x in a) >= 5  # greedy continuations recognised (truncated contexts may lose it)
    assert len({round(x[0], 3) for x in a}) > len(reqs) // 2  # not a degenerate constant


def test_shared_prefix_loglikelihood_matches_stock(lms, monkeypatch):
    """Contexts that start with the same long token prefix (few-shot examples, as GSM8K's 8-shot prompt) are
    scored on top of one prefill of that prefix: the same numbers as stock, which prefills every row in full."""
    from lm_eval.models.huggingface import HFLM

    from ftcompare import fastlm

    _, _, model, tok = lms
    stock = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=256)
    fast = fastlm.FtcHF(pretrained=model, tokenizer=tok, batch_size=4, max_length=256, max_group_tokens=512)
    shared_lengths = []
    real = fastlm._common_prefix
    monkeypatch.setattr(fastlm, "_common_prefix", lambda seqs: shared_lengths.append(real(seqs)) or real(seqs))
    rng = random.Random(1)
    vocab = len(tok)
    prefix = [rng.randrange(3, vocab) for _ in range(fastlm.MIN_SHARED_PREFIX + 36)]
    reqs = []
    for c in range(9):
        ctx = prefix + [rng.randrange(3, vocab) for _ in range(rng.choice([1, 4, 11, 30]))]
        for k in range(3):
            cont = [rng.randrange(3, vocab) for _ in range(rng.choice([1, 3, 9]))]
            reqs.append(((f"c{c}", f"k{k}"), ctx, cont))
    a = stock._loglikelihood_tokens(reqs, disable_tqdm=True)
    b = fast._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert max(shared_lengths) >= len(prefix)  # the shared-prefix path ran
    assert max(abs(x[0] - y[0]) for x, y in zip(a, b)) < 1e-4
    assert [x[1] for x in a] == [y[1] for y in b]


def test_generation_matches_stock(lms):
    from lm_eval.api.instance import Instance

    stock, fast, model, tok = lms
    shots = "Q: the man walks to the store. A: he buys bread.\n\nQ: a woman is seen standing. A: she waves.\n\n"
    questions = ["a dog runs in the park", "people are playing", "he is cutting the", "the camera pans",
                 "she shows how to", "a boy rides"]
    gen_kwargs = {"until": ["Q:", "\n\n"], "do_sample": False, "max_gen_toks": 24}
    reqs = [Instance(request_type="generate_until", doc={}, arguments=(f"{shots}Q: {q}. A:", gen_kwargs), idx=0)
            for q in questions]
    a = stock.generate_until(reqs, disable_tqdm=True)
    fast.generation_batch_size = 4
    b = fast.generate_until(reqs, disable_tqdm=True)
    assert a == b
    assert any(len(x) > 0 for x in a)


@pytest.mark.parametrize("sharpen,lookup", [(40.0, 4), (3.0, 4), (3.0, 0)])
def test_greedy_drops_finished_rows_same_text(tiny_model_dir, sharpen, lookup):
    """ftc-hf's greedy loop drops a row once it stops (stop string or EOS) and feeds prompt-lookup drafts; the
    texts stay stock's. The prompts stop at different steps (one never stops before max_gen_toks), fewer rows
    are computed at the end, and with drafts some forwards advance rows by several tokens. A mildly sharpened
    model (x3) has close second choices, so a wrong position id, mask or accepted draft changes the text."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftcompare.fastlm import FtcHF

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    stock = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=128)
    fast = FtcHF(pretrained=model, tokenizer=tok, batch_size=3, max_length=128, lookup_tokens=lookup)
    shots = "Q: the man walks to the store. A: he buys bread.\n\nQ: a woman is seen standing. A: she waves.\n\n"
    questions = ["a dog runs in the park", "people are playing", "he is cutting the", "the camera pans",
                 "she shows how to", "a boy rides", "two men", "the", "a cat sleeps on a mat"]
    rows_seen, widths, lengths, drafted = [], [], set(), False
    orig = model.forward

    def counting(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        rows_seen.append(ids.shape[0])
        widths.append(ids.shape[1])
        return orig(*args, **kwargs)

    for until in (["Q:", "\n\n"], [" the", "."]):
        gen_kwargs = {"until": until, "do_sample": False, "max_gen_toks": 30}
        reqs = [Instance(request_type="generate_until", doc={}, arguments=(f"{shots}Q: {q}. A:", gen_kwargs),
                         idx=0) for q in questions]
        a = stock.generate_until(reqs, disable_tqdm=True)
        fast.generation_batch_size = len(questions)
        rows_seen.clear(), widths.clear()
        model.forward = counting
        try:
            b = fast.generate_until(reqs, disable_tqdm=True)
        finally:
            del model.forward
        assert a == b, until
        # rows left the batch as they stopped (the first forward is the shared prefix, one row)
        assert rows_seen[1] == len(questions) and min(rows_seen[1:]) < len(questions), rows_seen
        drafted |= max(widths[2:]) > 1      # forwards after the suffix prefill: 1 token per row, or drafts
        lengths |= {len(x) for x in a}
    assert len(lengths) > 3, lengths  # rows did stop at different points
    assert drafted == (lookup > 0)    # drafts were fed (and the texts stayed stock's)


def test_lookup_drafts_follow_the_latest_earlier_occurrence():
    from ftcompare.fastlm import _Lookup

    look = _Lookup([1, 2, 3, 9, 1, 2, 3, 7, 5])
    assert look.draft(4) == []                      # (3, 7, 5) did not occur before
    look.extend([1, 2, 3])
    assert look.draft(2) == [7, 5]                  # the latest earlier (1, 2, 3) was followed by 7, 5
    assert look.draft(9) == [7, 5, 1, 2, 3]         # up to the end of what is known
    assert _Lookup([4, 4, 4, 4]).draft(3) == [4]
    assert look.draft(0) == [] and _Lookup([1, 2]).draft(3) == []


def test_project_tasks_match_stock(lms, tiny_model_dir):
    """The default experiment's own tasks through lm_eval.simple_evaluate: same per-sample log-likelihoods
    (1e-4), same acc / acc_norm / exact_match per item."""
    import json

    import lm_eval
    from lm_eval.tasks import TaskManager

    from ftcompare import paths

    from lm_eval.models.huggingface import HFLM

    from ftcompare.fastlm import FtcHF

    from transformers import AutoModelForCausalLM

    _, _, _, tok = lms
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()  # not sharpened
    stock = HFLM(pretrained=model, tokenizer=tok, batch_size=8, max_length=512)
    fast = FtcHF(pretrained=model, tokenizer=tok, batch_size=8, max_length=512)
    tm = TaskManager(include_path=str(paths.ROOT / "lm-evaluation-harness" / "tasks"), include_defaults=False)
    tasks = {"ftc_hellaswag": 12, "ftc_mmlu_high_school_computer_science": 12, "ftc_gsm8k_bpb": 3}
    for task, limit in tasks.items():
        out = {}
        for name, lm in (("stock", stock), ("fast", fast)):
            r = lm_eval.simple_evaluate(model=lm, tasks=[task], limit=limit, log_samples=True, task_manager=tm,
                                        bootstrap_iters=0, random_seed=1, numpy_random_seed=1, torch_random_seed=1,
                                        fewshot_random_seed=1)
            out[name] = r["samples"][task]
        for s, f in zip(out["stock"], out["fast"], strict=True):
            ls = [float(x[0][0]) for x in s["resps"]]
            lf = [float(x[0][0]) for x in f["resps"]]
            assert max(abs(x - y) for x, y in zip(ls, lf)) < 1e-4, (task, s["doc_id"], ls, lf)
            for metric in [m for m in ("acc", "acc_norm") if m in s]:
                assert s[metric] == f[metric], (task, s["doc_id"], metric, json.dumps(ls), json.dumps(lf))
            if task == "ftc_gsm8k_bpb":  # the GSM8K gold solution after its 8-shot prompt: one long request
                assert abs(s["gold_bpb"] - f["gold_bpb"]) < 1e-5 and s["gold_bytes"] == f["gold_bytes"]
    # generation: the 8-shot GSM8K CoT prompts share their ~730-token prefix; same texts as stock
    gen = {}
    for name, lm in (("stock", stock), ("fast", fast)):
        r = lm_eval.simple_evaluate(model=lm, tasks=["ftc_gsm8k_cot"], limit=3, log_samples=True, task_manager=tm,
                                    bootstrap_iters=0, gen_kwargs="max_gen_toks=40", random_seed=1)
        gen[name] = [(s["resps"], s["exact_match"]) for s in r["samples"]["ftc_gsm8k_cot"]]
    assert gen["stock"] == gen["fast"]


def test_prefix_attention_equals_one_attention():
    """The shared-prefix attention (prefix once + each row's own keys, merged by log-sum-exp) against one sdpa over
    the concatenated keys, through the CPU flash kernel and through the plain computation other devices use."""
    import torch.nn.functional as F

    from ftcompare import fastlm

    g = torch.Generator().manual_seed(0)
    R, H, hk, q, d, P, S = 3, 6, 2, 4, 8, 11, 7
    query = torch.randn(R, q, H, d, generator=g).transpose(1, 2)
    pk, pv = torch.randn(1, hk, P, d, generator=g), torch.randn(1, hk, P, d, generator=g)
    key, value = torch.randn(R, hk, S, d, generator=g), torch.randn(R, hk, S, d, generator=g)
    mask = torch.rand(R, 1, q, S, generator=g) > 0.4
    mask[..., 0] = True
    full_mask = torch.cat([torch.ones(R, 1, q, P, dtype=torch.bool), mask], -1)
    ref = F.scaled_dot_product_attention(query, torch.cat([pk.expand(R, -1, -1, -1), key], 2),
                                         torch.cat([pv.expand(R, -1, -1, -1), value], 2), attn_mask=full_mask,
                                         scale=0.3, enable_gqa=True).transpose(1, 2)
    out = fastlm._prefix_attention(query, pk, pv, key, value, mask, 0.3)
    assert (out - ref).abs().max() < 1e-5
    bias = torch.zeros(R, 1, q, S).masked_fill(~mask, float("-inf"))
    q2 = query[:, :hk].contiguous()
    flash = fastlm._attention_lse(q2, key, value, bias, 0.3, flash=True)
    plain = fastlm._attention_lse(q2, key, value, bias, 0.3, flash=False)
    assert all((a - b).abs().max() < 1e-5 for a, b in zip(flash, plain))
