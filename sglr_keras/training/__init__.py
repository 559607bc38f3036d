"""Adversarial training: the trainer model, its callbacks and the run driver."""
