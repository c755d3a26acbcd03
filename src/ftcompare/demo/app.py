"""The demo app: three tabs over the base model and the experiment's merged variants.

- Chat: base and a chosen variant answer the same message side by side, through the chat template, streamed,
  with temperature / top-p / max new tokens / repetition penalty.
- Email proofreader: VADER sentiment and a transparent politeness score (ftcompare.politeness: the cues that
  drove it are listed); the chosen model rewrites the email with those scores in its prompt; the rewrite is
  scored again and shown beside the original with a word diff.
- Inspect: per-token loss of a reply under base vs fine-tuned as coloured text, and attention heatmaps
  (layer and head selectable) of both models.

Handlers never raise into the page: a bad input or a failure becomes one line in the tab's status box.
The handler functions are plain Python (tests call them directly); build_app wires them to Gradio.
"""
from __future__ import annotations

import difflib
import html
import queue
import re
import threading

from .. import politeness
from ..config import DemoConfig
from ..errors import FtcError
from .models import BASE, ModelPool, context_length

_SENTIMENT = None


def sentiment(text: str) -> dict:
    """VADER (offline lexicon): compound in [-1, 1] and the neg/neu/pos shares."""
    global _SENTIMENT
    if _SENTIMENT is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _SENTIMENT = SentimentIntensityAnalyzer()
    return _SENTIMENT.polarity_scores(text)


def _fail(e: BaseException) -> str:
    if isinstance(e, FtcError):
        return f"⚠️ {e}"
    return f"⚠️ something went wrong: {type(e).__name__}: {str(e)[:300]}"


# --------------------------------------------------------------------------------------------------
# Chat
# --------------------------------------------------------------------------------------------------
def _render_chat(tok, messages: list[dict]) -> list[int]:
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return tok(text).input_ids


def _stop_ids(tok) -> list[int]:
    ids = []
    for t in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i >= 0 and i != tok.unk_token_id:
            ids.append(i)
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    return ids


def gen_kwargs(temperature: float, top_p: float, max_new_tokens: int, repetition_penalty: float) -> dict:
    kw = {"max_new_tokens": int(max_new_tokens), "repetition_penalty": float(repetition_penalty)}
    if float(temperature) <= 0:
        kw["do_sample"] = False
    else:
        kw.update(do_sample=True, temperature=float(temperature), top_p=float(top_p))
    return kw


def _check_fits(name: str, model, n_prompt: int, max_new: int, what: str = "the conversation",
                hint: str = "shorten it, lower max new tokens, or press Clear") -> None:
    ctx = context_length(model)
    if n_prompt + max_new > ctx:
        asked = f" and {max_new} new tokens are asked" if max_new else ""
        raise FtcError(f"{what} is {n_prompt} tokens{asked}, more than the {ctx}-token context of '{name}'; {hint}")


def _stream_generate(jobs: list[tuple[str, object, object, list[int], dict]]):
    """Run one generate() per job in its own thread; yield (side, text so far) as tokens arrive, from all sides."""
    import torch
    from transformers import TextStreamer

    q: queue.Queue = queue.Queue()
    done = object()

    class QueueStreamer(TextStreamer):
        def __init__(self, tok, side):
            super().__init__(tok, skip_prompt=True, skip_special_tokens=True)
            self.side = side

        def on_finalized_text(self, text, stream_end=False):
            if text:
                q.put((self.side, text))

    def work(side, model, tok, ids, kw):
        try:
            with torch.no_grad():
                model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               streamer=QueueStreamer(tok, side), eos_token_id=_stop_ids(tok),
                               pad_token_id=tok.pad_token_id or tok.eos_token_id, **kw)
        except Exception as e:  # noqa: BLE001 - shown in the page
            q.put((side, e))
        finally:
            q.put((side, done))

    texts = {side: "" for side, *_ in jobs}
    for side, model, tok, ids, kw in jobs:
        threading.Thread(target=work, args=(side, model, tok, ids, kw), daemon=True).start()
    running = len(jobs)
    while running:
        side, item = q.get()
        if item is done:
            running -= 1
            continue
        if isinstance(item, Exception):
            raise item
        texts[side] += item
        yield dict(texts)


def chat_turn(pool: ModelPool, message: str, hist_base: list, hist_var: list, variant: str,
              temperature: float, top_p: float, max_new_tokens: int, repetition_penalty: float):
    """Generator for the Chat tab: yields (base history, variant history, message box, status)."""
    hist_base, hist_var = list(hist_base or []), list(hist_var or [])
    message = (message or "").strip()
    if not message:
        yield hist_base, hist_var, "", "⚠️ type a message first"
        return
    if variant not in pool.sources:
        yield hist_base, hist_var, message, (f"⚠️ no fine-tuned variant '{variant}' here; trained variants: "
                                             f"{', '.join(pool.variants()) or 'none (run make all)'}")
        return
    try:
        kw = gen_kwargs(temperature, top_p, max_new_tokens, repetition_penalty)
        jobs = []
        for side, name, hist in (("base", BASE, hist_base), ("variant", variant, hist_var)):
            model, tok = pool.get(name)
            msgs = [{"role": m["role"], "content": _text(m["content"])} for m in hist] + [{"role": "user", "content": message}]
            ids = _render_chat(tok, msgs)
            _check_fits(name, model, len(ids), kw["max_new_tokens"])
            jobs.append((side, model, tok, ids, kw))
        hist_base = hist_base + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        hist_var = hist_var + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        yield hist_base, hist_var, "", f"generating with base and {variant} ..."
        texts = {"base": "", "variant": ""}
        for texts in _stream_generate(jobs):
            hist_base[-1] = {"role": "assistant", "content": texts.get("base", "")}
            hist_var[-1] = {"role": "assistant", "content": texts.get("variant", "")}
            yield hist_base, hist_var, "", f"generating with base and {variant} ..."
        empty = [s for s in ("base", "variant") if not texts.get(s, "").strip()]
        note = f" ({' and '.join(empty)} ended its turn without text)" if empty else ""
        yield hist_base, hist_var, "", f"done: base vs {variant}, {_describe(kw)}{note}"
    except Exception as e:  # noqa: BLE001 - never a traceback in the page
        yield hist_base, hist_var, message, _fail(e)


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # Gradio may hand back [{"type": "text", "text": ...}]
        return "".join(c.get("text", "") if isinstance(c, dict) else str(c) for c in content)
    return str(content)


def _describe(kw: dict) -> str:
    if not kw.get("do_sample"):
        return f"greedy, ≤{kw['max_new_tokens']} tokens, repetition penalty {kw['repetition_penalty']:g}"
    return (f"temperature {kw['temperature']:g}, top-p {kw['top_p']:g}, ≤{kw['max_new_tokens']} tokens, "
            f"repetition penalty {kw['repetition_penalty']:g}")


# --------------------------------------------------------------------------------------------------
# Email proofreader
# --------------------------------------------------------------------------------------------------
def scores_html(text: str, title: str) -> str:
    s = sentiment(text)
    p = politeness.score(text)
    cues = "".join(f"<li><b>{html.escape(c.strategy)}</b> “{html.escape(c.text)}” "
                   f"<span style='color:{'#15803d' if c.weight > 0 else '#b91c1c'}'>{c.weight:+g}</span></li>"
                   for c in p.cues) or "<li>no politeness cue found</li>"
    return (f"<div class='ftc-scores'><h4>{html.escape(title)}</h4>"
            f"<p><b>Sentiment</b> (VADER compound, −1…+1): <span class='ftc-sentiment'>{s['compound']:+.2f}</span> "
            f"(negative {s['neg']:.2f}, neutral {s['neu']:.2f}, positive {s['pos']:.2f})</p>"
            f"<p><b>Politeness</b> (0…100, 50 neutral): <span class='ftc-politeness'>{p.score:.0f}</span> "
            f"(sum of cue weights {p.raw:+.2f})</p><ul>{cues}</ul></div>")


def rewrite_prompt(email: str) -> list[dict]:
    s, p = sentiment(email), politeness.score(email)
    return [{"role": "user", "content": (
        "Rewrite the email below so that it is polite and clear. Change only what needs changing: keep its "
        "meaning, facts, names, dates and format (greeting, paragraphs, line breaks, sign-off). If it is already "
        "polite, return it unchanged. Reply with the email only.\n\n"
        f"Scores of the email as written: sentiment {s['compound']:+.2f} (VADER compound, -1 negative to +1 "
        f"positive); politeness {p.score:.0f}/100 (50 is neutral). Cues found: {p.summary()}.\n\n"
        f"Email:\n{email}")}]


def diff_html(a: str, b: str) -> str:
    """Word diff: removed words struck through in red, added words in green; whitespace and line breaks kept."""
    ta, tb = re.split(r"(\s+)", a), re.split(r"(\s+)", b)
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=ta, b=tb, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(html.escape("".join(ta[i1:i2])))
            continue
        if i2 > i1:
            out.append(f"<del style='background:#fee2e2;color:#991b1b'>{html.escape(''.join(ta[i1:i2]))}</del>")
        if j2 > j1:
            out.append(f"<ins style='background:#dcfce7;color:#166534;text-decoration:none'>"
                       f"{html.escape(''.join(tb[j1:j2]))}</ins>")
    return f"<div class='ftc-diff' style='white-space:pre-wrap'>{''.join(out)}</div>"


def check_email(email: str, max_chars: int) -> str:
    if not (email or "").strip():
        raise FtcError("the email is empty; paste an email to proofread")
    if len(email) > max_chars:
        raise FtcError(f"the email has {len(email):,} characters, more than the limit of {max_chars:,} "
                       "(configs/demo.yaml max_email_chars); shorten it")
    return email


def proofread(pool: ModelPool, email: str, variant: str, max_chars: int, max_new_cap: int):
    """Generator for the Email tab: yields (scores before, rewrite, scores after, diff, status)."""
    try:
        email = check_email(email, max_chars)
        if variant not in pool.sources:
            raise FtcError(f"no model '{variant}' here; choose one of {', '.join(pool.sources)}")
        before = scores_html(email, "Original")
        yield before, "", "", "", f"rewriting with {variant} ..."
        model, tok = pool.get(variant)
        ids = _render_chat(tok, rewrite_prompt(email))
        n_email = len(tok(email).input_ids)
        max_new = max(16, min(max_new_cap, 2 * n_email + 32))
        _check_fits(variant, model, len(ids), max_new, what="the email with its instructions", hint="shorten the email")
        text = ""
        for texts in _stream_generate([("rewrite", model, tok, ids, {"do_sample": False, "max_new_tokens": max_new,
                                                                      "repetition_penalty": 1.1})]):
            text = texts["rewrite"]
            yield before, text, "", "", f"rewriting with {variant} ..."
        rewrite = text.strip()
        if not rewrite:
            yield before, "", "", "", f"⚠️ {variant} returned an empty rewrite; try another model"
            return
        yield (before, rewrite, scores_html(rewrite, f"Rewrite by {variant}"), diff_html(email, rewrite),
               f"done: rewritten by {variant} (greedy, ≤{max_new} tokens)")
    except Exception as e:  # noqa: BLE001
        yield "", "", "", "", _fail(e)


# --------------------------------------------------------------------------------------------------
# Inspect
# --------------------------------------------------------------------------------------------------
def _conversation_ids(tok, prompt: str, reply: str) -> tuple[list[int], list[bool]]:
    """Token ids of (prompt as user, reply as assistant) and which tokens belong to the reply."""
    if getattr(tok, "chat_template", None):
        from ..chat import tokenize_conversation

        ids, labels = tokenize_conversation(tok, [{"role": "user", "content": prompt},
                                                  {"role": "assistant", "content": reply}])
        return ids, [lab != -100 for lab in labels]
    p = tok(prompt).input_ids
    r = tok(" " + reply, add_special_tokens=False).input_ids
    return p + r, [False] * len(p) + [True] * len(r)


def token_losses(model, ids: list[int]):
    """(per-token loss in nats, first token: None; attentions per layer [heads, T, T])."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True)
    logp = torch.log_softmax(out.logits[0, :-1].float(), -1)
    nll = -logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return [None] + nll.tolist(), [a[0] for a in out.attentions]


def _colour(loss: float | None, scale: float = 8.0) -> str:
    if loss is None:
        return "transparent"
    t = max(0.0, min(1.0, loss / scale))
    return f"rgba(220, 38, 38, {0.08 + 0.8 * t:.2f})"


def _delta_colour(d: float, scale: float = 3.0) -> str:
    t = max(-1.0, min(1.0, d / scale))
    return f"rgba(22, 163, 74, {0.1 + 0.8 * -t:.2f})" if t < 0 else f"rgba(220, 38, 38, {0.1 + 0.8 * t:.2f})"


def loss_html(tok, ids, in_reply, losses_base, losses_var, variant: str) -> str:
    toks = [tok.decode([i]) for i in ids]

    def row(losses, colour):
        spans = []
        for t, r, l in zip(toks, in_reply, losses):
            shown = html.escape(t).replace("\n", "⏎<br>")
            if r and l is not None:
                spans.append(f"<span title='{l:.2f} nats' style='background:{colour(l)};border-radius:2px'>{shown}</span>")
            else:
                spans.append(f"<span style='color:#9ca3af'>{shown}</span>")
        return "".join(spans)

    reply = [i for i, r in enumerate(in_reply) if r and losses_base[i] is not None]
    mean_b = sum(losses_base[i] for i in reply) / max(1, len(reply))
    mean_v = sum(losses_var[i] for i in reply) / max(1, len(reply))
    delta = [None if b is None or v is None else v - b for b, v in zip(losses_base, losses_var)]
    return ("<div class='ftc-loss'>"
            f"<p>Loss per reply token (nats; darker red = less expected; prompt tokens grey; hover for the value). "
            f"Mean over {len(reply)} reply tokens: base <b>{mean_b:.3f}</b>, {html.escape(variant)} <b>{mean_v:.3f}</b> "
            f"({mean_v - mean_b:+.3f}).</p>"
            f"<h4>base</h4><div style='line-height:1.9'>{row(losses_base, _colour)}</div>"
            f"<h4>{html.escape(variant)}</h4><div style='line-height:1.9'>{row(losses_var, _colour)}</div>"
            f"<h4>{html.escape(variant)} − base (green: fine-tuned expects it more, red: less)</h4>"
            f"<div style='line-height:1.9'>{row(delta, _delta_colour)}</div></div>")


def heatmap(tok, ids, att_base, att_var, layer: int, head: int, variant: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [tok.decode([i]).replace("\n", "⏎") for i in ids]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), constrained_layout=True)
    for ax, att, name in ((axes[0], att_base, "base"), (axes[1], att_var, variant)):
        a = att[layer][head].float().numpy()
        im = ax.imshow(a, cmap="viridis", vmin=0.0, vmax=max(1e-6, float(a.max())))
        ax.set_title(f"{name}: layer {layer}, head {head}")
        ax.set_xlabel("attended token (key)")
        ax.set_ylabel("token (query)")
        if len(ids) <= 48:
            ax.set_xticks(range(len(ids)), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(len(ids)), labels, fontsize=6)
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def inspect(pool: ModelPool, prompt: str, reply: str, variant: str, layer: int, head: int):
    """For the Inspect tab: (loss html, heatmap figure or None, status)."""
    try:
        if not (prompt or "").strip() or not (reply or "").strip():
            raise FtcError("give both a prompt and a reply to inspect")
        if variant not in pool.sources:
            raise FtcError(f"no model '{variant}' here; choose one of {', '.join(pool.sources)}")
        mb, tok = pool.get(BASE)
        ids, in_reply = _conversation_ids(tok, prompt, reply)
        _check_fits(BASE, mb, len(ids), 0, what="the prompt and reply", hint="shorten them")
        lb, ab = token_losses(mb, ids)
        mv, tok_v = pool.get(variant)
        if _conversation_ids(tok_v, prompt, reply)[0] != ids:
            raise FtcError(f"'{variant}' tokenizes the conversation differently from the base model; cannot compare")
        _check_fits(variant, mv, len(ids), 0, what="the prompt and reply", hint="shorten them")
        lv, av = token_losses(mv, ids)
        n_layers, n_heads = len(ab), ab[0].shape[0]
        if not (0 <= int(layer) < n_layers and 0 <= int(head) < n_heads):
            raise FtcError(f"layer must be 0..{n_layers - 1} and head 0..{n_heads - 1}")
        fig = heatmap(tok, ids, ab, av, int(layer), int(head), variant)
        return (loss_html(tok, ids, in_reply, lb, lv, variant), fig,
                f"done: {len(ids)} tokens, {sum(in_reply)} in the reply; attention of layer {int(layer)}, head {int(head)}")
    except Exception as e:  # noqa: BLE001
        return "", None, _fail(e)


# --------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------
EXAMPLE_EMAIL = ("hey,\n\nsend me the report by friday. you said it would be done last week and it still isn't. "
                 "this is the third time.\n\ntom")


def build_app(pool: ModelPool, cfg: DemoConfig, title: str = "ftcompare demo"):
    import gradio as gr

    variants = pool.variants()
    default_variant = variants[0] if variants else None
    base_cfg = pool.config(BASE)
    n_layers = int(base_cfg.get("num_hidden_layers", 1))
    n_heads = int(base_cfg.get("num_attention_heads", 1))
    g = cfg.generation
    none_note = "" if variants else (" **No fine-tuned variant is trained for this experiment yet** (run `make all`): "
                                     "only the base model is served.")

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}\nBase model vs fine-tuned variants ({', '.join(variants) or 'none'}), on this "
                    f"machine's CPU; models load on first use.{none_note}")
        with gr.Tab("Chat", id="tab-chat"):
            with gr.Row():
                variant = gr.Dropdown(variants, value=default_variant, label="fine-tuned variant", elem_id="chat-variant")
            with gr.Row():
                chat_base = gr.Chatbot(label="base", elem_id="chat-base", height=360)
                chat_var = gr.Chatbot(label="fine-tuned", elem_id="chat-variant-pane", height=360)
            msg = gr.Textbox(label="message", placeholder="Ask both models something", elem_id="chat-input", lines=2)
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="chat-send")
                clear = gr.Button("Clear", elem_id="chat-clear")
            with gr.Accordion("generation", open=True):
                with gr.Row():
                    temperature = gr.Slider(0.0, 1.5, value=g.get("temperature", 0.7), step=0.05,
                                            label="temperature (0 = greedy)", elem_id="chat-temperature")
                    top_p = gr.Slider(0.05, 1.0, value=g.get("top_p", 0.9), step=0.05, label="top-p", elem_id="chat-top-p")
                    max_new = gr.Slider(1, cfg.max_new_tokens, value=int(g.get("max_new_tokens", 128)), step=1,
                                        label="max new tokens", elem_id="chat-max-new")
                    rep = gr.Slider(1.0, 2.0, value=g.get("repetition_penalty", 1.1), step=0.05,
                                    label="repetition penalty", elem_id="chat-rep")
            chat_status = gr.Markdown(elem_id="chat-status")

            def on_send(m, hb, hv, v, t, p, n, r):
                yield from chat_turn(pool, m, hb, hv, v, t, p, n, r)

            ins = [msg, chat_base, chat_var, variant, temperature, top_p, max_new, rep]
            outs = [chat_base, chat_var, msg, chat_status]
            send.click(on_send, ins, outs)
            msg.submit(on_send, ins, outs)
            clear.click(lambda: ([], [], "", ""), None, outs)

        with gr.Tab("Email proofreader", id="tab-email"):
            with gr.Row():
                email_model = gr.Dropdown(pool.names, value=default_variant or BASE, label="model that rewrites",
                                          elem_id="email-model")
            with gr.Row():
                with gr.Column():
                    email = gr.Textbox(label="email", value=EXAMPLE_EMAIL, lines=10, elem_id="email-input")
                    check = gr.Button("Score and rewrite", variant="primary", elem_id="email-run")
                    before = gr.HTML(elem_id="scores-before")
                with gr.Column():
                    rewrite = gr.Textbox(label="rewrite", lines=10, elem_id="email-rewrite", interactive=False)
                    after = gr.HTML(elem_id="scores-after")
            diff = gr.HTML(elem_id="email-diff")
            email_status = gr.Markdown(elem_id="email-status")
            gr.Markdown("Politeness: hand-weighted cues after Danescu-Niculescu-Mizil et al. (2013), listed with "
                        "their weights (`src/ftcompare/politeness.py`); sentiment: VADER.")

            def on_email(e, m):
                yield from proofread(pool, e, m, cfg.max_email_chars, cfg.max_new_tokens)

            check.click(on_email, [email, email_model], [before, rewrite, after, diff, email_status])

        with gr.Tab("Inspect", id="tab-inspect"):
            with gr.Row():
                ins_variant = gr.Dropdown(variants or [BASE], value=default_variant or BASE,
                                          label="fine-tuned variant", elem_id="inspect-variant")
                layer = gr.Slider(0, n_layers - 1, value=n_layers - 1, step=1, label="layer", elem_id="inspect-layer")
                head = gr.Slider(0, n_heads - 1, value=0, step=1, label="head", elem_id="inspect-head")
            with gr.Row():
                prompt = gr.Textbox(label="prompt", value="What is the capital of France?", elem_id="inspect-prompt")
                reply = gr.Textbox(label="reply", value="The capital of France is Paris.", elem_id="inspect-reply")
            run = gr.Button("Inspect", variant="primary", elem_id="inspect-run")
            inspect_status = gr.Markdown(elem_id="inspect-status")
            losses = gr.HTML(elem_id="inspect-loss")
            plot = gr.Plot(elem_id="inspect-heatmap", label="attention")

            def on_inspect(p, r, v, lay, h):
                return inspect(pool, p, r, v, lay, h)

            inputs = [prompt, reply, ins_variant, layer, head]
            run.click(on_inspect, inputs, [losses, plot, inspect_status])
            layer.release(on_inspect, inputs, [losses, plot, inspect_status])
            head.release(on_inspect, inputs, [losses, plot, inspect_status])
    return demo


def launch(demo, host: str, port: int, block: bool = False):
    """Serve on `host` (127.0.0.1 by default) with system fonts: the page needs nothing from the internet."""
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    demo.queue()
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True, theme=theme,
                show_error=False, footer_links=[])
    return demo
