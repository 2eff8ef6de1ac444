"""Training augmentations of the PVT authors' Semantic FPN recipe that detectron2 v0.6 lacks, as detectron2
``Augmentation``s, and the list the recipe trains with (``build_sem_seg_augmentation``).

The recipe (``INPUT.SEM_SEG_AUG.ENABLED``), in order:

1. ``ResizeScaleRatio``: fit the image into (long, short) = ``SCALE`` x r, r ~ U(``RATIO_RANGE``), keeping its
   aspect ratio (image bilinear, label nearest);
2. detectron2's ``RandomCrop_CategoryAreaConstraint`` (``INPUT.CROP``: "absolute" ``SIZE``, at most
   ``SINGLE_CATEGORY_MAX_AREA`` of the crop's labelled pixels one class, up to 10 tries, the ignore label not
   counted): it is exactly the authors' ``cat_max_ratio`` crop, so it is reused rather than rewritten;
3. detectron2's ``RandomFlip`` (``INPUT.RANDOM_FLIP``);
4. ``PhotometricDistortion`` (``PHOTOMETRIC``): brightness, contrast, saturation, hue, each with probability 1/2;
5. ``PadToSize`` (``PAD_TO_CROP``): bottom/right padding up to the crop size, the image with ``MODEL.PIXEL_MEAN``
   (0 after normalisation, as the authors pad normalised images with 0) and the label with the ignore value.

Random draws use ``np.random``, which the seeded training stream (``pvt_d2.data.stream``) seeds per sample.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform, PadTransform, Transform
from PIL import Image

__all__ = [
    "ResizeScaleRatio",
    "PhotometricDistortion",
    "PhotometricTransform",
    "PadToSize",
    "FillPadTransform",
    "build_sem_seg_augmentation",
]

_HSV_CODES = {"RGB": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB), "BGR": (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)}


def _pair(value, what: str) -> Tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be two numbers, got {value!r}") from None
    return a, b


class ResizeScaleRatio(T.Augmentation):
    """Resize, keeping the aspect ratio, to fit into ``scale`` times a random ratio.

    With r ~ U(ratio_range), the image (h, w) is scaled by ``f = min(r * long / max(h, w), r * short / min(h, w))``
    to ``(int(h * f + 0.5), int(w * f + 0.5))``: its long edge is at most ``r * long`` and its short edge at most
    ``r * short``, one of them equal.

    Args:
        scale: (long, short) edge lengths in pixels, in either order (the larger is the long edge).
        ratio_range: (low, high), 0 < low <= high; low == high gives a fixed ratio.
        interp: PIL interpolation for the image (labels always use nearest).
    """

    def __init__(self, scale: Sequence[float] = (2048, 512), ratio_range: Sequence[float] = (0.5, 2.0),
                 interp: int = Image.BILINEAR):
        super().__init__()
        a, b = _pair(scale, "scale")
        low, high = _pair(ratio_range, "ratio_range")
        if min(a, b) <= 0:
            raise ValueError(f"scale must be positive edge lengths, got {tuple(scale)!r}")
        if not 0 < low <= high:
            raise ValueError(f"ratio_range must satisfy 0 < low <= high, got {tuple(ratio_range)!r}")
        self.long_edge, self.short_edge = max(a, b), min(a, b)
        self.ratio_range = (low, high)
        self.interp = interp

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        r = np.random.uniform(*self.ratio_range)
        f = min(r * self.long_edge / max(h, w), r * self.short_edge / min(h, w))
        newh, neww = max(int(h * f + 0.5), 1), max(int(w * f + 0.5), 1)
        return T.ResizeTransform(h, w, newh, neww, self.interp)


class PhotometricTransform(Transform):
    """Deterministic colour changes of a uint8 3-channel image; labels and coordinates are unchanged.

    In order: add ``brightness``; multiply by ``contrast`` if ``contrast_first``; in HSV space multiply S by
    ``saturation`` and add ``hue`` to H (OpenCV's 0-179 hue range, wrapped); multiply by ``contrast`` if not
    ``contrast_first``. Every step clips to [0, 255].

    Args:
        brightness: added to every channel (0: none).
        contrast: multiplies every channel (1: none).
        saturation: multiplies HSV saturation (1: none).
        hue: integer added to OpenCV hue, modulo 180 (0: none).
        contrast_first: whether contrast comes before (True) or after (False) saturation and hue.
        image_format: channel order of the images, "RGB" or "BGR".
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 1.0, saturation: float = 1.0, hue: int = 0,
                 contrast_first: bool = True, image_format: str = "RGB"):
        super().__init__()
        if image_format not in _HSV_CODES:
            raise ValueError(f"photometric distortion needs 'RGB' or 'BGR' images, got INPUT.FORMAT={image_format!r}")
        self._set_attributes(locals())

    @staticmethod
    def _affine(img: np.ndarray, alpha: float, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"photometric distortion needs (H, W, 3) uint8 images, got {img.dtype} {img.shape}")
        if self.brightness != 0:
            img = self._affine(img, 1.0, self.brightness)
        if self.contrast_first and self.contrast != 1:
            img = self._affine(img, self.contrast)
        if self.saturation != 1 or self.hue != 0:
            to_hsv, from_hsv = _HSV_CODES[self.image_format]
            hsv = cv2.cvtColor(np.ascontiguousarray(img), to_hsv)
            if self.saturation != 1:
                hsv[:, :, 1] = np.clip(hsv[:, :, 1].astype(np.float32) * self.saturation, 0, 255).astype(np.uint8)
            if self.hue != 0:
                hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + int(self.hue)) % 180).astype(np.uint8)
            img = cv2.cvtColor(hsv, from_hsv)
        if not self.contrast_first and self.contrast != 1:
            img = self._affine(img, self.contrast)
        return img

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def inverse(self) -> Transform:
        return NoOpTransform()  # colour changes are not undone (as detectron2's ColorTransform)


class PhotometricDistortion(T.Augmentation):
    """Random brightness, contrast, saturation and hue, each applied with probability 1/2, contrast randomly before
    or after saturation and hue (``PhotometricTransform``).

    Args:
        image_format: "RGB" or "BGR" (``INPUT.FORMAT``), so that hue and saturation are computed correctly.
        brightness_delta: brightness offset ~ U(-delta, delta), in 0-255 pixel units.
        contrast_range, saturation_range: (low, high) of the uniform multipliers.
        hue_delta: hue offset, an integer in [-delta, delta] in OpenCV units (180 = a full turn).
    """

    def __init__(self, image_format: str = "RGB", brightness_delta: float = 32.0,
                 contrast_range: Sequence[float] = (0.5, 1.5), saturation_range: Sequence[float] = (0.5, 1.5),
                 hue_delta: int = 18):
        super().__init__()
        if image_format not in _HSV_CODES:
            raise ValueError(f"photometric distortion needs 'RGB' or 'BGR' images, got INPUT.FORMAT={image_format!r}")
        self.image_format = image_format
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = _pair(contrast_range, "contrast_range")
        self.saturation_range = _pair(saturation_range, "saturation_range")
        self.hue_delta = int(hue_delta)

    def get_transform(self, image: np.ndarray) -> Transform:
        rand = np.random
        brightness = rand.uniform(-self.brightness_delta, self.brightness_delta) if rand.randint(2) else 0.0
        contrast_first = bool(rand.randint(2))
        contrast = rand.uniform(*self.contrast_range) if rand.randint(2) else 1.0
        saturation = rand.uniform(*self.saturation_range) if rand.randint(2) else 1.0
        hue = int(rand.randint(-self.hue_delta, self.hue_delta + 1)) if rand.randint(2) else 0
        return PhotometricTransform(brightness, contrast, saturation, hue, contrast_first, self.image_format)


class FillPadTransform(PadTransform):
    """fvcore's ``PadTransform`` whose image padding may be one value per channel (``pad_value`` a sequence)."""

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        shape = (self.y0 + h + self.y1, self.x0 + w + self.x1) + img.shape[2:]
        value = np.asarray(self.pad_value, dtype=np.float64)
        if np.issubdtype(img.dtype, np.integer):
            info = np.iinfo(img.dtype)
            value = np.clip(np.round(value), info.min, info.max)
        out = np.empty(shape, dtype=img.dtype)
        out[...] = value.astype(img.dtype)
        out[self.y0:self.y0 + h, self.x0:self.x0 + w] = img
        return out


class PadToSize(T.Augmentation):
    """Pad the bottom and right of images smaller than ``size`` up to it (larger sides are left as they are).

    Args:
        size: (height, width) in pixels.
        pad_value: the image's padding, a number or one per channel (rounded for uint8 images).
        seg_pad_value: the label's padding (the ignore value).
    """

    def __init__(self, size: Sequence[int], pad_value: Union[float, Sequence[float]] = 0.0,
                 seg_pad_value: int = 255):
        super().__init__()
        h, w = _pair(size, "size")
        if min(h, w) <= 0 or h != int(h) or w != int(w):
            raise ValueError(f"size must be two positive integers (height, width), got {tuple(size)!r}")
        self.size = (int(h), int(w))
        self.pad_value = tuple(float(v) for v in pad_value) if isinstance(pad_value, Sequence) else float(pad_value)
        self.seg_pad_value = int(seg_pad_value)

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        ph, pw = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if ph == 0 and pw == 0:
            return NoOpTransform()
        return FillPadTransform(0, 0, pw, ph, orig_w=w, orig_h=h, pad_value=self.pad_value,
                                seg_pad_value=self.seg_pad_value)


def _flip_augmentation(cfg: CfgNode) -> Optional[T.Augmentation]:
    flip = cfg.INPUT.RANDOM_FLIP
    if flip == "none":
        return None
    if flip not in ("horizontal", "vertical"):
        raise ValueError(f"INPUT.RANDOM_FLIP={flip!r} is not one of 'none', 'horizontal', 'vertical'")
    return T.RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical")


def build_sem_seg_augmentation(cfg: CfgNode) -> List[T.Augmentation]:
    """The authors' Semantic FPN training augmentation from ``cfg`` (see the module docstring for the order and the
    keys). ``INPUT.MIN_SIZE_TRAIN`` / ``MAX_SIZE_TRAIN`` are not used."""
    a = cfg.INPUT.SEM_SEG_AUG
    crop = cfg.INPUT.CROP
    ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    augs: List[T.Augmentation] = [ResizeScaleRatio(a.SCALE, a.RATIO_RANGE)]
    if crop.ENABLED:
        if not 0 < crop.SINGLE_CATEGORY_MAX_AREA <= 1:
            raise ValueError(f"INPUT.CROP.SINGLE_CATEGORY_MAX_AREA must be in (0, 1], got "
                             f"{crop.SINGLE_CATEGORY_MAX_AREA!r}")
        augs.append(T.RandomCrop_CategoryAreaConstraint(crop.TYPE, crop.SIZE, crop.SINGLE_CATEGORY_MAX_AREA, ignore))
    flip = _flip_augmentation(cfg)
    if flip is not None:
        augs.append(flip)
    if a.PHOTOMETRIC:
        augs.append(PhotometricDistortion(cfg.INPUT.FORMAT))
    if a.PAD_TO_CROP and crop.ENABLED:
        if crop.TYPE != "absolute":
            raise ValueError(f"INPUT.SEM_SEG_AUG.PAD_TO_CROP pads to an absolute size; INPUT.CROP.TYPE is "
                             f"{crop.TYPE!r} (use 'absolute' or set PAD_TO_CROP False)")
        augs.append(PadToSize(crop.SIZE, cfg.MODEL.PIXEL_MEAN, ignore))
    return augs
