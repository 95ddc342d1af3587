"""rbzoo: robust binary subnetworks — train, evaluate, share (seed + masks + BN statistics)."""

__version__ = "0.1.0"

from .checkpoint import load, read, save  # noqa: E402
from .errors import RbzooError  # noqa: E402
from .models import create_model, list_models  # noqa: E402

__all__ = ["__version__", "create_model", "list_models", "load", "read", "save", "RbzooError"]
