"""`rbzoo reproduce`: the verdict rule, the cards' configs, the quickstart end to end (Ctrl-C and
resume included), a CIFAR entry on generated data, and what push, pull and plot do with a report."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

import rbzoo
from rbzoo.cards import load_card, parse_card
from rbzoo.cli import main
from rbzoo.config import load_config
from rbzoo.errors import ConfigError, HubError
from rbzoo.exact import wilson_interval
from rbzoo.reproduction import attack_match, judge

CARDS = Path(__file__).resolve().parent.parent / "cards"
STANDARD = {"norm": "Linf", "eps": 8 / 255, "version": "standard"}


# ------------------------------------------------------------------------------------------ verdicts


def test_verdict_reproduced_below_above():
    # 7,700 / 10,000: the Wilson interval is about [76.47, 77.51] %
    lo, hi = (100 * v for v in wilson_interval(7700, 10_000))
    assert judge(77.30, 7700, 10_000, margin=0)["verdict"] == "reproduced"  # inside the interval
    assert judge(hi + 0.5, 7700, 10_000, margin=0)["verdict"] == "below"  # ours is lower than the paper's
    assert judge(lo - 0.5, 7700, 10_000, margin=0)["verdict"] == "above"  # ours is higher
    # the margin widens the interval on both sides
    assert judge(hi + 0.5, 7700, 10_000, margin=1.0)["verdict"] == "reproduced"
    assert judge(lo - 0.5, 7700, 10_000, margin=1.0)["verdict"] == "reproduced"
    assert judge(hi + 1.01, 7700, 10_000, margin=1.0)["verdict"] == "below"
    row = judge(77.30, 7700, 10_000)
    assert row["ours"] == 77.0 and row["wilson95"] == [lo, hi] and row["n"] == 10_000 and not row["upper_bound"]
    assert judge(None, 5, 10)["verdict"] is None  # no published number, no verdict
    with pytest.raises(ValueError):
        judge(50.0, 11, 10)


def test_a_cheaper_attack_gives_an_upper_bound_never_reproduced():
    cheap = {"norm": "Linf", "eps": 8 / 255, "version": "custom", "attacks": ["apgd-ce"], "seed": 0, "chunk_size": 500,
             "n_iter": 5}
    ok, why = attack_match(STANDARD, cheap)
    assert not ok and "custom" in why
    assert judge(77.0, 7700, 10_000, attack_matches=ok)["verdict"] == "upper bound"
    assert judge(60.0, 7700, 10_000, attack_matches=ok)["verdict"] == "upper bound"  # higher: a weak attack may explain it
    assert judge(90.0, 7700, 10_000, attack_matches=ok)["verdict"] == "below"  # even an upper bound is below the paper
    full = {**cheap, "version": "standard", "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"]}
    full.pop("n_iter")
    assert attack_match(STANDARD, full)[0]
    assert not attack_match(STANDARD, {**full, "n_restarts": 1})[0]
    assert not attack_match(STANDARD, {**full, "eps": 4 / 255})[0]
    pgd = {"norm": "Linf", "eps": 0.1, "version": "pgd", "attacks": ["pgd"], "seed": 0, "chunk_size": 500, "steps": 20}
    card_pgd = {"norm": "Linf", "eps": 0.1, "version": "pgd", "steps": 20}
    assert attack_match(card_pgd, pgd)[0] and not attack_match(card_pgd, {**pgd, "steps": 2})[0]


# ------------------------------------------------------------------------------------------ cards


def test_every_card_names_a_config_that_trains_it():
    paths = sorted(CARDS.glob("*.md"))
    assert len(paths) == 10 and (CARDS / "quickstart.md") in paths
    for path in paths:
        card = load_card(path)
        cfg = load_config(card.config)
        rb = card.rb
        assert (cfg.dataset, cfg.arch, cfg.keep, cfg.p, cfg.objective, cfg.end_with_bn) == (
            rb["dataset"], rb["arch"]["id"], rb["keep"], rb["p"], rb["objective"], rb["arch"]["end_with_bn"]), path.name
        assert cfg.attack.eps == pytest.approx(rb["eps"]) and cfg.score_init_scale == rb["score_init_scale"]


def test_reference_cards_publish_no_model():
    text = (CARDS / "quickstart.md").read_text("utf-8")
    card = parse_card(text)
    assert card.kind == "reference" and card.config == "quickstart" and card.repo_id is None
    front = yaml.safe_load(text.split("---\n")[1])
    front["rbzoo"]["source_url"] = "https://example.org/model.pth"
    with pytest.raises(HubError, match="`rbzoo.source_url` must be null in a reference entry"):
        parse_card("---\n" + yaml.safe_dump(front) + "---\n")
    front["rbzoo"].update(source_url=None, config=None)
    with pytest.raises(HubError, match="`rbzoo.config` must name the config"):
        parse_card("---\n" + yaml.safe_dump(front) + "---\n")
    front["rbzoo"].update(config="quickstart", kind="weights")
    with pytest.raises(HubError, match="`rbzoo.kind` must be one of model, reference"):
        parse_card("---\n" + yaml.safe_dump(front) + "---\n")


def test_pull_says_what_a_reference_entry_is(capsys):
    assert main(["pull", "--list", "--cards-dir", str(CARDS)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "quickstart" in line)
    assert "reference: rbzoo reproduce quickstart" in row
    assert main(["pull", "quickstart", "--cards-dir", str(CARDS)]) == 2
    err = capsys.readouterr().err
    assert "quickstart is a reference entry: no published model to pull" in err
    assert "rbzoo reproduce quickstart --out" in err and len(err.strip().splitlines()) == 1


def test_dry_run_prints_the_plan(tmp_path, capsys):
    assert main(["reproduce", "rn34-cifar10-pgd", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "config      rn34-cifar10-pgd (unmodified)" in out and "400 epochs, objective pgd" in out
    assert "AutoAttack standard (apgd-ce, apgd-t, fab-t, square), Linf eps=0.0313725" in out
    assert "matches the card" in out and f"{tmp_path / 'cifar-10-batches-py'} (missing: add --download" in out
    assert not (tmp_path / "run").exists()
    assert main(["reproduce", "rn34-cifar10-pgd", "--out", str(tmp_path / "run"), "--epochs", "3", "--version", "custom",
                 "--attacks", "apgd-ce", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "with epochs=3" in out and "3 epochs" in out and "NOT the card’s: robust accuracy is an upper bound" in out
    assert main(["reproduce", "no-such-entry", "--out", str(tmp_path / "run")]) == 2


# ------------------------------------------------------------------------------------------ quickstart

# Cheap: 1 of the config's 20 epochs with PGD-2 validation, APGD-CE with 5 iterations on the first
# 64 test images.
QUICK = ["--epochs", "1", "--set", "eval_attack.steps=2", "--version", "custom", "--attacks", "apgd-ce", "--n-iter", "5",
         "--n-examples", "64", "--chunk-size", "32", "--by", "tests"]
MODIFIED = [{"key": "epochs", "entry": 20, "run": 1}, {"key": "eval_attack.steps", "entry": 10, "run": 2}]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`rbzoo reproduce quickstart`, interrupted by Ctrl-C in its first epoch, then resumed by the
    same command. Returns (run folder, the interrupted process's stderr, the resumed run's output)."""
    tmp = tmp_path_factory.mktemp("repro")
    run = tmp / "run"
    args = ["reproduce", "quickstart", "--out", str(run), *QUICK]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rbzoo", *args], cwd=tmp, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (run / "config.yaml").is_file():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - t0 < 120, "timed out"
        time.sleep(0.01)
    time.sleep(0.3)  # inside the first epoch
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(args) == 0
    return run, err, buf.getvalue()


def test_quickstart_interrupted_and_resumed(quick_run):
    run, err, out = quick_run
    assert err.splitlines()[-1] == ("error: interrupted; resume with: rbzoo reproduce quickstart --out "
                                    f"{run} " + " ".join(QUICK))
    r = json.loads((run / "reproduction.json").read_text())
    assert r["rbzoo_reproduction"] == 1 and r["entry"] == "quickstart" and r["dataset"] == "digits"
    assert r["training"]["epochs_done"] == 1 and len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert r["deviations"] == MODIFIED
    ck = rbzoo.read(run / "best.safetensors")
    assert r["model"]["digest"] == ck.digest and r["seeds"] == {"train": 1234, "attack": 0, "subset": None}
    ev = json.loads((run / "reproduction.eval.json").read_text())
    assert ev["n_examples"] == r["clean"]["n"] == 64 and ev["attack"]["n_iter"] == 5
    card = load_card(CARDS / "quickstart.md")
    assert r["clean"] == judge(card.rb["claimed"]["clean_acc"], ev["clean_correct"], 64, margin=1.0)
    assert r["robust"] == judge(card.rb["claimed"]["robust_acc"], ev["robust_correct"], 64, margin=1.0,
                                attack_matches=False)
    assert r["robust"]["verdict"] in ("upper bound", "below") and not r["attack"]["matches"]
    assert r["paper_compat"]["enabled"] is False and r["paper_compat"]["differs"]
    assert r["versions"]["torch"] and r["hardware"]["device"].startswith("cpu") and r["config"]["digest"]
    md = (run / "reproduction.md").read_text()
    assert "| clean accuracy | 98.33 % |" in md and "upper bound" in md and "epochs 1 (entry: 20)" in md
    assert "| clean accuracy | 98.33 % |" in out and "report:" in out

    # The same command once more: nothing is retrained or re-attacked, the report is rewritten.
    before = (run / "reproduction.eval.json").stat().st_mtime_ns, (run / "state.pt").stat().st_mtime_ns
    assert main(["reproduce", "quickstart", "--out", str(run), *QUICK]) == 0
    assert ((run / "reproduction.eval.json").stat().st_mtime_ns, (run / "state.pt").stat().st_mtime_ns) == before
    # Another attack on the same run is refused (its results would be replaced) ...
    assert main(["reproduce", "quickstart", "--out", str(run), *QUICK[:4], "--pgd", "1", "--n-examples", "64"]) == 2
    # ... and so is another config in the same run folder.
    assert main(["reproduce", "quickstart", "--out", str(run), *QUICK[2:], "--epochs", "3"]) == 2


def test_eval_only_push_and_plot(quick_run, tmp_path, capsys):
    run = quick_run[0]
    other = tmp_path / "pgd"
    assert main(["reproduce", "quickstart", "--eval-only", str(run), "--out", str(other), "--pgd", "20",
                 "--n-examples", "32"]) == 0
    r = json.loads((other / "reproduction.json").read_text())
    assert r["training"] is None and r["attack"]["matches"]  # the card's attack: PGD-20
    assert r["robust"]["verdict"] in ("reproduced", "below", "above")
    assert r["deviations"] == MODIFIED  # read from the checkpoint's training config

    # push carries the report; the card says who reproduced what
    to = tmp_path / "pushed"
    assert main(["push", str(run / "best.safetensors"), "--results", str(run / "reproduction.eval.json"),
                 "--to", str(to), "--name", "qs-repro", "--reproduction", str(run / "reproduction.json")]) == 0
    card = load_card(to / "README.md")
    assert card.rb["reproduction"]["by"] == "tests" and card.rb["reproduction"]["modified"] == ["epochs", "eval_attack.steps"]
    assert "reproduced by tests on cpu" in card.body and "as `rbzoo reproduce quickstart`" in card.body
    assert (to / "reproduction.json").read_bytes() == (run / "reproduction.json").read_bytes()
    # a report on another model is refused
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(dict(r, model=dict(r["model"], digest="0" * 64))))
    capsys.readouterr()
    assert main(["push", str(run / "best.safetensors"), "--results", str(run / "reproduction.eval.json"),
                 "--to", str(tmp_path / "x"), "--reproduction", str(foreign)]) == 2
    assert "reports on another model" in capsys.readouterr().err and not (tmp_path / "x").exists()

    # plot zoo: the reproduction beside the paper's number
    data = tmp_path / "zoo.json"
    assert main(["plot", "zoo", str(run / "reproduction.json"), "--out", str(tmp_path / "zoo.png"),
                 "--data", str(data)]) == 0
    (pt,) = json.loads(data.read_text())["points"]
    assert pt["source"] == "reproduction" and pt["paper_robust_acc"] == 85.56 and pt["upper_bound"]
    assert pt["robust_ci"] == r_ci(run) and pt["checkpoint_bytes"] == (run / "best.safetensors").stat().st_size


def r_ci(run: Path) -> list[float]:
    return json.loads((run / "reproduction.json").read_text())["robust"]["wilson95"]


# ------------------------------------------------------------------------------------------ CIFAR entry


def test_cifar_entry_end_to_end(cifar10_root, tmp_path):
    """A paper entry on generated CIFAR-10 files: 1 epoch of a width-4 tiny ResNet with PGD-2 training
    and evaluation, PGD-1 robust accuracy on 16 images."""
    run = tmp_path / "run"
    args = ["reproduce", "rn18-cifar10-pgd", "--out", str(run), "--data-dir", str(cifar10_root), "--epochs", "1",
            "--set", "arch=tiny_resnet", "--set", "width=4", "--set", "cpu_threads=1", "--set", "batch_size=32", "--set", "attack.steps=2",
            "--set", "eval_attack.steps=2", "--pgd", "1", "--n-examples", "16"]
    assert main(args) == 0
    r = json.loads((run / "reproduction.json").read_text())
    assert r["entry"] == "rn18-cifar10-pgd" and r["dataset"] == "cifar10" and r["training"]["epochs_done"] == 1
    assert {d["key"] for d in r["deviations"]} == {"arch", "width", "batch_size", "epochs", "attack.steps", "eval_attack.steps"}
    ev = json.loads((run / "reproduction.eval.json").read_text())
    assert ev["dataset"] == "cifar10" and ev["n_examples"] == 16 and ev["attack"]["version"] == "pgd"
    assert r["clean"]["verdict"] == judge(72.35, ev["clean_correct"], 16)["verdict"]
    assert r["robust"]["upper_bound"] and r["robust"]["verdict"] in ("upper bound", "below")
    assert "sample" in r["sampling"] and "the first 16 of 50" in r["sampling"]
    with pytest.raises(ConfigError, match="--eval-only evaluates a finished run"):
        from rbzoo.reproduce import ReproduceOptions, make_plan

        make_plan(ReproduceOptions("rn18-cifar10-pgd", eval_only=run, overrides={"epochs": 2}))


def test_differences_name_nested_keys():
    from rbzoo.reproduce import differences

    entry = {"epochs": 100, "attack": {"eps": 8 / 255, "steps": 10}, "keep": 0.01}
    run = {"epochs": 100, "attack": {"eps": 8 / 255, "steps": 2}, "keep": 0.05}
    assert differences(entry, run) == [{"key": "attack.steps", "entry": 10, "run": 2},
                                       {"key": "keep", "entry": 0.01, "run": 0.05}]
    assert differences(entry, dict(entry)) == []


@pytest.mark.parametrize("report", [
    {"clean": {"ours": 98.3, "n": 360, "wilson95": [96.4, 99.2], "verdict": "reproduced"}, "robust": None,
     "entry": "quickstart", "model": {}},
    {"clean": {"ours": "98.3", "n": 360, "wilson95": [96.4, 99.2], "verdict": "reproduced"}, "robust": None,
     "entry": "quickstart", "model": {"digest": "0" * 64}},
    {"clean": {"ours": 98.3, "n": 360, "wilson95": [96.4, 99.2], "verdict": "fine"}, "robust": None,
     "entry": "quickstart", "model": {"digest": "0" * 64}},
])
def test_malformed_report_is_refused_with_one_line(tmp_path, report):
    from rbzoo.errors import ConfigError
    from rbzoo.reproduction import REPORT_KEY, REPORT_VERSION, for_card

    path = tmp_path / "reproduction.json"
    path.write_text(json.dumps({REPORT_KEY: REPORT_VERSION, **report}))
    with pytest.raises(ConfigError, match="malformed reproduction report"):
        for_card(path, "0" * 64)
