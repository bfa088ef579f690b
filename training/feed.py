"""Where a training step's samples come from: drawn in the training process, or by worker processes.

On a 2-core machine the network step dominates and samples are drawn in process (`InProcessFeed`).
On a GPU machine the step takes milliseconds and drawing samples (synthesis, the prompting passes,
the simulated user) is the work: `WorkerFeed` spreads it over processes, each prompting with its own
copy of the network that the trainer republishes every few steps. Their clicks then come from the
errors of weights at most `sync_steps` steps old, and the batch order depends on which worker is
done first, so a worker-fed run is not bit-for-bit repeatable (an in-process run is).
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import threading
from pathlib import Path

import torch

from inference.model import Model, ModelSpec, build_network

from .label_maps import LabelSources
from .samples import Recipe, Sample, draw_samples, volume_groups

RESULT_TIMEOUT_S = 600  # a worker that produces nothing for this long is broken, not slow
# A worker is one core's worth of work: every thread pool its libraries would open is capped at one
# thread before its interpreter starts (OpenMP reads these once, at load time).
SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class InProcessFeed:
    """Samples drawn here, prompted with the network being trained."""

    def __init__(self, model: Model, sources: LabelSources, recipe: Recipe, prompting: dict, seed: int,
                 first_index: int = 0):
        self.model, self.sources, self.recipe, self.prompting, self.seed = model, sources, recipe, prompting, seed
        self.first_index = first_index  # a rank's samples of a step start here (training/distributed.py)

    def batch(self, step: int, size: int) -> list[Sample]:
        return [sample for first, count in volume_groups(size, self.recipe.targets_per_volume)
                for sample in draw_samples(self.model, self.sources, self.recipe, self.prompting, self.seed,
                                           step, self.first_index + first, count)]

    def publish(self, network: torch.nn.Module) -> None:
        """Nothing to do: the prompting network is the trained one."""

    def close(self) -> None:
        pass


class WorkerFeed:
    """Samples drawn by `workers` spawned processes, a few steps ahead of the trainer."""

    def __init__(self, model: Model, sources: LabelSources, recipe: Recipe, prompting: dict, seed: int,
                 workers: int, batch_size: int, first_step: int, scratch: Path, steps_ahead: int = 3,
                 first_index: int = 0):
        context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
        self.tasks, self.results = context.Queue(), context.Queue()
        self.version = context.Value("i", 0)
        self.weights = scratch / "prompting_weights.pt"
        self.publisher: threading.Thread | None = None
        # a rank's samples of a step start at `first_index` (training/distributed.py)
        self.groups = [(first_index + first, count) for first, count in volume_groups(batch_size,
                                                                                      recipe.targets_per_volume)]
        self.next_step = first_step
        self.publish(model.network)
        for _ in range(steps_ahead):
            self._queue_step()
        args = (model.spec, str(model.device), str(self.weights), self.version, self.tasks,
                self.results, sources, recipe, prompting, seed)
        self.processes = [context.Process(target=_work, args=args, daemon=True) for _ in range(workers)]
        with environment({name: "1" for name in SINGLE_THREAD_ENV}):
            for process in self.processes:
                process.start()

    def _queue_step(self) -> None:
        for first, count in self.groups:
            self.tasks.put((self.next_step, first, count))
        self.next_step += 1

    def batch(self, step: int, size: int) -> list[Sample]:
        """The next `size` finished samples (whichever steps they were drawn for)."""
        self._queue_step()
        samples = []
        while len(samples) < size:
            try:
                item = self.results.get(timeout=RESULT_TIMEOUT_S)
            except queue.Empty:
                raise RuntimeError(f"no training sample for {RESULT_TIMEOUT_S} s: the feed's workers are stuck") from None
            if isinstance(item, str):
                raise RuntimeError(f"a feed worker failed: {item}")
            x, target, *how = item  # float16: the trainer converts on its device
            samples.append(Sample(torch.from_numpy(x), torch.from_numpy(target), *how))
        return samples

    def publish(self, network: torch.nn.Module) -> None:
        """Hand the current weights to the workers (atomically; they reload before their next sample).

        Only the copy waits: the file is written in the background while the next step runs."""
        state = {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}
        self.wait_for_publisher()
        self.publisher = threading.Thread(target=self._write_weights, args=(state,), daemon=True)
        self.publisher.start()

    def _write_weights(self, state: dict[str, torch.Tensor]) -> None:
        tmp = self.weights.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.weights)
        with self.version.get_lock():
            self.version.value += 1

    def wait_for_publisher(self) -> None:
        if self.publisher is not None:
            self.publisher.join()
            self.publisher = None

    def close(self) -> None:
        self.wait_for_publisher()
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join(timeout=10)


def _work(spec: ModelSpec, device: str, weights: str, version, tasks, results, sources: LabelSources,
          recipe: Recipe, prompting: dict, seed: int) -> None:
    torch.set_num_threads(1)  # one process per core
    torch.set_num_interop_threads(1)
    device = torch.device(device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # one patch size: autotuned 3D convolutions pay off
    model = Model(spec, build_network(spec).to(device).eval(), device)
    seen = -1
    while True:
        step, first, count = tasks.get()
        try:
            if version.value != seen:
                seen = version.value
                model.network.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
            for sample in draw_samples(model, sources, recipe, prompting, seed, step, first, count):
                # half precision through the pipe: 4x faster to pass than float32 (98 -> 24 ms a 96^3 sample
                # on the 2-core machine) and finer than the bfloat16 the GPU step computes in
                results.put((sample.x.half().numpy(), sample.target.half().numpy(), sample.no_box, sample.rounds,
                             sample.volume_seconds, sample.passes_seconds, sample.seconds, sample.tile))
        except Exception as exc:  # reported to the trainer, which stops: a broken sampler must not go unseen
            results.put(f"step {step} samples {first}-{first + count - 1}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """These environment variables while the block runs (what processes started in it inherit), then as before."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
