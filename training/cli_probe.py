"""``train probe``: layer-wise probes of a stored embedding (or any per-clip vector), MARBLE's way.

Registered on the ``train`` group by :mod:`training.cli`; the work is
:func:`training.experiments.probe.run_probe`.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import click

from pipeline.cli import friendly_errors
from pipeline.errors import MuzarrError
from training.experiments.probe import PROBES, ProbeConfig, run_probe
from training.experiments.probe_engine import ProbeSettings
from training.experiments.probe_report import ProbeDir, summary_text
from training.options import config_options

_DEFAULTS = ProbeSettings()


def probe_input(embedding: str | None, given: str | None) -> str:
    """The one ``--input`` spelling from ``--embedding VARIANT`` (shorthand) or ``--input ARRAY``."""
    if embedding and given:
        raise MuzarrError(f"give --embedding {embedding} or --input {given}, not both (--embedding V is --input embedding/V)")
    if embedding:
        if "/" in embedding or "," in embedding:
            raise MuzarrError(f"--embedding {embedding}: give the variant alone (e.g. --embedding MERT-v1-95M), or use --input "
                              f"embedding/VARIANT[,layer=N]")  # fmt: skip
        return f"embedding/{embedding}"
    if not given:
        raise MuzarrError("train probe needs --embedding VARIANT or --input ARRAY (e.g. --input tabular/summary); "
                          "`pipe info STORE` lists the store's arrays")  # fmt: skip
    return given


@click.command(name="probe")
@click.option("--store", required=True, help="Store holding the embedding, e.g. mtat-mert.zarr.")
@click.option("--embedding", metavar="VARIANT", help="Probe embedding/VARIANT (the same as --input embedding/VARIANT).")
@click.option("--input", "given_input", metavar="ARRAY[,layer=N]",
              help="Per-clip vector array to probe: embedding/VARIANT[,layer=N] or tabular/SET, e.g. tabular/summary.")
@click.option("--probe", "kind", default="both", show_default=True, metavar="|".join(PROBES),
              help="MLP probe (512 hidden, ReLU, dropout 0.2), linear probe, or both.")
@click.option("--layers", metavar="LIST", help="Layers to probe, e.g. 0-12,all or 4,7 (default: every stored layer and all, their mean).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_DEFAULTS.lr, show_default=True, help="Adam learning rate.")
@click.option("--batch-size", type=click.IntRange(min=1), default=_DEFAULTS.batch_size, show_default=True, help="Clips per step.")
@click.option("--max-epochs", type=click.IntRange(min=1), default=_DEFAULTS.max_epochs, show_default=True, help="Epochs at most.")
@click.option("--patience", type=click.IntRange(min=1), default=_DEFAULTS.patience, show_default=True,
              help="Stop a probe after this many epochs without a better validation metric.")
@config_options("split_scheme", "seed", "device", "emissions", "country",
                split_scheme={"help": "Split scheme of the store, e.g. dieleman (default: the store's first)."},
                seed={"help": "Seed of the probes' weights, dropout and batches."})  # fmt: skip
@click.option("--threads", type=click.IntRange(min=1), help="Torch CPU threads (default: torch's; on a busy shared machine 1 is often fastest).")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for layers.csv, layers.png, probe.json (default: runs/STORE-probe-ARRAY-TIME).")
@click.option("--overwrite", is_flag=True, help="Run again into an --out that holds a finished probe run.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def probe(store, embedding, given_input, kind, layers, lr, batch_size, max_epochs, patience, split_scheme, seed, device,
          emissions, country, threads, out, overwrite, quiet):  # fmt: skip
    """Probe every layer of a stored embedding (and their mean) with MARBLE's MLP and linear probes.

    All layers' probes train in one batched pass on the vectors read once into memory; each
    stops early on its own validation metric (ROC-AUC for tags, accuracy for classes). The best
    layer is picked on validation and its test score reported. Defaults: MARBLE v2's probe
    configs (docs/probes.md).

    \b
    Examples:
      train probe --store mtat-mert.zarr --embedding MERT-v1-95M
      train probe --store mtat-mert.zarr --embedding MERT-v1-95M --layers 4-8,all --probe linear --device cuda
      train probe --store demo.zarr --input embedding/hubert,layer=7 --max-epochs 20
      train probe --store gtzan.zarr --input tabular/summary --out runs/gtzan-summary-probe
    \b
    Writes OUT/layers.csv (one row per probe and layer), OUT/layers.png, OUT/probe.json.
    """
    config = ProbeConfig(
        store=store, input=probe_input(embedding, given_input), probe=kind, layers=layers, lr=lr, batch_size=batch_size,
        max_epochs=max_epochs, patience=patience, seed=seed, split_scheme=split_scheme, device=device, emissions=emissions,
        country=country, threads=threads,
    )  # fmt: skip
    folder = Path(out) if out else default_out(store, config.input)
    result = run_probe(config, folder, overwrite=overwrite, progress=not quiet, echo=click.echo)
    click.echo(summary_text(result))
    co2 = f", {result.co2_kg * 1000:.3f} g CO2eq (grid of {result.co2_country})" if result.co2_kg is not None else ""
    click.echo(f"  {result.seconds:.0f} s on {result.device} ({result.torch_threads} torch threads){co2}")
    click.echo(f"  written: {folder / ProbeDir.TABLE}, {ProbeDir.FIGURE}, {ProbeDir.RESULT}")


def default_out(store: str, array: str) -> Path:
    name = Path(store.rstrip("/")).name.removesuffix(".zarr") or "store"
    what = array.split(",", 1)[0].replace("/", "-")
    return Path("runs") / f"{name}-probe-{what}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
