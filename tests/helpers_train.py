"""Running ``train`` in this process (click's runner): the helpers the training tests share."""

from __future__ import annotations

from pathlib import Path

QUICK = """\
parameters:
  learning_rate: {values: [1.0e-3, 1.0e-2]}
  hidden_dim: {values: [32, 64]}
  batch_size: {values: [8, 16]}
"""


def train_cli(*args: str):
    """``train ARGS`` in this process (the real command, minus a second torch import).

    An exception that is not an exit is raised as it is; the result has ``returncode`` (its exit code)
    as a finished process has.
    """
    from click.testing import CliRunner

    from training.cli import main

    result = CliRunner().invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    result.returncode = result.exit_code
    return result


def run_sweep(store: str, config: Path, out: Path, *args: str):
    """A one-epoch ``train sweep`` of the mlp on the CPU, without emissions tracking."""
    return train_cli("sweep", "--store", store, "--model", "mlp", "--config", str(config), "--out", str(out),
                     "--epochs", "1", "--no-emissions", "--device", "cpu", *args)  # fmt: skip


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
