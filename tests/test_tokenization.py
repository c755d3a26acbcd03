"""Training examples tokenize exactly as lm-eval 0.4.13 scores them: its own HFLM._encode_pair (add_bos_token
left at None, as ftcompare's evaluation leaves it) is the reference, for a tokenizer that adds a BOS (Llama,
TinyLlama) and one that does not (SmolLM2). Chat conversations: the template's text decides BOS, never a second."""
import pytest

from ftcompare import data

PAIRS = [("A man is sitting on a roof. He", " starts pulling up roofing."),
         ("A man is sitting on a roof. He ", "starts pulling up roofing."),   # trailing space moves over
         ("Cooking: She  ", " adds salt.")]


def _bos_tokenizer(model_dir):
    """The tiny BPE tokenizer plus a `<s>` that its post-processor puts before every text (as Llama's does)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tk.add_special_tokens(["<s>"])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="<|im_end|>", pad_token="<|im_end|>")


@pytest.fixture(scope="module", params=["bos", "no-bos"])
def tok_and_hflm(request, tiny_model_dir):
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = _bos_tokenizer(tiny_model_dir) if request.param == "bos" else AutoTokenizer.from_pretrained(tiny_model_dir)
    assert (tok("A man")["input_ids"][0] == tok.bos_token_id) == (request.param == "bos")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return request.param, tok, HFLM(pretrained=model, tokenizer=tok, backend="causal", device="cpu", batch_size=1)


@pytest.mark.parametrize("context,continuation", PAIRS)
def test_encode_pair_is_lm_evals(tok_and_hflm, context, continuation):
    kind, tok, lm = tok_and_hflm
    assert data.encode_pair(tok, context, continuation) == lm._encode_pair(context, continuation), kind


def test_training_example_starts_like_the_scored_context(tok_and_hflm):
    """The BOS lm-eval puts before a context is in the training input too (masked like the rest of the prompt)."""
    kind, tok, lm = tok_and_hflm
    ex = {"id": "1", "prompt": PAIRS[0][0], "completion": PAIRS[0][1]}
    row = data.tokenize_completion([ex], tok, 512)[0]
    ctx, cont = lm._encode_pair(ex["prompt"], ex["completion"])
    assert row["input_ids"] == ctx + cont and row["labels"] == [-100] * len(ctx) + cont
    assert (row["input_ids"][0] == tok.bos_token_id) == (kind == "bos")


def test_chat_template_with_bos_text_gets_one_bos(tiny_model_dir):
    """Chat: the rendered template is tokenized without added specials (training and reply generation alike),
    so a template that writes the BOS gets exactly one and a template that does not gets none."""
    from ftcompare.chat import tokenize_conversation

    tok = _bos_tokenizer(tiny_model_dir)
    msgs = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."}]
    base = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}"
            "{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]}, replace_extra_special_tokens=False)
    for template, n_bos in ((base, 0), ("{{ bos_token }}" + base, 1)):
        tok.chat_template = template
        ids, _ = tokenize_conversation(tok, msgs)
        assert ids.count(tok.bos_token_id) == n_bos
