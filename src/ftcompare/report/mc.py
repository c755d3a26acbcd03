"""Per-item outcomes of a multiple-choice sample, re-derived from its per-choice log-likelihoods.

lm-eval 0.4.13 scores a multiple_choice document in `ConfigurableTask.process_results`
(lm_eval/api/task.py): lls = the loglikelihood of each choice (request i = context + target_delimiter + choice i),
  acc      = argmax(lls) == gold
  acc_norm = argmax(lls / len(choice)) == gold          (characters of the choice text, without the delimiter)
  acc_bytes= argmax(lls / len(choice.encode("utf-8"))) == gold
(np.argmax: the first maximum wins a tie). The same arithmetic on the logged samples re-derives every stored
0/1 outcome, and gives the continuous metrics that see changes a 0/1 outcome cannot:
  gold_logprob  log of the gold choice's probability normalized over the choices (log-softmax of lls), nats
  gold_prob     that probability (lm-eval's `prob_norm = softmax(lls)`, at the gold index)
  margin_norm   lls[gold]/len(gold) - max over the other choices of lls[j]/len(j): the acc_norm margin
                (nats per character; > 0 exactly when acc_norm is 1, up to ties)
"""
from __future__ import annotations

import math

CONTINUOUS = ("gold_logprob", "gold_prob", "margin_norm")   # the record's order; the first is the default pick
DERIVED_OUTCOMES = ("acc", "acc_norm", "acc_bytes")          # stored 0/1 outcomes that must re-derive


class SampleError(ValueError):
    """A multiple-choice sample whose log-likelihoods, choices or gold cannot be read."""


def _requests(sample: dict) -> list:
    args = sample.get("arguments")
    if isinstance(args, dict):  # as lm-eval writes it: {"gen_args_0": {"arg_0": ctx, "arg_1": cont}, ...}
        return [args[k] for k in sorted(args, key=lambda k: int(str(k).rsplit("_", 1)[-1]))]
    if isinstance(args, list):  # in memory: [(ctx, cont), ...]
        return args
    raise SampleError("arguments: missing")


def _continuation(req) -> str:
    cont = req.get("arg_1") if isinstance(req, dict) else req[1] if isinstance(req, (list, tuple)) else None
    if not isinstance(cont, str):
        raise SampleError("arguments: a request without its continuation (arg_1)")
    return cont


def choice_lls(sample: dict) -> list[float]:
    """The loglikelihood of each choice: filtered_resps [[ll, is_greedy], ...] (else resps [[[ll, g]], ...])."""
    resps = sample.get("filtered_resps")
    if not isinstance(resps, list) or not resps:
        resps = [r[0] if isinstance(r, list) and r else r for r in sample.get("resps") or []]
    try:
        return [float(r[0] if isinstance(r, (list, tuple)) else r) for r in resps]
    except (TypeError, ValueError, IndexError) as e:
        raise SampleError(f"filtered_resps: not a list of (loglikelihood, is_greedy) per choice ({e})") from None


def choices(sample: dict, target_delimiter: str) -> list[str]:
    """The choice texts: each request's continuation without the task's target_delimiter."""
    out = []
    for req in _requests(sample):
        cont = _continuation(req)
        if not cont.startswith(target_delimiter):
            raise SampleError(f"arguments: continuation {cont[:30]!r} does not start with the target_delimiter "
                              f"{target_delimiter!r}")
        out.append(cont[len(target_delimiter):])
    return out


def gold_index(sample: dict, texts: list[str]) -> int:
    """lm-eval's gold: doc_to_target as an index (an int, or digits), or a choice text's position."""
    target = sample.get("target")
    if isinstance(target, bool):
        raise SampleError(f"target: {target!r} is not a choice index")
    if isinstance(target, int) or isinstance(target, str) and target.isdigit():
        gold = int(target)
    elif isinstance(target, str) and target in texts:
        gold = texts.index(target)
    else:
        raise SampleError(f"target: {target!r} is neither a choice index nor a choice")
    if not 0 <= gold < len(texts):
        raise SampleError(f"target: index {gold} outside the {len(texts)} choices")
    return gold


def derive(sample: dict, target_delimiter: str = " ") -> dict[str, float]:
    """Every per-item outcome of one multiple-choice sample, from its log-likelihoods and choice texts."""
    import numpy as np

    texts = choices(sample, target_delimiter)
    lls = choice_lls(sample)
    if len(lls) != len(texts) or len(texts) < 2:
        raise SampleError(f"filtered_resps: {len(lls)} log-likelihoods for {len(texts)} choices")
    gold = gold_index(sample, texts)
    arr = np.array(lls, dtype=float)
    # lm-eval's own arithmetic (float64 numpy division, np.argmax), so ties and rounding resolve the same way
    norm = arr / np.array([float(len(t)) for t in texts])
    by_bytes = arr / np.array([float(len(t.encode("utf-8"))) for t in texts])
    top = float(arr.max())
    log_z = top + math.log(float(np.exp(arr - top).sum()))
    others = [float(norm[j]) for j in range(len(texts)) if j != gold]
    return {
        "acc": float(int(np.argmax(arr)) == gold),
        "acc_norm": float(int(np.argmax(norm)) == gold),
        "acc_bytes": float(int(np.argmax(by_bytes)) == gold),
        "gold_logprob": float(arr[gold]) - log_z,
        "gold_prob": math.exp(float(arr[gold]) - log_z),
        "margin_norm": float(norm[gold]) - max(others),
    }


def disagreements(sample: dict, derived: dict[str, float]) -> list[tuple[str, float, float]]:
    """(field, stored, re-derived) for each stored 0/1 outcome the log-likelihoods do not give."""
    out = []
    for m in DERIVED_OUTCOMES:
        if m in (sample.get("metrics") or []) and m in sample:
            try:
                stored = float(sample[m])
            except (TypeError, ValueError):
                continue  # load_samples reports non-numeric values
            if stored != derived[m]:
                out.append((m, stored, derived[m]))
    return out


def rederive(sample: dict, target_delimiter: str = " ") -> tuple[dict[str, float], list[tuple[str, str]]]:
    """(the re-derived outcomes, problems): each problem is (".field" or "", message) for report.load."""
    if isinstance(sample.get("target"), list):
        return {}, []  # several gold choices: no single gold probability (none of the project's tasks)
    try:
        derived = derive(sample, target_delimiter)
    except SampleError as e:
        return {}, [("", f"{e}: the outcomes cannot be re-derived")]
    return derived, [(f".{fld}", f"stored {stored:g}, but the per-choice log-likelihoods and choice lengths give "
                      f"{want:g}: the sample was edited or not written by lm-eval's multiple_choice scoring")
                     for fld, stored, want in disagreements(sample, derived)]
