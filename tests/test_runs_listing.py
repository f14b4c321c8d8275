"""What a new user tripped over (issue 23): paths stored relative to the folder a command ran in, training
runs listed but no prediction runs, an unknown id answered without a hint, and the seed's
``ner train -train_data ...`` filing every corpus under the demo's dataset name ``sample``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.commands.config_options import dataset_name_of
from app.commands.shared import CLIError
from tests.test_cli import _fake_run, _one_line_error, run


# ------------------------------------------------------------------------------------- dataset names
@pytest.mark.parametrize(
    ("files", "name"),
    [
        (["d/finance_train.json", "d/finance_dev.json", "d/finance_test.json"], "finance"),
        (["x/corpus.train", "x/corpus.dev"], "corpus"),
        (["DATA/train.txt", "DATA/dev.txt"], "DATA"),
        (["a/msra_train_bio", "a/msra_test_bio"], "msra"),
        (["r/train.char.bmes", "r/dev.char.bmes"], "resume-ner"),
        (["w/我的 数据_train.json"], "w"),  # nothing of the stem is a name: the folder's
    ],
)
def test_a_dataset_is_named_after_its_files(files, name, tmp_path):
    if name == "resume-ner":
        files = [str(tmp_path / "resume-ner" / Path(f).name) for f in files]
    assert dataset_name_of(files) == name


def test_files_that_give_no_name_ask_for_dataset(tmp_path):
    with pytest.raises(CLIError, match=r"give --dataset NAME"):
        dataset_name_of(["/数据/训练.json", "/数据/验证.json"])


def test_seed_train_without_dataset_does_not_file_the_data_under_sample(tmp_path, capsys, tiny_encoder_dir):
    """``ner train -train_data F -dev_data F`` (the seed's form) ingests under a name made from the files
    and says so; the demo's ``sample`` dataset is never touched."""
    from storage.datasets import list_datasets

    data = tmp_path / "seed"
    data.mkdir()
    for split in ("train", "dev"):
        src = Path(__file__).resolve().parents[1] / "sample_corpus" / f"{split}.jsonl"
        (data / f"fin_{split}.jsonl").write_bytes(src.read_bytes())
    db = str(tmp_path / "n.duckdb")
    argv = ["train", "--no-prefect", "--db", db, "--encoder", str(tiny_encoder_dir),
            "-train_data", str(data / "fin_train.jsonl"), "-dev_data", str(data / "fin_dev.jsonl"),
            "--max_epochs", "1", "--head", "none", "--runs-root", str(tmp_path / "runs"),
            "--max_len", "32"]  # fmt: skip
    rc, _, err = run(argv, capsys)
    assert rc == 0, err
    assert "dataset 'fin': named after the files" in err
    assert [d["name"] for d in list_datasets(db)] == ["fin"]


# ------------------------------------------------------------------------------ runs and prediction runs
def _prediction_run(db: str, pred_run_id: str, model_dir: Path) -> None:
    from ner_core.inference.tagger import PredictedEntity
    from storage.predictions import PredictionRunWriter

    with PredictionRunWriter(
        db,
        pred_run_id,
        model_dir=model_dir,
        run_id="run-a",
        input_kind="file",
        input_ref="news.txt",
        replace=True,
    ) as w:
        w.write([("d1", "张三在北京", [PredictedEntity(0, 2, "PER", "张三", 0.9)], 0.1)])


def test_ner_runs_predictions_lists_the_prediction_runs(tmp_path, capsys):
    db = str(tmp_path / "p.duckdb")
    model_dir = _fake_run(db, "run-a", tmp_path)
    rc, out, _ = run(["runs", "--predictions", "--db", db], capsys)
    assert rc == 0 and out.strip() == f"no prediction runs in {db}"
    _prediction_run(db, "pred-20261207-a", model_dir)
    rc, out, _ = run(["runs", "--predictions", "--db", db], capsys)
    assert rc == 0
    line = out.strip()
    assert line.startswith("pred-20261207-a  completed") and "model run run-a" in line
    assert "1 document, 1 entity" in line and line.endswith("file: news.txt")


def test_an_unknown_id_names_the_closest_ones(tmp_path, capsys):
    db = str(tmp_path / "p.duckdb")
    model_dir = _fake_run(db, "20261207-101500-resume-bilstm-a1b2c3", tmp_path)
    _fake_run(db, "20261207-111500-msra-idcnn-d4e5f6", tmp_path)
    _prediction_run(db, "pred-20261207-a", model_dir)
    rc, _, err = run(["promote", "20261207-101500-resume-bilstm-a1b2c4", "--db", db], capsys)
    _one_line_error(rc, err, "closest: 20261207-101500-resume-bilstm-a1b2c3 (`ner runs` lists them)")
    rc, _, err = run(["export", "--pred-run", "pred-20261207-b", "--format", "doccano",
                      "--out", str(tmp_path / "x.jsonl"), "--db", db], capsys)  # fmt: skip
    _one_line_error(rc, err, "closest: pred-20261207-a (`ner runs --predictions` lists them)")


def test_directories_are_stored_absolute_and_old_relative_ones_read_back_absolute(tmp_path, monkeypatch):
    """A run made from one folder is found from another (``ner ui`` started elsewhere): new rows are
    absolute; a row stored relative by earlier code resolves against the database's folder."""
    from storage import runs as runs_db
    from storage.db import connect

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    db = str(work / "n.duckdb")
    _fake_run(db, "r1", Path("runs"))  # relative, as a command run in `work` gives them
    monkeypatch.chdir(tmp_path)
    row = runs_db.get_run(db, "r1")
    assert os.path.isabs(row["run_dir"]) and Path(row["run_dir"]) == work / "runs" / "r1"
    assert Path(row["model_dir"]) == work / "runs" / "r1" / "model"
    with connect(db) as con:  # as code before stored it: relative to where the command ran
        con.execute("UPDATE runs SET model_dir = 'runs/r1/model' WHERE run_id = 'r1'")
    assert Path(runs_db.get_run(db, "r1")["model_dir"]) == work / "runs" / "r1" / "model"
