"""Many runs: sweeps (grid, random, Optuna) on Dask, papers reproduced table by table, comparisons and
summaries of repeats."""
