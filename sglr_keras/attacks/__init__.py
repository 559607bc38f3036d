"""Adversarial attacks, one per module, each a class with ``perturb(model, x, y)``."""
