"""``ner export``: a prediction run as pre-annotations for Label Studio or doccano.

``ner export --pred-run ID --format label-studio|doccano --out FILE [--db DB] [--offsets UNIT]
[--label-config XML]``. The completed annotations come back with ``ner ingest --format label_studio``
or ``--format doccano`` (both detected from the content too) and become a dataset version's gold.
Every entity is written, a span run's overlapping (nested) ones too: both tools hold overlapping spans and
their readers give them back (the ingest keeps the outer ones as gold, the others in ``dropped_spans``).
Offsets are written in the unit each tool counts (Label Studio: code points; doccano: UTF-16 units);
``--offsets`` overrides it (see :mod:`ner_core.data.formats.label_studio` and
:mod:`ner_core.data.formats.doccano`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands.shared import add_db
from ner_core.data.formats.offsets import OFFSET_UNITS

__all__ = ["EXPORT_FORMATS", "add_parser", "cmd_export", "export_prediction_run"]

# format -> the offset unit the tool counts in
EXPORT_FORMATS = {"label-studio": "codepoint", "doccano": "utf16"}


def add_parser(sub) -> None:
    """Add ``export`` to an argparse ``subparsers`` object (``ner export``)."""
    sp = sub.add_parser(
        "export", help="write a prediction run as Label Studio tasks or doccano JSONL for review there"
    )
    sp.add_argument("--pred-run", required=True, help="prediction run id (see the dashboard or `ner query`)")
    sp.add_argument("--format", required=True, choices=tuple(EXPORT_FORMATS), help="the annotation tool")
    sp.add_argument("--out", required=True, help="file to write (replaced whole, never half-written)")
    add_db(sp)
    sp.add_argument(
        "--offsets",
        choices=OFFSET_UNITS,
        help="offset unit written (default: the tool's own: label-studio codepoint, doccano utf16)",
    )
    sp.add_argument(
        "--label-config",
        metavar="XML",
        help="also write the Label Studio labelling config (the run's labels) to this file",
    )
    sp.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ner_core.data.formats.label_studio import label_config, write_atomic
    from storage.footprint import record_outputs

    summary = export_prediction_run(args.db, args.pred_run, args.format, args.out, offsets=args.offsets)
    if args.label_config:
        write_atomic(args.label_config, label_config(summary["labels"]))
    # the file holds the run's texts: `ner datasets delete` finds it through the manifest
    record_outputs(args.db, f"ner export --pred-run {args.pred_run}", [args.out])
    nested = f" ({summary['overlapping']} overlap another: nested)" if summary["overlapping"] else ""
    print(
        f"exported prediction run {args.pred_run}: {summary['documents']} documents, "
        f"{summary['entities']} entities{nested} as {args.format} ({summary['offsets']} offsets) "
        f"to {args.out}" + (f"; labelling config in {args.label_config}" if args.label_config else "")
    )
    return 0


def export_prediction_run(
    db_path: str | Path, pred_run_id: str, fmt: str, out: str | Path, *, offsets: str | None = None
) -> dict:
    """Write prediction run ``pred_run_id`` as ``fmt`` (``label-studio`` or ``doccano``) to ``out``;
    returns ``{"documents", "entities", "overlapping", "labels", "offsets"}`` (``overlapping``: entities
    overlapping an earlier one, a span run's nested ones). Nothing is written on error."""
    from ner_core.data.formats.doccano import write_doccano
    from ner_core.data.formats.label_studio import write_label_studio
    from storage.interop import prediction_run_export

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {tuple(EXPORT_FORMATS)}, got {fmt!r}")
    unit = offsets or EXPORT_FORMATS[fmt]
    if unit not in OFFSET_UNITS:
        raise ValueError(f"offsets must be one of {OFFSET_UNITS}, got {unit!r}")
    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out}: folder {out.parent} does not exist")
    run = prediction_run_export(db_path, pred_run_id)
    docs = run["documents"]
    if fmt == "label-studio":
        write_label_studio(out, docs, model_version=pred_run_id, offsets=unit)
    else:
        write_doccano(out, docs, offsets=unit)
    return {
        "documents": len(docs),
        "entities": sum(len(d["entities"]) for d in docs),
        "overlapping": run["overlapping"],
        "labels": run["labels"],
        "offsets": unit,
    }
