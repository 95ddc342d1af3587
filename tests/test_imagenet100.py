"""`rbzoo data imagenet100`: a fake ImageNet tree of tiny real JPEGs → the subset → torchvision's
ImageFolder through rbzoo.data.get_dataset."""

import hashlib
import io
import json
import os

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


def test_build_from_tree_with_extra_classes_and_flat_val(tmp_path):
    """An ILSVRC2012-like tree: 103 classes in train/, the 50 000-style flat val/. The builder first
    asks for per-class val folders (and writes nothing); after the valprep step it copies exactly the
    100 listed classes to OUT/imagenet100/{train,val}/<wnid>/<file>, byte for byte."""
    root, blob = tmp_path / "ILSVRC2012", _jpeg((10, 200, 30))
    extra = OTHER + ["n04592741"]
    owner = {}  # flat val file -> its class (what valprep.sh / LOC_val_solution.csv say)
    for c, w in enumerate(extra[:1] + WNIDS + extra[1:]):  # extra classes sort among the listed ones
        (root / "train" / w).mkdir(parents=True)
        for i in range(1 + c % 2):
            (root / "train" / w / f"{w}_{i}.JPEG").write_bytes(blob + bytes([c % 251, i]))
        name = f"ILSVRC2012_val_{c + 1:08d}.JPEG"
        owner[name] = w
        (root / "val").mkdir(exist_ok=True)
        (root / "val" / name).write_bytes(blob + bytes([c % 251]))
    out = tmp_path / "data"
    with pytest.raises(DataError, match="flat ILSVRC2012 layout"):
        inet.build_imagenet100(root, out)
    assert not out.exists()
    for name, w in owner.items():  # valprep: move each val image into its class folder
        (root / "val" / w).mkdir(exist_ok=True)
        os.replace(root / "val" / name, root / "val" / w / name)
    res = inet.build_imagenet100(root, out, workers=2)
    dest = out / "imagenet100"
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json", "train", "val"]
    for split in ("train", "val"):
        assert sorted(p.name for p in (dest / split).iterdir()) == WNIDS
        copied = {p.relative_to(dest / split): p.read_bytes() for p in (dest / split).rglob("*") if p.is_file()}
        source = {p.relative_to(root / split): p.read_bytes() for w in WNIDS for p in (root / split / w).iterdir()}
        assert copied == source  # the same relative paths, the same bytes, nothing else
    assert res.total == len(WNIDS) + sum(1 + (c + 1) % 2 for c in range(100)) == res.written
    assert json.loads((dest / "manifest.json").read_text())["classes_sha256"] == inet.CLASSES_SHA256
