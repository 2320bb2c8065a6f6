"""The OVSISBench archive (RSKT-Seg authors' preprocessed release), spec section 10.

Layout under the root (one folder per dataset, detectron2 ``load_sem_seg`` pairs by stem)::

    DLRSD/{imgs/*.jpg, D2masks/*.png}          DLRSD_split/{train,val}/{imgs|images, D2masks}
    iSAID/{imgs/*.png, D2masks/*.png}          iSAID_split/{train,val}/{imgs|images, D2masks}
    Potsdam/{imgs, D2masks, OVS_label}/*.png   Vaihingen/{imgs, D2masks, OVS_label}/*.png
    uavid/{Images, Labels}/*.png               UDD5/all/{src/*.JPG, gt/*.png}
    LoveDA/{images_png, masks_png}/*.png       VDD/{src/*.JPG, gt/*.png}

Labels are mode-L PNGs of V1 ids 0..K-1 and 255. ``prepare --source archive`` must map them to
native ids: unchanged for every dataset except iSAID (V1 v -> native v + 1; 255 stays 255).
``OVS_label`` (= D2masks + 1) is a distractor, as are a text file in an image folder and a
nested folder of PNGs inside a label folder (only top-level files are paired).
"""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from .common import IGNORE, ExpectedImage, RawFixture

ALL = ("dlrsd", "isaid", "potsdam", "vaihingen", "uavid", "udd5", "loveda", "vdd")

V1_CLASSES = {
    "dlrsd": 17,
    "isaid": 15,
    "potsdam": 6,
    "vaihingen": 6,
    "uavid": 8,
    "udd5": 5,
    "loveda": 8,
    "vdd": 7,
}

# dataset -> (image folder, label folder, image extension), spec section 10 table
FOLDERS = {
    "dlrsd": ("DLRSD/imgs", "DLRSD/D2masks", ".jpg"),
    "isaid": ("iSAID/imgs", "iSAID/D2masks", ".png"),
    "potsdam": ("Potsdam/imgs", "Potsdam/D2masks", ".png"),
    "vaihingen": ("Vaihingen/imgs", "Vaihingen/D2masks", ".png"),
    "uavid": ("uavid/Images", "uavid/Labels", ".png"),
    "udd5": ("UDD5/all/src", "UDD5/all/gt", ".JPG"),
    "loveda": ("LoveDA/images_png", "LoveDA/masks_png", ".png"),
    "vdd": ("VDD/src", "VDD/gt", ".JPG"),
}
SPLIT_ROOTS = {"dlrsd": "DLRSD_split", "isaid": "iSAID_split"}

# stems of the "all" folder (sizes differ per stem); DLRSD/iSAID also get one split-only stem
_STEMS = {
    "dlrsd": ["airplane00", "airplane81", "beach12", "harbor95"],
    "isaid": ["P0003_0_64_0_64", "P0003_0_64_40_104", "P0112_0_48_0_48", "P0907_16_80_0_64"],
    "potsdam": ["top_potsdam_2_10_0_0", "top_potsdam_2_10_0_1", "top_potsdam_7_8_3_4"],
    "vaihingen": ["top_mosaic_09cm_area1_0_0", "top_mosaic_09cm_area1_0_1"],
    "uavid": ["seq1_000000", "seq1_000100", "seq16_000900"],
    "udd5": ["DJI_0001", "DJI_0457"],
    "loveda": ["1366", "2522", "4190"],
    "vdd": ["DJI_20220401_0001", "DJI_20220401_0002", "DJI_20220529_0103"],
}
_SPLIT_ONLY = {"dlrsd": "tenniscourt40", "isaid": "P1410_0_40_0_40"}
_SIZES = [(24, 32), (32, 32), (20, 28), (28, 24), (16, 40)]


def _seed(name: str) -> int:
    return sum(ord(char) * (index + 1) for index, char in enumerate(name))


def native_from_v1(name: str, label: np.ndarray) -> np.ndarray:
    """What ``prepare --source archive`` must write for a V1 label of dataset ``name``."""
    if name != "isaid":
        return label.copy()
    return np.where(label == IGNORE, IGNORE, label.astype(np.int32) + 1).astype(np.uint8)


def _encode_image(image: np.ndarray, suffix: str) -> bytes:
    buffer = io.BytesIO()
    if suffix.lower() == ".jpg":
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    else:
        Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _decode_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


def _write_png_l(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8))
    assert image.mode == "L"
    image.save(path, format="PNG")


def _random_sample(
    rng: np.random.Generator, size: tuple[int, int], classes: int
) -> tuple[np.ndarray, np.ndarray]:
    height, width = size
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = rng.integers(0, classes, (height, width), dtype=np.uint8)
    label[rng.random((height, width)) < 0.1] = IGNORE
    label[0, : min(classes, width)] = np.arange(min(classes, width), dtype=np.uint8)
    return image, label


def split_folders(name: str, split_folder: str = "imgs") -> dict[str, tuple[str, str]]:
    """``{split: (image folder, label folder)}`` of DLRSD/iSAID (empty for the others)."""
    if name not in SPLIT_ROOTS:
        return {}
    base = SPLIT_ROOTS[name]
    return {s: (f"{base}/{s}/{split_folder}", f"{base}/{s}/D2masks") for s in ("train", "val")}


def _write_dataset(root: Path, name: str, split_folder: str) -> RawFixture:
    image_dir, label_dir, suffix = FOLDERS[name]
    classes = V1_CLASSES[name]
    rng = np.random.default_rng(_seed(name))
    stems = list(_STEMS[name])
    # DLRSD/iSAID: stems 0, 1 -> train, stem 2 -> val, stem 3 in "all" only, plus a split-only
    # stem in val whose files exist only in the split folder
    assignment: dict[str, str | None] = dict.fromkeys(stems)
    if name in SPLIT_ROOTS:
        assignment.update({stems[0]: "train", stems[1]: "train", stems[2]: "val"})
        assignment[_SPLIT_ONLY[name]] = "val"
    expected: dict[str, ExpectedImage] = {}
    notes: dict = {"image_bytes": {}, "image_files": {}, "label_files": {}, "root": root}
    folders = split_folders(name, split_folder)
    for index, (stem, split) in enumerate(assignment.items()):
        image, label = _random_sample(rng, _SIZES[index % len(_SIZES)], classes)
        data = _encode_image(image, suffix)
        places = [] if stem == _SPLIT_ONLY.get(name) else [(image_dir, label_dir)]
        if split is not None:
            places.append(folders[split])
        for img_folder, lbl_folder in places:
            (root / img_folder).mkdir(parents=True, exist_ok=True)
            (root / img_folder / f"{stem}{suffix}").write_bytes(data)
            _write_png_l(root / lbl_folder / f"{stem}.png", label)
            notes["label_files"].setdefault(stem, []).append(f"{lbl_folder}/{stem}.png")
        notes["image_bytes"][stem] = data
        notes["image_files"][stem] = f"{places[0][0]}/{stem}{suffix}"
        expected[stem] = ExpectedImage(
            image=_decode_rgb(data),
            label=native_from_v1(name, label),
            split=split,
            unmatched=0,
            source_label=f"{places[0][1]}/{stem}.png",
        )
        if name in ("potsdam", "vaihingen"):  # OVS_label = D2masks + 1 (ignored)
            shifted = ((label.astype(np.int32) + 1) % 256).astype(np.uint8)
            _write_png_l(root / label_dir.replace("D2masks", "OVS_label") / f"{stem}.png", shifted)
    _write_distractors(root, name, rng)
    return RawFixture(root, expected, notes)


def _write_distractors(root: Path, name: str, rng: np.random.Generator) -> None:
    image_dir, label_dir, _ = FOLDERS[name]
    (root / image_dir / "file_list.txt").write_text("not an image\n", encoding="utf-8")
    if name in ("loveda", "uavid"):  # nested folder: not top level, never paired
        first = _STEMS[name][0]
        _, label = _random_sample(rng, (8, 8), V1_CLASSES[name])
        _write_png_l(root / label_dir / "vis" / f"{first}.png", label)
        nested = root / image_dir / "vis"
        nested.mkdir(parents=True, exist_ok=True)
        (nested / f"{first}.png").write_bytes(_encode_image(np.zeros((8, 8, 3), np.uint8), ".png"))


def write_ovsisbench(
    root: Path,
    *,
    datasets: tuple[str, ...] | list[str] = ALL,
    archive: str | None = None,
    split_folder: str = "imgs",
) -> dict[str, RawFixture]:
    """Write the OVSISBench layout of ``datasets`` under ``root`` (a new or empty folder).

    Returns ``{dataset: RawFixture}``; ``expected`` holds native labels (what prepare must
    write), ``notes`` holds ``image_bytes``/``image_files``/``label_files`` keyed by stem
    (paths relative to the root, posix) and the ``root``. ``split_folder`` names the image
    folder of ``DLRSD_split``/``iSAID_split`` (``imgs`` or ``images``). ``archive="zip"`` or
    ``"tar.gz"``: the root is packed into ``<root>.zip``/``<root>.tar.gz`` next to it (members
    relative to the root, e.g. ``Potsdam/imgs/x.png``), the folder is removed, and every
    fixture's ``src`` is that archive.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(datasets) - set(ALL))
    if unknown:
        raise ValueError(f"unknown datasets {unknown}")
    if split_folder not in ("imgs", "images"):
        raise ValueError(split_folder)
    fixtures = {name: _write_dataset(root, name, split_folder) for name in datasets}
    if archive is not None:
        packed = pack(root, archive)
        shutil.rmtree(root)
        for fixture in fixtures.values():
            fixture.src = packed
            fixture.notes["root"] = None
    return fixtures


def pack(root: Path, kind: str) -> Path:
    """Pack every file under ``root`` into ``<root>.<kind>`` (``zip`` or ``tar.gz``)."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    target = root.with_name(f"{root.name}.{kind}")
    if kind == "zip":
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, path.relative_to(root).as_posix())
    elif kind == "tar.gz":
        with tarfile.open(target, "w:gz") as archive:
            for path in files:
                archive.add(path, path.relative_to(root).as_posix(), recursive=False)
    else:
        raise ValueError(f"unknown archive kind {kind!r}")
    return target


# --- corruptions for error-path tests (on an unpacked root) ---------------------------------


def add_orphan_label(fixture: RawFixture, name: str = "vaihingen") -> str:
    """Write a valid label with no image into ``name``'s label folder; return its relative path.

    ``fixture.expected`` is unchanged: the orphan must be dropped (and listed in
    ``meta["orphans"]``).
    """
    _, label_dir, _ = FOLDERS[name]
    stem = "orphan_" + _STEMS[name][0]
    label = np.zeros((12, 12), np.uint8)
    _write_png_l(Path(fixture.src) / label_dir / f"{stem}.png", label)
    fixture.notes["orphan"] = stem
    return f"{label_dir}/{stem}.png"


def write_bad_label(fixture: RawFixture, name: str, value: int | None = None) -> tuple[str, str]:
    """Put an out-of-range V1 value (default: the class count) into one label of ``name``.

    Picks a stem whose label exists only in the "all" folder, removes it from
    ``fixture.expected`` (``--skip-bad`` must drop it) and returns ``(stem, relative path)``.
    """
    value = V1_CLASSES[name] if value is None else value
    if value == IGNORE or value < V1_CLASSES[name]:
        raise ValueError(f"{value} is a valid V1 value of {name}")
    files = fixture.notes["label_files"]
    label_dir = FOLDERS[name][1]
    stem = next(s for s in reversed(list(fixture.expected)) if files[s] == [f"{label_dir}/{s}.png"])
    relative = files[stem][0]
    path = Path(fixture.src) / relative
    with Image.open(path) as image:
        label = np.array(image)
    label[label.shape[0] // 2, label.shape[1] // 2] = value
    _write_png_l(path, label)
    del fixture.expected[stem]
    fixture.notes["bad"] = (stem, relative)
    return stem, relative
