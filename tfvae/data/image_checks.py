"""Every file of an image folder checked once, when the data are loaded.

A file that cannot be read, is not an image TensorFlow decodes, decodes to
more than memory allows, or is too thin to crop to the images' aspect ratio
would otherwise stop training, or the final evaluation, with TensorFlow's
``InvalidArgumentError`` when a batch reaches it. :func:`find_bad` names
each such file and why; :func:`tfvae.data.folders.load_folder` then refuses
the folder or leaves the files out (``--bad-images``).

Each file's header is read with PIL (size and colour mode, nothing decoded),
then every file whose header is sound is decoded once with the decoder
training uses (:func:`decode`), in a parallel ``tf.data`` pipeline: a
corrupt body behind a sound header is found too. File names are passed to
TensorFlow as bytes, so names that are not valid UTF-8 work.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass

import numpy as np

from tfvae import budget


@dataclass(frozen=True)
class Header:
    """What an image file's header says: its size and channel count (1 grey, 3 colour)."""

    height: int
    width: int
    channels: int


#: PIL modes of grey-level images (one channel); every other mode is read as RGB.
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def printable(path) -> str:
    """A file name as text that can be printed, undecodable bytes escaped."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def read_header(path) -> Header | str:
    """The :class:`Header` of an image file, or why it cannot be one."""
    from PIL import Image, UnidentifiedImageError

    try:
        if os.path.getsize(path) == 0:
            return "is empty (0 bytes)"
        with warnings.catch_warnings():
            # The size is what is wanted here; find_bad weighs it against memory.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                mode = image.mode
    except Image.DecompressionBombError as exc:
        return f"is too large to decode ({exc})"
    except UnidentifiedImageError:
        return "is not a PNG or JPEG image"
    except (OSError, ValueError, SyntaxError) as exc:
        return f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
    return Header(int(height), int(width), 1 if mode in GREY_MODES else 3)


def decode(path, channels: int):
    """``uint8 [H, W, channels]``: what training decodes a file to (a TensorFlow op)."""
    from tfvae._keras import tf

    return tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)


def crop_size(height: int, width: int, image_shape) -> tuple[int, int]:
    """The centre crop of an image to ``image_shape``'s aspect ratio, as training computes it."""
    target = np.asarray(image_shape[:2], np.float32)
    scale = np.minimum(np.float32(height) / target[0], np.float32(width) / target[1])
    crop = np.round(target * scale)  # round half to even, as tf.round
    return int(crop[0]), int(crop[1])


def find_bad(files, headers: dict, image_shape) -> dict[str, str]:
    """Files that training could not use, in order, each with why.

    Args:
      files: image paths.
      headers: ``{path: read_header(path)}``.
      image_shape: ``(H, W, C)`` the images are decoded, cropped and resized to.
    """
    limit = budget.decode_limit()
    channels = int(image_shape[2])
    bad = {}
    for path in files:
        header = headers[path]
        if isinstance(header, str):
            bad[path] = header
            continue
        values = header.height * header.width * channels
        if values > limit:
            bad[path] = (f"is {header.width}x{header.height} pixels: decoding it takes about "
                         f"{budget.gib(values * budget.DECODE_BYTES_PER_VALUE)}, more than "
                         "images decoded side by side may take")
        elif min(crop_size(header.height, header.width, image_shape)) < 1:
            bad[path] = (f"is {header.width}x{header.height} pixels, too thin to crop to the "
                         f"aspect ratio of {image_shape[1]}x{image_shape[0]}")
    found = undecodable([p for p in files if p not in bad], channels)
    return {p: bad.get(p) or found[p] for p in files if p in bad or p in found}


def undecodable(files, channels: int) -> dict[str, str]:
    """Files :func:`decode` fails on, each with TensorFlow's reason."""
    if not files:
        return {}
    from tfvae._keras import tf

    names = [os.fsencode(p) for p in files]
    ds = tf.data.Dataset.from_tensor_slices(names).map(
        lambda name: (name, tf.size(decode(name, channels))),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    decoded = {bytes(name) for name, _ in ds.ignore_errors().as_numpy_iterator()}
    return {path: _decode_error(name, channels)
            for path, name in zip(files, names, strict=True) if name not in decoded}


def _decode_error(name: bytes, channels: int) -> str:
    from tfvae._keras import tf

    try:
        decode(name, channels)
    except tf.errors.OpError as exc:
        reason = (exc.message or "").splitlines()[0] if exc.message else ""
        # TensorFlow wraps the reason in the op's name and device: keep the reason.
        reason = re.sub(r"\s*\[Op:.*$", "", re.sub(r"\{\{.*?\}\}\s*", "", reason)).strip()
        return f"cannot be decoded by TensorFlow ({reason or type(exc).__name__})"
    return "cannot be decoded by TensorFlow"
