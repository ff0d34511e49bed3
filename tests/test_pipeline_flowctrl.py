"""FlowCtrlPipeline: inputs of every kind, controls from Python, determinism, backends, flow model hook."""

import numpy as np
import pytest
import torch
from PIL import Image

from flowctrl.controls import Arrow, Controls, load_camera
from flowctrl.errors import InputError, MissingWeightsError
from flowctrl.pipelines import FlowCtrlOutput, FlowCtrlPipeline, WarpBackend, available_backends, get_backend
from flowctrl.pipelines import backends as backends_module
from flowctrl.pipelines.flowctrl_pipeline import default_size, load_image, resolve_size

pytestmark = pytest.mark.filterwarnings("ignore:no depth given")


def _uint8_image(h=24, w=32):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def _arrow_controls(h=24, w=32):
    return Controls(arrows=[Arrow(start=(10, 12), end=(18, 12))], image_size=(h, w))


def test_every_input_kind_gives_the_same_video(tmp_path):
    arr = _uint8_image()
    Image.fromarray(arr).save(tmp_path / "img.png")
    pipe = FlowCtrlPipeline()
    kinds = [
        arr,
        arr.astype(np.float32) / 255.0,
        Image.fromarray(arr),
        Image.fromarray(arr).convert("RGBA"),
        torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0,
        torch.from_numpy(arr).permute(2, 0, 1)[None],  # uint8 tensor
        tmp_path / "img.png",
        str(tmp_path / "img.png"),
    ]
    outs = [pipe(k, controls=_arrow_controls(), num_frames=3) for k in kinds]
    for out in outs[1:]:
        assert np.array_equal(out.frames, outs[0].frames)
    out = outs[0]
    assert isinstance(out, FlowCtrlOutput)
    assert out.frames.shape == (3, 24, 32, 3) and out.frames.dtype == np.uint8
    assert out.video.shape == (1, 3, 3, 24, 32) and out.flow.shape == (1, 3, 2, 24, 32)
    assert set(out.masks) >= {"holes", "local", "valid"}
    assert np.array_equal(out.frames[0], arr)  # frame 0 is the input, exactly
    assert arr.flags.writeable and np.array_equal(arr, _uint8_image())  # caller's array untouched


def test_python_controls_move_the_arrow_start_by_the_arrow():
    arr = _uint8_image()
    out = FlowCtrlPipeline()(arr, controls=_arrow_controls(), num_frames=5)
    # The arrow's start pixel moves by (end - start) at the last frame, linearly in between.
    assert torch.allclose(out.flow[0, -1, :, 12, 10], torch.tensor([8.0, 0.0]), atol=1e-3)
    assert torch.allclose(out.flow[0, 2, :, 12, 10], torch.tensor([4.0, 0.0]), atol=1e-3)
    assert torch.equal(out.flow[0, 0], torch.zeros(2, 24, 32))
    # the rendered last frame differs from the input around the arrow, but not in a far corner
    diff = np.abs(out.frames[-1].astype(int) - arr.astype(int)).sum(-1)
    assert diff[10:15, 12:22].mean() > 5 and diff[0:3, 29:32].max() == 0


def test_controls_are_rescaled_to_the_working_size():
    arr = _uint8_image()
    out = FlowCtrlPipeline()(arr, controls=_arrow_controls(), num_frames=3, height=48, width=64)
    assert out.frames.shape == (3, 48, 64, 3)
    assert torch.allclose(out.flow[0, -1, :, 24, 20], torch.tensor([16.0, 0.0]), atol=1e-2)


def test_deterministic_and_stateless():
    arr = _uint8_image()
    pipe = FlowCtrlPipeline()
    a = pipe(arr, controls=_arrow_controls(), num_frames=4, generator=torch.Generator().manual_seed(0))
    pipe(np.zeros((16, 16, 3), np.uint8), num_frames=2, fill="none")  # a different call in between
    b = pipe(arr, controls=_arrow_controls(), num_frames=4, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(a.frames, b.frames) and torch.equal(a.flow, b.flow)


def test_no_controls_is_a_still_video_and_camera_static_too():
    arr = _uint8_image()
    pipe = FlowCtrlPipeline()
    for controls in (None, Controls(camera=load_camera("static"), image_size=(24, 32))):
        out = pipe(arr, controls=controls, num_frames=3, depth=torch.full((1, 1, 24, 32), 2.0))
        assert all(np.array_equal(f, arr) for f in out.frames)


def test_camera_truck_translates_the_image():
    # A plane at depth 2 and a sideways camera move: the flow is one uniform shift, and the rendered
    # frame is the input shifted by it away from the border where new content enters: the bilinear
    # splat's blend by default, one bicubic sampling of the input with sharp=True.
    from flowctrl.flow.warp import backward_warp

    arr = _uint8_image(32, 32)
    img = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
    controls = Controls(camera=load_camera("truck-right"), image_size=(32, 32))
    depth = torch.full((1, 1, 32, 32), 2.0)
    out = FlowCtrlPipeline()(arr, controls=controls, num_frames=3, depth=depth, return_flow=True)
    f = out.flow[0, -1]
    assert torch.allclose(f, f[:, :1, :1].expand_as(f), atol=1e-3)  # uniform
    dx, dy = float(f[0, 0, 0]), float(f[1, 0, 0])
    assert abs(dx) > 1 and abs(dy) < 1e-3
    margin = int(np.ceil(abs(dx))) + 1
    inner = (slice(None), slice(None), slice(margin, 32 - margin))
    blended = backward_warp(img, -f[None])  # out(p) = img(p - shift), bilinear
    assert torch.allclose(out.video[0, -1][inner], blended[0][inner], atol=2e-3)
    assert out.masks["holes"][0, -1].any()  # content entered at one border
    sharp = FlowCtrlPipeline(sharp=True)(arr, controls=controls, num_frames=3, depth=depth)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    grid = torch.stack([(xs - dx) / 31, (ys - dy) / 31], -1)[None] * 2 - 1
    once = torch.nn.functional.grid_sample(img, grid, mode="bicubic", align_corners=True).clamp(0, 1)
    assert torch.allclose(sharp.video[0, -1][inner], once[0][inner], atol=2e-3)


def test_flat_depth_fallback_sits_at_the_orbit_look_at_depth_or_where_asked():
    # No depth: the plane goes to the trajectory's scene depth (an orbit keeps its look-at point, the
    # image centre, in place), or to plane_distance; truck parallax is inversely proportional to it.
    arr = _uint8_image(32, 32)
    orbit = Controls(camera=load_camera("orbit:degrees=20,depth=3"), image_size=(32, 32))
    with pytest.warns(UserWarning, match="no depth given"):
        out = FlowCtrlPipeline()(arr, controls=orbit, num_frames=3)
    assert float(out.depth.mean()) == pytest.approx(3.0)
    centre = out.flow[0, -1, :, 15:17, 15:17]
    assert float(centre.abs().max()) < 0.6  # the look-at point stays near the centre pixel
    truck = Controls(camera=load_camera("truck-right"), image_size=(32, 32))
    shifts = []
    for distance in (1.0, 2.0):
        with pytest.warns(UserWarning, match="no depth given"):
            out = FlowCtrlPipeline()(arr, controls=truck, num_frames=3, plane_distance=distance)
        shifts.append(float(out.flow[0, -1, 0].mean()))
    assert shifts[0] == pytest.approx(2 * shifts[1], rel=1e-4)


def test_default_and_requested_sizes():
    assert default_size(600, 450) == (512, 384)
    assert default_size(450, 600) == (384, 512)
    assert default_size(24, 32) == (24, 32)
    assert default_size(30, 21) == (32, 24)
    assert default_size(1080, 1920) == (288, 512)
    assert resolve_size((600, 450), None, 256) == (344, 256)
    assert resolve_size((600, 450), 100, 60) == (100, 60)
    pipe = FlowCtrlPipeline()
    for kw in ({"num_frames": 1}, {"height": 4096, "width": 64}, {"height": 4}):
        with pytest.raises(InputError):
            pipe(_uint8_image(), **kw)


def test_bad_image_inputs(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputError, match="cannot be read"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(InputError):
        load_image(np.zeros((4, 4, 5)))
    with pytest.raises(InputError):
        load_image(torch.full((3, 4, 4), float("nan")))


class _RecordingBackend:
    def __init__(self):
        self.calls = []

    def render(self, image, unified, *, num_frames, generator=None, callback=None, **kw):
        self.calls.append((tuple(image.shape), tuple(unified.flow.shape), num_frames, kw))
        if callback:
            callback("custom", 1, 1)
        return image[:, None].expand(1, num_frames, 3, *image.shape[-2:]) * 0.5


def test_custom_backend_object_and_callback():
    backend = _RecordingBackend()
    stages = []
    out = FlowCtrlPipeline(backend=backend)(_uint8_image(), controls=_arrow_controls(), num_frames=4,
                                            callback=lambda s, d, t: stages.append(s), prompt="a cat")
    assert backend.calls == [((1, 3, 24, 32), (1, 4, 2, 24, 32), 4, {"prompt": "a cat"})]
    assert "custom" in stages
    half = _uint8_image().astype(np.float64) * 0.5  # the backend's frames, as uint8 (rounding at .5 may go up)
    assert np.all(np.abs(out.frames[1] - half) <= 0.5 + 1e-6)


def test_warp_backend_progress_and_options():
    stages = []
    out = FlowCtrlPipeline(fill="none")(_uint8_image(), controls=_arrow_controls(), num_frames=4,
                                        callback=lambda s, d, t: stages.append((s, d, t)))
    assert ("splat", 4, 4) in stages and ("fill", 4, 4) in stages
    assert out.frames[-1][out.masks["holes"][0, -1, 0].numpy()].max() == 0  # holes left black
    with pytest.raises(InputError, match="no option"):
        FlowCtrlPipeline()(_uint8_image(), num_frames=2, bogus=1)
    FlowCtrlPipeline()(_uint8_image(), num_frames=2, prompt="ignored by warp")  # accepted, ignored


def test_flow_model_hook_replaces_the_analytic_flow():
    seen = {}

    def doubling_model(image, unified, num_inference_steps, generator, callback):
        seen["steps"] = num_inference_steps
        return unified.flow * 2 + 1  # frame 0 must be forced back to zero by the pipeline

    base = FlowCtrlPipeline()(_uint8_image(), controls=_arrow_controls(), num_frames=3)
    out = FlowCtrlPipeline(flow_model=doubling_model)(_uint8_image(), controls=_arrow_controls(), num_frames=3,
                                                      flow_steps=7)
    assert seen["steps"] == 7
    assert torch.equal(out.flow[0, 0], torch.zeros(2, 24, 32))
    assert torch.allclose(out.flow[0, 1:], base.flow[0, 1:] * 2 + 1)


def test_backend_registry_and_missing_backends(monkeypatch, tmp_path):
    assert {"warp", "diffusion"} <= set(available_backends())
    assert isinstance(get_backend("warp", fill="inpaint"), WarpBackend)
    with pytest.raises(InputError, match="unknown backend"):
        FlowCtrlPipeline(backend="nope")
    monkeypatch.setitem(backends_module._REGISTRY, "ghost", "flowctrl.pipelines.not_installed:Ghost")
    with pytest.raises(MissingWeightsError, match="not available"):
        FlowCtrlPipeline(backend="ghost")
    with pytest.raises(MissingWeightsError):
        FlowCtrlPipeline(backend="diffusion")  # no weights given
    with pytest.raises(MissingWeightsError):
        FlowCtrlPipeline.from_pretrained(tmp_path / "no-such-model")
    with pytest.raises(InputError):
        FlowCtrlPipeline(backend=object())
    # a lazily registered backend resolves on first use only
    monkeypatch.setitem(backends_module._REGISTRY, "warp2", "flowctrl.pipelines.backends:WarpBackend")
    assert isinstance(FlowCtrlPipeline(backend="warp2").backend, WarpBackend)


def test_output_indexes_like_a_diffusers_output():
    out = FlowCtrlPipeline()(_uint8_image(), num_frames=2, return_flow=False)
    assert out.flow is None and out.masks is None
    assert out.keys() == ("frames", "video")
    assert out["frames"] is out.frames and out[1] is out.video and len(out.to_tuple()) == 2
