"""What this machine can run (``hardware``: CPU flags, cores, threads) and the precision a run uses
(``precision``: the choice, autocast, int8)."""
