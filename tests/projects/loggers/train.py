"""``python train.py``: one run, logged to TensorBoard, CSV, W&B (offline) and MLflow (local files)."""

import lightning.pytorch as L
from iris import IrisData, LitClassifier, make_loggers

if __name__ == "__main__":
    L.seed_everything(0)
    trainer = L.Trainer(max_epochs=3, logger=make_loggers(), enable_progress_bar=False)
    trainer.fit(LitClassifier(), IrisData())
    print({k: float(v) for k, v in trainer.callback_metrics.items()})
