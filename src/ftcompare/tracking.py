"""Experiment trackers (config `train.report_to`): extra views of the per-step log, never its source of truth.

train_log.jsonl (train.py) is what every later stage reads; a tracker mirrors the Trainer's logs elsewhere.
  none          nothing (default)
  tensorboard   event files under <run>/tensorboard/ (`tensorboard --logdir models/<experiment>`); scalars
                train/loss, train/learning_rate, train/grad_norm, ... at the Trainer's global step
A resumed run re-does the steps after its checkpoint: their events from the interrupted session are purged
(SummaryWriter purge_step), so each step appears once, as in train_log.jsonl.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .config import RunConfig
from .errors import FtcError

TENSORBOARD_DIR = "tensorboard"


def trackers(run: RunConfig, out: Path, resume: str | None) -> list:
    """Trainer callbacks for run.train.report_to (the Trainer's own report_to stays [])."""
    tb_dir = out / TENSORBOARD_DIR
    if resume is None:  # a fresh run: events of an earlier config or run must not mix in
        shutil.rmtree(tb_dir, ignore_errors=True)
    if run.train.report_to == "none":
        return []
    try:
        import tensorboard  # noqa: F401
        from transformers.integrations import TensorBoardCallback
    except ImportError as e:
        raise FtcError("train.report_to=tensorboard needs the tensorboard package pinned in requirements.txt; "
                       "run `make setup` (or set train.report_to=none)") from e

    # Purge only when the first writer opens: the final evaluation re-opens one after training ended.
    purge = [int(Path(resume).name.split("-")[1]) + 1] if resume else []

    class TensorBoard(TensorBoardCallback):
        """transformers' callback (process 0 only), writing to <run>/tensorboard/ and purging re-done steps."""

        def _init_summary_writer(self, args):
            self.tb_writer = self._SummaryWriter(log_dir=str(tb_dir), purge_step=purge.pop() if purge else None)

    cb = TensorBoard()
    cb.logging_dir = str(tb_dir)
    return [cb]
