"""Chat evaluation on the tiny model: the generation tasks (ftcompare.chat_eval: replies, per-item metrics,
stop detection, reproducibility, lm-eval-shaped records) and the lm-eval task ftc_chitchat (bits per byte of
the reference reply) through the evaluate stage, with the generation tasks in the same results.json."""
from __future__ import annotations

import json
import math

import pytest

from conftest import add_tiny_model_config
from ftcompare import chat, chat_eval, cli, config, paths
from ftcompare.config import GenerationSettings

METRIC_KEYS = set(chat_eval.METRICS)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The tiny llama and its ChatML tokenizer, prepared as evaluate prepares a chat model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    chat.prepare_tokenizer(tok, config.ModelConfig(alias="tiny", source="local", path=str(tiny_model_dir),
                                                   lora_target_modules=["q_proj"]))
    return model, tok


def _gen(**kw) -> GenerationSettings:
    base = dict(data="chitchat", n_prompts=5, max_new_tokens=6, batch_size=2, seed=7,
                settings={"greedy": {"do_sample": False}, "sampled": {"do_sample": True, "temperature": 0.7, "top_p": 0.9}})
    return GenerationSettings(**{**base, **kw})


# --------------------------------------------------------------------------------------------------
# Metrics by hand
# --------------------------------------------------------------------------------------------------
def test_metrics_on_fixed_strings():
    assert chat_eval.distinct_n("a a b", 1) == pytest.approx(2 / 3)
    assert chat_eval.distinct_n("a a b", 2) == 1.0            # (a a), (a b)
    assert chat_eval.distinct_n("A a a", 2) == 0.5            # lowercased: (a a) twice
    assert chat_eval.distinct_n("a", 2) == 0.0 and chat_eval.distinct_n("", 1) == 0.0  # no n-gram: 0
    assert chat_eval.corpus_distinct_n(["a b", "a b"], 2) == 0.5
    assert chat_eval.corpus_distinct_n(["a b", "b c"], 1) == pytest.approx(3 / 4)
    same = "the cat sat on the mat today"
    m = chat_eval.text_metrics(same, same)
    assert m["chrf"] == pytest.approx(100) and m["bleu"] == pytest.approx(100) and m["rougeL"] == pytest.approx(100)
    assert m["distinct_1"] == pytest.approx(6 / 7) and m["distinct_2"] == 1.0
    other = chat_eval.text_metrics("completely different words", same)
    assert other["rougeL"] == 0.0 and other["bleu"] < 1 and 0 <= other["chrf"] < 30
    # ROUGE-L F1: LCS "the cat" of 2 / 3 and 2 / 7 words
    assert chat_eval.rouge_l("the cat ran", same) == pytest.approx(100 * 2 * (2 / 3) * (2 / 7) / (2 / 3 + 2 / 7))
    mean, se = chat_eval.mean_and_stderr([1.0, 0.0, 1.0, 1.0])
    assert mean == 0.75 and se == pytest.approx(math.sqrt(0.75 * 0.25 / 3))  # = lm-eval's for a 0/1 metric
    assert chat_eval.mean_and_stderr([2.0]) == (2.0, None)
    assert chat_eval.generate_kwargs({"do_sample": False}, 9) == {"max_new_tokens": 9, "do_sample": False,
                                                                  "repetition_penalty": 1.0}
    assert chat_eval.generate_kwargs({"do_sample": True, "temperature": 0.5}, 9)["top_k"] == 0  # not transformers' 50


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------
def test_run_generation_schema_stop_and_reproducibility(tiny, monkeypatch):
    from ftcompare.evaluate import sample_lines

    model, tok = tiny
    gen = _gen()
    data_cfg = config.load("data", "chitchat")
    entries, samples, block = chat_eval.run_generation(model, tok, gen, data_cfg)
    held_out = chat_eval.held_out(data_cfg)
    tasks = ["ftc_chat_gen_greedy", "ftc_chat_gen_sampled"]
    assert list(samples) == tasks == list(block)
    for key in ("results", "n-samples", "n-shot", "versions", "higher_is_better", "configs"):
        assert list(entries[key]) == tasks
    for t in tasks:
        recs = samples[t]
        assert [r["doc_id"] for r in recs] == list(range(5))
        for r, doc in zip(recs, held_out):
            assert r["doc"] == doc and r["target"] == doc["reference"] == r["doc"]["reference"]
            prompt, kwargs = r["arguments"][0]
            assert prompt == chat.render(tok, doc["messages"], add_generation_prompt=True)
            assert kwargs["max_new_tokens"] == 6 and kwargs["until"] == ["<|im_end|>"]
            assert set(r["metrics"]) == METRIC_KEYS and all(isinstance(r[m], float) for m in METRIC_KEYS)
            assert r["resps"] == [[r["filtered_resps"][0]]] and r["filter"] == "none"
            assert r["doc_hash"] == chat_eval.sha256(json.dumps(doc, sort_keys=True))
            assert r["prompt_hash"] == chat_eval.sha256(prompt) and r["target_hash"] == chat_eval.sha256(doc["reference"])
            # a random tiny model does not say <|im_end|> within 6 tokens: not stopped, every token counted
            assert r["stopped"] == 0.0 and r["length"] == 6.0 and r["n_new_tokens"] == 6
        res = entries["results"][t]
        assert res["alias"] == t and res["stopped,none"] == 0.0 and res["length,none"] == 6.0
        assert res["chrf,none"] == pytest.approx(sum(r["chrf"] for r in recs) / 5)
        assert res["chrf_stderr,none"] == pytest.approx(chat_eval.mean_and_stderr([r["chrf"] for r in recs])[1])
        assert entries["n-samples"][t] == {"original": len(held_out), "effective": 5}
        assert entries["higher_is_better"][t]["length"] is None and entries["higher_is_better"][t]["chrf"] is True
        cfg = entries["configs"][t]
        assert cfg["metadata"]["upstream_task"] == "ftc_chat_generation" and cfg["output_type"] == "generate_until"
        b = block[t]
        assert b["new_tokens"] == 30 and b["end_of_turn"] == "<|im_end|>" and b["seconds"] >= 0
        assert b["corpus_distinct_1"] == chat_eval.corpus_distinct_n([r["resps"][0][0] for r in recs], 1)
    assert block["ftc_chat_gen_sampled"]["settings"] == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}

    # the same settings twice: the same replies, records and hashes, greedy and (seeded) sampled
    _, again, _ = chat_eval.run_generation(model, tok, gen, data_cfg)
    for t in tasks:
        assert sample_lines(again[t]) == sample_lines(samples[t])
    assert [r["resps"] for r in samples["ftc_chat_gen_greedy"]] != [r["resps"] for r in samples["ftc_chat_gen_sampled"]]

    # stop detection: make the first greedy token of prompt 0 the end-of-turn token
    enc = tok(samples["ftc_chat_gen_greedy"][0]["arguments"][0][0], return_tensors="pt", add_special_tokens=False)
    first = int(model.generate(**enc, max_new_tokens=1, do_sample=False, pad_token_id=tok.pad_token_id)[0, -1])
    monkeypatch.setattr(chat_eval.chat, "stop_token_ids", lambda t: [first])
    _, stopped, _ = chat_eval.run_generation(model, tok, _gen(settings={"greedy": {"do_sample": False}}, n_prompts=2),
                                             data_cfg)
    r0 = stopped["ftc_chat_gen_greedy"][0]
    assert r0["stopped"] == 1.0 and r0["length"] == 0.0 and r0["n_new_tokens"] == 1 and r0["resps"] == [[""]]


# --------------------------------------------------------------------------------------------------
# Through the evaluate stage: ftc_chitchat (lm-eval) + a generation task, one results.json
# --------------------------------------------------------------------------------------------------
EXPERIMENT = """name: chattest
models: [tiny]
methods: [full, lora, qlora]
data: chitchat
evaluation:
  tasks: [ftc_chitchat]
  limit: {ftc_chitchat: 300}
  batch_size: 4
  bootstrap_iters: 0
  generation:
    data: chitchat
    n_prompts: 60
    max_new_tokens: 4
    batch_size: 4
    settings:
      greedy: {do_sample: false}
"""


def test_chitchat_task_and_generation_through_evaluate(project, tiny_model_dir, tiny, capsys):
    from transformers import AutoTokenizer

    add_tiny_model_config(project, tiny_model_dir)
    (project / "configs" / "experiments" / "chattest.yaml").write_text(EXPERIMENT)
    # (the first 4 held-out conversations: the 5th reply is longer than the tiny model's 512 positions)
    args = ["evaluate", "--experiment", "chattest", "--model", "tiny", "--method", "base", "--limit", "4"]
    assert cli.main(args) == 0
    out = paths.eval_dir("chattest", "tiny", "base")
    res = json.loads((out / "results.json").read_text())
    ftc = res["ftcompare"]
    tasks = ["ftc_chitchat", "ftc_chat_gen_greedy"]
    assert ftc["tasks"] == tasks and ftc["n"] == {t: 4 for t in tasks} and set(ftc["seconds_per_task"]) == set(tasks)
    assert ftc["settings"]["generation"]["settings"] == {"ftc_chat_gen_greedy": {"do_sample": False}}
    assert ftc["generation"]["ftc_chat_gen_greedy"]["new_tokens"] == 16
    assert res["configs"]["ftc_chitchat"]["metadata"]["ftcompare_model"] == "tiny"
    assert "upstream_task" not in res["configs"]["ftc_chitchat"]["metadata"]
    assert res["higher_is_better"]["ftc_chitchat"] == {"reply_nll": False, "reply_bytes": False}
    assert res["results"]["ftc_chat_gen_greedy"]["stopped,none"] == 0.0

    # reply_nll per item = -loglikelihood, reply_bytes = the reference's UTF-8 bytes, as lm-eval logged them
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = [json.loads(line) for line in (out / "samples_ftc_chitchat.jsonl").read_text().splitlines()]
    assert [s["doc_id"] for s in samples] == list(range(4))
    values = []
    for s in samples:
        doc = s["doc"]
        ctx, cont = s["arguments"]["gen_args_0"]["arg_0"], s["arguments"]["gen_args_0"]["arg_1"]
        assert ctx == doc["context"] == chat.render(tok, doc["messages"], add_generation_prompt=True)
        assert cont == doc["reference"] + "<|im_end|>" and ctx.endswith("<|im_start|>assistant\n")
        ll = float(s["resps"][0][0][0])
        assert s["reply_nll"] == pytest.approx(-ll, rel=1e-12) and s["reply_nll"] > 0
        assert s["reply_bytes"] == len(doc["reference"].encode("utf-8"))
        values.append(s["reply_nll"])
        # the end-of-turn token is one token at the end of the scored continuation, as HFLM encodes it
        ids = tok(ctx + cont, add_special_tokens=False)["input_ids"]
        assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
        assert tok(ctx, add_special_tokens=False)["input_ids"] == ids[:len(tok(ctx, add_special_tokens=False)["input_ids"])]
    assert res["results"]["ftc_chitchat"]["reply_nll,none"] == pytest.approx(sum(values) / 4, rel=1e-12)
    # the ftc_chitchat documents are the generation prompts (same held-out order)
    gen = [json.loads(line) for line in (out / "samples_ftc_chat_gen_greedy.jsonl").read_text().splitlines()]
    assert [g["doc"]["id"] for g in gen] == [s["doc"]["id"] for s in samples]
    assert gen[0]["arguments"]["gen_args_0"]["arg_0"] == samples[0]["doc"]["context"]

    # a generation setting the experiment does not define: one line naming the valid tasks
    capsys.readouterr()
    assert cli.main([*args, "--tasks", "ftc_chat_gen_beam"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown generation task(s) ftc_chat_gen_beam" in err and "ftc_chat_gen_greedy" in err
    assert len(err.splitlines()) == 1

    # the generation settings are part of the evaluation's settings: editing them re-runs it
    from ftcompare.evaluate import build_plan, is_up_to_date

    plan = build_plan("chattest", "tiny", "base", limit=4)
    assert plan.chat and plan.lm_eval_tasks == ["ftc_chitchat"] and plan.generation_tasks == ["ftc_chat_gen_greedy"]
    assert is_up_to_date(plan)
    edited = EXPERIMENT.replace("max_new_tokens: 4", "max_new_tokens: 5")
    (project / "configs" / "experiments" / "chattest.yaml").write_text(edited)
    assert not is_up_to_date(build_plan("chattest", "tiny", "base", limit=4))
    assert is_up_to_date(build_plan("chattest", "tiny", "base", tasks=["ftc_chitchat"], limit=4)) is False  # other tasks
    # a non-chat experiment's settings carry no chat keys (their hash is what it was)
    assert not {"chat", "generation", "chat_code_sha256"} & set(build_plan("default", "tiny", "base").settings())


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(tiny):
    """Prompts of very different lengths, greedy: batches of 4 (left-padded) give the replies, stop flags and
    token counts of one prompt at a time, and of a plain generate() on the unpadded prompt."""
    import torch

    model, tok = tiny
    users = ["Hi", "How do I make a fire at the camp when the wood is wet and it keeps raining all day?",
             "A man is sitting on a roof.", "Tell me", "What do you think of the new bread recipe with oats, honey "
             "and a little salt, baked for forty minutes?", "ok"]
    prompts = [tok.apply_chat_template([{"role": "user", "content": u}], tokenize=False, add_generation_prompt=True)
               for u in users]
    lengths = {len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts}
    assert max(lengths) - min(lengths) > 20                                 # real padding in every batch
    kw = chat_eval.generate_kwargs({"do_sample": False}, 10)
    batched = chat_eval.generate_replies(model, tok, prompts, kw, batch_size=4, seed=0)
    single = chat_eval.generate_replies(model, tok, prompts, kw, batch_size=1, seed=0)
    assert batched == single
    assert sum(r["n_new_tokens"] for r in single) > len(prompts)             # not all empty replies
    stop_ids = chat.stop_token_ids(tok)
    for prompt, got in zip(prompts, batched):                                # an independent path: no padding
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            ids = model.generate(**enc, max_new_tokens=10, do_sample=False, eos_token_id=stop_ids,
                                 pad_token_id=tok.pad_token_id)[0, enc["input_ids"].shape[1]:].tolist()
        stop = next((i for i, t in enumerate(ids) if t in stop_ids), None)
        assert got["reply"] == tok.decode(ids if stop is None else ids[:stop], skip_special_tokens=True)
