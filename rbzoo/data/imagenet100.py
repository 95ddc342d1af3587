"""Build the ImageNet100 subset (method.md §8) from an ImageNet (ILSVRC2012) folder tree.

The class list is Continuum's ImageNet100 as used by Douillard et al. (PODNet), whose file lists
`train_100.txt` / `val_100.txt` hold lines `<split>/<wnid>/<file> <label>`. Its 100 WNIDs are the
first 100 ILSVRC2012 synsets in sorted order (n01440764 … n01855672), 50 validation images each.
rbzoo ships them in `imagenet100_classes.txt` (its header records this provenance), pinned by the
SHA-256 of its WNID lines and verified on every use.
Training labels come from `ImageFolder` (sorted WNIDs), so the label column is never needed.

`val/` may hold per-class folders (`val/<wnid>/<file>`, what valprep.sh makes) or be ILSVRC2012's
flat folder of 50 000 `ILSVRC2012_val_*.JPEG`, whose classes then come from a labels file: Kaggle's
`LOC_val_solution.csv` (found by itself at the ImageNet root or the Kaggle layout's top) or any
file given as `val_labels` (that CSV, or "<file name> <wnid>" lines as valprep.sh encodes them).

The result is `OUT/imagenet100/{train,val}/<wnid>/<file>`, what `rbzoo.data.get_dataset(
"imagenet100", …, data_dir=OUT)` reads. Files are copied (or hard/sym-linked) one by one,
atomically (temporary name, then rename), so an interrupted build resumes where it stopped and
never leaves a truncated image behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .._io import atomic_path, write_json
from ..constants import LINK_MODES
from ..errors import DataError

CLASSES_FILE = Path(__file__).with_name("imagenet100_classes.txt")
# SHA-256 of the class list's WNID lines ("<wnid>\n" × 100, in file order); the file's `#` header,
# which records where the list comes from, is not part of it. It equals the manifest's
# classes_sha256 of a build with the shipped list.
CLASSES_SHA256 = "b332dbd149be58bd06982a583959d80f93d796938a70c0db0146a9e4fc9d661f"
VAL_PER_CLASS = 50  # every ILSVRC2012 class has exactly 50 validation images
SPLITS = ("train", "val")
_WNID = re.compile(r"^n\d{8}$")
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
VALPREP_HINT = ("put val/ in per-class folders first (val/<wnid>/ILSVRC2012_val_*.JPEG), e.g. with "
                "https://raw.githubusercontent.com/soumith/imagenetloader.torch/master/valprep.sh")
KAGGLE_VAL_LABELS = "LOC_val_solution.csv"
KAGGLE_HEADER = "ImageId,PredictionString"
MAX_VAL_LABELS_BYTES = 16 << 20  # Kaggle's file is a few MiB; a bigger one is not a labels file


def wnids_sha256(wnids: list[str]) -> str:
    """The digest the shipped list is pinned by: SHA-256 of "<wnid>\n" for each WNID, in order."""
    return hashlib.sha256("".join(w + "\n" for w in wnids).encode()).hexdigest()


def class_list(path: str | os.PathLike | None = None) -> list[str]:
    """The ImageNet100 WNIDs, sorted.

    Without `path`: the shipped list, verified against CLASSES_SHA256. With `path`: a custom list
    (one WNID per line; blank lines and `#` comments ignored), checked for format and duplicates.
    """
    p = Path(path) if path is not None else CLASSES_FILE
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read class list {p}: {e.strerror or e}") from None
    wnids = [ln.split("#", 1)[0].strip() for ln in data.decode("utf-8", "replace").splitlines()]
    wnids = [w for w in wnids if w]
    if path is None and wnids_sha256(wnids) != CLASSES_SHA256:
        raise DataError(f"{p} does not match its pinned SHA-256 {CLASSES_SHA256[:16]}…: the installed class list is corrupted")
    bad = [w for w in wnids if not _WNID.match(w)]
    if bad:
        raise DataError(f"{p}: not a WNID (nXXXXXXXX): {bad[0]!r}")
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{p}: duplicate WNIDs")
    if not wnids:
        raise DataError(f"{p}: empty class list")
    return sorted(wnids)


@dataclass
class BuildResult:
    """What `build_imagenet100` did: per-split per-class counts and what it skipped or wrote."""

    out: Path
    classes: list[str]
    counts: dict[str, dict[str, int]]
    written: int = 0
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)
    val_labels: Path | None = None  # the labels file a flat val/ was read with

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


def find_imagenet_root(root: str | os.PathLike) -> Path:
    """The folder holding train/ and val/: `root` itself or the Kaggle layout's ILSVRC/Data/CLS-LOC."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"ImageNet root {root} does not exist or is not a folder")
    for cand in (root, root / "ILSVRC" / "Data" / "CLS-LOC"):
        if (cand / "train").is_dir() and (cand / "val").is_dir():
            return cand
    raise DataError(f"{root} is not an ImageNet root: expected train/<wnid>/*.JPEG and val/ folders")


def val_labels_candidates(imagenet: str | os.PathLike, root: Path) -> list[Path]:
    """Where Kaggle's validation labels are looked for: the ImageNet root, then the Kaggle top."""
    cands = [root / KAGGLE_VAL_LABELS, Path(imagenet).expanduser().resolve() / KAGGLE_VAL_LABELS]
    return list(dict.fromkeys(cands))


def _image_key(name: str) -> str:
    """Kaggle names validation images without their suffix; match on the stem."""
    return name[: -len(Path(name).suffix)] if name.lower().endswith(_IMAGE_SUFFIXES) else name


def _label_row(line: str, kaggle: bool) -> tuple[str, str] | None:
    """(image name, WNID) of one labels line, or None if it is malformed."""
    if kaggle:
        image, sep, pred = line.partition(",")
        tokens = pred.split()
        # "wnid x y x y" per box; every box of a validation image names the same class.
        if not sep or not tokens or len(tokens) % 5 or len(set(tokens[0::5])) != 1 \
                or not all(t.isdigit() for i, t in enumerate(tokens) if i % 5):
            return None
        wnid = tokens[0]
    else:
        fields = line.split()
        if len(fields) != 2:
            return None
        image, wnid = fields
    if not _WNID.match(wnid) or not image or "/" in image or "\\" in image or image.startswith("."):
        return None
    return image, wnid


def read_val_labels(path: str | os.PathLike) -> dict[str, str]:
    """Validation image (name without suffix) → WNID, from Kaggle's LOC_val_solution.csv (told
    apart by its header) or "<file name> <wnid>" lines. Strict: any bad row fails."""
    return _read_val_labels(path)[0]


def _read_val_labels(path: str | os.PathLike) -> tuple[dict[str, str], str]:
    """read_val_labels and the SHA-256 of the bytes it parsed."""
    p = Path(path).expanduser()
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_VAL_LABELS_BYTES + 1)
    except OSError as e:
        raise DataError(f"cannot read validation labels {p}: {e.strerror or e}") from None
    if len(data) > MAX_VAL_LABELS_BYTES:
        raise DataError(f"{p} is over {MAX_VAL_LABELS_BYTES >> 20} MiB: not a validation labels file")
    try:
        lines = data.decode("utf-8-sig").splitlines()  # a BOM would hide the header
    except UnicodeDecodeError:
        raise DataError(f"{p} is not UTF-8 text: not a validation labels file") from None
    kaggle = bool(lines) and lines[0].strip() == KAGGLE_HEADER
    labels: dict[str, str] = {}
    for n, line in enumerate(lines[kaggle:], 1 + kaggle):
        if not line.strip():
            continue
        row = _label_row(line.strip(), kaggle)
        if row is None:
            want = "ImageId,<wnid> x y x y ..." if kaggle else "<file name> <wnid>"
            raise DataError(f"{p}:{n}: malformed row {line[:60]!r} (expected {want!r})")
        key = _image_key(row[0])
        if key in labels:
            raise DataError(f"{p}:{n}: image {row[0]} is listed twice")
        labels[key] = row[1]
    if not labels:
        raise DataError(f"{p} lists no validation images")
    return labels, hashlib.sha256(data).hexdigest()


def _images(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_file() and e.name.lower().endswith(_IMAGE_SUFFIXES)
                      and not e.name.startswith("."))


@dataclass
class Plan:
    """Source files per split and class, and how val/ was read (for the manifest)."""

    files: dict[str, dict[str, list[Path]]]
    val_layout: str  # "per-class" or "flat"
    val_labels: Path | None = None
    val_labels_sha256: str | None = None


def _flat_val(val: Path, classes: list[str], labels: dict[str, str], labels_file: Path) -> dict[str, list[Path]]:
    """The listed classes' images of a flat val/, by the labels file's WNIDs."""
    wanted: dict[str, list[Path]] = {w: [] for w in classes}
    for name in _images(val):
        wnid = labels.get(_image_key(name))
        if wnid is None:
            raise DataError(f"{val / name} is not in the validation labels {labels_file}")
        if wnid in wanted:
            wanted[wnid].append(val / name)
    empty = [w for w, files in wanted.items() if not files]
    if empty:
        raise DataError(f"{labels_file} gives no image in {val} to {len(empty)} ImageNet100 classes (e.g. {empty[0]})")
    return wanted


def _val_layout(val: Path, classes: list[str]) -> str:
    if any((val / w).is_dir() for w in classes):
        return "per-class"
    with os.scandir(val) as it:
        flat = any(e.is_file() and e.name.lower().endswith(_IMAGE_SUFFIXES) for e in it)
    return "flat" if flat else "per-class"  # an empty val/ fails as per-class, naming the classes


def plan(root: Path, classes: list[str], val_labels: Path | None = None,
         candidates: list[Path] = ()) -> Plan:
    """Source files per split and class; checks the layout (and reads val labels) first.

    A flat val/ takes its labels from `val_labels`, else from the first existing `candidates`."""
    val = root / "val"
    layout = _val_layout(val, classes)
    if layout == "per-class" and val_labels is not None:
        raise DataError(f"{val} has per-class folders: validation labels {val_labels} are for a flat val/ only")
    if layout == "flat" and val_labels is None:
        val_labels = next((c for c in candidates if c.is_file()), None)
        if val_labels is None:
            looked = ", ".join(str(c) for c in candidates) or "nothing"
            raise DataError(f"{val} is the flat ILSVRC2012 layout and has no validation labels (looked for {looked}): "
                            f"give one with --val-labels FILE ({KAGGLE_VAL_LABELS} or '<file name> <wnid>' lines), "
                            f"or {VALPREP_HINT}")
    labels, digest = _read_val_labels(val_labels) if layout == "flat" else ({}, None)
    out: dict[str, dict[str, list[Path]]] = {}
    for split in SPLITS:
        if split == "val" and layout == "flat":
            out[split] = _flat_val(val, classes, labels, val_labels)
            continue
        missing = [w for w in classes if not (root / split / w).is_dir()]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DataError(f"{root / split} lacks {len(missing)} of the {len(classes)} ImageNet100 classes "
                            f"({', '.join(missing[:3])}{more})")
        out[split] = {w: [root / split / w / n for n in _images(root / split / w)] for w in classes}
        empty = [w for w, files in out[split].items() if not files]
        if empty:
            raise DataError(f"{root / split / empty[0]} has no images ({len(empty)} empty class folders in {split}/)")
    return Plan(out, layout, val_labels, digest)


def _complete(src: Path, dst: Path, mode: str) -> bool:
    """True if `dst` already holds `src` (a previous, possibly interrupted, run wrote it)."""
    try:
        if mode == "sym":
            return dst.is_symlink() and os.readlink(dst) == str(src)
        st = dst.lstat()
        if mode == "hard":
            return os.path.samefile(src, dst)
        return not dst.is_symlink() and st.st_size == src.stat().st_size
    except OSError:
        return False


def _place(src: Path, dst: Path, mode: str) -> bool:
    """Copy or link src to dst atomically; False if dst was already complete."""
    if _complete(src, dst, mode):
        return False
    if mode == "copy":
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        return True
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        if mode == "hard":
            os.link(src, tmp)
        else:
            os.symlink(src, tmp)
        os.replace(tmp, dst)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        hint = " (hard links need source and destination on one filesystem; try --link sym or a copy)" if mode == "hard" else ""
        raise DataError(f"cannot link {src} → {dst}: {e.strerror or e}{hint}") from None
    return True


def _clean_temporaries(folder: Path) -> None:
    """Remove temporaries an interrupted run left (atomic_path's `.name.*.tmp`)."""
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith(".") and e.name.endswith(".tmp"):
                Path(e.path).unlink(missing_ok=True)


def build_imagenet100(
    imagenet: str | os.PathLike,
    out: str | os.PathLike,
    *,
    link: str = "copy",
    classes: str | os.PathLike | None = None,
    val_labels: str | os.PathLike | None = None,
    workers: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> BuildResult:
    """Create OUT/imagenet100/{train,val}/<wnid>/ from the ImageNet root `imagenet`.

    `link` is "copy" (default), "hard" or "sym" (absolute symlinks). `classes` overrides the
    shipped class list. `val_labels` names the labels of a flat val/ (else LOC_val_solution.csv is
    looked for). Resumable: files already in place are skipped. `progress(done, total)` is
    called as files are processed. The finished tree is verified (exactly the listed classes,
    every file present) and described in OUT/imagenet100/manifest.json.
    """
    if link not in LINK_MODES:
        raise DataError(f"unknown link mode {link!r} ({', '.join(LINK_MODES)})")
    wnids = class_list(classes)
    root = find_imagenet_root(imagenet).resolve()
    labels = Path(val_labels).expanduser().resolve() if val_labels is not None else None
    todo = plan(root, wnids, labels, val_labels_candidates(imagenet, root))
    dest = Path(out).expanduser() / "imagenet100"
    if dest.resolve() == root or root in dest.resolve().parents:
        raise DataError(f"output {dest} is inside the ImageNet root {root}")
    jobs = []
    for split in SPLITS:
        for w in wnids:
            d = dest / split / w
            d.mkdir(parents=True, exist_ok=True)
            _clean_temporaries(d)
            jobs += [(src, d / src.name) for src in todo.files[split][w]]
    result = BuildResult(dest, wnids, {s: {w: len(todo.files[s][w]) for w in wnids} for s in SPLITS},
                         val_labels=todo.val_labels)
    done = 0
    # Copying is I/O bound: threads overlap reads and writes. map() keeps order; on the first
    # failure (or Ctrl-C) the queued jobs are cancelled instead of each failing in turn.
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for wrote in pool.map(lambda job: _place(job[0], job[1], link), jobs):
            result.written += wrote
            result.skipped += not wrote
            done += 1
            if progress is not None and (done % 256 == 0 or done == len(jobs)):
                progress(done, len(jobs))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    verify(dest, wnids, result.counts)
    short = [w for w, n in result.counts["val"].items() if n != VAL_PER_CLASS]
    if short:
        result.warnings.append(f"{len(short)} classes do not have the {VAL_PER_CLASS} ILSVRC2012 validation images "
                               f"(e.g. {short[0]}: {result.counts['val'][short[0]]}); is the ImageNet copy complete?")
    _write_manifest(dest, result, root, link, shipped=classes is None, todo=todo)
    return result


def _write_manifest(dest: Path, result: BuildResult, root: Path, link: str, *, shipped: bool, todo: Plan) -> None:
    labels = todo.val_labels
    write_json(dest / "manifest.json", {
        "rbzoo_imagenet100": 1,
        "classes_sha256": wnids_sha256(result.classes),
        "shipped_class_list": shipped,
        "source": str(root),
        "link": link,
        "val_layout": todo.val_layout,
        "val_labels": str(labels) if labels is not None else None,
        "val_labels_sha256": todo.val_labels_sha256,  # the labels that decided the val classes
        "counts": {s: sum(c.values()) for s, c in result.counts.items()},
        "per_class": result.counts,
    })


def verify(dest: str | os.PathLike, classes: list[str], counts: dict[str, dict[str, int]] | None = None) -> None:
    """Check OUT/imagenet100: each split has exactly `classes` as folders (what ImageFolder will
    see) and, if given, the expected number of images per class."""
    dest = Path(dest)
    for split in SPLITS:
        folder = dest / split
        if not folder.is_dir():
            raise DataError(f"{folder} is missing")
        present = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        if present != sorted(classes):
            extra = sorted(set(present) - set(classes))
            missing = sorted(set(classes) - set(present))
            raise DataError(f"{folder} has {len(present)} class folders, expected the {len(classes)} ImageNet100 classes"
                            + (f"; unexpected: {', '.join(extra[:3])}" if extra else "")
                            + (f"; missing: {', '.join(missing[:3])}" if missing else ""))
        if counts is not None:
            for w in classes:
                n = len(_images(folder / w))
                if n != counts[split][w]:
                    raise DataError(f"{folder / w} holds {n} images, expected {counts[split][w]}")
