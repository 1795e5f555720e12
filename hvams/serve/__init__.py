"""Serving: export a trained run, score samples without MPI."""
