"""difftop: differentiable trajectory optimization as the policy class (DiffTOP)."""

__version__ = "0.1.0"
