"""Layer sizes and image shapes as options give them: ``"512,256"``, ``400``, ``[8, 4]``.

:class:`tfvae.Config` parses ``--hidden``, ``--decoder-hidden``,
``--image-shape`` and ``--image-size`` with these, so a wrong value is refused
with the option's name before anything is built.
"""

from __future__ import annotations

from typing import Any

from tfvae.errors import ConfigError


def parse_sizes(value: Any, name: str = "hidden", allow_empty: bool = True) -> tuple[int, ...]:
    """Parses layer sizes given as ``"512,256"``, ``400``, ``[512, 256]`` or ``""``.

    Args:
      value: the sizes, as a comma-separated string, an int or a sequence.
      name: the option name, used in error messages.
      allow_empty: whether no hidden layer at all (a linear map) is allowed.

    Returns:
      A tuple of positive ints.
    """
    flag = f"--{name.replace('_', '-')}"
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text in ("", "none", "()"):
            parts = []
        else:
            try:
                parts = [int(p) for p in text.split(",") if p.strip() != ""]
            except ValueError:
                raise ConfigError(
                    f"{flag} must be comma-separated positive integers such as 400 or "
                    f"512,256; got {value!r}"
                ) from None
    elif isinstance(value, int) and not isinstance(value, bool):
        parts = [value]
    else:
        try:
            parts = [int(p) for p in value]
        except (TypeError, ValueError):
            raise ConfigError(
                f"{name} must be a sequence of positive integers, got {value!r}"
            ) from None
    if any(p <= 0 for p in parts):
        raise ConfigError(f"{flag} sizes must be positive integers, got {value!r}")
    if not parts and not allow_empty:
        raise ConfigError(f"{flag} needs at least one layer size")
    return tuple(parts)


def parse_shape(value, name: str) -> tuple[int, ...]:
    """Sizes given as ``"32,32,3"``, ``[32, 32]`` or a tuple, as positive ints."""
    flag = f"--{name.replace('_', '-')}"
    try:
        parts = [int(p) for p in value.split(",")] if isinstance(value, str) else \
            [int(p) for p in value]
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} must be comma-separated positive integers such as 32,32,3; "
                          f"got {value!r}") from None
    if not parts or min(parts) <= 0:
        raise ConfigError(f"{flag} must be positive integers, got {value!r}")
    return tuple(parts)


def image_shape_3d(shape) -> tuple[int, int, int]:
    """``(H, W, C)`` from ``(H, W)`` or ``(H, W, C)``; ConfigError otherwise."""
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ConfigError(f"image_shape must be (H, W) or (H, W, C), got {shape!r}") from None
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3 or min(shape) <= 0:
        raise ConfigError(f"image_shape must be (H, W) or (H, W, C) of positive sizes, "
                          f"got {shape!r}")
    return shape
