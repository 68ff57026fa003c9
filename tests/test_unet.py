"""cmedu.nets.UNet: shapes at 28x28 and 32x32, preset sizes, input checks, the CM boundary condition."""
import pytest
import torch

from cmedu.nets import UNET_PRESETS, UNet, make_unet
from cmedu.parameterization import ConsistencyModel, EDMDenoiser


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def randomise(net, seed=0):
    """Give the zero-initialised output layers random weights, so the tests see a non-trivial F."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().max() == 0:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return net


@pytest.mark.parametrize("size", [28, 32])
def test_output_shape(size):
    net = make_unet("tiny", in_ch=1, img_size=size)
    x = torch.randn(3, 1, size, size)
    assert net(x, torch.randn(3)).shape == x.shape


def test_default_constructor_works_for_28_and_32():
    for size in (28, 32):
        net = UNet(img_size=size).eval()
        x = torch.randn(2, 1, size, size)
        assert net(x, torch.zeros(2)).shape == x.shape
    # the 7x7 level of a 28x28 input counts as the 8x8 level: attention is there
    assert any(type(m).__name__ == "SelfAttention" for m in UNet(img_size=28).down.modules())


def test_multichannel_and_four_levels():
    net = UNet(in_ch=3, base=16, mults=(1, 2, 2, 2), attn_res=(8, 4), img_size=32)
    x = torch.randn(2, 3, 32, 32)
    assert net(x, torch.randn(2)).shape == x.shape


def test_output_is_zero_at_init_and_depends_on_time_after_training():
    net = make_unet("tiny", img_size=28).eval()
    x = torch.randn(2, 1, 28, 28)
    assert net(x, torch.zeros(2)).abs().max() == 0  # zero-initialised output layer
    randomise(net)
    a, b = net(x, torch.full((2,), -1.0)), net(x, torch.full((2,), 1.0))
    assert not torch.allclose(a, b)  # the noise level reaches the blocks


@pytest.mark.parametrize("preset, lo, hi", [("tiny", 0.8e6, 1.5e6), ("small", 3.5e6, 6.5e6), ("base", 15e6, 25e6)])
def test_preset_sizes(preset, lo, hi):
    net = make_unet(preset, img_size=32)
    assert lo <= n_params(net) <= hi
    assert n_params(make_unet(preset, img_size=28)) == n_params(net)  # the size does not depend on the resolution


def test_config_is_stored_and_rebuilds_the_same_network():
    net = make_unet("tiny", img_size=28)
    assert net.config == dict(in_ch=1, img_size=28, attn_res=(7,), **UNET_PRESETS["tiny"])
    twin = UNet(**net.config)
    twin.load_state_dict(net.state_dict())  # same architecture
    with pytest.raises(ValueError, match="unknown UNet preset"):
        make_unet("huge")


def test_wrong_inputs_raise_value_errors():
    net = make_unet("tiny", img_size=32)
    with pytest.raises(ValueError, match=r"\(batch, 1, 32, 32\)"):
        net(torch.randn(2, 1, 28, 28), torch.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(2, 3, 32, 32), torch.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(2, 32, 32), torch.zeros(2))
    with pytest.raises(ValueError, match="c_noise"):
        net(torch.randn(2, 1, 32, 32), torch.zeros(3))
    with pytest.raises(ValueError, match="divisible"):
        UNet(img_size=30)
    with pytest.raises(ValueError, match="attn_res"):
        UNet(img_size=32, attn_res=(5,))


def test_consistency_boundary_condition():
    """f(x, eps) = x exactly, whatever the network computes (c_skip(eps) = 1, c_out(eps) = 0)."""
    f = ConsistencyModel(randomise(make_unet("tiny", img_size=28))).eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(f(x, 0.002), x)
    assert not torch.allclose(f(x, 1.0), x)
    d = EDMDenoiser(f.net)
    assert d(x, 0.5).shape == x.shape


def test_dropout_only_in_training_and_backward():
    net = randomise(make_unet("tiny", img_size=28))
    x, c = torch.randn(2, 1, 28, 28), torch.zeros(2)
    net.eval()
    assert torch.equal(net(x, c), net(x, c))
    net.train()
    assert not torch.equal(net(x, c), net(x, c))
    net(x, c).square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_channels_last_gives_the_same_output():
    net = randomise(UNet(base=8, mults=(1, 2), attn_res=(8,), img_size=16)).eval()
    x = torch.randn(2, 1, 16, 16)
    ref = net(x, torch.ones(2))
    net = net.to(memory_format=torch.channels_last)
    out = net(x.contiguous(memory_format=torch.channels_last), torch.ones(2))
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
