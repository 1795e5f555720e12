"""Training runs: the job entry, the Job, the restore step, checkpoints, evaluation records,
reports."""
