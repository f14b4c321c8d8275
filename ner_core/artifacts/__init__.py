"""What is written to disk and read back: the model directory (``layout``: its file names; ``modeldir``:
save and load; ``checks``: one line per damaged file) and Google TF1 checkpoints (``tf/``)."""
