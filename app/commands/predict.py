"""``ner predict``: tag texts of any length (files, or a stored dataset's documents: all, or ``--only-new``)
into DuckDB, optionally sharded over Dask workers; ``-test_data FILE`` the seed's way (files out, no
database). The window and speed options are ``ner serve``'s (:mod:`app.options`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands.shared import (
    CLIError,
    add_common,
    add_model_and_data,
    check_seed_io,
    print_json,
    seed_outputs,
)
from app.options import add_prediction_options, chosen_model, prediction_options


def add_parser(sub) -> None:
    sp = add_common(sub.add_parser("predict", help="tag texts and store the entities in DuckDB"))
    add_model_and_data(sp, split=None)
    sp.add_argument("files", nargs="*", help="input files (any supported format)")
    sp.add_argument(
        "--lines",
        action="store_true",
        help="plain-text files hold one document per line (default: one per file)",
    )
    sp.add_argument(
        "--only-new",
        action="store_true",
        help="tag only the --dataset documents this run's model has not tagged yet",
    )
    sp.add_argument(
        "--dask",
        action="store_true",
        help="shard the documents over Dask workers (a LocalCluster unless --scheduler)",
    )
    sp.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="Dask scheduler, e.g. tcp://10.0.0.5:8786 (implies --dask)",
    )
    sp.add_argument("--workers", type=int, default=2, help="LocalCluster workers (default %(default)s)")
    sp.add_argument("--shards", type=int, default=4, help="document shards (default %(default)s)")
    add_prediction_options(sp)
    sp.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from flows import pipeline, steps
    from flows.contracts import DatasetSource, FilesSource

    check_seed_io(args, "predict")
    if args.test_data:
        return seed_outputs("predict", args)
    model_dir, run_id = chosen_model(args)
    source = (
        FilesSource(files=args.files, text_per_file=not args.lines)
        if args.files
        else DatasetSource(dataset=args.dataset, split=args.split)
    )
    for f in args.files or []:
        if not Path(f).exists():
            raise FileNotFoundError(f"{f}: no such file")
    options = prediction_options(args)
    if args.only_new and (args.files or not run_id):
        raise CLIError("--only-new tags a stored --dataset with a run's model (--run or the production run)")
    _check_span_options(model_dir, options)
    if args.dask or args.scheduler:
        out = _predict_dask(args, model_dir, run_id, source, options)
    elif args.only_new:
        out = _predict_new(args, model_dir, run_id, options)
    elif args.no_prefect:
        out = steps.predict_source(args.db, source, model_dir, run_id, options)
    else:
        out = pipeline.predict_flow(args.db, source, model_dir, run_id, options)
    print_json(out)
    return 0


def _check_span_options(model_dir: str, options) -> None:
    """Before any run starts: ``--span-threshold`` and ``--overlap`` are refused for a CRF model, and a span
    model's ``--window``/``--stride`` whose windows would overlap by less than its span limit."""
    from ner_core.artifacts.modeldir import read_saved_config
    from ner_core.inference.tagger import planned_decoding

    config = read_saved_config(model_dir)
    flags = (("--span-threshold", options.span_threshold), ("--overlap", options.overlap))
    given = [flag for flag, value in flags if value is not None]
    decoder = str(getattr(getattr(config, "decoder", None), "type", "crf"))
    if given and decoder != "span":
        raise CLIError(
            f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to a span-decoder model "
            f"only; {model_dir} decodes with a CRF"
        )
    if decoder == "span":
        try:
            planned_decoding(config, options)
        except ValueError as exc:
            raise CLIError(f"--window/--stride: {exc}") from None


def _predict_dask(args, model_dir: str, run_id: str | None, source, options):
    from flows import dask_predict, steps

    if options.num_threads is not None or options.device is not None:
        raise CLIError("--threads and --device are not used with --dask: each worker runs one CPU thread")
    if not args.no_prefect:
        return dask_predict.run_dask_predict(
            args.db,
            source,
            model_dir,
            run_id,
            n_shards=args.shards,
            address=args.scheduler,
            n_workers=args.workers,
            only_new=args.only_new,
            options=options,
        )
    if args.only_new:
        raise CLIError("--only-new with --dask runs as a Prefect flow: drop --no-prefect")
    docs, kind, ref = steps.load_prediction_input(args.db, source)
    return dask_predict.predict_sharded(
        args.db,
        model_dir,
        docs,
        input_kind=kind,
        input_ref=ref,
        run_id=run_id,
        n_shards=args.shards,
        address=args.scheduler,
        n_workers=args.workers,
        options=options,
    )


def _predict_new(args, model_dir: str, run_id: str, options):
    from flows import pipeline

    if args.no_prefect:
        return pipeline.predict_new_task.fn(args.db, model_dir, run_id, args.dataset, args.split, options)
    if args.model_dir or args.run:
        task = _flow_of(pipeline.predict_new_task)
        return task(args.db, model_dir, run_id, args.dataset, args.split, options)
    return pipeline.predict_new_flow(args.db, args.dataset, args.split, options)


def _flow_of(task):
    """Run one task as its own small flow (a task cannot be called outside a flow)."""
    from prefect import flow

    return flow(name=f"{task.name}-cli")(task.fn)
