"""The official per-case loop: a box call (if the case has boxes), then 5 click rounds.

Each call runs the predictor as a whole process in a fresh workspace and is timed around
it, as the evaluator times `docker run`. The inputs are re-saved before each round with
exactly the keys the evaluator writes (validation setting: no `gts`). The outputs folder is
not cleared between the calls of a case, so a call that writes nothing reuses the previous
answer, as in the evaluator.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .boxes import case_rng, organiser_boxes
from .metrics import auc, budget_seconds, case_classes, case_means, class_scores, over_budget
from .simulated_user import simulate_round
from .strata import DEFAULT_PATCH, stratum, target_extent

N_ROUNDS = 5
REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_COMMAND = f"sh {shlex.quote(str(REPO / 'predict.sh'))} {{inputs}} {{outputs}}"


class ProtocolError(RuntimeError):
    """The case cannot be scored (e.g. an answer of the wrong shape: the evaluator would abort)."""


@dataclass(frozen=True)
class Predictor:
    """A shell command with `{inputs}` and `{outputs}` placeholders."""

    command: str = DEFAULT_COMMAND

    def run(self, inputs: Path, outputs: Path, log: Path) -> float:
        """Run one call; returns its wall-clock seconds. Its output goes to `log`."""
        cmd = self.command.format(inputs=shlex.quote(str(inputs)), outputs=shlex.quote(str(outputs)))
        with open(log, "a") as out:
            out.write(f"$ {cmd}\n")
            out.flush()
            t0 = time.perf_counter()
            subprocess.run(cmd, shell=True, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            return time.perf_counter() - t0


def docker_predictor(image: str, gpu: bool) -> Predictor:
    """The evaluator's `docker container run` line for an image (GPU flag only when the host has one)."""
    gpus = '--gpus "device=0" ' if gpu else ""
    return Predictor(f"docker container run {gpus}-m 32G --rm -v {{inputs}}/:/workspace/inputs/ "
                     f"-v {{outputs}}/:/workspace/outputs/ {shlex.quote(image)} /bin/bash -c \"sh predict.sh\"")


@dataclass
class CaseResult:
    name: str
    n_classes: int
    times: list[float] = field(default_factory=list)  # calls 1..6; 0 for the missing box call
    dsc: list[float] = field(default_factory=list)
    nsd: list[float] = field(default_factory=list)
    error: str | None = None
    labels: list[int] = field(default_factory=list)  # the scored classes
    extents: list[int] = field(default_factory=list)  # per class: longest side of its bounding box (voxels)
    class_dsc: list[list[float]] = field(default_factory=list)  # per call, per class (their mean is `dsc`)
    class_nsd: list[list[float]] = field(default_factory=list)

    @property
    def total_time(self) -> float:
        return float(sum(self.times))

    @property
    def over_budget(self) -> bool:
        return over_budget(self.total_time, self.n_classes)


@dataclass
class TrainingCase:
    """A case in training format: image, labels, spacing as stored (x, y, z), boxes or None."""

    name: str
    imgs: np.ndarray
    gts: np.ndarray
    spacing: np.ndarray
    boxes: np.ndarray | None


def load_training_case(path: Path, no_box: bool = False, seed: int = 0) -> TrainingCase:
    """Read imgs/gts/spacing/boxes; boxes missing from the file are made as the organisers did."""
    with np.load(path, allow_pickle=True) as npz:
        if "gts" not in npz.files or "imgs" not in npz.files:
            raise ProtocolError(f"{path.name} needs 'imgs' and 'gts' (challenge training format)")
        imgs, gts, spacing = npz["imgs"], npz["gts"], npz["spacing"]
        boxes = npz["boxes"] if "boxes" in npz.files else None
    if gts.shape != imgs.shape:
        raise ProtocolError(f"{path.name}: gts shape {gts.shape} != imgs shape {imgs.shape}")
    if no_box:
        boxes = None
    elif boxes is None:
        boxes = np.array(organiser_boxes(gts, case_rng(path.name, seed)), dtype=object)
    return TrainingCase(path.name, imgs, gts, spacing, boxes)


def replay_case(case: TrainingCase, predictor: Predictor, workdir: Path, physical_spacing: bool = False) -> CaseResult:
    """Run the protocol for one case in a fresh workspace under `workdir`."""
    labels = case_classes(case.gts)  # the evaluator's classes: clicks and scores agree on them
    result = CaseResult(case.name, len(labels), labels=labels,
                        extents=[target_extent(case.gts == label) for label in labels])
    workspace = workdir / Path(case.name).stem
    shutil.rmtree(workspace, ignore_errors=True)
    inputs, outputs = workspace / "inputs", workspace / "outputs"
    inputs.mkdir(parents=True)
    outputs.mkdir()
    log = workspace / "predictor.log"
    boxed = {"boxes": case.boxes} if case.boxes is not None else {}

    def call(arrays: dict) -> None:
        np.savez_compressed(inputs / case.name, **arrays)
        result.times.append(predictor.run(inputs, outputs, log))
        record(*class_scores(case.gts, answer(), case.spacing, physical_spacing))

    def record(dsc: list[float], nsd: list[float], means: tuple[float, float] | None = None) -> None:
        result.class_dsc.append(dsc)
        result.class_nsd.append(nsd)
        case_dsc, case_nsd = means or case_means(dsc, nsd)
        result.dsc.append(case_dsc)
        result.nsd.append(case_nsd)

    def answer() -> np.ndarray:
        path = outputs / case.name
        if not path.is_file():
            return np.zeros_like(case.gts, dtype=np.uint8)
        with np.load(path, allow_pickle=True) as npz:
            segs = npz["segs"]
        if segs.shape != case.gts.shape:
            raise ProtocolError(f"answer of shape {segs.shape} for an image of shape {case.gts.shape}: "
                                "the official evaluator would abort every remaining case")
        return segs

    try:
        if case.boxes is not None:
            call({"imgs": case.imgs, "spacing": case.spacing, **boxed})
        else:  # the evaluator scores the missing box call as 0 in 0 s
            result.times.append(0.0)
            record([0.0] * len(labels), [0.0] * len(labels), (0.0, 0.0))
        clicks = [{"fg": [], "bg": []} for _ in labels]
        order: list[list[str | None]] = [[] for _ in labels]
        for _ in range(N_ROUNDS):
            segs = answer().astype(np.uint8)
            for i, click in enumerate(simulate_round(segs, case.gts, labels)):
                if click is None:
                    order[i].append(None)
                else:
                    clicks[i][click.kind].append(list(click.voxel))
                    order[i].append(click.kind)
            call({"imgs": case.imgs, "spacing": case.spacing, "clicks": clicks, "clicks_order": order,
                  "prev_pred": segs, **boxed})
    except ProtocolError as exc:
        result.error = str(exc)
    return result


def _padded(values: list[float]) -> list[float]:
    """Scores or times of calls 1..6, the calls a failed case never made as 0."""
    return values + [0.0] * (N_ROUNDS + 1 - len(values))


def _score_columns(dsc: list[float], nsd: list[float]) -> dict:
    dsc, nsd = _padded(dsc), _padded(nsd)
    row = {"DSC_AUC": auc(dsc), "NSD_AUC": auc(nsd), "DSC_Final": dsc[-1], "NSD_Final": nsd[-1]}
    row.update({f"DSC_{i + 1}": v for i, v in enumerate(dsc)})
    row.update({f"NSD_{i + 1}": v for i, v in enumerate(nsd)})
    return row


def official_row(result: CaseResult) -> dict:
    """The evaluator's CSV columns for one case (scores as computed, before the budget rule)."""
    row = {"CaseName": result.name, "TotalRunningTime": result.total_time}
    row.update({f"RunningTime_{i + 1}": t for i, t in enumerate(_padded(result.times))})
    row.update(_score_columns(result.dsc, result.nsd))
    row.update({"num_class": result.n_classes, "runtime_upperbound": budget_seconds(result.n_classes)})
    return row


def class_rows(result: CaseResult, patch: int = DEFAULT_PATCH) -> list[dict]:
    """One row per scored class: its extent, size stratum against `patch`, and its own scores per call and
    AUCs (the case's official scores are their means)."""
    rows = []
    for i, (label, extent) in enumerate(zip(result.labels, result.extents)):
        row = {"CaseName": result.name, "label": label, "extent": extent, "stratum": stratum(extent, patch)}
        row.update(_score_columns([d[i] for d in result.class_dsc], [n[i] for n in result.class_nsd]))
        rows.append(row)
    return rows
