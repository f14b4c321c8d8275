"""The library: Chinese NER from spans to a trained, saved, loadable tagger. No Prefect, no Streamlit, no SQL.

Its rooms, lowest first (a room imports only the rooms above it in this list; ``tests/test_layout.py``
checks it, and that no import circle exists anywhere):

- ``documents``, ``schemes``, ``config``, ``metrics``, ``settings``: the shared vocabulary (spans, tag
  schemes, the configuration tree, the arithmetic of the reports, the environment's settings);
- ``data/``: readers of the file formats, ingest plans, document ids, character alignment, batching;
- ``runtime/``: what this machine can run (CPU flags, cores) and the precision choice;
- ``model/``: encoder, heads, CRF and its C kernels, the network;
- ``artifacts/``: what is written to disk and read back (model directories, TF checkpoints);
- ``inference/``: tagging texts of any length, and scoring a model on a labelled split;
- ``training/``: the loop, its resumable state, the dev-F1 record per precision.

Paths of the flat layout before these rooms keep working for the names users import
(:mod:`ner_core._moved`).
"""
