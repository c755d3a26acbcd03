"""Hub models and datasets: pinned revisions, recorded in the manifest; hub access failures are one line in seconds
(exit 2, nothing written); with HF_HUB_OFFLINE=1 and a filled cache, a hub model trains from the cache."""
import re
import shutil
import time

import pytest

from ftcompare import cli, config, hub

HASH = re.compile(r"^[0-9a-f]{40}$")
PAPER = ["train", "--experiment", "paper", "--model", "1b", "--method", "lora"]


def test_every_hub_model_and_dataset_pins_a_commit():
    for name in config.available("models"):
        m = config.load("models", name)
        if m.source == "hub":
            assert m.revision and HASH.match(m.revision), f"configs/models/{name}.yaml: revision must be a commit hash"
    for name in config.available("data"):
        d = config.load("data", name)
        if d.hub_id:
            assert d.revision and HASH.match(d.revision), f"configs/data/{name}.yaml: revision must be a commit hash"
    for exp in ("paper", "chat-hub"):
        e = config.load("experiments", exp)
        for model in e.models:
            run = config.resolve_run(exp, model, e.methods[0])
            recorded = hub.revisions(run)
            assert recorded["model"] == {"id": run.model.hub_id, "revision": run.model.revision}
            assert recorded["data"] == {"id": run.data.hub_id, "revision": run.data.revision}


def _summary(model, hub_id=None, rev=None, data=None):
    h = {"model": {"id": hub_id, "revision": rev} if hub_id else None, "data": data}
    return {"model": model, "manifest": {"hub": h}}


def test_revision_problems_refuse_runs_of_one_model_from_different_revisions():
    a, b = "a" * 40, "b" * 40
    same = [("x/lora", _summary("1b", "meta-llama/Llama-3.2-1B", a)), ("x/full", _summary("1b", "meta-llama/Llama-3.2-1B", a)),
            ("x/135m", _summary("135m")), ("x/0.5b", _summary("0.5b", "Qwen/Qwen2.5-0.5B", b))]
    assert hub.revision_problems(same) == []
    mixed = same + [("y/qlora", _summary("1b", "meta-llama/Llama-3.2-1B", b))]
    (problem,) = hub.revision_problems(mixed)
    assert problem.startswith("model 1b (meta-llama/Llama-3.2-1B) comes from 2 revisions")
    assert f"{a}: x/full, x/lora" in problem and f"{b}: y/qlora" in problem
    old = same + [("z/old", {"model": "1b", "manifest": {}})]  # a summary written before revisions were recorded
    assert "unrecorded: z/old" in hub.revision_problems(old)[0]
    data = [("p", _summary("1b", "m/1b", a, {"id": "Rowan/hellaswag", "revision": a})),
            ("q", _summary("1b", "m/1b", a, {"id": "Rowan/hellaswag", "revision": b}))]
    assert hub.revision_problems(data)[0].startswith("data Rowan/hellaswag comes from 2 revisions")


def _one_line_error(capsys, argv, project):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err and err[-1].startswith("error: ") and sum(x.startswith("error: ") for x in err) == 1
    assert "Traceback" not in "\n".join(err)
    assert not (project / "models" / "paper").exists()  # nothing written
    return err[-1]


@pytest.fixture()
def online(project, monkeypatch, tmp_path):
    """The paper experiment as run with network: no HF_*_OFFLINE, an empty cache, no token."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # read once at import (conftest set it)
    return project


def test_no_network_is_one_line_in_seconds(online, capsys, monkeypatch):
    # A proxy nobody listens on: the real hub client gets a real connection error, on any machine.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    line = _one_line_error(capsys, PAPER, online)
    # "within seconds": the access check itself (the CLI's imports are CPU time, slow only on a loaded machine)
    t0 = time.time()
    with pytest.raises(hub.FtcError, match="cannot reach the hub"):
        hub.check_run(config.resolve_run("paper", "1b", "lora"))
    assert time.time() - t0 < 15
    assert line.startswith("error: cannot reach the hub for model '1b' (meta-llama/Llama-3.2-1B@4e20de3")
    assert "check the network" in line and "HF_HUB_OFFLINE=1" in line


def test_offline_with_an_empty_cache_is_one_line(online, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    line = _one_line_error(capsys, PAPER, online)
    assert "model '1b' (meta-llama/Llama-3.2-1B@4e20de3" in line and "is not in the HF cache" in line
    assert "and HF_HUB_OFFLINE=1: run once with network to fill the cache" in line


def _http_error(cls, status, message):
    import httpx2

    return cls(message, response=httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/x")))


@pytest.mark.parametrize("case", ["gated", "revision", "not-found"])
def test_hub_refusals_are_one_line(online, capsys, monkeypatch, case):
    """huggingface_hub's own exception classes, raised where the real client raises them."""
    from huggingface_hub import HfApi, errors

    def repo_info(self, repo_id, **kw):
        if case == "revision":
            raise _http_error(errors.RevisionNotFoundError, 404, "Invalid rev id: 4e20de3")
        if case == "not-found":
            raise _http_error(errors.RepositoryNotFoundError, 404, "Repository Not Found")

    def auth_check(self, repo_id, **kw):
        raise _http_error(errors.GatedRepoError, 403, "Access to model meta-llama/Llama-3.2-1B is restricted")

    monkeypatch.setattr(HfApi, "repo_info", repo_info)
    monkeypatch.setattr(HfApi, "auth_check", auth_check)
    line = _one_line_error(capsys, PAPER, online)
    assert "model '1b' (meta-llama/Llama-3.2-1B@4e20de362430cd3b72f300e6b0f18e50e7166e08)" in line
    expected = {"gated": "is gated: accept its licence on https://huggingface.co/meta-llama/Llama-3.2-1B with your "
                         "account, then export HF_TOKEN=",
                "revision": "has no revision '4e20de362430cd3b72f300e6b0f18e50e7166e08' on the hub: fix `revision` in "
                            "configs/models/1b.yaml",
                "not-found": "not found on the hub (a private repository needs HF_TOKEN): fix `hub_id` in configs/models/1b.yaml"}
    assert expected[case] in line


def test_load_errors_inside_from_pretrained_are_one_line(online, capsys, monkeypatch):
    """If the access check passed but loading fails later (network lost mid-run), still one line."""
    from ftcompare import modeling
    from huggingface_hub import errors

    monkeypatch.setattr(hub, "check_run", lambda run: None)
    monkeypatch.setattr("ftcompare.train.check_run", lambda run: None)

    def from_pretrained(*a, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co'") from errors.OfflineModeIsEnabled("offline")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", from_pretrained)
    with pytest.raises(modeling.FtcError, match=r"model '1b' \(meta-llama/Llama-3.2-1B@4e20de3\w+\) is not in the HF cache"):
        modeling.load_tokenizer(config.load("models", "1b"))


def _fill_cache(cache, repo_id, revision, src, kind="models"):
    """The layout huggingface_hub writes: <kind>--org--name/{refs/main, snapshots/<commit>/<files>}."""
    repo = cache / (f"{kind}--" + repo_id.replace("/", "--"))
    shutil.copytree(src, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def test_offline_hub_model_and_dataset_train_from_a_filled_cache(project, tiny_model_dir, monkeypatch, tmp_path, capsys):
    rev = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub-cache"
    _fill_cache(cache, "ftc-test/tiny-llama", rev, tiny_model_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    (project / "configs" / "models" / "tinyhub.yaml").write_text(
        f"alias: tinyhub\nsource: hub\nhub_id: ftc-test/tiny-llama\nrevision: '{rev}'\ndtype: float32\n"
        "lora_target_modules: [q_proj, v_proj]\n")
    # a hub chat dataset in the cache as the hub stores it (parquet under data/)
    import pandas as pd

    rows = tmp_path / "rows" / "data"
    rows.mkdir(parents=True)
    pd.DataFrame({"messages": [[{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}."}]
                               for i in range(120)]}).to_parquet(rows / "train-00000-of-00001.parquet")
    _fill_cache(cache, "ftc-test/chat", rev, rows.parent, kind="datasets")
    (project / "configs" / "data" / "tinychat.yaml").write_text(
        f"name: tinychat\nloader: messages-hub\nformat: chat\nhub_id: ftc-test/chat\nrevision: '{rev}'\n"
        "column: messages\nn_val: 4\n")
    args = ["data.n_train=8", "data.n_val=4", "train.max_steps=1", "train.per_device_train_batch_size=4",
            "train.max_length=512", "train.save_steps=100", "train.num_threads=1"]
    assert cli.main(["train", "--model", "tinyhub", "--method", "lora", *args]) == 0
    assert cli.main(["train", "--experiment", "chat", "--model", "tinyhub", "--method", "lora", "experiment.data=tinychat",
                     *args]) == 0
    import json

    summary = json.loads((project / "models" / "default" / "tinyhub" / "lora" / "train_summary.json").read_text())
    assert summary["manifest"]["hub"] == {"model": {"id": "ftc-test/tiny-llama", "revision": rev}, "data": None}
    summary = json.loads((project / "models" / "chat" / "tinyhub" / "lora" / "train_summary.json").read_text())
    assert summary["manifest"]["hub"]["data"] == {"id": "ftc-test/chat", "revision": rev}
    assert summary["n_train_examples"] == 8
    assert cli.main(["merge", "--model", "tinyhub", "--method", "lora"]) == 0
    # a revision the cache does not hold: one line, nothing trained
    (project / "configs" / "models" / "tinyhub.yaml").write_text(
        (project / "configs" / "models" / "tinyhub.yaml").read_text().replace(rev, "f" * 40))
    capsys.readouterr()
    assert cli.main(["train", "--model", "tinyhub", "--method", "full", *args]) == 2
    assert "is not in the HF cache" in capsys.readouterr().err
    assert not (project / "models" / "default" / "tinyhub" / "full").exists()


def test_lost_network_inside_from_pretrained_online_names_the_network(online, monkeypatch):
    """Online, transformers reports a failed download as OSError caused by LocalEntryNotFoundError: the line must
    say the hub could not be reached (not that the cache is empty)."""
    from ftcompare import modeling
    from huggingface_hub import errors

    def from_pretrained(*a, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co'") from errors.LocalEntryNotFoundError("no")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", from_pretrained)
    with pytest.raises(modeling.FtcError, match=r"cannot reach the hub for model '1b' \(meta-llama/Llama-3.2-1B@4e20de3"):
        modeling.load_tokenizer(config.load("models", "1b"))
