"""The ``ner`` command line: subcommands, seed flags and their mapping onto the config, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from app import cli
from tests.conftest import REPO, SAMPLE

SEED_TRAIN_FLAGS = (
    "train_data",
    "dev_data",
    "save_path",
    "albert",
    "bert_config",
    "bert_checkpoint",
    "bert_vocab",
    "max_epochs",
    "hard_epochs",
    "batch_size",
    "max_len",
    "learning_rate",
    "early_stop_patience",
    "reduce_lr_patience",
    "reduce_lr_factor",
    "model_type",
    "cell_type",
    "rnn_units",
    "rnn_num_hidden_layers",
    "cnn_filters",
    "cnn_kernel_size",
    "cnn_blocks",
    "dropout_rate",
    "crf_only",
    "best_fit",
    "device_map",
    "tag_padding",
)


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse: --help and usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_every_subcommand_is_there():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert {
        "train",
        "test",
        "predict",
        "deploy",
        "serve",
        "query",
        "ingest",
        "pipeline",
        "runs",
        "promote",
        "ui",
        "bench",
        "prefect",
        "demo",
        "convert-checkpoint",
        "review",
        "lineage",
        "export",
    } <= set(sub.choices)


def test_train_help_lists_every_seed_flag_with_defaults(capsys):
    rc, out, _ = run(["train", "--help"], capsys)
    assert rc == 0
    for flag in SEED_TRAIN_FLAGS:
        assert f"-{flag}" in out, flag
    flat = " ".join(out.split())
    assert "upper bound on epochs (default: 10)" in flat
    assert "(default: bilstm)" in flat and "(default: 128)" in flat


def test_seed_flags_map_onto_the_config(tmp_path):
    enc = tmp_path / "enc"
    enc.mkdir()
    for f in ("config.json", "vocab.txt"):
        (enc / f).write_text("{}", encoding="utf-8")
    args = cli.build_parser().parse_args(
        [
            "train",
            "-max_epochs",
            "3",
            "-batch_size",
            "8",
            "-max_len",
            "64",
            "-crf_only",
            "-device_map",
            "1",
            "-bert_config",
            str(enc / "config.json"),
            "-bert_vocab",
            str(enc / "vocab.txt"),
            "-best_fit",
            "-save_path",
            str(tmp_path / "out"),
            "-dropout_rate",
            "0.3",
            "-learning_rate",
            "2e-5",
        ]
    )
    cfg = cli.build_config(args)
    assert cfg.training.max_epochs == 3 and cfg.training.batch_size == 8 and cfg.data.max_len == 64
    assert cfg.head.type.value == "none" and cfg.training.device == "cuda:1"
    assert cfg.encoder.name == str(enc.resolve()) and cfg.training.best_fit is True
    assert cfg.head.dropout_rate == 0.3 and cfg.training.learning_rate == 2e-5
    assert args.runs_root == str(tmp_path / "out")


@pytest.mark.parametrize(
    "argv,head",
    [
        (["--model_type", "cnn"], "idcnn"),
        (["-model_type", "rnn"], "bilstm"),
        (["-cell_type", "gru"], "bigru"),
        (["--head", "bigru"], "bigru"),
        ([], "bilstm"),
    ],
)
def test_model_type_and_cell_type(argv, head):
    assert cli.build_config(cli.build_parser().parse_args(["train", *argv])).head.type.value == head


def test_tag_padding_is_accepted_and_unused(capsys):
    cfg = cli.build_config(cli.build_parser().parse_args(["train", "-tag_padding", "X"]))
    assert cfg == cli.build_config(cli.build_parser().parse_args(["train"]))
    assert capsys.readouterr().err == ""  # the note comes after a finished run (a refusal stays one line)
    rc, out, _ = run(["train", "--help"], capsys)
    assert "padding tag; accepted and unused" in " ".join(out.split())


def _one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["train", "--bogus"], ["unrecognized arguments: --bogus"]),
        (["train", "--head", "crf2"], ["invalid choice: 'crf2'"]),
        (["train", "--max_epochs", "many"], ["--max_epochs", "invalid int value"]),
        (["train", "-crf_only", "--head", "idcnn", "--no-prefect"], ["--crf_only means no head"]),
        (["train", "-device_map", "0,1", "--no-prefect"], ["one device is used"]),
        (["train", "--cnn_kernel_size", "4", "--no-prefect"], ["cnn_kernel_size must be odd"]),
        (["frobnicate"], ["invalid choice: 'frobnicate'"]),
    ],
)
def test_bad_flags_give_one_line(argv, needles, capsys, tmp_path):
    rc, _, err = run(
        [*argv, *(["--db", str(tmp_path / "x.duckdb")] if "--no-prefect" in argv else [])], capsys
    )
    _one_line_error(rc, err, *needles)


def test_unknown_encoder_is_one_line(capsys, tmp_path):
    for enc, needle in (
        (str(tmp_path / "no-such-encoder"), "unknown encoder"),
        ("someone/not-cached-model", "not in the local Hugging Face cache"),
        (str(SAMPLE), "has no config.json"),
    ):
        rc, _, err = run(
            ["train", "--no-prefect", "--db", str(tmp_path / "x.duckdb"), "--encoder", enc], capsys
        )
        _one_line_error(rc, err, needle)


def test_missing_files_are_one_line(capsys, tmp_path, tiny_encoder_dir):
    missing = str(tmp_path / "missing.jsonl")
    rc, _, err = run(
        [
            "train",
            "--no-prefect",
            "--db",
            str(tmp_path / "x.duckdb"),
            "--encoder",
            str(tiny_encoder_dir),
            "-train_data",
            missing,
            "-dev_data",
            str(SAMPLE / "dev.jsonl"),
        ],
        capsys,
    )
    _one_line_error(rc, err, "missing.jsonl: no such file")
    rc, _, err = run(
        [
            "train",
            "--no-prefect",
            "--db",
            str(tmp_path / "x.duckdb"),
            "--encoder",
            str(tiny_encoder_dir),
            "-train_data",
            str(SAMPLE / "train.jsonl"),
        ],
        capsys,
    )
    _one_line_error(rc, err, "--train_data needs --dev_data")
    rc, _, err = run(
        [
            "predict",
            "--no-prefect",
            "--db",
            str(tmp_path / "x.duckdb"),
            "--model-dir",
            str(tmp_path / "nomodel"),
            missing,
        ],
        capsys,
    )
    _one_line_error(rc, err, "no such model directory")
    model_dir = _fake_run(str(tmp_path / "y.duckdb"), "run-y", tmp_path)
    rc, _, err = run(
        [
            "test",
            "--no-prefect",
            "--db",
            str(tmp_path / "y.duckdb"),
            "--model-dir",
            str(model_dir),
            "--file",
            missing,
        ],
        capsys,
    )
    _one_line_error(rc, err, "missing.jsonl: no such file")
    rc, _, err = run(
        ["ingest", "--no-prefect", "--db", str(tmp_path / "x.duckdb"), "--name", "x", "--train", missing],
        capsys,
    )
    _one_line_error(rc, err, "missing.jsonl: no such file")


def _fake_run(db, run_id, tmp_path, status="completed"):
    from ner_core.config import NERConfig
    from storage import runs as runs_db

    runs_db.create_run(
        db,
        run_id,
        dataset="sample",
        dataset_version=1,
        config_json=NERConfig().to_json(),
        run_dir=tmp_path / run_id,
    )
    model_dir = tmp_path / run_id / "model"
    model_dir.mkdir(parents=True)
    runs_db.finish_run(
        db,
        run_id,
        status=status,
        model_dir=model_dir if status == "completed" else None,
        best_epoch=1,
        best_dev_f1=0.5,
        seconds=1.0,
    )
    return model_dir


def test_promote_marks_one_production_run_and_runs_shows_it(capsys, tmp_path):
    from storage import runs as runs_db

    db = str(tmp_path / "p.duckdb")
    _fake_run(db, "run-a", tmp_path)
    _fake_run(db, "run-b", tmp_path)
    _fake_run(db, "run-c", tmp_path, status="failed")
    assert run(["promote", "run-a", "--db", db], capsys)[0] == 0
    rc, out, _ = run(["promote", "run-b", "--db", db], capsys)
    assert rc == 0 and "run-b is now the production model" in out
    assert runs_db.production_run(db)["run_id"] == "run-b"
    rc, out, _ = run(["runs", "--db", db], capsys)
    assert rc == 0 and [ln for ln in out.splitlines() if "[production]" in ln][0].startswith("run-b")
    rc, _, err = run(["promote", "run-c", "--db", db], capsys)
    _one_line_error(rc, err, "only a completed run can be promoted")
    rc, _, err = run(["promote", "run-zzz", "--db", db], capsys)
    _one_line_error(rc, err, "no run 'run-zzz'")
    assert runs_db.production_run(db)["run_id"] == "run-b"


def test_only_new_needs_a_dataset_and_a_run(capsys, tmp_path):
    db = str(tmp_path / "p.duckdb")
    model_dir = _fake_run(db, "run-a", tmp_path)
    rc, _, err = run(
        ["predict", "--no-prefect", "--db", db, "--model-dir", str(model_dir), "--only-new"], capsys
    )
    _one_line_error(rc, err, "--only-new tags a stored --dataset with a run's model")


@pytest.mark.parametrize("command", ["predict", "test", "serve"])
def test_a_model_dir_and_a_run_at_once_are_refused_in_one_line(command, capsys, tmp_path):
    db = str(tmp_path / "p.duckdb")
    model_dir = _fake_run(db, "run-a", tmp_path)
    rc, _, err = run([command, "--db", db, "--model-dir", str(model_dir), "--run", "run-a"], capsys)
    _one_line_error(rc, err, "--model-dir and --run both name the model to use: give one of them")


def test_prefect_status_and_down_when_nothing_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert run(["prefect", "status"], capsys)[1].startswith("not running")
    assert run(["prefect", "down"], capsys)[1].strip() == "nothing was running"
    rc, _, err = run(["prefect", "sideways"], capsys)
    _one_line_error(rc, err, "invalid choice: 'sideways'")


def test_console_entry_point_runs_as_a_process(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "runs", "--db", str(tmp_path / "empty.duckdb")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 2 and "empty.duckdb does not exist" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # trains a tiny model for one epoch (> 20 s on 2 shared cores)
def test_train_from_files_then_test_and_incremental_predict_without_prefect(
    capsys, tmp_path, tiny_encoder_dir
):
    db = str(tmp_path / "cli.duckdb")
    small = tmp_path / "small"
    small.mkdir()
    lines = (SAMPLE / "test.jsonl").read_text(encoding="utf-8").splitlines()
    for split, part in (("train", lines[:40]), ("dev", lines[40:60]), ("test", lines[60:80])):
        (small / f"{split}.jsonl").write_text("\n".join(part) + "\n", encoding="utf-8")
    rc, out, err = run(
        [
            "train",
            "--no-prefect",
            "--db",
            db,
            "--encoder",
            str(tiny_encoder_dir),
            "--dataset",
            "mini",
            "-train_data",
            str(small / "train.jsonl"),
            "-dev_data",
            str(small / "dev.jsonl"),
            "-test_data",
            str(small / "test.jsonl"),
            "-max_epochs",
            "1",
            "-max_len",
            "32",
            "-rnn_units",
            "8",
            "-save_path",
            str(tmp_path / "runs"),
        ],
        capsys,
    )
    assert rc == 0, err
    trained = json.loads(out[out.index("{") :])
    assert (tmp_path / "runs" / trained["run_id"]).is_dir()
    assert run(["promote", trained["run_id"], "--db", db], capsys)[0] == 0
    rc, out, err = run(["test", "--no-prefect", "--db", db, "--dataset", "mini"], capsys)
    assert rc == 0 and "| PER" in out, err
    rc, out, err = run(["test", "--db", db, "--file", str(small / "dev.jsonl")], capsys)  # a Prefect flow run
    assert rc == 0 and json.loads(out[out.index("{") :])["n_sentences"] == 20, err
    rc, out, err = run(["predict", "--no-prefect", "--db", db, "--dataset", "mini", "--only-new"], capsys)
    assert rc == 0, err
    first = json.loads(out[out.index("{") :])
    assert first["n_new_documents"] == 80
    rc, out, _ = run(["predict", "--no-prefect", "--db", db, "--dataset", "mini", "--only-new"], capsys)
    assert json.loads(out[out.index("{") :])["n_new_documents"] == 0


@pytest.mark.parametrize("command", ["predict", "serve", "deploy"])
def test_predict_and_serve_share_the_prediction_options(command, capsys):
    rc, out, _ = run([command, "--help"], capsys)
    assert rc == 0
    for flag in ("--window", "--stride", "--batch-size", "--threads", "--device", "--precision"):
        assert flag in out, (command, flag)
    assert "--max-len" not in out
    args = cli.build_parser().parse_args([command, "--window", "40", "--stride", "10", "--threads", "2"])
    from app.options import prediction_options

    opts = prediction_options(args)
    assert (opts.window, opts.stride, opts.num_threads, opts.batch_size, opts.device) == (
        40,
        10,
        2,
        None,
        None,
    )


@pytest.mark.parametrize("argv", [["--window_stride", "32"], ["--window-stride", "8"], ["--window_stride"]])
@pytest.mark.parametrize("command", ["train", "pipeline"])
def test_window_stride_answers_that_it_never_had_an_effect(command, argv, capsys):
    rc, _, err = run([command, *argv], capsys)
    _one_line_error(rc, err, argv[0], "never had an effect", "ner predict --stride", "--max_len")


def test_every_command_reads_its_defaults_through_the_settings(monkeypatch, tmp_path):
    """One name per setting: NER_DB is the --db of every command that has one, NER_NO_PREFECT is read as
    every switch is (``off`` is off), NER_SERVE_URL is the --url of ner query."""
    db = str(tmp_path / "from-env.duckdb")
    monkeypatch.setenv("NER_DB", db)
    monkeypatch.setenv("NER_NO_PREFECT", "off")
    monkeypatch.setenv("NER_SERVE_URL", "http://127.0.0.1:9")
    parser = cli.build_parser()
    with_db = [
        ["train"], ["test"], ["predict"], ["ingest", "--name", "x"], ["runs"], ["datasets", "list"],
        ["datasets", "delete", "x"], ["export", "--pred-run", "p", "--format", "doccano", "--out", "o"],
        ["serve"], ["prefect", "up"], ["review", "export", "--pred-run", "p", "--name", "n"],
        ["lineage", "r"], ["promote", "r"], ["ui"],
    ]  # fmt: skip
    for argv in with_db:
        assert parser.parse_args(argv).db == db, argv
    assert parser.parse_args(["runs"]).no_prefect is False
    assert parser.parse_args(["query", "x"]).url == "http://127.0.0.1:9"
    monkeypatch.setenv("NER_NO_PREFECT", "1")
    assert cli.build_parser().parse_args(["runs"]).no_prefect is True


def test_an_unreadable_setting_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("NER_DASK_WORKERS", "many")
    rc, _, err = run(["runs"], capsys)
    _one_line_error(rc, err, "NER_DASK_WORKERS: expected a positive number of workers, got 'many'")
