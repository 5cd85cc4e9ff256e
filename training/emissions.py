"""Energy and CO2 of a run, measured by codecarbon's offline tracker (no network)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["start_tracker", "stop_tracker"]


def start_tracker(*, enabled: bool, country: str, out: Path):
    """A started ``OfflineEmissionsTracker`` for ``country`` (ISO code), or ``None`` when disabled."""
    if not enabled:
        return None
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    from codecarbon import OfflineEmissionsTracker

    tracker = OfflineEmissionsTracker(country_iso_code=country, save_to_file=False, log_level="error", output_dir=str(out))
    tracker.start()
    return tracker


def stop_tracker(tracker) -> dict[str, Any]:
    """``energy_kwh``, ``co2_kg`` and ``co2_country`` of a tracker (``None`` values without one)."""
    if tracker is None:
        return {"energy_kwh": None, "co2_kg": None}
    emissions = tracker.stop()
    data = tracker.final_emissions_data
    return {"energy_kwh": float(data.energy_consumed), "co2_kg": float(emissions or 0.0), "co2_country": data.country_iso_code}
