"""What an evaluation leaves: a record in ``RUN_DIR/metrics.jsonl``, the printed table, and
TensorBoard points (the scoring itself is the worker's: ``WorkerTrainer.evaluate_day``)."""
from __future__ import annotations

import json

from .report import format_metrics_table


def record_evaluation(job, epoch: int, step: int, metrics: dict) -> dict:
    """Write, print and log the test metrics of ``step``; the record."""
    record = {"epoch": epoch, "step": step, "split": "test", "day": job.test_day.name, **metrics}
    with open(job.run_dir / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(format_metrics_table([record], job.cfg.model), flush=True)
    job.tb.metrics(record, step)
    return record
