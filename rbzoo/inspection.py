"""What `rbzoo info` and `rbzoo export` compute (kept separate from printing)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save as st_save

from ._io import check_output, write_bytes
from .checkpoint import build, read
from .models._registry import ARCHITECTURES


def model_table() -> list[dict]:
    return [
        {"name": a.name, "num_classes": a.num_classes, "input_size": a.input_size, "normalize": a.normalize, "description": a.description}
        for a in sorted(ARCHITECTURES.values(), key=lambda a: a.name)
    ]


def describe(path: str | Path) -> dict:
    """Per-layer and total statistics of a verified checkpoint."""
    ck = read(path)
    layers = []
    for rec in ck.layers:
        coded = rec.coded_bytes * 8
        bound = rec.bound_bits
        layers.append({
            "name": rec.name, "shape": list(rec.shape), "n": rec.n, "kept": rec.kept,
            "density": rec.kept / rec.n, "coded_bits": coded, "bound_bits": bound,
            "ratio": coded / bound if bound > 0 else None,
        })
    n = sum(r["n"] for r in layers)
    kept = sum(r["kept"] for r in layers)
    coded = sum(r["coded_bits"] for r in layers)
    bound = sum(r["bound_bits"] for r in layers)
    float32_bytes = 4 * (n + sum(t.numel() for t in ck.tensors.values()))
    provenance = {k: ck.meta_json(k) for k in ck.metadata if not k.startswith("rbzoo.") or k in ("rbzoo.version", "rbzoo.created")}
    return {
        "path": str(path),
        "file_size": ck.file_size,
        "arch": ck.arch,
        "signs": ck.signs_mode,
        "seed": ck.seed,
        "model_digest": ck.digest,
        "weights_sha256": ck.weights_digest,
        "layers": layers,
        "totals": {
            "n": n, "kept": kept, "density": kept / n if n else 0.0, "coded_bits": coded, "bound_bits": bound,
            "ratio": coded / bound if bound else 0.0, "float32_bytes": float32_bytes,
            "compression": float32_bytes / ck.file_size,
        },
        "metadata": provenance,
    }


def export_dense(path: str | Path, out: str | Path, *, force: bool = False) -> int:
    """Write the folded model's dense state_dict (float32) to `out`; returns the byte count.
    The writer rule holds: never over `path`, never over an existing `out` without `force`."""
    out = check_output(out, inputs=(path,), force=force)
    ck = read(path)
    model = build(ck)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    data = st_save(state, metadata={"rbzoo.arch": json.dumps(ck.arch, sort_keys=True), "rbzoo.model_sha256": ck.digest, "source": str(path)})
    write_bytes(out, data)
    return len(data)
