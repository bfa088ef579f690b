"""Challenge case files: read an input `.npz` into a `Case`, write the `segs` answer.

This is the one module that knows the file format: key names, the (x, y, z) order of
`spacing` against the (z, y, x) arrays, the box dictionary keys, and that class i is
label i + 1. Everything downstream works in array order (z, y, x).

The reader never gives up on a case because of its prompts: only `imgs` is essential.
A member that cannot be read or makes no sense (boxes, clicks, clicks_order, prev_pred,
spacing) is dropped, in part or whole, with one `[file] WARNING: ...` line on stderr.
"""
from __future__ import annotations

import numbers
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CLICK_KINDS = ("fg", "bg")
BOX_KEYS = ("z_min", "z_max", "z_mid_y_min", "z_mid_y_max", "z_mid_x_min", "z_mid_x_max")
OPTIONAL_KEYS = ("boxes", "clicks", "clicks_order", "prev_pred", "spacing")
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or the end record of an empty zip
MAX_LABEL = np.iinfo(np.uint16).max  # labels beyond uint16 cannot be written
MAX_MESSAGE = 300  # characters of an exception or value quoted in a message
NOTES_PER_WARNING = 3


class CaseError(ValueError):
    """The input file cannot be used; the message is one line for stderr."""

    def __init__(self, message: str):
        super().__init__(one_line(message, limit=2 * MAX_MESSAGE))


class UnsupportedImage(CaseError):
    """`imgs` was read but cannot be segmented (not 3D after squeezing, an empty axis, not numeric).

    `file_shape` is the shape of `imgs` as stored: the caller still answers with
    `np.zeros(file_shape, np.uint8)`, since a missing answer reuses a stale file.
    """

    def __init__(self, message: str, file_shape: tuple[int, ...]):
        super().__init__(message)
        self.file_shape = tuple(int(n) for n in file_shape)


@dataclass(frozen=True)
class Box:
    """A challenge box in array order: closed ranges per axis, and the slice the 2D box was drawn on."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    z_mid: int
    # the organisers' z_min..z_max spans exactly the object's slices; False where that range is a guess
    # (a viewer's 2D box drawn on one slice), so that the object may reach beyond it
    z_known: bool = True


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
    """One call's input in array order.

    `image` is always 3D (z, y, x). `file_shape` is the shape of `imgs` as stored, which can
    differ: a (1, D, H, W) or (D, H, 1, W) file is segmented squeezed, a 2D (H, W) file as
    (1, H, W). The answer must have the stored shape: write `segs.reshape(case.file_shape)`.
    """

    name: str
    image: np.ndarray
    spacing: tuple[float, float, float]
    prompts: list[ClassPrompt]
    prev_pred: np.ndarray | None = None  # uint8 (uint16 beyond 255 classes), in `image`'s shape
    file_shape: tuple[int, ...] | None = None  # None: the image's own shape

    def __post_init__(self):
        self.file_shape = tuple(int(n) for n in (self.image.shape if self.file_shape is None else self.file_shape))

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


# ----------------------------------------------------------------------------- messages


def one_line(text, limit: int = MAX_MESSAGE) -> str:
    """`text` on one line (newlines and tabs become spaces), cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def display_name(name: str) -> str:
    """A file name fit for a one-line message: control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def warn(name: str, message: str) -> None:
    """One `[file] WARNING: ...` line on stderr about something in the input that was dropped or repaired."""
    print(f"[{display_name(name)}] WARNING: {one_line(message, limit=3 * MAX_MESSAGE)}", file=sys.stderr, flush=True)


def _describe(exc: BaseException) -> str:
    return one_line(f"{type(exc).__name__}: {exc}")


def _short(value) -> str:
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__
        text = f"<{type(value).__name__}>"
    return one_line(text, limit=40)


class _Notes:
    """Problems found in one member, gathered into a single warning line."""

    def __init__(self, name: str, member: str):
        self.name, self.member, self.items = name, member, []

    def add(self, text: str) -> None:
        self.items.append(text)

    def flush(self) -> None:
        if self.items:
            shown = "; ".join(self.items[:NOTES_PER_WARNING])
            more = len(self.items) - NOTES_PER_WARNING
            warn(self.name, f"'{self.member}': {shown}" + (f" (and {more} more)" if more > 0 else ""))
            self.items = []


# ----------------------------------------------------------------------------- writing


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


# ----------------------------------------------------------------------------- reading


def read_case(path: str | os.PathLike) -> Case:
    """Load and validate one challenge input file.

    Raises CaseError (a one-line message) when `imgs` cannot be read, and its subclass
    UnsupportedImage, carrying `file_shape`, when `imgs` was read but cannot be segmented;
    the caller then answers `np.zeros(file_shape, np.uint8)`. Every other member is optional:
    what is unusable is dropped with a warning on stderr. The returned `Case.image` is 3D;
    answers must be reshaped to `Case.file_shape` before they are written.
    """
    path = Path(path)
    name = display_name(path.name)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise CaseError(f"cannot read {name}: {_describe(exc)}") from exc
    if magic not in ZIP_MAGIC:  # np.load would also take .npy files, and unpickle anything else
        raise CaseError(f"cannot read {name}: not an npz (zip) file")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # numpy's multi-line warnings on odd input: we say it in one line
        try:
            npz = np.load(path, allow_pickle=True)  # the evaluator pickles boxes and clicks
        except Exception as exc:  # zip and format errors all mean the same to the user
            raise CaseError(f"cannot read {name}: {_describe(exc)}") from exc
        with npz:
            try:
                files = list(npz.files)
            except Exception as exc:
                raise CaseError(f"cannot read {name}: {_describe(exc)}") from exc
            if "imgs" not in files:
                raise CaseError(f"{name} has no 'imgs' array (keys: {one_line(', '.join(files), 80) or 'none'})")
            try:
                raw_image = npz["imgs"]
            except Exception as exc:  # CRC, truncation, unpicklable objects, out of memory
                raise CaseError(f"cannot read 'imgs' of {name}: {_describe(exc)}") from exc
            image, file_shape = _image(raw_image, name)
            members, lost = {}, set()
            for key in OPTIONAL_KEYS:  # never `gts` and the like: no memory for what is not used
                if key in files:
                    try:
                        members[key] = npz[key]
                    except Exception as exc:
                        warn(name, f"'{key}' cannot be read, ignored ({_describe(exc)})")
                        lost.add(key)
        return _assemble(path.name, image, file_shape, members, lost)


def _assemble(name: str, image: np.ndarray, file_shape: tuple[int, ...], members: dict, lost: set[str]) -> Case:
    shape = image.shape
    boxes = _member_entries(name, members, "boxes", lost)
    clicks = _member_entries(name, members, "clicks", lost)
    n_classes = max(len(boxes), len(clicks))
    prompts_lost = bool(lost & {"boxes", "clicks"})
    try:  # with the prompts lost, the previous answer's labels say how many classes there are
        prev_pred = _prev_pred(name, members.get("prev_pred"), shape, file_shape,
                               MAX_LABEL if prompts_lost else min(n_classes, MAX_LABEL))
    except Exception as exc:
        warn(name, f"'prev_pred' unusable, ignored ({_describe(exc)})")
        prev_pred = None
    if prompts_lost and prev_pred is not None and prev_pred.size and int(prev_pred.max()) > n_classes:
        n_classes = int(prev_pred.max())
        warn(name, f"prompts lost: {n_classes} classes from the labels of 'prev_pred'")
    if n_classes > MAX_LABEL:
        warn(name, f"{n_classes} classes: only the first {MAX_LABEL} can be labelled")
        n_classes = MAX_LABEL
    if prev_pred is not None and n_classes <= 255 and prev_pred.dtype != np.uint8:
        prev_pred = prev_pred.astype(np.uint8)  # labels <= n_classes here
    orders = _orders(name, members.get("clicks_order"), n_classes) if "clicks_order" in members else []
    box_notes, click_notes = _Notes(name, "boxes"), _Notes(name, "clicks")
    prompts = []
    for i in range(n_classes):
        prompt = ClassPrompt(label=i + 1, order=orders[i] if i < len(orders) else ())
        try:
            if i < len(boxes):
                prompt.box = _box(boxes[i], shape, box_notes, i + 1)
            if i < len(clicks):
                prompt.fg, prompt.bg = _class_clicks(clicks[i], shape, click_notes, i + 1)
        except Exception as exc:  # unforeseen input: this class loses its prompts, not the case
            box_notes.add(f"class {i + 1}: unusable ({_describe(exc)})")
        prompts.append(prompt)
    box_notes.flush()
    click_notes.flush()
    spacing = _spacing(members["spacing"]) if "spacing" in members else None
    if spacing is None:
        if "spacing" in members:
            warn(name, f"'spacing' {_short(members['spacing'])} is not 3 positive numbers: using (1, 1, 1)")
        spacing = (1.0, 1.0, 1.0)
    return Case(name, image, spacing, prompts, prev_pred, file_shape)


def _image(raw, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """The stored `imgs` as a 3D numeric array, and its stored shape."""
    if not isinstance(raw, np.ndarray):
        raise CaseError(f"'imgs' of {name} is not an array ({type(raw).__name__})")
    file_shape = tuple(int(n) for n in raw.shape)
    kind = raw.dtype.kind
    if kind not in "biufc":
        raise UnsupportedImage(f"'imgs' of {name} is not numeric (dtype {raw.dtype}, shape {file_shape})", file_shape)
    image = raw
    if image.ndim != 3:
        squeezed = image if image.ndim == 2 else np.squeeze(image)
        if squeezed.ndim == 3:
            image = squeezed
        elif squeezed.ndim == 2:
            image = squeezed[np.newaxis]  # a single slice: z of length 1
        else:
            raise UnsupportedImage(f"'imgs' of {name} is not a 3D array (z, y, x): shape {file_shape}", file_shape)
    if image.size == 0:
        raise UnsupportedImage(f"'imgs' of {name} is empty: shape {file_shape}", file_shape)
    if image.shape != raw.shape:
        warn(name, f"'imgs' has shape {file_shape}: segmented as {tuple(image.shape)}")
    if kind == "b":
        image = image.view(np.uint8)
    elif kind == "c":
        warn(name, f"'imgs' is complex ({raw.dtype}): using the real part")
        image = image.real
    if kind in "fc":
        if image.dtype != np.float32:
            image = image.astype(np.float32)  # the network sees float32 anyway; beyond its range -> inf -> 0
        finite = np.isfinite(image)
        bad = image.size - int(np.count_nonzero(finite))
        if bad:
            if image.flags.writeable:  # our own copy or the freshly loaded array: no second volume in memory
                np.copyto(image, 0, where=~finite)
            else:
                image = np.where(finite, image, np.float32(0))
            warn(name, f"'imgs' has {bad} non-finite intensities (NaN, inf or beyond float32): set to 0")
        del finite
    elif not image.dtype.isnative:
        image = image.astype(image.dtype.newbyteorder("="))
    return np.ascontiguousarray(image), file_shape


def _member_entries(name: str, members: dict, key: str, lost: set[str]) -> list:
    if key not in members:
        return []
    try:
        raw = members[key]
        if isinstance(raw, np.ndarray) and raw.dtype == object and raw.ndim > 1 and all(
                v is None or isinstance(v, Mapping) for v in raw.flat):
            warn(name, f"'{key}' is a {raw.ndim}-D array {raw.shape} of dicts: read in order")
            raw = raw.reshape(-1)
        return _entries(raw)
    except Exception as exc:
        warn(name, f"'{key}' unusable, ignored ({_describe(exc)})")
        lost.add(key)
        return []


def _entries(raw) -> list:
    """One entry per class from an object array, a list, or a 0-d array holding either."""
    if raw is None:
        return []
    if isinstance(raw, np.ndarray):
        if raw.ndim == 0:
            return _entries(raw.item()) if raw.dtype == object else [raw.item()]
        return list(raw)
    if isinstance(raw, (list, tuple)):
        return list(raw)
    return [raw]


def _number(value) -> float | None:
    """A finite real number (Python or numpy, or a 0-d numeric array); None for anything else."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    return number if np.isfinite(number) else None


def _spacing(raw) -> tuple[float, float, float] | None:
    """Stored (x, y, z) -> array order (z, y, x); None unless 3 finite positive numbers."""
    try:
        values = np.asarray(raw, dtype=np.float64).reshape(-1)
    except Exception:
        return None
    if values.shape != (3,) or not all(np.isfinite(v) and v > 0 for v in values):
        return None
    x, y, z = (float(v) for v in values)
    return (z, y, x)


def _orders(name: str, raw, n_classes: int) -> list[tuple[str | None, ...]]:
    """`clicks_order` per class; arrives as lists, object arrays or string arrays with None entries.

    Anything that is not 'fg' or 'bg' counts as None (no click that round)."""
    notes = _Notes(name, "clicks_order")
    try:
        entries = _entries(raw)
    except Exception as exc:
        notes.add(f"unusable ({_describe(exc)})")
        entries = []
    orders = []
    for i, entry in enumerate(entries[:n_classes]):
        try:
            if entry is None:
                items = []
            elif isinstance(entry, (str, bytes)):
                items = [entry]
            else:
                items = list(np.asarray(entry, dtype=object).reshape(-1))
        except Exception as exc:
            notes.add(f"class {i + 1}: unusable ({_describe(exc)})")
            items = []
        order = tuple(_click_kind(k) for k in items)
        unknown = sum(k is not None and o is None for k, o in zip(items, order))
        if unknown:
            notes.add(f"class {i + 1}: {unknown} unknown entries (e.g. {_short(next(k for k, o in zip(items, order) if k is not None and o is None))}) counted as None")
        orders.append(order)
    if raw is not None and len(entries) != n_classes and (entries or n_classes):
        notes.add(f"{len(entries)} entries for {n_classes} classes")
    notes.flush()
    return orders


def _click_kind(k) -> str | None:
    if isinstance(k, bytes):
        k = k.decode("ascii", errors="replace")
    return str(k) if isinstance(k, str) and k in CLICK_KINDS else None


def _class_clicks(raw, shape, notes: _Notes, label: int) -> tuple[np.ndarray, np.ndarray]:
    empty = np.zeros((0, 3), dtype=np.int64)
    if raw is None:
        return empty, empty
    if not isinstance(raw, Mapping):
        notes.add(f"class {label}: not a dict ({_short(raw)})")
        return empty, empty
    if raw and not any(k in raw for k in CLICK_KINDS):
        notes.add(f"class {label}: no 'fg' or 'bg' key (keys {_short(list(raw)[:4])})")
    fg = _points(raw.get("fg"), shape, notes, f"class {label} fg")
    bg = _points(raw.get("bg"), shape, notes, f"class {label} bg")
    return fg, bg


def _candidates(raw) -> tuple[list, str | None]:
    """The would-be coordinates in a click list, and a note when the list itself is odd."""
    if isinstance(raw, np.ndarray) and raw.ndim == 0:
        return ([], None) if raw.dtype == object and raw.item() is None else ([], f"a scalar {_short(raw)}")
    if isinstance(raw, (list, tuple, np.ndarray)):
        if len(raw) == 3 and all(_number(v) is not None for v in raw):
            return [list(raw)], "a single [z, y, x], not a list of them"
        return list(raw), None
    return [], f"not a list ({_short(raw)})"


def _coordinate(item) -> np.ndarray | None:
    """Three finite numbers, else None."""
    try:
        a = np.asarray(item)
    except Exception:  # ragged
        return None
    if a.shape != (3,) or a.dtype.kind not in "iuf":
        return None
    a = a.astype(np.float64)
    return a if np.isfinite(a).all() else None


def _points(raw, shape, notes: _Notes, what: str) -> np.ndarray:
    """Click coordinates as an (N, 3) int array: rounded, inside the volume; the rest dropped."""
    if raw is None:
        return np.zeros((0, 3), dtype=np.int64)
    items, oddity = _candidates(raw)
    if oddity:
        notes.add(f"{what} is {oddity}")
    coords = [c for c in map(_coordinate, items) if c is not None]
    malformed = len(items) - len(coords)
    pts = np.rint(np.array(coords, dtype=np.float64).reshape(-1, 3))
    inside = ((pts >= 0) & (pts <= np.asarray(shape) - 1)).all(axis=1)
    outside = len(pts) - int(inside.sum())
    if malformed or outside:
        reasons = [f"{malformed} not 3 finite numbers"] * bool(malformed) + [f"{outside} outside the volume"] * bool(outside)
        notes.add(f"{what}: dropped {malformed + outside} of {len(items)} clicks ({', '.join(reasons)})")
    return pts[inside].astype(np.int64)


def box_from_dict(raw: Mapping, shape: tuple[int, int, int]) -> Box | None:
    """A challenge box dict (as the organisers write them) -> Box in array order; None if unusable."""
    return _box(raw, shape, _Notes("box", "boxes"), 1)


def _box(raw, shape, notes: _Notes, label: int) -> Box | None:
    """Challenge box dict -> Box in array order, clipped to the volume; None if it is unusable."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        notes.add(f"class {label}: not a dict ({_short(raw)})")
        return None
    values = {}
    for key in BOX_KEYS:
        if key not in raw:
            notes.add(f"class {label}: no {key!r}")
            return None
        values[key] = _number(raw[key])
        if values[key] is None:
            notes.add(f"class {label}: {key}={_short(raw[key])} is not a finite number")
            return None
        values[key] = float(np.rint(values[key]))
    ranges = []
    for a, b in (("z_min", "z_max"), ("z_mid_y_min", "z_mid_y_max"), ("z_mid_x_min", "z_mid_x_max")):
        if values[a] > values[b]:
            notes.add(f"class {label}: {a} > {b}, swapped")
        ranges.append(sorted((values[a], values[b])))
    if any(hi < 0 or lo > n - 1 for (lo, hi), n in zip(ranges, shape)):
        notes.add(f"class {label}: entirely outside the volume")
        return None
    lo = tuple(int(min(max(r[0], 0), n - 1)) for r, n in zip(ranges, shape))
    hi = tuple(int(min(max(r[1], 0), n - 1)) for r, n in zip(ranges, shape))
    z_mid = _number(raw.get("z_mid"))
    if z_mid is None and raw.get("z_mid") is not None:
        notes.add(f"class {label}: z_mid={_short(raw.get('z_mid'))} is not a finite number, using the middle")
    z_mid = (lo[0] + hi[0]) // 2 if z_mid is None else int(min(max(np.rint(z_mid), lo[0]), hi[0]))
    return Box(lo, hi, z_mid)


def _prev_pred(name: str, raw, shape, file_shape, n_classes: int) -> np.ndarray | None:
    """The previous answer in the image's shape: labels 0..n_classes as uint8 (uint16 beyond 255 classes).

    NaN and fractions are rounded (NaN to 0); negative labels and labels of no class become 0
    (clipping them to the top label would hand their voxels to a real class)."""
    if raw is None:
        return None
    if not isinstance(raw, np.ndarray):
        warn(name, f"'prev_pred' is not an array ({type(raw).__name__}): ignored")
        return None
    if raw.shape not in (tuple(shape), tuple(file_shape)):
        warn(name, f"'prev_pred' has shape {raw.shape}, the image {tuple(file_shape)}: ignored")
        return None  # a stale or foreign map is worse than none
    kind = raw.dtype.kind
    if kind not in "biuf":
        warn(name, f"'prev_pred' is not numeric (dtype {raw.dtype}): ignored")
        return None
    dtype = np.uint8 if n_classes <= 255 else np.uint16
    changed = []
    labels = raw.view(np.uint8) if kind == "b" else raw
    if kind == "f":
        finite = np.isfinite(raw)
        values = np.where(finite, raw, 0).astype(np.float64)
        labels = np.rint(values)
        if not finite.all():
            changed.append(f"{raw.size - int(np.count_nonzero(finite))} non-finite values set to 0")
        if (labels != values).any():
            changed.append("fractions rounded")
        del finite, values
    if labels.size and not (labels.dtype == np.uint8 and n_classes >= 255):
        low, high = labels.min(), labels.max()
        if low < 0 or high > n_classes:
            changed.append(f"values in [{low:g}, {high:g}]: negative ones and labels above the "
                           f"{n_classes} classes set to 0")
            labels = np.where((labels < 0) | (labels > n_classes), 0, labels)
    if changed:
        warn(name, f"'prev_pred' ({raw.dtype}): {'; '.join(changed)}")
    return np.ascontiguousarray(labels.astype(dtype, copy=False).reshape(shape))
