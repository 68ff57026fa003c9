"""U-Net speed, side by side in one run: ``python -m cmedu.bench unet``.

Prints, per preset and image size, the training images/s (EDM loss, forward + backward + Adam,
batch 128) and the sampling images/s (one network evaluation, batch 500), all on the same
number of CPU threads, and the time of one-step consistency sampling against the teacher's
35-NFE Heun sampler for one batch. Ratios are only meaningful within one run: the machine is
shared and its speed drifts.
"""
import time

import torch

from .losses import edm_loss
from .nets import make_unet
from .parameterization import ConsistencyModel, EDMDenoiser
from .sampling import prior_sample, sample, teacher_sample

# (preset, channels, size): the MNIST presets at 28x28, the old 32x32 baseline, CIFAR-10's 3x32x32.
ROWS = (("tiny", 1, 32), ("tiny", 1, 28), ("fast", 1, 28), ("small", 1, 28), ("fast", 3, 32), ("small", 3, 32))


def train_images_per_second(preset, in_ch, size, batch=128, steps=5, warmup=2, channels_last=False):
    torch.manual_seed(0)
    model = EDMDenoiser(make_unet(preset, in_ch=in_ch, img_size=size))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, g = torch.rand(batch, in_ch, size, size) * 2 - 1, torch.Generator().manual_seed(0)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        loss = edm_loss(model, x, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


@torch.no_grad()
def sample_images_per_second(preset, in_ch, size, batch=500, repeats=2):
    torch.manual_seed(0)
    model = EDMDenoiser(make_unet(preset, in_ch=in_ch, img_size=size)).eval()
    x, t = torch.randn(batch, in_ch, size, size), torch.full((batch,), 1.0)
    model(x, t)
    t0 = time.perf_counter()
    for _ in range(repeats):
        model(x, t)
    return batch * repeats / (time.perf_counter() - t0)


def one_step_vs_heun(preset="fast", in_ch=1, size=28, batch=1000):
    """Wall times of one-step CM sampling and 35-NFE Heun for one batch (same network size; random weights)."""
    torch.manual_seed(0)
    net = make_unet(preset, in_ch=in_ch, img_size=size).eval()
    cm, teacher = ConsistencyModel(net).eval(), EDMDenoiser(net).eval()
    shape = (batch, in_ch, size, size)
    t0 = time.perf_counter()
    sample(cm, shape, 1, generator=torch.Generator().manual_seed(0))
    t1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        teacher_sample(teacher, prior_sample(shape, generator=torch.Generator().manual_seed(0)), 35)
    return t1, time.perf_counter() - t0


def run_unet(rows=ROWS, heun_batch=1000, heun_preset="fast"):
    lines = [f"U-Net speed on {torch.get_num_threads()} CPU thread(s) (train: batch 128; sample: batch 500)",
             f"{'preset':8s}{'image':>10s}{'params':>9s}{'train img/s':>13s}{'x tiny@32':>11s}{'sample img/s':>14s}"]
    base = None
    for preset, ch, size in rows:
        n = sum(p.numel() for p in make_unet(preset, in_ch=ch, img_size=size).parameters()) / 1e6
        tr = train_images_per_second(preset, ch, size)
        base = tr if (preset, ch, size) == ("tiny", 1, 32) else base
        ratio = f"{tr / base:.2f}" if base else "-"
        sp = sample_images_per_second(preset, ch, size)
        lines.append(f"{preset:8s}{f'{ch}x{size}x{size}':>10s}{n:>8.2f}M{tr:>13.1f}{ratio:>11s}{sp:>14.1f}")
    if heun_batch:
        t1, t35 = one_step_vs_heun(heun_preset, batch=heun_batch)
        lines.append(f"sampling a batch of {heun_batch} with '{heun_preset}' at 28x28: one-step CM {t1:.2f} s, "
                     f"35-NFE Heun {t35:.1f} s: {t35 / t1:.1f}x faster")
    return "\n".join(lines)
