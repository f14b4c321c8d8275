"""The ``ner`` command line. Subcommands mirror the seed (``train``, ``test``, ``predict``, ``deploy`` =
``serve``) plus ``ingest``, ``pipeline``, ``demo``, ``runs``, ``promote`` (``--rollback``), ``review export``,
``lineage``, ``export`` (Label Studio / doccano), ``ui``, ``bench``, ``query``, ``prefect`` (``up`` /
``down`` / ``status`` of a local server + worker + deployments) and ``convert-checkpoint`` (a Google
TF1 BERT/ALBERT checkpoint to a Hugging Face folder).

Each command runs its Prefect flow; ``--no-prefect`` (or ``NER_NO_PREFECT=1``) runs the same steps without
Prefect. The seed's commands run as its README writes them (:mod:`app.seed_commands`). Bad input (flags,
missing files, unknown heads or encoders) gives one clear line on stderr and exit status 2, not a traceback
(``NER_DEBUG=1`` shows the traceback). The seed's single-dash flags (``-max_epochs 3``) are accepted too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from app import datasets_cmd, exposure, interop, seed_commands, serve
from app.console import show_library_logs
from app.options import (
    RETIRED,
    add_prediction_options,
    add_seed_model_options,
    chosen_model,
    device_from_seed,
    prediction_options,
)
from ner_core.config import HeadType, NERConfig, Precision
from ner_core.model.encoder import check_encoder, preflight

if TYPE_CHECKING:
    from flows.contracts import PipelineSummary

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_corpus"
DEFAULT_DB = "ner.duckdb"

# Config fields exposed as flags on `train`/`pipeline`: flag -> dotted key. Seed names first.
_SECTIONS_PLAIN = ("data", "head", "crf", "training")
_RENAMED = {
    "encoder.name": "encoder",
    "encoder.freeze": "freeze_encoder",
    "encoder.dropout_rate": "encoder_dropout_rate",
    "head.type": "head",
}
# keras-bert-ner's flags that map one-to-one onto a config field also work with one dash (-max_epochs 3)
SEED_FLAGS = (
    "max_epochs",
    "hard_epochs",
    "batch_size",
    "max_len",
    "learning_rate",
    "early_stop_patience",
    "reduce_lr_patience",
    "reduce_lr_factor",
    "rnn_units",
    "rnn_num_hidden_layers",
    "cnn_filters",
    "cnn_kernel_size",
    "cnn_blocks",
    "dropout_rate",
    "best_fit",
)
# flags that never had an effect: each answers in one line what to use instead (exit status 2)
_RETIRED = {
    "window_stride": "never had an effect (training never read it): the stride of prediction windows is "
    "`ner predict --stride`; training cuts long texts at sentence ends into pieces of at most --max_len",
    "mixed_precision": RETIRED["--mixed_precision"],
    "no_mixed_precision": RETIRED["--mixed_precision"],
}


_EXTRA_HELP = {
    "max_len": "; the seed's -max_len counted [CLS] and [SEP], so its value minus 2 is the same window "
    "(seed 64 = 62 here). A value is always taken as characters, in either spelling; one longer than the "
    "encoder's positions - 2 is refused when training starts",
}


class CLIError(ValueError):
    """A usage problem found after parsing (conflicting or unusable flags)."""


class _Retired(argparse.Action):
    """A flag that is refused with its one-line explanation, whatever value it is given."""

    def __init__(self, option_strings, dest, *, explanation: str, **kwargs):
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.explanation = explanation

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} {self.explanation}")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (plus where to look), exit status 2."""

    def error(self, message: str):  # noqa: D401  (argparse API)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _config_flags() -> dict[str, tuple[str, Any]]:
    flags: dict[str, tuple[str, Any]] = {}
    for section in ("encoder", *_SECTIONS_PLAIN):
        model = NERConfig.model_fields[section].annotation
        for name, field in model.model_fields.items():
            key = f"{section}.{name}"
            flag = _RENAMED.get(key, name)
            if flag not in _RETIRED:
                flags[flag] = (key, field)
    return flags


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and training options (defaults shown; seed keras-bert-ner names)")
    g.add_argument("--config", help="JSON file with a full or partial NERConfig; flags override it")
    defaults = NERConfig()
    for flag, (key, field) in _config_flags().items():
        section, name = key.split(".")
        default = getattr(getattr(defaults, section), name)
        if isinstance(default, HeadType):
            default = default.value
        ann = field.annotation
        kwargs: dict[str, Any] = {"dest": f"cfg__{section}__{name}", "default": None}
        helptext = (field.description or "").replace("%", "%%") + _EXTRA_HELP.get(flag, "")
        if ann is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, list):
            kwargs.update(nargs="+", type=int)
        elif key == "head.type":
            kwargs["choices"] = [h.value for h in HeadType]
        elif key == "training.precision":
            kwargs["choices"] = [p.value for p in Precision]
        else:
            kwargs["type"] = _scalar_type(ann, default)
        if not kwargs.get("action") and "choices" not in kwargs:
            kwargs["metavar"] = name.upper()
        names = [
            f"--{flag}",
            *([f"--{flag.replace('_', '-')}"] if "_" in flag else []),
            *([f"-{flag}"] if flag in SEED_FLAGS else []),
        ]
        g.add_argument(*names, help=f"{helptext} (default: {default})".strip(), **kwargs)
    g.add_argument(
        "--model_type",
        "-model_type",
        choices=["rnn", "cnn"],
        help="seed name: rnn (with --cell_type) or cnn (idcnn)",
    )
    g.add_argument(
        "--cell_type", "-cell_type", choices=["lstm", "gru"], help="seed name: lstm -> bilstm, gru -> bigru"
    )
    for flag, explanation in _RETIRED.items():
        g.add_argument(f"--{flag}", f"--{flag.replace('_', '-')}", action=_Retired, explanation=explanation)
    _add_seed_args(p)


def _add_seed_args(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("seed (keras-bert-ner) flags mapped onto the options above")
    s.add_argument(
        "--crf_only", "-crf_only", action="store_true", help="no BiLSTM/BiGRU/IDCNN head: --head none"
    )
    s.add_argument(
        "--device_map",
        "-device_map",
        metavar="DEVICE",
        help="seed device: cpu, a GPU number (0 -> cuda:0), cuda or cuda:N; sets --device",
    )
    s.add_argument(
        "--bert_config",
        "-bert_config",
        metavar="FILE",
        help="seed: the encoder's config (bert_config.json / albert_config.json, or a HF config.json); "
        "with a TF -bert_checkpoint the three files are converted once (cached), else their folder "
        "becomes --encoder",
    )
    s.add_argument(
        "--bert_checkpoint",
        "-bert_checkpoint",
        metavar="PATH",
        help="seed: a Google TF1 checkpoint prefix (bert_model.ckpt / albert_model.ckpt: converted to a "
        "Hugging Face folder without TensorFlow, once, then reused), or a HF model file or folder",
    )
    s.add_argument(
        "--bert_vocab",
        "-bert_vocab",
        metavar="FILE",
        help="seed: the encoder's vocab.txt; its folder becomes --encoder",
    )
    s.add_argument(
        "--albert",
        "-albert",
        action="store_true",
        help="seed: the TF checkpoint is Google-format ALBERT (a mismatch is explained in one line); "
        "with a Hugging Face folder the architecture is read from its config.json",
    )
    s.add_argument(
        "--do_eval",
        "-do_eval",
        action="store_true",
        help="seed: the dev data scores every epoch (this drives early stopping, as the dev split always "
        "does here); at the end the report is printed (stderr) and written to the seed's "
        "<ALBERT|BERT>-<HEAD>-<time>.log in --save_path",
    )
    s.add_argument(
        "--tag_padding",
        "-tag_padding",
        metavar="TAG",
        help="seed: padding tag; accepted and unused, padding is masked so no tag is needed",
    )


def _scalar_type(ann: Any, default: Any):
    text = str(ann)
    if "float" in text:
        return float
    if "int" in text:
        return int
    return str


def build_config(args: argparse.Namespace) -> NERConfig:
    cfg = NERConfig.from_file(args.config) if getattr(args, "config", None) else NERConfig()
    overrides = {}
    for k, v in vars(args).items():
        if k.startswith("cfg__") and v is not None:
            _, section, name = k.split("__")
            overrides[f"{section}.{name}"] = v
    if getattr(args, "crf_only", False):
        if getattr(args, "model_type", None) or getattr(args, "cfg__head__type", None) not in (None, "none"):
            raise CLIError("--crf_only means no head; it cannot be combined with --head/--model_type")
        overrides["head.type"] = "none"
    if getattr(args, "device_map", None):
        overrides["training.device"] = device_from_seed(args.device_map)
    encoder = _seed_encoder(args)
    if encoder:
        if getattr(args, "cfg__encoder__name", None):
            raise CLIError(
                "give the encoder either with --encoder or with the seed's --bert_* flags, not both"
            )
        overrides["encoder.name"] = encoder
    if getattr(args, "model_type", None) == "cnn":
        overrides["head.type"] = "idcnn"
    elif getattr(args, "model_type", None) == "rnn" or getattr(args, "cell_type", None):
        overrides["head.type"] = "bigru" if getattr(args, "cell_type", None) == "gru" else "bilstm"
    return cfg.with_overrides(overrides)


def _seed_encoder(args: argparse.Namespace) -> str | None:
    """The encoder folder named by the seed's ``-bert_config`` / ``-bert_checkpoint`` / ``-bert_vocab``.

    A ``-bert_checkpoint`` that is not an existing file or folder, or that names a TF checkpoint, is
    converted (once, cached) by :func:`ner_core.artifacts.tf.convert.cached_conversion`, which explains in
    one line
    what it cannot read; otherwise the three files' common folder is a Hugging Face model folder."""
    ckpt = getattr(args, "bert_checkpoint", None)
    if ckpt:
        from ner_core.artifacts.tf.convert import cached_conversion, is_tf_checkpoint

        if is_tf_checkpoint(ckpt) or not Path(ckpt).exists():
            if not (args.bert_config and args.bert_vocab):
                raise CLIError(
                    f"-bert_checkpoint {ckpt} names a TensorFlow checkpoint: give -bert_config and "
                    "-bert_vocab too (the seed needed all three)"
                )
            return str(cached_conversion(args.bert_config, ckpt, args.bert_vocab, albert=args.albert))
    folders = {
        str(
            Path(f).resolve().parent
            if Path(f).is_file() or f.endswith((".json", ".txt"))
            else Path(f).resolve()
        )
        for f in (getattr(args, k, None) for k in ("bert_config", "bert_checkpoint", "bert_vocab"))
        if f
    }
    if len(folders) > 1:
        raise CLIError(
            f"--bert_config/--bert_checkpoint/--bert_vocab must lie in one encoder folder, got "
            f"{sorted(folders)}"
        )
    return folders.pop() if folders else None


def _check_device(device: str) -> None:
    """Refuse a CUDA device on a machine without CUDA before anything is ingested (the seed's README trains
    with ``-device_map "0"``)."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} asked for (-device_map / --device), but CUDA is not available on this "
                "machine: use -device_map cpu"
            )


def _prefect_env() -> None:
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # the library's log lines also reach a flow run's log; outside a run they are only shown on stderr
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "ner_core")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def _print_json(result) -> None:
    """A step's result (a flows.contracts model) as indented JSON on stdout."""
    print(json.dumps(result.model_dump(mode="json"), ensure_ascii=False, indent=2))


def _run(args: argparse.Namespace, flow_name: str, step, **kwargs):
    """Run the flow (Prefect) or the plain step (--no-prefect)."""
    if args.no_prefect:
        return step(**kwargs)
    from flows import pipeline

    return getattr(pipeline, flow_name)(**kwargs)


# ----------------------------------------------------------------------------------------- commands
def cmd_ingest(args) -> int:
    from flows import steps

    if args.train or args.dev or args.test:
        files: dict[str, str] | list[str] = {
            k: v for k, v in (("train", args.train), ("dev", args.dev), ("test", args.test)) if v
        }
    elif args.files:
        files = list(args.files)
    else:
        raise ValueError("give --train/--dev/--test files or FILES with --split-ratios")
    for f in files.values() if isinstance(files, dict) else files:
        if not Path(f).exists():
            raise FileNotFoundError(f"{f}: no such file")
    if args.no_prefect or args.split_ratios:
        out = steps.ingest_step(
            args.db,
            args.name,
            files,
            format=args.format,
            policy=args.policy,
            untyped_label=args.untyped_label,
            split_ratios=tuple(args.split_ratios) if args.split_ratios else None,
        )
    else:
        from flows.pipeline import ingest_flow

        out = ingest_flow(args.db, args.name, files, args.format, args.policy, args.untyped_label)
    _print_json(out)
    return 0


def cmd_train(args) -> int:
    from flows import steps

    config = build_config(args)
    if args.resume:
        check_encoder(config.encoder.name)
    else:
        preflight(config)
        _check_device(config.training.device)
    files = {
        k: v for k, v in (("train", args.train_data), ("dev", args.dev_data), ("test", args.test_data)) if v
    }
    if files:
        if set(files) < {"train", "dev"}:
            raise CLIError("--train_data needs --dev_data too (early stopping scores on dev)")
        for f in files.values():
            if not Path(f).is_file():
                raise FileNotFoundError(f"{f}: no such file")
        if args.resume:
            raise CLIError("--resume continues a stored run; it cannot take new --train_data")
    if args.resume and args.plus:
        raise CLIError("--resume continues a stored run with the datasets it trained on; drop --plus")
    if files:
        ingest = _run(
            args, "ingest_flow", steps.ingest_step, db_path=args.db, name=config.data.dataset, files=files
        )
        print(f"ingested {config.data.dataset} v{ingest.version}", file=sys.stderr)
    out = _run(
        args,
        "train_flow",
        steps.train_step if args.no_prefect else None,
        **(
            {
                "db_path": args.db,
                "config": config,
                "runs_root": args.runs_root,
                "run_id": args.resume,
                "resume": bool(args.resume),
                **({"plus": args.plus} if args.plus else {}),
            }
        ),
    )
    seed_commands.write_model_configs(
        args.runs_root, out.model_dir, run_id=out.run_id, bert_vocab=args.bert_vocab
    )
    if args.do_eval:
        path, text = seed_commands.write_train_log(args.runs_root, out, albert=args.albert)
        print(f"{text}\n(-do_eval report written to {path})", file=sys.stderr)
    if args.tag_padding:  # said after the run, so that a refusal stays one line
        print("note: -tag_padding is not needed (padding is masked) and was ignored", file=sys.stderr)
    _print_json(out)
    return 0


def _seed_outputs(command: str, args) -> int:
    """``ner test`` / ``ner predict -test_data FILE``: the seed's way, one file in, files out, no database
    (:func:`app.seed_commands.tag_to_outputs`)."""
    if getattr(args, "file", None) or getattr(args, "files", None):
        raise CLIError(f"-test_data names the file to {command}: drop the other input file(s)")
    model_dir, _ = chosen_model(args)
    options = prediction_options(args) if command == "predict" else _seed_test_options(args)
    output_path = args.output_path or seed_commands.DEFAULT_OUTPUT_PATH
    summary = seed_commands.tag_to_outputs(command, args.test_data, model_dir, output_path, options)
    if summary["labelled"]:
        print((Path(output_path) / f"{command}_report.txt").read_text(encoding="utf-8"))
    else:
        print(f"{args.test_data} holds no gold entities: predictions written, no accuracy", file=sys.stderr)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


def _seed_test_options(args):
    from ner_core.config import PredictionConfig

    return PredictionConfig(device=device_from_seed(args.device_map) if args.device_map else None)


def _check_seed_io(args, command: str) -> None:
    if args.test_data:
        return
    if args.output_path:
        raise CLIError("-output_path goes with -test_data (the seed's test/predict input file)")
    if command == "test" and args.device_map:
        raise CLIError("-device_map goes with -test_data on `ner test` (a stored split is scored on the CPU)")


def cmd_test(args) -> int:
    from flows import steps

    _check_seed_io(args, "test")
    if args.test_data:
        return _seed_outputs("test", args)
    model_dir, run_id = chosen_model(args)
    if args.file and not Path(args.file).is_file():
        raise FileNotFoundError(f"{args.file}: no such file")
    out = _run(
        args,
        "evaluate_flow",
        steps.evaluate_step,
        db_path=args.db,
        model_dir=model_dir,
        dataset=None if args.file else args.dataset,
        split=None if args.file else args.split,
        run_id=run_id,
        **({"file": args.file} if args.file else {}),
    )
    if args.no_prefect:
        print(out.markdown)
    _print_json(out)
    return 0


def cmd_predict(args) -> int:
    from flows import pipeline, steps
    from flows.contracts import DatasetSource, FilesSource

    _check_seed_io(args, "predict")
    if args.test_data:
        return _seed_outputs("predict", args)
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
    if args.dask or args.scheduler:
        out = _predict_dask(args, model_dir, run_id, source, options)
    elif args.only_new:
        out = _predict_new(args, model_dir, run_id, options)
    elif args.no_prefect:
        out = steps.predict_source(args.db, source, model_dir, run_id, options)
    else:
        out = pipeline.predict_flow(args.db, source, model_dir, run_id, options)
    _print_json(out)
    return 0


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


def cmd_pipeline(args) -> int:
    config = build_config(args)
    return _pipeline(args, config, args.train, args.dev, args.test, args.predict_files)


def _pipeline(args, config: NERConfig, train: str, dev: str, test: str, predict_files: list[str]) -> int:
    from flows import pipeline, steps

    for f in (train, dev, test, *predict_files):
        if not Path(f).exists():
            raise FileNotFoundError(f"{f}: no such file")
    chain = steps.run_pipeline if args.no_prefect else pipeline.pipeline_flow
    out = chain(args.db, config, train, dev, test, predict_files, args.runs_root)
    _print_pipeline_summary(args.db, out)
    return 0


def _print_pipeline_summary(db: str, out: PipelineSummary) -> None:
    from storage import predictions as predictions_db

    ev, pr, tr = out.evaluate, out.predict, out.train
    print()
    print(
        f"run {tr.run_id}: best epoch {tr.best_epoch} ({tr.stopped_reason}), "
        f"{tr.seconds} s, model in {tr.model_dir}"
    )
    print(
        f"test: entity F1 {ev.f1 * 100:.2f}  (P {ev.precision * 100:.2f}, R {ev.recall * 100:.2f}), "
        f"char accuracy {ev.char_accuracy * 100:.2f}, sentence accuracy {ev.sentence_accuracy * 100:.2f}"
    )
    print(
        f"predicted {pr.n_entities} entities in {pr.n_documents} documents "
        f"({pr.n_chars} characters) -> {db}, prediction run {pr.pred_run_id}"
    )
    print(f"\nSQL> {predictions_db.LABEL_EXAMPLES_SQL.replace('?', repr(pr.pred_run_id))};")
    for row in predictions_db.label_examples(db, pr.pred_run_id):
        examples = row["examples"] if len(row["examples"]) <= 60 else row["examples"][:60] + "…"
        print(f"  {row['label']:<6} {row['n']:>5}  {examples}")
    print(f"\nOpen the dashboard:  ner ui --db {db}    (or: make ui)")


def cmd_demo(args) -> int:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    args.db = str(Path(args.out) / "ner.duckdb")
    args.runs_root = str(Path(args.out) / "runs")
    config = build_config(args)
    raw = sorted(str(p) for p in (SAMPLE / "raw").glob("*.txt"))
    print(
        "Demo: sample corpus -> DuckDB -> train (m3e-small encoder: research / non-commercial use only) "
        "-> evaluate -> predict",
        flush=True,
    )
    return _pipeline(
        args, config, str(SAMPLE / "train.jsonl"), str(SAMPLE / "dev.jsonl"), str(SAMPLE / "test.jsonl"), raw
    )


def cmd_runs(args) -> int:
    from storage import runs as runs_db

    rows = runs_db.list_runs(args.db)
    if not rows:
        print(f"no training runs in {args.db}")
    for r in rows:
        f1 = f"{r['best_dev_f1'] * 100:.2f}" if r["best_dev_f1"] is not None else "-"
        star = " [production]" if r["is_production"] else ""
        print(
            f"{r['run_id']}  {r['status']:<9} {r['dataset']:<10} {r['head']:<6} {r['encoder']:<12} "
            f"epochs {r['n_epochs']:<3} dev F1 {f1}{star}"
        )
    return 0


def cmd_promote(args) -> int:
    from storage import runs as runs_db

    if args.rollback == bool(args.run_id):
        raise CLIError("give a RUN_ID to promote, or --rollback to return to the previous production model")
    if args.rollback:
        left, back = runs_db.rollback_production(args.db)
        print(f"rolled back: run {back} is the production model again (was {left})")
        return 0
    runs_db.promote_run(args.db, args.run_id)
    print(f"run {args.run_id} is now the production model")
    return 0


def cmd_review(args) -> int:
    from flows import review

    flow = review.export_step if args.no_prefect else review.export_reviews_flow
    out = flow(db_path=args.db, pred_run_id=args.pred_run, name=args.name, split=args.split)
    _print_json(out)
    return 0


def cmd_lineage(args) -> int:
    from storage.review_export import model_lineage

    lin = model_lineage(args.db, args.run_id)
    star = " [production]" if lin["is_production"] else ""
    print(f"run {lin['run_id']}{star}: model {lin['model_dir'] or '-'}")
    for d in lin["datasets"]:
        src = f"review export of {', '.join(d['pred_runs']) or '-'}" if d["is_review_export"] else "ingested"
        who = f" by {', '.join(d['reviewers'])}" if d["reviewers"] else ""
        print(f"  {d['role']:<5} {d['dataset']} v{d['version']} ({src}): {d['events']} review events{who}")
    for p in lin["promotions"]:
        what = "promoted" if p["run_id"] == lin["run_id"] else f"replaced by {p['run_id']}"
        print(f"  {p['promoted_at']:%Y-%m-%d %H:%M:%S} {what} ({p['reason']})")
    if args.events:
        for e in lin["events"]:
            print(
                f"    {e['created_at']:%Y-%m-%d %H:%M:%S} {e['reviewer']:<12} {e['action']:<9} "
                f"{e['doc_id']} ({e['pred_run_id']}) -> {e['dataset']} v{e['version']}"
            )
    return 0


def cmd_ui(args) -> int:
    warning = exposure.check_bind(args.host, args.port, allow_remote=args.allow_remote, what="the dashboard")
    if warning:  # a non-loopback address with --allow-remote: said on every start
        print(warning, file=sys.stderr, flush=True)
    env = {**os.environ, "NER_DB": str(Path(args.db).resolve())}
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "ui" / "app.py"),
        "--server.address",
        args.host,
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    print(f"dashboard on http://{args.host}:{args.port}  (database {args.db})", flush=True)
    return subprocess.call(cmd, env=env)


def cmd_prefect(args) -> int:
    from app import prefect_local as deploy

    if args.action == "up":
        state = deploy.prefect_up(
            db=args.db, port=args.port or None, pool=args.pool, worker=not args.no_worker
        )
        print(
            f"Prefect server {state['api_url']} (UI http://127.0.0.1:{state['port']}), worker on pool "
            f"{state['pool']}, deployments registered, database {state['db']}"
        )
        print(f"  export PREFECT_API_URL={state['api_url']}")
        print("  prefect deployment run predict-new/nightly-predict      # or wait for the schedule")
        print(f"  logs: {state['server_log']} {state['worker_log']}   stop: ner prefect down")
    elif args.action == "down":
        stopped = deploy.prefect_down()
        print(f"stopped {', '.join(map(str, stopped))}" if stopped else "nothing was running")
    else:
        state = deploy.status()
        if state is None:
            print("not running (start it with `ner prefect up`)")
        else:
            print(
                f"server {state['api_url']} {'up' if state['server_alive'] else 'down'}, "
                f"worker {'up' if state['worker_alive'] else 'down'} (pool {state['pool']}), db {state['db']}"
            )
    return 0


def cmd_bench(args) -> int:
    return subprocess.call([sys.executable, "-m", "bench", *args.only], cwd=ROOT)


# ----------------------------------------------------------------------------------------- parser
def _common(sp: argparse.ArgumentParser, db: bool = True) -> argparse.ArgumentParser:
    if db:
        sp.add_argument(
            "--db", default=os.environ.get("NER_DB", DEFAULT_DB), help="DuckDB file (default %(default)s)"
        )
    sp.add_argument(
        "--no-prefect",
        action="store_true",
        default=os.environ.get("NER_NO_PREFECT", "0").lower() not in ("0", "false", ""),
        help="run the steps directly, without Prefect (default when NER_NO_PREFECT=1)",
    )
    return sp


def _add_ingest(sub) -> None:
    sp = _common(sub.add_parser("ingest", help="load labelled or raw files into DuckDB"))
    sp.add_argument("--name", required=True, help="dataset name")
    sp.add_argument("--train"), sp.add_argument("--dev"), sp.add_argument("--test")
    sp.add_argument("files", nargs="*", help="files to split with --split-ratios")
    sp.add_argument("--split-ratios", nargs=3, type=float, metavar=("TRAIN", "DEV", "TEST"))
    sp.add_argument(
        "--format",
        help="override format detection (seed_json, seed_texts, conll, bmes, cluener, jsonl, text)",
    )
    sp.add_argument("--policy", choices=["repair", "strict"], default="repair")
    sp.add_argument(
        "--untyped-label", default="ENT", help="label for untyped B/I/O tags (default %(default)s)"
    )
    sp.set_defaults(func=cmd_ingest)


def _add_train(sub) -> None:
    sp = _common(sub.add_parser("train", help="train a model on an ingested dataset (--dataset) or on files"))
    sp.add_argument(
        "--runs-root",
        "--save_path",
        "-save_path",
        default="runs",
        help="where run directories go (seed: save_path; default %(default)s)",
    )
    sp.add_argument(
        "--train_data",
        "-train_data",
        "--train-data",
        metavar="FILE",
        help="ingest this file as the train split of --dataset first (any supported format)",
    )
    sp.add_argument("--dev_data", "-dev_data", "--dev-data", metavar="FILE", help="... and this as dev")
    sp.add_argument("--test_data", "-test_data", "--test-data", metavar="FILE", help="... and this as test")
    sp.add_argument("--resume", metavar="RUN_ID", help="continue a killed run from its last checkpoint")
    sp.add_argument(
        "--plus",
        metavar="DATASET",
        help="also train on this dataset's train split (latest version), e.g. a review export; dev and "
        "test stay --dataset's; label sets must match, or differ only by labels reviewers added",
    )
    _add_config_args(sp)
    sp.set_defaults(func=cmd_train)


def _add_model_and_data(sp: argparse.ArgumentParser, split: str | None) -> None:
    """The model (--model-dir, --run, default the production run's) and the stored data of test/predict,
    and the seed's -test_data, -model_configs, -output_path and -device_map."""
    sp.add_argument("--model-dir", help="model directory (default: the production run's)")
    sp.add_argument("--run", help="use this training run's model")
    sp.add_argument("--dataset", default="sample")
    sp.add_argument("--split", default=split)
    g = add_seed_model_options(sp)
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


def _add_test(sub) -> None:
    sp = _common(sub.add_parser("test", help="evaluate a model on a dataset split"))
    _add_model_and_data(sp, split="test")
    sp.add_argument("--file", help="evaluate on this labelled file (any supported format) instead")
    sp.set_defaults(func=cmd_test)


def _add_predict(sub) -> None:
    sp = _common(sub.add_parser("predict", help="tag texts and store the entities in DuckDB"))
    _add_model_and_data(sp, split=None)
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


def _add_pipeline(sub) -> None:
    sp = _common(sub.add_parser("pipeline", help="ingest -> train -> test -> predict in one flow"))
    sp.add_argument("--train", required=True), sp.add_argument("--dev", required=True)
    sp.add_argument("--test", required=True)
    sp.add_argument("--predict-files", nargs="+", required=True)
    sp.add_argument("--runs-root", default="runs")
    _add_config_args(sp)
    sp.set_defaults(func=cmd_pipeline)


def _add_demo(sub) -> None:
    sp = _common(sub.add_parser("demo", help="the whole pipeline on the bundled sample corpus"), db=False)
    sp.add_argument(
        "--out", default="demo_out", help="folder for the DuckDB file and runs (default %(default)s)"
    )
    _add_config_args(sp)
    sp.set_defaults(func=cmd_demo, **{"cfg__training__max_epochs": 8})


def _add_runs(sub) -> None:
    sp = _common(sub.add_parser("runs", help="list training runs"))
    sp.set_defaults(func=cmd_runs)


def _add_promote(sub) -> None:
    sp = _common(sub.add_parser("promote", help="mark a run as the production model (or roll back)"))
    sp.add_argument("run_id", nargs="?", help="the completed run to promote")
    sp.add_argument(
        "--rollback",
        action="store_true",
        help="return to the production model the current one replaced (repeat to go further back)",
    )
    sp.set_defaults(func=cmd_promote)


def _add_review(sub) -> None:
    sp = sub.add_parser("review", help="the review loop: export reviewed predictions as gold")
    rsub = sp.add_subparsers(dest="action", required=True, parser_class=_Parser)
    ex = _common(
        rsub.add_parser(
            "export", help="store the documents reviewed so far, corrected, as the next dataset version"
        )
    )
    ex.add_argument("--pred-run", required=True, metavar="ID", help="the prediction run that was reviewed")
    ex.add_argument("--name", required=True, metavar="DATASET", help="dataset to store the export as")
    ex.add_argument(
        "--split",
        default="train",
        choices=["train", "dev", "test"],
        help="split of the exported documents (default %(default)s; train leaves out dev/test texts)",
    )
    ex.set_defaults(func=cmd_review)


def _add_lineage(sub) -> None:
    sp = _common(
        sub.add_parser("lineage", help="which dataset versions and review events made a run's model")
    )
    sp.add_argument("run_id")
    sp.add_argument("--events", action="store_true", help="list every review event too")
    sp.set_defaults(func=cmd_lineage)


def _add_ui(sub) -> None:
    sp = _common(sub.add_parser("ui", help="start the Streamlit dashboard"))
    sp.add_argument("--host", default="127.0.0.1"), sp.add_argument("--port", type=int, default=8501)
    sp.add_argument("--allow-remote", action="store_true", help="listen on a non-loopback --host (no login!)")
    sp.set_defaults(func=cmd_ui)


def _add_prefect(sub) -> None:
    sp = sub.add_parser("prefect", help="a local Prefect server + worker with the deployments (offline)")
    psub = sp.add_subparsers(dest="action", required=True, parser_class=_Parser)
    up = psub.add_parser("up", help="start a server on 127.0.0.1 and a worker; register prefect.yaml")
    up.add_argument(
        "--db",
        default=os.environ.get("NER_DB", DEFAULT_DB),
        help="DuckDB file the deployments use (default %(default)s)",
    )
    up.add_argument("--port", type=int, default=4200, help="server port (default %(default)s; 0: a free one)")
    up.add_argument("--pool", default="ner-local", help="process work pool (default %(default)s)")
    up.add_argument("--no-worker", action="store_true", help="register only; start workers yourself")
    psub.add_parser("down", help="stop the server and worker that `ner prefect up` started")
    psub.add_parser("status", help="show what `ner prefect up` started")
    sp.set_defaults(func=cmd_prefect)


def _add_bench(sub) -> None:
    sp = sub.add_parser("bench", help="run the benchmarks in bench/ and print their figures")
    sp.add_argument("only", nargs="*", help="benchmark module names (default: all)")
    sp.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    """``ner`` and its subcommands; each command's flags are added by its own ``_add_*`` function
    (``serve``, alias ``deploy``, and ``query`` by :func:`app.serve.add_commands`; ``convert-checkpoint`` by
    :func:`app.convert.add_parser`)."""
    from app import convert

    p = _Parser(prog="ner", description="Chinese NER: ingest, train, test, predict, review.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (
        _add_ingest,
        datasets_cmd.add_parser,
        _add_train,
        _add_test,
        _add_predict,
        _add_pipeline,
        _add_demo,
        _add_runs,
        _add_promote,
        _add_review,
        _add_lineage,
        interop.add_parser,
        _add_ui,
        _add_prefect,
        serve.add_commands,
        _add_bench,
    ):
        add(sub)
    convert.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    _prefect_env()
    show_library_logs()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line, never a traceback (NER_DEBUG=1 shows it)
        if os.environ.get("NER_DEBUG"):
            raise
        msg = " ".join(m.strip() for m in str(exc).strip().splitlines()[:6])
        if isinstance(exc, KeyError):
            msg = str(exc.args[0]) if exc.args else msg
        expected = (ValueError, KeyError, FileNotFoundError, ValidationError, RuntimeError)
        prefix = "" if isinstance(exc, expected) else f"{type(exc).__name__}: "
        print(f"ner {args.command}: error: {prefix}{msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
