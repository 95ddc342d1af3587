"""`rbzoo data imagenet100`: a fake ImageNet tree of tiny real JPEGs → the subset → torchvision's
ImageFolder through rbzoo.data.get_dataset."""

import hashlib
import io
import json
import os
import random
from pathlib import Path

import pytest
from PIL import Image

from rbzoo.cli import main
from rbzoo.data import get_dataset
from rbzoo.data import imagenet100 as inet
from rbzoo.errors import DataError

WNIDS = inet.class_list()
OTHER = ["n01860187", "n02085620"]  # real ILSVRC2012 classes outside ImageNet100


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """ILSVRC2012 layout: train/<wnid>/<wnid>_<i>.JPEG, val/<wnid>/ILSVRC2012_val_<n>.JPEG."""
    root = tmp_path_factory.mktemp("imagenet")
    blobs = [_jpeg((40 * i, 255 - 40 * i, 90)) for i in range(3)]
    n = 0
    for c, w in enumerate(WNIDS + OTHER):
        (root / "train" / w).mkdir(parents=True)
        (root / "val" / w).mkdir(parents=True)
        for i in range(2):
            (root / "train" / w / f"{w}_{i}.JPEG").write_bytes(blobs[(c + i) % 3])
        n += 1
        (root / "val" / w / f"ILSVRC2012_val_{n:08d}.JPEG").write_bytes(blobs[c % 3])
    (root / "train" / WNIDS[0] / "README.txt").write_text("not an image")
    return root


def test_shipped_class_list_is_pinned_and_says_where_it_comes_from(tmp_path, monkeypatch):
    text = inet.CLASSES_FILE.read_text()
    header = "".join(ln for ln in text.splitlines(keepends=True) if ln.startswith("#"))
    lines = [ln for ln in text.splitlines(keepends=True) if not ln.startswith("#")]
    for words in ("PODNet", "Continuum", "first 100 ILSVRC2012 synsets", "train_100.txt", "WNID lines only"):
        assert words in header.replace("\n# ", " ")
    # The pin is the SHA-256 of the WNID lines alone, exactly as they stand in the file.
    assert hashlib.sha256("".join(lines).encode()).hexdigest() == inet.CLASSES_SHA256
    assert len(WNIDS) == 100 and WNIDS == sorted(set(WNIDS)) == [ln.strip() for ln in lines]
    assert WNIDS[0] == "n01440764" and WNIDS[-1] == "n01855672"
    # Rewording the header keeps the pin; changing a class breaks it.
    copy = tmp_path / "classes.txt"
    monkeypatch.setattr(inet, "CLASSES_FILE", copy)
    copy.write_text("# reworded\n" + "".join(lines))
    assert inet.class_list() == WNIDS
    copy.write_text(header + "".join(lines).replace(WNIDS[7], "n09999999"))
    with pytest.raises(DataError, match="pinned SHA-256"):
        inet.class_list()


def test_custom_class_list_is_validated(tmp_path):
    good = tmp_path / "c.txt"
    good.write_text("# mine\nn02085620\n\nn01440764\n")
    assert inet.class_list(good) == ["n01440764", "n02085620"]
    for text in ["n0144076\n", "n01440764\nn01440764\n", "\n"]:
        good.write_text(text)
        with pytest.raises(DataError):
            inet.class_list(good)


def test_build_copy_loads_as_imagefolder(imagenet, tmp_path):
    seen = []
    res = inet.build_imagenet100(imagenet, tmp_path, workers=4, progress=lambda d, t: seen.append((d, t)))
    assert res.written == res.total == 300 and res.skipped == 0
    assert seen[-1] == (300, 300)
    assert res.warnings and "50" in res.warnings[0]  # one val image per class, not ILSVRC's 50
    train = get_dataset("imagenet100", "train", tmp_path)
    test = get_dataset("imagenet100", "test", tmp_path)
    assert train.classes == WNIDS == test.classes
    assert len(train) == 200 and len(test) == 100
    x, y = test[len(test) - 1]
    assert tuple(x.shape) == (3, 224, 224) and y == 99
    manifest = json.loads((tmp_path / "imagenet100" / "manifest.json").read_text())
    assert manifest["classes_sha256"] == inet.CLASSES_SHA256
    assert manifest["counts"] == {"train": 200, "val": 100}
    assert not (tmp_path / "imagenet100" / "train" / OTHER[0]).exists()


def test_resume_skips_complete_and_repairs(imagenet, tmp_path):
    inet.build_imagenet100(imagenet, tmp_path)
    d = tmp_path / "imagenet100" / "train" / WNIDS[5]
    victim, partial = sorted(d.iterdir())
    victim.unlink()
    partial.write_bytes(partial.read_bytes()[:10])  # a foreign truncated file
    (d / f".{victim.name}.abc.tmp").write_bytes(b"left by a killed run")
    res = inet.build_imagenet100(imagenet, tmp_path)
    assert res.written == 2 and res.skipped == 298
    assert partial.read_bytes() == (imagenet / "train" / WNIDS[5] / partial.name).read_bytes()
    assert sorted(p.name for p in d.iterdir()) == sorted([victim.name, partial.name])


@pytest.mark.parametrize("mode", ["hard", "sym"])
def test_link_modes(imagenet, tmp_path, mode):
    res = inet.build_imagenet100(imagenet, tmp_path, link=mode)
    dst = tmp_path / "imagenet100" / "val" / WNIDS[3]
    (f,) = list(dst.iterdir())
    src = imagenet / "val" / WNIDS[3] / f.name
    if mode == "hard":
        assert os.path.samefile(f, src) and not f.is_symlink()
    else:
        assert f.is_symlink() and os.readlink(f) == str(src.resolve())
    again = inet.build_imagenet100(imagenet, tmp_path, link=mode)
    assert again.skipped == res.total and again.written == 0
    assert len(get_dataset("imagenet100", "test", tmp_path)) == 100


def test_cli(imagenet, tmp_path, capsys):
    assert main(["data", "imagenet100", "--imagenet", str(imagenet), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "100 classes" in out.out and "train 200" in out.out and "verified" in out.out
    assert main(["data", "imagenet100", "--imagenet", str(tmp_path / "nope"), "--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1


def test_bad_roots(tmp_path):
    blob = _jpeg((1, 2, 3))
    root = tmp_path / "flat"
    for w in WNIDS:
        (root / "train" / w).mkdir(parents=True)
        (root / "train" / w / f"{w}_1.JPEG").write_bytes(blob)
    (root / "val").mkdir()
    (root / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(blob)
    with pytest.raises(DataError, match="flat ILSVRC2012 layout.*per-class folders.*valprep"):
        inet.build_imagenet100(root, tmp_path / "out")
    with pytest.raises(DataError, match="not an ImageNet root"):
        inet.build_imagenet100(root / "train", tmp_path / "out")
    (root / "val" / WNIDS[0]).mkdir()  # per-class val, but only one class
    with pytest.raises(DataError, match="lacks 99 of the 100"):
        inet.build_imagenet100(root, tmp_path / "out")
    with pytest.raises(DataError, match="unknown link mode"):
        inet.build_imagenet100(root, tmp_path / "out", link="move")
    assert not (tmp_path / "out").exists()  # nothing is written before the checks pass


def test_extra_class_folder_fails_verification(imagenet, tmp_path):
    (tmp_path / "imagenet100" / "train" / OTHER[1]).mkdir(parents=True)
    with pytest.raises(DataError, match="unexpected: n02085620"):
        inet.build_imagenet100(imagenet, tmp_path)


EXTRA = OTHER + ["n04592741"]


def _flat_tree(root, blob):
    """An ILSVRC2012-like tree: 103 classes in train/ (extra ones sorting among the listed), and the
    flat val/ of ILSVRC2012_val_<n>.JPEG with classes interleaved as in the real one. Returns the
    val file → WNID map (what valprep.sh and LOC_val_solution.csv encode)."""
    every = EXTRA[:1] + WNIDS + EXTRA[1:]
    slots = []
    for c, w in enumerate(every):
        (root / "train" / w).mkdir(parents=True)
        for i in range(1 + c % 2):
            (root / "train" / w / f"{w}_{i}.JPEG").write_bytes(blob + bytes([c % 251, i]))
        slots += [w] * (1 + (c + 1) % 2)
    random.Random(0).shuffle(slots)
    (root / "val").mkdir()
    owner = {}
    for n, w in enumerate(slots, 1):
        owner[f"ILSVRC2012_val_{n:08d}.JPEG"] = w
        (root / "val" / f"ILSVRC2012_val_{n:08d}.JPEG").write_bytes(blob + bytes([n % 251, 7]))
    return owner


def _kaggle_csv(owner):
    rows = [f"{name[:-5]},{w} 10 20 30 40 {w} 1 2 3 4 " if i % 2 else f"{name[:-5]},{w} 5 6 7 8"
            for i, (name, w) in enumerate(sorted(owner.items(), reverse=True))]
    return "ImageId,PredictionString\n" + "\n".join(rows) + "\n"


def _check_subset(dest, root, owner):
    """OUT/imagenet100/{train,val}/<wnid>/<file> holds exactly the listed classes' files, byte for byte."""
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json", "train", "val"]
    for split in ("train", "val"):
        assert sorted(p.name for p in (dest / split).iterdir()) == WNIDS
    copied = {p.relative_to(dest / "train"): p.read_bytes() for p in (dest / "train").rglob("*") if p.is_file()}
    assert copied == {p.relative_to(root / "train"): p.read_bytes() for w in WNIDS for p in (root / "train" / w).iterdir()}
    copied = {p.relative_to(dest / "val"): p.read_bytes() for p in (dest / "val").rglob("*") if p.is_file()}
    flat = root / "val"
    assert copied == {Path(w) / n: (flat / n).read_bytes() if (flat / n).exists() else (flat / w / n).read_bytes()
                      for n, w in owner.items() if w in WNIDS}


def test_build_from_kaggle_tree_with_extra_classes_and_flat_val(tmp_path):
    """Kaggle's layout (ILSVRC/Data/CLS-LOC/{train,val} beside LOC_val_solution.csv), flat val/:
    the labels are found by themselves and exactly the 100 listed classes are copied. After the
    valprep step (per-class val/) the build gives the same tree."""
    top, blob = tmp_path / "imagenet-object-localization-challenge", _jpeg((10, 200, 30))
    root = top / "ILSVRC" / "Data" / "CLS-LOC"
    owner = _flat_tree(root, blob)
    (top / "LOC_val_solution.csv").write_text(_kaggle_csv(owner))
    out = tmp_path / "data"
    res = inet.build_imagenet100(top, out, workers=2)
    dest = out / "imagenet100"
    _check_subset(dest, root, owner)
    n_val = sum(1 + (c + 1) % 2 for c in range(1, 101))  # the listed classes sit at 1..100 in the tree
    assert res.counts["val"] == {w: sum(v == w for v in owner.values()) for w in WNIDS}
    assert res.total == res.written == sum(1 + c % 2 for c in range(1, 101)) + n_val
    assert res.warnings and "50 ILSVRC2012 validation images" in res.warnings[0]
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["classes_sha256"] == inet.CLASSES_SHA256
    assert manifest["val_layout"] == "flat" and manifest["val_labels"] == str((top / "LOC_val_solution.csv").resolve())
    assert manifest["val_labels_sha256"] == hashlib.sha256((top / "LOC_val_solution.csv").read_bytes()).hexdigest()
    assert manifest["counts"] == {"train": res.total - n_val, "val": n_val}
    again = inet.build_imagenet100(top, out)
    assert again.written == 0 and again.skipped == res.total
    for name, w in owner.items():  # valprep: move each val image into its class folder
        (root / "val" / w).mkdir(exist_ok=True)
        os.replace(root / "val" / name, root / "val" / w / name)
    res2 = inet.build_imagenet100(top, tmp_path / "data2")
    _check_subset(tmp_path / "data2" / "imagenet100", root, owner)
    assert res2.counts == res.counts
    manifest = json.loads((tmp_path / "data2" / "imagenet100" / "manifest.json").read_text())
    assert manifest["val_layout"] == "per-class" and manifest["val_labels"] is None


def test_cli_flat_val_with_plain_labels_file(tmp_path, capsys):
    """"<file name> <wnid>" lines (what valprep.sh encodes) given with --val-labels."""
    root = tmp_path / "ILSVRC2012"
    owner = _flat_tree(root, _jpeg((90, 30, 200)))
    labels = tmp_path / "val_labels.txt"
    labels.write_text("".join(f"{n} {w}\n" for n, w in sorted(owner.items())))
    out = tmp_path / "data"
    argv = ["data", "imagenet100", "--imagenet", str(root), "--out", str(out), "--link", "sym"]
    assert main(argv + ["--val-labels", str(labels)]) == 0
    text = capsys.readouterr().out
    n_val = sum(w in WNIDS for w in owner.values())
    assert f"val {n_val}" in text and "flat val/" in text and "verified" in text
    _check_subset(out / "imagenet100", root, owner)
    some = next(n for n, w in owner.items() if w == WNIDS[0])
    assert os.readlink(out / "imagenet100" / "val" / WNIDS[0] / some) == str((root / "val" / some).resolve())
    manifest = json.loads((out / "imagenet100" / "manifest.json").read_text())
    assert manifest["val_layout"] == "flat" and manifest["val_labels"] == str(labels.resolve())
    assert len(get_dataset("imagenet100", "test", out)) == n_val


def test_malformed_val_labels_fail_in_one_line_and_write_nothing(tmp_path, capsys):
    root = tmp_path / "ILSVRC2012"
    owner = _flat_tree(root, _jpeg((1, 2, 3)))
    good = [f"{n} {w}" for n, w in sorted(owner.items())]
    first = good[0].split()[0]
    bad = {
        "malformed row": [good[0].split()[0]] + good[1:],  # no WNID
        "malformed row ": [f"{first} n0144"] + good[1:],  # not a WNID
        "malformed row  ": [f"../{first} {owner[first]}"] + good[1:],  # a path, not a file name
        "listed twice": good + [good[0]],
        "not in the validation labels": good[1:],  # an image of val/ with no label
    }
    labels = tmp_path / "labels.txt"
    out = tmp_path / "out"
    for why, lines in bad.items():
        labels.write_text("\n".join(lines) + "\n")
        with pytest.raises(DataError, match=why.strip()) as e:
            inet.build_imagenet100(root, out, val_labels=labels)
        assert "\n" not in str(e.value)
    kaggle = _kaggle_csv(owner).splitlines()
    for why, lines in {"malformed row": kaggle[:1] + [kaggle[1].split(",")[0]] + kaggle[2:],  # no comma
                       "malformed row ": kaggle[:1] + [kaggle[1] + " 9"] + kaggle[2:],  # a 6-token box
                       "malformed row  ": kaggle[:1] + [kaggle[1].replace(" 10 ", " x ", 1).replace(" 5 ", " x ", 1)]
                       + kaggle[2:]}.items():
        labels.write_text("\n".join(lines) + "\n")
        with pytest.raises(DataError, match=why.strip()):
            inet.build_imagenet100(root, out, val_labels=labels)
    with open(labels, "wb") as f:  # a sparse file just over the bound
        f.truncate(inet.MAX_VAL_LABELS_BYTES + 1)
    with pytest.raises(DataError, match="over 16 MiB"):
        inet.build_imagenet100(root, out, val_labels=labels)
    # Found by itself at the ImageNet root, and broken: the CLI says so in one line.
    (root / "LOC_val_solution.csv").write_text(_kaggle_csv(owner).replace(",n0", ",x0", 1))
    assert main(["data", "imagenet100", "--imagenet", str(root), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert "LOC_val_solution.csv:2: malformed row" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_flat_val_without_labels_says_what_was_looked_for(tmp_path, capsys):
    top = tmp_path / "kaggle"
    root = top / "ILSVRC" / "Data" / "CLS-LOC"
    _flat_tree(root, _jpeg((4, 5, 6)))
    out = tmp_path / "out"
    assert main(["data", "imagenet100", "--imagenet", str(top), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "flat ILSVRC2012 layout" in err
    for words in (str(root.resolve() / "LOC_val_solution.csv"), str(top.resolve() / "LOC_val_solution.csv"),
                  "--val-labels", "valprep.sh"):
        assert words in err
    assert not out.exists()
    # --val-labels is for a flat val/ only
    (root / "val" / WNIDS[0]).mkdir()
    (tmp_path / "l.txt").write_text("ILSVRC2012_val_00000001.JPEG n01440764\n")
    with pytest.raises(DataError, match="per-class folders: validation labels"):
        inet.build_imagenet100(top, out, val_labels=tmp_path / "l.txt")
    assert not out.exists()
