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
from .labels import pct
from .registry import Registry

REGISTRY_FILE = "verified.json"


@dataclass
class ZooEntry:
    card: Card
    path: Path
    status: str  # "verified" | "unverified" | "unpinned source" | "downloaded" | "not pulled" | "import from source" | "import: --source FILE"
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


# A name is not an identity: a record is keyed by where the model came from (its origin) and the
# checkpoint's SHA-256, never by the card's name, so a folder or Hub card named like a shipped
# entry cannot mark that entry verified.

def zoo_origin(name: str) -> str:
    """An entry shipped in the cards folder and imported from its source (no Hub repo)."""
    return f"zoo:{name}"


def hub_origin(repo_id: str, commit: str | None) -> str:
    return f"hub:{repo_id}@{commit or '-'}"


def folder_origin(folder: str | Path) -> str:
    return f"folder:{Path(folder).resolve()}"


def registry_key(origin: str, sha256: str) -> str:
    return f"{origin}:{sha256}"


_ORDER = ("verified", "unverified", "unpinned source", "downloaded")


def _status(card: Card, entries: dict[str, dict]) -> str:
    if card.kind == "reference":  # nothing published: the entry is reproduced, not pulled
        return f"reference: rbzoo reproduce {card.name}"

    def mine(r: dict) -> bool:  # the same origin, the model and the claim this card pins
        if card.repo_id is None:
            same = r.get("origin") == zoo_origin(card.name)
        else:
            same = r.get("origin") == hub_origin(card.repo_id, r.get("revision")) and r.get(
                "sha256") == card.rb["checkpoint_sha256"] and card.revision in (None, r.get("revision"))
        return same and card.rb["model_digest"] in (None, r.get("model_digest")) and (
            r.get("status") == "downloaded" or r.get("expected") == card.expected)

    recs = [r for r in entries.values() if mine(r)]
    found = next((st for st in _ORDER if any(r.get("status") == st for r in recs)), None)
    if found == "verified":
        return found + _robust_status(card, [r for r in recs if r.get("status") == "verified"])
    if found or card.repo_id is not None:
        return found or "not pulled"
    return "import from source" if card.rb["source_url"] else "import: --source FILE"


def _robust_status(card: Card, recs: list[dict]) -> str:
    """What `pull --robust` proved here about the evidence this card pins: "; robust ≤ 55.67 %"
    (every stored break proved), "; robust refused", or nothing (never checked, or other evidence)."""
    pin = card.rb["claimed"].get("evidence_sha256")
    proofs = [r["robust"] for r in recs if isinstance(r.get("robust"), dict) and pin
              and r["robust"].get("evidence_sha256") == pin]
    if any(p.get("status") == "failed" for p in proofs):
        return "; robust refused"
    proved = [p for p in proofs if p.get("status") == "proved" and isinstance(p.get("n"), int) and p["n"] > 0]
    if not proved:
        return ""
    best = min(proved, key=lambda p: p["bound_correct"] / p["n"])
    return f"; robust ≤ {pct(best['bound_correct'], of=best['n'])}"


def list_zoo(cards_dir: str | Path | None = None) -> list[ZooEntry]:
    """Every card of the zoo's card folder (validated), with its local verification status."""
    entries = registry_entries()
    return [ZooEntry(card, path, _status(card, entries)) for path, card in load_cards(default_cards_dir(cards_dir))]


__all__ = ["REGISTRY_FILE", "ZooEntry", "folder_origin", "hub_origin", "list_zoo", "registry_entries", "registry_key",
           "registry_path", "registry_put", "zoo_origin"]
