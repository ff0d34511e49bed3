"""The compiled CPU splat reads a broadcast source in place and writes into a given ``out``."""
import pytest
import torch

import flowctrl_cuda
from flowctrl_cuda import _cpu
from flowctrl_cuda import reference as R

pytestmark = pytest.mark.skipif(not _cpu.available(), reason="no C++ compiler: the compiled CPU path is not built")


@pytest.mark.parametrize("n", [1, 2, 5])  # 1: row-split path, 2 and 5: image-per-thread path
def test_broadcast_source_and_out_match_the_reference(n):
    g = torch.Generator().manual_seed(n)
    image = torch.rand(1, 3, 11, 13, generator=g)
    flow = torch.randn(n, 2, 11, 13, generator=g) * 3
    Z = -torch.rand(n, 1, 11, 13, generator=g) * 5
    src = image.expand(n, -1, -1, -1)
    assert n == 1 or src.stride(0) == 0
    want, want_norm = R.splat(src.contiguous(), flow, Z, "softmax", True)
    out = torch.full((n, 3, 11, 13), float("nan"))
    got, norm = flowctrl_cuda.splat(src, flow, weight=Z, mode="softmax", return_norm=True, out=out)
    assert got.data_ptr() == out.data_ptr()  # written in place
    assert torch.allclose(out, want, atol=1e-5) and torch.allclose(norm, want_norm, atol=1e-5)
    # the broadcast read equals the contiguous copy bit for bit
    again = _cpu.splat(src.contiguous(), flow, Z, "softmax", False)
    assert torch.equal(again, out)


def test_out_on_the_reference_path_is_filled_too():
    x = torch.rand(2, 3, 6, 7, dtype=torch.float64)  # float64: not the compiled path
    flow = torch.zeros(2, 2, 6, 7, dtype=torch.float64)
    out = torch.empty_like(x)
    got = flowctrl_cuda.splat(x, flow, mode="avg", out=out)
    assert got is out and torch.allclose(out, x)
