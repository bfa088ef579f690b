"""Training on several processes (training/distributed.py): 2 gloo ranks on the CPU."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing

from inference.pipelines import load_model
from training import distributed
from training.feed import InProcessFeed, WorkerFeed
from training.label_maps import LabelSources
from training.samples import Recipe
from training.train import DEFAULT_CONFIG, batch_loss, build_model
from training_cases import write_training_cases

REPO = Path(__file__).resolve().parent.parent
SHAPES_ONLY = LabelSources()
PER_RANK = 2


def tiny_config() -> dict:
    """A small network and volumes, samples without prompting passes: seconds a step."""
    config = json.loads(DEFAULT_CONFIG.read_text())
    config["model"].update(features=[4, 8, 16], blocks=[1, 1, 1], patch_size=16)
    config["data"].update(p_atlas=0.0, p_tissue=0.0, max_side=40, min_side=24)
    config["prompting"].update(p_single_pass=1.0, p_tile=0.0)
    config.update(batch_size=PER_RANK, threads=1, log_every=1)
    config["optimiser"].update(warmup_steps=2)
    return config


def target_size(sample) -> float:
    return float(sample.target.sum())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_gradients(rank: int, port: int, folder: str, batch: str, out: str) -> None:
    """One of 2 ranks: the gradient of its half of the batch, averaged over the ranks by DDP, saved to `out`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ranks, device = distributed.start(torch.device("cpu"))
    try:
        model = load_model(folder, device)
        network = model.network.train()
        samples = torch.load(batch, weights_only=False)[rank * PER_RANK:(rank + 1) * PER_RANK]
        batch_loss(distributed.wrap(network, ranks, device), samples, device, model.spec.output)
        torch.save({k: p.grad for k, p in network.named_parameters()}, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.stop(ranks)


def test_two_ranks_average_to_the_gradient_of_one_rank_on_both_halves_of_the_batch(tmp_path):
    config = tiny_config()
    model = build_model(config, tmp_path / "model")
    recipe = Recipe.from_config(config["data"])
    # rank r draws samples r*b .. r*b+b-1 of every step: the two ranks' streams together are one rank's at batch 2b
    whole = InProcessFeed(model, SHAPES_ONLY, recipe, config["prompting"], 0).batch(3, 2 * PER_RANK)
    second = InProcessFeed(model, SHAPES_ONLY, recipe, config["prompting"], 0, first_index=PER_RANK).batch(3, PER_RANK)
    assert all(torch.equal(a.x, b.x) and torch.equal(a.target, b.target) for a, b in zip(whole[PER_RANK:], second))
    assert not torch.equal(whole[0].x, second[0].x)
    torch.save(whole, tmp_path / "batch.pt")
    torch.multiprocessing.spawn(_rank_gradients, args=(free_port(), str(tmp_path / "model"), str(tmp_path / "batch.pt"),
                                                       str(tmp_path)), nprocs=2)
    network = load_model(tmp_path / "model", torch.device("cpu")).network.train()
    batch_loss(network, whole, torch.device("cpu"), model.spec.output)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    compared = 0
    for name, p in network.named_parameters():
        if p.grad is None:  # the decoder's unused segmentation heads (no deep supervision)
            continue
        compared += 1
        for grads in ranks:
            assert torch.allclose(grads[name], p.grad, rtol=1e-4, atol=1e-7), name
    assert compared > 10 and any(float(p.grad.abs().max()) > 1e-4 for p in network.parameters() if p.grad is not None)


def test_a_ranks_feed_workers_draw_its_own_samples(tmp_path):
    config = tiny_config()
    model = build_model(config, tmp_path / "model")
    recipe = Recipe.from_config(config["data"])
    here = InProcessFeed(model, SHAPES_ONLY, recipe, config["prompting"], 0, first_index=PER_RANK).batch(1, PER_RANK)
    feed = WorkerFeed(model, SHAPES_ONLY, recipe, config["prompting"], 0, workers=1, batch_size=PER_RANK,
                      first_step=1, scratch=tmp_path, first_index=PER_RANK)
    try:
        there = feed.batch(1, PER_RANK)
    finally:
        feed.close()
    # the workers' order is whichever finishes first
    for a, b in zip(sorted(here, key=target_size), sorted(there, key=target_size)):
        assert torch.allclose(a.x, b.x.float(), rtol=1e-3, atol=1e-3)


def torchrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           "-m", "training.train", *args, "--device", "cpu"],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600, check=False)


def test_a_two_rank_torchrun_run_writes_the_run_folder_once_and_resumes(tmp_path):
    run, config, data = tmp_path / "run", tmp_path / "config.json", tmp_path / "data"
    write_training_cases(data, count=3, shape=(20, 32, 32))
    settings = tiny_config()
    settings["data"].update(p_real=0.5, validation_fraction=0.0)  # real and synthetic volumes
    config.write_text(json.dumps(settings))
    first = torchrun(str(run), "--config", str(config), "--steps", "2", "--data", str(data))
    assert first.returncode == 0, first.stderr[-3000:]
    # rank 0 prepared the cases and said so once; rank 1 read its work
    assert first.stdout.count("prepared CT_case_") == 3 and first.stdout.count("3 training cases") == 1
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2
    second = torchrun(str(run), "--resume", "--steps", "4", "--data", str(data))
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("resumed at step 2") == 1  # rank 0 speaks for the run
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 4
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(int(r["no_box"]) <= 2 * PER_RANK for r in rows)  # counted over both ranks' samples
    model = load_model(run / "model", torch.device("cpu"))
    assert json.loads((run / "model" / "model.json").read_text())["name"].endswith("(step 4)")
    assert model.spec.patch_size == 16
