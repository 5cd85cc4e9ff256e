"""``pipe``: build, inspect and list muzarr stores.

Exit codes: 0 success; 1 the store was built but some clips failed (listed in the summary
and in ``pipe info``); 2 bad input (a one-line message says what and where); 130 interrupted.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from pipeline.errors import MuzarrError, printable


def friendly_errors(command):
    """Turn a MuzarrError into one line on stderr and exit status 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MuzarrError as error:
            from pipeline.commands import explain  # the configuration's modules: loaded only to say an error

            click.secho(f"error: {explain(error)}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: run the same command again to resume", err=True)
            sys.exit(130)
        except MemoryError:
            # Sizes a store claims are checked before anything is allocated from them; what is left
            # is a file that really is that large (read whole by Zarr), or a machine too small.
            click.secho(
                "error: out of memory: a file of the store or input is larger than this process can hold; "
                "check the store with `pipe verify`, or run on a machine with more memory",
                fg="red", err=True,
            )
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="muzarr")
def main() -> None:
    """muzarr: audio datasets to chunked Zarr feature stores, in parallel, reproducibly.

    \b
    Quick start:
      pipe build demo                 # synthesise a demo dataset and build demo.zarr
      pipe info demo.zarr             # what is in it
      pipe ls                         # datasets the catalog knows
    """


@main.command()
@click.argument("name")
@click.option("--source", type=str, help="Folder holding the dataset's audio (default: the catalog's).")
@click.option("--out", type=str, help="Store URL or folder (default: ./NAME.zarr).")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes of the embedded cluster (default: all cores).")
@click.option("--scheduler", type=str, help="Address of an existing Dask scheduler, e.g. tcp://host:8786.")
@click.option("--waveform", "waveforms", multiple=True, metavar="K=V,...", help="Set the store's waveform (it replaces the catalog's), e.g. sample_rate=22050,storage=float32.")
@click.option("--logmel", "logmels", multiple=True, metavar="K=V,...", help="Add a log-mel variant, e.g. n_mels=128,sample_rate=16000.")
@click.option("--tabular", "tabulars", multiple=True, metavar="SET", help="Add a tabular feature set: gtzan57 or summary.")
@click.option("--embedding", "embeddings", multiple=True, metavar="MODEL[,K=V,...]", help="Add a pretrained model's hidden layers: a folder or hub name, e.g. m-a-p/MERT-v1-95M,layers=all,pool=mean (see README, Pretrained-model embeddings).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "mps"]), help="Where embeddings are computed (cuda: one worker per GPU).")
@click.option("--only", is_flag=True, help="Store only the features given with --waveform/--logmel/--tabular/--embedding.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override a catalog field: clip.seconds=3, options.tags=100, logmel.n_fft=2048.")
@click.option("--catalog", type=click.Path(dir_okay=False), help="Catalog file (default: the packaged catalog.yaml).")
@click.option("--strict", is_flag=True, help="Stop at the first clip that fails.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store built with another configuration.")
@click.option("--repair", is_flag=True, help="Verify the store first and rerun exactly its damaged batches (see `pipe verify`).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def build(name, source, out, workers, scheduler, waveforms, logmels, tabulars, embeddings, device, only, settings, catalog, strict, overwrite, repair, quiet):
    """Build the store of dataset NAME (see `pipe ls`).

    \b
    Examples:
      pipe build demo
      pipe build mtat --source ~/data/magnatagatune --out mtat.zarr
      pipe build gtzan --source ~/data/gtzan --tabular gtzan57 --workers 8
      pipe build mtat --logmel n_mels=128,sample_rate=16000 --set clip.seconds=10
      pipe build fma_small --scheduler tcp://10.0.0.5:8786 --out s3://bucket/fma.zarr
      pipe build mtat --embedding m-a-p/MERT-v1-95M --device cuda

    Re-running an interrupted build finishes it without redoing finished batches.
    --repair (with the store's own options: `pipe verify` prints the command) also checks
    every clip and reruns only the batches that hold damage.
    Exit status: 0 every clip stored, 1 some clips failed (listed), 2 bad input.
    """
    from pipeline.build import build as run_build
    from pipeline.cluster import check_scheduler_address
    from pipeline.config import config_from_command
    from pipeline.describe import storage_notes
    from pipeline.store.marker import failure_text

    if scheduler:
        check_scheduler_address(scheduler)  # before the catalog, the index and the store
    config, entry = config_from_command(
        name, catalog=catalog, waveforms=waveforms, logmels=logmels, tabulars=tabulars, embeddings=embeddings,
        only=only, settings=settings, device=device,
    )
    workers = embedding_workers(config, workers=workers, scheduler=scheduler)
    source = os.path.expanduser(source or entry.get("source") or ".")
    out = out or f"{name}.zarr"
    click.echo(f"dataset {name}: recipe {config.recipe}, source {source}")
    for feature in config.features:
        click.echo(f"  feature {feature.name}")
    report = run_build(
        config, source=source, out=out, workers=workers, scheduler=scheduler,
        strict=strict, overwrite=overwrite, progress=not quiet, repair=repair, echo=click.echo,
    )
    rate = report.n_clips / report.seconds if report.seconds else 0.0
    unreadable = report.unreadable_folders
    lost = report.array_failures
    click.echo(
        f"{out}: {report.n_ok} of {report.n_clips} clips stored, {report.n_failed} failed"
        + (f", {len(lost)} missing from one array" if lost else "")
        + (f", {len(unreadable)} source folder(s) unreadable" if unreadable else "")
        + f" ({report.batches_run} batches run, {report.batches_reused} reused, {report.seconds:.1f} s, {rate:.1f} clips/s)"
    )
    for folder in unreadable:
        click.echo(f"  failed {printable(folder['path'])}/ at index: {printable(folder['message'])}")
    for failure in report.failures[:20]:  # a clip id or path from a user's CSV may hold a newline: one line each still
        click.echo(f"  failed {printable(failure.clip_id)} ({printable(failure.path)}) at {failure.stage}: "
                   f"{printable(failure.message)}")  # fmt: skip
    if len(report.failures) > 20:
        click.echo(f"  ... and {len(report.failures) - 20} more: see `pipe info {out}`")
    for array, failure in lost[:20]:
        click.echo(f"  failed {failure.clip_id} in {failure_text(array, failure.stage, failure.message)}")
    if len(lost) > 20:
        click.echo(f"  ... and {len(lost) - 20} more: see `pipe info {out}`")
    for line in storage_notes(report.notes):
        click.echo(f"  note {line}")
    sys.exit(report.exit_code)


def embedding_workers(config, *, workers: int | None, scheduler: str | None) -> int | None:
    """The embedded cluster's workers when an embedding runs on CUDA: one per GPU (more would share one GPU's
    memory; the check that a GPU is there at all is the feature's)."""
    on_gpu = [f for f in config.features if f.kind == "embedding" and f.device == "cuda"]
    if not on_gpu or scheduler:
        return workers
    on_gpu[0].check_computable()
    import torch

    gpus = torch.cuda.device_count()
    if workers and workers > gpus:
        raise MuzarrError(f"--workers {workers}: embeddings on CUDA take one worker per GPU and this machine has {gpus}: give --workers {gpus} or fewer")
    return workers or gpus


@main.command()
@click.argument("store")
@click.option("--failures", "show_failures", type=int, default=20, show_default=True, help="How many failed clips to list.")
@friendly_errors
def info(store, show_failures):
    """Describe STORE: dataset, clip counts, arrays, splits and labels.

    \b
    Example:
      pipe info demo.zarr
      pipe info https://lab.example/mtat.zarr
    Exit status: 0 a finished store, 1 its build has not finished or it shows damage (an array that
    cannot be opened, a table that cannot be read: run `pipe verify`), 2 not a store.
    """
    from pipeline.describe import describe_store

    text, healthy = describe_store(store, max_failures=show_failures)
    click.echo(text)
    sys.exit(0 if healthy else 1)


@main.command(name="ls")
@click.option("--catalog", type=click.Path(dir_okay=False), help="Catalog file (default: the packaged catalog.yaml).")
@friendly_errors
def list_datasets(catalog):
    """List the datasets of the catalog with their task, splits and features.

    \b
    Example:
      pipe ls
    """
    from pipeline.config import config_for, load_catalog

    for name, entry in load_catalog(catalog).items():
        config = config_for(name, entry)
        click.secho(name, bold=True, nl=False)
        click.echo(f"  ({config.recipe}, {config.task}) {entry.get('description', '')}")
        click.echo(f"    source {entry.get('source', '-')}; splits {', '.join(config.splits)}; clip {_clip_text(config.clip)}")
        for feature in config.features:
            click.echo(f"    {feature.name}")


@main.command()
@click.argument("name")
@click.option("--to", "to", required=True, type=click.Path(file_okay=False), help="Folder that receives the dataset.")
@click.option("--catalog", type=click.Path(dir_okay=False), help="Catalog file (default: the packaged catalog.yaml).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def download(name, to, catalog, quiet):
    """Download, verify and extract the public archives of dataset NAME.

    Resumable: run it again after an interruption and it continues where it stopped;
    a file whose checksum does not match the catalog's is refused.

    \b
    Examples:
      pipe download mtat --to ~/data/magnatagatune
      pipe download fma_small --to ~/data/fma
    """
    from pipeline.config import load_catalog
    from pipeline.download import download_dataset

    entries = load_catalog(catalog)
    if name not in entries:
        raise MuzarrError(f"unknown dataset {name!r}; the catalog has: {', '.join(entries)} (see `pipe ls`)")
    sources = entries[name].get("download")
    if not sources:
        with_download = [n for n, e in entries.items() if e.get("download")]
        raise MuzarrError(
            f"dataset {name!r} has no public archive to download; datasets with one: {', '.join(with_download)}"
        )
    folder = download_dataset(name, os.path.expanduser(to), sources=sources, progress=not quiet)
    click.echo(f"{name}: ready in {folder}; build it with: pipe build {name} --source {folder}")


@main.command()
@click.argument("store")
@click.option("--features", metavar="SET", help="Tabular set to export as a table (csv, parquet), e.g. gtzan57 or summary.")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "datasets", "webdataset"]),
              help="Output format (default: from --out's suffix); datasets and webdataset write a folder.")
@click.option("--out", required=True, type=click.Path(), help="Output file (csv, parquet) or folder (datasets, webdataset).")
@click.option("--split", metavar="PART", help="datasets/webdataset: train, valid or test of the first split scheme, "
              "or SCHEME:PART (default: every part).")
@click.option("--arrays", metavar="NAMES", help="datasets/webdataset: comma-separated arrays (default: every array).")
@friendly_errors
def export(store, features, fmt, out, split, arrays):
    """Export a tabular feature set of STORE as a table: filename, length, <features>, label;
    or a split of its arrays as a Hugging Face datasets folder or WebDataset shards.

    The GTZAN 57 export has the columns of Kaggle's features_30_sec.csv (one row per
    sub-clip, like features_3_sec.csv, when the store splits its clips).

    \b
    Examples:
      pipe export gtzan.zarr --features gtzan57 --out features_30_sec.csv
      pipe export gtzan.zarr --features summary --format parquet --out summary.parquet
      pipe export demo.zarr --format datasets --split train --arrays waveform --out demo-hf
      pipe export demo.zarr --format webdataset --out demo-shards
    """
    from pipeline.store.reader import open_store

    if fmt in ("datasets", "webdataset"):
        from pipeline.export_peers import export_peer

        if features:
            raise MuzarrError(f"--features exports a tabular set as a table (csv, parquet); --format {fmt} exports arrays: use --arrays")
        click.echo(export_peer(open_store(store), fmt=fmt, out=out, split=split, arrays=arrays).line())
        return
    from pipeline.export import export_table

    if not features or split or arrays:
        raise MuzarrError("a table export (csv, parquet) needs --features SET and takes no --split/--arrays "
                          "(those are for --format datasets or webdataset)")  # fmt: skip
    if os.path.isdir(out):
        raise MuzarrError(f"--out {out} is a folder: a table export writes a file (e.g. --out features.csv)")
    table = export_table(open_store(store), features, out=out, fmt=fmt)
    click.echo(f"{out}: {len(table)} rows x {table.shape[1]} columns ({features})")


def _clip_text(clip) -> str:
    if clip.mode == "track":
        return f"track (whole files, at most {clip.max_seconds:g} s each)"
    if clip.mode == "split":
        return f"split {clip.total_seconds:g} s into {clip.n_subclips} x {clip.seconds:g} s"
    return f"{clip.mode} {clip.seconds:g} s"


@main.command()
@click.argument("store")
@friendly_errors
def verify(store):
    """Check every clip of STORE against its checksums, and its tables against each other.

    \b
    Examples:
      pipe verify demo.zarr
      pipe verify s3://bucket/mtat.zarr
    Exit status: 0 clean, 1 damage found (each damaged clip, chunk, shard or table is listed), 2 not a store.
    """
    from pipeline.commands import repair_command
    from pipeline.store.reader import open_store
    from pipeline.store.verify import verify_store

    opened = open_store(store)
    repair = repair_command(opened)  # before any chunk is read (see repair_command)
    report = verify_store(opened)
    for line in report.lines(repair=repair):
        click.echo(line)
    sys.exit(report.exit_code)


@main.command()
@click.argument("src")
@click.argument("dst")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at DST.")
@friendly_errors
def copy(src, dst, overwrite):
    """Copy the finished store SRC to DST (local, s3://, http(s):// sources) and verify the copy.

    \b
    Examples:
      pipe copy demo.zarr s3://bucket/demo.zarr
      pipe copy https://lab.example/mtat.zarr mtat.zarr
    An interrupted copy resumes: run the same command again and it keeps what was copied.
    Exit status: 0 copied and verified, 1 the copy does not verify (damage listed), 2 bad input.
    """
    from pipeline.commands import repair_command
    from pipeline.store.copy import copy_store
    from pipeline.store.reader import open_store

    report = copy_store(src, dst, overwrite=overwrite)
    resumed = f"; {report.n_kept} more kept from the interrupted copy" if report.n_kept else ""
    click.echo(
        f"copied {report.n_keys - report.n_kept} objects ({report.n_bytes / 2**20:.1f} MiB) from {src} to {dst}{resumed}"
    )
    repair = None if report.ok else repair_command(open_store(report.dst))
    for line in report.verify.lines(repair=repair):
        click.echo(line)
    sys.exit(report.verify.exit_code)



@main.command()
@click.argument("store")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for examples.png and labels.png (default: STORE.plots beside a local store; NAME.plots here for a remote one).")
@click.option("--per-class", default=1, show_default=True, type=click.IntRange(min=1, max=20), help="Example clips per class (or tag).")
@click.option("--array", help="Log-mel array to show (default: the store's first; see `pipe info`).")
@friendly_errors
def plot(store, out, per_class, array):
    """Draw example log-mel spectrograms per class and the label distribution of STORE.

    Needs matplotlib (pip install 'muzarr[train]').

    \b
    Examples:
      pipe plot demo.zarr --out figures
      pipe plot fma.zarr --per-class 3 --array logmel/mel128_sr22050_fft2048_hop512
    """
    from pipeline.plot import plot_store

    for path in plot_store(store, out, per_class=per_class, array=array):
        click.echo(f"wrote {path}")

if __name__ == "__main__":  # pragma: no cover
    main()
