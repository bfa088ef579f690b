"""Train an interactive model with dynamic prompt generation, resumable.

    .venv/bin/python -m training.train RUN_DIR [--config training/config.json] [--resume] [--minutes M] [--steps N]
                                               [--device auto|cpu|cuda] [--workers W]

Each step draws `batch_size` synthetic volumes (deterministic in (seed, step, index)). Per sample:
the first prompt is the organisers' box, or (no-box samples) the evaluator's first click.
With probability `p_single_pass` the loss is on that single pass. Otherwise the model
predicts without gradient through the container's own `segment_class`, the harness's
simulated user adds a click at its largest error, up to `click_rounds` times, and the
loss (soft Dice + BCE) is on the final pass, which sees the clicks and the hardened
previous prediction. On a GPU, `--workers` processes draw the samples (training/feed.py).
Checkpoints (weights, optimiser, step, training minutes, RNG state) go to
RUN_DIR/checkpoint.pt every few minutes, with a loadable model folder in RUN_DIR/model/.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from inference.model import Model, create_random_model, load_state_dict, pick_device, read_spec, resenc_architecture, save_model

from .feed import InProcessFeed, WorkerFeed
from .label_maps import LabelSources
from .record import plot_loss
from .samples import Recipe, Sample

DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.json"
# feed_seconds: what the step waited for its samples; sample/volume/passes_seconds: the batch's mean time to
# draw one sample, and of that the volume's synthesis and the prompting passes (a worker's view of the feed)
LOG_FIELDS = ["step", "loss", "dice", "bce", "lr", "seconds", "feed_seconds", "no_box", "rounds",
              "sample_seconds", "volume_seconds", "passes_seconds", "tiles"]


def model_spec(config: dict) -> dict:
    """The model folder's JSON for this configuration (what `model_weights/default/model.json` holds)."""
    m = config["model"]
    return {
        "name": config["name"],
        "architecture": resenc_architecture(m["features"], m["blocks"]),
        "channels": m["channels"],
        "patch_size": m["patch_size"],
        "normalisation": m["normalisation"],
        "prompts": m["prompts"],
        "output": "sigmoid",
        "weights": "weights.pt",
        "max_zoom": m["max_zoom"],
        # weights trained on zoom-1 tiles of zoomed-out box answers predict those answers again in such tiles
        "full_resolution_tiles": config["prompting"].get("p_tile", 0) > 0,
    }


def build_model(config: dict, folder: Path) -> Model:
    """A freshly initialised model (seeded by the config), written as a model folder at `folder`."""
    network = create_random_model(folder, model_spec(config), config["seed"])
    return Model(read_spec(folder), network, torch.device("cpu"))


def loss_terms(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft Dice loss, BCE) per batch, on sigmoid outputs against area-fraction targets."""
    probs = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    dice = 1 - (2 * (probs * target).sum(dims) + 1) / (probs.sum(dims) + target.sum(dims) + 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    return dice.mean(), bce


def learning_rate(step: int, opt: dict, minutes: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to `final_lr_fraction` of the peak at `total_steps`, or at
    `total_minutes` of training when the config plans the run by time (a GPU lease is counted in minutes)."""
    if step < opt["warmup_steps"]:
        return opt["lr"] * (step + 1) / opt["warmup_steps"]
    if "total_minutes" in opt:
        t = min(1.0, minutes / opt["total_minutes"])
    else:
        t = min(1.0, (step - opt["warmup_steps"]) / max(opt["total_steps"] - opt["warmup_steps"], 1))
    floor = opt["final_lr_fraction"]
    return opt["lr"] * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def save_checkpoint(run_dir: Path, model: Model, optimiser, step: int, minutes: float, config: dict) -> None:
    """Atomically: weights, optimiser, step, training minutes and RNG state, plus a model folder usable by the container."""
    state = {"network": model.network.state_dict(), "optimiser": optimiser.state_dict(), "step": step,
             "minutes": minutes, "config": config, "torch_rng": torch.get_rng_state()}
    tmp = run_dir / "checkpoint.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, run_dir / "checkpoint.pt")
    save_model(run_dir / "model", model_spec(config) | {"name": f"{config['name']} (step {step})"}, model.network)
    plot_loss(run_dir)


def sample_timing(samples: list[Sample]) -> dict[str, str]:
    """The log's mean seconds per sample: in all, drawing the volume, and in the prompting passes."""
    def mean(values) -> str:
        return f"{sum(values) / len(samples):.3f}"

    return {"sample_seconds": mean(s.seconds for s in samples),
            "volume_seconds": mean(s.volume_seconds for s in samples),
            "passes_seconds": mean(s.passes_seconds for s in samples)}


def drop_log_rows_after(log_path: Path, step: int) -> None:
    """Steps logged after the checkpoint are done again on resume: keep their rows once."""
    if not log_path.exists():
        return
    with open(log_path) as f:
        rows = list(csv.DictReader(f))
    with open(log_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(r for r in rows if int(r["step"]) <= step)


@dataclass
class CpuShare:
    """How busy the other processes kept the machine since the last look (Linux /proc/stat)."""

    busy: float = 0.0
    own: float = 0.0
    wall: float = 0.0

    @staticmethod
    def now() -> "CpuShare":
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:]]
            busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        except (OSError, ValueError, IndexError):
            busy = 0.0
        return CpuShare(busy, time.process_time(), time.monotonic())

    def others_since(self, earlier: "CpuShare") -> float:
        """Cores the other processes used on average since `earlier`."""
        return max(0.0, (self.busy - earlier.busy) - (self.own - earlier.own)) / max(self.wall - earlier.wall, 1e-6)


def fitting_threads(most: int, others: float) -> int:
    """Fewer threads while other processes load the machine: torch's threads wait on each other
    and a step gets several times slower when they outnumber the free cores."""
    return max(1, min(most, int((os.cpu_count() or 1) - others + 0.5)))


def train(run_dir: Path, config: dict, resume: bool, minutes: float | None, steps: int | None,
          sources: LabelSources | None = None, init_from: Path | None = None,
          device: torch.device | None = None, workers: int = 0) -> int:
    """Run until `steps` total steps, the config's `total_minutes` of training, or `minutes` of wall time
    in this call; returns the step reached.

    `init_from` starts a new run from a model folder's weights (e.g. the shipped default model),
    which is how training goes on in a later session without the git-ignored checkpoint.
    `workers` > 0 draws samples in that many processes (`feed.WorkerFeed`); on a GPU the
    forward passes run in bfloat16 autocast."""
    run_dir.mkdir(parents=True, exist_ok=True)
    device = device or torch.device("cpu")
    torch.set_num_threads(config["threads"])
    model = build_model(config, run_dir / "model")
    opt = config["optimiser"]
    optimiser = torch.optim.AdamW(model.network.parameters(), lr=opt["lr"], weight_decay=opt["weight_decay"])
    step, trained_minutes = 0, 0.0
    if resume and (run_dir / "checkpoint.pt").exists():
        state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
        model.network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        torch.set_rng_state(state["torch_rng"])
        step, trained_minutes = state["step"], state.get("minutes", 0.0)
        drop_log_rows_after(run_dir / "log.csv", step)
        print(f"resumed at step {step}", flush=True)
    else:
        if init_from is not None:
            model.network.load_state_dict(load_state_dict(init_from / read_spec(init_from).weights))
            print(f"initialised from {init_from}", flush=True)
        (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    model.network.to(device)
    model.device = device
    optimiser.load_state_dict(optimiser.state_dict())  # moves a resumed optimiser's state to the device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one patch size throughout
    sources = sources if sources is not None else LabelSources.load()
    recipe = Recipe.from_config(config["data"])
    feed = (WorkerFeed(model, sources, recipe, config["prompting"], config["seed"], workers, config["batch_size"],
                       step, run_dir) if workers > 0
            else InProcessFeed(model, sources, recipe, config["prompting"], config["seed"]))
    end_step = steps if steps is not None else opt["total_steps"]
    end_minutes = opt.get("total_minutes", math.inf)
    deadline = time.monotonic() + minutes * 60 if minutes else math.inf
    last_save = time.monotonic()
    log_path = run_dir / "log.csv"
    new_log = not log_path.exists()
    try:
        with open(log_path, "a", newline="") as log_file:
            log = csv.DictWriter(log_file, fieldnames=LOG_FIELDS)
            if new_log:
                log.writeheader()
            model.network.train()
            cpu = CpuShare.now()
            while step < end_step and trained_minutes < end_minutes and time.monotonic() < deadline:
                t0 = time.monotonic()
                if device.type == "cpu":
                    cpu, last_cpu = CpuShare.now(), cpu
                    torch.set_num_threads(fitting_threads(config["threads"], cpu.others_since(last_cpu)))
                samples = feed.batch(step, config["batch_size"])
                feed_seconds = time.monotonic() - t0  # what the step waited for its samples
                # worker samples arrive in float16: converted on the device, half the bytes copied there
                x = torch.stack([s.x for s in samples]).to(device, non_blocking=True).float()
                target = torch.stack([s.target for s in samples])[:, None].to(device, non_blocking=True).float()
                for group in optimiser.param_groups:
                    group["lr"] = learning_rate(step, opt, trained_minutes)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    logits = model.network(x)
                dice, bce = loss_terms(logits.float(), target)
                loss = dice + bce
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.network.parameters(), opt["grad_clip"])
                optimiser.step()
                step += 1
                if step % config.get("sync_steps", 1) == 0:
                    feed.publish(model.network)
                seconds = time.monotonic() - t0
                trained_minutes += seconds / 60
                log.writerow({"step": step, "loss": f"{loss.item():.4f}", "dice": f"{dice.item():.4f}",
                              "bce": f"{bce.item():.4f}", "lr": f"{optimiser.param_groups[0]['lr']:.2e}",
                              "seconds": f"{seconds:.2f}", "feed_seconds": f"{feed_seconds:.2f}",
                              "no_box": sum(s.no_box for s in samples), "rounds": sum(s.rounds for s in samples),
                              "tiles": sum(s.tile for s in samples),
                              **sample_timing(samples)})
                if step % config["log_every"] == 0:
                    log_file.flush()
                    print(f"step {step} loss {loss.item():.3f} (dice {dice.item():.3f}, bce {bce.item():.3f}) "
                          f"{seconds:.2f} s/step ({feed_seconds:.2f} s waiting for samples), {trained_minutes:.1f} min",
                          flush=True)
                if time.monotonic() - last_save > config["checkpoint_minutes"] * 60:
                    save_checkpoint(run_dir, model, optimiser, step, trained_minutes, config)
                    last_save = time.monotonic()
    finally:
        feed.close()
    save_checkpoint(run_dir, model, optimiser, step, trained_minutes, config)
    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    parser.add_argument("--minutes", type=float, help="stop (with a checkpoint) after this much wall time")
    parser.add_argument("--steps", type=int, help="stop at this total step (default: the config's total_steps)")
    parser.add_argument("--init-from", type=Path, help="start a new run from this model folder's weights")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where the network trains (auto: the GPU when there is one)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes that draw samples (0: in this process, the right choice on 2 cores)")
    args = parser.parse_args(argv)
    config = json.loads(((args.run_dir / "config.json") if args.resume and (args.run_dir / "config.json").exists()
                         else args.config).read_text())
    t0 = time.monotonic()
    device = pick_device() if args.device == "auto" else torch.device(args.device)
    step = train(args.run_dir, config, args.resume, args.minutes, args.steps, init_from=args.init_from,
                 device=device, workers=args.workers)
    print(f"stopped at step {step} after {(time.monotonic() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
