"""Option checks that run before torch loads: a typo is answered in a fraction of a second.

Each is a typer callback (or is called at the top of a command, before its library import). The
library checks everything again; these only make the common mistakes fast. Names come from
:mod:`rbzoo.constants` (and torch-free modules), matched ignoring case where that is harmless.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..constants import choose
from ..errors import ConfigError

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def names(what: str, choices: tuple[str, ...]):
    """A callback accepting one of `choices` (any case) and returning its canonical spelling."""
    def check(value: str | None) -> str | None:
        return None if value is None else choose(what, value, tuple(choices))

    return check


def device(value: str | None) -> str | None:
    if value is None:
        return None
    if not _DEVICE_RE.match(value.lower()):
        raise ConfigError(f"unknown --device {value!r}; choose from auto, cpu, cuda, cuda:N")
    return value.lower()


def eps(value: str | None) -> str | None:
    """A radius written as a number or a fraction (8/255); its range is checked with the norm."""
    if value is not None:
        from ..config import parse_eps

        parse_eps(value)
    return value


def existing(value: Path | None) -> Path | None:
    """A file or folder the command reads."""
    if value is not None and not value.expanduser().exists():
        raise ConfigError(f"no such file or folder: {value}")
    return value


def model(spec: str | None) -> str | None:
    """MODEL: a checkpoint, a run folder, a zoo name or a Hub repo id. A local path that does not exist
    (or a run folder without a checkpoint) is refused here; names are resolved later (download)."""
    if spec is None:
        return None
    from ..resolve import looks_local, resolve_checkpoint

    if looks_local(spec) or not could_be_remote(spec):
        resolve_checkpoint(spec)  # raises "no such checkpoint or run folder: SPEC"
    return spec


def checkpoint(spec: str | None) -> str | None:
    """A local checkpoint file or run folder."""
    if spec is not None:
        from ..resolve import resolve_checkpoint

        resolve_checkpoint(spec)
    return spec


def could_be_remote(spec: str, cards_dir: str | Path | None = None) -> bool:
    """A zoo name with a card, or something shaped like a Hub repo id `org/name[@rev]`."""
    from ..cards import NAME_RE, REPO_RE
    from ..constants import cards_dir as default_cards_dir

    if NAME_RE.match(spec) and (default_cards_dir(cards_dir) / f"{spec}.md").is_file():
        return True
    return bool(REPO_RE.match(spec.partition("@")[0]))


def pull_spec(spec: str, cards_dir: str | Path | None) -> None:
    """NAME|REPO_ID[@REV]|DIR of `rbzoo pull`, with the message zoo.pull gives for the same mistake."""
    if Path(spec).expanduser().is_dir() or could_be_remote(spec, cards_dir):
        return
    from ..constants import cards_dir as default_cards_dir
    from ..errors import HubError

    raise HubError(f"{spec!r} is not a zoo name (see `rbzoo pull --list`; cards in "
                   f"{default_cards_dir(cards_dir)}), a Hub repo id org/name[@revision], or a folder")


def output(out: Path, *, force: bool, kind: str = "output", model: str | None = None, inputs: tuple = ()) -> None:
    """The writer rule (`_io.check_output`) before torch loads; `model` counts as an input when local."""
    from .._io import check_output
    from ..resolve import looks_local, resolve_checkpoint

    if model is not None and looks_local(model):
        inputs = (*inputs, resolve_checkpoint(model))
    check_output(out, inputs=inputs, force=force, kind=kind)
