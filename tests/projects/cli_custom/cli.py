"""``python cli.py fit --config config.yaml``: a LightningCLI subclass that wires the data to the model."""

from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.cli import LightningCLI
from wine import WineClassifier, WineData


class WineCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({"early_stopping.monitor": "val_loss", "early_stopping.patience": 5})
        parser.link_arguments("data.num_features", "model.num_features", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def cli_main() -> None:
    WineCLI(WineClassifier, WineData, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    cli_main()
