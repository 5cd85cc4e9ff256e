"""One training run: its configuration and protocol, the loop, checkpoints and the run directory, evaluation
and metrics, devices and ranks, emissions, curves; and what a finished run does (predict, embed)."""
