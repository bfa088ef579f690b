"""Train an interactive model with dynamic prompt generation, resumable, on one process or several.

    .venv/bin/python -m training.train RUN_DIR [--config training/config.json] [--resume] [--minutes M] [--steps N]
                                               [--init-from MODEL_DIR] [--patch P] [--device auto|cpu|cuda]
                                               [--workers W] [--data DIR ...]
    torchrun --nproc_per_node N -m training.train RUN_DIR ...   (DistributedDataParallel, training/distributed.py)

Each step draws `batch_size` volumes (deterministic in (seed, step, index)): synthetic, or with `--data`
(`data.p_real` of them) crops of real labelled cases, prepared on first use (training/real_cases.py). Per sample:
the first prompt is the organisers' box, or (no-box samples) the evaluator's first click.
With probability `p_single_pass` the loss is on that single pass. Otherwise the model
predicts without gradient through the container's own `segment_class`, the harness's
simulated user adds a click at its largest error, up to `click_rounds` times, and the
loss (soft Dice + BCE) is on the final pass, which sees the clicks and the hardened
previous prediction. On a GPU, `--workers` processes draw the samples (training/feed.py).
Checkpoints (weights, optimiser, step, training minutes, RNG state) go to
RUN_DIR/checkpoint.pt every few minutes, with a loadable model folder in RUN_DIR/model/.

`--init-from MODEL_DIR` fine-tunes a model folder (ours, or an nnInteractive download as it is): the run
keeps that folder's network, channels, output head, normalisation and prompt encoding; `--patch` and the
config's `init_overrides` change its patch size or prompt encoding. The exported folder runs our
("segfm") pipeline, the field of view the training samples are drawn on (`run_spec`).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from inference.model import (
    Model,
    create_random_model,
    foreground_from_logits,
    load_state_dict,
    pick_device,
    resenc_architecture,
    save_model,
)
from inference.pipelines import read_spec

from . import distributed
from .distributed import Ranks
from .feed import InProcessFeed, WorkerFeed
from .label_maps import LabelSources
from .real_cases import NoUsableCase, RealCases, load_real_cases
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


# what a run may change in the spec of the folder it starts from: the weights fix everything else
INIT_OVERRIDES = ("patch_size", "prompts", "max_zoom")


def inherited_spec(config: dict, init_from: Path) -> dict:
    """The spec of a run that fine-tunes the model folder `init_from` (ours, or an nnInteractive download):
    its network, channels, output head, normalisation, prompt encoding and patch, changed by the config's
    `init_overrides`.

    The run's samples are drawn on our field of view (`samples.training_pair`: `segfm.inputs.network_input` on
    `fit(prompt_region)`), so the result runs our pipeline ("segfm") whatever the folder ran before: the
    nnInteractive session's crop (around the newest prompt only), decay of older prompts and pasting are not
    what the fine-tuned weights saw. Its `logit_offset` and `boundary_refinement` were tuned on the old
    weights and are left out: `training.calibrate` chooses them again for the new ones."""
    source = read_spec(init_from)
    overrides = config.get("init_overrides", {})
    unknown = set(overrides) - set(INIT_OVERRIDES)
    if unknown:
        raise ValueError(f"init_overrides may change {INIT_OVERRIDES}, not {sorted(unknown)}")
    spec = {
        "name": f"{config['name']} from {init_from.name}",
        "architecture": source.architecture,
        "channels": list(source.channels),
        "patch_size": source.patch_size,
        "normalisation": source.normalisation,
        "prompts": asdict(source.prompts),
        "output": source.output,
        "weights": "weights.pt",
        "max_zoom": source.max_zoom,
        "pipeline": "segfm",
        "full_resolution_tiles": config["prompting"].get("p_tile", 0) > 0,
    }
    return spec | {k: ({**spec[k], **v} if isinstance(v, dict) else v) for k, v in overrides.items()}


def run_spec(config: dict, init_from: Path | None = None, patch_size: int | None = None) -> dict:
    """The model folder's JSON of a new run: the config's network, or the folder's it starts from; `patch_size`
    (e.g. 64 on a CPU) replaces the patch."""
    spec = model_spec(config) if init_from is None else inherited_spec(config, init_from)
    return spec | ({"patch_size": patch_size} if patch_size is not None else {})


def build_model(config: dict, folder: Path, spec: dict | None = None) -> Model:
    """A freshly initialised model (seeded by the config) of `spec` (default: the config's), written as a
    model folder at `folder`."""
    network = create_random_model(folder, spec or model_spec(config), config["seed"])
    model = Model(read_spec(folder), network, torch.device("cpu"))
    # InstanceNorm needs more than one voxel per channel at the bottleneck when training
    if model.spec.patch_size % model.divisor or model.spec.patch_size < 2 * model.divisor:
        raise ValueError(f"patch size {model.spec.patch_size}: this network trains on multiples of "
                         f"{model.divisor} from {2 * model.divisor}")
    return model


def batch_loss(network: torch.nn.Module, samples: list[Sample], device: torch.device,
               output: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, soft Dice loss, BCE) of one batch, gradients computed: a 1-logit head or the foreground logit of a
    2-logit one (logit1 - logit0, whose sigmoid is softmax[1]: the BCE is the two-class cross-entropy).

    Under DistributedDataParallel the backward pass averages the gradients over the ranks."""
    # worker samples arrive in float16: converted on the device, half the bytes copied there
    x = torch.stack([s.x for s in samples]).to(device, non_blocking=True).float()
    target = torch.stack([s.target for s in samples])[:, None].to(device, non_blocking=True).float()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = network(x)
    dice, bce = loss_terms(foreground_from_logits(logits.float(), output)[:, None], target)
    loss = dice + bce
    loss.backward()
    return loss, dice, bce


def loss_terms(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft Dice loss, BCE) per batch, on sigmoid outputs against area-fraction targets."""
    probs = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    dice = 1 - (2 * (probs * target).sum(dims) + 1) / (probs.sum(dims) + target.sum(dims) + 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    return dice.mean(), bce


SCHEDULES = ("cosine", "constant")


def learning_rate(step: int, opt: dict, minutes: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to `final_lr_fraction` of the peak at `total_steps`, or at
    `total_minutes` of training when the config plans the run by time (a GPU lease is counted in minutes);
    `"schedule": "constant"` keeps the peak after the warm-up (the seed recipe's lr 1e-4)."""
    schedule = opt.get("schedule", "cosine")
    if schedule not in SCHEDULES:
        raise ValueError(f"optimiser schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < opt["warmup_steps"]:
        return opt["lr"] * (step + 1) / opt["warmup_steps"]
    if schedule == "constant":
        return opt["lr"]
    if "total_minutes" in opt:
        t = min(1.0, minutes / opt["total_minutes"])
    else:
        t = min(1.0, (step - opt["warmup_steps"]) / max(opt["total_steps"] - opt["warmup_steps"], 1))
    floor = opt["final_lr_fraction"]
    return opt["lr"] * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def save_checkpoint(run_dir: Path, model: Model, optimiser, step: int, minutes: float, config: dict,
                    spec: dict) -> None:
    """Atomically: weights, optimiser, step, training minutes, RNG state and the model's spec, plus a model folder
    usable by the container."""
    state = {"network": model.network.state_dict(), "optimiser": optimiser.state_dict(), "step": step,
             "minutes": minutes, "config": config, "spec": spec, "torch_rng": torch.get_rng_state()}
    tmp = run_dir / "checkpoint.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, run_dir / "checkpoint.pt")
    save_model(run_dir / "model", spec | {"name": f"{spec['name']} (step {step})"}, model.network)
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
          device: torch.device | None = None, workers: int = 0, patch_size: int | None = None,
          ranks: Ranks | None = None) -> int:
    """Run until `steps` total steps, the config's `total_minutes` of training, or `minutes` of wall time
    in this call; returns the step reached.

    `init_from` starts a new run from a model folder's weights and spec (`run_spec`): the shipped default
    model, an nnInteractive download, or an earlier run's export, which is how training goes on in a later
    session without the git-ignored checkpoint; `patch_size` replaces a new run's patch.
    `workers` > 0 draws samples in that many processes (`feed.WorkerFeed`); on a GPU the
    forward passes run in bfloat16 autocast. With several `ranks` (torchrun) each draws its own
    `batch_size` samples of a step, the gradients are averaged, and rank 0 writes the run folder."""
    ranks = ranks or Ranks()
    run_dir.mkdir(parents=True, exist_ok=True)
    # ranks other than 0 keep their own copy of the spec and the workers' weights apart (another machine may
    # not share RUN_DIR)
    scratch = run_dir if ranks.main else run_dir / f"rank{ranks.rank}"
    device = device or torch.device("cpu")
    torch.set_num_threads(config["threads"])
    state = None
    if resume and (run_dir / "checkpoint.pt").exists():
        state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    # checkpoints before the spec was saved in them trained the config's network
    spec = (state.get("spec", model_spec(config)) if state is not None
            else run_spec(config, init_from, patch_size))
    model = build_model(config, scratch / "model", spec)
    opt = config["optimiser"]
    optimiser = torch.optim.AdamW(model.network.parameters(), lr=opt["lr"], weight_decay=opt["weight_decay"])
    step, trained_minutes = 0, 0.0
    if state is not None:
        model.network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        torch.set_rng_state(state["torch_rng"])
        step, trained_minutes = state["step"], state.get("minutes", 0.0)
        if ranks.main:
            drop_log_rows_after(run_dir / "log.csv", step)
            print(f"resumed at step {step}", flush=True)
    else:
        if init_from is not None:
            model.network.load_state_dict(load_state_dict(init_from / read_spec(init_from).weights))
            if ranks.main:
                print(f"initialised from {init_from}", flush=True)
        if ranks.main:
            (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    model.network.to(device)
    model.device = device
    optimiser.load_state_dict(optimiser.state_dict())  # moves a resumed optimiser's state to the device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one patch size throughout
    trained = distributed.wrap(model.network, ranks, device)  # the prompting passes use model.network itself
    sources = sources if sources is not None else LabelSources.load()
    recipe = Recipe.from_config(config["data"])
    first_index = ranks.rank * config["batch_size"]  # this rank's samples of every step
    feed = (WorkerFeed(model, sources, recipe, config["prompting"], config["seed"], workers, config["batch_size"],
                       step, scratch, first_index=first_index) if workers > 0
            else InProcessFeed(model, sources, recipe, config["prompting"], config["seed"], first_index))
    end_step = steps if steps is not None else opt["total_steps"]
    end_minutes = opt.get("total_minutes", math.inf)
    deadline = time.monotonic() + minutes * 60 if minutes else math.inf
    last_save = time.monotonic()
    log_path = run_dir / "log.csv"
    new_log = not log_path.exists()
    try:
        with open(log_path if ranks.main else os.devnull, "a", newline="") as log_file:
            log = csv.DictWriter(log_file, fieldnames=LOG_FIELDS)
            if new_log and ranks.main:
                log.writeheader()
            model.network.train()
            cpu = CpuShare.now()
            while step < end_step and trained_minutes < end_minutes:
                t0 = time.monotonic()
                if device.type == "cpu":
                    cpu, last_cpu = CpuShare.now(), cpu
                    torch.set_num_threads(fitting_threads(config["threads"], cpu.others_since(last_cpu)))
                samples = feed.batch(step, config["batch_size"])
                feed_seconds = time.monotonic() - t0  # what the step waited for its samples
                for group in optimiser.param_groups:
                    group["lr"] = learning_rate(step, opt, trained_minutes)
                optimiser.zero_grad(set_to_none=True)
                loss, dice, bce = batch_loss(trained, samples, device, model.spec.output)
                torch.nn.utils.clip_grad_norm_(model.network.parameters(), opt["grad_clip"])
                optimiser.step()
                step += 1
                if step % config.get("sync_steps", 1) == 0:
                    feed.publish(model.network)
                # every rank must see the same minutes (the learning rate) and stop at the same step
                seconds, out_of_time, loss_v, dice_v, bce_v, no_box, rounds, tiles = distributed.mean_over_ranks(
                    [time.monotonic() - t0, float(time.monotonic() >= deadline), loss.item(), dice.item(),
                     bce.item(), sum(s.no_box for s in samples), sum(s.rounds for s in samples),
                     sum(s.tile for s in samples)], ranks)
                trained_minutes += seconds / 60
                log.writerow({"step": step, "loss": f"{loss_v:.4f}", "dice": f"{dice_v:.4f}",
                              "bce": f"{bce_v:.4f}", "lr": f"{optimiser.param_groups[0]['lr']:.2e}",
                              "seconds": f"{seconds:.2f}", "feed_seconds": f"{feed_seconds:.2f}",
                              "no_box": round(no_box * ranks.world_size), "rounds": round(rounds * ranks.world_size),
                              "tiles": round(tiles * ranks.world_size),
                              **sample_timing(samples)})
                if step % config["log_every"] == 0 and ranks.main:
                    log_file.flush()
                    print(f"step {step} loss {loss_v:.3f} (dice {dice_v:.3f}, bce {bce_v:.3f}) "
                          f"{seconds:.2f} s/step ({feed_seconds:.2f} s waiting for samples), {trained_minutes:.1f} min",
                          flush=True)
                if time.monotonic() - last_save > config["checkpoint_minutes"] * 60 and ranks.main:
                    save_checkpoint(run_dir, model, optimiser, step, trained_minutes, config, spec)
                    last_save = time.monotonic()
                if out_of_time:
                    break
    finally:
        feed.close()
    if ranks.main:
        save_checkpoint(run_dir, model, optimiser, step, trained_minutes, config, spec)
    distributed.barrier(ranks)  # no rank leaves before the run folder is complete
    return step


def real_cases(data_dirs: list[Path], config: dict, ranks: Ranks) -> RealCases:
    """The `--data` cases: rank 0 prepares what is not yet prepared, the other ranks then read its work."""
    fraction = Recipe.from_config(config["data"]).validation_fraction

    def load() -> RealCases:
        try:
            return load_real_cases(data_dirs, fraction, verbose=ranks.main)
        except NoUsableCase as exc:
            raise SystemExit(f"training.train: {exc}") from None

    if ranks.main:
        real = load()
    distributed.barrier(ranks)  # a rank 0 that found no case exits, and torchrun then stops the others
    return real if ranks.main else load()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    parser.add_argument("--minutes", type=float, help="stop (with a checkpoint) after this much wall time")
    parser.add_argument("--steps", type=int, help="stop at this total step (default: the config's total_steps)")
    parser.add_argument("--init-from", type=Path,
                        help="start a new run from this model folder (ours or an nnInteractive download): its "
                             "network, weights, channels, output head and prompt encoding")
    parser.add_argument("--patch", type=int, help="a new run's patch side (e.g. 64 on a CPU; a multiple of the "
                                                  "network's downsampling)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where the network trains (auto: the GPU when there is one)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes that draw samples, per rank (0: in this process, the right choice on 2 cores)")
    parser.add_argument("--data", type=Path, action="append", metavar="DIR",
                        help="a folder of labelled cases (challenge training .npz, or imagesTr/ + labelsTr/ NIfTI), "
                             "prepared on first use; repeat for several; the config's data.p_real mixes them in")
    args = parser.parse_args(argv)
    config = json.loads(((args.run_dir / "config.json") if args.resume and (args.run_dir / "config.json").exists()
                         else args.config).read_text())
    if "model" not in config and args.init_from is None and not (args.resume and (args.run_dir / "checkpoint.pt").exists()):
        parser.error(f"{args.config} has no network of its own (no \"model\"): it fine-tunes one, give --init-from")
    t0 = time.monotonic()
    ranks, device = distributed.start(pick_device() if args.device == "auto" else torch.device(args.device))
    try:
        real = real_cases(args.data, config, ranks) if args.data else None
        step = train(args.run_dir, config, args.resume, args.minutes, args.steps, init_from=args.init_from,
                     device=device, workers=args.workers, patch_size=args.patch, ranks=ranks,
                     sources=LabelSources.load(real=real) if real is not None else None)
    finally:
        distributed.stop(ranks)
    if ranks.main:
        print(f"stopped at step {step} after {(time.monotonic() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
