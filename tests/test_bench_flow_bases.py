"""benchmarks/bench_flow_bases.py: the parameter-free bases it scores reduce to known answers."""
import importlib.util
import sys
from pathlib import Path

import torch

from flowctrl.flow.densify import gaussian_densify
from flowctrl.models.refiner import parametric_interpolation

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("bench_flow_bases", ROOT / "benchmarks" / "bench_flow_bases.py")
bases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bases)


def _controls(t=3, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    sparse, mask = torch.zeros(t, 2, h, w), torch.zeros(t, 1, h, w)
    for y, x in [(2, 3), (12, 4), (7, 13), (10, 10)]:
        sparse[:, :, y, x] = torch.randn(t, 2, generator=g) * 3
        mask[:, :, y, x] = 1
    return sparse, mask


def test_bilateral_spread_on_a_flat_image_is_the_normalised_gaussian_spread():
    sparse, mask = _controls()
    flat = torch.full((3, 16, 16), 0.4)
    got = bases.bilateral_spread(sparse, mask, flat, sigma=3.0, sigma_colour=0.1)
    want = gaussian_densify(sparse[None], mask[None], sigma=3.0, radius=1e3)[0]
    assert torch.allclose(got, want, atol=1e-4)


def test_bilateral_spread_keeps_each_colour_region_to_its_own_control():
    sparse, mask = torch.zeros(1, 2, 8, 16), torch.zeros(1, 1, 8, 16)
    sparse[0, 0, 4, 2], sparse[0, 0, 4, 13] = 5.0, -5.0
    mask[0, 0, 4, 2] = mask[0, 0, 4, 13] = 1
    image = torch.zeros(3, 8, 16)
    image[:, :, 8:] = 1.0   # two flat halves, one control in each
    out = bases.bilateral_spread(sparse, mask, image, sigma=50.0, sigma_colour=0.1)
    # σ ≫ the image: away from the (blurred) edge each half takes its own control's value (the other one's
    # weight is ~e^-50), while a spread by distance alone mixes them
    assert torch.allclose(out[0, 0, :, :5], torch.full((8, 5), 5.0), rtol=0.02)
    assert torch.allclose(out[0, 0, :, 11:], torch.full((8, 5), -5.0), rtol=0.02)
    mixed = gaussian_densify(sparse[None], mask[None], sigma=50.0, radius=1e3)[0]
    assert mixed[0, 0, 0].abs().max() < 0.5   # a row without controls: the two cancel


def test_layer_oracle_with_one_surface_is_the_parametric_interpolation():
    sparse, mask = _controls()
    layers = torch.zeros(1, 16, 16, dtype=torch.long)
    want = parametric_interpolation(sparse[None], mask[None])[0]
    assert torch.allclose(bases.layer_oracle(sparse, mask, layers), want)
