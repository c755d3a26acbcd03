"""The model and dataset hub: pinned revisions, a fast access check, and one-line errors.

Every hub model (configs/models/*.yaml, source: hub) and hub dataset (configs/data/*.yaml, hub_id) pins a
`revision` (a commit hash): the same config always trains on the same weights and rows. What can go wrong
with the hub is the user's to fix, so it is an FtcError (one line, exit 2), raised *before* a stage writes:

  no network               cannot reach the hub for model '1b' (meta-llama/Llama-3.2-1B@4e20de3...): ...
  HF_HUB_OFFLINE=1, no cache   ... is not in the HF cache (...) and HF_HUB_OFFLINE=1: ...
  gated, no HF_TOKEN       ... is gated: accept its licence on https://huggingface.co/... and export HF_TOKEN=...
  unknown revision         ... has no revision '...': fix `revision` in configs/models/1b.yaml
  unknown or private repo  ... not found on the hub (a private repo needs HF_TOKEN): fix `hub_id` in ...

With HF_HUB_OFFLINE=1 and the pinned revision in the cache (HF_HOME), everything runs from the cache.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from .config import DataConfig, ModelConfig, RunConfig
from .errors import FtcError

TIMEOUT_S = 10  # per hub request of the access check: an unreachable hub fails in seconds, not minutes


@dataclass
class HubRef:
    what: str                 # "model '1b'" / "dataset 'smol-smoltalk'"
    repo_id: str
    revision: str | None
    repo_type: str            # model | dataset
    config_file: str          # where the user fixes it

    def __str__(self) -> str:
        return f"{self.what} ({self.repo_id}@{self.revision or 'main'})"


def model_ref(model: ModelConfig) -> HubRef | None:
    if model.source != "hub":
        return None
    return HubRef(f"model '{model.alias}'", model.hub_id, model.revision, "model", f"configs/models/{model.alias}.yaml")


def data_ref(data: DataConfig) -> HubRef | None:
    if not data.hub_id:
        return None
    return HubRef(f"dataset '{data.name}'", data.hub_id, data.revision, "dataset", f"configs/data/{data.name}.yaml")


def refs(run: RunConfig) -> list[HubRef]:
    return [r for r in (model_ref(run.model), data_ref(run.data)) if r is not None]


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def as_ftc_error(ref: HubRef, exc: BaseException) -> FtcError | None:
    """The one line for a hub exception (huggingface_hub's own classes, or a transport error); None if the
    exception is not about hub access."""
    from huggingface_hub import errors as e

    if isinstance(exc, e.GatedRepoError):
        return FtcError(f"{ref} is gated: accept its licence on https://huggingface.co/{ref.repo_id} with your account, "
                        "then export HF_TOKEN=<a read token of that account> and re-run")
    if isinstance(exc, e.RevisionNotFoundError):
        return FtcError(f"{ref} has no revision '{ref.revision}' on the hub: fix `revision` in {ref.config_file} "
                        "(a commit hash of that repository)")
    if isinstance(exc, e.RepositoryNotFoundError):
        return FtcError(f"{ref} not found on the hub (a private repository needs HF_TOKEN): fix `hub_id` in "
                        f"{ref.config_file} or export HF_TOKEN")
    if isinstance(exc, e.OfflineModeIsEnabled) or (offline() and isinstance(exc, (OSError, ValueError))):
        return FtcError(f"{ref} is not in the HF cache ({_cache_dir()}) and HF_HUB_OFFLINE=1: run once with network "
                        "to fill the cache, or use the embedded default (--model 135m)")
    module = type(exc).__module__.split(".")[0]
    if isinstance(exc, (ConnectionError, TimeoutError, e.LocalEntryNotFoundError)) or module.startswith(
            ("httpx", "httpcore", "requests", "urllib3")):  # LocalEntryNotFoundError online: the hub did not answer
        return FtcError(f"cannot reach the hub for {ref} ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else 'no detail'}): "
                        "check the network (or a proxy: HTTPS_PROXY), or set HF_HUB_OFFLINE=1 to use the HF cache")
    if isinstance(exc, e.HfHubHTTPError):
        return FtcError(f"the hub refused {ref} ({str(exc).splitlines()[0][:160]}); check hub_id/revision in "
                        f"{ref.config_file} and HF_TOKEN")
    return None


@contextlib.contextmanager
def errors(ref: HubRef | None):
    """Turn hub access failures inside the block (from_pretrained, load_dataset, ...) into one line."""
    try:
        yield
    except FtcError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified below; anything else propagates unchanged
        if ref is None:
            raise
        err = as_ftc_error(ref, exc)
        if err is None:
            cause = exc.__cause__ or exc.__context__
            err = as_ftc_error(ref, cause) if cause is not None else None
        if err is None:
            raise
        raise err from exc


def check(ref: HubRef) -> None:
    """Seconds, before anything is written: is `ref` at its revision reachable (or cached, offline)?"""
    from huggingface_hub import HfApi, snapshot_download

    with errors(ref):
        if offline():
            snapshot_download(ref.repo_id, repo_type=ref.repo_type, revision=ref.revision, local_files_only=True)
            return
        api = HfApi()
        api.repo_info(ref.repo_id, repo_type=ref.repo_type, revision=ref.revision, timeout=TIMEOUT_S)
        api.auth_check(ref.repo_id, repo_type=ref.repo_type)  # gated without a token: GatedRepoError


def load_dataset(data: DataConfig, name: str | None, split: str):
    """datasets.load_dataset of a hub dataset at its pinned revision. Offline, from the hub cache's snapshot
    folder (datasets' own offline mode finds only what it converted before, not the downloaded files)."""
    import datasets

    ref = data_ref(data)
    with errors(ref):
        if offline():
            from huggingface_hub import snapshot_download

            path = snapshot_download(data.hub_id, repo_type="dataset", revision=data.revision, local_files_only=True)
            return datasets.load_dataset(path, name, split=split)
        return datasets.load_dataset(data.hub_id, name, split=split, revision=data.revision)


def check_run(run: RunConfig) -> None:
    for ref in refs(run):
        check(ref)


def revisions(run: RunConfig) -> dict:
    """What the run's manifest records: hub id and revision of its base model and dataset (None: not hub)."""
    return {kind: ({"id": r.repo_id, "revision": r.revision} if r else None)
            for kind, r in (("model", model_ref(run.model)), ("data", data_ref(run.data)))}


def revision_problems(summaries: list[tuple[str, dict]]) -> list[str]:
    """Runs of one model (or trained on one dataset) made from different hub revisions cannot be compared.

    summaries: (where, train_summary.json contents) pairs. Returns one line per problem (empty: comparable).
    A run without a recorded revision (made before revisions were recorded, or unpinned) counts as its own
    revision 'unrecorded', so it never silently passes for a pinned one."""
    seen: dict[tuple[str, str], dict[str, list[str]]] = {}
    ids: dict[tuple[str, str], set[str]] = {}
    for where, summary in summaries:
        hub = (summary.get("manifest") or {}).get("hub")
        if hub is None:  # written before revisions were recorded: the model's revision is unknown
            seen.setdefault(("model", str(summary.get("model"))), {}).setdefault("unrecorded", []).append(where)
            continue
        for kind in ("model", "data"):
            entry = hub.get(kind)
            if entry is None:
                continue  # not from the hub (packaged or local)
            key = (kind, str(summary.get("model")) if kind == "model" else entry["id"])
            ids.setdefault(key, set()).add(entry["id"])
            seen.setdefault(key, {}).setdefault(entry.get("revision") or "unpinned", []).append(where)
    problems = []
    for (kind, name), revs in sorted(seen.items()):
        if len(revs) > 1:
            label = name if kind == "data" else f"{name} ({', '.join(sorted(ids.get((kind, name), ())))})"
            detail = "; ".join(f"{rev}: {', '.join(sorted(ws))}" for rev, ws in sorted(revs.items()))
            problems.append(f"{kind} {label} comes from {len(revs)} revisions ({detail}): runs made from different "
                            "revisions are not comparable; re-train the odd ones with the pinned revision")
    return problems
