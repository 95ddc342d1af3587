"""rbzoo: robust binary subnetworks — train, evaluate, share (seed + masks + BN statistics).

The top-level names load on first use (PEP 562), so `import rbzoo` and the CLI's `--help` do not
pay for torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# public name -> the module that defines it
_LAZY = {
    "create_model": ".models", "list_models": ".models",
    "load": ".checkpoint", "read": ".checkpoint", "save": ".checkpoint",
    "pull": ".zoo", "push": ".hub",
    "RbzooError": ".errors",
}

__all__ = ["__version__", "create_model", "list_models", "load", "read", "save", "pull", "push", "RbzooError"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'rbzoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
