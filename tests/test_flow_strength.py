"""Motion strength M_s (eq. 8) and rescaling to a target."""
import torch

from flowctrl.flow.strength import motion_strength, rescale_to_strength


def test_strength_of_uniform_translation_is_speed():
    T = 6
    f = torch.zeros(2, T, 2, 8, 8)
    f[0, :, 0] = torch.arange(T).float()[:, None, None] * 3.0  # 3 px/frame right
    f[1, :, 1] = torch.arange(T).float()[:, None, None] * -0.5
    assert torch.allclose(motion_strength(f), torch.tensor([3.0, 0.5]), atol=1e-5)


def test_strength_with_a_region_and_rescale_hits_target():
    f = torch.zeros(1, 5, 2, 10, 10)
    f[0, :, 0, :5] = torch.arange(5).float()[:, None, None] * 2.0  # half the frame moves 2 px/frame
    assert torch.allclose(motion_strength(f), torch.tensor([1.0]), atol=1e-4)
    region = torch.zeros(1, 1, 10, 10)
    region[..., :5, :] = 1
    assert torch.allclose(motion_strength(f, region), torch.tensor([2.0]), atol=1e-4)
    scaled, alpha = rescale_to_strength(f, 2.5)
    assert abs(float(motion_strength(scaled)) - 2.5) < 2.5e-3 and abs(alpha - 2.5) < 5e-3


def test_rescale_with_camera_composition_and_zero_motion():
    local = torch.zeros(1, 4, 2, 8, 8)
    local[0, :, 1] = torch.arange(4).float()[:, None, None]
    cam = torch.zeros_like(local)
    cam[0, :, 0] = torch.arange(4).float()[:, None, None] * 2.0
    from flowctrl.flow.compose import compose_flows

    scaled, alpha = rescale_to_strength(local, 3.0, camera=cam)
    assert abs(float(motion_strength(compose_flows(scaled, cam))) - 3.0) < 5e-3
    none, a0 = rescale_to_strength(torch.zeros_like(local), 1.0)
    assert a0 == 0.0 and none.abs().max() == 0


def test_downsampled_strength_matches_full_resolution():
    ys, xs = torch.meshgrid(torch.arange(200).float(), torch.arange(300).float(), indexing="ij")
    T = 4
    f = torch.zeros(1, T, 2, 200, 300)
    for t in range(T):
        f[0, t, 0] = t * (1.0 + 0.5 * torch.sin(ys / 30))
        f[0, t, 1] = t * 0.7 * torch.cos(xs / 40)
    full = motion_strength(f, max_side=None)
    fast = motion_strength(f)  # long side 300 → 128
    assert abs(float(fast) - float(full)) < 0.005 * float(full)
