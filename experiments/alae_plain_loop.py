"""A plain-PyTorch MLP-ALAE following the official MNIST FC configuration, to compare genbench's ALAE against.

Independent of genbench's model and of Lightning: its own layers, optimiser grouping and loop, written from the
official code (podgorskiy/ALAE, configs/mnist_fc.yaml with model.py, net.py, lreq.py, custom_adam.py and
train_alae.py). What it reproduces:

- latent 50 (z and w); F: pixel norm, 6 x (linear, leaky ReLU 0.2), learning-rate multiplier 0.1;
  G: 50 -> 1024 -> 1024 -> 784 with leaky ReLU between and a linear output; E: 784 -> 1024 -> 1024 -> 50 with
  leaky ReLU after every layer, the last included; D (MappingDNoStyle): three linear layers 50 -> 50 -> 50 -> 50
  with no activation between them, multiplier 0.1, the first output as the logit.
- "implicit" equalised learning rate: weights initialised N(0, 2 / fan_in), used as they are, and each tensor's
  Adam step scaled by its He constant times the layer's multiplier (a bias by the multiplier alone);
  Adam betas (0, 0.99), base rate 0.002 (the LOD-3 entry of LEARNING_RATES, where the FC model stays).
- per batch: D step on (E, D) with softplus losses and R1 (gamma 10, squared input gradient summed over pixels);
  G step on (F, G); latent-AE step ||E(G(F(z))) - F(z).detach()||^2 (mean) stepping both optimisers, so F
  learns through G's input. ``zero_grad`` zeroes gradients in place, as PyTorch of 2020 did, so D (whose
  gradient from the G step is zeroed but which is not in the AE loss) also takes a zero-gradient Adam step
  there: its second moment decays twice per batch while it gets one gradient, which makes its step about
  sqrt(2) times larger than nominal (``--grads-to-none`` switches this off).
- the averaged model Gs: a separately initialised copy of all four nets lerped towards the live ones after every
  batch with beta = 0.5 ** (batch / 10,000) (0.99116 at batch 128), no ramp-up; its F, G and E make the
  samples and reconstructions, as the official figures and metrics do.

Departures: images are 28x28 (the official pipeline pads MNIST to 32x32 and resizes inside E and G); the data
order is a seeded permutation per epoch.

Usage: ``python experiments/alae_plain_loop.py --data fashion_mnist --batches 1000 --out /tmp/plain``; writes
``metrics.json`` and ``samples.png`` / ``reconstructions.png`` (EMA nets) to ``--out``. With ``--classifier``
it also scores 10k samples with genbench's cached feature classifier (``python -m genbench.classifier``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
LATENT = 50


def read_idx_images(path: Path) -> Tensor:
    """uint8 (N, 1, 28, 28) from an IDX3 .gz file."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    n, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=16).copy()).view(n, 1, rows, cols)


class LreqLinear(nn.Module):
    """Linear layer with the implicit equalised learning rate: the weight holds its He-scaled value; the optimiser
    scales this tensor's step by ``step_scale`` (He constant x multiplier), the bias's by the multiplier."""

    def __init__(self, fan_in: int, fan_out: int, lr_multiplier: float = 1.0) -> None:
        super().__init__()
        he = math.sqrt(2.0) / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in) * he)
        self.bias = nn.Parameter(torch.zeros(fan_out))
        self.weight.step_scale = he * lr_multiplier
        self.bias.step_scale = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


def stack(widths: list[int], lr_multiplier: float, activation: list[bool]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for (fan_in, fan_out), act in zip(zip(widths[:-1], widths[1:], strict=True), activation, strict=True):
        layers.append(LreqLinear(fan_in, fan_out, lr_multiplier))
        if act:
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class Mapping(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = stack([LATENT] * 7, 0.1, [True] * 6)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8))


class Nets(nn.Module):
    """F, G, E, D of the FC model. ``d_activation`` adds leaky ReLUs between D's layers (not official)."""

    def __init__(
        self, d_activation: bool = False, d_lr_multiplier: float = 0.1, e_out_act: bool = True
    ) -> None:
        super().__init__()
        self.mapping = Mapping()
        self.generator = stack([LATENT, 1024, 1024, 784], 1.0, [True, True, False])
        self.encoder = stack([784, 1024, 1024, LATENT], 1.0, [True, True, e_out_act])
        self.discriminator = stack([LATENT] * 4, d_lr_multiplier, [d_activation, d_activation, False])

    def generate(self, w: Tensor) -> Tensor:
        return self.generator(w).view(-1, 1, 28, 28)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x.flatten(1))

    def critic(self, x: Tensor) -> Tensor:
        return self.discriminator(self.encode(x))[:, 0]


def lreq_adam(modules: list[nn.Module], lr: float) -> torch.optim.Adam:
    """Adam with beta1 = 0 whose per-tensor rate is lr x step_scale: the official LREQAdam's update."""
    groups = [{"params": [p], "lr": lr * p.step_scale} for module in modules for p in module.parameters()]
    return torch.optim.Adam(groups, lr=lr, betas=(0.0, 0.99), eps=1e-8)


def zero(optimizer: torch.optim.Optimizer, to_none: bool) -> None:
    optimizer.zero_grad(set_to_none=to_none)


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    root = Path(os.environ.get("GENBENCH_DATA", "/work/shared/data")) / FOLDERS[args.data] / "raw"
    train_u8 = read_idx_images(root / "train-images-idx3-ubyte.gz")
    test_u8 = read_idx_images(root / "t10k-images-idx3-ubyte.gz")
    to_signed = lambda u8: u8.float() / 127.5 - 1.0  # noqa: E731  [0, 255] -> [-1, 1] as the official loop

    nets = Nets(args.d_activation, args.d_lr_multiplier, not args.linear_encoder_output)
    averaged = Nets(args.d_activation, args.d_lr_multiplier, not args.linear_encoder_output)
    if args.ema_from_live:
        averaged.load_state_dict(nets.state_dict())
    averaged.requires_grad_(False)
    beta = 0.5 ** (args.batch_size / 10_000.0)
    opt_e = lreq_adam([nets.encoder, nets.discriminator], args.lr)
    opt_g = lreq_adam([nets.generator, nets.mapping], args.lr)
    params_f = list(nets.mapping.parameters())

    def draw_w(n: int) -> Tensor:  # (the official w running average only matters for truncation: left out)
        return nets.mapping(torch.randn(n, LATENT))

    start, batch, log = time.time(), 0, []
    while batch < args.batches:
        order = torch.randperm(len(train_u8))
        for idx in order.split(args.batch_size):
            if batch >= args.batches or len(idx) < args.batch_size:
                break
            x = to_signed(train_u8[idx]).requires_grad_(True)
            n = x.shape[0]
            # 1. D step: (E, D)
            zero(opt_e, args.grads_to_none)
            with torch.no_grad():
                fake = nets.generate(draw_w(n))
            real = nets.critic(x)
            (grad,) = torch.autograd.grad(real.sum(), x, create_graph=True)
            r1 = grad.pow(2).sum(dim=(1, 2, 3))
            loss_d = (F.softplus(nets.critic(fake)) + F.softplus(-real) + 5.0 * r1).mean()
            loss_d.backward()
            opt_e.step()
            # 2. G step: (F, G); E frozen, D's gradient accumulates but is not stepped
            zero(opt_g, args.grads_to_none)
            nets.encoder.requires_grad_(False)
            loss_g = F.softplus(-nets.critic(nets.generate(draw_w(n)))).mean()
            loss_g.backward()
            nets.encoder.requires_grad_(True)
            opt_g.step()
            # 3. latent AE: E, G (and F through G's input unless --ae-without-f); both optimisers step
            zero(opt_e, args.grads_to_none)
            zero(opt_g, args.grads_to_none)
            if args.ae_without_f:
                for p in params_f:
                    p.requires_grad_(False)
            w = draw_w(n)
            loss_ae = (nets.encode(nets.generate(w)) - w.detach()).pow(2).mean()
            loss_ae.backward()
            if args.ae_without_f:
                for p in params_f:
                    p.requires_grad_(True)
            opt_e.step()
            opt_g.step()
            with torch.no_grad():
                for mine, live in zip(averaged.parameters(), nets.parameters(), strict=True):
                    mine.lerp_(live, 1.0 - beta)
            batch += 1
            if batch % 100 == 0 or batch == args.batches:
                entry = {
                    "batch": batch,
                    "loss_d": float(loss_d.detach()),
                    "loss_g": float(loss_g.detach()),
                    "loss_ae": float(loss_ae.detach()),
                    "seconds": round(time.time() - start, 1),
                }
                log.append(entry)
                print(json.dumps(entry), flush=True)
    train_seconds = time.time() - start
    return evaluate(args, nets, averaged, test_u8, train_seconds, log)


@torch.no_grad()
def reconstruct(nets: Nets, x_unit: Tensor) -> Tensor:
    return ((nets.generate(nets.encode(x_unit * 2 - 1)) + 1) / 2).clamp(0, 1)


@torch.no_grad()
def sample(nets: Nets, n: int, seed: int) -> Tensor:
    z = torch.randn(n, LATENT, generator=torch.Generator().manual_seed(seed))
    return torch.cat([((nets.generate(nets.mapping(c)) + 1) / 2).clamp(0, 1) for c in z.split(1000)])


def evaluate(args, nets, averaged, test_u8, train_seconds, log) -> dict:
    test = test_u8.float() / 255.0
    variance = float((test - test.mean(0)).pow(2).mean())  # MSE of the mean image
    out = {
        "data": args.data,
        "batches": args.batches,
        "train_seconds": round(train_seconds, 1),
        "test_pixel_variance": variance,
        "options": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "log": log,
    }
    for name, model in (("live", nets), ("ema", averaged)):
        recon = torch.cat([reconstruct(model, c) for c in test.split(1000)])
        mse = float((recon - test).pow(2).mean())
        out[f"recon_mse_test_{name}"] = mse
        out[f"recon_mse_over_variance_{name}"] = mse / variance
    if args.classifier:
        out.update(classifier_metrics(args, nets, averaged, test))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    save_grids(args, averaged, test)
    (Path(args.out) / "metrics.json").write_text(json.dumps(out, indent=2))
    return out


def classifier_metrics(args, nets, averaged, test) -> dict:
    """Classifier FID / precision / recall (k=3), 10k samples vs the 10k test images, with genbench's metrics."""
    from genbench.classifier import classifier_path, load_classifier
    from genbench.metrics.frechet import fid_from_features
    from genbench.metrics.precision_recall import precision_recall

    found = load_classifier(classifier_path(args.data, 28))
    if found is None:
        raise SystemExit(f"no classifier for {args.data}: run python -m genbench.classifier data={args.data}")
    feats = lambda images: torch.cat([found.features(c) for c in images.split(1000)])  # noqa: E731
    real = feats(test)
    metrics = {}
    for name, model in (("live", nets), ("ema", averaged)):
        fake = feats(sample(model, len(test), args.seed + 1))
        pr = precision_recall(real, fake, k=3)
        metrics[f"fid_classifier_{name}"] = fid_from_features(real, fake)
        metrics[f"precision_{name}"], metrics[f"recall_{name}"] = float(pr.precision), float(pr.recall)
    return metrics


def save_grids(args, averaged, test) -> None:
    from torchvision.utils import save_image

    save_image(sample(averaged, 64, args.seed + 2), Path(args.out) / "samples.png", nrow=8)
    x = test[:32]
    pairs = torch.stack([x.view(4, 8, 1, 28, 28), reconstruct(averaged, x).view(4, 8, 1, 28, 28)], 1)
    save_image(pairs.reshape(64, 1, 28, 28), Path(args.out) / "reconstructions.png", nrow=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=sorted(FOLDERS), default="mnist")
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="/tmp/alae_plain")
    parser.add_argument("--classifier", action="store_true", help="score samples with genbench's classifier")
    parser.add_argument("--grads-to-none", action="store_true", help="no zero-gradient Adam step for D")
    parser.add_argument("--ae-without-f", action="store_true", help="keep F out of the latent-AE step")
    parser.add_argument("--d-activation", action="store_true", help="leaky ReLU between D's layers")
    parser.add_argument("--d-lr-multiplier", type=float, default=0.1)
    parser.add_argument(
        "--linear-encoder-output", action="store_true", help="no activation after E's last layer"
    )
    parser.add_argument("--ema-from-live", action="store_true", help="start Gs as a copy of the live nets")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = train(args)
    print(json.dumps({k: v for k, v in result.items() if k not in ("log", "options")}, indent=2))


if __name__ == "__main__":
    main()
