"""Video writer: mp4 (H.264 via PyAV), GIF, PNG folders; atomic, readable back with the right shape."""
import os

import av
import numpy as np
import pytest
import torch

from flowctrl.errors import InputError
from flowctrl.video_io import VideoWriter, output_kind, read_video, to_uint8_frames, write_video


def _video(T=5, H=32, W=48):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, H // 8, W // 8, generator=g)
    base = torch.nn.functional.interpolate(base, size=(H, W), mode="bilinear", align_corners=False)
    return torch.cat([base.roll(t, dims=3) for t in range(T)])  # (T,3,H,W) smooth content


def test_mp4_is_h264_with_requested_frames_size_and_rate(tmp_path):
    video = _video()
    path = write_video(tmp_path / "v.mp4", video, fps=8)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name in ("h264", "libx264")
        assert float(stream.average_rate) == pytest.approx(8.0)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (32, 48, 3)
    expected = to_uint8_frames(video).astype(np.int16)
    # lossy: 4:2:0 chroma subsampling blurs colour edges of this tiny saturated clip
    assert np.abs(np.stack(frames).astype(np.int16) - expected).mean() < 8
    gray = torch.linspace(0, 1, 48).view(1, 1, 1, 48).expand(3, 3, 32, 48)
    decoded = read_video(write_video(tmp_path / "gray.mp4", gray)).astype(np.int16)
    assert np.abs(decoded - to_uint8_frames(gray)).mean() < 1.5  # luma is near-lossless at crf 18
    (tmp_path / "gray.mp4").unlink()
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temp file left


def test_odd_sizes_are_padded_for_yuv420(tmp_path):
    frames = read_video(write_video(tmp_path / "odd.mp4", _video(3, 17, 31)))
    assert frames.shape == (3, 18, 32, 3)


def test_gif_and_png_folder_round_trip(tmp_path):
    video = _video(4)
    gif = read_video(write_video(tmp_path / "v.gif", video, fps=10))
    assert gif.shape == (4, 32, 48, 3)
    folder = write_video(tmp_path / "frames", video)
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:05d}.png" for i in range(4)]
    assert np.array_equal(read_video(folder), to_uint8_frames(video))  # PNG is lossless
    with pytest.raises(InputError, match="not an empty folder"):
        write_video(tmp_path / "frames", video)


def test_uint8_frames_and_batched_input(tmp_path):
    frames = to_uint8_frames(_video(3))
    assert frames.dtype == np.uint8 and frames.shape == (3, 32, 48, 3)
    assert np.array_equal(to_uint8_frames(frames), frames)
    assert np.array_equal(to_uint8_frames(_video(3)[None]), frames)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    import av

    real = av.VideoFrame.from_ndarray
    calls = []

    def boom(frame, format):  # the encoder dies at the second frame, after the temp file was started
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("encoder died")
        return real(frame, format=format)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", boom)
    with pytest.raises(RuntimeError):
        write_video(tmp_path / "v.mp4", _video(3))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["v.mp4", "v.gif", "frames/"])
def test_chunked_writer_equals_one_shot_and_aborts_cleanly(tmp_path, name):
    video = _video(7)
    one = tmp_path / "one"
    chunked = tmp_path / "chunked"
    one.mkdir(), chunked.mkdir()
    write_video(str(one / name), video)
    with VideoWriter(str(chunked / name)) as writer:
        for a, b in ((0, 3), (3, 4), (4, 7)):
            writer.write(video[a:b])
            assert not (chunked / name.rstrip("/")).exists()  # nothing in place before close
    assert writer.count == 7
    if name.endswith("/"):
        files = sorted((one / name).iterdir())
        assert [f.name for f in files] == [f.name for f in sorted((chunked / name).iterdir())]
        assert all(f.read_bytes() == (chunked / name / f.name).read_bytes() for f in files)
    else:  # same frames, same bytes however they were chunked
        assert (one / name).read_bytes() == (chunked / name).read_bytes()
    aborted = tmp_path / "aborted"
    aborted.mkdir()
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(str(aborted / name)) as writer:
            writer.write(video[:3])
            raise KeyboardInterrupt
    assert list(aborted.iterdir()) == []


def test_bad_paths_and_values(tmp_path):
    with pytest.raises(InputError, match="unsupported output type"):
        output_kind(tmp_path / "v.avi")
    with pytest.raises(InputError, match="does not exist"):
        write_video(tmp_path / "missing" / "v.mp4", _video(2))
    with pytest.raises(InputError, match="fps"):
        write_video(tmp_path / "v.mp4", _video(2), fps=0)
    assert output_kind("x.MP4") == "mp4" and output_kind("x.gif") == "gif" and output_kind("dir/") == "png_dir"
    assert not os.listdir(tmp_path)
