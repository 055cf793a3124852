"""A GAN on a 2-D mixture of Gaussians, trained with manual optimization and two optimizers."""

from __future__ import annotations

import math

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def ring(n: int, seed: int) -> torch.Tensor:
    """Points from 8 Gaussians on a circle."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 8, (n,), generator=g).float()
    centers = torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1) * 2
    return centers + 0.1 * torch.randn(n, 2, generator=g)


class RingData(L.LightningDataModule):
    def __init__(self, batch_size: int = 64, n_train: int = 1024) -> None:
        super().__init__()
        self.batch_size, self.n_train = batch_size, n_train

    def setup(self, stage: str | None = None) -> None:
        self.train_set = TensorDataset(ring(self.n_train, 0))
        self.val_set = TensorDataset(ring(256, 1))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, n_out),
    )


class GAN(L.LightningModule):
    def __init__(
        self, latent_dim: int = 8, hidden: int = 64, lr_g: float = 2e-4, lr_d: float = 2e-4, b1: float = 0.5
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = mlp(latent_dim, 2, hidden)
        self.discriminator = mlp(2, 1, hidden)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def training_step(self, batch, batch_idx):
        (real,) = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.size(0), self.hparams.latent_dim, device=self.device)
        ones = torch.ones(real.size(0), 1, device=self.device)
        zeros = torch.zeros_like(ones)
        bce = nn.functional.binary_cross_entropy_with_logits

        self.toggle_optimizer(opt_g)
        g_loss = bce(self.discriminator(self(z)), ones)
        self.manual_backward(g_loss)
        opt_g.step()
        opt_g.zero_grad()
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        fake = self(z).detach()
        d_loss = (bce(self.discriminator(real), ones) + bce(self.discriminator(fake), zeros)) / 2
        self.manual_backward(d_loss)
        opt_d.step()
        opt_d.zero_grad()
        self.untoggle_optimizer(opt_d)
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss}, prog_bar=True)

    def validation_step(self, batch, batch_idx):
        (real,) = batch
        z = torch.randn(real.size(0), self.hparams.latent_dim, generator=torch.Generator().manual_seed(batch_idx))
        fake = self(z.to(self.device))
        # distance between the two samples' means and covariances: small when the generator fits the data
        dist = (fake.mean(0) - real.mean(0)).norm() + (torch.cov(fake.T) - torch.cov(real.T)).norm()
        self.log("val_dist", dist, prog_bar=True)

    def configure_optimizers(self):
        b1 = self.hparams.b1
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr_g, betas=(b1, 0.999))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr_d, betas=(b1, 0.999))
        return [opt_g, opt_d]
