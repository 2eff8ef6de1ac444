"""Prepare the official ADE20K scene-parsing release for detectron2's builtin ``ade20k_sem_seg_{train,val}``.

    python -m pvt_d2.data.prepare_ade20k ROOT [--workers N]

ROOT is the unpacked ``ADEChallengeData2016`` folder of the release (ADEChallengeData2016.zip), or the folder that
holds it (e.g. ``$DETECTRON2_DATASETS``; the default is ``$DETECTRON2_DATASETS``, itself defaulting to
``datasets``). The release has::

    images/training/ADE_train_00000001.jpg ...        annotations/training/ADE_train_00000001.png ...
    images/validation/ADE_val_00000001.jpg ...        annotations/validation/ADE_val_00000001.png ...

with uint8 labels 0 ("other objects", not evaluated) and 1..150 (the classes). detectron2's ``register_all_ade20k``
reads ``images/{training,validation}`` with labels from ``annotations_detectron2/{training,validation}``, where
the 150 classes are 0..149 and 255 is ignored. This writes those files: 0 -> 255, k -> k - 1.

Files already converted are skipped (each is written to a temporary name and renamed, so an interrupted run never
leaves a partial file behind), so running it again only converts what is missing. A label value above 150 stops
the run with an error naming the file (the full ADE20K dataset, with its 3000+ classes, is another format).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = [
    "ADE20K_DIRNAME",
    "SPLITS",
    "IGNORE_LABEL",
    "NUM_CLASSES",
    "NotADE20KError",
    "find_ade20k_root",
    "convert_label",
    "convert_ade20k",
    "main",
]

logger = logging.getLogger(__name__)

ADE20K_DIRNAME = "ADEChallengeData2016"
SPLITS = ("training", "validation")
NUM_CLASSES = 150
IGNORE_LABEL = 255
OUTPUT_DIRNAME = "annotations_detectron2"

# label value -> detectron2 value: 0 -> 255 (ignored), 1..150 -> 0..149; values above 150 are rejected first.
_LUT = np.concatenate([[IGNORE_LABEL], np.arange(255)]).astype(np.uint8)


class NotADE20KError(FileNotFoundError):
    """The folder given is not an ADE20K scene-parsing release."""


def find_ade20k_root(root: str) -> str:
    """The ``ADEChallengeData2016`` folder: ``root`` itself, or ``root/ADEChallengeData2016``.

    Raises:
        NotADE20KError: neither has ``images/{training,validation}`` and ``annotations/{training,validation}``;
            the message names the folder and what is missing.
    """
    root = os.path.abspath(root)
    candidates = [root, os.path.join(root, ADE20K_DIRNAME)]
    for c in candidates:
        if not _missing_dirs(c):
            return c
    if not os.path.isdir(root):
        raise NotADE20KError(f"{root!r} does not exist; pass the unpacked {ADE20K_DIRNAME} folder or its parent")
    inner = candidates[1] if os.path.isdir(candidates[1]) else root
    raise NotADE20KError(
        f"{inner!r} is not an ADE20K scene-parsing release ({ADE20K_DIRNAME}): it lacks "
        f"{', '.join(_missing_dirs(inner))}. Pass the folder unpacked from ADEChallengeData2016.zip (with images/ and "
        f"annotations/, each with training/ and validation/) or the folder that contains it."
    )


def _missing_dirs(folder: str) -> List[str]:
    needed = [os.path.join(kind, split) for kind in ("images", "annotations") for split in SPLITS]
    return [d for d in needed if not os.path.isdir(os.path.join(folder, d))]


def convert_label(label: np.ndarray, name: str = "label") -> np.ndarray:
    """ADE20K release label (uint8, 0 = other, 1..150) -> detectron2's (0..149, 255 = ignored).

    Raises:
        ValueError: the array is not a 2-D uint8 array with values <= 150 (``name`` says which file).
    """
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"{name}: expected a single-channel 8-bit label image, got {label.dtype} {label.shape}")
    top = int(label.max()) if label.size else 0
    if top > NUM_CLASSES:
        raise ValueError(f"{name}: label value {top} is above {NUM_CLASSES}; this is not an ADE20K scene-parsing "
                         f"label (or it was converted already)")
    return _LUT[label]


def _convert_file(task: Tuple[str, str]) -> bool:
    """Convert one file; False if its output exists already."""
    src, dst = task
    if os.path.exists(dst):
        return False
    with Image.open(src) as im:
        if im.mode not in ("L", "P"):
            raise ValueError(f"{src}: expected a single-channel 8-bit label image, got PIL mode {im.mode!r}")
        label = np.asarray(im)
    out = convert_label(label, src)
    tmp = f"{dst}.tmp{os.getpid()}.png"
    Image.fromarray(out, mode="L").save(tmp)
    os.replace(tmp, dst)
    return True


def convert_ade20k(root: str, workers: int = 1, progress: Optional[Callable[[str], None]] = None,
                   progress_every: int = 2000) -> Dict[str, Dict[str, int]]:
    """Write ``annotations_detectron2/{training,validation}`` under the ADE20K folder found from ``root``.

    Args:
        root: the ``ADEChallengeData2016`` folder or its parent (see ``find_ade20k_root``).
        workers: processes converting files (1: in this process).
        progress: called with a line of text every ``progress_every`` files and at the end of each split.

    Returns: per split, ``{"labels", "converted", "skipped", "images"}`` counts.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    folder = find_ade20k_root(root)
    say = progress or (lambda line: None)
    stats: Dict[str, Dict[str, int]] = {}
    for split in SPLITS:
        src_dir = os.path.join(folder, "annotations", split)
        dst_dir = os.path.join(folder, OUTPUT_DIRNAME, split)
        os.makedirs(dst_dir, exist_ok=True)
        for name in os.listdir(dst_dir):  # leftovers of an interrupted run
            if ".tmp" in name:
                os.remove(os.path.join(dst_dir, name))
        names = sorted(n for n in os.listdir(src_dir) if n.endswith(".png"))
        images = sum(1 for n in os.listdir(os.path.join(folder, "images", split)) if n.endswith(".jpg"))
        tasks = [(os.path.join(src_dir, n), os.path.join(dst_dir, n)) for n in names]
        converted = 0
        if workers == 1:
            results = map(_convert_file, tasks)
            converted = _count(results, len(tasks), split, say, progress_every)
        else:
            with ProcessPoolExecutor(workers) as pool:
                converted = _count(pool.map(_convert_file, tasks, chunksize=64), len(tasks), split, say,
                                   progress_every)
        stats[split] = {"labels": len(tasks), "converted": converted, "skipped": len(tasks) - converted,
                        "images": images}
        if images != len(tasks):
            logger.warning("ADE20K %s: %d images but %d label files in %s", split, images, len(tasks), src_dir)
    return stats


def _count(results, total: int, split: str, say: Callable[[str], None], every: int) -> int:
    converted = 0
    for i, did in enumerate(results, 1):
        converted += bool(did)
        if i % every == 0 or i == total:
            say(f"{split}: {i}/{total} label files ({converted} converted)")
    if total == 0:
        say(f"{split}: no label files")
    return converted


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pvt_d2.data.prepare_ade20k",
        description="Convert ADE20K's scene-parsing labels to detectron2's builtin ade20k_sem_seg format.",
    )
    parser.add_argument("root", nargs="?", default=os.getenv("DETECTRON2_DATASETS", "datasets"),
                        help=f"the {ADE20K_DIRNAME} folder or the folder holding it (default: $DETECTRON2_DATASETS)")
    parser.add_argument("--workers", type=int, default=1, help="processes converting files (default 1)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        stats = convert_ade20k(args.root, workers=args.workers, progress=lambda line: print(line, flush=True))
    except (NotADE20KError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    folder = find_ade20k_root(args.root)
    parts = [f"{s} {v['labels']} labels ({v['converted']} converted, {v['skipped']} already present; "
             f"{v['images']} images)" for s, v in stats.items()]
    print(f"ADE20K at {folder}: {'; '.join(parts)} -> {OUTPUT_DIRNAME}/ in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
