"""Energy and CO2 of a run, measured by codecarbon's offline tracker (no network)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["start_tracker", "stop_tracker", "summed_emissions"]


def start_tracker(*, enabled: bool, country: str, out: Path, process: bool = False):
    """A started ``OfflineEmissionsTracker`` for ``country`` (ISO code), or ``None`` when disabled.

    ``process``: measure this process alone (codecarbon's ``tracking_mode="process"``), so the
    ranks of a distributed run can be added up without counting the machine twice.
    """
    if not enabled:
        return None
    from codecarbon import OfflineEmissionsTracker

    logging.getLogger("codecarbon").setLevel(logging.ERROR)  # after the import: it sets its own level

    tracker = OfflineEmissionsTracker(
        country_iso_code=country, save_to_file=False, log_level="error", output_dir=str(out),
        tracking_mode="process" if process else "machine",
    )
    tracker.start()
    return tracker


def stop_tracker(tracker) -> dict[str, Any]:
    """``energy_kwh``, ``co2_kg`` and ``co2_country`` of a tracker (``None`` values without one)."""
    if tracker is None:
        return {"energy_kwh": None, "co2_kg": None}
    emissions = tracker.stop()
    data = tracker.final_emissions_data
    return {"energy_kwh": float(data.energy_consumed), "co2_kg": float(emissions or 0.0), "co2_country": data.country_iso_code}


def summed_emissions(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The emissions of several ranks' trackers as one: energy and CO2 added up."""
    if len(parts) == 1 or parts[0]["energy_kwh"] is None:
        return parts[0]
    return {**parts[0], "energy_kwh": sum(p["energy_kwh"] for p in parts), "co2_kg": sum(p["co2_kg"] for p in parts)}
