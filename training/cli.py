"""``train``: stream a muzarr store into a model and write a run directory.

``train --store URL --model NAME [options]`` trains; ``train models`` lists the models;
``train sweep``, ``compare``, ``predict`` and ``embed`` search, compare and use trained runs;
``train probe`` probes every layer of a stored embedding (:mod:`training.cli_probe`);
``train reproduce`` re-runs a published table from its paper file.
Exit codes: 0 success; 2 bad input (one line says what and where); 130 interrupted
(``train --resume DIR`` continues from the last finished epoch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import io
import os
import sys
from pathlib import Path
from typing import Any

import click

from pipeline.cli import friendly_errors
from pipeline.errors import MuzarrError, write_errors
from pipeline.suggest import did_you_mean
from training.data.augment import format_augment
from training.experiments.reproduce import PAPERS, load_paper, parse_stores, run_paper
from training.experiments.summary import summarise_repeats
from training.experiments.sweep import load_sweep, run_sweep
from training.experiments.sweep_cluster import Cluster
from training.models import MODELS, model_options
from training.options import CLI_FIELDS, config_options, config_values
from training.run.checkpoint import write_atomic
from training.run.config import TrainConfig
from training.run.distributed import LAUNCHED_BY_TRAIN, LOST, LostRank, RankError, context, launched, stop_on_sigterm
from training.run.inference import load_run
from training.run.launch import launch, without_launch_options
from training.run.loop import Run
from training.run.predict import embeddings, write_embeddings
from training.run.predict import predict as predict_clips
from training.run.protocol import Phases

#: the command ``train`` runs when its first argument names none
DEFAULT_COMMAND = "run"


class DefaultToRun(click.Group):
    """A group whose default subcommand is ``run``: ``train --store X --model Y`` just trains, and
    ``train --help`` lists ``run``'s options beside the commands (what ``train run --help`` shows)."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help", "--version"):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def format_options(self, ctx, formatter):
        params = [*self.commands[DEFAULT_COMMAND].params, *self.get_params(ctx)]  # then --version, --help
        records = [record for param in params if (record := param.get_help_record(ctx)) is not None]
        with formatter.section(f"Options (of `train {DEFAULT_COMMAND}`, the default command)"):
            formatter.write_dl(records)
        self.format_commands(ctx, formatter)


@click.group(cls=DefaultToRun, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="muzarr")
def main() -> None:
    """Train models on muzarr stores: metrics, curves, per-tag scores and CO2 for every run.

    \b
    Examples:
      train --store demo.zarr --model crnn
      train --store mtat.zarr --model short_res --device cuda --amp
      train --store mtat-split.zarr --model dieleman --model-opt filter_length=512 --model-opt stride=256 --repeats 5
      train --resume runs/mtat-crnn-20261120-101500
      train models                    # every model, its input and its protocol
      train sweep --store demo.zarr --model mlp --config sweep.yaml --trials 20 --method bayes
      train compare runs/demo-mlp runs/demo-cnn
      train reproduce won2020 --store mtat.zarr   # a published table, row by row (--list: all)
      train predict --checkpoint runs/demo-cnn --store demo.zarr --out predictions.csv
      train embed --checkpoint runs/demo-cnn --store demo.zarr --out emb.parquet
      train probe --store mtat-mert.zarr --embedding MERT-v1-95M   # MARBLE's probes, every layer
    """


def one_rank_speaks(command):
    """Under ``torchrun``: rank 0 alone prints and reports what every rank would (a bad option,
    a missing store); an error of one rank's own (its shards, a lost peer) is reported by that
    rank; torchrun stopping a rank (after another failed) is one line, exit 143."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        if not launched():
            return command(*args, **kwargs)
        with stop_on_sigterm():
            ctx = context()  # a rank that cannot join says so (RankError)
            try:
                if not ctx.is_main:
                    with _silenced():
                        return command(*args, **kwargs)
                return command(*args, **kwargs)
            except MuzarrError as err:
                if isinstance(err, LostRank) and os.environ.get(LAUNCHED_BY_TRAIN):
                    sys.exit(LOST)  # the launcher names the rank that went away
                if ctx.is_main or isinstance(err, RankError):
                    raise
                sys.exit(2)
            except KeyboardInterrupt:  # Ctrl-C reaches every rank: rank 0 says it
                if ctx.is_main:
                    raise
                sys.exit(130)
            finally:
                ctx.close()

    return wrapper


def _silenced():
    """Standard output of a rank other than 0: dropped (errors still reach stderr)."""
    return contextlib.redirect_stdout(io.StringIO())


@main.command(name="run")
@config_options(*CLI_FIELDS)
@click.option("--repeats", default=1, show_default=True, type=click.IntRange(min=1),
              help="Runs with seeds seed..seed+N-1, plus a mean ± std summary, e.g. 5.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default: runs/DATASET-MODEL-TIME).")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this directory from its last finished epoch.")
@click.option("--overwrite", is_flag=True, help="Replace another run's files in --out (the same command otherwise continues its own run).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--nproc-per-node", type=click.IntRange(min=1), help="Data-parallel ranks on this machine (one per GPU): train launches them (torchrun's agent).")
@click.option("--nnodes", default=1, show_default=True, type=click.IntRange(min=1), help="Machines of a --nproc-per-node run; each runs the same command.")
@click.option("--node-rank", default=0, show_default=True, type=click.IntRange(min=0), help="This machine's number (0 = the --rdzv-endpoint machine).")
@click.option("--rdzv-endpoint", metavar="HOST:PORT", help="Machine 0's address and a free port, for --nnodes > 1.")
@friendly_errors
@one_rank_speaks
def run(repeats, out, resume, overwrite, quiet, nproc_per_node, nnodes, node_rank, rdzv_endpoint, **settings):  # fmt: skip
    """Train MODEL on STORE with its paper's protocol and write a run directory.

    \b
    Examples:
      train --store demo.zarr --model crnn
      train --store demo.zarr --model cnn --epochs 5 --lr 1e-3 --out runs/cnn
      train --store fma.zarr --model cnn2d_gru --augment specaugment,mixup_alpha=0.2
      train --resume runs/cnn
      train --store mtat.zarr --model short_res --nproc-per-node 4     # 4 GPUs, one rank each
      torchrun --nproc_per_node 4 $(which train) --store mtat.zarr --model short_res   # the same
    """
    store, model = settings["store"], settings["model"]
    if nproc_per_node and not launched():
        argv = without_launch_options(sys.argv[1:])
        if not resume and not out:  # one folder for every rank, named here
            out = str(_default_out(store or "store", model or "model"))
            argv += ["--out", out]
        where = f"--resume {resume}" if resume else f"--out {out} (the same command)"
        hint = f"train --nproc-per-node {nproc_per_node} {where}"
        sys.exit(launch(argv, nproc_per_node=nproc_per_node, nnodes=nnodes, node_rank=node_rank,
                        rdzv_endpoint=rdzv_endpoint, resume_hint=hint))  # fmt: skip
    if resume:
        try:
            result = Run.resume(Path(resume), progress=not quiet).fit()
        except KeyboardInterrupt:
            click.echo(f"interrupted: continue with `train --resume {resume}`", err=True)
            sys.exit(130)
        _print_result(result, Path(resume))
        return
    if not store or not model:
        raise MuzarrError("train needs --store URL and --model NAME (or --resume DIR); see `train --help`")
    config = TrainConfig(**config_values(settings))
    seed = config.seed
    base = context().broadcast(Path(out) if out else _default_out(store, model))  # rank 0 names it
    if repeats == 1:
        _print_result(_train_once(config, base, overwrite=overwrite, quiet=quiet), base)
        return
    results = []
    for i in range(repeats):
        click.secho(f"repeat {i + 1}/{repeats} (seed {seed + i})", bold=True)
        run_dir = base / f"repeat-{i}"
        results.append(_train_once(TrainConfig(**{**config.to_dict(), "seed": seed + i}), run_dir, overwrite=overwrite, quiet=quiet))
        _print_result(results[-1], run_dir)
    summary = summarise_repeats(results, base, seeds=[seed + i for i in range(repeats)])
    click.echo(summary)


def _train_once(config, out: Path, *, overwrite: bool, quiet: bool) -> dict[str, Any]:
    """Train ``config`` into ``out``; the same command again continues an unfinished run there and
    keeps a finished one; another run there is refused unless ``overwrite``."""
    from training.run.distributed import context
    from training.run.loop import Run
    from training.run.rundir import RunDir

    config = config.with_absolute_store()  # as the run records it
    # rank 0 looks at the run folder and tells the others (who may not see it)
    state = context().on_main(RunDir(out).status, config.to_dict(), overwrite=overwrite)
    try:
        if state == "finished":
            click.echo(f"{out}: this run has finished already (add --overwrite to train it again)")
            return context().on_main(RunDir(out).read_metrics)
        if state == "resume":
            click.echo(f"{out}: continuing this run after its last finished epoch")
            return Run.resume(out, progress=not quiet).fit()
        return Run(config, out, progress=not quiet).fit()
    except KeyboardInterrupt:
        click.echo(f"interrupted: continue with `train --resume {out}` (or the same command)", err=True)
        sys.exit(130)


def _default_out(store: str, model: str) -> Path:
    name = Path(store.rstrip("/")).name.removesuffix(".zarr") or "store"
    return Path("runs") / f"{name}-{model}-{_dt.datetime.now():%Y%m%d-%H%M%S}"


def _print_result(metrics: dict[str, Any], out: Path) -> None:
    from training.run.rundir import RunDir

    primary = metrics["primary_metric"]
    test, valid = metrics["test"], metrics["valid"]
    line = f"{metrics['model']} on {metrics['dataset']}: best epoch {metrics['best_epoch']} of {metrics['epochs_run']}, "
    line += f"valid {primary} {valid[primary]:.4f}, test {primary} {test.get(primary, float('nan')):.4f}"
    if "pr_auc" in test:
        line += f", test pr_auc {test['pr_auc']:.4f}"
    if "f1_macro" in test:
        line += f", test f1_macro {test['f1_macro']:.4f}"
    if metrics.get("split_scheme"):  # chosen silently when the store has one scheme: said here
        line += f", split scheme {metrics['split_scheme']!r}"
    click.echo(line)
    co2 = metrics.get("co2_kg")
    # the grid's carbon intensity is an assumption (--country, ESP unless given): say whose
    grid = f" (grid of {metrics.get('co2_country') or '?'}, --country to change)"
    click.echo(
        f"  {metrics['parameters']:,} parameters, {metrics['train_seconds']:.0f} s training on {metrics['device']}"
        + (f", {metrics['energy_kwh'] * 1000:.2f} Wh, {co2 * 1000:.3f} g CO2eq{grid}" if co2 is not None else "")
    )
    click.echo(f"  run directory: {out} (metrics.json, history.csv, *.png, best.pt)")
    if RunDir(out).has_events():
        click.echo(f"  TensorBoard: tensorboard --logdir {out}")


@main.command(name="models")
@friendly_errors
def list_models():
    """List the models: input they read, options and training protocol.

    \b
    Example:
      train models
    """

    for name, entry in MODELS.items():
        click.secho(name, bold=True, nl=False)
        click.echo(f"  {entry.doc}")
        seconds = f", {entry.input.seconds:g} s examples" if entry.input.seconds else ", whole clips"
        click.echo(f"    input: {entry.input.build_hint()}{seconds if entry.input.kind != 'tabular' else ''}")
        click.echo(f"    protocol: {describe_protocol(entry.protocol)}")
        click.echo(f"    options: {', '.join(f'{k}={v!r}' for k, v in model_options(name).items()) or '-'}")


def describe_protocol(protocol) -> str:
    """One line a person can read: optimizer, schedule, epochs, batch, monitor, evaluation."""

    p = protocol
    text = f"{p.optimizer} lr {p.lr:g}" + (f" wd {p.weight_decay:g}" if p.weight_decay else "")
    if p.optimizer in ("sgd", "rmsprop"):
        text += f" momentum {p.momentum:g}" + (" nesterov" if p.nesterov else "")
    schedule = p.schedule
    if isinstance(schedule, Phases):
        steps = []
        for i, phase in enumerate(schedule.phases[1:], start=1):
            what = (phase.optimizer + " " if phase.optimizer else "") + (f"lr {phase.lr:g}" if phase.lr else "")
            steps.append(f"epoch {schedule.starts()[i] + 1}: {'reload best, ' if phase.reload_best else ''}{what}")
        text += "; then " + "; ".join(steps)
    elif schedule.name != "none":
        settings = {k: v for k, v in schedule.to_dict().items() if k != "name"}
        text += f"; {schedule.name} " + ",".join(f"{k}={v}" for k, v in settings.items())
    text += f"; {p.epochs} epochs, batch {p.batch_size}"
    text += f"; best by valid {p.monitor or 'primary metric'}"
    if p.early_stopping:
        text += f", early stop after {p.early_stopping}"
    if p.eval_crops:
        text += f"; eval {p.eval_crops} crops ({p.eval_placement})"
    if p.sub_clips:
        text += f"; {p.sub_clips} sub-clips per clip" + (", whole clips per batch" if p.group_subclips else "")
    if p.split_scheme:
        text += f"; split {p.split_scheme}"
    if p.augment.active:
        text += f"; augment {format_augment(p.augment)}"
    return text


# -- experiments: sweeps, comparisons, predictions, embeddings -----------------------------
@main.command(name="sweep")
@config_options("store", "model", "input", store={"required": True}, model={"required": True})
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Sweep file (W&B format, seed 002's sweep.yaml).")
@click.option("--trials", default=10, show_default=True, type=click.IntRange(min=1), help="Trials to finish (grid: at most every combination).")
@click.option("--method", type=click.Choice(["grid", "random", "bayes"]), help="Search (default: the file's method, else random); bayes = Optuna TPE.")
@click.option("--out", type=click.Path(file_okay=False), help="Sweep folder (default: runs/STORE-sweep-MODEL-TIME); rerun with it to resume.")
@config_options("epochs", "split_scheme", "model_opts", "seed", "device", "eval_crops", "cache", "emissions", "country",
                epochs={"help": "Epochs of every trial, e.g. 5 (overrides the sweep file)."},
                model_opts={"help": "A model option fixed for every trial, e.g. --model-opt hidden=256."},
                seed={"help": "Seed of every trial and of the sampler."})  # fmt: skip
@click.option("--parallel", type=click.IntRange(min=1), metavar="K", help="Trials at once, on Dask workers (default: 1 here; with --scheduler, one per worker).")
@click.option("--scheduler", metavar="ADDRESS", help="Dask scheduler to run the trials on, e.g. tcp://host:8786 (default: an embedded cluster when --parallel > 1).")
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads per trial (default: the cores of a machine divided among its trials at once).")
@click.option("--storage", metavar="URL", help="Optuna storage of the study: sqlite:///PATH, postgresql://..., or journal:PATH (default: OUT/optuna.db).")
@friendly_errors
def sweep(config_path, trials, method, out, parallel, scheduler, threads, storage, **settings):
    """Search hyper-parameters: one run directory per trial, a leaderboard, resumable.

    \b
    Examples:
      train sweep --store demo.zarr --model mlp --config sweep.yaml --trials 20 --method bayes --out runs/sweep
      train sweep --store fma.zarr --model cnn2d_gru --config sweep.yaml --trials 30 --out runs/fma-sweep
      train sweep --store demo.zarr --model cnn --config sweep.yaml --trials 8 --parallel 2 --out runs/sweep2
      train sweep --store /shared/mtat.zarr --model crnn --config sweep.yaml --trials 40 --method bayes \\
          --scheduler tcp://head:8786 --device cuda --storage journal:/shared/sweep.journal --out /shared/sweep
    \b
    sweep.yaml (seed 002's format):
      method: bayes
      parameters:
        learning_rate: {values: [1.0e-4, 3.0e-4, 1.0e-3]}
        batch_size: {values: [16, 32]}
        weight_decay: {min: 1.0e-6, max: 1.0e-3, distribution: log_uniform_values}
    Run the same command again to resume: finished trials are kept, an interrupted one continues.
    With --scheduler, --out and the store must be on a filesystem every worker sees at the same path.
    """
    base = TrainConfig(**config_values(settings))
    store, model = base.store, base.model
    spec = load_sweep(config_path, model=model)
    if method:
        spec = dataclasses.replace(spec, method=method)
    folder = Path(out) if out else _default_out(store, f"sweep-{model}")
    cluster = Cluster(parallel=parallel, scheduler=scheduler, threads=threads)
    click.echo(f"{spec.method} sweep of {model} on {store}: {trials} trials in {folder} (rerun with --out {folder} to resume)")
    table = run_sweep(spec, base, folder, trials=trials, cluster=cluster, storage=storage, echo=click.echo)
    click.echo((folder / "leaderboard.md").read_text().rstrip())
    click.echo(f"leaderboard: {folder / 'leaderboard.csv'} ({len(table)} trials)")


@main.command(name="compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Folder for compare.md, compare.csv, compare.png (default: the folder holding the runs).")
@click.option("--metric", "extra", multiple=True, help="Another test metric column, e.g. pr_auc or f1_macro.")
@friendly_errors
def compare(run_dirs, out, extra):
    """Compare runs in one table (seed 000's layout) and overlay their curves.

    Runs of one configuration with different seeds (a --repeats folder, or several run
    directories) are one row, as mean ± std.

    \b
    Examples:
      train compare runs/demo-mlp runs/demo-cnn --out runs/compare
      train compare runs/mtat-crnn-5seeds runs/mtat-dieleman-5seeds --metric pr_auc
    """
    from training.experiments.compare import compare as run_compare
    from training.experiments.compare import default_out

    out = default_out(list(run_dirs)) if out is None else out
    click.echo(run_compare(list(run_dirs), out, extra=tuple(extra)))
    click.echo(f"written: {Path(out) / 'compare.md'}, compare.csv, compare.png")


@main.command(name="reproduce")
@click.argument("name", required=False)
@click.option("--store", "stores", multiple=True, metavar="[ROLE=]URL", help="Store of the paper's main role, or ROLE=URL for another role (seed001: subclips=URL).")
@click.option("--out", type=click.Path(file_okay=False), help="Folder of the runs and reports (default: runs/reproduce-NAME, -smoke with --smoke); rerun with it to resume.")
@click.option("--smoke", is_flag=True, help="One 1-epoch run per row on at most 16 clips per split, 2 evaluation crops: checks the paper runs; not comparable.")
@config_options("device", "seed", "emissions", "model_opts", seed={"help": "Repeat i runs with seed + i."},
                model_opts={"help": "Model option for every row whose model takes it, e.g. --model-opt weights=resnet50.pth."})  # fmt: skip
@click.option("--task", metavar="TASK", help="marble only: which of MARBLE's tables, mtat or jamendo (top-50 tagging).")
@click.option("--list", "list_papers", is_flag=True, help="List the papers: rows, datasets, GPU-hours estimate.")
@click.option("--verbose", is_flag=True, help="Also print every epoch and progress bars of each run.")
@friendly_errors
def reproduce(name, stores, out, smoke, task, list_papers, verbose, **settings):
    """Re-run a paper's or seed report's table from its paper and set it beside the published numbers.

    Every row is checked before any trains (stores, arrays, sub-clips, weights), then each
    row x repeat trains into OUT/ROW/repeat-N; OUT gets reproduce.md, reproduce.csv,
    reproduce.png and compare.png. Run the same command again to resume: finished runs are
    kept, an interrupted one continues. NAME is a paper name or a paper .yaml file.

    \b
    Examples:
      train reproduce --list
      train reproduce won2020 --store mtat.zarr --device cuda
      train reproduce won2020 --store demo.zarr --smoke
      train reproduce seed001 --store mtat.zarr --store subclips=mtat-split.zarr
      train reproduce seed003 --store gtzan.zarr --model-opt weights=resnet50.pth
      train reproduce seed004 --store gtzan.zarr --model-opt weights=wav2vec2-base --out runs/seed004
      train reproduce marble --task mtat --store mtat-mert.zarr   # MARBLE's probes of a stored embedding
      train reproduce marble --task mtat --smoke                   # builds a tiny store itself
    """
    if list_papers:
        for paper in map(load_paper, PAPERS):
            click.secho(paper.name, bold=True, nl=False)
            click.echo(f"  {paper.title}")
            click.echo(f"    {len(paper.rows)} rows ({paper.n_runs} runs): {', '.join(row.label for row in paper.rows)}")
            click.echo(f"    dataset: {paper.dataset}; stores: {', '.join(paper.roles)}; metrics: {', '.join(paper.metrics)}")
            click.echo(f"    about {paper.gpu_hours:g} GPU-hours ({paper.gpu_hours_basis})")
        _list_marble()
        return
    if name == "marble":
        _reproduce_marble(task, stores, out, smoke, verbose, settings)
        return
    if task is not None:
        raise MuzarrError(f"--task {task}: only `train reproduce marble` takes --task (paper {name} has one table)")
    if not name:
        raise MuzarrError(f"train reproduce needs a paper NAME (one of {', '.join(PAPERS)}, marble) or --list")
    if name not in PAPERS and not (Path(name).suffix in (".yaml", ".yml") and Path(name).is_file()):
        raise MuzarrError(f"unknown paper {name!r}{did_you_mean(name, [*PAPERS, 'marble'], quote=True)}; known papers: "
                          f"{', '.join(PAPERS)}, marble (or a path to a .yaml file)")  # fmt: skip
    paper = load_paper(name)
    folder = Path(out) if out else Path("runs") / f"reproduce-{paper.name}{'-smoke' if smoke else ''}"
    run_paper(paper, parse_stores(stores), folder, smoke=smoke, **config_values(settings), progress=verbose, echo=click.echo)
    click.echo((folder / "reproduce.md").read_text().rstrip())
    click.echo(f"written: {folder / 'reproduce.md'}, reproduce.csv, reproduce.png, compare.png")


def _list_marble() -> None:
    from training.experiments.marble import MARBLE_MODEL, MARBLE_TASKS

    click.secho("marble", bold=True, nl=False)
    click.echo("  MARBLE's probes of a stored embedding, every layer (train probe), beside the published rows")
    for task in MARBLE_TASKS.values():
        rows = ", ".join(f"{p.model} {p.roc_auc * 100:.1f}/{p.pr_auc * 100:.1f}" for p in task.published)
        click.echo(f"    --task {task.name}: {task.title}, split {task.split_scheme}; published ROC/PR-AUC: {rows}")
    click.echo(f"    store: {MARBLE_TASKS['mtat'].build_command('mtat-mert.zarr')}; probes take minutes on a CPU "
               f"(docs/benchmarks.md, Probes); the {MARBLE_MODEL} build is the GPU work")  # fmt: skip


def _reproduce_marble(task, stores, out, smoke, verbose, settings) -> None:
    from training.experiments.marble import marble_task, run_marble

    chosen = marble_task(task)
    if settings.get("model_opts"):
        raise MuzarrError("--model-opt: marble trains probes, not a registered model: see `train probe --help` for their settings")
    folder = Path(out) if out else Path("runs") / f"reproduce-marble-{chosen.name}{'-smoke' if smoke else ''}"
    values = config_values(settings)
    run_marble(chosen.name, parse_stores(stores), folder, smoke=smoke, device=values["device"], seed=values["seed"],
               emissions=values["emissions"], progress=verbose, echo=click.echo)  # fmt: skip
    click.echo((folder / "reproduce.md").read_text().rstrip())
    click.echo(f"written: {folder / 'reproduce.md'}, reproduce.csv, reproduce.png, probe/ (layers.csv, layers.png)")


def _run_inputs(verb: str):
    """The options ``predict`` and ``embed`` share: which run, which store, which clips, which device."""

    def decorate(command):
        command = config_options("device")(command)  # the last of these: click lists the outermost first
        for option in reversed((
            click.option("--checkpoint", "run_dir", required=True, type=click.Path(file_okay=False),
                         help="Run directory (config.json + best.pt)."),
            click.option("--store", required=True, help=f"Store to {verb}, labelled or not."),
            click.option("--split", default="test", show_default=True, type=click.Choice(["train", "valid", "test", "all"]),
                         help=f"Clips to {verb}; all = every stored clip."),
            click.option("--split-scheme", help="Split scheme (default: the run's, else the store's first)."),
        )):  # fmt: skip
            command = option(command)
        return command

    return decorate


@main.command(name="predict")
@_run_inputs("predict")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="CSV to write.")
@click.option("--scores", is_flag=True, help="multiclass: add one probability column per class.")
@click.option("--threshold", type=click.FloatRange(0, 1), help="multilabel: add pred_<tag> 0/1 columns (score >= threshold).")
@friendly_errors
def predict(run_dir, store, split, split_scheme, out, scores, threshold, device):
    """Per-clip predictions of a trained run as a CSV (seed 003's Kaggle submission).

    multiclass: id,label (+ a probability per class with --scores); multilabel: id and a
    score per tag (+ pred_<tag> columns with --threshold). Scores average the crops the run
    evaluated, so they reproduce its metrics.json.

    \b
    Examples:
      train predict --checkpoint runs/gtzan-cnn5 --store kaggle-test.zarr --split all --out submission.csv
      train predict --checkpoint runs/demo-mlp --store demo.zarr --split test --threshold 0.5 --out pred.csv
    """
    path = _output_file(out, "--out")  # before the predictions: a path that cannot be written is said first
    table = predict_clips(load_run(run_dir, device=device), store, split=split, split_scheme=split_scheme,
                        with_scores=scores, threshold=threshold)  # fmt: skip
    with write_errors(str(path.parent)):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: table.to_csv(tmp, index=False))  # an earlier file stays whole until replaced
    click.echo(f"{out}: {len(table)} clips")


@main.command(name="embed")
@_run_inputs("embed")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Parquet file: clip_id, label(s), e0..eD.")
@click.option("--plot", type=click.Path(dir_okay=False), help="t-SNE figure (default: tsne.png beside --out).")
@click.option("--no-plot", is_flag=True, help="Write the embeddings only.")
@click.option("--seed", default=0, show_default=True, type=int, help="t-SNE seed.")
@friendly_errors
def embed(run_dir, store, split, split_scheme, out, plot, no_plot, seed, device):
    """Penultimate-layer embeddings per clip to Parquet, and their t-SNE map (seed 002).

    \b
    Examples:
      train embed --checkpoint runs/fma-cnn2d_gru --store fma.zarr --split test --out emb.parquet
      train embed --checkpoint runs/demo-cnn --store demo.zarr --split all --out emb.parquet --plot tsne-all.png
    """
    path = _output_file(out, "--out")  # before the embeddings: a path that cannot be written is said first
    figure = None if no_plot else _output_file(plot, "--plot") if plot else path.parent / "tsne.png"
    run = load_run(run_dir, device=device)
    table = embeddings(run, store, split=split, split_scheme=split_scheme)
    title = f"t-SNE of {run.config.model} embeddings ({split}, {len(table)} clips)"
    with write_errors(str(path.parent)):
        written = write_embeddings(table, path, plot=figure, title=title, seed=seed)
    n_dims = sum(c.startswith("e") and c[1:].isdigit() for c in table.columns)
    click.echo(f"{out}: {len(table)} clips x {n_dims} dimensions" + (f"; t-SNE: {written}" if written else ""))


def _output_file(out: str, option: str) -> Path:
    """The file ``option`` names, checked before any work: a file standing where one of its folders must
    be is one line (folders that do not exist yet are made when the file is written)."""
    path = Path(out)
    for folder in reversed(path.parents):
        if folder.exists() and not folder.is_dir():
            raise MuzarrError(f"{option} {out}: {folder} is a file, not a folder: choose another {option}")
    return path


def _register_probe() -> None:
    from training.cli_probe import probe

    main.add_command(probe)


_register_probe()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
