"""Every method sees the same batches in the same order at EVERY step (not only step 1): the batch each
training step receives is recorded at the Trainer (a subclass of the one train.py builds) and compared across
methods, over more than one epoch, so the reshuffle of the second epoch is compared too."""
from __future__ import annotations

import hashlib

import pytest

from conftest import add_tiny_model_config, copy_project, use_root
from ftcompare import config

# 24 examples in batches of 4: 6 steps per epoch; 8 steps reach into the second epoch
TINY = {"data.n_train": 24, "data.n_val": 4, "train.max_steps": 8, "train.per_device_train_batch_size": 4,
        "train.per_device_eval_batch_size": 4, "train.max_length": 512, "train.save_steps": 100,
        "train.warmup_steps": 0, "train.num_threads": 1}
METHODS = ("full", "lora", "qlora")


def _batch_hash(inputs) -> str:
    h = hashlib.sha256()
    for key in ("input_ids", "labels"):
        h.update(key.encode() + inputs[key].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def batches_per_method(tiny_model_dir, tmp_path_factory):
    import torch
    import transformers

    from ftcompare import train as train_mod

    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    root = use_root(mp, copy_project(tmp_path_factory.mktemp("order")))
    alias = add_tiny_model_config(root, tiny_model_dir)
    seen: dict[str, list[str]] = {}

    class Recording(transformers.Trainer):   # train.py imports Trainer from transformers when it runs
        def training_step(self, model, inputs, *args, **kwargs):
            seen[current].append(_batch_hash(inputs))
            return super().training_step(model, inputs, *args, **kwargs)

    mp.setattr(transformers, "Trainer", Recording)
    for current in METHODS:
        seen[current] = []
        train_mod.train(config.resolve_run("default", alias, current, TINY))
    yield seen
    mp.undo()


def test_every_step_sees_the_same_batch_under_every_method(batches_per_method):
    ref = batches_per_method["full"]
    assert len(ref) == TINY["train.max_steps"]
    for method in METHODS[1:]:
        diff = [i + 1 for i, (a, b) in enumerate(zip(ref, batches_per_method[method])) if a != b]
        assert batches_per_method[method] == ref, f"{method}: other batches than full at step(s) {diff}"


def test_the_order_is_shuffled_and_reshuffled(batches_per_method):
    """Not a trivially fixed order: the batches are all distinct within an epoch, and the second epoch's
    first batches are a new shuffle, not a replay of the first epoch's."""
    ref = batches_per_method["full"]
    assert len(set(ref[:6])) == 6
    assert ref[6:8] != ref[0:2]
