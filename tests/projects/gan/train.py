"""``python train.py``: trains the GAN with the defaults."""

import lightning.pytorch as L
from gan import GAN, RingData

if __name__ == "__main__":
    L.seed_everything(0)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", enable_progress_bar=False)
    trainer.fit(GAN(), RingData())
    print({k: float(v) for k, v in trainer.callback_metrics.items()})
