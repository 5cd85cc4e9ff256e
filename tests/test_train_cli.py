"""The ``train`` command line: options made from the typed settings, ``train --help``, and the
"did you mean" of a misspelt model or model option (issue #22 item 7, first-hour items 3 and 6)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import click
from click.testing import CliRunner

from training.cli import embed, main, predict, reproduce, run, sweep
from training.options import CLI_FIELDS
from training.run.config import TrainConfig

#: options of ``train run`` that are not settings of a run: how many, where, and the launcher's
RUN_ONLY = {"repeats", "out", "resume", "overwrite", "quiet", "nproc_per_node", "nnodes", "node_rank", "rdzv_endpoint"}


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.cli", *args], capture_output=True, text=True, timeout=300, check=False)


def _listed(help_text: str) -> list[str]:
    """The options a help page lists: the first flag of each record (``  --store TEXT  Store...``)."""
    return re.findall(r"^  (?:-\w, )?(--[a-z][a-z0-9-]*)", help_text, flags=re.MULTILINE)


def test_train_help_lists_the_training_options_of_train_run():
    group = _train("--help")  # the newcomer's command, in a process of its own
    command = CliRunner().invoke(main, ["run", "--help"], terminal_width=80)
    assert group.returncode == command.exit_code == 0, group.stderr + command.output
    assert {"--store", "--model", "--repeats"} <= set(_listed(group.stdout))
    assert _listed(group.stdout) == [*_listed(command.output)[:-1], "--version", "--help"]  # run's last: --help
    assert "Commands:" in group.stdout and "reproduce" in group.stdout
    for option in ("--store", "--model", "--repeats"):  # each with an example of its value
        record = re.search(rf"^  {option} .*?(?=^  -)", group.stdout, flags=re.MULTILINE | re.DOTALL).group(0)
        assert "e.g." in record, record


def test_every_setting_is_declared_once_with_the_field():
    """``run``'s options are TrainConfig's fields (name, default, help) plus the run-only ones."""
    names = [param.name for param in run.params]
    assert len(names) == len(set(names))
    assert set(names) - RUN_ONLY == set(CLI_FIELDS)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(fields) - set(CLI_FIELDS) == {"max_clips"}  # set by code (reproduce --smoke), not an option
    for param in run.params:
        if param.name in fields:
            field = fields[param.name]
            assert param.help == field.metadata["help"], param.name
            if field.default is not dataclasses.MISSING:  # store, model: none; K=V pairs: an empty dict
                assert param.default == field.default, (param.name, param.default)
    flags = [flag for param in run.params for flag in param.opts + param.secondary_opts]
    assert len(flags) == len(set(flags))


def test_shared_options_are_the_same_in_every_command():
    def option(command: click.Command, name: str) -> click.Option:
        return next(p for p in command.params if p.name == name)

    for name, commands in {
        "device": (sweep, reproduce, predict, embed),
        "model_opts": (sweep, reproduce),
        "emissions": (sweep, reproduce),
        "cache": (sweep,),
        "country": (sweep,),
        "seed": (sweep, reproduce),
    }.items():
        ours = option(run, name)
        for command in commands:
            theirs = option(command, name)
            assert (theirs.opts, theirs.default, getattr(theirs.type, "choices", None)) == (
                ours.opts, ours.default, getattr(ours.type, "choices", None)), (command.name, name)  # fmt: skip
    assert main.commands["run"] is run


def test_a_misspelt_model_gets_a_suggestion(small_store, tmp_path):
    result = _train("--store", small_store, "--model", "crnnn", "--out", str(tmp_path / "run"), "--no-emissions", "--quiet")
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown model 'crnnn' (did you mean 'crnn'?); known models: cnn, ")
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_a_misspelt_model_option_gets_a_suggestion(small_store, tmp_path):
    result = _train("--store", small_store, "--model", "mlp", "--model-opt", "hiden=64", "--out", str(tmp_path / "run"),
                    "--no-emissions", "--quiet")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(
        "error: unknown option(s) ['hiden'] for model 'mlp' (did you mean 'hidden'?); valid options: hidden=128")
    assert len(result.stderr.splitlines()) == 1, result.stderr
