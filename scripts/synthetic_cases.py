"""Small synthetic challenge cases (ellipsoids in noise) for the demo, the tests and benchmarks.

Files are written with exactly the keys the evaluator uses, so they exercise the same
reader as real cases; `gts` is kept in the demo files so the harness can score them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.harness.boxes import organiser_boxes
from inference.harness.simulated_user import simulate_round


def make_volume(shape: tuple[int, int, int], n_objects: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8, labels uint8): `n_objects` non-overlapping-ish ellipsoids, labels 1..n, in noise."""
    rng = np.random.default_rng(seed)
    shape_arr = np.asarray(shape)
    grid = np.indices(shape, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    image = rng.normal(40, 12, size=shape).astype(np.float32)
    for label in range(1, n_objects + 1):
        radii = np.maximum(shape_arr * rng.uniform(0.12, 0.22, size=3), 2.0)
        centre = rng.uniform(radii + 1, shape_arr - radii - 1)
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
        inside &= labels == 0
        labels[inside] = label
        image[inside] += 60 + 120 * label / n_objects
    return np.clip(image, 0, 255).astype(np.uint8), labels


def grid_volume(shape: tuple[int, int, int], n_objects: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8, labels uint8/uint16): one ellipsoid per cell of a near-cubic grid, so every label
    is present even for 100 classes; cheap on CT-sized volumes (work only inside each cell)."""
    rng = np.random.default_rng(seed)
    per_axis = _grid(shape, n_objects)
    cells = [np.linspace(0, n, k + 1).astype(int) for n, k in zip(shape, per_axis)]
    labels = np.zeros(shape, dtype=np.uint8 if n_objects <= 255 else np.uint16)
    image = np.empty(shape, dtype=np.uint8)
    for z in range(0, shape[0], 64):  # noise slab by slab: no full-size float temporary
        slab = rng.normal(40, 12, size=(min(64, shape[0] - z), *shape[1:])).astype(np.float32)
        image[z:z + 64] = np.clip(slab, 0, 255)
    for label in range(1, n_objects + 1):
        index = np.unravel_index(label - 1, per_axis)
        lo = np.array([c[i] for c, i in zip(cells, index)])
        hi = np.array([c[i + 1] for c, i in zip(cells, index)])
        radii = np.maximum((hi - lo) * rng.uniform(0.25, 0.4, size=3), 1.0)
        centre = (lo + hi - 1) / 2
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
        region = tuple(slice(a, b) for a, b in zip(lo, hi))
        labels[region][inside] = label
        image[region][inside] = np.clip(image[region][inside].astype(np.int16) + 60 + 120 * label // n_objects, 0, 255)
    return image, labels


def _grid(shape: tuple[int, int, int], n: int) -> tuple[int, int, int]:
    """Cells per axis (at least n in all), as close to cubes as the shape allows."""
    best = None
    for kz in range(1, n + 1):
        for ky in range(1, n + 1):
            kx = -(-n // (kz * ky))
            sides = np.array(shape) / (kz, ky, kx)
            score = (kz * ky * kx - n, sides.max() / sides.min())
            if min(sides) >= 4 and (best is None or score < best[0]):
                best = (score, (kz, ky, kx))
    if best is None:
        raise ValueError(f"{n} objects do not fit in {shape}")
    return best[1]


def case_arrays(image: np.ndarray, labels: np.ndarray, spacing_xyz=(1.0, 1.0, 2.0), boxes: bool = True,
                rounds: int = 0, prev_pred: np.ndarray | None = None, keep_gts: bool = True) -> dict:
    """The npz keys of one call: boxes if asked (organiser rule, no widening), and `rounds` copies
    of each class's first click from the simulated user (given an empty prediction)."""
    n = int(labels.max())
    arrays = {"imgs": image, "spacing": np.asarray(spacing_xyz, dtype=np.float64)}
    if keep_gts:
        arrays["gts"] = labels
    if boxes:
        arrays["boxes"] = np.array(organiser_boxes(labels), dtype=object)
    if rounds:
        centres = [list(c.voxel) for c in simulate_round(np.zeros_like(labels), labels, list(range(1, n + 1)))]
        arrays["clicks"] = np.array([{"fg": [c] * rounds, "bg": []} for c in centres], dtype=object)
        arrays["clicks_order"] = np.array([["fg"] * rounds for _ in range(n)], dtype=object)
        arrays["prev_pred"] = prev_pred if prev_pred is not None else np.zeros_like(labels)
    return arrays


def write_case(path: Path, arrays: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def write_demo_cases(folder: Path) -> list[Path]:
    """Three small cases covering the call kinds: box call, no-box click round, box + clicks + prev_pred."""
    image, labels = make_volume((40, 96, 96), n_objects=2, seed=1)
    mr_image, mr_labels = make_volume((24, 112, 112), n_objects=1, seed=2)
    return [
        write_case(folder / "CT_demo_box.npz", case_arrays(image, labels, boxes=True)),
        write_case(folder / "MR_demo_nobox.npz", case_arrays(mr_image, mr_labels, (0.8, 0.8, 4.0), boxes=False, rounds=1)),
        write_case(folder / "CT_demo_round2.npz",
                   case_arrays(image, labels, boxes=True, rounds=2, prev_pred=(labels == 1).astype(np.uint8))),
    ]


if __name__ == "__main__":
    import sys

    for p in write_demo_cases(Path(sys.argv[1] if len(sys.argv) > 1 else "demo/inputs")):
        print(p)
