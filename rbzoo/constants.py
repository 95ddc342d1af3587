"""Environment settings, read when used (not at import) so tests and long-lived processes see changes.

| variable | meaning | default |
|---|---|---|
| `HF_ENDPOINT` | Hub URL (`--endpoint` wins) | `https://huggingface.co` |
| `HF_TOKEN` | Hub token (`--token` wins; then `hf auth login`'s stored token); never printed | none |
| `HF_HUB_OFFLINE` | `1`: no network, pull from the download cache only | off |
| `HF_HUB_CACHE` / `HF_HOME` | huggingface_hub's download cache (pulled files live there) | `~/.cache/huggingface/hub` |
| `RBZOO_HOME` | rbzoo's own state: the registry of verified pulls | `$XDG_CACHE_HOME/rbzoo` or `~/.cache/rbzoo` |
| `RBZOO_CARDS` | the zoo's card folder (`--cards-dir` wins) | `cards/` of a source checkout, else `$RBZOO_HOME/cards` |
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

# Input normalization (mean, std) per dataset family, as in the paper's code. Here, not in
# layers.py, so the dataset specs (rbzoo.data) read them without importing torch.
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenet100": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# The most classes a model may have: the checkpoint reader's bound (checked before a network is
# built) and the certificate's, so every model that loads can be certified (labels pack in 17 bits).
MAX_CLASSES = 100_000

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = ("1", "true", "yes", "on")


def hf_endpoint(override: str | None = None) -> str:
    """The Hub endpoint: `override`, else `HF_ENDPOINT`, else huggingface.co (no trailing slash)."""
    return (override or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hf_token(override: str | None = None) -> str | None:
    """The Hub token: `override`, else `HF_TOKEN`, else the one stored by `hf auth login` (or None)."""
    if override:
        return override
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # a broken token file or OIDC setup must not break anonymous reads
        return None


def hf_offline() -> bool:
    """True when `HF_HUB_OFFLINE` is set now, or was set when huggingface_hub was imported."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def hf_cache_dir() -> Path:
    """huggingface_hub's download cache, resolved from the environment as the client does."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def rbzoo_home() -> Path:
    """rbzoo's cache folder (verified-pull registry; default card folder outside a checkout)."""
    if os.environ.get("RBZOO_HOME"):
        return Path(os.environ["RBZOO_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path("~") / ".cache").expanduser() / "rbzoo"


def checkout_cards_dir() -> Path | None:
    """`cards/` of the source checkout rbzoo runs from (editable install), or None if installed."""
    root = Path(__file__).resolve().parent.parent
    cards = root / "cards"
    return cards if cards.is_dir() and (root / "pyproject.toml").is_file() else None


def cards_dir(override: str | os.PathLike | None = None) -> Path:
    """The zoo's card folder: `override`, `RBZOO_CARDS`, a checkout's `cards/`, or `$RBZOO_HOME/cards`."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("RBZOO_CARDS"):
        return Path(os.environ["RBZOO_CARDS"]).expanduser()
    return checkout_cards_dir() or _user_cards_dir()


def _user_cards_dir() -> Path:
    """`$RBZOO_HOME/cards`, seeded on first use with the cards shipped inside the package."""
    folder = rbzoo_home() / "cards"
    shipped = Path(__file__).resolve().parent / "zoo_cards"
    if not folder.exists() and shipped.is_dir():
        from ._io import write_bytes

        for card in sorted(shipped.glob("*.md")):
            write_bytes(folder / card.name, card.read_bytes())
    return folder

# Numerics profiles of exact evaluation (rbzoo.exact defines them; cards and the CLI name them
# without importing torch). "verify" is the reference profile: float32, TF32 off, deterministic.
NUMERICS_PROFILES = ("verify", "fast", "bf16")

# Names the CLI checks before it imports torch; the modules that act on them import them from here.
BUILTIN_ARCHITECTURES = ("cifar_resnet18", "cifar_resnet34", "cifar_resnet50", "imagenet_resnet18",
                         "imagenet_resnet34", "imagenet_resnet50", "tiny_resnet")  # rbzoo.models registers these
OBJECTIVES = ("pgd", "fast", "fgsm_rs", "trades")  # training objectives
SCORE_MODES = ("none", "all", "except_last", "only_last")  # which dense layers also learn scores
NORMS = ("Linf", "L2")  # threat models of the robust evaluation
AA_VERSIONS = ("standard", "plus", "rand", "custom")  # AutoAttack versions
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")  # what --version custom picks from
SUBSETS = ("first", "random")  # which N examples an evaluation takes
ONNX_VARIANTS = ("dense", "int8", "sparse")
ONNX_BN_MODES = ("fold", "explicit")
LINK_MODES = ("copy", "hard", "sym")  # how `rbzoo data imagenet100` places the files
PLOT_KINDS = ("layers", "structure", "curves", "attack", "zoo", "compare", "breaks")


def choose(what: str, value: str, names: tuple[str, ...]) -> str:
    """The name in `names` that `value` means, ignoring case ("linf" is "Linf"); else a ConfigError
    "unknown WHAT 'value'; choose from ..." (one line, torch-free: the CLI calls it on every option)."""
    if value in names:
        return value
    folded = [n for n in names if n.lower() == str(value).lower()]
    if len(folded) == 1:
        return folded[0]
    raise ConfigError(f"unknown {what} {value!r}; choose from {', '.join(names)}")
