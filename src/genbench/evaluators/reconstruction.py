"""Reconstruction quality on the train and test splits: MSE per pixel in [0, 1], PSNR (mean over images) and, on
the test split, SSIM, both from torchmetrics (its metric objects aggregate across batches; rank 0 computes alone)."""

from __future__ import annotations

import torch

from genbench.evaluators.base import EvalContext
from genbench.progress import Progress


def reconstruction_quality(
    ctx: EvalContext, split: str, n_images: int | None, batch_size: int, ssim: bool = False
) -> dict[str, float] | None:
    """``{"mse", "psnr"[, "ssim"]}`` of ``model.reconstruct`` over the first ``n_images`` of ``split``.

    MSE is per pixel over all images; PSNR (data range 1) is the mean of the per-image PSNRs; SSIM is torchmetrics'
    (11-pixel Gaussian window). Train images pass their indices, so models with learned per-image codes (GLO) use
    them; test images do not. Returns None for an empty split.
    """
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    total = len(ctx.datamodule.split(split))
    n = total if n_images is None else min(n_images, total)
    if n == 0:
        return None
    # this evaluator runs on rank 0 alone under DDP: no cross-rank sync (the other ranks are not in it)
    psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), sync_on_compute=False).to(ctx.device)
    structural = (
        StructuralSimilarityIndexMeasure(data_range=1.0, sync_on_compute=False).to(ctx.device)
        if ssim
        else None
    )
    squared, count = torch.zeros((), device=ctx.device, dtype=torch.float64), 0
    with Progress(f"reconstructing {split} images", n, unit="images") as progress:
        for start in range(0, n, batch_size):
            index = torch.arange(start, min(start + batch_size, n), device=ctx.device)
            x = ctx.datamodule.images(split, index, ctx.device)
            x_hat = ctx.model.reconstruct(x, index if split == "train" else None).float().clamp(0, 1)
            squared += (x_hat - x).pow(2).sum(dtype=torch.float64)
            count += x.numel()
            psnr.update(x_hat, x)
            if structural is not None:
                structural.update(x_hat, x)
            progress.update(len(index))
    out = {"mse": float(squared / count), "psnr": float(psnr.compute())}
    if structural is not None:
        out["ssim"] = float(structural.compute())
    return out


def reconstruction_mse(ctx: EvalContext, split: str, n_images: int | None, batch_size: int) -> float | None:
    """Mean squared error per pixel of ``model.reconstruct`` over the first ``n_images`` of ``split``."""
    quality = reconstruction_quality(ctx, split, n_images, batch_size)
    return None if quality is None else quality["mse"]


class ReconstructionMSE:
    """``recon_{mse,psnr}_{train,test}`` and ``recon_ssim_test``; periodic runs use ``periodic_n_images``.

    Models that encode unseen images by latent inversion (GLO: tens of Adam steps through the generator per image)
    reconstruct at most ``inverted_n_images`` test images (null: as many as the others): 2,000 keep the MSE's
    standard error near 1% while the inversion stays within minutes on a CPU. The protocol records the N used.
    """

    def __init__(
        self,
        n_images: int | None = 10000,
        periodic_n_images: int = 1000,
        batch_size: int = 500,
        inverted_n_images: int | None = 2000,
    ) -> None:
        self.n_images, self.periodic_n_images, self.batch_size = n_images, periodic_n_images, batch_size
        self.inverted_n_images = inverted_n_images

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        out = {}
        protocols = ctx.records.setdefault("protocols", {})
        for split in ("train", "test"):
            n = self.n_images if ctx.final else self.periodic_n_images
            inverted = split == "test" and ctx.model.encoding().get("encode") != "encoder"
            if inverted and self.inverted_n_images is not None:
                n = self.inverted_n_images if n is None else min(n, self.inverted_n_images)
            quality = reconstruction_quality(ctx, split, n, self.batch_size, ssim=split == "test")
            if quality is None:
                continue
            images = (
                min(len(ctx.datamodule.split(split)), n)
                if n is not None
                else len(ctx.datamodule.split(split))
            )
            protocol = {"split": split, "n_images": images}
            if split == "test":  # test images are encoded; training images may have learned codes
                protocol.update(ctx.model.encoding())
            for name, value in quality.items():
                out[f"recon_{name}_{split}"] = value
                protocols[f"recon_{name}_{split}"] = protocol
        return out
