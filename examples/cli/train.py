"""The project's own script: LightningCLI's commands, plus search, show, best and report.

python train.py fit --config fit.yaml
python train.py search --config fit.yaml --config search.yaml
python train.py fit --config hpt_runs/digits_cli/best.yaml
"""

from lightning_hpt.cli import SearchCLI

if __name__ == "__main__":
    SearchCLI()
