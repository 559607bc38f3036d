"""sglr-keras: adversarial training with Self-Guided Label Refinement in Keras 3."""

__version__ = "0.1.0"
