"""A synthetic instance- and semantic-segmentation dataset of simple shapes, generated on first use.

Every image is a scene of 1-6 filled shapes (ellipse, rotated rectangle, triangle) in random colours on a textured
background (smooth noise, a gradient or stripes). Shapes are painted in order, so later shapes occlude earlier ones;
an instance's mask is the part of it that stays visible, and instances whose visible part becomes tiny are removed
from the scene before it is painted (so every shape in an image is annotated). The same scene gives:

* the COCO instances json (``segmentation`` as polygons traced around the visible mask's pixels, one polygon per
  connected part; ``bbox`` and ``area`` of the visible mask; ``iscrowd`` 0), loaded with detectron2's
  ``load_coco_json`` as ``shapes_train`` / ``shapes_val``;
* a semantic-segmentation label map (uint8 PNG, 0 = background, 1..3 = the category ids), loaded with detectron2's
  ``load_sem_seg`` as ``shapes_sem_seg_train`` / ``shapes_sem_seg_val`` (same images).

Image ``i`` of a split is rendered from its own seed ``(split seed, i)`` (``render_scene``), so any image can be
reproduced alone and files are byte-identical from run to run (JPEG and PNG written with fixed parameters).

Layout under ``root`` (default ``$DETECTRON2_DATASETS/shapes``, ``DETECTRON2_DATASETS`` defaulting to ``datasets``
as in detectron2's builtin datasets)::

    train/000000.jpg ...            val/000000.jpg ...
    sem_seg/train/000000.png ...    sem_seg/val/000000.png ...
    annotations/instances_train.json, annotations/instances_val.json
    .complete                       marker: generator version and a hash of its parameters (written last)
    .lock                           taken (fcntl.flock) while generating

Registering (``register_shapes_datasets``) generates nothing; the registered dataset functions call
``ensure_shapes_generated`` first, which generates under the lock into a temporary folder, moves the result into
place and writes the marker last; it regenerates when the marker is missing or names other parameters. Code that
needs the files before a dataset is loaded (``COCOEvaluator`` reads ``json_file`` when it is built, which with
``--eval-only`` can happen before any loader) calls ``ensure_shapes_generated_for(dataset_name)``.

Command line: ``python -m pvt_d2.data.shapes --root DIR`` generates (if needed) and prints a summary line.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

try:  # POSIX; elsewhere generation still works but concurrent first use is not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "THING_CLASSES",
    "STUFF_CLASSES",
    "THING_COLORS",
    "DEFAULT_NUM_TRAIN",
    "DEFAULT_NUM_VAL",
    "SPLIT_SEEDS",
    "GENERATOR_VERSION",
    "Scene",
    "render_scene",
    "mask_to_polygons",
    "default_shapes_root",
    "generate_shapes",
    "ensure_shapes_generated",
    "ensure_shapes_generated_for",
    "shapes_files",
    "register_shapes_datasets",
    "main",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# Generator parameters. Any change here must bump GENERATOR_VERSION or enter _params(), so that datasets generated
# before are regenerated instead of reused.
# ---------------------------------------------------------------------------------------------------------------
GENERATOR_VERSION = 1
THING_CLASSES: Tuple[str, ...] = ("ellipse", "rectangle", "triangle")  # COCO category ids 1, 2, 3
STUFF_CLASSES: Tuple[str, ...] = ("background",) + THING_CLASSES  # sem-seg label values 0, 1, 2, 3
THING_COLORS: Tuple[Tuple[int, int, int], ...] = ((220, 20, 60), (0, 130, 230), (250, 170, 30))
STUFF_COLORS: Tuple[Tuple[int, int, int], ...] = ((90, 90, 90),) + THING_COLORS
SEM_SEG_IGNORE_LABEL = 255  # declared for detectron2; no generated pixel uses it

DEFAULT_NUM_TRAIN = 400
DEFAULT_NUM_VAL = 100
SPLIT_SEEDS: Dict[str, int] = {"train": 20210201, "val": 20210202}

IMAGE_SIDE_RANGE = (192, 320)  # height and width drawn independently, inclusive, in pixels
INSTANCES_RANGE = (1, 6)  # shapes drawn per scene, inclusive (fewer survive when occluded)
MIN_VISIBLE_AREA = 100  # pixels: a shape with less visible area is removed from the scene
MIN_VISIBLE_FRACTION = 0.2  # of its in-image area: a shape more hidden than this is removed from the scene
MIN_PART_AREA = 12  # pixels: scenes where a visible mask has a smaller separate part (a sliver) are redrawn
JPEG_QUALITY = 95
PNG_COMPRESSION = 3

_SPLITS = ("train", "val")
_MARKER = ".complete"
_LOCK = ".lock"
_TMP_PREFIX = ".tmp-"


def _params(num_train: int, num_val: int) -> Dict[str, Any]:
    """Everything that determines the generated files; its hash is the marker's identity."""
    return {
        "generator_version": GENERATOR_VERSION,
        "splits": {
            "train": {"num_images": num_train, "seed": SPLIT_SEEDS["train"]},
            "val": {"num_images": num_val, "seed": SPLIT_SEEDS["val"]},
        },
        "thing_classes": list(THING_CLASSES),
        "image_side_range": list(IMAGE_SIDE_RANGE),
        "instances_range": list(INSTANCES_RANGE),
        "min_visible_area": MIN_VISIBLE_AREA,
        "min_visible_fraction": MIN_VISIBLE_FRACTION,
        "min_part_area": MIN_PART_AREA,
        "jpeg_quality": JPEG_QUALITY,
        "png_compression": PNG_COMPRESSION,
    }


def _params_hash(params: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scene:
    """One rendered image and its ground truth.

    Attributes:
        image: (H, W, 3) uint8, RGB.
        category_ids: one COCO category id (1..3, see ``THING_CLASSES``) per instance, in painting order.
        visible_masks: (N, H, W) bool, the visible part of each instance; pairwise disjoint.
        full_masks: (N, H, W) bool, each instance's whole shape inside the image, occluded part included.
        sem_seg: (H, W) uint8, 0 for background, else the category id of the instance visible there.
    """

    image: np.ndarray
    category_ids: Tuple[int, ...]
    visible_masks: np.ndarray
    full_masks: np.ndarray
    sem_seg: np.ndarray


def _scene_rng(split_seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([GENERATOR_VERSION, split_seed, index]))


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 255.0, size=3).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 texture in [0, 255]: a smooth-noise, gradient or stripes pattern between two colours."""
    kind = int(rng.integers(3))
    if kind == 0:  # smooth noise: a coarse random grid upsampled bicubically, one grid per channel
        gh, gw = int(rng.integers(2, 7)), int(rng.integers(2, 7))
        coarse = rng.uniform(0.0, 1.0, size=(gh, gw, 3)).astype(np.float32)
        t = np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
    else:
        theta = rng.uniform(0.0, np.pi)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        proj = xs * np.float32(np.cos(theta)) + ys * np.float32(np.sin(theta))
        if kind == 1:  # linear gradient
            t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1.0)
        else:  # stripes
            period = rng.uniform(10.0, 48.0)
            t = 0.5 + 0.5 * np.sin(proj * np.float32(2.0 * np.pi / period) + np.float32(rng.uniform(0, 2 * np.pi)))
        t = t[:, :, None]
    c0, c1 = _random_color(rng), _random_color(rng)
    return c0 + (c1 - c0) * t


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> Tuple[int, np.ndarray]:
    """Draw one shape's category id and its (h, w) uint8 mask, clipped to the image."""
    side = min(h, w)
    category_id = int(rng.integers(1, len(THING_CLASSES) + 1))
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    angle = rng.uniform(0.0, 180.0)
    mask = np.zeros((h, w), dtype=np.uint8)
    shift = 4  # sub-pixel vertex precision for fillPoly
    if category_id == 1:  # ellipse
        axes = (int(round(rng.uniform(0.08, 0.25) * side)), int(round(rng.uniform(0.08, 0.25) * side)))
        cv2.ellipse(mask, (int(round(cx)), int(round(cy))), axes, angle, 0.0, 360.0, 1, thickness=-1)
    elif category_id == 2:  # rotated rectangle
        size = (rng.uniform(0.15, 0.5) * side, rng.uniform(0.15, 0.5) * side)
        corners = cv2.boxPoints(((cx, cy), size, angle))
        cv2.fillPoly(mask, [np.round(corners * (1 << shift)).astype(np.int32)], 1, shift=shift)
    else:  # triangle: three vertices around the centre, angular gaps 83..164 degrees, so never a sliver
        radius = rng.uniform(0.14, 0.32) * side
        gaps = rng.uniform(0.6, 1.0, size=3)
        angles = rng.uniform(0.0, 2 * np.pi) + np.cumsum(gaps / gaps.sum() * 2 * np.pi)
        radii = radius * rng.uniform(0.8, 1.2, size=3)
        corners = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(corners * (1 << shift)).astype(np.int32)], 1, shift=shift)
    return category_id, mask


def _label_map(masks: Sequence[np.ndarray], h: int, w: int) -> np.ndarray:
    """(h, w) uint8: 0 where no shape, else 1 + index of the last (topmost) shape covering the pixel."""
    ids = np.zeros((h, w), dtype=np.uint8)
    for k, m in enumerate(masks):
        ids[m.astype(bool)] = k + 1
    return ids


def _has_hole_or_sliver(visible: np.ndarray) -> bool:
    """Whether a visible mask cannot be described well by polygons: a hole (polygons cannot exclude it) or a
    separate part too small to trace."""
    contours, hierarchy = cv2.findContours(visible.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is not None and bool((hierarchy[0][:, 3] >= 0).any()):
        return True
    num, _, stats, _ = cv2.connectedComponentsWithStats(visible.astype(np.uint8), connectivity=8)
    return bool((stats[1:num, cv2.CC_STAT_AREA] < MIN_PART_AREA).any())


def _contrasting_color(rng: np.random.Generator, avoid: Sequence[np.ndarray]) -> np.ndarray:
    """A random colour at least some distance from each colour in ``avoid`` (best of a few tries)."""
    best, best_dist = None, -1.0
    for _ in range(20):
        color = _random_color(rng)
        dist = min((float(np.abs(color - a).sum()) for a in avoid), default=1e9)
        if dist > best_dist:
            best, best_dist = color, dist
        if dist >= 120.0:
            break
    return best


def render_scene(split_seed: int, index: int) -> Scene:
    """Render image ``index`` of the split seeded ``split_seed`` (see ``SPLIT_SEEDS``); pure and deterministic."""
    if index < 0:
        raise ValueError(f"image index must be >= 0, got {index}")
    rng = _scene_rng(split_seed, index)
    h = int(rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1))
    w = int(rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1))
    background = _background(rng, h, w)

    for _attempt in range(100):
        n = int(rng.integers(INSTANCES_RANGE[0], INSTANCES_RANGE[1] + 1))
        drawn = [_shape_mask(rng, h, w) for _ in range(n)]
        ids = _label_map([m for _, m in drawn], h, w)
        keep = []
        for k, (_, m) in enumerate(drawn):
            visible_area = int(np.count_nonzero(ids == k + 1))
            if visible_area >= max(MIN_VISIBLE_AREA, MIN_VISIBLE_FRACTION * int(np.count_nonzero(m))):
                keep.append(k)
        if not keep:
            continue
        # Removing hidden shapes only uncovers the kept ones, so they all stay above the thresholds.
        shapes = [drawn[k] for k in keep]
        ids = _label_map([m for _, m in shapes], h, w)
        visible = np.stack([ids == k + 1 for k in range(len(shapes))])
        if not any(_has_hole_or_sliver(v) for v in visible):
            break
    else:  # pragma: no cover - never seen; would mean the parameters above make valid scenes too rare
        raise RuntimeError(f"no valid scene for split seed {split_seed}, image {index} in 100 attempts")

    canvas = background  # painted in place, so each shape's contrast is judged against what it covers
    colors: List[np.ndarray] = []
    for _, m in shapes:
        ys, xs = np.nonzero(m)
        region_mean = canvas[ys, xs].mean(axis=0)
        color = _contrasting_color(rng, [region_mean] + colors)
        colors.append(color)
        # a gentle linear shading across the shape, so fills are not perfectly flat
        theta = rng.uniform(0.0, 2 * np.pi)
        proj = (xs - xs.mean()) * np.cos(theta) + (ys - ys.mean()) * np.sin(theta)
        shade = 1.0 + 0.25 * proj / max(float(np.abs(proj).max()), 1.0)
        canvas[ys, xs] = color[None, :] * shade[:, None].astype(np.float32)
    image = canvas + np.float32(3.0) * rng.standard_normal(size=(h, w, 1), dtype=np.float32)  # sensor-like noise
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)

    category_ids = tuple(c for c, _ in shapes)
    lut = np.array((0,) + category_ids, dtype=np.uint8)
    return Scene(
        image=image,
        category_ids=category_ids,
        visible_masks=visible,
        full_masks=np.stack([m.astype(bool) for _, m in shapes]),
        sem_seg=lut[ids],
    )


def mask_to_polygons(mask: np.ndarray) -> List[List[float]]:
    """COCO polygons (``[x0, y0, x1, y1, ...]`` in pixel-edge coordinates) around the pixels of a binary mask, one
    per connected part; holes are not represented.

    The contour is traced on the mask upsampled 2x, so it runs a quarter pixel inside the mask's outer pixel edges:
    every pixel centre of the mask is inside the polygon and every other pixel centre is at least 3/4 pixel
    outside, so rasterizing the polygons (pycocotools) gives back the mask.
    """
    up = np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        if len(contour) < 3:
            continue
        # upsampled pixel (u, v) has its centre at ((u + 0.5) / 2, (v + 0.5) / 2) in original coordinates
        points = (contour.reshape(-1, 2).astype(np.float64) + 0.5) / 2.0
        polygons.append([float(v) for v in points.reshape(-1)])
    return polygons


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------
def default_shapes_root() -> str:
    """``$DETECTRON2_DATASETS/shapes``, ``DETECTRON2_DATASETS`` defaulting to ``datasets`` (relative to the
    current directory), as for detectron2's builtin datasets; returned absolute."""
    return os.path.abspath(os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "shapes"))


def shapes_files(root: str, split: str) -> Dict[str, str]:
    """Paths of one split under ``root``: ``image_root``, ``sem_seg_root`` and ``json_file``."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    return {
        "image_root": os.path.join(root, split),
        "sem_seg_root": os.path.join(root, "sem_seg", split),
        "json_file": os.path.join(root, "annotations", f"instances_{split}.json"),
    }


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _write_split(out_dir: str, split: str, num_images: int) -> Dict[str, int]:
    files = shapes_files(out_dir, split)
    os.makedirs(files["image_root"])
    os.makedirs(files["sem_seg_root"])
    images, annotations = [], []
    per_class = [0] * len(THING_CLASSES)
    jpeg_params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY, cv2.IMWRITE_JPEG_OPTIMIZE, 0]
    png_params = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]
    for index in range(num_images):
        scene = render_scene(SPLIT_SEEDS[split], index)
        h, w = scene.sem_seg.shape
        stem = f"{index:06d}"
        ok1, jpg = cv2.imencode(".jpg", np.ascontiguousarray(scene.image[:, :, ::-1]), jpeg_params)
        ok2, png = cv2.imencode(".png", scene.sem_seg, png_params)
        if not (ok1 and ok2):  # pragma: no cover
            raise RuntimeError(f"OpenCV could not encode image {index} of split {split!r}")
        with open(os.path.join(files["image_root"], stem + ".jpg"), "wb") as f:
            f.write(jpg.tobytes())
        with open(os.path.join(files["sem_seg_root"], stem + ".png"), "wb") as f:
            f.write(png.tobytes())
        image_id = index + 1
        images.append({"id": image_id, "file_name": stem + ".jpg", "height": h, "width": w})
        for category_id, visible in zip(scene.category_ids, scene.visible_masks):
            ys, xs = np.nonzero(visible)
            x0, y0 = int(xs.min()), int(ys.min())
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": mask_to_polygons(visible),
                    "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                    "area": int(len(xs)),
                    "iscrowd": 0,
                }
            )
            per_class[category_id - 1] += 1
    coco = {
        "info": {
            "description": f"pvt_d2 synthetic shapes, split {split}",
            "version": str(GENERATOR_VERSION),
            "seed": SPLIT_SEEDS[split],
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(THING_CLASSES)
        ],
    }
    with open(files["json_file"], "w") as f:
        f.write(json.dumps(coco, separators=(",", ":")))  # dumps: C encoder, 10x faster than streaming dump
    return {"images": num_images, "instances": len(annotations), **dict(zip(THING_CLASSES, per_class))}


def generate_shapes(
    out_dir: str, num_train: int = DEFAULT_NUM_TRAIN, num_val: int = DEFAULT_NUM_VAL
) -> Dict[str, Dict[str, int]]:
    """Write both splits into ``out_dir`` (created; must not exist or be empty), unconditionally and without the
    lock or the marker (``ensure_shapes_generated`` adds those). Returns counts per split."""
    num_train, num_val = _check_count("num_train", num_train), _check_count("num_val", num_val)
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"generate_shapes needs a new or empty folder, {out_dir!r} is not empty")
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    return {split: _write_split(out_dir, split, n) for split, n in zip(_SPLITS, (num_train, num_val))}


def _read_marker(root: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(root, _MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _is_complete(root: str, params_hash: str) -> bool:
    marker = _read_marker(root)
    return marker is not None and marker.get("params_hash") == params_hash


@contextlib.contextmanager
def _exclusive_lock(path: str) -> Iterator[None]:
    with open(path, "a") as f:  # the lock file is never removed: removing it would race with its next user
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_shapes_generated(
    root: Optional[str] = None, num_train: int = DEFAULT_NUM_TRAIN, num_val: int = DEFAULT_NUM_VAL
) -> bool:
    """Make sure ``root`` (default ``default_shapes_root()``) holds the dataset for these counts; generate it if
    its marker is missing or names other parameters. Safe when several processes call it at once: one generates
    under an exclusive lock (into a temporary folder, moved into place, marker written last), the others wait
    and reuse its result. Returns whether this call generated."""
    num_train, num_val = _check_count("num_train", num_train), _check_count("num_val", num_val)
    root = os.path.abspath(root) if root is not None else default_shapes_root()
    params = _params(num_train, num_val)
    params_hash = _params_hash(params)
    if _is_complete(root, params_hash):
        return False
    os.makedirs(root, exist_ok=True)
    with _exclusive_lock(os.path.join(root, _LOCK)):
        if _is_complete(root, params_hash):  # another process generated while this one waited
            return False
        start = time.perf_counter()
        # Holding the lock, this is the only writer: leftovers are from an interrupted run.
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(root, _MARKER))
        for name in os.listdir(root):
            if name.startswith(_TMP_PREFIX):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root)
        try:
            counts = generate_shapes(tmp, num_train, num_val)
            for name in sorted(os.listdir(tmp)):
                target = os.path.join(root, name)
                if os.path.isdir(target):
                    shutil.rmtree(target)
                os.rename(os.path.join(tmp, name), target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        seconds = time.perf_counter() - start
        marker = {"params_hash": params_hash, "params": params, "counts": counts}
        marker_tmp = os.path.join(root, _MARKER + ".tmp")
        with open(marker_tmp, "w") as f:
            json.dump(marker, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(marker_tmp, os.path.join(root, _MARKER))
    logger.info(
        f"Generated the shapes dataset ({num_train} train + {num_val} val images) in {root} in {seconds:.1f} s"
    )
    return True


# ---------------------------------------------------------------------------------------------------------------
# detectron2 registration
# ---------------------------------------------------------------------------------------------------------------
_REGISTERED: Dict[str, Tuple[str, int, int]] = {}  # dataset name -> (root, num_train, num_val)


def ensure_shapes_generated_for(dataset_name: str) -> bool:
    """If ``dataset_name`` was registered by ``register_shapes_datasets``, make sure its files exist (generating
    them if needed) and return True; otherwise do nothing and return False. Call it before anything reads a
    dataset's files from its metadata, e.g. at the top of ``Trainer.build_evaluator``."""
    if dataset_name not in _REGISTERED:
        return False
    ensure_shapes_generated(*_REGISTERED[dataset_name])
    return True


def _load_instances(root: str, split: str, num_train: int, num_val: int, dataset_name: str) -> List[dict]:
    from detectron2.data.datasets import load_coco_json

    ensure_shapes_generated(root, num_train, num_val)
    files = shapes_files(root, split)
    return load_coco_json(files["json_file"], files["image_root"], dataset_name)


def _load_sem_seg(root: str, split: str, num_train: int, num_val: int) -> List[dict]:
    from detectron2.data.datasets import load_sem_seg

    ensure_shapes_generated(root, num_train, num_val)
    files = shapes_files(root, split)
    return load_sem_seg(files["sem_seg_root"], files["image_root"], gt_ext="png", image_ext="jpg")


def register_shapes_datasets(
    root: Optional[str] = None,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    prefix: str = "shapes",
) -> List[str]:
    """Register ``{prefix}_train``, ``{prefix}_val`` (instances, COCO evaluation) and ``{prefix}_sem_seg_train``,
    ``{prefix}_sem_seg_val`` (semantic segmentation) with detectron2, without generating anything.

    Args:
        root: the dataset folder; default ``default_shapes_root()``, resolved to an absolute path now.
        num_train: images in the train split.
        num_val: images in the val split.
        prefix: start of the registered names.

    Names already registered are replaced (with their metadata), so calling this again points them elsewhere.
    Returns the registered names.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    num_train, num_val = _check_count("num_train", num_train), _check_count("num_val", num_val)
    root = os.path.abspath(root) if root is not None else default_shapes_root()
    names = []
    for split in _SPLITS:
        files = shapes_files(root, split)
        instances_name, sem_seg_name = f"{prefix}_{split}", f"{prefix}_sem_seg_{split}"
        for name in (instances_name, sem_seg_name):
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
            if name in MetadataCatalog.list():
                MetadataCatalog.remove(name)
            _REGISTERED[name] = (root, num_train, num_val)
        DatasetCatalog.register(
            instances_name,
            lambda split=split, name=instances_name: _load_instances(root, split, num_train, num_val, name),
        )
        MetadataCatalog.get(instances_name).set(
            thing_classes=list(THING_CLASSES),
            thing_colors=[list(c) for c in THING_COLORS],
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(THING_CLASSES))},
            json_file=files["json_file"],
            image_root=files["image_root"],
            evaluator_type="coco",
        )
        DatasetCatalog.register(sem_seg_name, lambda split=split: _load_sem_seg(root, split, num_train, num_val))
        MetadataCatalog.get(sem_seg_name).set(
            stuff_classes=list(STUFF_CLASSES),
            stuff_colors=[list(c) for c in STUFF_COLORS],
            image_root=files["image_root"],
            sem_seg_root=files["sem_seg_root"],
            evaluator_type="sem_seg",
            ignore_label=SEM_SEG_IGNORE_LABEL,
        )
        names += [instances_name, sem_seg_name]
    return names


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pvt_d2.data.shapes", description="Generate the synthetic shapes dataset (if needed)."
    )
    parser.add_argument("--root", default=None, help="dataset folder (default: $DETECTRON2_DATASETS/shapes)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help="images in the train split")
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL, help="images in the val split")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.root) if args.root is not None else default_shapes_root()
    start = time.perf_counter()
    generated = ensure_shapes_generated(root, args.num_train, args.num_val)
    seconds = time.perf_counter() - start
    counts = (_read_marker(root) or {}).get("counts", {})
    parts = []
    for split in _SPLITS:
        c = counts.get(split, {})
        per_class = ", ".join(f"{name} {c.get(name, '?')}" for name in THING_CLASSES)
        parts.append(f"{split} {c.get('images', '?')} images / {c.get('instances', '?')} instances ({per_class})")
    action = f"generated in {seconds:.2f} s" if generated else "already present, reused"
    print(f"shapes dataset at {root}: {'; '.join(parts)}; {action}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
