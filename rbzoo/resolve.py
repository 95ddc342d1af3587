"""Turn what a user types for MODEL into a checkpoint file.

A MODEL is a checkpoint file, or a run folder holding `best.safetensors` (preferred) or
`last.safetensors`. Other ways of naming a model (zoo names, Hub repo ids) plug in through
:data:`RESOLVERS`: callables that return a local path, or None when the name is not theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .errors import CheckpointError

# Tried in order after files and run folders; the first non-None answer wins. A resolver may
# raise an RbzooError (e.g. HubError) when the name is clearly its own but cannot be fetched.
RESOLVERS: list[Callable[[str], Path | None]] = []

RUN_FOLDER_FILES = ("best.safetensors", "last.safetensors")


def resolve_checkpoint(spec: str) -> Path:
    """The checkpoint file that `spec` names (file, run folder, or a registered resolver's name)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in RUN_FOLDER_FILES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"no such checkpoint or run folder: {spec} (a folder without {' or '.join(RUN_FOLDER_FILES)})")
    for resolver in RESOLVERS:
        found = resolver(spec)
        if found is not None:
            return Path(found)
    raise CheckpointError(f"no such checkpoint or run folder: {spec}")


def _zoo_or_hub(spec: str) -> Path | None:
    # Imported lazily: huggingface_hub is only needed when a name is not a local path.
    from .hub import resolve_remote

    return resolve_remote(spec)


RESOLVERS.append(_zoo_or_hub)
