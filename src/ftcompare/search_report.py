"""What a search produced, for people: written from the study (the storage is the source of truth), so every
worker sharing a study writes the same files. results/search/<name>/:

  rungs.md               a table per rung: configuration, objective, steps, wall time, peak memory, pruned or kept
  trials.csv             the same, one row per (trial, rung)
  objective_vs_step.png  the objective of every trial at every rung it reached (pruned ones end early)
  best_overrides.yaml    the winner as section.key overrides: `make all SEARCH=<name>`
  search_summary.json    everything above in one JSON (what the record's search section is rendered from)
  README.md              what was searched, what won and by how much, the caveats, the fairness statement
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import yaml

from . import config, paths
from .errors import FtcError
from .io import atomic_write_bytes, atomic_write_json, atomic_write_text

FILES = ("rungs.md", "trials.csv", "objective_vs_step.png", "best_overrides.yaml", "search_summary.json", "README.md")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if (abs(v) < 1e-2 or abs(v) >= 1e4) and v != 0 else f"{v:.4g}"
    return str(v)


def _config_label(params: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in params.items())


def collect(study, space) -> list[dict]:
    """One dict per trial that ran (or is queued), in trial order, with its rungs."""
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("unused") or "config_index" not in t.user_attrs:
            continue
        rungs = sorted((v for k, v in t.user_attrs.items() if k.startswith("rung_")), key=lambda r: r["step"])
        rows.append({"trial": t.number, "config": t.user_attrs["config_index"],
                     "baseline": bool(t.user_attrs.get("baseline")), "params": t.params or t.system_attrs.get(
                         "fixed_params", {}), "state": t.state.name, "value": t.value, "rungs": rungs,
                     "finished": t.state in (TrialState.COMPLETE, TrialState.PRUNED)})
    return rows


def _decision(row: dict, i: int, max_steps: int) -> str:
    if i < len(row["rungs"]) - 1:
        return "kept"
    step = row["rungs"][i]["step"]
    return {"COMPLETE": "finished" if step >= max_steps else "kept", "PRUNED": "pruned", "FAIL": "failed",
            "RUNNING": "in flight", "WAITING": "interrupted (queued)"}[row["state"]]


def _tables(rows, space, direction) -> tuple[str, list[dict]]:
    md, flat = [], []
    sign = 1 if direction == "minimize" else -1
    for k, step in enumerate(space.rungs()):
        at = [(r, i) for r in rows for i, g in enumerate(r["rungs"]) if g["step"] == step]
        if not at:
            continue
        at.sort(key=lambda x: sign * x[0]["rungs"][x[1]]["objective"])
        md += [f"## Rung {k}: step {step} ({len(at)} configuration{'s' * (len(at) != 1)})", "",
               f"| rank | config | {space.objective.label} | steps trained | train s | wall s | peak MB | decision | "
               + " | ".join(p.name for p in space.params) + " |",
               "|" + "---|" * (8 + len(space.params))]
        for rank, (r, i) in enumerate(at, 1):
            g = r["rungs"][i]
            dec = _decision(r, i, space.budget.max_steps)
            md.append(f"| {rank} | {r['config']}{' (baseline)' if r['baseline'] else ''} | {g['objective']:.4f} | "
                      f"{g['steps_trained']} | {g['train_wall_s']:.0f} | {g['wall_s']:.0f} | {g['peak_memory_mb']:.0f} | "
                      f"{dec} | " + " | ".join(_fmt(r["params"].get(p.name)) for p in space.params) + " |")
            flat.append({"rung": k, "step": step, "rank": rank, "config": r["config"], "trial": r["trial"],
                         "baseline": r["baseline"], "objective": g["objective"], "val_loss": g["val_loss"],
                         "steps_trained": g["steps_trained"], "resumed_from": g["resumed_from"],
                         "train_wall_s": g["train_wall_s"], "wall_s": g["wall_s"], "peak_memory_mb": g["peak_memory_mb"],
                         "peak_memory_kind": g["peak_memory_kind"], "decision": dec,
                         **{p.name: r["params"].get(p.name) for p in space.params}})
        md.append("")
    return "\n".join(md), flat


def _figure(rows, space, best, path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for r in rows:
        if not r["rungs"]:
            continue
        xs = [g["step"] for g in r["rungs"]]
        ys = [g["objective"] for g in r["rungs"]]
        is_best = best is not None and r["trial"] == best["trial"]
        style = dict(lw=2.4, color="black", zorder=3) if is_best else dict(lw=1, alpha=0.75)
        label = f"config {r['config']}" + (" (baseline)" if r["baseline"] else "") + (" (best)" if is_best else "")
        line, = ax.plot(xs, ys, marker="o", ms=4, label=label, ls="--" if r["baseline"] else "-", **style)
        if r["state"] == "PRUNED":
            ax.plot(xs[-1], ys[-1], marker="x", ms=9, mew=2, color=line.get_color(), zorder=4)
    for step in space.rungs():
        ax.axvline(step, color="0.85", lw=0.8, zorder=0)
    ax.set_xscale("log", base=space.budget.reduction_factor)
    ax.set_xticks(space.rungs(), [str(s) for s in space.rungs()])
    ax.set_xlabel("training steps (rungs)")
    ax.set_ylabel(space.objective.label)
    ax.set_title(f"search '{name}': {space.objective.label} per rung (x = pruned)", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())   # a temp file per process: two search workers may both write it


def _fairness(name: str, experiment: str, model: str, method: str, space) -> dict:
    """Which methods of the experiment are tuned (a search each, on this model), with which budget."""
    exp = config.load("experiments", experiment)
    tuned = {method: {"search": name, "budget": vars(space.budget).copy()}}
    root = paths.RESULTS / "search"
    for f in sorted(root.glob("*/search_summary.json")) if root.is_dir() else []:
        if f.parent.name == name:
            continue
        try:
            s = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if s.get("experiment") == experiment and s.get("model") == model and s.get("method") not in tuned \
                and s.get("best"):
            tuned[s["method"]] = {"search": s["name"], "budget": s["budget"]}
    untuned = [m for m in exp.methods if m not in tuned]
    budgets = {json.dumps({k: v for k, v in t["budget"].items() if k != "seed"}, sort_keys=True) for t in tuned.values()}
    if not untuned and len(budgets) == 1:
        text = (f"Every method of experiment '{experiment}' ({', '.join(exp.methods)}) was tuned on {model} with "
                "the same budget (searches: " + ", ".join(f"{m}: {t['search']}" for m, t in tuned.items()) + ").")
    elif not untuned:
        text = (f"Every method of experiment '{experiment}' was tuned on {model}, but with different budgets "
                "(searches: " + ", ".join(f"{m}: {t['search']}" for m, t in tuned.items()) + "): a method "
                "searched with more steps or configurations had a better chance; compare with care.")
    else:
        text = (f"Only {', '.join(sorted(tuned))} {'was' if len(tuned) == 1 else 'were'} tuned (search"
                f"{'es' if len(tuned) > 1 else ''} {', '.join(t['search'] for t in tuned.values())}); "
                f"{', '.join(untuned)} keep{'s' if len(untuned) == 1 else ''} the experiment's settings. A tuned "
                f"method against untuned ones is a confound: a difference may come from the tuning, not the method. "
                f"Tune every method with the same budget (one search per method: `--method M --name NAME`) "
                f"before reading the comparison as a comparison of methods.")
    return {"tuned": {m: t["search"] for m, t in tuned.items()}, "untuned": untuned,
            "same_budget": len(budgets) == 1, "statement": text}


# Building blocks shared with ftcompare.search (which imports this module; this one imports nothing of it).
def _get(d: dict, dotted: str):
    for p in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def trial_overrides(space: SearchSpace, params: dict) -> dict[str, Any]:
    out = dict(space.fixed)
    for p in space.params:
        if p.name in params:
            out.update(p.overrides(params[p.name]))
    out["train.max_steps"] = space.budget.max_steps
    return out


def resolve_trial(experiment: str, model: str, method: str, space: SearchSpace, params: dict) -> config.RunConfig:
    return config.resolve_run(experiment, model, method, trial_overrides(space, params))


def search_dir(name: str) -> Path:
    return paths.RESULTS / "search" / name


def _redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  (not parseable: show only the scheme)
        return url.split("://", 1)[0] + "://..." if "://" in url else "(unparseable URL)"


def write_outputs(study, space, name: str, experiment: str, model: str, method: str, url: str) -> Path:
    out = search_dir(name)
    direction = study.direction.name.lower()
    rows = collect(study, space)
    md_tables, flat = _tables(rows, space, direction)
    sign = 1 if direction == "minimize" else -1
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = min(complete, key=lambda r: sign * r["value"]) if complete else None
    baseline = next((r for r in rows if r["baseline"]), None)
    max_steps = space.budget.max_steps

    best_block = None
    if best:
        run = resolve_trial(experiment, model, method, space, best["params"])
        d = run.to_dict()
        overrides = {}
        for p in space.params:
            for k in p.overrides(best["params"][p.name]):
                overrides[k] = _get(d, k)
        best_block = {"config": best["config"], "trial": best["trial"], "baseline": best["baseline"],
                      "params": best["params"], "overrides": overrides, "objective": best["value"], "step": max_steps,
                      "run_config_hash": run.hash()}
        text = (f"# Best configuration of search '{name}' (python -m ftcompare search --experiment {experiment} "
                f"--model {model} --method {method} --space {space.name}).\n"
                f"# {space.objective.label} {best['value']:.4f} after {max_steps} steps (config {best['config']}).\n"
                f"# Use it: make all EXPERIMENT={experiment} SEARCH={name}   (method.* keys apply to {method} only;\n"
                f"# train.* and data.* keys are shared by every method of the experiment, so they apply to all).\n")
        atomic_write_text(out / "best_overrides.yaml", text + yaml.safe_dump(
            {"search": name, "experiment": experiment, "model": model, "method": method,
             "objective": space.objective.label, "value": best["value"], "steps": max_steps,
             "overrides": overrides}, sort_keys=False))
    else:
        (out / "best_overrides.yaml").unlink(missing_ok=True)  # no finished trial: no winner (yet)

    # by how much: the winner against the baseline (the experiment's own settings) at the largest step both
    # reached, and against the runner-up at the full budget
    margin = {}
    if best and baseline and baseline["rungs"] and best["trial"] != baseline["trial"]:
        common = max(set(g["step"] for g in baseline["rungs"]) & set(g["step"] for g in best["rungs"]))
        b = next(g["objective"] for g in baseline["rungs"] if g["step"] == common)
        w = next(g["objective"] for g in best["rungs"] if g["step"] == common)
        margin["vs_baseline"] = {"step": common, "baseline": b, "best": w, "difference": w - b,
                                 "relative": (w - b) / abs(b) if b else None,
                                 "baseline_state": baseline["state"]}
    others = sorted((r for r in complete if best and r["trial"] != best["trial"]), key=lambda r: sign * r["value"])
    if best and others:
        margin["vs_runner_up"] = {"step": max_steps, "config": others[0]["config"], "runner_up": others[0]["value"],
                                  "difference": best["value"] - others[0]["value"]}

    sessions = [v for k, v in study.user_attrs.items() if k.startswith("session_")]
    train_s = sum(g["train_wall_s"] for r in rows for g in r["rungs"])
    rung_s = sum(g["wall_s"] for r in rows for g in r["rungs"])
    states = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    fairness = _fairness(name, experiment, model, method, space)
    caveats = [
        "A pruned trial's objective is measured at a smaller budget (fewer steps, and mid-way through a schedule "
        f"sized for {max_steps} steps) than a finished trial's: compare trials only within a rung.",
        "Optuna's successive halving is asynchronous (ASHA): a trial is kept at a rung if it is in the best "
        f"1/{space.budget.reduction_factor} of the trials that reached that rung before it, so the first "
        "trials meet fewer rivals and are kept more easily.",
        f"The objective is one measurement per rung (data order and seed fixed: train.seed); differences "
        "smaller than the run-to-run noise of other seeds are not evidence.",
    ]
    exp_steps = config.load("experiments", experiment).train.max_steps
    if exp_steps != max_steps:
        caveats.append(f"The search's longest run is {max_steps} steps (its lr schedule too); experiment '{experiment}' "
                       f"trains {exp_steps} steps, so `make all SEARCH={name}` uses the winner at a length the search "
                       "never measured: the best settings at one length need not be the best at another.")
    summary = {
        "name": name, "experiment": experiment, "model": model, "method": method, "space": space.name,
        "space_file": f"configs/search/{space.name}.yaml", "space_sha": space.hash(),
        "description": space.description,
        "searched": [{"name": p.name, "kind": p.kind, "keys": p.keys(),
                      **({"choices": list(p.groups) if p.groups else p.choices} if p.kind == "choices"
                         else {"low": p.low, "high": p.high})} for p in space.params],
        "fixed": space.fixed, "budget": vars(space.budget), "rungs": space.rungs(), "pruner": space.pruner,
        "objective": {"label": space.objective.label, "kind": space.objective.kind, "task": space.objective.task,
                      "metric": space.objective.metric, "direction": direction},
        "storage": _redact(url), "study_name": name,
        "n_trials": len(rows), "states": states,
        "trials": [{k: r[k] for k in ("trial", "config", "baseline", "params", "state", "value")}
                   | {"objective_by_step": {g["step"]: g["objective"] for g in r["rungs"]}} for r in rows],
        "best": best_block, "margin": margin,
        "time": {"sessions": len(sessions), "wall_s": round(sum(s["wall_s"] for s in sessions), 1),
                 "train_loops_s": round(train_s, 1), "rungs_s": round(rung_s, 1),
                 "steps_trained": sum(g["steps_trained"] for r in rows for g in r["rungs"]),
                 "note": "wall_s: the workers' wall time (a killed session counts up to its last finished rung); "
                         "train_loops_s: the training loops of every rung; rungs_s: + loading, evaluation, saving"},
        "fairness": fairness, "caveats": caveats,
        "files": {f: f"results/search/{name}/{f}" for f in FILES},
    }
    atomic_write_text(out / "rungs.md", f"# Search '{name}': a table per rung\n\n"
                      f"{experiment}/{model}/{method}, space configs/search/{space.name}.yaml, objective: "
                      f"{space.objective.label} ({direction}). Rank within the rung; *steps trained* are this rung's "
                      "own steps (a kept trial continues from its checkpoint); *train s* is the training loop, "
                      "*wall s* adds loading, evaluation and saving.\n\n" + md_tables)
    buf = io.StringIO()
    if flat:
        w = csv.DictWriter(buf, fieldnames=list(flat[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(flat)
    atomic_write_text(out / "trials.csv", buf.getvalue())
    _figure(rows, space, best, out / "objective_vs_step.png", name)
    atomic_write_json(out / "search_summary.json", summary)
    atomic_write_text(out / "README.md", _readme(summary, space))
    return out


def _readme(s: dict, space) -> str:
    b, m, t = s["best"], s["margin"], s["time"]
    lines = [f"# Hyperparameter search '{s['name']}'", "",
             f"**What was searched.** {s['experiment']}/{s['model']}/{s['method']}, space "
             f"[`{s['space_file']}`](../../../{s['space_file']}): " +
             "; ".join(f"`{p['name']}` " + (f"in {{{', '.join(map(_fmt, p['choices']))}}}" if p["kind"] == "choices"
                                            else f"{p['kind']} [{_fmt(p['low'])}, {_fmt(p['high'])}]")
                       for p in s["searched"]) + ".",
             f"{s['budget']['n_configs']} configurations drawn by Optuna's RandomSampler (seed {s['budget']['seed']})"
             + (" plus the experiment's own settings (the baseline, config 0)" if s["budget"]["include_baseline"] else "")
             + f"; {s['pruner'].replace('_', ' ')} over rungs at {', '.join(map(str, s['rungs']))} steps (reduction "
             f"factor {s['budget']['reduction_factor']}); objective: {s['objective']['label']} "
             f"({s['objective']['direction']}). Every trial is a real `train` run; a kept trial continues from its "
             "checkpoint.", "",
             f"**Trials.** {s['n_trials']}: " + ", ".join(f"{v} {k.lower()}" for k, v in s["states"].items() if v) + ".",
             ""]
    if b:
        lines += [f"**What won.** Config {b['config']}{' (the baseline)' if b['baseline'] else ''}: "
                  f"{s['objective']['label']} **{b['objective']:.4f}** after {b['step']} steps, with "
                  + ", ".join(f"`{k}={_fmt(v)}`" for k, v in b["overrides"].items()) + "."]
        if "vs_baseline" in m:
            v = m["vs_baseline"]
            lines += [f"Against the experiment's own settings (config 0) at step {v['step']}: {v['best']:.4f} vs "
                      f"{v['baseline']:.4f}, a difference of {v['difference']:+.4f} ({100 * v['relative']:+.1f}%)"
                      + ("" if v["baseline_state"] == "COMPLETE" else
                         f" (the baseline was {v['baseline_state'].lower()} at that step)") + "."]
        elif b["baseline"]:
            lines += ["The experiment's own settings won: no searched configuration beat them."]
        if "vs_runner_up" in m:
            v = m["vs_runner_up"]
            lines += [f"Runner-up at {v['step']} steps: config {v['config']} ({v['runner_up']:.4f}, "
                      f"{v['difference']:+.4f})."]
        lines += ["", f"Use it: `make all EXPERIMENT={s['experiment']} SEARCH={s['name']}` (reads "
                  f"[`best_overrides.yaml`](best_overrides.yaml)).", ""]
    else:
        lines += ["**No winner yet**: no trial has finished the full budget (rerun the command to resume).", ""]
    lines += [f"**Time.** {t['wall_s']:.0f} s of worker wall time over {t['sessions']} session(s); "
              f"{t['steps_trained']} training steps in all, training loops {t['train_loops_s']:.0f} s, rungs with "
              f"loading/evaluation/saving {t['rungs_s']:.0f} s.", "",
              f"**Fairness.** {s['fairness']['statement']}", "", "**Caveats.**", ""]
    lines += [f"- {c}" for c in s["caveats"]]
    lines += ["", "Files: [rungs.md](rungs.md) (a table per rung), [trials.csv](trials.csv), "
              "[objective_vs_step.png](objective_vs_step.png), [search_summary.json](search_summary.json).", "",
              "![objective vs step](objective_vs_step.png)", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# SEARCH=<name> in make: the overrides one (model, method) run takes from the given searches
# --------------------------------------------------------------------------------------------------
def overrides_for(names: list[str], experiment: str, model: str, method: str) -> list[str]:
    """`section.key=value` words: method.* / model.* keys of the search that tuned this (model, method); the
    shared train.* / data.* keys of every named search (they apply to every method; two searches that
    disagree on one is an error)."""
    shared: dict[str, tuple[object, str]] = {}
    own: dict[str, object] = {}
    for name in names:
        f = paths.RESULTS / "search" / name / "best_overrides.yaml"
        if not f.is_file():
            raise FtcError(f"SEARCH={name}: {f.relative_to(paths.ROOT) if f.is_relative_to(paths.ROOT) else f} is "
                           f"missing; run `make search SEARCH={name}` first (a search writes it once a trial finishes)")
        best = yaml.safe_load(f.read_text())
        if best.get("experiment") != experiment:
            raise FtcError(f"SEARCH={name} tuned experiment '{best.get('experiment')}', not '{experiment}'; "
                           f"run a search for this experiment (`make search EXPERIMENT={experiment} SEARCH=...`)")
        for k, v in best["overrides"].items():
            section = k.split(".", 1)[0]
            if section in ("method", "model"):
                if best["method"] == method and best["model"] == model:
                    own[k] = v
            elif k in shared and shared[k][0] != v:
                raise FtcError(f"searches {shared[k][1]} and {name} disagree on {k} ({shared[k][0]!r} vs {v!r}), "
                               f"which every method of the experiment shares; tune {k} in one search only, or fix it")
            else:
                shared[k] = (v, name)
    words = {**{k: v for k, (v, _) in shared.items()}, **own}
    return [f"{k}={json.dumps(v)}" for k, v in words.items()]  # JSON is YAML: what parse_overrides reads
