"""The record of pulls (`$RBZOO_HOME/verified.json`, a locked :class:`rbzoo.registry.Registry`)
and the zoo listing built on it.

Torch-free on purpose: `rbzoo pull --list` reads cards and this record and answers at once.
`rbzoo.zoo` writes the record after each pull; this module only knows its layout and what a status means.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .cards import Card, load_cards
from .constants import cards_dir as default_cards_dir
from .constants import rbzoo_home
from .registry import Registry

REGISTRY_FILE = "verified.json"


@dataclass
class ZooEntry:
    card: Card
    path: Path
    status: str  # "verified" | "unverified" | "downloaded" | "not pulled" | "import from source" | "import: --source FILE"
    #              | "reference: rbzoo reproduce NAME"


def registry_path() -> Path:
    return rbzoo_home() / REGISTRY_FILE


def _registry() -> Registry:
    return Registry(registry_path(), envelope="rbzoo_registry")


def registry_entries() -> dict[str, dict]:
    """The verified-pull registry: key `repo@commit:sha256` -> record."""
    return _registry().entries()


def registry_put(key: str, record: dict | None, *, if_absent: bool = False) -> None:
    """Set (or, with None, remove) one record under the registry's lock; atomic. With `if_absent`,
    an existing record is kept (another process may have verified meanwhile)."""
    _registry().update(key, record, if_absent=if_absent)


def registry_key(repo_id: str | None, commit: str | None, sha256: str) -> str:
    return f"{repo_id or '(folder)'}@{commit or '-'}:{sha256}"


def _status(card: Card, entries: dict[str, dict]) -> str:
    if card.kind == "reference":  # nothing published: the entry is reproduced, not pulled
        return f"reference: rbzoo reproduce {card.name}"
    if card.repo_id is None:  # imported entry: pull converts the authors' file
        recs = [r for r in entries.values() if r.get("name") == card.name and r.get("repo_id") is None]
        return next((r["status"] for r in recs if r.get("status") in ("verified", "unverified")), None) or (
            "import from source" if card.rb["source_url"] else "import: --source FILE")
    recs = [r for r in entries.values()
            if r.get("repo_id") == card.repo_id and r.get("sha256") == card.rb["checkpoint_sha256"]
            and (card.revision is None or r.get("revision") == card.revision)]
    order = ("verified", "unverified", "downloaded")
    return next((st for st in order if any(r.get("status") == st for r in recs)), "not pulled")


def list_zoo(cards_dir: str | Path | None = None) -> list[ZooEntry]:
    """Every card of the zoo's card folder (validated), with its local verification status."""
    entries = registry_entries()
    return [ZooEntry(card, path, _status(card, entries)) for path, card in load_cards(default_cards_dir(cards_dir))]


__all__ = ["REGISTRY_FILE", "ZooEntry", "list_zoo", "registry_entries", "registry_key", "registry_path",
           "registry_put"]
