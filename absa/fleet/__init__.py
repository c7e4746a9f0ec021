"""Many runs: sweeps (local, Slurm) and the report over their run folders. Imports the layers
below; nothing below imports it."""
