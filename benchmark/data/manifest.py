"""Manifests: a CSV that lists images, their targets and patients, read into an :class:`ImageSet`.

One row per image. Required columns:

- ``image``: path of the image file, relative to the manifest's folder or absolute;
- ``target``: the value to predict (a finite number, |target| ≤ 1e6), empty for an
  unlabeled image;
- ``patient_id``: the patient; a patient's images always stay in one split.

Optional columns:

- ``split``: ``train``, ``val``, ``test`` or ``unlabeled`` (case-insensitive), or
  empty; a patient's rows may not name two different splits. Rows in
  ``unlabeled`` count as unlabeled even if they have a target (kept as truth,
  for diagnostics only).
- ``roi_x0, roi_y0, roi_x1, roi_y1``: the region of interest in pixels of the
  original image (x0, y0 inclusive, x1, y1 exclusive); all four columns or
  none, and per row all four cells or none (the whole image).
- ``unit``: the targets' unit (``g/cm²``), printed with the metrics and written to the
  run record (``data.unit``) for tables and plots; its non-empty cells must all be the
  same (empty cells, e.g. of unlabeled rows, are allowed). Without it the unit is "".

Other columns (``sex``, ...) are ignored. Every problem is a :class:`DataError`
naming the file and its line (the header is line 1), raised at the first one
found, before anything is decoded or cached. Images not in the manifest's
``image`` column may come from a second source (``unlabeled`` of :func:`load_manifest`): a
folder of images or a CSV with at least an ``image`` column. That no unlabeled image is of a
validation or test patient, or has the content of a validation or test image, is checked
once the split is known (:func:`bmdbench.data.splits.make_split`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from bmdbench.config import stable_hash
from bmdbench.data.cache import decode_all
from bmdbench.data.images import IMAGE_SUFFIXES, Roi
from bmdbench.data.imageset import SPLITS, ImageFiles, ImageSet
from bmdbench.data.manifest_file import check_manifest_file
from bmdbench.errors import DataError

REQUIRED_COLUMNS = ("image", "target", "patient_id")
ROI_COLUMNS = ("roi_x0", "roi_y0", "roi_x1", "roi_y1")
COLUMNS = (
    "image", "id", "target", "patient_id", "patient_given", "split", *ROI_COLUMNS, "unit",
    "line", "where",
)  # fmt: skip
"""Columns of :func:`read_manifest`'s table."""
MAX_TARGET = 1e6
"""Largest |target| accepted: beyond it squared errors lose precision (and it is no BMD).
Targets and their squares stay far inside float32 (3.4e38), the dtype of the device."""

_ROI_FIX = (
    "fill all four of roi_x0, roi_y0, roi_x1, roi_y1 in pixels (x0, y0 top-left, inclusive; "
    "x1, y1 bottom-right, exclusive), or leave all four empty for the whole image"
)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a manifest; one row per image, in file order.

    Columns (:data:`COLUMNS`): ``image`` (absolute, normalised path; symbolic
    links are not resolved, so two links to one file count as two images), ``id`` (the
    ``image`` cell as written), ``target`` (float, NaN where empty),
    ``patient_id`` (str), ``patient_given`` (bool: True in a manifest; False
    where a CSV of unlabeled images leaves it to the file stem), ``split`` (str, "" where empty or absent),
    ``roi_x0..roi_y1`` (float, NaN for the whole image), ``unit`` (str, "" where
    empty or absent), ``line`` (1-based CSV line; the header is line 1) and
    ``where`` (``"<path> line <n>"``, for messages). Checks everything but the
    images' contents: the file parses, the required columns exist, every image
    file exists, targets are finite numbers within ±:data:`MAX_TARGET` or empty,
    splits are known and consistent per patient, ROIs are complete and ordered,
    the unit is the same on every row that gives one, no image is listed twice,
    and there is at least one row.
    """
    return _read_rows(Path(path), labeled=True)


def load_manifest(
    path: str | Path,
    image_size: int,
    unlabeled: str | Path | None = None,
    cache_dir: Path | None = None,
    require_unlabeled: bool = False,
) -> ImageSet:
    """Validate a manifest, decode its images (through the cache) and return them.

    ``targets`` are NaN for rows without a target and for rows in split
    ``unlabeled``; ``truth`` is the manifest's target wherever one is given.
    ``ids`` are the ``image`` cells as written. ``unlabeled`` (a folder or a
    CSV, see :func:`_unlabeled_rows`) appends more images, all unlabeled, with
    given split ``unlabeled``; an image in both sources is an error.
    ``require_unlabeled`` makes a set without any unlabeled image an error.
    Images are ``(image_size, image_size)``, see :func:`bmdbench.data.images.decode_bytes`.
    ``unit`` is the manifest's ``unit`` column ("" without one); ``files`` holds each image's
    content digest, row and whether its patient id was given. The fingerprint hashes each
    image's content digest, target, patient, split and ROI, in order.
    """
    path = Path(path)
    rows = read_sources(path, unlabeled)
    truth = rows["target"].to_numpy(dtype=np.float64)
    targets = np.where(rows["split"].to_numpy() == "unlabeled", np.nan, truth)
    if require_unlabeled and np.isfinite(targets).all():
        raise DataError(
            f"{path} has no unlabeled images (every row has a target and none is in split "
            "'unlabeled'), but this method needs some",
            "add rows with an empty target, or give a folder or CSV of unlabeled images "
            "(config key `unlabeled`)",
        )
    return _image_set(rows, targets, truth, image_size, cache_dir, str(path))


def read_sources(path: str | Path, unlabeled: str | Path | None = None) -> pd.DataFrame:
    """The rows of a manifest (:func:`read_manifest`) and of its extra ``unlabeled`` images
    (:func:`_unlabeled_rows`), checked, none listed twice; no image is opened. A run reads
    them first, before it imports the method registry (and so torch), so that a mistake in
    a manifest is told at once."""
    rows = read_manifest(path)
    if unlabeled is None:
        return rows
    extra = _unlabeled_rows(Path(unlabeled))
    _check_overlap(rows, extra)
    return pd.concat([rows, extra], ignore_index=True)


def _image_set(
    rows: pd.DataFrame,
    targets: np.ndarray,
    truth: np.ndarray,
    image_size: int,
    cache_dir: Path | None,
    source: str,
) -> ImageSet:
    rois = _rois(rows)
    images, digests = decode_all(
        rows["image"].tolist(), rois, image_size, cache_dir, where=rows["where"].tolist()
    )
    patient_ids = rows["patient_id"].to_numpy(dtype=str)
    splits = rows["split"].to_numpy(dtype=str)
    units = rows.loc[rows["unit"] != "", "unit"]  # one value: checked by the row parser
    fingerprint = stable_hash(
        [
            [digest, None if math.isnan(t) else t, patient, split, roi]
            for digest, t, patient, split, roi in zip(
                digests, truth.tolist(), patient_ids.tolist(), splits.tolist(), rois, strict=True
            )
        ]
    )
    return ImageSet(
        images=images,
        targets=np.asarray(targets, dtype=np.float64),
        truth=np.asarray(truth, dtype=np.float64),
        patient_ids=patient_ids,
        ids=rows["id"].to_numpy(dtype=str),
        given_split=splits,
        source=source,
        unit=units.iloc[0] if len(units) else "",
        fingerprint=fingerprint,
        files=ImageFiles(
            digests=np.array(digests, dtype=str),
            rows=rows["where"].to_numpy(dtype=str),
            patient_given=rows["patient_given"].to_numpy(dtype=bool),
        ),
    )


def _rois(rows: pd.DataFrame) -> list[Roi | None]:
    boxes = rows[list(ROI_COLUMNS)].to_numpy(dtype=np.float64)
    return [None if math.isnan(b[0]) else (b[0], b[1], b[2], b[3]) for b in boxes.tolist()]


def _unlabeled_rows(source: Path) -> pd.DataFrame:
    """Rows of a folder or CSV of unlabeled images, split ``unlabeled``, target NaN.

    A folder contributes every ``.png``, ``.jpg``, ``.jpeg``, ``.tif``,
    ``.tiff`` and ``.dcm`` file below it (recursively, sorted by path, hidden
    files skipped); its id is the path relative to the folder and its patient
    id the file stem. A CSV needs an ``image`` column; ``patient_id`` (default:
    the file stem) and the ROI columns are read as in a manifest; ``target``,
    ``split`` and ``unit`` are ignored. A patient id taken from the stem is not a
    given one (``patient_given`` False): the split's overlap check does not compare it
    with the manifest's patients, only the image's content.
    """
    if source.is_dir():
        rows = _folder_rows(source)
    elif source.is_file():
        rows = _read_rows(source, labeled=False)
    else:
        raise DataError(
            f"unlabeled image source {source} not found",
            "give a folder of images or a CSV with an `image` column",
        )
    rows["target"] = np.nan
    rows["split"] = "unlabeled"
    return rows


def _folder_rows(folder: Path) -> pd.DataFrame:
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )
    if not files:
        raise DataError(
            f"no images in folder {folder}",
            f"put image files ({', '.join(IMAGE_SUFFIXES)}) in it, or give another folder",
        )
    rows = pd.DataFrame(
        {
            "image": [os.path.abspath(p) for p in files],
            "id": [p.relative_to(folder).as_posix() for p in files],
            "patient_id": [p.stem for p in files],
            "patient_given": False,
            "line": 0,
            "where": f"{folder} (unlabeled images)",
        }
    )
    for column in ROI_COLUMNS:
        rows[column] = np.nan
    rows["unit"] = ""
    return rows


def _check_overlap(rows: pd.DataFrame, extra: pd.DataFrame) -> None:
    first = dict(zip(rows["image"], rows["where"], strict=True))
    for image, where in zip(extra["image"], extra["where"], strict=True):
        if image in first:
            raise DataError(
                f"{where}: image {image} is also in the manifest ({first[image]})",
                "list each image once: remove it from the unlabeled images or from the manifest",
            )


def _read_csv(path: Path) -> pd.DataFrame:
    check_manifest_file(path)
    try:
        table = pd.read_csv(
            path, dtype=str, keep_default_na=False, skip_blank_lines=False, skipinitialspace=True
        )
    except pd.errors.EmptyDataError as err:
        raise DataError(
            f"manifest {path} is empty",
            "write a header row (image,target,patient_id) and one row per image",
        ) from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(
            f"cannot read {path} as CSV ({str(err).strip()})",
            "save it as comma-separated UTF-8 text with a header row",
        ) from err
    table.columns = [str(c).strip() for c in table.columns]
    table.index += 2  # CSV line numbers: the header is line 1, blank lines are counted
    return table[(table != "").any(axis=1)]  # skip blank lines and rows of empty cells


def _read_rows(path: Path, labeled: bool) -> pd.DataFrame:
    """Validated rows of a manifest (``labeled``) or of a CSV of unlabeled images."""
    table = _read_csv(path)
    required = REQUIRED_COLUMNS if labeled else ("image",)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(
            f"{path} lacks column(s) {', '.join(missing)}; "
            f"found: {', '.join(table.columns) or 'none'}",
            f"add them: a manifest needs the columns {', '.join(required)}",
        )
    roi_found = [c for c in ROI_COLUMNS if c in table.columns]
    if roi_found and len(roi_found) < len(ROI_COLUMNS):
        absent = [c for c in ROI_COLUMNS if c not in table.columns]
        raise DataError(f"{path} has ROI column(s) but lacks {', '.join(absent)}", _ROI_FIX)
    if table.empty:
        raise DataError(f"{path} lists no images", "add one row per image below the header")
    parse = _RowParser(path, labeled)
    used = [c for c in (*REQUIRED_COLUMNS, "split", *ROI_COLUMNS, "unit") if c in table.columns]
    columns = [table[c].tolist() for c in used]
    records = [
        parse(line, dict(zip(used, cells, strict=True)))
        for line, *cells in zip(table.index.tolist(), *columns, strict=True)
    ]
    return pd.DataFrame.from_records(records, columns=list(COLUMNS))


class _RowParser:
    """Turns CSV rows into validated records, remembering what earlier rows said."""

    def __init__(self, path: Path, labeled: bool) -> None:
        self.path = path
        self.base = os.path.abspath(path.parent)
        self.labeled = labeled
        self.first_line: dict[str, int] = {}  # absolute image path → line
        self.patient_split: dict[str, tuple[str, int]] = {}  # patient → (split, line)
        self.unit: tuple[str, int] | None = None  # (unit, line) of the first row giving one

    def __call__(self, line: int, row: dict[str, str]) -> dict[str, object]:
        where = f"{self.path} line {line}"

        def fail(what: str, fix: str) -> DataError:
            return DataError(f"{where}: {what}", fix)

        written = row["image"].strip()
        if not written:
            raise fail("the image cell is empty", "give the image's path, or remove the row")
        image = os.path.normpath(os.path.join(self.base, written))
        if not os.path.isfile(image):
            raise fail(
                f"image file {written!r} not found (looked for {image})",
                "fix the path; relative paths start at the manifest's folder",
            )
        if image in self.first_line:
            raise fail(
                f"image {written!r} is listed again (first on line {self.first_line[image]})",
                "remove the duplicate row",
            )
        self.first_line[image] = line
        patient = row.get("patient_id", "").strip()
        patient_given = bool(patient)
        if not patient and not self.labeled:
            patient = Path(image).stem
        if not patient:
            raise fail(
                "patient_id is empty",
                "give every image its patient's id (a patient's images stay in one split)",
            )
        target = _number(row["target"], fail, "target") if self.labeled else math.nan
        split = row.get("split", "").strip().lower() if self.labeled else ""
        if split and split not in SPLITS:
            raise fail(
                f"split {row['split']!r} is not one of {', '.join(SPLITS)}",
                "use one of those, or leave the cell empty to let bmdbench split",
            )
        if split:
            self._check_patient(patient, split, line, fail)
        roi = self._roi(row, fail)
        unit = self._unit(row.get("unit", "").strip(), line, fail) if self.labeled else ""
        return {
            "image": image,
            "id": written,
            "target": target,
            "patient_id": patient,
            "patient_given": patient_given,
            "split": split,
            **dict(zip(ROI_COLUMNS, roi, strict=True)),
            "unit": unit,
            "line": line,
            "where": where,
        }

    def _check_patient(
        self, patient: str, split: str, line: int, fail: Callable[[str, str], DataError]
    ) -> None:
        earlier, first = self.patient_split.setdefault(patient, (split, line))
        if earlier != split:
            raise fail(
                f"patient {patient!r} is in split {split!r} here but in {earlier!r} on line {first}",
                "give all of a patient's images the same split (images without a target count "
                "as unlabeled, and val and test patients may have none)",
            )

    def _unit(self, unit: str, line: int, fail: Callable[[str, str], DataError]) -> str:
        if not unit:
            return ""
        if self.unit is None:
            self.unit = (unit, line)
        first, first_line = self.unit
        if unit != first:
            raise fail(
                f"unit {unit!r} differs from {first!r} on line {first_line}",
                "give every row the same unit (that of the targets), or leave the cell empty",
            )
        return unit

    def _roi(self, row: dict[str, str], fail: Callable[[str, str], DataError]) -> tuple[float, ...]:
        cells = [row.get(c, "").strip() for c in ROI_COLUMNS]
        if not any(cells):
            return (math.nan,) * 4
        empty = [c for c, v in zip(ROI_COLUMNS, cells, strict=True) if not v]
        if empty:
            raise fail(f"the ROI is incomplete: {', '.join(empty)} empty", _ROI_FIX)
        x0, y0, x1, y1 = (_number(v, fail, c) for c, v in zip(ROI_COLUMNS, cells, strict=True))
        if x1 <= x0 or y1 <= y0:
            raise fail(f"the ROI ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or reversed", _ROI_FIX)
        return x0, y0, x1, y1


def _number(cell: str, fail: Callable[[str, str], DataError], column: str) -> float:
    """A finite float from ``cell``; NaN for an empty target; anything else fails."""
    text = cell.strip()
    if not text and column == "target":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        fix = (
            "write a finite number, or leave the cell empty for an unlabeled image"
            if column == "target"
            else _ROI_FIX
        )
        raise fail(f"{column} {cell!r} is not a finite number", fix)
    if column == "target" and abs(value) > MAX_TARGET:
        raise fail(
            f"target {cell!r} is out of range (|target| > {MAX_TARGET:g})",
            "check the column and its unit (BMD in g/cm² lies near 0.3–1.5)",
        )
    return value
