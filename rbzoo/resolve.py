"""Turn what a user types for MODEL into a checkpoint file.

A MODEL is a checkpoint file, or a run folder holding `best.safetensors` (preferred) or
`last.safetensors`. Other ways of naming a model (zoo names, Hub repo ids) are the caller's: pass
a `remote` resolver (e.g. :func:`rbzoo.zoo.resolve_remote`) that returns a local path, or None
when the name is not its own. This module knows files only, so it sits low and imports nothing
of the zoo.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .errors import CheckpointError

RUN_FOLDER_FILES = ("best.safetensors", "last.safetensors")

Resolver = Callable[[str], "Path | None"]


def looks_local(spec: str) -> bool:
    """True when `spec` can only be a local path: it exists, names a checkpoint file, or starts in an
    existing folder ("runs/typo" is a mistyped run, not the Hub repo runs/typo)."""
    path = Path(spec).expanduser()
    return path.exists() or spec.endswith((".safetensors", ".pth", ".pt")) or (
        len(path.parts) > 1 and Path(path.parts[0]).is_dir())


def resolve_checkpoint(spec: str, remote: Resolver | None = None) -> Path:
    """The checkpoint file that `spec` names: a file, a run folder, or (via `remote`) a name."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in RUN_FOLDER_FILES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"no such checkpoint or run folder: {spec} (a folder without {' or '.join(RUN_FOLDER_FILES)})")
    if remote is not None:
        found = remote(spec)
        if found is not None:
            return Path(found)
    raise CheckpointError(f"no such checkpoint or run folder: {spec}")
