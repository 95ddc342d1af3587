"""How rbzoo writes numbers and attacks for people, one spelling everywhere (cards, figures, the CLI).

A leaf: no torch, no other rbzoo module.
"""

from __future__ import annotations


def pct(part: float | None, of: float = 1.0) -> str:
    """`part` out of `of` as a percentage: pct(0.98333) == pct(354, of=360) == pct(98.333, of=100) ==
    "98.33 %"; "—" when unknown (None, or of 0)."""
    return "—" if part is None or not of else f"{100 * part / of:.2f} %"


def eps_label(eps: float | None) -> str:
    """0.0313725… → "8/255"; other values as decimals; None → "?"."""
    if eps is None:
        return "?"
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-4 and round(k) > 0 else f"{eps:g}"


def attack_label(attack: dict) -> str:
    """An attack record (a results file's `attack`, a card's robust-metric args) by name: "PGD-20",
    "PGD" (steps unknown), "AutoAttack standard", "AutoAttack custom (apgd-ce, apgd-t)"."""
    version = attack.get("version")
    if version is None:
        return "attack"
    if str(version).lower() == "pgd":
        steps = attack.get("steps")
        return f"PGD-{steps}" if isinstance(steps, int) and not isinstance(steps, bool) else "PGD"
    label = f"AutoAttack {version}"
    if version == "custom" and attack.get("attacks"):
        label += f" ({', '.join(map(str, attack['attacks']))})"
    return label


NAMED_SUITES = ("standard", "plus", "rand")  # AutoAttack's versions with fixed settings


def card_attack(attack: dict) -> dict:
    """The robust metric a card states for a results file's `attack`: its norm, ε and version, where
    a named suite run with changed iterations, restarts or queries is no longer that suite but
    "custom" (a card must not call a weakened attack "standard")."""
    version = attack.get("version")
    if version in NAMED_SUITES and any(attack.get(k) is not None for k in ("n_iter", "n_restarts", "n_queries")):
        version = "custom"
    return {"norm": attack.get("norm"), "eps": attack.get("eps"), "version": version}
