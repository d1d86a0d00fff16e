"""Scale-out on existing engines: pull workers on a shared database (pull.py) and Slurm job arrays (slurm.py)."""
