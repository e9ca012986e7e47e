"""Dataset layouts, chosen with ``--data KIND:ARG[,key=value...]``.

Each layout reads the files of an official release (or a generic manifest) into a ``SampleSet``
whose labels are HAM10000 dx codes. Layout problems are reported as one line naming the file and
what is missing; a layout never guesses silently.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path

from ..core import zoo
from ..core.errors import DataError, UsageError
from ..core.labels import DX_CODES
from .images import is_image_file
from .samples import SPLITS, Sample, SampleSet
from .splits import select_split

LayoutReader = Callable[[str, dict[str, str]], SampleSet]
LAYOUTS: dict[str, LayoutReader] = {}
_OPTION = re.compile(r",(\w+)=([^,]*)")
COMMON_OPTIONS = {"split", "train_of"}  # every layout takes them (load_dataset)


def layout(name: str) -> Callable[[LayoutReader], LayoutReader]:
    def register(reader: LayoutReader) -> LayoutReader:
        LAYOUTS[name] = reader
        return reader

    return register


def parse_data_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``'synthetic:200,seed=3'`` -> ``('synthetic', '200', {'seed': '3'})``."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in LAYOUTS:
        raise UsageError(
            f"unknown data spec {spec!r}",
            fix=f"use KIND:ARG with KIND one of {', '.join(LAYOUTS)}, e.g. ham10000:DIR or synthetic:200",
        )
    first = _OPTION.search(rest)
    arg = rest if first is None else rest[: first.start()]
    options = dict(_OPTION.findall(rest[first.start() :])) if first else {}
    return kind, arg, options


def load_dataset(spec: str) -> SampleSet:
    kind, arg, options = parse_data_spec(spec)
    dataset = LAYOUTS[kind](arg, options)
    split = options.get("split")
    if split:
        dataset = dataset.split(_check_split(split, spec))
    if options.get("train_of"):
        dataset = _train_of(dataset, zoo.resolve(options["train_of"]).expanduser())
    if not dataset.samples:
        raise DataError("the dataset is empty", path=spec, fix="check the path and the layout")
    return dataset


def _train_of(dataset: SampleSet, run: Path) -> SampleSet:
    """The samples that another run's splits.csv put in its train split, so a second model never trains on its held-out lesions."""
    splits_csv = run / "splits.csv" if run.is_dir() else run
    train = select_split(dataset, "train", splits_csv)
    held_out = {r["group"] for r in read_csv(splits_csv, ("group", "split")) if r["split"] != "train"}
    return train.subset([i for i, s in enumerate(train.samples) if s.group not in held_out])


def _check_split(value: str, where: str) -> str:
    if value not in SPLITS:
        raise DataError(f"unknown split {value!r}", path=where, fix=f"use one of {', '.join(SPLITS)}")
    return value


def _unused_options(options: dict[str, str], allowed: set[str], spec: str) -> None:
    extra = set(options) - allowed - COMMON_OPTIONS
    if extra:
        raise UsageError(f"unknown option(s) {sorted(extra)} in data spec {spec!r}", fix=f"allowed: {sorted(allowed | COMMON_OPTIONS)}")


def _existing_dir(arg: str, kind: str) -> Path:
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise DataError(f"no such directory for the {kind} layout", path=root, fix=f"give {kind}:DIR an existing folder")
    return root


def read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV as dicts, with a one-line error for a missing file or column."""
    if not path.is_file():
        raise DataError("file not found", path=path, fix="check the dataset layout")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in required if c not in columns]
            if missing:
                raise DataError(
                    f"missing column(s) {missing}; found {columns}",
                    path=path,
                    fix=f"the CSV needs the columns {list(required)}",
                )
            rows = []
            for row in reader:
                if None in row:  # DictReader's key for cells beyond the header
                    raise DataError(
                        f"line {reader.line_num}: more cells than the header has columns",
                        path=path,
                        fix="quote cells that contain commas, or add the missing column names",
                    )
                rows.append({(k or "").strip(): (v or "").strip() for k, v in row.items()})
    except UnicodeDecodeError:
        raise DataError("not a UTF-8 text CSV", path=path, fix="save the file as UTF-8 CSV") from None
    except csv.Error as exc:
        raise DataError(f"malformed CSV ({exc})", path=path) from None
    if not rows:
        raise DataError("the CSV has a header but no rows", path=path)
    return rows


def _check_label(label: str, path: Path, line: int) -> str:
    code = label.strip().lower()
    if code not in DX_CODES:
        raise DataError(
            f"line {line}: unknown label {label!r}",
            path=path,
            fix=f"labels must be HAM10000 dx codes: {', '.join(DX_CODES)}",
        )
    return code


def _check_unique(ids: list[str], path: Path) -> None:
    seen: set[str] = set()
    for i, image_id in enumerate(ids):
        if image_id in seen:
            raise DataError(f"line {i + 2}: duplicate image id {image_id!r}", path=path, fix="each image may appear once")
        seen.add(image_id)


def _find_image(folders: list[Path], image_id: str) -> Path | None:
    for folder in folders:
        for suffix in (".jpg", ".jpeg", ".png", ".JPG"):
            candidate = folder / f"{image_id}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _mask_for(root: Path, image_id: str) -> Path | None:
    candidate = root / "masks" / f"{image_id}_segmentation.png"
    return candidate if candidate.is_file() else None


def _samples_from_ids(root: Path, csv_path: Path, rows: list[tuple[str, str, str]], image_dirs: list[Path], spec: str) -> SampleSet:
    """rows: (image_id, label, group). Missing image files are counted in notes, not fatal."""
    samples, missing = [], []
    for image_id, label, group in rows:
        image = _find_image(image_dirs, image_id)
        if image is None:
            missing.append(image_id)
            continue
        samples.append(Sample(image_id, label, group, image, _mask_for(root, image_id)))
    if not samples:
        raise DataError(
            f"none of the {len(rows)} images listed in {csv_path.name} were found",
            path=image_dirs[0],
            fix=f"put the images in {image_dirs[0]} as <image_id>.jpg",
        )
    notes = []
    if missing:
        notes.append(f"{len(missing)} images listed in {csv_path} are missing (e.g. {missing[0]}); skipped")
    return SampleSet(spec, samples, root, notes)


@layout("ham10000")
def read_ham10000(arg: str, options: dict[str, str]) -> SampleSet:
    spec = f"ham10000:{arg}"
    _unused_options(options, set(), spec)
    root = _existing_dir(arg, "ham10000")
    csv_path = root / "HAM10000_metadata.csv"
    if not csv_path.is_file():
        raise DataError("HAM10000_metadata.csv not found", path=root, fix="ham10000:DIR needs DIR/HAM10000_metadata.csv and DIR/images/")
    table = read_csv(csv_path, ("lesion_id", "image_id", "dx"))
    _check_unique([r["image_id"] for r in table], csv_path)
    rows = [(r["image_id"], _check_label(r["dx"], csv_path, i + 2), r["lesion_id"] or r["image_id"]) for i, r in enumerate(table)]
    # The official release splits the images over two folders; the SDK's own layout uses images/.
    image_dirs = [d for d in (root / "images", root / "HAM10000_images_part_1", root / "HAM10000_images_part_2") if d.is_dir()]
    if not image_dirs:
        raise DataError("no images/ folder", path=root, fix="ham10000:DIR needs the images in DIR/images/<image_id>.jpg")
    return _samples_from_ids(root, csv_path, rows, image_dirs, spec)


def _isic2017_label(row: dict[str, str], path: Path, line: int) -> str:
    try:
        melanoma, keratosis = float(row["melanoma"]), float(row["seborrheic_keratosis"])
    except ValueError:
        raise DataError(f"line {line}: melanoma/seborrheic_keratosis must be 0 or 1", path=path) from None
    if melanoma >= 0.5 and keratosis >= 0.5:
        raise DataError(f"line {line}: image {row['image_id']} is marked both melanoma and seborrheic keratosis", path=path)
    return "mel" if melanoma >= 0.5 else "bkl" if keratosis >= 0.5 else "nv"


@layout("isic2017")
def read_isic2017(arg: str, options: dict[str, str]) -> SampleSet:
    spec = f"isic2017:{arg}"
    _unused_options(options, set(), spec)
    root = _existing_dir(arg, "isic2017")
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        official = sorted(root.glob("*Part3_GroundTruth*.csv"))
        if not official:
            raise DataError(
                "labels.csv not found",
                path=root,
                fix="isic2017:DIR needs DIR/labels.csv (image_id, melanoma, seborrheic_keratosis) and DIR/images/",
            )
        csv_path = official[0]
    table = read_csv(csv_path, ("image_id", "melanoma", "seborrheic_keratosis"))
    _check_unique([r["image_id"] for r in table], csv_path)
    rows = [(r["image_id"], _isic2017_label(r, csv_path, i + 2), r["image_id"]) for i, r in enumerate(table)]
    image_dirs = [d for d in (root / "images", *sorted(root.glob("ISIC-2017_*_Data"))) if d.is_dir()]
    if not image_dirs:
        raise DataError("no images/ folder", path=root, fix="isic2017:DIR needs the images in DIR/images/<image_id>.jpg")
    return _samples_from_ids(root, csv_path, rows, image_dirs, spec)


def _inside(root: Path, relative: str, csv_path: Path, line: int, column: str) -> Path:
    if not relative:
        raise DataError(f"line {line}: empty {column} path", path=csv_path)
    candidate = Path(relative)
    resolved = (root / candidate).resolve()
    if candidate.is_absolute() or not resolved.is_relative_to(root.resolve()):
        raise DataError(
            f"line {line}: {column} path {relative!r} escapes the dataset folder",
            path=csv_path,
            fix="paths in a manifest must be relative to the CSV's folder, without '..'",
        )
    if not resolved.is_file():
        raise DataError(
            f"line {line}: {column} file {relative!r} not found", path=csv_path, fix="check the path relative to the CSV's folder"
        )
    return root / candidate


@layout("manifest")
def read_manifest(arg: str, options: dict[str, str]) -> SampleSet:
    spec = f"manifest:{arg}"
    _unused_options(options, set(), spec)
    csv_path = Path(arg).expanduser()
    root = csv_path.parent
    table = read_csv(csv_path, ("image", "label"))
    _check_unique([r["image"] for r in table], csv_path)
    samples = []
    for i, row in enumerate(table):
        line = i + 2
        image = _inside(root, row["image"], csv_path, line, "image")
        label = _check_label(row["label"], csv_path, line) if row["label"] else None
        mask = _inside(root, row["mask"], csv_path, line, "mask") if row.get("mask") else None
        split = _check_split(row["split"], f"{csv_path} line {line}") if row.get("split") else None
        image_id = Path(row["image"]).with_suffix("").as_posix()
        samples.append(Sample(image_id, label, row.get("group") or image_id, image, mask, split))
    return SampleSet(spec, samples, root)


@layout("folder")
def read_folder(arg: str, options: dict[str, str]) -> SampleSet:
    spec = f"folder:{arg}"
    _unused_options(options, set(), spec)
    root = _existing_dir(arg, "folder")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(
            "no class sub-folders", path=root, fix=f"folder:DIR needs one sub-folder per class named by dx code ({', '.join(DX_CODES)})"
        )
    unknown = [d.name for d in class_dirs if d.name.lower() not in DX_CODES]
    if unknown:
        raise DataError(f"sub-folder(s) {unknown} are not dx codes", path=root, fix=f"name class folders {', '.join(DX_CODES)}")
    samples, skipped = [], 0
    for class_dir in class_dirs:
        for path in sorted(class_dir.rglob("*")):
            if not path.is_file():
                continue
            if not is_image_file(path):
                skipped += 1
                continue
            image_id = path.relative_to(root).with_suffix("").as_posix()
            samples.append(Sample(image_id, class_dir.name.lower(), image_id, path))
    if not samples:
        raise DataError("no image files in the class sub-folders", path=root, fix="put .jpg/.png images in DIR/<class>/")
    notes = [f"{skipped} non-image files in {root} ignored"] if skipped else []
    return SampleSet(spec, samples, root, notes)


@layout("synthetic")
def read_synthetic(arg: str, options: dict[str, str]) -> SampleSet:
    from .synthetic import plan_synthetic

    spec = f"synthetic:{arg}" + "".join(f",{k}={v}" for k, v in options.items() if k != "split")
    _unused_options(options, {"seed"}, spec)
    try:
        n, seed = int(arg), int(options.get("seed", 0))
    except ValueError:
        raise UsageError(f"bad synthetic spec {spec!r}", fix="use synthetic:N or synthetic:N,seed=S with whole numbers") from None
    if not 1 <= n <= 1_000_000:
        raise UsageError(f"synthetic:N needs 1 <= N <= 1000000, got {n}")
    samples = [Sample(item.image_id, item.label, item.group, synthetic=item) for item in plan_synthetic(n, seed)]
    return SampleSet(spec, samples)


def images_from_paths(paths: list[str]) -> SampleSet:
    """Plain image files and folders of images, given on the command line (labels unknown)."""
    samples = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if not files:
                raise DataError("no image files in this folder", path=path)
        elif path.is_file():
            files = [path]
        else:
            raise DataError("no such file or folder", path=path)
        samples += [Sample(str(f), None, str(f), f) for f in files]
    return SampleSet("images", samples)
