"""What the ``ner`` commands share: the parser that reports a bad flag in one line, ``--db`` and
``--no-prefect``, running a step as its Prefect flow or directly, printing a result, and the model and
data options of ``test`` / ``predict`` with the seed's way of using them (``-test_data FILE``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app import seed_commands
from app.options import add_seed_model_options, chosen_model, device_from_seed, prediction_options
from ner_core.settings import settings

__all__ = [
    "ROOT",
    "CLIError",
    "Parser",
    "add_common",
    "add_db",
    "add_model_and_data",
    "check_seed_io",
    "print_json",
    "run_flow_or_step",
    "seed_outputs",
]

ROOT = Path(__file__).resolve().parents[2]


class CLIError(ValueError):
    """A usage problem found after parsing (conflicting or unusable flags)."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (plus where to look), exit status 2."""

    def error(self, message: str):  # noqa: D401  (argparse API)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_db(parser, help: str = "DuckDB file (default %(default)s)") -> None:
    """``--db``, by default the database of the settings (``NER_DB``, else ``ner.duckdb``)."""
    parser.add_argument("--db", default=settings().db, help=help)


def add_common(parser: argparse.ArgumentParser, db: bool = True) -> argparse.ArgumentParser:
    """``--db`` (unless ``db`` is false) and ``--no-prefect``; returns ``parser``."""
    if db:
        add_db(parser)
    parser.add_argument(
        "--no-prefect",
        action="store_true",
        default=settings().no_prefect,
        help="run the steps directly, without Prefect (default when NER_NO_PREFECT=1)",
    )
    return parser


def run_flow_or_step(args: argparse.Namespace, flow_name: str, step, **kwargs):
    """Run the flow ``flows.pipeline.<flow_name>`` (Prefect), or the plain ``step`` with ``--no-prefect``."""
    if args.no_prefect:
        return step(**kwargs)
    from flows import pipeline

    return getattr(pipeline, flow_name)(**kwargs)


def print_json(result) -> None:
    """A step's result (a flows.contracts model) as indented JSON on stdout."""
    print(json.dumps(result.model_dump(mode="json"), ensure_ascii=False, indent=2))


# ----------------------------------------------------------------------------------------- test / predict
def add_model_and_data(parser: argparse.ArgumentParser, split: str | None) -> None:
    """The model (--model-dir, --run, default the production run's) and the stored data of test/predict,
    and the seed's -test_data, -model_configs, -output_path and -device_map."""
    parser.add_argument("--model-dir", help="model directory (default: the production run's)")
    parser.add_argument("--run", help="use this training run's model")
    parser.add_argument("--dataset", default="sample")
    parser.add_argument("--split", default=split)
    g = add_seed_model_options(parser)
    g.add_argument(
        "--test_data",
        "-test_data",
        metavar="FILE",
        help="tag this file (any supported format) without a database and write the seed's files into "
        "-output_path: <cmd>_outputs.txt ([text, tags] pairs), <cmd>_entities.jsonl and, when the file "
        "holds gold entities, <cmd>_report.txt/.json (sentence, character and per-tag accuracy, entity F1)",
    )
    g.add_argument(
        "--output_path",
        "-output_path",
        metavar="DIR",
        help=f"folder for the -test_data files (default: {seed_commands.DEFAULT_OUTPUT_PATH}, as the seed)",
    )


def check_seed_io(args: argparse.Namespace, command: str) -> None:
    """Refuse the seed's -output_path without -test_data, and -device_map on a stored split of ``test``."""
    if args.test_data:
        return
    if args.output_path:
        raise CLIError("-output_path goes with -test_data (the seed's test/predict input file)")
    if command == "test" and args.device_map:
        raise CLIError("-device_map goes with -test_data on `ner test` (a stored split is scored on the CPU)")


def seed_outputs(command: str, args: argparse.Namespace) -> int:
    """``ner test`` / ``ner predict -test_data FILE``: the seed's way, one file in, files out, no database
    (:func:`app.seed_commands.tag_to_outputs`)."""
    from ner_core.config import PredictionConfig

    if getattr(args, "file", None) or getattr(args, "files", None):
        raise CLIError(f"-test_data names the file to {command}: drop the other input file(s)")
    model_dir, _ = chosen_model(args)
    if command == "predict":
        options = prediction_options(args)
    else:
        options = PredictionConfig(device=device_from_seed(args.device_map) if args.device_map else None)
    output_path = args.output_path or seed_commands.DEFAULT_OUTPUT_PATH
    summary = seed_commands.tag_to_outputs(command, args.test_data, model_dir, output_path, options)
    if getattr(args, "db", None):  # so that `ner datasets delete` finds these files (they hold the texts)
        from storage.footprint import record_outputs

        out_dir = Path(summary["output_path"])
        record_outputs(
            args.db, f"ner {command} -test_data", [out_dir / f for f in summary["files"]], args.test_data
        )
    if summary["labelled"]:
        print((Path(output_path) / f"{command}_report.txt").read_text(encoding="utf-8"))
    else:
        print(f"{args.test_data} holds no gold entities: predictions written, no accuracy", file=sys.stderr)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0
