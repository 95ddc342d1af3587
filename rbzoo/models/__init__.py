"""Architectures registered by name and built by one factory: :func:`create_model`."""

from ._registry import ARCHITECTURES, create_model, list_models, prunable_layers, register_model

__all__ = ["ARCHITECTURES", "create_model", "list_models", "prunable_layers", "register_model"]
