"""Chat evaluation on the tiny model: the generation tasks ftc_chat_gen_* (lm-eval generate_until tasks run by
ftc-hf through ftcompare.chat_eval: replies, per-item metrics, stop detection, reproducibility, the same replies
as generate_replies called directly) and the lm-eval task ftc_chitchat (bits per byte of the reference reply)
through the evaluate stage, with the generation tasks in the same results.json."""
from __future__ import annotations

import json
import math
import statistics

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
    assert chat_eval.generate_kwargs({"do_sample": False}, 9) == {"max_new_tokens": 9, "do_sample": False,
                                                                  "repetition_penalty": 1.0}
    assert chat_eval.generate_kwargs({"do_sample": True, "temperature": 0.5}, 9)["top_k"] == 0  # not transformers' 50


def test_reply_metrics_need_a_chat_reply():
    """process_results gets the reply's stop flag and length from the ChatReply ftc-hf returns; a plain string
    (any other lm-eval model) is refused in one line, never scored with made-up counts."""
    from ftcompare.errors import FtcError

    r = chat_eval.ChatReply("the cat sat", stopped=True, length=4, n_new_tokens=5)
    assert r == "the cat sat" and isinstance(r, str) and json.dumps([r]) == '["the cat sat"]'
    m = chat_eval.reply_metrics(r, "the cat sat")
    assert list(m) == list(chat_eval.METRICS) and m["stopped"] == 1.0 and m["length"] == 4.0 and m["chrf"] == 100.0
    assert chat_eval.reply_metrics(chat_eval.ChatReply("x", False, 6, 6), "y")["stopped"] == 0.0
    with pytest.raises(FtcError, match="need lm-eval model ftc-hf") as e:
        chat_eval.reply_metrics("the cat sat", "the cat sat")
    assert len(str(e.value).splitlines()) == 1
    gen = _gen()
    kw = chat_eval.task_generation_kwargs(gen.settings["sampled"], gen, "<|im_end|>")
    assert kw == {"max_new_tokens": 6, "do_sample": True, "repetition_penalty": 1.0, "temperature": 0.7, "top_p": 0.9,
                  "top_k": 0, "until": ["<|im_end|>"], "ftc_chat_reply": {"batch_size": 2, "seed": 7}}


# --------------------------------------------------------------------------------------------------
# The generation tasks through lm-eval (ftc-hf) = generate_replies called directly
# --------------------------------------------------------------------------------------------------
def _run_task(lm, tok, gen: GenerationSettings, task: str, limit: int, bootstrap_iters: int = 1000):
    """One ftc_chat_gen_* task through lm-eval's simple_evaluate, set up as the evaluate stage sets it up."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(paths.TASKS), include_defaults=False,
                     metadata={"ftcompare_model": "tiny", "data": gen.data})
    obj = tm.load([task])["tasks"][task]
    setting = gen.settings[task[len(config.GENERATION_TASK_PREFIX):]]
    obj.set_config(key="generation_kwargs", value=chat_eval.task_generation_kwargs(setting, gen, chat.end_of_turn(tok)))
    return lm_eval.simple_evaluate(model=lm, tasks=[obj], limit=limit, log_samples=True, task_manager=tm,
                                   bootstrap_iters=bootstrap_iters, random_seed=1, numpy_random_seed=1,
                                   torch_random_seed=1, fewshot_random_seed=1)


@pytest.fixture()
def tiny_project(project, tiny_model_dir):
    add_tiny_model_config(project, tiny_model_dir)
    return project


def test_generation_tasks_give_the_replies_of_generate_replies(tiny_project, tiny):
    """greedy and (seeded) sampled: the task's replies, stop flags, lengths and metrics are those of calling
    generate_replies on the same prompts with the same kwargs, batches and seed; lm-eval's mean / mean_stderr
    aggregate them; the ChatReply survives lm-eval's filter into process_results."""
    from ftcompare.fastlm import FtcHF

    model, tok = tiny
    lm = FtcHF(pretrained=model, tokenizer=tok, batch_size=4)
    gen = _gen()
    held_out = chat_eval.held_out(config.load("data", "chitchat"))[:5]
    prompts = [chat.render(tok, d["messages"], add_generation_prompt=True) for d in held_out]
    replies = {}
    for task in ("ftc_chat_gen_greedy", "ftc_chat_gen_sampled"):
        setting = gen.settings[task[len(config.GENERATION_TASK_PREFIX):]]
        lm.chat_reply_runs.clear()
        out = _run_task(lm, tok, gen, task, limit=5)
        direct = chat_eval.generate_replies(model, tok, prompts, chat_eval.generate_kwargs(setting, 6), 2, 7)
        recs = out["samples"][task]
        assert [r["doc_id"] for r in recs] == list(range(5))
        assert [r["prompts"] for r in lm.chat_reply_runs] == [5]   # one call: every prompt of the task
        for r, doc, prompt, d in zip(recs, held_out, prompts, direct):
            assert {k: r["doc"][k] for k in ("id", "messages", "reference")} == doc and r["target"] == doc["reference"]
            assert r["arguments"][0][0] == prompt == r["doc"]["context"]
            assert r["arguments"][0][1] == chat_eval.task_generation_kwargs(setting, gen, "<|im_end|>")
            reply = r["filtered_resps"][0]
            assert isinstance(reply, chat_eval.ChatReply) and r["resps"][0][0] is reply   # the object, unfiltered
            assert (str(reply), reply.stopped, reply.length, reply.n_new_tokens) == \
                (d["reply"], d["stopped"] == 1.0, d["length"], d["n_new_tokens"])
            want = {"stopped": d["stopped"], "length": d["length"], **chat_eval.text_metrics(d["reply"], doc["reference"])}
            assert r["metrics"] == list(chat_eval.METRICS) and {m: r[m] for m in chat_eval.METRICS} == want
            # a random tiny model does not say <|im_end|> within 6 tokens: not stopped, every token counted
            assert r["stopped"] == 0.0 and r["length"] == 6.0 and reply.n_new_tokens == 6
        res = out["results"][task]
        for m in chat_eval.METRICS:
            values = [r[m] for r in recs]
            assert res[f"{m},none"] == sum(values) / 5
            se = res[f"{m}_stderr,none"]
            assert se == pytest.approx(statistics.stdev(values) / math.sqrt(5), rel=1e-12, abs=1e-15)
        assert out["n-samples"][task] == {"original": len(chat_eval.held_out(config.load("data", "chitchat"))),
                                          "effective": 5}
        assert out["higher_is_better"][task]["length"] is None and out["higher_is_better"][task]["chrf"] is True
        replies[task] = [str(r["filtered_resps"][0]) for r in recs]
    assert replies["ftc_chat_gen_greedy"] != replies["ftc_chat_gen_sampled"]

    # the same task twice: the same replies and metrics, greedy and (seeded) sampled
    again = _run_task(lm, tok, gen, "ftc_chat_gen_sampled", limit=5)["samples"]["ftc_chat_gen_sampled"]
    assert [str(r["filtered_resps"][0]) for r in again] == replies["ftc_chat_gen_sampled"]


def test_stop_detection_through_the_task(tiny_project, tiny, monkeypatch):
    """The end-of-turn token as the first generated token: stopped, length 0, one new token, an empty reply."""
    from ftcompare.fastlm import FtcHF

    model, tok = tiny
    prompt = chat.render(tok, chat_eval.held_out(config.load("data", "chitchat"))[0]["messages"],
                         add_generation_prompt=True)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    first = int(model.generate(**enc, max_new_tokens=1, do_sample=False, pad_token_id=tok.pad_token_id)[0, -1])
    monkeypatch.setattr(chat_eval.chat, "stop_token_ids", lambda t: [first])
    out = _run_task(FtcHF(pretrained=model, tokenizer=tok, batch_size=4), tok,
                    _gen(settings={"greedy": {"do_sample": False}}), "ftc_chat_gen_greedy", limit=2)
    r0 = out["samples"]["ftc_chat_gen_greedy"][0]
    reply = r0["filtered_resps"][0]
    assert r0["stopped"] == 1.0 and r0["length"] == 0.0 and reply.n_new_tokens == 1 and reply == ""


def test_stock_hf_refuses_the_generation_tasks(tiny_project, tiny):
    """Stock HFLM has no chat-reply path: the task fails before generating anything (transformers rejects the
    ftc_chat_reply key), never scores replies without their token counts."""
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny
    with pytest.raises(ValueError, match="ftc_chat_reply"):
        _run_task(HFLM(pretrained=model, tokenizer=tok, batch_size=4), tok, _gen(), "ftc_chat_gen_greedy", limit=2)


def test_task_yamls_are_the_chat_experiments_generation(tiny_project):
    """The YAMLs' own generation_kwargs (what a task runs with on its own) are what the evaluate stage sets from
    configs/experiments/chat.yaml; the shared base is no task."""
    from lm_eval.tasks import TaskManager

    gen = config.load("experiments", "chat").evaluation.generation
    tm = TaskManager(include_path=str(paths.TASKS), include_defaults=False, metadata={"ftcompare_model": "tiny"})
    assert set(gen.task_names()) <= set(tm.all_tasks)
    assert not [t for t in tm.all_tasks if t.startswith("_")]
    for task in gen.task_names():
        obj = tm.load([task])["tasks"][task]
        setting = gen.settings[task[len(config.GENERATION_TASK_PREFIX):]]
        assert obj.config.generation_kwargs == chat_eval.task_generation_kwargs(setting, gen, "<|im_end|>")
        assert obj.config.output_type == "generate_until" and obj.config.num_fewshot == 0


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
    # each record carries its reply's generated tokens (the analyzer's n_new_tokens), the metrics lm-eval logged
    assert [g["n_new_tokens"] for g in gen] == [4] * 4 and all(g["metrics"] == list(chat_eval.METRICS) for g in gen)
    assert gen[0]["arguments"]["gen_args_0"]["arg_1"] == {"max_new_tokens": 4, "do_sample": False,
                                                          "repetition_penalty": 1.0, "until": ["<|im_end|>"],
                                                          "ftc_chat_reply": {"batch_size": 4, "seed": 1234}}
    assert res["configs"]["ftc_chat_gen_greedy"]["generation_kwargs"] == gen[0]["arguments"]["gen_args_0"]["arg_1"]

    # a generation setting the experiment does not define: one line naming the valid tasks
    capsys.readouterr()
    assert cli.main([*args, "--tasks", "ftc_chat_gen_beam"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown generation task(s) ftc_chat_gen_beam" in err and "ftc_chat_gen_greedy" in err
    assert len(err.splitlines()) == 1

    # the generation settings are part of the evaluation's settings: editing them re-runs it
    from ftcompare.evaluate import build_plan, is_up_to_date

    plan = build_plan("chattest", "tiny", "base", limit=4)
    assert plan.chat and plan.generation_tasks == ["ftc_chat_gen_greedy"]
    assert is_up_to_date(plan)
    edited = EXPERIMENT.replace("max_new_tokens: 4", "max_new_tokens: 5")
    (project / "configs" / "experiments" / "chattest.yaml").write_text(edited)
    assert not is_up_to_date(build_plan("chattest", "tiny", "base", limit=4))
    assert is_up_to_date(build_plan("chattest", "tiny", "base", tasks=["ftc_chitchat"], limit=4)) is False  # other tasks
    # a non-chat experiment's settings carry no chat keys (their hash is what it was)
    assert not {"chat", "generation", "chat_code_sha256"} & set(build_plan("default", "tiny", "base").settings())

    # stock HFLM cannot run the generation tasks: one line, before anything is loaded
    (project / "configs" / "experiments" / "chattest.yaml").write_text(EXPERIMENT.replace("  batch_size: 4\n  bootstrap",
                                                                                          "  batch_size: 4\n  lm_eval_model: hf\n  bootstrap"))
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "need evaluation.lm_eval_model ftc-hf" in err and "got hf" in err and len(err.splitlines()) == 1
    assert cli.main([*args, "--tasks", "ftc_chitchat"]) == 0   # the lm-eval task alone runs on stock hf

    # a generation setting without its task YAML: one line naming the file to add
    (project / "configs" / "experiments" / "chattest.yaml").write_text(EXPERIMENT.replace("greedy: {do_sample: false}",
                                                                                          "beam: {do_sample: false}"))
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "ftc_chat_gen_beam of evaluation.generation.settings have no task YAML" in err
    assert "ftc_chitchat/ftc_chat_gen_beam.yaml (include: _ftc_chat_gen.yaml" in err and len(err.splitlines()) == 1
    # the code generation runs through (ftc-hf and what it imports) is part of the chat settings
    from ftcompare import sourcehash

    assert {"fastlm", "chat_eval", "chat"} <= set(sourcehash.closure("fastlm"))


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
