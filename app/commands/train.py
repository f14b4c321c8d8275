"""``ner train``: train a model on an ingested dataset (``--dataset``) or on files (the seed's
``-train_data`` / ``-dev_data`` / ``-test_data``, ingested first, under ``--dataset`` or a name made from the
files); ``--resume RUN_ID`` continues a killed run.

``--unlabeled FILES`` (or ``--unlabeled_dataset NAME``) self-trains: the trained model tags the texts, the
documents it is sure of become silver data of loss weight ``--silver_weight``, and it trains again
(:mod:`ner_core.training.self_training`; with Prefect, the ``self-train`` flow runs it).

``--teacher RUN_ID|MODEL_DIR`` distils: the student trains on gold plus the teacher's soft targets, also on
the ``--unlabeled`` texts, which are then not self-trained on (:mod:`ner_core.training.distillation`; with
Prefect, the ``distill`` flow runs it).

``--decoder span`` trains the span decoder (:mod:`ner_core.model.span`) on the dataset's outer entities plus
its nested and same-span ones (crossing spans are left out and counted); ``--max_span_len`` and
``--overlap`` default to what the training data shows (said when training starts). The seed's
``--crf_only`` / ``-model_type`` describe a CRF model and are refused with it.

With ``-save_path`` it writes the seed's ``model_configs.json``, with ``-do_eval`` the seed's training log
(:mod:`app.seed_commands`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app import seed_commands
from app.commands.config_options import add_config_args, build_config, check_device, dataset_from_files
from app.commands.shared import CLIError, add_common, print_json, run_flow_or_step
from ner_core.model.encoder import check_encoder, preflight


def add_parser(sub) -> None:
    sp = add_common(
        sub.add_parser("train", help="train a model on an ingested dataset (--dataset) or on files")
    )
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
        help="ingest this file as the train split of --dataset first (any supported format); without "
        "--dataset the dataset is named after the files (their common stem, else their folder)",
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
    add_config_args(sp)
    sp.set_defaults(func=cmd_train)


def _data_files(args: argparse.Namespace) -> dict[str, str]:
    """The seed's -train_data / -dev_data / -test_data, checked: train needs dev, all must exist, and a
    resumed run takes none."""
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
    for f in args.cfg__unlabeled or []:
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f}: no such file (--unlabeled)")
    if args.resume and args.cfg__teacher:
        raise CLIError("--resume continues a stored run with the teacher it started with; drop --teacher")
    if args.resume and (args.cfg__unlabeled or args.cfg__unlabeled_dataset):
        raise CLIError(
            "--resume continues a stored run with the unlabeled texts it started with; drop --unlabeled"
        )
    return files


def cmd_train(args: argparse.Namespace) -> int:
    from flows import steps

    config = build_config(args)
    if args.resume:
        check_encoder(config.encoder.name)
    else:
        preflight(config)
        check_device(config.training.device)
    files = _data_files(args)
    config = dataset_from_files(args, config, list(files.values()))
    if files:
        ingest = run_flow_or_step(
            args, "ingest_flow", steps.ingest_step, db_path=args.db, name=config.data.dataset, files=files
        )
        print(f"ingested {config.data.dataset} v{ingest.version}", file=sys.stderr)
    kwargs = dict(db_path=args.db, config=config, runs_root=args.runs_root, run_id=args.resume)
    kwargs.update(resume=bool(args.resume), **({"plus": args.plus} if args.plus else {}))
    if config.training.distilling and not args.no_prefect:
        from flows.distill import distill_flow

        out = distill_flow(**kwargs)
    elif config.training.self_training and not args.no_prefect:
        from flows.self_train import self_train_flow

        out = self_train_flow(**kwargs)
    else:
        out = run_flow_or_step(args, "train_flow", steps.train_step if args.no_prefect else None, **kwargs)
    seed_commands.write_model_configs(
        args.runs_root, out.model_dir, run_id=out.run_id, bert_vocab=args.bert_vocab
    )
    if args.do_eval:
        path, text = seed_commands.write_train_log(args.runs_root, out, albert=args.albert)
        print(f"{text}\n(-do_eval report written to {path})", file=sys.stderr)
    if args.tag_padding:  # said after the run, so that a refusal stays one line
        print("note: -tag_padding is not needed (padding is masked) and was ignored", file=sys.stderr)
    print_json(out)
    return 0
