"""Evidence of breaks (rbzoo.evidence): the codec, the file, an L2 run end to end, PGD's iterates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import rbzoo
import rbzoo.data
from rbzoo.attacks import pgd
from rbzoo.errors import VerificationError
from rbzoo.evaluate import EvalConfig, run_eval
from rbzoo.evidence import (EXACT, LEVELS, Encoded, Evidence, adversarial_margins, check_breaks, decode_many, decode_one,
                            encode_breaks, read_evidence)
from rbzoo.verdict import TAU

from test_eval import reference, trained_checkpoint  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def load_results_evidence(out: Path) -> tuple[dict, Evidence, bytes]:
    r = json.loads(out.read_text())
    data = (out.parent / r["evidence"]["file"]).read_bytes()
    ev = read_evidence(data, n_examples=r["n_examples"], numel=3 * 32 * 32)
    return r, ev, data


def check_results_evidence(out: Path, ckpt: Path, cifar10_root: Path) -> tuple[dict, Evidence]:
    """Every stored example of a results file: one per broken point, inside the threat model,
    misclassified by the model (by the τ of its profile), named with the file's SHA-256."""
    import hashlib

    from rbzoo.exact import unpack_flags

    r, ev, data = load_results_evidence(out)
    assert r["evidence"]["sha256"] == hashlib.sha256(data).hexdigest() and r["evidence"]["n"] == len(ev.items)
    n = r["n_examples"]
    flags = unpack_flags(r["robust_flags"], n)
    ds = rbzoo.data.get_dataset("cifar10", "test", cifar10_root)
    model = rbzoo.load(ckpt)
    x = torch.stack([ds[i][0] for i in range(n)])
    y = torch.tensor([ds[i][1] for i in range(n)])
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).numpy()
    assert [e.position for e in ev.items] == np.flatnonzero(correct & ~flags).tolist()
    pos = [e.position for e in ev.items]
    chk = check_breaks(model, x[pos], y[pos], ev.items, norm=r["attack"]["norm"], eps=r["attack"]["eps"], tau=TAU["verify"])
    assert chk.ball.all() and chk.box.all() and chk.label_ok.all()
    assert len(chk.invalid) == 0 and len(chk.proved) + len(chk.near_ties) == len(ev.items)
    assert ev.meta["norm"] == r["attack"]["norm"] and ev.meta["numerics"] == r["attack"]["numerics"]
    return r, ev


# --- codec ------------------------------------------------------------------------------------------


def _linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()


def test_encode_levels_exact_fallback_and_file_round_trip():
    model = _linear_model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 4, 4, generator=g)
    x[0, 0] = 0.0  # pixels at the edges of [0, 1]
    x[1, 1] = 1.0
    y = model(x).argmax(1)
    eps = 0.3
    adv = pgd(model, x, y, eps=eps, alpha=eps / 4, steps=10, select="best", generator=torch.Generator().manual_seed(0))
    broken = torch.nonzero(model(adv).argmax(1) != y).flatten()
    assert len(broken) >= 3
    enc = encode_breaks(model, x[broken], adv[broken], y[broken], broken.numpy(), "pgd", "Linf", eps)
    assert all(e.level in LEVELS for e in enc)
    for e, i in zip(enc, broken.tolist()):
        dec = decode_one(x[i], e)
        assert (dec - x[i]).abs().max() <= eps + 1e-6 and dec.min() >= 0 and dec.max() <= 1
        assert adversarial_margins(model(dec[None]), y[i:i + 1]) > 0 and e.adv_label != int(y[i])
    # An example no quantization keeps (misclassified by a hair, at an arbitrary point) is stored exactly.
    sat = Encoded(9, 1, 2, "pgd", EXACT, 0.0, b"")
    from rbzoo.evidence import _deflate
    raw = (x[0] * 0.5).numpy().astype("<f4").tobytes()
    sat.payload = _deflate(raw)
    assert torch.equal(decode_one(x[0], sat), x[0] * 0.5)
    both = [sat] + enc  # the batch decoder gives the same bytes as one at a time, exact examples included
    xs = torch.stack([x[0]] + [x[i] for i in broken.tolist()])
    assert torch.equal(decode_many(xs, both), torch.stack([decode_one(xi, e) for xi, e in zip(xs, both)]))

    ev = Evidence(enc + [sat], {"norm": "Linf", "eps": eps, "attacks": ["pgd"], "shape": [3, 4, 4]})
    data = ev.to_bytes()
    assert data == Evidence(list(reversed(ev.items)), dict(ev.meta)).to_bytes()  # order-independent bytes
    back = read_evidence(data, n_examples=10, numel=48)
    assert [(e.position, e.level, e.payload) for e in back.items] == [(e.position, e.level, e.payload)
                                                                       for e in sorted(ev.items, key=lambda e: e.position)]
    with pytest.raises(VerificationError, match="positions"):
        read_evidence(data, n_examples=9, numel=48)  # position 9 is outside a 9-sample evaluation
    with pytest.raises(VerificationError):
        read_evidence(data[:-3], n_examples=10, numel=48)
    with pytest.raises(VerificationError, match="more than"):
        read_evidence(data + b" " * 100_000, n_examples=10, numel=48)
    bad = Encoded(0, 1, 2, "pgd", 1, 0.1, _deflate(b"\x05" * 48))  # a symbol beyond its level
    with pytest.raises(VerificationError, match="beyond its level"):
        decode_one(x[0], bad)
    with pytest.raises(VerificationError, match="inflate"):
        decode_one(x[0], Encoded(0, 1, 2, "pgd", 1, 0.1, _deflate(b"\x00" * 47)))


def test_sizes_are_bounded_before_reading(tmp_path):
    """The evidence bound holds the worst case (every example stored exactly, incompressible), and
    files are refused by size before they are read, then checked again on what was read."""
    import os
    import re

    from rbzoo._io import read_bounded
    from rbzoo.errors import ConfigError
    from rbzoo.evidence import MAX_EVIDENCE_BYTES, _deflate, max_evidence_bytes

    numel, n = 3 * 32 * 32, 3
    rng = np.random.default_rng(0)  # random bytes: what deflate cannot shrink
    worst = Evidence([Encoded(i, 0, 1, "apgd-ce", EXACT, 0.0, _deflate(rng.bytes(4 * numel))) for i in range(n)],
                     {"norm": "Linf", "eps": 0.1, "attacks": ["apgd-ce"], "shape": [3, 32, 32]}).to_bytes()
    limit = max_evidence_bytes(n, numel)
    assert len(worst) > n * 4 * numel and len(worst) <= limit  # deflate grew it; the bound still holds it
    assert len(read_evidence(worst, n_examples=n, numel=numel).items) == n
    assert max_evidence_bytes(50_000, 3 * 224 * 224) == MAX_EVIDENCE_BYTES
    with pytest.raises(VerificationError, match=f"{limit + 1:,} bytes is more than {limit:,}"):
        read_evidence(b"\0" * (limit + 1), n_examples=n, numel=numel)

    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 10)
    assert read_bounded(path, 10, ConfigError) == b"x" * 10
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: 10 bytes is more than 9, the most a thing can be")):
        read_bounded(path, 9, ConfigError, what="a thing")
    with pytest.raises(ConfigError, match="cannot read"):
        read_bounded(tmp_path / "missing", 10, ConfigError)
    if os.path.exists("/proc/self/status"):  # procfs says 0 bytes, then gives more: what was read is checked too
        with pytest.raises(ConfigError, match="grew while being read"):
            read_bounded("/proc/self/status", 1 << 20, ConfigError)


def test_pgd_iterates_stay_in_box_and_ball_after_every_step():
    """Every image PGD evaluates (each step's iterate, not only the random start) lies in [0, 1]
    and in the ε-ball, also for images whose pixels sit at 0 and 1."""
    seen = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _linear_model(3)

        def forward(self, z):
            seen.append(z.detach().clone())
            return self.inner(z)

    model = Recorder()
    x = torch.zeros(4, 3, 4, 4)
    x[:, :, :2] = 1.0  # half the pixels at 1, half at 0
    x[3] = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    eps = 0.2
    for select in ("best", "final"):
        seen.clear()
        out = pgd(model, x, y, eps=eps, alpha=0.15, steps=4, select=select, generator=torch.Generator().manual_seed(1))
        assert len(seen) >= 4
        for z in seen + [out]:
            assert z.min() >= 0 and z.max() <= 1
            assert (z - x).abs().max() <= eps + 1e-6
        assert (torch.stack(seen[1:]) != torch.stack(seen[:1]).expand(len(seen) - 1, *x.shape)).any()  # it moved


# --- end to end ------------------------------------------------------------------------------------


def test_reference_run_evidence(reference, trained_checkpoint, cifar10_root):
    """The L∞ AutoAttack reference run (tests/test_eval.py): one valid stored example per break."""
    r, ev = check_results_evidence(reference["out"], trained_checkpoint, cifar10_root)
    assert len(ev.items) == r["clean_correct"] - r["robust_correct"] > 0
    assert {e.attack for e in ev.items} <= {"apgd-ce", "apgd-t"}


def test_l2_autoattack_end_to_end_with_l2_evidence(trained_checkpoint, cifar10_root, tmp_path):
    """`rbzoo eval --norm L2` → push --to → pull --robust. The stored perturbations are L2-shaped: inside
    the L2 ball, yet with pixels moved far beyond what an L∞ attack of the same L2 size could (eps/√d),
    so an L2 request run as L∞ (at eps, or at eps/√d) fails here."""
    from rbzoo import hub, zoo
    from rbzoo.cli import main

    out = tmp_path / "l2.json"
    eps = 0.5
    assert main(["eval", str(trained_checkpoint), "--data-dir", str(cifar10_root), "--device", "cpu", "--n-examples", "8",
                 "--chunk-size", "8", "--norm", "L2", "--eps", str(eps), "--version", "custom", "--attacks", "apgd-ce",
                 "--n-iter", "5", "--n-restarts", "1", "--out", str(out), "--state", str(tmp_path / "l2.state")]) == 0
    r = json.loads(out.read_text())
    assert r["attack"]["norm"] == "L2" and r["evidence"]["n"] == r["clean_correct"] - r["robust_correct"] > 0
    r, ev = check_results_evidence(out, trained_checkpoint, cifar10_root)
    ds = rbzoo.data.get_dataset("cifar10", "test", cifar10_root)
    norms = []
    for e in ev.items:
        x = ds[e.position][0]
        d = (decode_one(x, e) - x).flatten()
        norms.append((float(d.norm()), float(d.abs().max())))
    assert all(l2 <= eps * (1 + 1e-5) for l2, _ in norms)
    # An L∞ attack of radius 0.5 would move pixels by up to 0.5, far outside the L2 ball; an L2
    # attack spends its budget on few pixels: its L∞ size is well above eps/sqrt(d).
    assert max(linf for _, linf in norms) > eps / np.sqrt(3 * 32 * 32) * 3

    folder = tmp_path / "pub"
    hub.push(trained_checkpoint, to=folder, results=out, cards_dir=tmp_path / "cards")
    p = zoo.pull(str(folder), data_dir=cifar10_root, cards_dir=tmp_path / "cards", robust=True)
    breaks = r["clean_correct"] - r["robust_correct"]
    assert p.robust["proved"] + len(p.robust["near_ties"]) == breaks and p.robust["bound_correct"] >= r["robust_correct"]


def test_plot_breaks_shows_stored_examples_with_both_labels(reference, cifar10_root, tmp_path):
    from rbzoo.cli import main

    out, data = tmp_path / "breaks.png", tmp_path / "breaks.json"
    assert main(["plot", "breaks", str(reference["out"]), "--data-dir", str(cifar10_root), "--out", str(out),
                 "--data", str(data)]) == 0
    d = json.loads(data.read_text())
    r = reference["results"]
    assert d["n_breaks"] == r["clean_correct"] - r["robust_correct"] and 0 < len(d["breaks"]) <= 6
    assert all(b["label"] != b["adv_label"] and b["linf"] <= r["attack"]["eps"] + 1e-6 for b in d["breaks"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
