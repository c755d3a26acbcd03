"""Bad input gets one line (what is wrong, what to do), exit 2, and nothing produced earlier is lost.

Each case is a row of docs/bad-input.md. Cases run in process through `ftcompare.cli.main` inside an
isolated project (the `project` fixture), so they are fast and touch nothing of the real checkout.
"""
import errno
import json
import os
import shutil

import pytest

from conftest import add_tiny_model_config
from ftcompare import cli, io, paths


def run(capsys, *argv):
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def one_line(err):
    """Exactly one error line, and it is the last thing printed (progress bars may precede it)."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], f"expected one error line, got:\n{err}"
    assert "Traceback" not in err
    return errors[0]


@pytest.fixture()
def proj(project, tiny_model_dir):
    add_tiny_model_config(project, tiny_model_dir)
    return project


TINY = ["data.n_train=8", "data.n_val=4", "train.max_steps=1", "train.per_device_train_batch_size=4",
        "train.max_length=512", "train.save_steps=100", "train.num_threads=1"]


# ---- names and configs ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv,expected", [
    (["train", "--model", "nope", "--method", "lora"], "unknown model alias 'nope'; valid: "),
    (["train", "--model", "135m", "--method", "dorra"], "unknown method 'dorra'; valid: dora, full, lora, qdora, qlora, rslora"),
    (["train", "--experiment", "nope", "--model", "135m", "--method", "lora"], "unknown experiment 'nope'; valid: "),
    (["train", "--model", "135m", "--method", "lora", "train.lr=1"], "unknown key 'lr'"),
    (["train", "--model", "135m", "--method", "lora", "train.max_steps=ten"], "train.max_steps: expected int, got str"),
    (["train", "--model", "135m", "--method", "lora", "model.dtype=float8"], "model.dtype='float8' is not valid; expected one of"),
    (["train", "--model", "135m", "--method", "lora", "max_steps"], "is not of the form section.key=value"),
    (["train", "--model", "135m", "--method", "lora", "data.n_train=0"], "data.n_train must be > 0 or null"),
    (["train", "--model", "135m", "--method", "qlora", "method.lora=null"], "quantization needs a lora section"),
], ids=["model", "method", "experiment", "key", "type", "choice", "override-form", "empty-train", "qlora-without-lora"])
def test_config_errors(proj, capsys, argv, expected):
    code, err = run(capsys, *argv)
    assert code == 2 and expected in one_line(err)
    assert not any((proj / "models").glob("default/*"))  # nothing written


def test_misspelled_key_suggests_the_closest(proj, capsys):
    code, err = run(capsys, "train", "--model", "135m", "--method", "lora", "train.warmup_step=3")
    assert code == 2 and "did you mean 'warmup_steps'?" in one_line(err)


def test_invalid_yaml_file(proj, capsys):
    (proj / "configs" / "methods" / "broken.yaml").write_text("name: broken\nlora: [unclosed\n")
    code, err = run(capsys, "train", "--model", "135m", "--method", "broken")
    assert code == 2 and "configs/methods/broken.yaml: not valid YAML" in one_line(err)


# ---- assets and models -----------------------------------------------------------------------------
def test_missing_embedded_package(proj, capsys):
    (proj / "configs" / "models" / "ghost.yaml").write_text(
        "alias: ghost\nsource: packaged-gguf\npackage: not-installed-pkg\npackage_version: '1.0'\n"
        "gguf_file: x.gguf\nlora_target_modules: [q_proj]\n")
    code, err = run(capsys, "prepare-base", "--model", "ghost")
    assert code == 2 and "the asset package 'not-installed-pkg' is not installed; run `make setup`" in one_line(err)


def test_offline_hub_model(proj, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    code, err = run(capsys, "prepare-base", "--model", "1b")
    assert code == 2 and "model '1b' (meta-llama/Llama-3.2-1B@4e20de3" in one_line(err)
    assert "is not in the HF cache" in one_line(err) and "HF_HUB_OFFLINE=1: run once with network" in one_line(err)
    assert not (proj / "models" / "base" / "1b").exists()


def test_local_model_without_config(proj, capsys, tmp_path):
    (proj / "configs" / "models" / "empty.yaml").write_text(
        f"alias: empty\nsource: local\npath: {tmp_path}\nlora_target_modules: [q_proj]\n")
    code, err = run(capsys, "train", "--model", "empty", "--method", "lora", *TINY)
    assert code == 2 and "has no config.json; point model.path at a HF checkpoint folder" in one_line(err)


def test_corrupt_safetensors(proj, capsys, tiny_model_dir, tmp_path):
    bad = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "model.safetensors").write_bytes(b"\x00\x01not a safetensors file")
    add_tiny_model_config(proj, bad, alias="corrupt")
    code, err = run(capsys, "train", "--model", "corrupt", "--method", "lora", *TINY)
    assert code == 2 and "corrupt safetensors file" in one_line(err)


def test_pickle_only_weights_are_refused(proj, capsys, tiny_model_dir, tmp_path):
    bad = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "model.safetensors").rename(bad / "pytorch_model.bin")
    add_tiny_model_config(proj, bad, alias="pickled")
    code, err = run(capsys, "train", "--model", "pickled", "--method", "full", *TINY)
    assert code == 2 and "no *.safetensors weights (pickled .bin weights are never loaded)" in one_line(err)


def test_lora_target_missing_from_model(proj, capsys):
    code, err = run(capsys, "train", "--model", "tiny", "--method", "lora", *TINY,
                    "method.lora.target_modules=[c_attn]")
    assert code == 2 and "has no module(s) named ['c_attn']" in one_line(err)


# ---- data -----------------------------------------------------------------------------------------
def test_sequence_longer_than_max_length(proj, capsys):
    code, err = run(capsys, "train", "--model", "tiny", "--method", "lora", *TINY, "train.max_length=20")
    assert code == 2 and "tokens > train.max_length=20; raise train.max_length" in one_line(err)


def test_unknown_loader(proj, capsys):
    (proj / "configs" / "data" / "hellaswag-train.yaml").write_text(
        "name: hellaswag-train\nloader: csv-magic\n")
    code, err = run(capsys, "train", "--model", "tiny", "--method", "lora", *TINY)
    assert code == 2 and "unknown loader 'csv-magic'; valid: hellaswag-packaged, hellaswag-hub" in one_line(err)


# ---- stage order and artifacts ----------------------------------------------------------------------
def test_merge_before_training(proj, capsys):
    code, err = run(capsys, "merge", "--model", "tiny", "--method", "lora")
    assert code == 2 and "is not trained yet" in one_line(err) and "scripts/train.sh tiny lora" in err


def test_adapter_without_adapter_config(proj, capsys):
    assert run(capsys, "train", "--model", "tiny", "--method", "lora", *TINY)[0] == 0
    run_dir = paths.run_dir("default", "tiny", "lora")
    (run_dir / "final" / "adapter_config.json").unlink()
    code, err = run(capsys, "merge", "--model", "tiny", "--method", "lora")
    assert code == 2 and "has no adapter_config.json: not a LoRA adapter; re-train" in one_line(err)
    assert (run_dir / "train_summary.json").is_file()  # earlier outputs untouched


def test_disk_full_keeps_the_previous_file(proj, capsys, monkeypatch):
    target = proj / "models" / "keep.json"
    io.atomic_write_json(target, {"v": 1})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        io.atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert not [p.name for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_disk_full_during_a_stage_is_one_line(proj, capsys, monkeypatch):
    """A full disk while train writes (the mock raises as the kernel does: errno only, no file name): one line
    with the advice, exit 2, no temp file left, and no train_summary.json (make re-runs the stage)."""
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    code, err = run(capsys, "train", "--model", "tiny", "--method", "lora", *TINY)
    line = one_line(err)
    assert code == 2 and line.startswith("error: no space left on device while writing an output; free disk space")
    assert "partial ones were removed" in line
    written = [p for p in (proj / "models").rglob("*") if p.name != "base" and "base" not in p.parts]
    assert not [p for p in written if p.name.endswith(".tmp")], written
    assert not [p for p in written if p.name == "train_summary.json"], written


def test_no_secret_in_any_written_file(proj, capsys, monkeypatch):
    secret = "hf_ftcompareTestToken0123456789abcdef"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", secret)
    exp = proj / "configs" / "experiments"    # an experiment of the tiny model, so that analyze writes a record
    text = (exp / "default.yaml").read_text().replace("models: [135m]", "models: [tiny]")
    (exp / "leak.yaml").write_text(text.replace("name: default", "name: leak").replace(
        "methods: [full, lora, qlora]", "methods: [qlora]").replace(
        "limit: {ftc_hellaswag: 200, ftc_gsm8k_cot: 20}",
        "limit: {ftc_hellaswag: 2, ftc_mmlu_high_school_computer_science: 2, ftc_gsm8k_cot: 2}"))
    e = ["--experiment", "leak"]
    assert run(capsys, "train", *e, "--model", "tiny", "--method", "qlora", *TINY)[0] == 0
    assert run(capsys, "merge", *e, "--model", "tiny", "--method", "qlora")[0] == 0
    for method in ("base", "qlora"):
        assert run(capsys, "evaluate", *e, "--model", "tiny", "--method", method)[0] == 0
    code, err = run(capsys, "analyze", *e, "--allow-missing")
    assert code == 0, err
    scanned = set()
    for top in ("models", "evaluation_results", "results"):
        for f in (proj / top).rglob("*"):
            if f.is_file() and "base" not in f.relative_to(proj / top).parts[:1]:
                scanned.add(top)
                assert secret.encode() not in f.read_bytes(), f"token leaked into {f}"
    record = proj / "results" / "leak" / "models_evaluation_record.md"   # the record (scanned above too)
    assert scanned == {"models", "evaluation_results", "results"} and record.is_file()
    assert secret.encode() not in record.read_bytes()
