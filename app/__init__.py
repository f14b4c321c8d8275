"""What a person starts: the `ner` command line, the HTTP service, the local Prefect server and worker."""
