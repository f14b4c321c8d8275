"""Calibrated entity confidence in DuckDB (migration 7, issue 27): an evaluation's calibration and confusion
cells are stored and read back; predicted entities keep a calibrated confidence beside the raw one and the
views say which they rank by; a file written at schema 6 migrates with its rows intact."""

from __future__ import annotations

import duckdb
import pytest

from ner_core import metrics
from ner_core.inference.tagger import PredictedEntity
from storage import evaluations as ev
from storage import predictions as pr
from storage.db import connect, migrate, open_db
from storage.schema import MIGRATIONS


# ------------------------------------------------------------------------------------------ builders
def _bins(accuracy_shift: float) -> list[metrics.ReliabilityBin]:
    """Ten bins, the lower five empty (listed with n=0), the upper ones holding 10, 20, ... entities."""
    return [
        metrics.ReliabilityBin(
            lo=k / 10,
            hi=(k + 1) / 10,
            n=0 if k < 5 else 10 * (k - 4),
            mean_confidence=0.0 if k < 5 else k / 10 + 0.05,
            accuracy=0.0 if k < 5 else min(1.0, k / 10 + 0.05 + accuracy_shift),
        )
        for k in range(10)
    ]


CONFUSION = [("LOC", "LOC", 40), ("LOC", "ORG", 3), ("ORG", "O", 5), ("O", "PER", 2), ("PER", "PER", 30)]


def calibrated_report(**summary) -> metrics.EvaluationReport:
    """An EvaluationReport with a calibration (10 raw and 10 calibrated bins, 20 threshold points) and
    :data:`CONFUSION`'s cells."""
    cal = metrics.CalibrationReport(
        temperature=1.7,
        fitted_on="dev",
        precision="fp32",
        n_entities=150,
        ece_raw=0.081,
        ece_calibrated=0.012,
        bins_raw=_bins(-0.08),
        bins_calibrated=_bins(-0.01),
        thresholds=[
            metrics.ThresholdPoint(threshold=i / 20, precision=0.8 + i / 200, recall=0.9 - i / 40,
                                   f1=0.85 - i / 100, n_kept=150 - 5 * i)
            for i in range(20)
        ],
    )  # fmt: skip
    confusion = [metrics.ConfusionCell(gold=g, pred=p, n=n) for g, p, n in CONFUSION]
    return plain_report(calibration=cal, confusion=confusion, **summary)


def plain_report(**fields) -> metrics.EvaluationReport:
    """An EvaluationReport as evaluations stored before calibration have it: no calibration, no cells."""
    base = dict(
        scheme="BIOES", n_sentences=3, n_chars=30, char_accuracy=0.9, sentence_accuracy=0.5, precision=0.8,
        recall=0.7, f1=0.75, macro_precision=0.8, macro_recall=0.7, macro_f1=0.74,
    )  # fmt: skip
    return metrics.EvaluationReport(**{**base, **fields})


def _entity(start: int, end: int, label: str, text: str, confidence: float, calibrated: float | None):
    return PredictedEntity(start, end, label, text, confidence, confidence_calibrated=calibrated)


# --------------------------------------------------------------------------------------- evaluations
def test_an_evaluation_stores_its_calibration_and_confusion_and_the_frames_read_them(tmp_path):
    db = tmp_path / "e.duckdb"
    ev.save_evaluation(db, "e1", calibrated_report(), model_dir="m", dataset="d", split="test")
    ev.save_evaluation(db, "e-old", plain_report(), model_dir="m", dataset="d", split="dev")

    rows = ev.evaluations_frame(db, wait_s=0).set_index("eval_id")
    got = rows.loc["e1", ["temperature", "ece_raw", "ece_calibrated", "calibration_precision"]].tolist()
    assert got == [1.7, 0.081, 0.012, "fp32"]
    assert rows.loc["e-old", ["temperature", "ece_raw", "ece_calibrated"]].isna().all()
    assert list(rows.columns[:3]) == ["run_id", "dataset", "dataset_version"]  # the old columns come first

    bins = ev.reliability_frame(db, "e1", wait_s=0)
    assert list(bins.columns) == ["kind", "bin", "lo", "hi", "n", "mean_confidence", "accuracy"]
    assert bins["kind"].tolist() == ["raw"] * 10 + ["calibrated"] * 10  # raw first, empty bins listed
    assert bins["bin"].tolist() == list(range(10)) * 2 and bins["n"].sum() == 2 * 150
    last = bins[(bins["kind"] == "calibrated") & (bins["bin"] == 9)].iloc[0]
    assert (last["lo"], last["hi"], last["n"]) == (0.9, 1.0, 50)
    assert last["mean_confidence"] == pytest.approx(0.95)
    assert last["accuracy"] == pytest.approx(0.94)

    points = ev.thresholds_frame(db, "e1", wait_s=0)
    assert list(points.columns) == ["threshold", "precision", "recall", "f1", "n_kept"]
    assert points["threshold"].tolist() == [i / 20 for i in range(20)]
    assert points["n_kept"].tolist()[:3] == [150, 145, 140]

    cells = ev.confusion_frame(db, "e1", wait_s=0)
    assert list(cells.itertuples(index=False, name=None)) == sorted(CONFUSION)

    for frame in (ev.reliability_frame, ev.thresholds_frame, ev.confusion_frame):
        assert frame(db, "e-old", wait_s=0).empty

    # saving e1 again without calibration replaces every row it had
    ev.save_evaluation(db, "e1", plain_report(f1=0.5), model_dir="m", dataset="d", split="test")
    assert ev.reliability_frame(db, "e1", wait_s=0).empty and ev.confusion_frame(db, "e1", wait_s=0).empty
    assert ev.thresholds_frame(db, "e1", wait_s=0).empty
    assert ev.evaluations_frame(db, wait_s=0).set_index("eval_id").loc["e1", ["temperature"]].isna().all()


# --------------------------------------------------------------------------------------- predictions
DOC = "张三在北京见了李四和王五"
ENTITIES = [  # start, end, label, confidence, calibrated
    (0, 2, "PER", 0.40, 0.70),  # raw low, calibrated high: not low-confidence
    (3, 5, "LOC", 0.90, 0.30),  # raw high, calibrated low: low-confidence by the calibrated one
    (7, 9, "PER", 0.20, None),  # no calibrated confidence: ranked by the raw one
    (3, 5, "ORG", 0.45, 0.45),  # same span as LOC, another label
    (3, 4, "LOC", 0.60, 0.60),  # same start, shorter
]


def _store(db, pred_run_id: str = "p1") -> None:
    with pr.PredictionRunWriter(
        db, pred_run_id, model_dir="m", run_id=None, input_kind="texts", input_ref="x", replace=True
    ) as run:
        ents = [_entity(s, e, lb, DOC[s:e], c, cal) for s, e, lb, c, cal in ENTITIES]
        run.write([("d1", DOC, ents)])


def test_predicted_entities_keep_the_calibrated_confidence_and_the_views_say_which_they_rank_by(tmp_path):
    db = tmp_path / "p.duckdb"
    _store(db)
    with duckdb.connect(str(db), read_only=True) as con:
        low = con.execute(
            'SELECT "start", "end", label, confidence, confidence_calibrated, confidence_source '
            "FROM v_low_confidence_entities"
        ).fetchall()
        macro = con.execute("SELECT \"start\", \"end\", label FROM document_entities('p1', 'd1')").fetchall()
        cols = [d[0] for d in con.execute("SELECT * FROM document_entities('p1', 'd1')").description]
        top = con.execute(
            "SELECT mean_confidence, mean_confidence_calibrated FROM v_top_predicted_entities "
            "WHERE text = '张三'"
        ).fetchall()
    assert low == [  # lowest first by coalesce(calibrated, raw)
        (7, 9, "PER", 0.2, None, "raw"),
        (3, 5, "LOC", 0.9, 0.3, "calibrated"),
        (3, 5, "ORG", 0.45, 0.45, "calibrated"),
    ]
    assert macro == [(0, 2, "PER"), (3, 4, "LOC"), (3, 5, "LOC"), (3, 5, "ORG"), (7, 9, "PER")]
    assert cols[:7] == ["start", "end", "label", "text", "confidence", "left_context", "right_context"]
    assert cols[7:] == ["confidence_calibrated", "from_dictionary"]
    assert top == [(0.4, 0.7)]

    text, ents = pr.predicted_document(db, "p1", "d1", wait_s=0)
    assert text == DOC and list(ents.columns) == [
        "start", "end", "label", "text", "confidence", "confidence_calibrated"
    ]  # fmt: skip
    assert ents["confidence_calibrated"].isna().tolist() == [False, False, False, False, True]
    found = pr.entity_search_frame(db, "p1", wait_s=0)
    assert list(found.columns[:8]) == [
        "doc_id", "start", "end", "label", "text", "confidence", "left_context", "right_context"
    ]  # fmt: skip
    assert found.set_index(["start", "end", "label"]).loc[(3, 5, "LOC"), "confidence_calibrated"] == 0.3
    top = pr.top_entities_frame(db, "p1", wait_s=0)
    assert list(top.columns) == [
        "label",
        "text",
        "n",
        "n_documents",
        "mean_confidence",
        "mean_confidence_calibrated",
    ]
    # disagreements with a run that found only 张三 list the calibrated confidence after the old columns
    with pr.PredictionRunWriter(
        db, "p2", model_dir="m", run_id=None, input_kind="texts", input_ref="x", replace=True
    ) as run:
        run.write([("d1", DOC, [_entity(0, 2, "PER", DOC[:2], 0.4, None)])])
    rows = pr.prediction_disagreements(db, "p1", "p2")
    assert list(rows[0])[-3:] == ["other_run_overlaps", "confidence_calibrated", "from_dictionary"]
    assert {(r["start"], r["label"], r["confidence_calibrated"]) for r in rows} == {
        (3, "LOC", 0.3), (3, "ORG", 0.45), (3, "LOC", 0.6), (7, "PER", None)
    }  # fmt: skip


# ----------------------------------------------------------------------------------------- migration
def test_a_schema_6_file_migrates_with_its_rows_intact(tmp_path):
    """A file written by the previous code (schema 6): its evaluation, predictions and views answer as
    before, the new columns are NULL (raw confidence ranks), and a dashboard read migrates it first."""
    db = tmp_path / "v6.duckdb"
    con = duckdb.connect(str(db))
    migrate(con, MIGRATIONS[:6])
    con.execute(
        "INSERT INTO evaluations (eval_id, model_dir, dataset, split, created_at, f1, report) "
        "VALUES ('old', 'm', 'd', 'test', now(), 0.75, '{}')"
    )
    con.execute("INSERT INTO evaluation_types VALUES ('old', 'PER', 0.8, 0.7, 0.75, 10, 9)")
    con.execute(
        "INSERT INTO prediction_runs (pred_run_id, model_dir, input_kind, input_ref, status, started_at) "
        "VALUES ('p', 'm', 'texts', 'x', 'completed', now())"
    )
    con.execute("INSERT INTO predicted_documents VALUES ('p', 'd1', ?, 3, 1.0)", [DOC])
    for s, e, lb, c, _ in ENTITIES:
        con.execute(
            "INSERT INTO predicted_entities VALUES ('p', 'd1', ?, ?, ?, ?, ?)", [s, e, lb, DOC[s:e], c]
        )
    low_sql = (
        'SELECT pred_run_id, doc_id, "start", "end", label, text, confidence FROM v_low_confidence_entities'
    )
    before = sorted(con.execute(low_sql).fetchall())
    entities_before = sorted(con.execute("SELECT * FROM predicted_entities").fetchall())
    con.close()

    assert ev.evaluations_frame(db, wait_s=0)["eval_id"].tolist() == ["old"]  # the read migrates first
    with open_db(db, read_only=True) as con:
        assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == MIGRATIONS[-1][0]
        assert sorted(con.execute(low_sql).fetchall()) == before
        assert {
            r[0] for r in con.execute("SELECT confidence_source FROM v_low_confidence_entities").fetchall()
        } == {"raw"}
        rows = con.execute(
            "SELECT * EXCLUDE (confidence_calibrated, from_dictionary) FROM predicted_entities"
        ).fetchall()
        assert sorted(rows) == entities_before
        assert con.execute(
            "SELECT count(confidence_calibrated), count(from_dictionary) FROM predicted_entities"
        ).fetchone() == (0, 0)  # NULL: stored before either existed
        assert con.execute("SELECT label, f1, support FROM evaluation_types").fetchall() == [
            ("PER", 0.75, 10)
        ]
    assert ev.reliability_frame(db, "old", wait_s=0).empty
    row = ev.evaluations_frame(db, wait_s=0).iloc[0]
    assert row["f1"] == 0.75 and row[["temperature", "ece_raw", "ece_calibrated"]].isna().all()
    # the migrated file takes new rows of both kinds
    ev.save_evaluation(db, "new", calibrated_report(), model_dir="m", dataset="d", split="test")
    assert len(ev.reliability_frame(db, "new", wait_s=0)) == 20
    connect(db).close()  # already current: nothing left to apply
