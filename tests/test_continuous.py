"""Continuous-time CMs: the JVP tangent against finite differences and closed forms, the TrigFlow
conversions, sCM's g, MeanFlow's identity, and the training loop's new methods."""
import math

import pytest
import torch

from cmedu.checkpoints import load_model
from cmedu.continuous import (MeanFlowModel, TrigFlowModel, consistency_tangent, continuous_cm_objective,
                              edm_to_trig, meanflow_loss, meanflow_sample, scm_loss, scm_target, trig_time,
                              trig_to_edm, trig_two_step_taus, trig_velocity)
from cmedu.nets import make_mlp, make_unet
from cmedu.ode import drift
from cmedu.parameterization import ConsistencyModel, EDMDenoiser
from cmedu.recipes import toy_trainer
from cmedu.toy import GaussianMixture, ring_mixture
from cmedu.methods import model_class
from cmedu.training import Trainer, TrainConfig

EPS = 0.002


def _mlp_model(cls=ConsistencyModel, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(make_mlp("tiny", **kw)).double()


def _perturb(model, scale=0.3, seed=1):
    """Random non-zero weights everywhere (the MLP's last layers start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def test_tangent_matches_central_differences_float64():
    f = _perturb(_mlp_model())
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(64, 2, generator=g, dtype=torch.float64), torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = torch.full((64,), 0.7, dtype=torch.float64)
    with torch.no_grad():
        value, tangent = consistency_tangent(f, x, t, v)
        h = 1e-5
        fd = (f(x + h * v, t + h) - f(x - h * v, t - h)) / (2 * h)
    assert torch.allclose(value, f(x, t))
    assert ((tangent - fd).norm() / tangent.norm()).item() < 1e-7


def _gaussian_flow_map(m, s):
    """The exact consistency function of N(m, s² I): x_eps = m + (x - m) sqrt(s² + eps²) / sqrt(s² + t²)."""
    def f(x, t):
        return m + (x - m) * math.sqrt(s**2 + EPS**2) / torch.sqrt(s**2 + t[:, None] ** 2)
    return f


def test_tangent_of_exact_flow_map_vanishes_along_the_ode():
    """df/dt = ∂f/∂t + ∇f · dx/dt = 0 for the exact flow map; both terms are large, so this is a real check."""
    m, s = torch.tensor([0.3, -0.2], dtype=torch.float64), 0.4
    gauss = GaussianMixture(m[None], [s])
    f = _gaussian_flow_map(m, s)
    g = torch.Generator().manual_seed(0)
    t = torch.exp(torch.randn(256, generator=g, dtype=torch.float64))
    x = m + torch.sqrt(s**2 + t[:, None] ** 2) * torch.randn(256, 2, generator=g, dtype=torch.float64)
    _, tangent = consistency_tangent(f, x, t, drift(gauss.denoiser, x, t))
    _, partial_t = consistency_tangent(f, x, t, torch.zeros_like(x))  # ∂f/∂t alone
    exact_partial_t = -(x - m) * math.sqrt(s**2 + EPS**2) * t[:, None] / (s**2 + t[:, None] ** 2) ** 1.5
    assert ((partial_t - exact_partial_t).norm() / exact_partial_t.norm()).item() < 1e-12
    assert (tangent.norm() / partial_t.norm()).item() < 1e-12


def test_continuous_cm_gradient_is_the_limit_of_discrete_cd():
    """∇ of <f, sg df/dt> equals ∇ ||f(x_t, t) - sg f(x_t - Δ v, t - Δ)||² / (2Δ) as Δ -> 0."""
    model = _perturb(_mlp_model())
    mix = ring_mixture()
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(128, g).double()
    t = torch.full((128,), 1.3, dtype=torch.float64)
    x_t = x0 + 1.3 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    v = drift(mix.denoiser, x_t, t)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    cont = grads(continuous_cm_objective(model, x_t, t, v))
    errors = []
    for delta in (1e-2, 1e-3, 1e-4):
        with torch.no_grad():
            target = model(x_t - delta * v, t - delta)
        disc = grads(((model(x_t, t) - target) ** 2).sum(1).mean() / (2 * delta))
        errors.append(((disc - cont).norm() / cont.norm()).item())
    assert errors[-1] < 1e-3 and errors[-1] < errors[0] / 10  # converges like O(Δ)


def test_trig_conversions_round_trip_and_match_the_paths():
    x0, z = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    sigma = torch.linspace(0.01, 50, 8, dtype=torch.float64)
    x_t, t = edm_to_trig(x0 + sigma[:, None] * z, sigma)
    assert torch.allclose(x_t, torch.cos(t)[:, None] * x0 + torch.sin(t)[:, None] * 0.5 * z)  # z_trig = σ_d z
    x_back, s_back = trig_to_edm(x_t, t)
    assert torch.allclose(s_back, sigma) and torch.allclose(x_back, x0 + sigma[:, None] * z)
    assert trig_two_step_taus()[0] == pytest.approx(0.5 * math.tan(1.1))


def test_trig_velocity_is_the_derivative_of_the_trig_path_along_the_edm_ode():
    mix = ring_mixture()
    g = torch.Generator().manual_seed(0)
    x = mix.sample(64, g).double() + 0.8 * torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = trig_time(torch.tensor(0.8, dtype=torch.float64)).expand(64)
    x_t = torch.cos(t)[:, None] * x
    h = 1e-5  # move along the EDM PF-ODE: dx/dσ = drift, σ = σ_d tan t
    sig = lambda tt: 0.5 * torch.tan(tt)  # noqa: E731
    xp = x + (sig(t + h) - sig(t))[:, None] * drift(mix.denoiser, x, sig(t))
    xm = x + (sig(t - h) - sig(t))[:, None] * drift(mix.denoiser, x, sig(t))
    fd = (torch.cos(t + h)[:, None] * xp - torch.cos(t - h)[:, None] * xm) / (2 * h)
    assert torch.allclose(trig_velocity(mix.denoiser, x_t, t), fd, atol=1e-6)


def test_trigflow_student_from_edm_teacher_equals_the_teacher():
    torch.manual_seed(0)
    teacher = EDMDenoiser(make_unet("fast", in_ch=1, img_size=28))
    _perturb(teacher, 0.05)
    student = TrigFlowModel(make_unet("fast", in_ch=1, img_size=28))
    student.net.load_state_dict(teacher.net.state_dict())
    x, sigma = torch.randn(3, 1, 28, 28), torch.tensor([0.01, 0.7, 60.0])
    with torch.no_grad():
        assert torch.allclose(student(x, sigma), teacher(x, sigma), atol=1e-5)


def test_scm_g_is_cos_t_times_the_tangent_of_f():
    model = _perturb(_mlp_model(TrigFlowModel))
    g = torch.Generator().manual_seed(0)
    x_t, v = torch.randn(32, 2, generator=g, dtype=torch.float64), torch.randn(32, 2, generator=g, dtype=torch.float64)
    t = torch.rand(32, generator=g, dtype=torch.float64) * 1.4 + 0.1
    F_minus, g_full = scm_target(model, x_t, t, v, warmup=1.0)
    _, dfdt = consistency_tangent(model.trig, x_t, t, v)
    assert torch.allclose(g_full, torch.cos(t)[:, None] * dfdt, atol=1e-10)
    assert torch.allclose(F_minus, model.F(x_t, t))
    _, g_none = scm_target(model, x_t, t, v, warmup=0.0)  # warm-up 0 keeps only the first term
    assert torch.allclose(g_none, -torch.cos(t)[:, None] ** 2 * (0.5 * F_minus - v))


def test_trigflow_boundary_and_prior():
    model = _perturb(_mlp_model(TrigFlowModel))
    x = torch.randn(16, 2, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(model.trig(x, torch.zeros(16, dtype=torch.float64)), x)  # f(x, 0) = x exactly
    with pytest.raises(ValueError, match="eps, T"):
        model(x, 100.0)


def test_meanflow_pieces():
    model = _perturb(_mlp_model(MeanFlowModel, time_inputs=2))
    z = torch.randn(16, 2, dtype=torch.float64)
    one = torch.ones(16, dtype=torch.float64)
    assert torch.allclose(meanflow_sample(model, z, 1), z - model.u(z, 0 * one, one))
    sigma = torch.full((16,), 3.0, dtype=torch.float64)  # t = 0.75, z_t = x / 4
    with torch.no_grad():
        assert torch.allclose(model(z, sigma), z / 4 - 0.75 * model.u(z / 4, 0 * one, 0.75 * one))
    with pytest.raises(ValueError, match="two time inputs"):
        MeanFlowModel(make_mlp("tiny"))
    with pytest.raises(ValueError, match="c_noise must have shape"):
        model.net(z, one)


def test_meanflow_with_r_equal_t_is_flow_matching():
    """With ratio 0 every r = t, the target is v and the unweighted loss is the flow-matching loss."""
    model = _perturb(_mlp_model(MeanFlowModel, time_inputs=2)).float()
    x0 = ring_mixture().sample(256, torch.Generator().manual_seed(0))
    loss = meanflow_loss(model, x0, torch.Generator().manual_seed(1), ratio=0.0, power=0.0)
    g = torch.Generator().manual_seed(1)  # replay the draws of meanflow_loss
    from cmedu.continuous import logit_normal
    a, b = logit_normal(256, -0.4, 1.0, g), logit_normal(256, -0.4, 1.0, g)
    t = torch.maximum(a, b)
    torch.rand(256, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    z = (1 - t)[:, None] * x0 + t[:, None] * noise
    with torch.no_grad():
        fm = ((model.u(z, t, t) - (noise - x0)) ** 2).sum(1).mean()
    assert loss.item() == pytest.approx(fm.item(), rel=1e-5)


@pytest.mark.parametrize("method", ["sct", "scd", "meanflow"])
def test_new_methods_train_save_and_load(method, tmp_path):
    trainer = toy_trainer(method, "smoke", steps=40)
    assert isinstance(trainer.model, model_class(method))
    losses = trainer.fit()
    assert all(math.isfinite(v) for v in losses)
    trainer.config.extra["data"] = "gmm"
    trainer.save(tmp_path / "ck.pt")
    model, state = load_model(tmp_path / "ck.pt")
    assert isinstance(model, model_class(method))
    x = torch.randn(8, 2)
    with torch.no_grad():
        assert torch.allclose(model(x, 80.0), trainer.ema.eval()(x, 80.0))


def test_scd_needs_a_teacher_and_warmup_ramps():
    model = TrigFlowModel(make_mlp("tiny"))
    with pytest.raises(ValueError, match="needs a teacher"):
        Trainer(model, ring_mixture(), TrainConfig(method="scd"))
    tr = Trainer(model, ring_mixture(), TrainConfig(method="sct", steps=100, tangent_warmup=0.2))
    assert [tr.tangent_warmup_at(k) for k in (0, 10, 20, 50)] == [0.0, 0.5, 1.0, 1.0]
    tr.config.tangent_warmup = 0.0
    assert tr.tangent_warmup_at(0) == 1.0


def test_scm_loss_options_change_the_loss():
    model = _perturb(TrigFlowModel(make_mlp("tiny")), 0.1)  # a non-zero adaptive weight too
    x0 = ring_mixture().sample(64, torch.Generator().manual_seed(0))
    vals = [scm_loss(model, x0, torch.Generator().manual_seed(1), **kw).item()
            for kw in (dict(), dict(norm_c=None), dict(adaptive=False), dict(warmup=0.0))]
    assert all(math.isfinite(v) for v in vals) and len(set(vals)) == 4


def test_sample_from_picks_each_models_sampler():
    from cmedu.sampling import multistep_sample, sample_from

    x_T = 80 * torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    trig = _perturb(TrigFlowModel(make_mlp("tiny")), 0.1).eval()
    two = sample_from(trig, x_T, 2, generator=torch.Generator().manual_seed(1))
    ref = multistep_sample(trig, x_T, trig_two_step_taus(), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(two, ref)
    mf = _perturb(MeanFlowModel(make_mlp("tiny", time_inputs=2)), 0.1).eval()
    assert torch.allclose(sample_from(mf, x_T, 1), meanflow_sample(mf, x_T / 80, 1))
    with pytest.raises(ValueError, match="own even time grid"):
        sample_from(mf, x_T, 2, taus=[1.0])


def test_time_options_are_stored_only_when_not_default():
    assert "max_freq" not in make_mlp("tiny").config and "time_inputs" not in make_unet("fast", img_size=28).config
    net = make_mlp("tiny", time_inputs=2, max_freq=2.0)
    assert net.config["time_inputs"] == 2 and net.config["max_freq"] == 2.0
    from cmedu.checkpoints import build_net
    assert build_net(net.config).config == net.config
    with pytest.raises(ValueError, match="max_freq > 0"):
        make_mlp("tiny", max_freq=0)


def test_toy_trainer_from_a_pretrained_model_trains_its_copy():
    from cmedu.recipes import toy_pretrained_denoiser

    pre = toy_pretrained_denoiser("smoke")
    assert pre.net.config["max_freq"] == 2.0
    before = [p.detach().clone() for p in pre.net.parameters()]
    tr = toy_trainer("sct", "smoke", init=pre, steps=5)
    with torch.no_grad():
        x = torch.randn(8, 2)
        assert torch.allclose(tr.model.trig(x, torch.full((8,), 0.7)),  # f at step 0 is the pretrained denoiser
                              pre(*continuous_to_edm(x, 0.7)), atol=1e-5)
    tr.fit()
    assert all(p.requires_grad for p in tr.model.net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.net.parameters()))   # the copy trained
    assert all(torch.equal(a, b) for a, b in zip(before, pre.net.parameters()))            # the original did not


def continuous_to_edm(x_t, t):
    x, sigma = trig_to_edm(x_t, torch.full((x_t.shape[0],), t))
    return x, sigma
