"""``python train.py fit --config fit.yaml``"""

from digits_cnn import DigitsDataModule, LitCNN
from lightning.pytorch.cli import LightningCLI


def cli_main() -> None:
    LightningCLI(LitCNN, DigitsDataModule)


if __name__ == "__main__":
    cli_main()
