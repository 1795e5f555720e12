"""Training runs: the plain worker loop, evaluation, checkpoints, the entry point."""
