"""The worker role: the step client, the trainer, the training loop."""
