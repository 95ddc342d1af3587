"""`rbzoo train`: resolve a config (file + flags), then run or resume the trainer."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..constants import BUILTIN_ARCHITECTURES, OBJECTIVES
from ..data import DATASETS
from ..errors import ConfigError
from . import _check, app, console, resume_hint

_SET_HELP = "Override any config field, repeatable: --set attack.eps=4/255 --set lr_schedule=multistep."


def default_run_dir(name: str) -> Path:
    """runs/NAME, or runs/NAME-2, -3, ... : the first that does not exist or is empty."""
    base = Path("runs") / name
    candidate, i = base, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        i += 1
        candidate = base.with_name(f"{base.name}-{i}")
    return candidate


@app.command()
def train(
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="A shipped config name (see --list-configs) or a YAML path.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder to create (new or empty); default runs/CONFIG[-N].")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this folder from its last completed epoch.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Start over in a non-empty run folder (deletes its run files).")] = False,
    keep: Annotated[Optional[float], typer.Option("--keep", help="Fraction of weights kept, in (0, 1] (the official --prune-rate).")] = None,
    sparsity: Annotated[Optional[float], typer.Option("--sparsity", help="The paper's pruning rate r = 1 − keep.")] = None,
    p: Annotated[Optional[float], typer.Option("--p", "--pr-scale", help="Layer-adaptivity exponent in [0, 1] (alias --pr-scale, the official name).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Training epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=2, help="Global batch size (at most the "
                                                      "training set's size).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", min=0.0, help="Peak learning rate of SGD on the scores.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, help="Seed of the signs, the scores' init and the "
                                                "data order (recorded in the checkpoint).")] = None,
    objective: Annotated[Optional[str], typer.Option("--objective", callback=_check.names("--objective", OBJECTIVES),
                                                     help="pgd, fast, fgsm_rs or trades.")] = None,
    paper_compat: Annotated[Optional[bool], typer.Option("--paper-compat/--no-paper-compat",
                                                         help="Reproduce the official quirks that change results.")] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", callback=_check.names("--arch", BUILTIN_ARCHITECTURES),
                                                help="Architecture (`rbzoo info --list-models`).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", callback=_check.names("--dataset", tuple(DATASETS)),
                                                   help="cifar10, cifar100, imagenet100 or digits.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Folder holding the datasets (default $RBZOO_DATA or ./data).")] = None,
    download: Annotated[Optional[bool], typer.Option("--download/--no-download", help="Download CIFAR if missing.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", callback=_check.device, help="auto, cpu, cuda or cuda:N.")] = None,
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", min=0, help="Data-loader worker processes "
                                                       "(default: 0 on CPU, up to 8 on CUDA).")] = None,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", min=1, help="Validate every N epochs.")] = None,
    test_every: Annotated[Optional[int], typer.Option("--test-every", min=1, help="Test every N epochs.")] = None,
    test_subset: Annotated[Optional[int], typer.Option("--test-subset", min=1, help="Evaluate a fixed seeded subset of N test images.")] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bfloat16 autocast.")] = None,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last",
                                                          help="channels_last memory format (faster on some GPUs).")] = None,
    sync_bn: Annotated[Optional[bool], typer.Option("--sync-bn/--no-sync-bn", help="SyncBatchNorm under torchrun (CUDA).")] = None,
    tensorboard: Annotated[Optional[bool], typer.Option("--tensorboard/--no-tensorboard",
                                                        help="Also write TensorBoard logs into the run folder.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help=_SET_HELP)] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved config and exit.")] = False,
    list_: Annotated[bool, typer.Option("--list-configs", help="List the shipped configs and exit.")] = False,
) -> None:
    """Train a robust binary subnetwork: adversarial training of the pruning scores (docs/method.md §5).

    Examples: `rbzoo train --config quickstart --out runs/qs`;
    `rbzoo train -c rn34-cifar10-pgd -o runs/rn34 --data-dir data --keep 0.05`;
    `rbzoo train --resume runs/rn34`; multi-GPU: `torchrun --nproc_per_node 8 -m rbzoo train ...`.
    """
    from ..config import RUNTIME_FIELDS, check_run_dir, field_names, list_configs, load_config, parse_override

    if list_:
        for name in list_configs():
            console.print(name, highlight=False)
        return
    flags = {"p": p, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "objective": objective,
             "paper_compat": paper_compat, "arch": arch, "dataset": dataset,
             "data_dir": None if data_dir is None else str(data_dir), "download": download, "device": device,
             "num_workers": num_workers, "eval_every": eval_every, "test_every": test_every, "test_subset": test_subset,
             "bf16": bf16, "channels_last": channels_last, "sync_bn": sync_bn, "tensorboard": tensorboard}
    overrides = {k: v for k, v in flags.items() if v is not None}
    for item in set_ or []:
        key, value = parse_override(item)
        if key not in field_names() and key not in ("sparsity",):
            raise ConfigError(f"unknown config key {key!r} in --set; valid keys: {', '.join(field_names())}")
        if key == "sparsity":
            sparsity = value if sparsity is None else sparsity
            continue
        overrides[key] = value

    if resume is not None:
        if config is not None or out is not None:
            raise ConfigError("--resume RUN_DIR continues a run with its own config.yaml; do not also give --config or --out")
        changed = sorted(set(overrides) - set(RUNTIME_FIELDS)) + (["keep"] if keep is not None or sparsity is not None else [])
        if changed:
            raise ConfigError(f"cannot change {', '.join(changed)} when resuming (only {', '.join(RUNTIME_FIELDS)} may change)")
        cfg_path = resume / "config.yaml"
        if not cfg_path.is_file():
            raise ConfigError(f"{resume} is not an rbzoo run folder (no config.yaml)")
        cfg = load_config(str(cfg_path), overrides)
        run_dir = resume
    else:
        if config is None:
            raise ConfigError("give --config NAME|PATH (see --list-configs), or --resume RUN_DIR")
        cfg = load_config(config, overrides, keep=keep, sparsity=sparsity)
        if print_config:
            console.print(cfg.to_yaml(), highlight=False, markup=False)
            return
        if out is None:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # ranks must not each pick a folder
                raise ConfigError("give --out RUN_DIR when running under torchrun")
            out = default_run_dir(cfg.name or cfg.arch)
        run_dir = out
    check_run_dir(run_dir, resume=resume is not None, force=force)  # before torch loads (train checks again)

    from ..train import train as run_training  # imported here: plain `rbzoo info` stays light

    # Ctrl-C or a full disk: once config.yaml exists, the run continues from its last saved epoch.
    resume_hint(lambda: f"rbzoo train --resume {shlex.quote(str(run_dir))}" if (run_dir / "config.yaml").is_file() else None)
    run_training(cfg, run_dir, resume=resume is not None, force=force)
