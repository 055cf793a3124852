"""Train with ``python main.py fit --config config.yaml``."""

from lightning.pytorch.cli import LightningCLI


def cli_main() -> None:
    LightningCLI(save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    cli_main()
