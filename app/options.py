"""The prediction options of ``ner predict`` and ``ner serve``: one argument group, generated from the fields
of :class:`ner_core.config.PredictionConfig` (:data:`PREDICTION_FLAGS`) and read back into one (the typed
object the flows and the tagger take); the seed's model options of ``test`` / ``predict`` / ``deploy``.

An option left out stays ``None``: the tagger then uses the model's saved prediction setting.
"""

from __future__ import annotations

import argparse

from app.flags import FlagTable, positive_int
from ner_core.artifacts import layout
from ner_core.config import PredictionConfig

__all__ = [
    "PREDICTION_FLAGS",
    "add_prediction_options",
    "add_seed_model_options",
    "chosen_model",
    "device_from_seed",
    "prediction_options",
]

#: the prediction options: PredictionConfig's fields, spelled with dashes; what the command line says
#: differently from the field's description (an option left out means the model's saved setting)
PREDICTION_FLAGS = FlagTable(
    PredictionConfig,
    dashed=True,
    renames={"num_threads": "threads"},
    help={
        "window": "characters per window, at least 8 and at most the encoder's positions - 2 "
        "(default: the model's max_len)",
        "stride": "the most characters between window starts, <= --window (default: the window, windows "
        "spread evenly; a span model: the window minus its span limit)",
        "device": "cpu, cuda, cuda:N or auto "
        "(default: the model's saved device, else auto: CUDA when present)",
        "precision": "auto (default: the fastest precision the hardware runs whose recorded dev F1 stays "
        "within 0.2 points of fp32's), fp32, bf16, fp16 or int8 (CPU); the choice and why are printed",
    },
    metavars={"window": "CHARS", "stride": "CHARS", "threads": "THREADS"},
    types=dict.fromkeys(("window", "stride", "batch-size", "threads"), positive_int),
    retired={
        "quantize": "is replaced by --precision (int8 for --quantize int8, fp32 for --quantize none; "
        "auto picks the fastest precision that keeps the model's dev F1)",
    },
    default_help=None,
)


def add_prediction_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--window``, ``--stride``, ``--batch-size``, ``--device``, ``--threads`` and ``--precision``
    (:data:`PREDICTION_FLAGS`), and the retired ``--quantize``."""
    g = parser.add_argument_group("window and speed (defaults: the model's saved prediction settings)")
    PREDICTION_FLAGS.add_to(g)


def device_from_seed(value: str) -> str:
    """The seed's ``-device_map`` as a torch device: ``cpu``, a GPU number (``0`` -> ``cuda:0``), ``cuda``
    or ``cuda:N``; a list of GPUs (``0,1``) is refused (one device is used)."""
    v = value.strip().lower()
    if v.isdigit():
        return f"cuda:{v}"
    if "," in v:
        raise ValueError(f"-device_map: one device is used, got {value!r} (e.g. 0 or cpu)")
    if v not in ("cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
        raise ValueError(f"-device_map: expected cpu, a GPU number, cuda or cuda:N, got {value!r}")
    return v


def prediction_options(args: argparse.Namespace) -> PredictionConfig:
    """The options given on the command line; the ones left out stay ``None``. The seed's ``-device_map``
    (where the command has it) sets ``--device``; both at once are refused."""
    opts = PREDICTION_FLAGS.values(args)
    seed_device = getattr(args, "device_map", None)
    if seed_device:
        if opts.get("device"):
            raise ValueError("--device and -device_map both name the device: give one of them")
        opts["device"] = device_from_seed(seed_device)
    return PredictionConfig(**opts)


def chosen_model(args: argparse.Namespace) -> tuple[str, str | None]:
    """``(model_dir, run_id)`` named by ``--model-dir``, ``--run`` or the seed's ``-model_configs`` (else the
    production run of ``--db``), through :func:`storage.runs.resolve_model`; two at once name one model two
    ways and are refused. ``-model_configs`` is read by :func:`app.seed_commands.resolve_model_configs`."""
    from storage.runs import resolve_model

    configs = getattr(args, "model_configs", None)
    given = [
        n for n, v in (("--model-dir", args.model_dir), ("--run", args.run), ("-model_configs", configs)) if v
    ]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)} both name the model to use: give one of them")
    if configs:
        from app.seed_commands import resolve_model_configs

        return resolve_model(args.db, model_dir=resolve_model_configs(configs), run_id=None)
    return resolve_model(args.db, model_dir=args.model_dir, run_id=args.run)


def add_seed_model_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The seed's ``-model_configs`` and ``-device_map`` on ``test``, ``predict`` and ``deploy``; the group,
    for the command's other seed flags."""
    g = parser.add_argument_group("seed (keras-bert-ner) flags")
    g.add_argument(
        "--model_configs",
        "-model_configs",
        metavar="PATH",
        help=f"the model: a model directory, its {layout.CONFIG}, a run directory, or the model_configs.json "
        "that `ner train -save_path` wrote (Keras .h5/.pkl files of the seed cannot be loaded)",
    )
    g.add_argument(
        "--device_map",
        "-device_map",
        metavar="DEVICE",
        help="seed device: cpu, a GPU number (0 -> cuda:0), cuda or cuda:N; sets --device",
    )
    return g
