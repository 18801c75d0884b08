"""Synthetic hip phantoms: femoral-neck ROIs whose BMD is carried by bone structure.

No hip radiographs with DEXA-measured BMD are public, so the embedded dataset
is generated. Each phantom is a projection of a femoral neck crossing the
region of interest at an angle:

* **Structure (carries BMD).** A tube-shaped neck whose cortical shell, seen
  edge-on along both borders, thickens with BMD (the inferior cortex, the
  calcar, is thicker than the superior one), and a trabecular interior: an
  oriented, band-passed random field, thresholded to a volume fraction that
  grows with BMD, with a trabecular number that grows with BMD. Each of the
  three traits follows BMD with correlation :data:`TRAIT_CORRELATION`, the rest
  being patient-specific, so structure predicts BMD well but not perfectly.
* **Anatomy (unrelated to BMD).** Neck width, waist, angle, position, left or
  right hip, cortical asymmetry, trabecular anisotropy and the trabecular
  pattern itself.
* **Acquisition (unrelated to BMD, per image).** Positioning (rotation, shift,
  magnification), exposure (gain, offset, display gamma), soft-tissue
  thickness (a smooth large-scale attenuation field), detector blur, and
  quantum plus electronic noise. Exposure varies strongly, so global
  brightness and contrast say little about BMD: the mean intensity explains
  a few per cent of its variance.

Spatial scales are in units of the image width, so a phantom looks the same
at every size (pixel noise is per pixel, so larger images carry more
information, as they do in reality). The trabecular pattern of a patient is
drawn once on a fixed canvas and resampled per image, so all images of a
patient show the same bone, and a phantom has the same anatomy at 64 and at
512 px.

Randomness comes from ``np.random.SeedSequence(cfg.seed)``: labeled and
unlabeled images use independent child streams (changing ``n_unlabeled``
leaves the labeled images untouched), and each patient's texture and each
image's pixel noise have their own stream, so results do not depend on how
rendering is chunked.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import special

from bmdbench.config import SynthConfig, stable_hash
from bmdbench.data.cache import default_cache_dir, save_arrays
from bmdbench.data.imageset import ImageSet
from bmdbench.errors import DataError

GENERATOR_VERSION = 1  # bump whenever a change alters the rendered pixels or labels

BMD_MEAN = 0.75  # g/cm², elderly femoral neck
BMD_SD = 0.15
BMD_RANGE = (0.35, 1.25)  # true BMD is clipped to this range
TRAIT_CORRELATION = 0.85  # correlation of each structural trait with true BMD
UNIT = "g/cm²"

_TEXTURE_PX = 192  # side of the canonical trabecular canvas, pixels (every image size)
_CANVAS = 1.5  # canvas side in image widths; the field is periodic, so it wraps
_PIXELS_PER_CHUNK = 1 << 21  # images are rendered in batches of about this many pixels
_PARALLEL_MIN_PIXELS = 20_000_000  # synthesize uses several threads from this size on
_CACHE_MIN_PIXELS = 50_000_000  # load_synthetic caches sets at least this large on disk


@dataclass(frozen=True)
class _Patients:
    """Per-patient traits, one array entry per patient."""

    bmd: np.ndarray  # true BMD, g/cm²
    cortex: np.ndarray  # cortical thickness, fraction of the neck's half-width
    volume_fraction: np.ndarray  # trabecular volume fraction of the interior
    trab_freq: np.ndarray  # trabecular number: cycles per image width across the neck
    mineral: np.ndarray  # attenuation of bone tissue, unrelated to BMD
    half_width: np.ndarray  # neck half-width at the waist, image widths
    waist: np.ndarray  # widening towards head and trochanter: w(u) = w (1 + waist u²)
    angle: np.ndarray  # neck axis angle, radians (sign: left or right hip)
    offset: np.ndarray  # axis offset perpendicular to itself, image widths
    calcar: np.ndarray  # shift of the medullary canal towards the thin cortex, in [-1, 1]
    anisotropy: np.ndarray  # trabecular elongation along the axis

    def take(self, index: np.ndarray) -> _Patients:
        return _Patients(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})


@dataclass(frozen=True)
class _Views:
    """Per-image acquisition parameters, one array entry per image."""

    rotation: np.ndarray  # radians
    shift_x: np.ndarray  # image widths
    shift_y: np.ndarray
    magnification: np.ndarray
    gain: np.ndarray  # display units per attenuation unit
    level: np.ndarray  # display offset
    gamma: np.ndarray  # display gamma
    tissue: np.ndarray  # mean soft-tissue attenuation
    tissue_slope: np.ndarray  # soft-tissue gradient across the image
    tissue_dir: np.ndarray  # gradient direction, radians
    tissue_waves: np.ndarray  # (N, 4, 4): amplitude, fx, fy, phase of smooth undulations
    blur: np.ndarray  # Gaussian blur SD, image widths
    quantum: np.ndarray  # quantum noise SD at full intensity, display units per pixel
    electronic: np.ndarray  # electronic noise SD, display units per pixel

    def take(self, index: np.ndarray) -> _Views:
        return _Views(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})


def synthesize(cfg: SynthConfig, image_size: int, workers: int | None = None) -> ImageSet:
    """Render the synthetic dataset: ``cfg.n_labeled`` + ``cfg.n_unlabeled`` images.

    Labeled images come from ``cfg.n_patients`` patients (each has at least one
    image; the extra images go to random patients), in shuffled order, with
    ``targets`` = true BMD × (1 + N(0, ``cfg.label_noise``)) and ``given_split``
    "". Unlabeled images have one new patient each, ``targets`` NaN and
    ``given_split`` "unlabeled". ``truth`` is the true BMD of every image.
    Images are ``(N, image_size, image_size)`` uint8. Deterministic in
    (``cfg``, ``image_size``), whatever ``workers`` is: the number of threads
    rendering (default: one for small sets, every available core, up to 8,
    for sets of 20 M pixels or more).
    """
    _validate(cfg, image_size)
    labeled_seq, unlabeled_seq = np.random.SeedSequence(cfg.seed).spawn(2)

    params_seq, texture_seq, noise_seq = labeled_seq.spawn(3)
    rng = np.random.default_rng(params_seq)
    patients = _draw_patients(rng, cfg.n_patients)
    extra = rng.integers(0, cfg.n_patients, cfg.n_labeled - cfg.n_patients)
    patient_of = rng.permutation(np.concatenate([np.arange(cfg.n_patients), extra]))
    views = _draw_views(rng, cfg.n_labeled)
    label_error = rng.normal(0.0, cfg.label_noise, cfg.n_labeled)  # DEXA measurement error
    chunks = _chunks(patients, patient_of, views, texture_seq, noise_seq, 0, image_size)
    labeled_truth = patients.bmd[patient_of]

    params_seq, texture_seq, noise_seq = unlabeled_seq.spawn(3)
    rng = np.random.default_rng(params_seq)
    new_patients = _draw_patients(rng, cfg.n_unlabeled)
    new_views = _draw_views(rng, cfg.n_unlabeled)
    chunks += _chunks(
        new_patients,
        np.arange(cfg.n_unlabeled),
        new_views,
        texture_seq,
        noise_seq,
        cfg.n_labeled,
        image_size,
    )

    n = cfg.n_labeled + cfg.n_unlabeled
    patient_ids = [f"p{p:05d}" for p in patient_of]
    patient_ids += [f"p{cfg.n_patients + j:05d}" for j in range(cfg.n_unlabeled)]
    return ImageSet(
        images=_render_chunks(chunks, n, image_size, workers),
        targets=np.concatenate(
            [labeled_truth * (1 + label_error), np.full(cfg.n_unlabeled, np.nan)]
        ),
        truth=np.concatenate([labeled_truth, new_patients.bmd]),
        patient_ids=np.array(patient_ids, dtype=str),
        ids=np.array([f"synth-{i:06d}" for i in range(n)], dtype=str),
        given_split=np.array([""] * cfg.n_labeled + ["unlabeled"] * cfg.n_unlabeled, dtype=str),
        source="synthetic",
        unit=UNIT,
        fingerprint=synthetic_fingerprint(cfg, image_size),
    )


def synthetic_fingerprint(cfg: SynthConfig, image_size: int) -> str:
    """Stable hash of what determines the synthetic set (no pixel hashing)."""
    return stable_hash(
        {"synth": dataclasses.asdict(cfg), "image_size": image_size, "version": GENERATOR_VERSION}
    )


def load_synthetic(cfg: SynthConfig, image_size: int, cache_dir: Path | None = None) -> ImageSet:
    """:func:`synthesize`, kept on disk for large sets.

    A set of at least 50 M pixels (the ``paper`` preset has 2.4 G) is stored
    in the cache folder (``$BMDBENCH_CACHE``, else ``~/.cache/bmdbench``) as
    ``synthetic-<fingerprint>.npz`` and read back on later calls; smaller sets
    render in seconds and are not stored, unless ``cache_dir`` is given. As
    for decoded images, a cache file that cannot be read is rebuilt and one
    that cannot be written is skipped with a warning.
    """
    n_pixels = (cfg.n_labeled + cfg.n_unlabeled) * image_size**2
    if cache_dir is None:
        if n_pixels < _CACHE_MIN_PIXELS:
            return synthesize(cfg, image_size)
        cache_dir = default_cache_dir()
    fingerprint = synthetic_fingerprint(cfg, image_size)
    file = Path(cache_dir) / f"synthetic-{fingerprint[:32]}.npz"
    cached = _read_cache(file, cfg.n_labeled + cfg.n_unlabeled, image_size, fingerprint)
    if cached is not None:
        return cached
    images = synthesize(cfg, image_size)
    save_arrays(file, {name: getattr(images, name) for name in _CACHED}, "synthetic-data cache")
    return images


_CACHED = ("images", "targets", "truth", "patient_ids", "ids", "given_split")


def _read_cache(file: Path, n: int, size: int, fingerprint: str) -> ImageSet | None:
    """The cached set, or None when the file is missing, unreadable or inconsistent."""
    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = {name: z[name] for name in _CACHED}
    except Exception:  # missing, damaged or foreign: render again, whatever np.load raised
        return None
    if arrays["images"].shape != (n, size, size) or arrays["images"].dtype != np.uint8:
        return None
    if any(len(arrays[name]) != n for name in _CACHED):
        return None
    return ImageSet(**arrays, source="synthetic", unit=UNIT, fingerprint=fingerprint)


def write_synthetic(cfg: SynthConfig, image_size: int, out_dir: Path) -> Path:
    """Write the synthetic set as ``out_dir/images/<id>.png`` plus ``out_dir/manifest.csv``.

    Manifest columns: ``image`` (path relative to the manifest), ``target``
    (empty for unlabeled images), ``patient_id``, ``split`` ("" or
    "unlabeled") and ``true_bmd`` (for reference; methods never see it).
    Everything is written into a temporary folder beside ``out_dir`` and
    renamed into place, so ``out_dir`` is either complete or absent. Refuses a
    non-empty existing ``out_dir``. Returns the manifest's path.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(
            f"{out_dir} already exists and is not an empty folder",
            "choose a new --out folder, or delete this one first",
        )
    images = synthesize(cfg, image_size)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        (tmp / "images").mkdir()
        with open(tmp / "manifest.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "target", "patient_id", "split", "true_bmd"])
            for i in range(len(images)):
                name = f"images/{images.ids[i]}.png"
                Image.fromarray(images.images[i]).save(tmp / name)
                target = images.targets[i]
                writer.writerow(
                    [
                        name,
                        repr(float(target)) if np.isfinite(target) else "",
                        images.patient_ids[i],
                        images.given_split[i],
                        repr(float(images.truth[i])),
                    ]
                )
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / "manifest.csv"


def _validate(cfg: SynthConfig, image_size: int) -> None:
    if image_size < 8:
        raise DataError(f"image_size={image_size} is too small", "use an image size of 8 or more")
    if cfg.n_patients < 1 or cfg.n_labeled < cfg.n_patients:
        raise DataError(
            f"synth.n_labeled={cfg.n_labeled} images cannot come from "
            f"synth.n_patients={cfg.n_patients} patients",
            "set synth.n_patients between 1 and synth.n_labeled",
        )
    if cfg.n_unlabeled < 0:
        raise DataError(f"synth.n_unlabeled={cfg.n_unlabeled} is negative", "set it to 0 or more")
    if not 0 <= cfg.label_noise < 0.5:
        raise DataError(
            f"synth.label_noise={cfg.label_noise} is out of range",
            "give a relative SD in [0, 0.5), e.g. 0.015",
        )


def _draw_patients(rng: np.random.Generator, n: int) -> _Patients:
    bmd = np.clip(rng.normal(BMD_MEAN, BMD_SD, n), *BMD_RANGE)
    z = (bmd - BMD_MEAN) / BMD_SD
    rho = TRAIT_CORRELATION

    def trait() -> np.ndarray:  # a standard-normal trait correlated rho with BMD
        return rho * z + np.sqrt(1 - rho**2) * rng.standard_normal(n)

    side = rng.choice([-1.0, 1.0], n)
    return _Patients(
        bmd=bmd,
        cortex=np.clip(0.22 + 0.06 * trait(), 0.07, 0.42),
        volume_fraction=np.clip(0.40 + 0.10 * trait(), 0.12, 0.72),
        trab_freq=np.clip(11.0 + 1.2 * trait(), 7.0, 15.0),
        mineral=np.exp(rng.normal(0.0, 0.06, n)),
        half_width=rng.uniform(0.15, 0.21, n),
        waist=rng.uniform(0.0, 1.5, n),
        angle=side * np.deg2rad(rng.normal(35.0, 8.0, n)),
        offset=rng.normal(0.0, 0.03, n),
        calcar=side * rng.uniform(0.1, 0.6, n),
        anisotropy=rng.uniform(2.5, 4.0, n),
    )


def _draw_views(rng: np.random.Generator, n: int) -> _Views:
    waves = np.stack(
        [
            rng.uniform(0.0, 0.08, (n, 4)),  # amplitude
            rng.uniform(-1.5, 1.5, (n, 4)),  # fx, cycles per image width
            rng.uniform(-1.5, 1.5, (n, 4)),  # fy
            rng.uniform(0.0, 2 * np.pi, (n, 4)),  # phase
        ],
        axis=1,
    )
    return _Views(
        rotation=np.deg2rad(rng.normal(0.0, 5.0, n)),
        shift_x=rng.normal(0.0, 0.04, n),
        shift_y=rng.normal(0.0, 0.04, n),
        magnification=np.exp(rng.normal(0.0, 0.06, n)),
        gain=np.exp(rng.normal(np.log(0.32), 0.35, n)),
        level=rng.uniform(0.05, 0.40, n),
        gamma=np.exp(rng.uniform(np.log(0.8), np.log(1.25), n)),
        tissue=rng.uniform(0.0, 0.5, n),
        tissue_slope=rng.uniform(0.0, 0.6, n),
        tissue_dir=rng.uniform(0.0, 2 * np.pi, n),
        tissue_waves=waves,
        blur=rng.uniform(0.002, 0.007, n),
        quantum=rng.uniform(0.01, 0.04, n),
        electronic=rng.uniform(0.003, 0.012, n),
    )


@dataclass(frozen=True)
class _Chunk:
    """A batch of images to render, with everything needed to render it."""

    start: int  # position of the first image in the output
    patients: _Patients  # one entry per image (its patient's traits)
    views: _Views
    texture_seqs: list[np.random.SeedSequence]  # one per image: its patient's texture stream
    noise_seqs: list[np.random.SeedSequence]  # one per image: its pixel-noise stream
    size: int


def _chunks(
    patients: _Patients,
    patient_of: np.ndarray,
    views: _Views,
    texture_seq: np.random.SeedSequence,
    noise_seq: np.random.SeedSequence,
    start: int,
    size: int,
) -> list[_Chunk]:
    """Cut one stream's images into batches; ``patient_of[i]`` indexes image i's patient."""
    n = len(patient_of)
    texture_seqs = texture_seq.spawn(len(patients.bmd))
    noise_seqs = noise_seq.spawn(n)
    step = max(1, min(64, _PIXELS_PER_CHUNK // size**2))
    chunks = []
    for first in range(0, n, step):
        index = np.arange(first, min(first + step, n))
        owners = patient_of[index]
        chunks.append(
            _Chunk(
                start=start + first,
                patients=patients.take(owners),
                views=views.take(index),
                texture_seqs=[texture_seqs[p] for p in owners],
                noise_seqs=[noise_seqs[i] for i in index],
                size=size,
            )
        )
    return chunks


def _render_chunks(chunks: list[_Chunk], n: int, size: int, workers: int | None) -> np.ndarray:
    out = np.empty((n, size, size), dtype=np.uint8)
    if workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        workers = min(cores or 1, 8) if n * size**2 >= _PARALLEL_MIN_PIXELS else 1
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for chunk, images in zip(chunks, pool.map(_render_chunk, chunks), strict=True):
            out[chunk.start : chunk.start + len(images)] = images
    return out


def _render_chunk(chunk: _Chunk) -> np.ndarray:
    noise = np.stack([_texture_noise(seq) for seq in chunk.texture_seqs])
    return _render(
        chunk.patients,
        chunk.views,
        _filter_texture(noise, chunk.patients),
        [np.random.default_rng(seq) for seq in chunk.noise_seqs],
        chunk.size,
    )


def _texture_noise(seq: np.random.SeedSequence) -> np.ndarray:
    return np.random.default_rng(seq).standard_normal((_TEXTURE_PX, _TEXTURE_PX), np.float32)


def _filter_texture(noise: np.ndarray, patients: _Patients) -> np.ndarray:
    """Band-pass, oriented filtering of white noise → unit-variance trabecular fields.

    The canvas is in the bone's frame (axis along the canvas x axis), spanning
    ``_CANVAS`` image widths. Power is concentrated at ``trab_freq`` cycles per
    image width across the axis and ``anisotropy`` times lower along it, so the
    pattern is of streaks running along the neck.
    """
    spectrum = np.fft.rfft2(noise)
    fu = np.fft.rfftfreq(_TEXTURE_PX, _CANVAS / _TEXTURE_PX)[None, None, :]  # cycles/width
    fv = np.fft.fftfreq(_TEXTURE_PX, _CANVAS / _TEXTURE_PX)[None, :, None]
    f0 = patients.trab_freq[:, None, None]
    stretched = np.hypot(fu * patients.anisotropy[:, None, None], fv)
    radius = np.hypot(fu, fv)
    with np.errstate(divide="ignore"):
        oriented = np.exp(-(np.log(stretched / f0) ** 2) / (2 * 0.35**2))
        isotropic = np.exp(-(np.log(radius / f0) ** 2) / (2 * 0.35**2))
    fields = np.fft.irfft2(spectrum * (oriented + 0.2 * isotropic), s=noise.shape[-2:])
    fields -= fields.mean(axis=(1, 2), keepdims=True)
    fields /= fields.std(axis=(1, 2), keepdims=True)
    return fields.astype(np.float32)


def _render(
    patients: _Patients,
    views: _Views,
    textures: np.ndarray,
    noise_rngs: list[np.random.Generator],
    size: int,
) -> np.ndarray:
    """Render one batch: entries i of ``patients``, ``views``, ``textures`` make image i.

    Only numpy array operations (which release the GIL), so batches render in
    parallel threads. Blur (the detector's, plus half a pixel against aliasing)
    is built into the geometry: the projected paths are smoothed at their edges
    and the trabecular threshold is softened, in place of a convolution.
    """

    def col(values: np.ndarray) -> np.ndarray:  # (B,) → (B, 1, 1) float32
        return np.asarray(values, dtype=np.float32)[:, None, None]

    grid = ((np.arange(size) + 0.5) / size - 0.5).astype(np.float32)
    x, y = grid[None, None, :], grid[None, :, None]  # image widths; y points down
    blur = col(np.hypot(views.blur, 0.5 / size))

    # Image frame → patient frame: undo the per-image positioning, then the anatomy.
    px, py = x - col(views.shift_x), y - col(views.shift_y)
    cos, sin = col(np.cos(views.rotation)), col(np.sin(views.rotation))
    mag = col(views.magnification)
    qx, qy = (cos * px + sin * py) / mag, (cos * py - sin * px) / mag
    cos, sin = col(np.cos(patients.angle)), col(np.sin(patients.angle))
    u = cos * qx + sin * qy  # along the neck
    v = cos * qy - sin * qx - col(patients.offset)  # across the neck

    # Trabecular pattern: the patient's field, soft-thresholded to the volume fraction.
    field = _bilinear_wrap(textures, v * (_TEXTURE_PX / _CANVAS), u * (_TEXTURE_PX / _CANVAS))
    threshold = col(special.ndtri(1 - patients.volume_fraction))
    softness = 2 * np.pi * col(patients.trab_freq) * blur / 1.7  # field units per blur SD
    trabecular = special.expit((field - threshold) / softness)

    # Tube projection: cortex path plus interior path times the trabecular fraction.
    radius = col(patients.half_width) * (1 + col(patients.waist) * u**2)
    inner = radius * (1 - col(patients.cortex))
    canal = col(patients.calcar) * (radius - inner)  # medullary canal shifted off-centre
    outer_path = _smooth_chord(radius, v, blur)
    inner_path = _smooth_chord(inner, v - canal, blur)
    bone = col(patients.mineral) * (outer_path - inner_path * (1 - trabecular)) / radius

    # Soft tissue: mean thickness, a gradient, and a few smooth undulations.
    direction = views.tissue_dir
    tissue = col(views.tissue) + col(views.tissue_slope) * (
        col(np.cos(direction)) * x + col(np.sin(direction)) * y
    )
    for k in range(views.tissue_waves.shape[2]):
        amp, fx, fy, phase = (col(views.tissue_waves[:, j, k]) for j in range(4))
        tissue = tissue + amp * np.cos(2 * np.pi * (fx * x + fy * y) + phase)

    # Display: exposure, gamma, then quantum and electronic noise.
    signal = np.clip(col(views.level) + col(views.gain) * (tissue + bone), 0, 1)
    signal **= col(views.gamma)
    noise = np.stack([rng.standard_normal((size, size), np.float32) for rng in noise_rngs])
    sd = np.sqrt(col(views.quantum) ** 2 * signal + col(views.electronic) ** 2)
    pixels = np.clip(signal + sd * noise, 0, 1) * 255
    return np.rint(pixels).astype(np.uint8)


def _smooth_chord(radius: np.ndarray, distance: np.ndarray, blur: np.ndarray) -> np.ndarray:
    """Half-chord sqrt(r² − d²) of a circle, its edge smoothed over about ``blur``.

    The clamp max(r² − d², 0) is replaced by a softplus of width 2 r blur (the
    change of r² − d² over one blur SD at the edge), which keeps the profile
    smooth and the edges blurred without a convolution.
    """
    width = 2 * radius * blur
    return np.sqrt(width * np.logaddexp(0, (radius**2 - distance**2) / width))


def _bilinear_wrap(fields: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample periodic ``fields`` (B, R, R) at fractional pixel positions (B, H, W), bilinear."""
    b, r, _ = fields.shape
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = rows - r0, cols - c0
    i0 = r0.astype(np.int64) % r
    j0 = c0.astype(np.int64) % r
    i1, j1 = (i0 + 1) % r, (j0 + 1) % r
    base = (np.arange(b) * r * r)[:, None, None]
    flat = fields.reshape(-1)
    top = flat.take(base + i0 * r + j0) * (1 - fc) + flat.take(base + i0 * r + j1) * fc
    bottom = flat.take(base + i1 * r + j0) * (1 - fc) + flat.take(base + i1 * r + j1) * fc
    return top * (1 - fr) + bottom * fr
