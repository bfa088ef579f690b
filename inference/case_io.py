"""Challenge case files: read an input `.npz` into a `Case`, write the `segs` answer.

This is the one module that knows the file format: key names, the (x, y, z) order of
`spacing` against the (z, y, x) arrays, the box dictionary keys, and that class i is
label i + 1. Everything downstream works in array order (z, y, x).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CLICK_KINDS = ("fg", "bg")


class CaseError(ValueError):
    """The input file cannot be used; the message is one line for stderr."""


@dataclass(frozen=True)
class Box:
    """A challenge box in array order: closed ranges per axis, and the slice the 2D box was drawn on."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    z_mid: int


@dataclass
class ClassPrompt:
    """Everything the user said about one class, in array coordinates (z, y, x)."""

    label: int
    box: Box | None = None
    fg: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))
    bg: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))
    order: tuple[str | None, ...] = ()

    @property
    def done(self) -> bool:
        """The simulated user found no error left last round (last `clicks_order` entry is None)."""
        return len(self.order) > 0 and self.order[-1] is None

    @property
    def clicks(self) -> np.ndarray:
        return np.concatenate([self.fg, self.bg])


@dataclass
class Case:
    name: str
    image: np.ndarray
    spacing: tuple[float, float, float]
    prompts: list[ClassPrompt]
    prev_pred: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)

    @property
    def has_boxes(self) -> bool:
        return any(p.box is not None for p in self.prompts)

    @property
    def round(self) -> int:
        """Click rounds so far: 0 on the box-only call."""
        return max((len(p.order) for p in self.prompts), default=0)


def read_case(path: str | os.PathLike) -> Case:
    """Load and validate one challenge input file; raises CaseError with a one-line reason."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=True) as npz:
            data = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zip, pickle and format errors all mean the same to the user
        raise CaseError(f"cannot read {path.name}: {type(exc).__name__}: {exc}") from exc
    if "imgs" not in data:
        raise CaseError(f"{path.name} has no 'imgs' array")
    image = data["imgs"]
    if image.ndim != 3 or min(image.shape) < 1:
        raise CaseError(f"'imgs' must be a non-empty 3D array (z, y, x), got shape {image.shape}")
    shape = image.shape

    boxes = _object_list(data.get("boxes"))
    clicks = _object_list(data.get("clicks"))
    orders = _orders(data.get("clicks_order"))
    n_classes = max(len(boxes), len(clicks))
    prompts = []
    for i in range(n_classes):
        box = _box(boxes[i], shape) if i < len(boxes) and boxes[i] is not None else None
        class_clicks = clicks[i] if i < len(clicks) and isinstance(clicks[i], dict) else {}
        prompts.append(
            ClassPrompt(
                label=i + 1,
                box=box,
                fg=_points(class_clicks.get("fg"), shape),
                bg=_points(class_clicks.get("bg"), shape),
                order=orders[i] if i < len(orders) else (),
            )
        )

    prev_pred = data.get("prev_pred")
    if prev_pred is not None and prev_pred.shape != shape:
        prev_pred = None  # a stale or foreign map is worse than none
    elif prev_pred is not None:
        prev_pred = prev_pred.astype(np.uint8, copy=False)
    return Case(path.name, image, _spacing(data.get("spacing")), prompts, prev_pred)


def write_segs(path: str | os.PathLike, segs: np.ndarray) -> None:
    """Write the answer atomically: a hidden temporary file in the same folder, then rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # hidden: never mistaken for an answer
    try:
        with open(tmp, "wb") as f:  # plain open: the file gets the umask's mode, unlike mkstemp's 0600
            np.savez(f, segs=segs)  # uncompressed: zlib on a 500 MB map costs seconds of budget
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def empty_segs(shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint8)


def _spacing(raw) -> tuple[float, float, float]:
    try:
        x, y, z = (float(v) for v in np.asarray(raw, dtype=np.float64).reshape(3))
    except Exception:
        return (1.0, 1.0, 1.0)
    if not all(np.isfinite(v) and v > 0 for v in (x, y, z)):
        return (1.0, 1.0, 1.0)
    return (z, y, x)


def _object_list(raw) -> list:
    if raw is None:
        return []
    arr = np.asarray(raw, dtype=object)
    if arr.ndim == 0:
        item = arr.item()
        return list(item) if isinstance(item, (list, tuple)) else [item]
    return list(arr)


def _orders(raw) -> list[tuple[str | None, ...]]:
    """`clicks_order` per class; arrives as lists, object arrays or string arrays with None entries."""
    orders = []
    for entry in _object_list(raw):
        items = [] if entry is None else list(np.asarray(entry, dtype=object).reshape(-1))
        orders.append(tuple(str(k) if k is not None and str(k) in CLICK_KINDS else None for k in items))
    return orders


def _points(raw, shape) -> np.ndarray:
    """Click coordinates as an (N, 3) int array; clicks outside the volume are dropped."""
    if raw is None or len(raw) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    pts = np.asarray(raw, dtype=np.float64).reshape(-1, 3)
    pts = np.rint(pts[np.isfinite(pts).all(axis=1)]).astype(np.int64)
    inside = ((pts >= 0) & (pts < np.asarray(shape))).all(axis=1)
    return pts[inside]


def _box(raw: dict, shape) -> Box | None:
    """Challenge box dict -> Box in array order, clipped to the volume; None if it is unusable."""
    try:
        z = sorted((int(raw["z_min"]), int(raw["z_max"])))
        y = sorted((int(raw["z_mid_y_min"]), int(raw["z_mid_y_max"])))
        x = sorted((int(raw["z_mid_x_min"]), int(raw["z_mid_x_max"])))
    except (KeyError, TypeError, ValueError):
        return None
    if any(r[1] < 0 or r[0] > n - 1 for r, n in zip((z, y, x), shape)):
        return None  # entirely outside the volume: no information about the object
    lo = tuple(int(np.clip(r[0], 0, n - 1)) for r, n in zip((z, y, x), shape))
    hi = tuple(int(np.clip(r[1], 0, n - 1)) for r, n in zip((z, y, x), shape))
    z_mid = raw.get("z_mid", (lo[0] + hi[0]) // 2)
    try:
        z_mid = int(np.clip(int(z_mid), lo[0], hi[0]))
    except (TypeError, ValueError):
        z_mid = (lo[0] + hi[0]) // 2
    return Box(lo, hi, z_mid)
