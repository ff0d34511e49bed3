"""FrequencyStabilizer: exact identity at init, differentiable, known-answer low-pass, flicker metric."""
import math

import pytest
import torch

from flowctrl.models.frequency import FrequencyStabilizer, temporal_flicker


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("t", [9, 8, 13, 5, 1])
def test_identity_at_init_is_bitwise(t):
    stab = FrequencyStabilizer(channels=6, num_frames=9)
    x = torch.randn(2, t, 7, 6)
    assert torch.equal(stab(x), x)
    assert torch.equal(stab(x.to(torch.bfloat16)), x.to(torch.bfloat16))


def test_matches_direct_fft_formula():
    torch.manual_seed(1)
    stab = FrequencyStabilizer(channels=4, num_frames=8)
    with torch.no_grad():
        stab.delta.normal_(std=0.3)
    x = torch.randn(3, 8, 5, 4)
    gain = torch.complex(1 + stab.delta[..., 0], stab.delta[..., 1])  # (F, C)
    expected = torch.fft.irfft(torch.fft.rfft(x, dim=1) * gain[None, :, None, :], n=8, dim=1)
    torch.testing.assert_close(stab(x), expected, atol=1e-5, rtol=1e-5)


def test_lowpass_removes_injected_flicker_exactly():
    t, c = 8, 3
    frames = torch.arange(t, dtype=torch.float32)
    base = torch.randn(1, 1, 4, c)                                   # static content
    slow = torch.cos(2 * math.pi * frames / t).view(1, t, 1, 1) * 0.5  # one cycle per clip (bin 1)
    clean = base + slow
    flicker = 0.3 * (-1.0) ** frames                                 # Nyquist: alternates every frame
    noisy = clean + flicker.view(1, t, 1, 1)
    stab = FrequencyStabilizer(channels=c, num_frames=t)
    stab.set_lowpass(cutoff=0.5)                                     # zero only the 0.5 cycles/frame bin
    out = stab(noisy)
    torch.testing.assert_close(out, clean.expand_as(out), atol=1e-5, rtol=0)
    assert temporal_flicker(noisy.permute(0, 1, 3, 2)[..., None]) > 0.05
    assert temporal_flicker(out.permute(0, 1, 3, 2)[..., None]) < 1e-6


def test_gradcheck_and_learns_lowpass():
    stab = FrequencyStabilizer(channels=2, num_frames=6).double()
    x = torch.randn(1, 6, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp, d: inp + __import__("flowctrl_cuda").freq_adaptor(inp, d, dim=1),
                                    (x, stab.delta.detach().clone().requires_grad_(True)))
    # Learn to remove a flicker from data by gradient descent (starts at identity).
    stab = FrequencyStabilizer(channels=2, num_frames=6)
    frames = torch.arange(6, dtype=torch.float32)
    clean = torch.randn(16, 1, 3, 2).expand(16, 6, 3, 2)
    noisy = clean + (0.5 * (-1.0) ** frames).view(1, 6, 1, 1) * torch.randn(16, 1, 1, 2)
    opt = torch.optim.Adam(stab.parameters(), lr=0.05)
    first = None
    for _ in range(150):
        loss = (stab(noisy) - clean).pow(2).mean()
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 1e-3 * first
    assert abs(float(stab.response()[-1].abs().max())) < 0.05   # Nyquist gain learned ≈ 0
    assert abs(float(stab.response()[0].real.mean()) - 1) < 0.05  # DC kept


def test_response_resamples_to_other_lengths():
    stab = FrequencyStabilizer(channels=2, num_frames=9)
    stab.set_lowpass(0.3)
    r = stab.response(17)                      # 9 bins over [0, 0.47] cycles/frame
    assert r.shape == (9, 2)
    assert torch.allclose(r[0].real, torch.ones(2))
    assert float(r[-1].abs().max()) < 1e-6     # high frequencies stay removed


def test_temporal_flicker_known_values():
    static = torch.rand(1, 1, 3, 4, 4).expand(1, 8, 3, 4, 4)
    assert temporal_flicker(static) < 1e-7
    alt = (0.2 * (-1.0) ** torch.arange(8.0)).view(1, 8, 1, 1, 1).expand(1, 8, 3, 4, 4)
    # bins with f >= 0.25 for T = 8: k = 2, 3, 4; only k = 4 carries |X|/T = 0.2
    assert temporal_flicker(alt) == pytest.approx(0.2 / 3, rel=1e-5)


def test_bad_input_shape():
    with pytest.raises(ValueError):
        FrequencyStabilizer(4, 8)(torch.randn(2, 8, 3))
