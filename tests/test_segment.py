"""Object-aware spreading: regions from image edges and from SAM, their use in stage 1, warnings, CLI."""
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from flowctrl.controls import Controls
from flowctrl.controls.arrows import Arrow
from flowctrl.flow.densify import gaussian_densify
from flowctrl.pipelines.stage1 import ControlWarning, compute_unified_flow
from flowctrl.segment import EdgeSegmenter, SegmentFallbackWarning, object_regions, resolve_segmenter

REPO = Path(__file__).resolve().parents[1]
RED = (slice(16, 48), slice(12, 44))   # rows, cols of the left object
BLUE = (slice(16, 48), slice(52, 84))  # the right object, 8 px of background between them


def two_objects() -> torch.Tensor:
    """``(1, 3, 64, 96)``: a red and a blue flat square on grey."""
    img = torch.full((1, 3, 64, 96), 0.5)
    img[0, :, RED[0], RED[1]] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    img[0, :, BLUE[0], BLUE[1]] = torch.tensor([0.1, 0.2, 0.9])[:, None, None]
    return img


def arrow_controls(start=(28.0, 32.0), end=(36.0, 28.0), **kw) -> Controls:
    return Controls(arrows=[Arrow(start=start, end=end, **kw)], image_size=(64, 96))


def test_edges_arrow_moves_its_object_and_leaves_the_neighbour_still():
    uf = compute_unified_flow(two_objects(), arrow_controls(), 5, segment="edges")
    last = uf.flow[0, -1]
    target = torch.tensor([8.0, -4.0])
    on_red = last[:, RED[0], RED[1]].reshape(2, -1)
    on_blue = last[:, BLUE[0], BLUE[1]].reshape(2, -1)
    follow = float((on_red.median(dim=1).values - target).norm() / target.norm())
    leak = float(on_blue.norm(dim=0).max() / target.norm())
    assert follow < 0.05
    assert leak < 0.01
    # today's spread (segment none) sheets over the neighbour: the difference is the segmentation's
    old = compute_unified_flow(two_objects(), arrow_controls(), 5, segment="none").flow[0, -1]
    assert float(old[:, BLUE[0], BLUE[1]].norm(dim=0).mean() / target.norm()) > 0.15


def test_edges_region_holds_its_start_point_and_stops_at_the_edge():
    regions = EdgeSegmenter()(two_objects(), [torch.tensor([[28.0, 32.0]]), torch.tensor([[68.0, 30.0]])])
    assert regions.shape == (2, 64, 96)
    assert float(regions[0, 32, 28]) == pytest.approx(1.0)
    assert float(regions[1, 30, 68]) == pytest.approx(1.0)
    assert float(regions[0][RED].mean()) > 0.99 and float(regions[0][BLUE].max()) == 0.0
    assert float(regions[1][BLUE].mean()) > 0.99 and float(regions[1][RED].max()) == 0.0


def test_segment_none_is_the_previous_densification():
    controls = Controls(arrows=[Arrow(start=(28.0, 32.0), end=(36.0, 28.0)), Arrow(start=(70.0, 20.0), end=(64.0, 30.0))],
                        image_size=(64, 96))
    uf = compute_unified_flow(two_objects(), controls, 5, segment="none")
    expected = gaussian_densify(uf.sparse_flow, uf.sparse_mask, normalized=True)
    expected[:, 0] = 0.0
    torch.testing.assert_close(uf.flow, expected, atol=1e-4, rtol=1e-4)


def test_user_mask_still_wins_over_the_segmentation():
    mask = torch.zeros(1, 64, 96, dtype=torch.bool)
    mask[0, 20:40, 20:40] = True
    uf = compute_unified_flow(two_objects(), arrow_controls(mask=mask), 5, segment="edges")
    moved = uf.flow[0, -1].norm(dim=0) > 1e-6
    assert bool(moved[20:40, 20:40].all())
    assert not bool(moved[~mask[0]].any())


def test_warns_when_an_arrow_starts_outside_its_mask_and_when_nothing_is_given():
    mask = torch.zeros(1, 64, 96, dtype=torch.bool)
    mask[0, 40:60, 60:90] = True
    with pytest.warns(ControlWarning, match="outside its own mask"):
        compute_unified_flow(two_objects(), arrow_controls(mask=mask), 3, segment="none")
    with pytest.warns(ControlWarning, match="no control given"):
        compute_unified_flow(two_objects(), None, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ControlWarning)
        compute_unified_flow(two_objects(), arrow_controls(), 3, segment="none")  # a plain arrow: silent


def test_auto_falls_back_to_edges_with_one_warning(monkeypatch):
    import flowctrl.segment as seg

    monkeypatch.setattr(seg, "sam_available", lambda name=seg.DEFAULT_SAM: False)
    with pytest.warns(SegmentFallbackWarning, match="no Segment Anything weights"):
        s = resolve_segmenter("auto")
    assert isinstance(s, EdgeSegmenter)
    assert resolve_segmenter("none") is None


def test_regions_are_cached_per_image(monkeypatch):
    segmenter = resolve_segmenter("edges")
    calls = []
    original = EdgeSegmenter.__call__

    def counting(self, image, groups):
        calls.append(len(groups))
        return original(self, image, groups)

    monkeypatch.setattr(EdgeSegmenter, "__call__", counting)
    image = two_objects() * 0.99  # content not seen by other tests
    a = object_regions(image, [torch.tensor([[28.0, 32.0]])], segmenter)
    b = object_regions(image, [torch.tensor([[28.0, 32.0]]), torch.tensor([[68.0, 30.0]])], segmenter)
    assert calls == [1, 1]  # the second call segments only the new seed
    torch.testing.assert_close(a[0], b[0])


def _tiny_sam(folder: Path) -> Path:
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    vision = SamVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, output_channels=16, image_size=64,
                             patch_size=8, mlp_dim=32, global_attn_indexes=[0], window_size=4, num_pos_feats=8)
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16)
    torch.manual_seed(0)
    SamModel(SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                       mask_decoder_config=decoder.to_dict())).save_pretrained(folder)
    SamProcessor(SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})).save_pretrained(folder)
    return folder


def test_sam_prompts_points_in_the_model_frame_and_its_mask_bounds_the_motion(tmp_path):
    folder = _tiny_sam(tmp_path / "sam")
    segmenter = resolve_segmenter(str(folder))
    seen = []
    forward = segmenter.model.forward

    def spy(*args, **kwargs):
        if kwargs.get("input_points") is not None:
            seen.append(kwargs["input_points"].clone())
        return forward(*args, **kwargs)

    segmenter.model.forward = spy
    image = two_objects()  # 64 x 96: SAM's long side 64 scales (x, y) by 64 / 96
    regions = segmenter(image, [torch.tensor([[28.0, 32.0]]), torch.tensor([[68.0, 30.0], [72.0, 40.0]])])
    assert regions.shape == (2, 64, 96) and set(regions.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(seen[0].reshape(-1, 2), torch.tensor([[28.0, 32.0]]) * 64 / 96, atol=0.5, rtol=0)
    torch.testing.assert_close(seen[1].reshape(-1, 2), torch.tensor([[68.0, 30.0], [72.0, 40.0]]) * 64 / 96, atol=0.5, rtol=0)
    # stage 1 moves exactly SAM's region of the arrow (random weights: whatever mask it gives)
    uf = compute_unified_flow(image, arrow_controls(), 4, segment=str(folder))
    region = segmenter(image, [torch.tensor([[28.0, 32.0]])])[0] > 0.5
    moved = uf.flow[0, -1].norm(dim=0) > 1e-4
    assert torch.equal(moved, region)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "flowctrl", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


def test_cli_missing_sam_weights_is_one_line(tmp_path):
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    for segment in (str(tmp_path / "no-such-sam"), "someone/sam-not-cached"):
        proc = _cli("flow", "--image", "examples/astronaut.png", "--arrows", "examples/a.json", "--size", "64x64",
                    "--frames", "3", "--segment", segment, "-o", str(tmp_path / "f.npy"), env=env)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and "segment" in proc.stderr
        assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1, proc.stderr


def test_preview_tints_the_region_that_will_move():
    from flowctrl.flow.viz import draw_controls
    from flowctrl.pipelines.regions import local_motion_region

    image, controls = two_objects(), arrow_controls()
    moving = local_motion_region(image, controls, 5, segment="edges")
    assert bool(moving[RED].all()) and not bool(moving[BLUE].any())
    plain = draw_controls(image[0], controls, num_frames=5)
    drawn = draw_controls(image[0], controls, num_frames=5, moving=moving)
    changed = (drawn - plain).abs().amax(dim=0) > 0.05
    assert float(changed[RED].float().mean()) > 0.9 and not bool(changed[BLUE].any())


def test_cli_preview_and_summary_line_splits_render_time(tmp_path):
    proc = _cli("generate", "--image", "examples/astronaut.png", "--arrows", "examples/a.json", "--size", "128x128",
                "--segment", "edges", "--preview", "-o", str(tmp_path / "p.png"))
    assert proc.returncode == 0 and (tmp_path / "p.png").is_file(), proc.stderr
    proc = _cli("generate", "--image", "examples/astronaut.png", "--arrows", "examples/a.json", "--size", "64x64",
                "--frames", "4", "--fps", "8", "--segment", "none", "-o", str(tmp_path / "v.mp4"))
    assert proc.returncode == 0, proc.stderr
    assert "4 frames 64x64 = 0.5 s of video at 8 fps; rendered in" in proc.stderr


def test_auto_uses_sam_when_its_weights_are_on_disk(tmp_path, monkeypatch):
    import flowctrl.segment as seg

    folder = _tiny_sam(tmp_path / "cached-sam")
    monkeypatch.setattr(seg, "DEFAULT_SAM", str(folder))  # stands for the cached default hub id
    with warnings.catch_warnings():
        warnings.simplefilter("error", SegmentFallbackWarning)
        s = resolve_segmenter("auto")
    assert isinstance(s, seg.SamSegmenter)
    seg._SEGMENTERS.pop(str(folder), None)


def test_flow_overlay_tints_only_the_dragged_object(tmp_path):
    import json

    import cv2

    from flowctrl.cli import main

    rgb = (two_objects()[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    cv2.imwrite(str(tmp_path / "two.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "a.json").write_text(json.dumps({"arrows": [{"start": [28, 32], "end": [36, 28]}]}))
    assert main(["flow", "--image", str(tmp_path / "two.png"), "--arrows", str(tmp_path / "a.json"), "--frames", "3",
                 "--segment", "edges", "-q", "-o", str(tmp_path / "g.npy")]) == 0
    overlay = cv2.cvtColor(cv2.imread(str(tmp_path / "g_controls.png")), cv2.COLOR_BGR2RGB)[:, :96].astype(int)
    diff = abs(overlay - rgb.astype(int)).max(axis=2)
    assert (diff[RED] > 12).mean() > 0.8  # tinted (the arrow itself covers a few more pixels)
    assert (diff[BLUE] <= 2).all()


def test_two_arrows_on_one_object_interpolate_and_leave_the_other_still():
    # pull the red square apart: its left part goes left, its right part right
    controls = Controls(arrows=[Arrow(start=(20.0, 32.0), end=(14.0, 32.0)), Arrow(start=(36.0, 32.0), end=(42.0, 32.0))],
                        image_size=(64, 96))
    flow = compute_unified_flow(two_objects(), controls, 5, segment="edges").flow[0, -1]
    torch.testing.assert_close(flow[:, 32, 20], torch.tensor([-6.0, 0.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(flow[:, 32, 36], torch.tensor([6.0, 0.0]), atol=1e-4, rtol=0)
    # each side follows its own arrow (σ = 32 px here blends them towards the middle, as eq. 6-7 does)
    assert float(flow[0, 20:44, 12:17].mean()) < -1.0 and float(flow[0, 20:44, 40:44].mean()) > 1.0
    assert float(flow[0, 20:44, 12:17].mean()) < float(flow[0, 20:44, 22:34].mean()) < float(flow[0, 20:44, 40:44].mean())
    assert float(flow[:, BLUE[0], BLUE[1]].abs().max()) < 0.05
