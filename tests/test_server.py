"""The interactive server (inference/server/) driven on loopback by nnInteractive's own remote client,
nninteractive-client 2.6.0, unmodified: its target buffer must end up holding the batch predictor's answer."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import blosc2
import httpx
import numpy as np
import pytest
import torch
import uvicorn
from nnInteractive.inference.remote import (
    ServerAtCapacityError,
    SessionExpiredError,
    nnInteractiveRemoteInferenceSession,
)
from nnInteractive.inference.remote.serialization import pack_array, unpack_array

from inference import predict
from inference.case_io import ClassPrompt
from inference.harness.simulated_user import simulate_click
from inference.pipelines import load_model, read_spec
from inference.predict import DEFAULT_MODEL
from inference.segmenter import Segmenter
from inference.server import wire
from inference.server.__main__ import refusal, parse_args
from inference.server.app import ServerSettings, make_app
from inference.server.inputs import prompt_box
from nninteractive_fixtures import small_layout
from scripts.try_server import wait_for

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo" / "inputs"


@pytest.fixture(scope="module")
def model():
    """The default model as the server loads it: OpenVINO on the CPU, every box drawn as given."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    return load_model(DEFAULT_MODEL, torch.device("cpu"), box_mode="slab", backend="auto")


@contextmanager
def serving(model, trained_box: str = "slab", **settings):
    """The app on a free loopback port, in a thread of this process; yields its URL."""
    server = uvicorn.Server(uvicorn.Config(make_app(model, ServerSettings(**settings), trained_box), host="127.0.0.1",
                                           port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def demo(name: str, label: int = 1):
    """(image, truth of `label`, spacing in array order) of a demo case."""
    with np.load(DEMO / name, allow_pickle=True) as npz:
        return npz["imgs"], npz["gts"] == label, tuple(float(s) for s in npz["spacing"][::-1])


def box_of(truth: np.ndarray) -> list[list[int]]:
    """The truth's bounding box, half-open, as a viewer sends it."""
    where = np.nonzero(truth)
    return [[int(w.min()), int(w.max()) + 1] for w in where]


def batch_answer(tmp: Path, model, image, spacing, prompt: ClassPrompt, previous: np.ndarray | None) -> np.ndarray:
    """The batch predictor's answer (`predict.run`, no budget) to a challenge file of this one class."""
    arrays = {"imgs": image, "spacing": np.asarray(spacing[::-1])}
    if prompt.box is not None:
        b = prompt.box
        arrays["boxes"] = np.array([{"z_min": b.lo[0], "z_max": b.hi[0], "z_mid": b.z_mid, "z_mid_y_min": b.lo[1],
                                     "z_mid_y_max": b.hi[1], "z_mid_x_min": b.lo[2], "z_mid_x_max": b.hi[2]}])
    if prompt.order:
        arrays["clicks"] = np.array([{"fg": prompt.fg.tolist(), "bg": prompt.bg.tolist()}], dtype=object)
        arrays["clicks_order"] = np.array([list(prompt.order)], dtype=object)
        arrays["prev_pred"] = previous
    inputs, outputs = tmp / "in", tmp / "out"
    inputs.mkdir(parents=True, exist_ok=True)
    outputs.mkdir(parents=True, exist_ok=True)
    for old in inputs.glob("*.npz"):
        old.unlink()
    np.savez(inputs / "case.npz", **arrays)
    assert predict.run(inputs, outputs, model, use_budget=False) == 0
    with np.load(outputs / "case.npz") as answer:
        return answer["segs"] == 1


def client(url: str, **kwargs) -> nnInteractiveRemoteInferenceSession:
    return nnInteractiveRemoteInferenceSession(url, **kwargs)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


# ----------------------------------------------------------------------------- answers


@pytest.mark.parametrize("name, with_box", [("CT_demo_box.npz", True), ("MR_demo_nobox.npz", False)])
def test_a_box_then_clicks_give_the_batch_predictors_masks(model, tmp_path, name, with_box):
    image, truth, spacing = demo(name)
    prompt = ClassPrompt(1)
    with serving(model) as url, client(url) as session:
        session.set_image(image[None], {"spacing": list(spacing)})
        buffer = np.zeros(image.shape, np.uint8)
        session.set_target_buffer(buffer)
        previous = np.zeros(image.shape, np.uint8)
        if with_box:
            box = box_of(truth)
            changed = session.add_bbox_interaction(box, include_interaction=True)
            prompt.box = prompt_box(box, spacing, image.shape, extend_2d=True)
            expected = batch_answer(tmp_path, model, image, spacing, prompt, None)
            assert np.array_equal(buffer != 0, expected) and changed is not None
            previous = buffer.copy()
        for _ in range(3):
            click = simulate_click(buffer != 0, truth)
            if click is None:
                break
            session.add_point_interaction(click.voxel, include_interaction=click.kind == "fg")
            point = np.array([click.voxel])
            prompt.fg, prompt.bg = (np.concatenate([prompt.fg, point]), prompt.bg) if click.kind == "fg" \
                else (prompt.fg, np.concatenate([prompt.bg, point]))
            prompt.order = (*prompt.order, click.kind)
            expected = batch_answer(tmp_path, model, image, spacing, prompt, previous)
            assert np.array_equal(buffer != 0, expected), f"after the click {click}"
            previous = buffer.copy()
    assert dice(buffer != 0, truth) > 0.8


def test_the_answer_travels_as_the_changed_block_only(model):
    image, truth, spacing = demo("CT_demo_box.npz")
    with serving(model) as url, client(url) as session:
        session.set_image(image[None])
        buffer = np.zeros(image.shape, np.int32)  # any integer buffer: the client casts the block
        session.set_target_buffer(buffer)
        first = session.add_bbox_interaction(box_of(truth), include_interaction=True)
        outside = np.ones(image.shape, bool)
        outside[tuple(slice(a, b) for a, b in first)] = False
        assert buffer[~outside].any() and not buffer[outside].any()
        buffer[outside] = 7  # the server never writes outside the block it reports
        second = session.add_point_interaction([int(np.mean(w)) for w in np.nonzero(truth)], include_interaction=False)
        untouched = outside.copy()
        untouched[tuple(slice(a, b) for a, b in second)] = False
        assert untouched.any() and (buffer[untouched] == 7).all()


def test_predict_undo_reset_and_autozoom(model):
    image, truth, _ = demo("CT_demo_box.npz")
    with serving(model) as url, client(url) as session:
        session.set_image(image[None])
        buffer = np.zeros(image.shape, np.uint8)
        session.set_target_buffer(buffer)
        assert session.supports_undo and not session.undo()  # nothing to undo yet
        session.add_bbox_interaction(box_of(truth), include_interaction=True, run_prediction=False)
        assert not buffer.any()
        assert session._predict() is not None and buffer.any()
        assert session._predict() is None  # nothing queued
        after_box = buffer.copy()
        centre = [int(np.mean(w)) for w in np.nonzero(truth)]
        session.add_point_interaction(centre, include_interaction=False)
        assert not np.array_equal(buffer, after_box)
        assert session.undo() and np.array_equal(buffer, after_box)
        session.set_do_autozoom(False)
        session.reset_interactions()
        assert not buffer.any()
    with serving(model, undo=False) as url, client(url) as session:
        assert not session.supports_undo
        session.set_image(image[None])
        buffer = np.zeros(image.shape, np.uint8)
        session.set_target_buffer(buffer)
        session.add_bbox_interaction(box_of(truth), include_interaction=True)
        assert not session.undo() and buffer.any()
        session.add_initial_seg_interaction(truth.astype(np.uint8))
        assert not session.undo() and np.array_equal(buffer != 0, truth)


def test_2d_boxes_lassos_and_an_initial_segmentation(model, tmp_path):
    image, truth, spacing = demo("CT_demo_box.npz")
    (z0, z1), (y0, y1), (x0, x1) = box_of(truth)
    z = (z0 + z1) // 2
    with serving(model) as url, client(url) as session:
        session.set_image(image[None], {"spacing": list(spacing)})
        buffer = np.zeros(image.shape, np.uint8)
        session.set_target_buffer(buffer)
        for box in ([[z, z + 1], [y0, y1], [x0, x1]], [[z0, z1], [y0, y1], [(x0 + x1) // 2, (x0 + x1) // 2 + 1]]):
            session.reset_interactions()
            session.add_bbox_interaction(box, include_interaction=True)
            assert dice(buffer != 0, truth) > 0.8, box  # made 3D: the default model was trained on 3D boxes
        lasso = np.zeros((1, y1 - y0, x1 - x0), np.uint8)
        lasso[0, 1:-1, :] = 1
        lasso[0, 0, 3] = lasso[0, -1, 3] = 1  # its bounding box is the 2D box on slice z
        session.reset_interactions()
        session.add_lasso_interaction(lasso, include_interaction=True, interaction_bbox=[[z, z + 1], [y0, y1], [x0, x1]])
        from_lasso = buffer.copy()
        session.reset_interactions()
        session.add_bbox_interaction([[z, z + 1], [y0, y1], [x0, x1]], include_interaction=True)
        assert from_lasso.any() and np.array_equal(from_lasso, buffer)
        # the initial segmentation is the previous mask of the next click
        initial = np.zeros(image.shape, np.uint8)
        initial[tuple(slice(a, b) for a, b in box_of(truth))] = 1
        session.add_initial_seg_interaction(initial)
        assert np.array_equal(buffer, initial)
        centre = [int(np.mean(w)) for w in np.nonzero(truth)]
        session.add_point_interaction(centre, include_interaction=True)
        prompt = ClassPrompt(1, fg=np.array([centre]), order=("fg",))
        assert np.array_equal(buffer != 0, batch_answer(tmp_path, model, image, spacing, prompt, initial))


def test_negative_boxes_and_scribbles_are_refused_with_a_reason(model):
    image, truth, _ = demo("CT_demo_box.npz")
    with serving(model) as url, client(url) as session:
        assert session.supported_interactions["scribble"] is False
        session.set_image(image[None])
        session.set_target_buffer(np.zeros(image.shape, np.uint8))
        with pytest.raises(httpx.HTTPStatusError) as refused:
            session.add_bbox_interaction(box_of(truth), include_interaction=False)
        assert refused.value.response.status_code == 422 and "negative" in refused.value.response.json()["detail"]
        with pytest.raises(httpx.HTTPStatusError) as refused:
            session.add_scribble_interaction(truth.astype(np.uint8), include_interaction=True)
        assert refused.value.response.status_code == 422 and "scribble" in refused.value.response.json()["detail"]


def test_an_nninteractive_layout_is_served_by_its_own_pipeline(tmp_path):
    folder = small_layout(tmp_path / "layout")
    trained_box = read_spec(folder).prompts.box
    layout_model = load_model(folder, torch.device("cpu"), box_mode="slab")
    image, truth, spacing = demo("CT_demo_box.npz")
    (z0, z1), (y0, y1), (x0, x1) = box_of(truth)
    z = (z0 + z1) // 2
    with serving(layout_model, trained_box) as url, client(url) as session:
        assert session.license == "CC BY-NC-SA 4.0" and session.interaction_decay == pytest.approx(0.98)
        session.set_image(image[None])
        buffer = np.zeros(image.shape, np.uint8)
        session.set_target_buffer(buffer)
        session.add_bbox_interaction([[z, z + 1], [y0, y1], [x0, x1]], include_interaction=True)
        session.add_point_interaction([z, (y0 + y1) // 2, (x0 + x1) // 2], include_interaction=True)
    # the 2D box as drawn (the weights were trained on 2D boxes), then the click over the box's answer
    prompt = ClassPrompt(1, box=prompt_box([[z, z + 1], [y0, y1], [x0, x1]], spacing, image.shape, extend_2d=False))
    segmenter = Segmenter(layout_model)
    segmenter.set_image(image)
    first = segmenter.mask(prompt, previous=np.zeros(image.shape, np.uint8)).astype(np.uint8)
    prompt.fg, prompt.order = np.array([[z, (y0 + y1) // 2, (x0 + x1) // 2]]), ("fg",)
    assert np.array_equal(buffer != 0, segmenter.mask(prompt, previous=first))


# ----------------------------------------------------------------------------- many clients


def test_four_concurrent_clients_get_their_own_answers(model):
    cases = [demo("CT_demo_box.npz", 1), demo("CT_demo_box.npz", 2), demo("MR_demo_nobox.npz", 1),
             (np.ascontiguousarray(demo("CT_demo_box.npz", 1)[0][:, ::-1]), demo("CT_demo_box.npz", 1)[1][:, ::-1],
              (2.0, 1.0, 1.0))]

    def segment(case) -> np.ndarray:
        image, truth, spacing = case
        with client(url) as session:
            session.set_image(image[None], {"spacing": list(spacing)})
            buffer = np.zeros(image.shape, np.uint8)
            session.set_target_buffer(buffer)
            session.add_bbox_interaction(box_of(truth), include_interaction=True)
            return buffer

    with serving(model, max_sessions=4) as url:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(segment, cases))
        for case, answer in zip(cases, answers):
            alone = segment(case)
            assert answer.any() and np.array_equal(answer, alone)


def test_a_full_server_answers_503_and_a_released_slot_is_free_again(model):
    with serving(model, max_sessions=1) as url:
        first = client(url)
        with pytest.raises(ServerAtCapacityError):
            client(url)
        refused = httpx.post(url + wire.CLAIM)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "10"
        first.close()
        with client(url) as second:
            assert second.lease_status()["remaining_seconds"] > 0


def test_expired_and_unknown_leases_answer_410(model):
    image, _, _ = demo("MR_demo_nobox.npz")
    with serving(model, idle_timeout=2.0, liveness_timeout=0.6) as url:
        session = client(url)
        time.sleep(0.9)  # no request at all for longer than the liveness timeout
        with pytest.raises(SessionExpiredError):
            session.set_image(image[None])
        # heartbeats keep a session alive, but only interactions keep it from going idle
        token = httpx.post(url + wire.CLAIM).json()["lease_token"]
        claimed = time.monotonic()
        for _ in range(4):
            time.sleep(0.3)
            assert httpx.post(url + wire.HEARTBEAT, headers={wire.LEASE_HEADER: token}).status_code == 200
        time.sleep(max(0.0, 2.2 - (time.monotonic() - claimed)))
        gone = httpx.post(url + wire.HEARTBEAT, headers={wire.LEASE_HEADER: token})
        assert gone.status_code == 410 and "expired" in gone.json()["detail"]
        for headers in ({}, {wire.LEASE_HEADER: "not-a-lease"}):
            assert httpx.post(url + wire.RESET_INTERACTIONS, headers=headers).status_code == 410
        token = httpx.post(url + wire.CLAIM).json()["lease_token"]
        assert httpx.post(url + wire.RELEASE, headers={wire.LEASE_HEADER: token}).status_code == 200
        assert httpx.get(url + wire.LEASE_STATUS, headers={wire.LEASE_HEADER: token}).status_code == 410


def test_the_api_key_is_required_by_every_endpoint_but_healthz(model):
    with serving(model, api_key="s3cret") as url:
        assert httpx.get(url + wire.HEALTHZ).json() == {"ok": True}
        for path, method in ((wire.CAPABILITIES, "GET"), (wire.CLAIM, "POST"), (wire.SET_IMAGE, "POST"),
                             (wire.ADD_POINT, "POST"), (wire.LEASE_STATUS, "GET")):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                answer = httpx.request(method, url + path, headers=headers)
                assert answer.status_code == 401, (path, headers)
        with pytest.raises(httpx.HTTPStatusError) as refused:
            client(url)
        assert refused.value.response.status_code == 401
        with client(url, api_key="s3cret") as session:
            assert session.supported_interactions["points"]


# ----------------------------------------------------------------------------- bad input


def packed(array: np.ndarray) -> bytes:
    return pack_array(array, filters=[blosc2.Filter.NOFILTER])


def bad_requests(image: np.ndarray) -> list[tuple[str, str, dict, int]]:
    """(name, path, httpx keyword arguments, expected status) of requests a server must refuse."""
    shape = list(image.shape)
    meta = {wire.META_HEADER: json.dumps({"image_properties": {}})}
    axis = 8 + len("uint8")  # where the shape starts in a packed uint8 array: 8 bytes of header, then the name
    huge = bytearray(packed(np.zeros((1, 4, 4, 4), np.uint8)))
    huge[axis:axis + 8] = np.int64(1 << 20).tobytes()  # declares 2^20 x 4 x 4 x 4 voxels
    truncated = packed(np.ones((1, *shape), np.uint8))[:-9]
    lying = bytearray(packed(np.ones((1, *shape), np.uint8)))
    lying[axis + 8:axis + 16] = np.int64(shape[0] - 1).tobytes()  # a shape that does not match the payload
    object_dtype = bytearray(packed(np.ones((1, 2, 2, 2), np.uint8)))
    object_dtype[7:7 + 5] = b"objec"  # a 5-letter dtype name where "uint8" was
    nan = np.full((1, *shape), np.nan, np.float32)

    def body(content: bytes, headers: dict | None = None) -> dict:
        return {"content": bytes(content), "headers": {**meta, **(headers or {})}}

    def js(payload) -> dict:
        return {"content": json.dumps(payload).encode(), "headers": {"Content-Type": "application/json"}}

    point = {"include_interaction": True}
    box = {"include_interaction": True}
    return [
        ("image not packed", wire.SET_IMAGE, body(b"hello world, this is not an array"), 400),
        ("image truncated", wire.SET_IMAGE, body(truncated), 400),
        ("image shape lies", wire.SET_IMAGE, body(lying), 400),
        ("image dtype object", wire.SET_IMAGE, body(object_dtype), 400),
        ("image 3D", wire.SET_IMAGE, body(packed(image)), 400),
        ("image two channels", wire.SET_IMAGE, body(packed(np.stack([image, image]))), 400),
        ("image complex", wire.SET_IMAGE, body(packed(image[None].astype(np.complex64))), 400),
        ("image too large", wire.SET_IMAGE, body(huge), 413),
        ("image NaN", wire.SET_IMAGE, body(packed(nan)), 400),
        ("image meta not JSON", wire.SET_IMAGE, body(packed(image[None]), {wire.META_HEADER: "{nope"}), 400),
        ("image spacing negative", wire.SET_IMAGE,
         body(packed(image[None]), {wire.META_HEADER: json.dumps({"image_properties": {"spacing": [1, -1, 1]}})}), 400),
        ("image spacing text", wire.SET_IMAGE,
         body(packed(image[None]), {wire.META_HEADER: json.dumps({"image_properties": {"spacing": "1mm"}})}), 400),
        ("buffer wrong shape", wire.SET_TARGET_BUFFER, js({"shape": [1, 2, 3], "dtype": "uint8"}), 400),
        ("buffer float", wire.SET_TARGET_BUFFER, js({"shape": shape, "dtype": "float32"}), 400),
        ("buffer dtype junk", wire.SET_TARGET_BUFFER, js({"shape": shape, "dtype": "O; rm -rf"}), 400),
        ("buffer shape text", wire.SET_TARGET_BUFFER, js({"shape": "abc", "dtype": "uint8"}), 400),
        ("buffer body not JSON", wire.SET_TARGET_BUFFER, {"content": b"\xff\xfe{"}, 400),
        ("buffer body a list", wire.SET_TARGET_BUFFER, js([1, 2, 3]), 400),
        ("autozoom not a bool", wire.SET_DO_AUTOZOOM, js({"do_autozoom": "yes"}), 400),
        ("box outside", wire.ADD_BBOX, js({**box, "bbox_coords": [[500, 510], [0, 5], [0, 5]]}), 400),
        ("box empty axis", wire.ADD_BBOX, js({**box, "bbox_coords": [[5, 5], [0, 5], [0, 5]]}), 400),
        ("box a line", wire.ADD_BBOX, js({**box, "bbox_coords": [[5, 6], [0, 1], [0, 5]]}), 400),
        ("box two axes", wire.ADD_BBOX, js({**box, "bbox_coords": [[0, 5], [0, 5]]}), 400),
        ("box text", wire.ADD_BBOX, js({**box, "bbox_coords": [["a", "b"], [0, 5], [0, 5]]}), 400),
        ("box without include", wire.ADD_BBOX, js({"bbox_coords": [[0, 5], [0, 5], [0, 5]]}), 400),
        ("point outside", wire.ADD_POINT, js({**point, "coordinates": [0, 0, shape[2]]}), 400),
        ("point negative", wire.ADD_POINT, js({**point, "coordinates": [-1, 0, 0]}), 400),
        ("point NaN", wire.ADD_POINT, {"content": b'{"include_interaction": true, "coordinates": [NaN, 1, 1]}'}, 400),
        ("point 2D", wire.ADD_POINT, js({**point, "coordinates": [1, 1]}), 400),
        ("point include text", wire.ADD_POINT, js({"include_interaction": "true", "coordinates": [1, 1, 1]}), 400),
        ("lasso wrong shape", wire.ADD_LASSO,
         body(packed(np.ones((1, 3, 3), np.uint8)), {wire.META_HEADER: json.dumps(point)}), 400),
        ("lasso box outside", wire.ADD_LASSO, body(packed(np.ones((1, 3, 3), np.uint8)), {wire.META_HEADER: json.dumps(
            {**point, "interaction_bbox": [[0, 1], [0, 3], [shape[2] - 1, shape[2] + 2]]})}), 400),
        ("lasso empty", wire.ADD_LASSO, body(packed(np.zeros(shape, np.uint8)), {wire.META_HEADER: json.dumps(point)}), 400),
        ("initial seg wrong shape", wire.ADD_INITIAL_SEG, body(packed(np.ones((2, 2, 2), np.uint8))), 400),
        ("scribble", wire.ADD_SCRIBBLE, body(packed(np.ones(shape, np.uint8))), 422),
        ("predict flag text", wire.PREDICT, js({"force_full_refine": 1}), 400),
    ]


def test_every_bad_input_is_a_4xx_with_a_message_and_the_server_lives_on(model):
    image, truth, _ = demo("MR_demo_nobox.npz")
    with serving(model, max_image_voxels=2 * image.size) as url:
        other = client(url)  # a session that must not notice
        other.set_image(image[None])
        other_buffer = np.zeros(image.shape, np.uint8)
        other.set_target_buffer(other_buffer)
        centre = [int(np.mean(w)) for w in np.nonzero(truth)]
        other.add_point_interaction(centre, include_interaction=True)
        before = other_buffer.copy()
        with httpx.Client(base_url=url, timeout=60) as http:
            token = http.post(wire.CLAIM).json()["lease_token"]
            http.headers[wire.LEASE_HEADER] = token
            # before any image: interactions are refused
            early = http.post(wire.ADD_POINT, json={"include_interaction": True, "coordinates": [1, 1, 1]})
            assert early.status_code == 409 and "set_image" in early.json()["detail"]
            for name, path, request, status in bad_requests(image):
                if path != wire.SET_IMAGE:
                    ok = http.post(wire.SET_IMAGE, content=packed(image[None]))
                    assert ok.status_code == 200
                    assert http.post(wire.SET_TARGET_BUFFER, json={"shape": list(image.shape), "dtype": "uint8"}).is_success
                answer = http.post(path, **request)
                assert answer.status_code == status, (name, answer.status_code, answer.text)
                detail = answer.json()["detail"]
                assert isinstance(detail, str) and detail and "\n" not in detail, name
                assert http.get(wire.HEALTHZ).status_code == 200, name
            gone = http.post(wire.SET_IMAGE, content=packed(image[None]), headers={wire.LEASE_HEADER: "stolen"})
            assert gone.status_code == 410
        # the other session kept its image, its mask and its prompt: its next answer is the one it would have been
        other.add_point_interaction(centre, include_interaction=True)
        other.close()
    segmenter = Segmenter(model)
    segmenter.set_image(image)
    prompt = ClassPrompt(1, fg=np.array([centre, centre]), order=("fg", "fg"))
    assert before.any() and np.array_equal(other_buffer != 0, segmenter.mask(prompt, previous=before))


def test_packed_arrays_travel_both_ways_between_the_client_and_the_server():
    rng = np.random.default_rng(0)
    for dtype in ("bool", "uint8", "int16", "uint16", "int32", "float16", "float32", "float64"):
        array = (rng.random((3, 5, 7)) * 100).astype(dtype)
        assert np.array_equal(wire.unpack(pack_array(array), 3, array.size, "x"), array)
        assert np.array_equal(unpack_array(wire.pack(array)), array)
    zeros = np.zeros((1, 3, 7), np.uint8)  # an all-zero block of a length no typesize of 8 divides
    assert np.array_equal(unpack_array(wire.pack(zeros)), zeros)
    with pytest.raises(wire.ClientError) as refused:
        wire.unpack(pack_array(np.zeros((10, 10, 10), np.uint8)), 3, 999, "mask")
    assert refused.value.status == 413


# ----------------------------------------------------------------------------- the command line


def test_listening_beyond_loopback_needs_a_key():
    assert refusal(parse_args(["--host", "127.0.0.1"])) is None
    assert refusal(parse_args(["--host", "0.0.0.0", "--api-key", "k"])) is None
    assert "API key" in refusal(parse_args(["--host", "0.0.0.0"]))
    started = subprocess.run([sys.executable, "-m", "inference.server", "--host", "0.0.0.0"], cwd=REPO,
                             capture_output=True, text=True, timeout=120, env={**os.environ, "NN_INTERACTIVE_API_KEY": ""})
    assert started.returncode == 2
    assert started.stderr.strip().count("\n") == 0 and "without an API key" in started.stderr


def test_the_command_serves_the_default_model():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "inference.server", "--port", str(port), "--api-key", "k"],
                              cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for(url, 120), server.stderr.read()
        image, truth, _ = demo("MR_demo_nobox.npz")
        with client(url, api_key="k") as session:
            assert session.channel_mapping["points"] == (1, 2)
            session.set_image(image[None])
            buffer = np.zeros(image.shape, np.uint8)
            session.set_target_buffer(buffer)
            session.add_point_interaction([int(np.mean(w)) for w in np.nonzero(truth)], include_interaction=True)
        assert dice(buffer != 0, truth) > 0.5
    finally:
        server.terminate()
        server.wait(timeout=30)
