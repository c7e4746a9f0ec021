"""absa: large, growing-batch training steered by the Hessian (ABS) with adversarial training (ABSA)."""

__version__ = "0.1.0"
