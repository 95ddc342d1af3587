"""Training configuration: one dataclass, YAML files shipped in `rbzoo/configs/`, and overrides.

A config is resolved in three layers — dataclass defaults, the YAML file (by name or path), then
command-line overrides (dotted keys, e.g. ``attack.eps=4/255``) — and validated as a whole: an
unknown key, a value of the wrong type or out of range is a :class:`ConfigError`. Float fields
also accept fractions written as strings (``"8/255"``), so configs can quote the paper's budgets.

`keep` is the fraction of weights kept (the official ``--prune-rate``); `sparsity` is the paper's
r = 1 − keep. Either may be given; contradictory values are rejected.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .constants import BUILTIN_ARCHITECTURES, OBJECTIVES, SCORE_MODES
from .errors import ConfigError

LR_SCHEDULES = ("cosine", "multistep", "constant")
# Fields that only say where/how to run, not what is trained: they may change on --resume and are
# left out of the checkpoint's `rbzoo.train` metadata (they hold machine-specific paths).
CONFIG_FILE = "config.yaml"  # the resolved config, in every run folder
RUNTIME_FIELDS = ("data_dir", "download", "device", "num_workers", "cpu_threads", "tensorboard")
# What `paper_compat` switches (docs/training.md#default-vs---paper-compat): (setting, rbzoo's
# default, the official code's). A reproduction report names them for a run with the defaults.
PAPER_COMPAT_DIFFERENCES = (
    ("BN running statistics during training attacks", "frozen (only the training forward updates them)",
     "updated by every attack forward"),
    ("PGD iterate used for training", "the final iterate", "the highest-loss iterate before the last step"),
    ("PGD-10 iterate on validation/test", "the highest-loss iterate including the last step",
     "the highest-loss iterate before the last step"),
    ("robust accuracy on validation/test (model selection)", "correct both clean and under attack",
     "correct under attack"),
    ("TRADES clean forward", "once per step", "twice in train mode (two BN updates)"),
)


@dataclass
class Attack:
    """An L∞ attack budget in [0, 1] pixel units."""

    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10


@dataclass
class TrainConfig:
    """Every setting of one training run (method.md §5, §9). See the YAML files for examples."""

    name: str = ""
    # --- network -------------------------------------------------------------------------------
    dataset: str = "cifar10"
    arch: str = "cifar_resnet34"
    width: typing.Optional[int] = None  # tiny_resnet only
    end_with_bn: bool = True
    first_layer_dense: bool = False
    last_layer_dense: bool = False
    nonlinearity: str = "relu"
    keep: float = 0.01
    p: float = 0.1
    score_init_scale: float = 0.01
    score_mode: str = "none"
    seed: int = 1234
    # --- objective -----------------------------------------------------------------------------
    objective: str = "pgd"
    attack: Attack = field(default_factory=Attack)
    trades_beta: float = 6.0
    label_smoothing: float = 0.0
    augment: typing.Union[bool, str] = "auto"  # loader-side crop+flip; "auto": off for "fast"
    paper_compat: bool = False
    # --- optimization --------------------------------------------------------------------------
    epochs: int = 400
    batch_size: int = 256  # global (split across processes under torchrun)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    lr_schedule: str = "cosine"
    warmup_epochs: int = 0
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    # --- evaluation and model selection ---------------------------------------------------------
    valid_ratio: float = 0.02
    eval_attack: Attack = field(default_factory=Attack)
    eval_every: int = 1  # validation every N epochs (and always at the last epoch)
    test_every: int = 1  # test every N epochs (and always at the last epoch)
    test_subset: typing.Optional[int] = None  # evaluate a fixed seeded subset of the test split
    eval_batch_size: int = 256
    # --- runtime -------------------------------------------------------------------------------
    data_dir: typing.Optional[str] = None
    download: bool = False
    device: str = "auto"
    num_workers: typing.Optional[int] = None  # None: 0 on CPU, min(8, cores) on CUDA
    cpu_threads: typing.Optional[int] = None  # torch intra-op threads; 1 is fastest for tiny inputs
    bf16: bool = False
    channels_last: bool = False
    sync_bn: bool = False
    tensorboard: bool = False

    @property
    def sparsity(self) -> float:
        """The paper's pruning rate r = 1 − keep."""
        return round(1.0 - self.keep, 12)

    def resolved_augment(self) -> bool:
        return self.objective != "fast" if self.augment == "auto" else bool(self.augment)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def metadata(self) -> dict:
        """The `rbzoo.train` checkpoint metadata: the resolved config minus machine-specific fields."""
        d = self.to_dict()
        for k in RUNTIME_FIELDS:
            d.pop(k)
        d["sparsity"] = self.sparsity
        return d


# --- coercion and validation -------------------------------------------------------------------


def parse_eps(text: str | float) -> float:
    """A radius given as a number (`0.0314`) or a fraction (`8/255`)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:/\s*([0-9]*\.?[0-9]+)\s*)?", str(text))
        if not m:
            raise ConfigError(f"bad eps {text!r}: give a number like 0.0314 or a fraction like 8/255")
        den = float(m.group(2)) if m.group(2) else 1.0
        if den == 0:
            raise ConfigError(f"bad eps {text!r}: division by zero")
        value = float(m.group(1)) / den
    if not math.isfinite(value):
        raise ConfigError(f"bad eps {text!r}")
    return value


def check_eps(eps: float, norm: str, input_numel: int | None = None) -> None:
    """Refuse radii that cannot be meant: ≤ 0, L∞ above 1, L2 above the diameter of [0, 1]^d."""
    if norm == "Linf" and not 0 < eps <= 1:
        raise ConfigError(f"eps {eps:g} out of range for Linf on [0, 1] images: need 0 < eps <= 1 (e.g. 8/255)")
    if norm == "L2":
        top = math.sqrt(input_numel) if input_numel else math.inf
        if not 0 < eps <= top:
            raise ConfigError(f"eps {eps:g} out of range for L2: need 0 < eps <= {top:g}")


def _as_float(key: str, v) -> float:
    if isinstance(v, bool):
        raise ConfigError(f"{key}: expected a number, got {v!r}")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            if "/" in v:
                num, den = v.split("/")
                return float(num) / float(den)
            return float(v)
        except (ValueError, ZeroDivisionError):
            pass
    raise ConfigError(f"{key}: expected a number (or a fraction such as 8/255), got {v!r}")


def _as_int(key: str, v) -> int:
    if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
        if isinstance(v, str):
            try:
                return int(v)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {v!r}")
    return int(v)


def _as_bool(key: str, v) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "1", "0"):
        return v.lower() in ("true", "yes", "1")
    raise ConfigError(f"{key}: expected true or false, got {v!r}")


def _coerce(key: str, tp, v):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if v is None and type(None) in args:
            return None
        if set(args) == {bool, str}:  # `augment`: true, false or "auto"
            return v if v == "auto" else _as_bool(key, v)
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, inner, v)
    if origin is list:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {v!r}")
        return [_coerce(f"{key}[{i}]", args[0], x) for i, x in enumerate(v)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(v, dict):
            raise ConfigError(f"{key}: expected a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}")
        return _build(tp, v, prefix=f"{key}.")
    if tp is float:
        return _as_float(key, v)
    if tp is int:
        return _as_int(key, v)
    if tp is bool:
        return _as_bool(key, v)
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"{key}: expected a string, got {v!r}")
        return v
    raise TypeError(f"unsupported config type {tp}")  # a bug in the schema, not user input


def _build(cls, raw: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix + unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                          + f"; valid keys: {', '.join(sorted(prefix + n for n in names))}")
    return cls(**{k: _coerce(prefix + k, hints[k], v) for k, v in raw.items()})


def _registered(arch: str) -> bool:
    """An architecture registered from Python (`rbzoo.models.register_model`); the built-in names
    are checked without it, so a config is validated before torch loads."""
    from .models import ARCHITECTURES

    return arch in ARCHITECTURES


def validate(cfg: TrainConfig) -> TrainConfig:
    """Range and consistency checks that need no data and no network."""
    from .data import DATASETS

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(0.0 < cfg.keep <= 1.0, f"keep must be in (0, 1] (the fraction of weights kept), got {cfg.keep}")
    need(0.0 <= cfg.p <= 1.0, f"p must be in [0, 1], got {cfg.p}")
    need(cfg.dataset in DATASETS, f"unknown dataset {cfg.dataset!r}; known: {', '.join(DATASETS)}")
    need(cfg.arch in BUILTIN_ARCHITECTURES or _registered(cfg.arch),
         f"unknown arch {cfg.arch!r}; choose from {', '.join(sorted(BUILTIN_ARCHITECTURES))}")
    need(cfg.width is None or cfg.arch == "tiny_resnet", f"width applies to tiny_resnet only, not {cfg.arch}")
    need(cfg.width is None or cfg.width > 0, "width must be positive")
    need(cfg.nonlinearity in ("relu", "leaky_relu"), f"nonlinearity must be relu or leaky_relu, got {cfg.nonlinearity!r}")
    need(cfg.score_mode in SCORE_MODES, f"score_mode must be one of {', '.join(SCORE_MODES)}, got {cfg.score_mode!r}")
    need(cfg.score_init_scale > 0, "score_init_scale must be positive")
    need(0 <= cfg.seed < 2**63, f"seed must be in [0, 2^63), got {cfg.seed}")
    need(cfg.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}, got {cfg.objective!r}")
    for name, a in (("attack", cfg.attack), ("eval_attack", cfg.eval_attack)):
        need(0.0 <= a.eps < 1.0, f"{name}.eps must be in [0, 1) ([0, 1] pixel units, e.g. 8/255), got {a.eps}")
        need(0.0 <= a.alpha < 1.0, f"{name}.alpha must be in [0, 1), got {a.alpha}")
        need(a.steps >= 0, f"{name}.steps must be ≥ 0")
    need(cfg.objective != "fast" or cfg.attack.steps == 1, "the fast objective takes exactly one step (attack.steps: 1)")
    need(cfg.trades_beta >= 0, "trades_beta must be ≥ 0")
    need(0.0 <= cfg.label_smoothing < 1.0, "label_smoothing must be in [0, 1)")
    need(cfg.epochs >= 1, "epochs must be ≥ 1")
    need(cfg.batch_size >= 2, "batch_size must be ≥ 2 (BatchNorm needs two samples)")
    need(cfg.lr > 0, "lr must be positive")
    need(cfg.momentum >= 0 and cfg.weight_decay >= 0, "momentum and weight_decay must be ≥ 0")
    need(not cfg.nesterov or cfg.momentum > 0, "nesterov needs momentum > 0")
    need(cfg.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")
    need(0 <= cfg.warmup_epochs < cfg.epochs, "warmup_epochs must be in [0, epochs)")
    need(all(m >= 0 for m in cfg.lr_milestones), "lr_milestones must be ≥ 0")
    need(0.0 <= cfg.valid_ratio < 1.0, f"valid_ratio must be in [0, 1), got {cfg.valid_ratio}")
    need(cfg.eval_every >= 1 and cfg.test_every >= 1, "eval_every and test_every must be ≥ 1")
    need(cfg.test_subset is None or cfg.test_subset >= 1, "test_subset must be ≥ 1 (or null for the whole split)")
    need(cfg.eval_batch_size >= 1, "eval_batch_size must be ≥ 1")
    need(cfg.num_workers is None or cfg.num_workers >= 0, "num_workers must be ≥ 0")
    need(cfg.cpu_threads is None or cfg.cpu_threads >= 1, "cpu_threads must be ≥ 1")
    need(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith(("cuda", "mps")),
         f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    return cfg


# --- loading -----------------------------------------------------------------------------------


def list_configs() -> list[str]:
    """Names of the configs shipped in the package."""
    root = importlib.resources.files("rbzoo") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(source: str) -> tuple[str, dict]:
    path = Path(source)
    if source.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        text, name = path.read_text(encoding="utf-8"), path.stem
    else:
        res = importlib.resources.files("rbzoo") / "configs" / f"{source}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown config {source!r}; shipped configs: {', '.join(list_configs())} (or give a .yaml path)")
        text, name = res.read_text(encoding="utf-8"), source
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a config must be a mapping of keys to values")
    if not raw:  # every default would be used: a 400-epoch ResNet34 on CIFAR-10 nobody asked for
        raise ConfigError(f"{source}: the config is empty; start from a shipped one, e.g. "
                          f"`rbzoo train -c quickstart --print-config > {Path(source).name}`")
    return name, raw


def parse_override(item: str) -> tuple[str, object]:
    """``key=value`` → (key, YAML-parsed value); dotted keys reach nested fields (attack.eps)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _apply(raw: dict, key: str, value) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"cannot set {key}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value


def _resolve_keep(raw: dict, keep: float | None, sparsity: float | None) -> None:
    """Fold `sparsity` (from the file or the flags) into `keep`; contradictions are errors."""
    file_sparsity = raw.pop("sparsity", None)
    if file_sparsity is not None:
        s = _as_float("sparsity", file_sparsity)
        if "keep" in raw and abs(_as_float("keep", raw["keep"]) - (1.0 - s)) > 1e-9:
            raise ConfigError(f"config gives keep {raw['keep']} and sparsity {s}, which contradict (keep = 1 − sparsity)")
        raw["keep"] = round(1.0 - s, 12)
    if keep is not None and sparsity is not None and abs(keep - (1.0 - sparsity)) > 1e-9:
        raise ConfigError(f"--keep {keep} and --sparsity {sparsity} contradict: keep is the fraction kept, sparsity = 1 − keep")
    if sparsity is not None:
        if not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1) (keep = 1 − sparsity in (0, 1]), got {sparsity}")
        raw["keep"] = round(1.0 - sparsity, 12)
    if keep is not None:
        raw["keep"] = keep


def load_config(source: str | None = None, overrides: dict | None = None, *, keep: float | None = None,
                sparsity: float | None = None, base: dict | None = None) -> TrainConfig:
    """Resolve a config: defaults ← YAML (`source`: shipped name or path, or `base` dict) ← overrides.

    `overrides` maps (dotted) field names to values; `keep`/`sparsity` are the pruning flags.
    """
    if (source is None) == (base is None):
        raise ConfigError("give exactly one config source")
    if base is not None:
        name, raw = base.get("name", ""), dict(base)
    else:
        name, raw = _read_yaml(source)
        raw.setdefault("name", name)
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for key, value in (overrides or {}).items():
        _apply(raw, key, value)
    _resolve_keep(raw, keep, sparsity)
    return validate(_build(TrainConfig, raw))


def check_run_dir(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse to clobber a run: a non-empty folder needs --resume (continue) or --force."""
    if resume:
        if not (out / CONFIG_FILE).is_file():
            raise ConfigError(f"{out} is not an rbzoo run folder (no {CONFIG_FILE}); start a run with --config ... --out {out}")
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out} exists and is not empty: use --resume {out} to continue that run, or --force to start over")


def field_names() -> list[str]:
    """Every settable key, nested ones dotted (for --set help and error messages)."""
    out = []
    for f in dataclasses.fields(TrainConfig):
        tp = typing.get_type_hints(TrainConfig)[f.name]
        if dataclasses.is_dataclass(tp):
            out += [f"{f.name}.{g.name}" for g in dataclasses.fields(tp)]
        else:
            out.append(f.name)
    return out
