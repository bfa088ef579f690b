"""Seconds per call of the interactive server, as nnInteractive's remote client sees them.

    .venv/bin/python -m scripts.benchmark_server [--model DIR] [--shape 100 256 256] [--clients 1 4] [--objects 3] [--clicks 4]

Starts `python -m inference.server` on a free loopback port (the default model: OpenVINO on the CPU) and
drives it with nninteractive-client 2.6.0: each client uploads a synthetic volume (ellipsoids in noise), then
segments each object with a box and clicks from the challenge's simulated user, and again with clicks only.
Prints set_image seconds and per-interaction latency (p50 / p95) for each number of concurrent clients.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession

from inference.harness.simulated_user import simulate_click
from inference.predict import DEFAULT_MODEL
from scripts.synthetic_cases import make_volume
from scripts.try_server import wait_for

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Path, port: int, sessions: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "inference.server", "--model-dir", str(model), "--port", str(port),
                               "--max-sessions", str(sessions)], cwd=REPO)
    if not wait_for(f"http://127.0.0.1:{port}", 120):
        server.terminate()
        raise SystemExit("the server did not answer within 120 s")
    return server


def timed(times: dict, kind: str, call, *args, **kwargs):
    t0 = time.perf_counter()
    answer = call(*args, **kwargs)
    times.setdefault(kind, []).append(time.perf_counter() - t0)
    return answer


def one_client(url: str, image: np.ndarray, labels: np.ndarray, clicks: int, times: dict) -> None:
    """Every object of the volume with a box and clicks, then with clicks only."""
    with nnInteractiveRemoteInferenceSession(url) as session:
        timed(times, "set_image", session.set_image, image[None], {"spacing": [2.0, 1.0, 1.0]})
        buffer = np.zeros(image.shape, np.uint8)
        session.set_target_buffer(buffer)
        for label in range(1, int(labels.max()) + 1):
            truth = labels == label
            for with_box in (True, False):
                session.reset_interactions()
                if with_box:
                    box = [[int(w.min()), int(w.max()) + 1] for w in np.nonzero(truth)]
                    timed(times, "box", session.add_bbox_interaction, box, include_interaction=True)
                for _ in range(clicks):
                    click = simulate_click(buffer != 0, truth)
                    if click is None:
                        break
                    timed(times, "click after a box" if with_box else "click, no box", session.add_point_interaction,
                          list(click.voxel), include_interaction=click.kind == "fg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--shape", type=int, nargs=3, default=(100, 256, 256), help="z y x")
    parser.add_argument("--clients", type=int, nargs="+", default=(1, 4))
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=4, help="clicks per object and prompt setting")
    args = parser.parse_args()
    volumes = [make_volume(tuple(args.shape), args.objects, seed=seed) for seed in range(max(args.clients))]
    port = free_port()
    server = start_server(args.model, port, max(args.clients))
    url = f"http://127.0.0.1:{port}"
    try:
        print(f"model {args.model}, volume {tuple(args.shape)} (z, y, x) uint8, {args.objects} objects, "
              f"{args.clicks} clicks per object with and without a box")
        print(f"{'clients':>7}  {'call':<18} {'n':>4} {'p50 s':>7} {'p95 s':>7} {'max s':>7}")
        for clients in args.clients:
            times: dict[str, list[float]] = {}
            threads = [threading.Thread(target=one_client, args=(url, *volumes[i], args.clicks, times))
                       for i in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            times["every interaction"] = [t for k, v in times.items() if k != "set_image" for t in v]
            for kind, values in times.items():
                p50, p95 = np.percentile(values, [50, 95])
                print(f"{clients:>7}  {kind:<18} {len(values):>4} {p50:>7.2f} {p95:>7.2f} {max(values):>7.2f}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
