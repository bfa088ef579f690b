"""Ask a running server (python -m inference.server, here or in an image) for one answer, as a viewer would.

    .venv/bin/python -m scripts.try_server http://127.0.0.1:1527 [--api-key KEY] [--wait 120]

With nninteractive-client 2.6.0: claims a session, uploads the demo case CT_demo_box, segments its first
object with a box and then one click from the challenge's simulated user, and prints what the server
answered (voxels, Dice against the case's ground truth, seconds per call). Exit 1 when it cannot.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession

from inference.harness.simulated_user import simulate_click

CASE = Path(__file__).resolve().parent.parent / "demo" / "inputs" / "CT_demo_box.npz"


def wait_for(url: str, seconds: float) -> bool:
    """Whether /healthz answers within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url.rstrip("/") + "/healthz", timeout=5).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--api-key")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the server to answer /healthz")
    args = parser.parse_args()
    if not wait_for(args.url, args.wait):
        print(f"try_server: {args.url} does not answer /healthz", file=sys.stderr)
        return 1
    with np.load(CASE, allow_pickle=True) as npz:
        image, truth = npz["imgs"], npz["gts"] == 1
    with nnInteractiveRemoteInferenceSession(args.url, api_key=args.api_key) as session:
        t0 = time.perf_counter()
        session.set_image(image[None])
        buffer = np.zeros(image.shape, np.uint8)
        session.set_target_buffer(buffer)
        t1 = time.perf_counter()
        session.add_bbox_interaction([[int(w.min()), int(w.max()) + 1] for w in np.nonzero(truth)], include_interaction=True)
        t2 = time.perf_counter()
        click = simulate_click(buffer != 0, truth)
        if click is not None:
            session.add_point_interaction(list(click.voxel), include_interaction=click.kind == "fg")
        t3 = time.perf_counter()
        about = f"licence {session.license}, {session.supported_interactions}"
    answer = buffer != 0
    dice = 2 * float((answer & truth).sum()) / float(answer.sum() + truth.sum())
    print(f"server {args.url} ({about}): {CASE.name} object 1, box then {'a ' + click.kind if click else 'no'} click: "
          f"{int(answer.sum())} voxels, Dice {dice:.3f}; set_image {t1 - t0:.2f} s, box {t2 - t1:.2f} s, "
          f"click {t3 - t2:.2f} s")
    return 0 if dice > 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
