"""Serve a model folder to nnInteractive's remote client: `python -m inference.server [--model-dir DIR] ...`.

    python -m inference.server                                   # the default model on http://127.0.0.1:1527
    python -m inference.server --host 0.0.0.0 --api-key KEY      # reachable from other machines: a key is required

The flags are nnInteractive's server's where they mean the same. The key may also come from
$NN_INTERACTIVE_API_KEY (the variable the client reads too). A client connects with
`nnInteractiveRemoteInferenceSession("http://HOST:1527", api_key=KEY)`.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time

import torch

from ..openvino_forward import BACKENDS
from ..pipelines import load_model, read_spec
from ..predict import DEFAULT_MODEL, MODEL_ENV
from .app import ServerSettings, make_app

API_KEY_ENV = "NN_INTERACTIVE_API_KEY"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = ServerSettings()
    parser = argparse.ArgumentParser(prog="python -m inference.server", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=os.environ.get(MODEL_ENV) or str(DEFAULT_MODEL),
                        help=f"model folder (default: ${MODEL_ENV} or {DEFAULT_MODEL})")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1527)
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None,
                        help=f"bearer token every endpoint but /healthz requires (default: ${API_KEY_ENV})")
    parser.add_argument("--max-sessions", type=int, default=defaults.max_sessions)
    parser.add_argument("--idle-timeout-seconds", type=float, default=defaults.idle_timeout,
                        help="a session with no interaction for this long is dropped")
    parser.add_argument("--liveness-timeout-seconds", type=float, default=defaults.liveness_timeout,
                        help="a session with no request at all (not even a heartbeat) for this long is dropped")
    parser.add_argument("--max-image-voxels", type=int, default=defaults.max_image_voxels,
                        help="larger images are refused with 413")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: the GPU when CUDA works")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="CPU forward pass: OpenVINO when the folder has its IR (auto), or torch")
    parser.add_argument("--no-autozoom", action="store_true", help="sessions start without AutoZoom")
    parser.add_argument("--no-undo", action="store_true", help="no session keeps what undo would need")
    return parser.parse_args(argv)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refusal(args: argparse.Namespace) -> str | None:
    """Why the server must not start with these flags (one line), or None."""
    if not is_loopback(args.host) and not args.api_key:
        return (f"refusing to listen on {args.host} without an API key: pass --api-key KEY or set ${API_KEY_ENV} "
                "(or listen on 127.0.0.1)")
    if args.max_sessions < 1 or args.max_image_voxels < 1:
        return "--max-sessions and --max-image-voxels must be at least 1"
    if not (args.idle_timeout_seconds > 0 and args.liveness_timeout_seconds > 0):
        return "--idle-timeout-seconds and --liveness-timeout-seconds must be positive"
    if args.device == "cuda" and not torch.cuda.is_available():
        return "--device cuda: CUDA is not available here"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = refusal(args)
    if problem:
        print(f"inference.server: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    t0 = time.perf_counter()
    try:
        trained_box = read_spec(args.model_dir).prompts.box
        # every box is drawn as the client gives it; 2D boxes for weights trained on 3D ones: inputs.prompt_box
        model = load_model(args.model_dir, torch.device(args.device) if args.device else None, box_mode="slab",
                           backend=args.backend)
    except Exception as exc:
        print(f"inference.server: cannot load model {args.model_dir}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    settings = ServerSettings(args.max_sessions, args.idle_timeout_seconds, args.liveness_timeout_seconds,
                              args.max_image_voxels, not args.no_autozoom, not args.no_undo, args.api_key)
    engine = "openvino" if model.cpu_forward is not None else "torch"
    print(f"inference.server: {args.model_dir} ({model.spec.pipeline} pipeline, {model.device}, {engine}) loaded in "
          f"{time.perf_counter() - t0:.1f} s; serving http://{args.host}:{args.port} "
          f"(at most {args.max_sessions} sessions{', API key required' if args.api_key else ''})",
          file=sys.stderr, flush=True)
    import uvicorn

    uvicorn.run(make_app(model, settings, trained_box), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
