"""Data: file formats -> documents (``formats/``), ingest plans (``ingest``), document ids (``doc_ids``), one
model position per character (``alignment``) and batches of token ids, masks and tags (``batching``)."""
