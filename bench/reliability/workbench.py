"""What the stages share: the ``ner`` command as a child process (and the argument lists of the commands
several stages run), kills at chosen moments, the re-run that records a failure instead of raising, and
the artefacts built once per campaign (a tiny encoder, a database holding the sample corpus, a reference
training run, a database of reviewed predictions).

The children run ``python -m app.cli`` (the ``ner`` entry point) of this checkout with ``--no-prefect``
(the same steps without Prefect's temporary server, which would dominate the run time), one torch
thread, offline.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench.reliability.harness import DATASETS, REPO, SAMPLE, Context, StageResult


def child_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NER_DEBUG"}
    env.update(
        PYTHONPATH=str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PREFECT_HOME=str(workdir / ".prefect"),
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def ner_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def reproducer(args: list[str], note: str = "") -> str:
    """The shell command a person runs to see it again (from the repository root)."""
    cmd = f"PYTHONPATH=. python -m app.cli {shlex.join(args)}"
    return f"{cmd}  # {note}" if note else cmd


def start(
    args: list[str], cwd: Path, log: Path, preexec: Callable[[], None] | None = None
) -> subprocess.Popen:
    """Start ``ner ARGS`` in its own session (so a kill reaches every process it started)."""
    fh = open(log, "wb")
    try:
        return subprocess.Popen(
            ner_argv(args),
            cwd=cwd,
            env=child_env(cwd),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
        )
    finally:
        fh.close()


def run(args: list[str], cwd: Path, log: Path, timeout: float = 600, **kw) -> tuple[int, float, str]:
    """Run ``ner ARGS`` to its end: (exit status, seconds, output)."""
    t0 = time.perf_counter()
    proc = start(args, cwd, log, **kw)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        rc = -9
    return rc, time.perf_counter() - t0, log.read_text(encoding="utf-8", errors="replace")


def run_marked(args: list[str], cwd: Path, log: Path, marker: str) -> tuple[int, float, str, float]:
    """Run ``ner ARGS`` to its end: (exit status, seconds, output, seconds until ``marker`` first showed
    in the output: the end of the start-up, e.g. imports and loading)."""
    t0 = time.perf_counter()
    proc = start(args, cwd, log)
    seen = None
    while proc.poll() is None:
        if seen is None and marker in log.read_text(encoding="utf-8", errors="replace"):
            seen = time.perf_counter() - t0
        time.sleep(0.005)
    seconds = time.perf_counter() - t0
    return proc.returncode, seconds, log.read_text(encoding="utf-8", errors="replace"), seen or seconds / 2


def kill(proc: subprocess.Popen) -> bool:
    """``kill -9`` the child's process group; False when it had ended already."""
    if proc.poll() is not None:
        return False
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    proc.wait()
    return True


def kill_after(proc: subprocess.Popen, seconds: float) -> bool:
    """Let the child run ``seconds``, then ``kill -9`` it; False when it finished first."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        return kill(proc)


def kill_when(
    proc: subprocess.Popen, folder: Path, pattern: str, after_s: float = 0.0, *, first: str = "", limit_s=600
) -> bool:
    """Wait ``after_s`` (and, when given, until a path matching ``first`` exists), then ``kill -9`` the
    child the moment a path matching ``pattern`` (a glob under ``folder``) exists: a write in progress.
    False when the child finished first; at ``limit_s`` it is killed anyway (True)."""
    if after_s and not kill_after_wait(proc, after_s):
        return False
    t_end = time.monotonic() + limit_s
    for glob in [g for g in (first, pattern) if g]:
        while time.monotonic() < t_end and proc.poll() is None:
            if folder.exists() and next(folder.glob(glob), None) is not None:
                break
            time.sleep(0.002)
    if proc.poll() is not None:
        return False
    return kill(proc)


def kill_on_output(
    proc: subprocess.Popen, log: Path, marker: str, delay_s: float, limit_s: float = 600
) -> bool:
    """``kill -9`` the child ``delay_s`` after ``marker`` shows in its output (e.g. the ingest's
    "writing N documents"). False when the child finished first."""
    t_end = time.monotonic() + limit_s
    while time.monotonic() < t_end and proc.poll() is None:
        if marker in log.read_text(encoding="utf-8", errors="replace"):
            return kill_after(proc, delay_s)
        time.sleep(0.005)
    return kill(proc)


def kill_after_wait(proc: subprocess.Popen, seconds: float) -> bool:
    """True when the child is still running after ``seconds``."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        return True


def spread(rng, n: int, duration: float, lo: float = 0.02) -> list[float]:
    """``n`` kill moments spread over ``duration``: one uniformly at random in each of ``n`` equal
    slices of ``[lo * duration, duration]`` (stratified, so early, middle and late moments all occur)."""
    start_s, width = lo * duration, (1 - lo) * duration / max(n, 1)
    return [start_s + width * (i + rng.random()) for i in range(n)]


def spread_marked(rng, n: int, ready_s: float, duration: float) -> list[float]:
    """``n`` kill moments over a child's run: a quarter spread over its start-up (``[0, ready_s]``:
    imports, loading), the rest spread over its work (``[ready_s, duration]``), where kills can hurt."""
    k = n // 4
    return spread(rng, k, ready_s) + [ready_s + t for t in spread(rng, n - k, duration - ready_s, lo=0.0)]


def copy_db(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", ".wal"):
        s = Path(str(src) + suffix)
        if s.exists():
            shutil.copyfile(s, Path(str(dst) + suffix))
    return dst


# ----------------------------------------------------------------------------------------- artefacts
def sample_texts() -> list[str]:
    texts = []
    for split in ("train", "dev", "test"):
        with open(SAMPLE / f"{split}.jsonl", encoding="utf-8") as fh:
            texts.extend(json.loads(line)["text"] for line in fh if line.strip())
    texts.extend(p.read_text(encoding="utf-8") for p in sorted((SAMPLE / "raw").glob("*.txt")))
    return texts


def tiny_encoder(ctx: Context) -> Path:
    """A random-init BERT whose vocabulary covers the sample corpus (as tests/conftest.py builds it)."""

    def build() -> Path:
        from ner_core.model.encoder import make_tiny_encoder

        return make_tiny_encoder(ctx.scratch("tiny-encoder"), sample_texts())

    return ctx.once("encoder", build)


SAMPLE_FILES = {s: str(SAMPLE / f"{s}.jsonl") for s in ("train", "dev", "test")}


def base_db(ctx: Context) -> Path:
    """A database holding the sample corpus as dataset ``sample`` (the 'earlier data' of every stage)."""

    def build() -> Path:
        from storage.datasets import ingest_dataset

        path = ctx.scratch("base") / "base.duckdb"
        ingest_dataset(path, "sample", SAMPLE_FILES)
        return path

    return ctx.once("base_db", build)


def train_config(ctx: Context) -> Path:
    """A deterministic, small training run of the tiny encoder as a config file: fixed epochs, no early
    stopping and no time budget, the model directory written after every epoch (``best_fit`` off)."""

    def build() -> Path:
        from ner_core.config import NERConfig

        cfg = NERConfig.model_validate(
            {
                "encoder": {"name": str(tiny_encoder(ctx))},
                "data": {"dataset": "sample", "max_len": 64},
                "head": {"rnn_units": 32},
                "training": {
                    "hard_epochs": 2 if ctx.quick else 6,
                    "best_fit": False,
                    "batch_size": 32,
                    "learning_rate": 3e-3,
                    "head_learning_rate": 1e-2,
                    "crf_learning_rate": 5e-2,
                    "num_threads": 1,
                    "seed": 7,
                },
            }
        )
        path = ctx.scratch("train-config") / "config.json"
        path.write_text(cfg.to_json(), encoding="utf-8")
        return path

    return ctx.once("train_config", build)


def train_args(ctx: Context, db: Path, runs_root: Path) -> list[str]:
    return ["train", "--no-prefect", "--db", str(db), "--runs-root", str(runs_root), "--config",
            str(train_config(ctx))]  # fmt: skip


def ingest_files() -> tuple[str, dict[str, str]]:
    """Resume NER's three files (a real dataset) when ../shared/datasets has them; the sample corpus as
    another dataset otherwise."""
    folder = DATASETS / "resume-ner"
    if (folder / "train.char.bmes").is_file():
        return "resume", {s: str(folder / f"{s}.char.bmes") for s in ("train", "dev", "test")}
    return "sample2", dict(SAMPLE_FILES)


def ingest_argv(db: Path, name: str, files: dict[str, str]) -> list[str]:
    """``ner ingest`` of ``files`` (split -> path) as dataset ``name`` into ``db``."""
    return ["ingest", "--no-prefect", "--db", str(db), "--name", name] + [
        a for split, f in files.items() for a in (f"--{split}", f)
    ]


def predict_argv(db: Path, model_dir: Path) -> list[str]:
    """``ner predict`` of the stored dataset ``sample`` with the model in ``model_dir``, one thread."""
    return ["predict", "--no-prefect", "--db", str(db), "--model-dir", str(model_dir), "--dataset", "sample",
            "--threads", "1"]  # fmt: skip


@contextlib.contextmanager
def quiet():
    """Swallow a step's progress output (bars, reports) when it runs in this process."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def rerun(res: StageResult, what: str, fn: Callable[[], object], repro: str):
    """Call ``fn()`` quietly; on an exception record it in ``res`` (with its traceback's last lines and
    the reproducer) and return None, else return what ``fn`` returned."""
    try:
        with quiet():
            return fn()
    except Exception as exc:
        tail = "".join(traceback.format_exception(exc)[-3:]).strip()
        res.fail(f"{what} raised {type(exc).__name__}: {exc}\n{tail}", repro)
        return None


def reference_training(ctx: Context) -> dict:
    """One uninterrupted training run: its duration (a child process in the full campaign; in this
    process under ``--quick``, duration None), model directory, run id and the model's predictions on
    the dev split (what every resumed run is compared with)."""

    def build() -> dict:
        from bench.reliability.snapshots import model_predictions
        from flows.steps import train_step
        from ner_core.config import NERConfig
        from storage.runs import list_runs

        root = ctx.scratch("train-ref")
        db = copy_db(base_db(ctx), root / "ref.duckdb")
        seconds = ready = None
        if ctx.quick:
            config = NERConfig.model_validate_json(train_config(ctx).read_text(encoding="utf-8"))
            with quiet():
                train_step(str(db), config, str(root / "runs"))
        else:
            argv = train_args(ctx, db, root / "runs")
            rc, seconds, out, ready = run_marked(argv, root, root / "train.log", " train / ")
            if rc != 0:
                raise RuntimeError(f"the reference training failed (exit {rc}):\n{out[-2000:]}")
        (run_row,) = list_runs(db)
        model_dir = Path(run_row["model_dir"])
        model_dir = model_dir if model_dir.is_absolute() else root / model_dir
        return {
            "seconds": seconds,
            "ready": ready,
            "db": db,
            "run_id": run_row["run_id"],
            "model_dir": model_dir,
            "dev": model_predictions(model_dir, db),
        }

    return ctx.once("reference_training", build)


#: the dataset a review export writes, and the prediction run it reads (see :func:`review_db`)
EXPORT_NAME = "reviewed"
PRED_RUN = "pr-reliability"


def review_db(ctx: Context) -> Path:
    """The base database plus a finished run, its prediction run ``PRED_RUN`` over synthetic texts and
    review events for every document (accept, a relabel in one of five, done): what the review export's
    kills and the deletion checks start from."""

    def build() -> Path:
        from ner_core.inference.tagger import PredictedEntity
        from storage import reviews
        from storage import runs as runs_db
        from storage.predictions import PredictionRunWriter

        root = ctx.scratch("review-base")
        db = copy_db(base_db(ctx), root / "review.duckdb")
        model_dir = root / "run" / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        cfg = '{"encoder": {"name": "enc"}, "head": {"type": "bilstm"}, "data": {"scheme": "BIOES"}}'
        runs_db.create_run(db, "run-r", dataset="sample", dataset_version=1, config_json=cfg, run_dir=root)
        runs_db.finish_run(db, "run-r", status="completed", model_dir=model_dir)
        names, places = "张王李赵孙周吴郑", "北京上海深圳杭州广州成都"
        docs = []
        for i in range(ctx.n(3000, 300)):
            who = names[i % 8] + names[(i // 8) % 8]
            where = places[2 * (i % 6) : 2 * (i % 6) + 2]
            text = f"{who}第{i}次去{where}出差。"
            k = text.index(where)
            ents = [PredictedEntity(0, 2, "PER", who, 0.9), PredictedEntity(k, k + 2, "ORG", where, 0.4)]
            docs.append((f"d{i:05d}", text, ents))
        with PredictionRunWriter(
            db, PRED_RUN, model_dir=str(model_dir), run_id="run-r", input_kind="texts", input_ref="t",
            replace=True,
        ) as run:  # fmt: skip
            run.write(docs)
        events = []
        for doc_id, text, ents in docs:
            h = reviews.text_hash(text)
            ev = functools.partial(reviews.new_event, PRED_RUN, doc_id, h, "bench")
            events.append(ev("accept", start=0, end=2, label="PER"))
            k = ents[1].start
            if int(doc_id[1:]) % 5 == 0:
                events.append(ev("relabel", start=k, end=k + 2, label="ORG", new_label="LOC"))
            else:
                events.append(ev("reject", start=k, end=k + 2, label="ORG"))
            events.append(ev("done"))
        reviews.record_events(db, events)
        return db

    return ctx.once("review_db", build)


def run_kills(ctx: Context, plans: list, launch, check, redraw) -> int:
    """Inject the kills of ``plans``: ``launch(i, plan)`` starts child ``i`` and kills it, returning
    ``(killed, state)``; ``check(plan, state)`` then checks what it left and re-runs. Under --quick the
    children of all plans run at once (threads; the checks follow one by one), otherwise one after
    another so each kill moment holds. A child that finished before its moment is replaced by
    ``redraw(plan)`` (at most ``len(plans)`` times). Returns how many finished first."""
    from concurrent.futures import ThreadPoolExecutor

    pending, early, i, budget = list(plans), 0, 0, len(plans)
    while pending:
        batch = pending if ctx.quick else pending[:1]
        pending = pending[len(batch) :]
        idx = list(range(i, i + len(batch)))
        i += len(batch)
        if len(batch) > 1:
            with ThreadPoolExecutor(len(batch)) as ex:
                outs = list(ex.map(launch, idx, batch))
        else:
            outs = [launch(idx[0], batch[0])]
        for plan, (killed, state) in zip(batch, outs, strict=True):
            if killed:
                check(plan, state)
            else:
                early += 1
                if early <= budget:
                    pending.append(redraw(plan))
    return early
