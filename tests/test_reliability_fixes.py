"""Fixes for what the reliability campaign (bench/reliability) found: each test fails without its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from ner_core.data.formats import detect_format, read_file

DEEP = 100_000  # far past Python's recursion limit


def _deep(n: int = DEEP) -> str:
    return "[" * n + "]" * n


# ---------------------------------------------------------------- 1. deeply nested JSON


@pytest.mark.parametrize("fmt", ["jsonl", "cluener", "doccano"])
def test_deep_json_line_is_invalid_json_with_its_line(tmp_path: Path, fmt: str) -> None:
    p = tmp_path / "d.jsonl"
    first = {"doccano": '{"text": "ab", "label": []}', "cluener": '{"text": "ab", "label": {}}'}
    p.write_text(
        first.get(fmt, '{"text": "ab", "entities": []}')
        + "\n"
        + '{"text": "a", "entities": '
        + _deep()
        + "}\n"
    )
    res = read_file(p, fmt)
    assert [(x.code, x.line, x.record) for x in res.problems] == [("invalid_json", 2, 2)]
    assert "nested too deeply" in res.problems[0].message
    assert len(res.records) == 1  # the good first line is kept


@pytest.mark.parametrize("fmt", ["seed_json", "seed_texts", "label_studio"])
def test_deep_json_array_element_is_invalid_json(tmp_path: Path, fmt: str) -> None:
    p = tmp_path / "d.json"
    p.write_text('[\n"first",\n' + _deep() + "\n]\n")
    res = read_file(p, fmt)
    assert res.fatal
    assert [(x.code, x.line, x.record) for x in res.problems] == [("invalid_json", 3, 2)]


def test_detect_deep_first_line_names_file_and_code(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "entities": ' + _deep() + "}\n")
    with pytest.raises(ValueError, match=r"d\.jsonl: line 1: invalid_json: JSON nested too deeply"):
        detect_format(p)


# ---------------------------------------------------------------- 2. a full disk during ingest

_FULL_DISK_CHILD = r"""
import resource, signal, sys
from storage.datasets import ingest_dataset
from storage.db import DiskFullError
db, data, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # a write past it fails: EFBIG, as ENOSPC would
try:
    ingest_dataset(db, "big", {"train": data})
except DiskFullError as exc:
    print("DISKFULL", exc)
"""


def test_transaction_keeps_the_original_error_when_rollback_fails() -> None:
    import duckdb

    from storage.db import transaction

    con = duckdb.connect(":memory:")
    with pytest.raises(ValueError, match="the original"):
        with transaction(con):
            con.execute("COMMIT")  # as a failed COMMIT does, the transaction is over: ROLLBACK now fails
            raise ValueError("the original")


def test_full_disk_during_ingest_is_one_line_naming_the_database(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from storage.datasets import ingest_dataset, list_datasets

    db = tmp_path / "ner.duckdb"
    small = tmp_path / "small.jsonl"
    small.write_text('{"text": "张三在北京", "entities": [{"start": 0, "end": 2, "label": "PER"}]}\n')
    ingest_dataset(db, "small", {"train": small})
    big = tmp_path / "big.jsonl"
    with open(big, "w", encoding="utf-8") as fh:
        for i in range(20_000):
            fh.write(f'{{"text": "第{i}号文本：李四在上海工作了很多年{i * 7919}", "entities": []}}\n')
    limit = db.stat().st_size + 32 * 1024
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_CHILD, str(db), str(big), str(limit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    line = out.stdout.strip()
    assert line.startswith("DISKFULL database " + str(db)), out.stdout + out.stderr
    assert "the disk is full" in line and "\n" not in line
    assert "cannot rollback" not in line
    assert [d["name"] for d in list_datasets(db)] == ["small"]  # earlier data intact, nothing half written


# ---------------------------------------------------------------- 3. a full disk during model save


@pytest.fixture
def file_size_limit():
    """``limit(n)``: writes past ``n`` bytes in any file fail with EFBIG (as a full disk fails with ENOSPC)
    until the test ends; only the soft limit is lowered, so it is raised back."""
    import resource
    import signal

    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def limit(n: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, before[1]))

    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
        signal.signal(signal.SIGXFSZ, handler)


def _tiny_model(encoder_dir: Path, seed: int = 0):
    import torch

    from ner_core import schemes
    from ner_core.config import NERConfig
    from ner_core.model.encoder import load_encoder
    from ner_core.model.network import NERModel
    from tests.model_helpers import LABELS

    cfg = NERConfig().with_overrides(
        {"encoder.name": str(encoder_dir), "head.type": "bigru", "head.rnn_units": 8, "data.scheme": "BIO"}
    )
    encoder, tokenizer = load_encoder(cfg.encoder)
    torch.manual_seed(seed)
    return NERModel(cfg, schemes.tag_set(LABELS, "BIO"), encoder).eval(), tokenizer


def test_full_disk_during_model_save_names_the_directory_and_keeps_the_old_model(
    tiny_encoder_dir: Path, tmp_path: Path, file_size_limit
) -> None:
    from ner_core.artifacts.layout import ModelDirError
    from ner_core.artifacts.modeldir import load_model_dir, save_model_dir

    model, tok = _tiny_model(tiny_encoder_dir)
    target = save_model_dir(tmp_path / "model", model, tok, metrics={"v": 1})
    file_size_limit(4096)  # the weights file is far larger
    with pytest.raises(ModelDirError) as err:
        save_model_dir(target, model, tok, metrics={"v": 2})
    file_size_limit(1 << 62)
    msg = str(err.value)
    assert msg.startswith(f"{target}: cannot save the model, the disk is full") and "\n" not in msg
    assert "the earlier model there is intact" in msg
    assert load_model_dir(target).metrics == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp folder left


# ---------------------------------------------------------------- 4. what kills leave behind


def test_next_save_removes_stale_temps_and_never_the_live_model(
    tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    from ner_core.artifacts.modeldir import load_model_dir, save_model_dir

    model, tok = _tiny_model(tiny_encoder_dir)
    target = save_model_dir(tmp_path / "model", model, tok, metrics={"v": 1})
    (tmp_path / ".model.tmp-dead0001").mkdir()  # a save killed while writing
    (tmp_path / ".model.old-dead0002").mkdir()  # a save killed before removing the earlier model
    (tmp_path / ".other.tmp-keep0003").mkdir()  # another directory's: not ours to remove
    save_model_dir(target, model, tok, metrics={"v": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-keep0003", "model"]
    assert load_model_dir(target).metrics == {"v": 2}


def test_a_kill_between_the_renames_gets_the_earlier_model_back(
    tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    from ner_core.artifacts.layout import ModelDirError
    from ner_core.artifacts.modeldir import load_model_dir, recover_model_dir, save_model_dir

    model, tok = _tiny_model(tiny_encoder_dir)
    target = save_model_dir(tmp_path / "model", model, tok, metrics={"v": 1})
    target.rename(tmp_path / ".model.old-abcd1234")  # the state after the first rename
    (tmp_path / ".model.tmp-abcd5678").mkdir()
    with pytest.raises(ModelDirError, match="a save was interrupted"):
        load_model_dir(target)
    recover_model_dir(target)  # what a resume of the run does
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert load_model_dir(target).metrics == {"v": 1}


def test_checkpoint_save_and_load_remove_killed_writes_temps(tmp_path: Path) -> None:
    import torch

    from ner_core.training.run_state import TrainingState, load_checkpoint, save_checkpoint

    stale = [tmp_path / ".checkpoint-e0001.safetensors.tmp-dead0001", tmp_path / ".checkpoint.json.tmp-dead"]
    for p in stale:
        p.write_bytes(b"half")
    state = TrainingState(epoch=1)
    state.capture_rng()
    save_checkpoint(tmp_path, state, {"w": torch.ones(2)}, {"state": {}, "param_groups": []}, {})
    assert not any(p.exists() for p in stale)
    stale[0].write_bytes(b"half")
    assert load_checkpoint(tmp_path).state.epoch == 1
    assert not stale[0].exists()


# ---------------------------------------------------------------- 5. --resume before the first checkpoint


def test_resume_without_a_checkpoint_trains_from_the_beginning(
    tiny_encoder_dir: Path, tmp_path: Path, caplog, one_thread
) -> None:
    from safetensors.torch import load_file

    from ner_core.training.loop import train
    from tests.test_training import LABELS, _config, _docs

    cfg, train_docs, dev_docs = _config(tiny_encoder_dir, hard_epochs=1), _docs("train", 16), _docs("dev", 4)
    fresh = train(cfg, train_docs, dev_docs, LABELS, tmp_path / "fresh", progress=False)
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "config.json").write_text(cfg.to_json())  # all a run killed in its first epoch left
    with caplog.at_level("INFO", logger="ner_core"):
        resumed = train(cfg, train_docs, dev_docs, LABELS, killed, resume=True, progress=False)
    assert "no checkpoint yet" in caplog.text
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in fresh.history]
    w_fresh, w_res = (load_file(r.model_dir / "model.safetensors") for r in (fresh, resumed))
    assert all(torch_equal(w_fresh[k], w_res[k]) for k in w_fresh)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


# ---------------------------------------------------------------- 6. dashboard reads while a writer works

_HOLD = """import sys, time
from storage.db import open_db
with open_db(sys.argv[1]) as con:
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold_lock(db: Path, seconds: float):
    """A child process that holds ``db``'s write lock for ``seconds`` once it printed 'holding'."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(db), str(seconds)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout.readline().strip() == "holding"
    return child


def test_a_writer_on_a_current_schema_does_not_migrate(tmp_path: Path, monkeypatch) -> None:
    import storage.db as db_module

    db = tmp_path / "ner.duckdb"
    db_module.connect(db).close()  # migrated once

    def refuse(*a, **k):
        raise AssertionError("migrate() ran on a current schema")

    monkeypatch.setattr(db_module, "migrate", refuse)
    con = db_module.connect(db)
    assert db_module.current_version(con) == db_module.MIGRATIONS[-1][0]
    con.close()


def test_a_reader_retries_a_held_lock_with_a_short_backoff(tmp_path: Path, monkeypatch) -> None:
    import time

    import storage.db as db_module

    db = tmp_path / "ner.duckdb"
    db_module.connect(db).close()
    pauses: list[float] = []
    real_sleep = time.sleep

    class _Time:
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def sleep(s: float) -> None:
            pauses.append(s)
            real_sleep(s)

    child = _hold_lock(db, 0.6)
    monkeypatch.setattr(db_module, "time", _Time)
    try:
        db_module.connect(db, read_only=True, wait_s=10).close()
    finally:
        child.wait(timeout=30)
    assert pauses[:4] == [0.005, 0.01, 0.02, 0.04]
    assert max(pauses) == 0.05


# ---------------------------------------------------------------- 7. the lock holder's command line


def test_locked_error_names_the_holder_on_one_line(tmp_path: Path) -> None:
    import storage.db as db_module

    db = tmp_path / "ner.duckdb"
    db_module.connect(db).close()
    child = _hold_lock(db, 3)  # its command line (python -c SCRIPT) holds newlines and indents
    try:
        with pytest.raises(db_module.DatabaseLockedError) as err:
            db_module.connect(db, wait_s=0.2)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert err.value.pid == child.pid
    assert "from storage.db import open_db with open_db(sys.argv[1]) as con:" in err.value.command
    assert "\n" not in str(err.value) and "  " not in err.value.command
