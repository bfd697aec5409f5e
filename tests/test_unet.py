import pytest
import torch

from sodp_fast.nn.unet import ConditionalUnet1D, preset


@pytest.mark.parametrize("horizon", [8, 12, 16])
@pytest.mark.parametrize("name", ["tiny", "small"])
def test_output_shape_for_horizons(name, horizon):
    net = ConditionalUnet1D(4, 78, preset(name))
    x = torch.randn(3, horizon, 4)
    out = net(x, torch.tensor([0, 50, 99]), torch.randn(3, 78))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_default_preset_parameter_count():
    # Diffusion Policy's ConditionalUnet1D at widths 256/512/1024, kernel 5, A = 4, cond = 2 × 39: ≈ 66.3 M.
    net = ConditionalUnet1D(4, 78, preset("default"))
    assert sum(p.numel() for p in net.parameters()) == 66_331_652


def test_conditioning_and_timestep_change_the_output():
    torch.manual_seed(0)
    net = ConditionalUnet1D(4, 10, preset("tiny"))
    x, c = torch.randn(2, 12, 4), torch.randn(2, 10)
    base = net(x, torch.tensor([5, 5]), c)
    assert not torch.allclose(base, net(x, torch.tensor([60, 60]), c))
    assert not torch.allclose(base, net(x, torch.tensor([5, 5]), c + 1))


def test_gradients_reach_every_parameter():
    net = ConditionalUnet1D(4, 10, preset("tiny"))
    net(torch.randn(2, 12, 4), torch.tensor([1, 2]), torch.randn(2, 10)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_bad_shapes_raise_clear_errors():
    net = ConditionalUnet1D(4, 10, preset("small"))
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.randn(2, 10, 4), torch.tensor([1, 2]), torch.randn(2, 10))
    with pytest.raises(ValueError, match="cond must be"):
        net(torch.randn(2, 12, 4), torch.tensor([1, 2]), torch.randn(2, 9))
    with pytest.raises(ValueError, match="x must be"):
        net(torch.randn(2, 12, 3), torch.tensor([1, 2]), torch.randn(2, 10))
    with pytest.raises(ValueError, match="unknown U-Net preset"):
        preset("huge")
