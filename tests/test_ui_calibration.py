"""The dashboard's pictures of calibrated entity confidence (issue 27), through Streamlit's AppTest on a real
DuckDB file written by storage's own write paths (no training: fast): the Evaluation page draws a
reliability diagram, a confidence histogram, precision/recall/F1 against the threshold and a confusion
matrix from the stored rows, and says in one line when an evaluation has none; the Predictions page shows
the calibrated confidence beside the raw one where the run has it."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from storage.db import connect
from storage.evaluations import save_evaluation
from storage.predictions import PredictionRunWriter
from tests.test_calibration_storage import CONFUSION, calibrated_report, plain_report
from tests.ui_fixtures import APP, PAGES

OLD_EVAL, NEW_EVAL, EMPTY_EVAL = "eval-old", "eval-calibrated", "eval-no-entities"


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    """An old evaluation (no calibration, no confusion cells), then a calibrated one (the newest: the page
    shows it first); a prediction run with calibrated confidences and one without. The pages only read it:
    made once for the module."""
    from ner_core.inference.tagger import PredictedEntity

    path = str(tmp_path_factory.mktemp("ui-cal") / "cal.duckdb")
    connect(path).close()
    save_evaluation(path, OLD_EVAL, plain_report(), model_dir="m", dataset="d", split="test")
    none = calibrated_report()  # a model that predicted no entity: every bin empty
    none.calibration.n_entities = 0
    for b in (*none.calibration.bins_raw, *none.calibration.bins_calibrated):
        b.n, b.mean_confidence, b.accuracy = 0, 0.0, 0.0
    save_evaluation(path, EMPTY_EVAL, none, model_dir="m", dataset="d", split="test")
    save_evaluation(path, NEW_EVAL, calibrated_report(), model_dir="m", dataset="d", split="test")
    text = "张三在北京工作"
    for run, cal in (("pred-raw", None), ("pred-cal", 0.25)):
        with PredictionRunWriter(
            path, run, model_dir="m", run_id=None, input_kind="texts", input_ref=run, replace=True
        ) as w:
            ents = [
                PredictedEntity(0, 2, "PER", "张三", 0.9, confidence_calibrated=cal),
                PredictedEntity(3, 5, "LOC", "北京", 0.6, confidence_calibrated=cal),
            ]
            w.write([("d1", text, ents)])
    return path


def _page(db: str, monkeypatch, page: str) -> AppTest:
    monkeypatch.setenv("NER_DB", db)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page(PAGES[page]).run()
    assert not at.exception, at.exception
    return at


def _charts(at: AppTest) -> list[tuple[dict, dict[str, pd.DataFrame]]]:
    """Each Altair chart of the page: its Vega-Lite spec and its datasets by name."""
    out = []
    for c in at.get("vega_lite_chart"):
        tables = {d.name: pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in c.proto.datasets}
        out.append((json.loads(c.proto.spec), tables))
    return out


def _layers(spec: dict) -> list[dict]:
    return spec.get("layer", [spec])


def _data(layer: dict, tables: dict[str, pd.DataFrame], spec: dict | None = None) -> pd.DataFrame:
    """The rows a layer draws: its own dataset, else its chart's (``spec``)."""
    return tables[(layer.get("data") or spec["data"])["name"]]


def test_the_evaluation_page_draws_the_calibration_and_says_when_an_evaluation_has_none(db, monkeypatch):
    at = _page(db, monkeypatch, "evaluation")
    assert at.selectbox(key="eval_id").value == NEW_EVAL
    assert "Confidence calibration" in [s.value for s in at.subheader]
    caption = next(c.value for c in at.caption if c.value.startswith("ECE"))
    assert caption.startswith("ECE 0.0810 raw → 0.0120 calibrated · temperature T = 1.700 (fitted on dev)")
    assert "precision fp32" in caption and "150 predicted entities" in caption
    charts = _charts(at)
    assert len(charts) == 4

    # reliability diagram: the diagonal, and accuracy against mean confidence per non-empty bin and kind
    spec, tables = charts[0]
    diagonal, points = _layers(spec)
    assert diagonal["mark"]["type"] == "line" and "strokeDash" in diagonal["mark"]
    assert _data(diagonal, tables)[["mean_confidence", "accuracy"]].values.tolist() == [[0, 0], [1, 1]]
    assert (points["encoding"]["x"]["field"], points["encoding"]["y"]["field"]) == (
        "mean_confidence",
        "accuracy",
    )
    shown = _data(points, tables)
    assert (
        sorted(set(shown["kind"])) == ["calibrated", "raw"] and shown["bin"].tolist() == [5, 6, 7, 8, 9] * 2
    )
    calibrated = shown[shown["kind"] == "calibrated"].set_index("bin")
    assert calibrated.loc[9, "accuracy"] == pytest.approx(0.94) and calibrated.loc[9, "n"] == 50

    # confidence histogram: n per bin and kind, empty bins included
    spec, tables = charts[1]
    assert spec["mark"]["type"] == "bar" and spec["encoding"]["y"]["field"] == "n"
    bars = _data(spec, tables)
    assert len(bars) == 20 and bars.groupby("kind")["n"].sum().to_dict() == {"calibrated": 150, "raw": 150}

    # precision, recall and F1 against the threshold
    spec, tables = charts[2]
    assert spec["encoding"]["x"]["field"] == "threshold"
    lines = _data(spec, tables)
    assert sorted(set(lines["score"])) == ["f1", "precision", "recall"] and len(lines) == 3 * 20
    at_half = lines[(lines["threshold"] == 0.5) & (lines["score"] == "recall")]
    assert at_half["value"].tolist() == [pytest.approx(0.9 - 10 / 40)] and at_half["n_kept"].tolist() == [100]

    # confusion matrix: rows gold, columns predicted, O included, the counts written in the cells
    spec, tables = charts[3]
    rect, text = _layers(spec)
    assert rect["mark"]["type"] == "rect" and text["mark"]["type"] == "text"
    assert (rect["encoding"]["y"]["field"], rect["encoding"]["x"]["field"]) == ("gold_label", "pred_label")
    assert text["encoding"]["text"]["field"] == "n"
    cells = _data(rect, tables, spec)
    assert rect["encoding"]["y"]["sort"] == ["LOC", "ORG", "PER", "O"]
    nonzero = cells[cells["n"] > 0][["gold_label", "pred_label", "n"]]
    assert sorted(nonzero.itertuples(index=False, name=None)) == sorted(CONFUSION)
    assert len(cells) == 4 * 4 - 1  # every pair of LOC, ORG, PER, O but (O, O)

    # an evaluation stored before calibration was measured: one line instead of the pictures
    at.selectbox(key="eval_id").set_value(OLD_EVAL).run()
    assert not at.exception
    assert not at.get("vega_lite_chart")
    said = [c.value for c in at.caption if "calibration" in c.value.lower()]
    assert said == [
        "No calibration or confusion data for this evaluation (stored before they were measured)."
    ]
    assert "Confidence calibration" not in [s.value for s in at.subheader]

    # a model that predicted no entity: one line for the calibration, the confusion matrix still drawn
    at.selectbox(key="eval_id").set_value(EMPTY_EVAL).run()
    assert not at.exception
    said = [c.value for c in at.caption if "calibration" in c.value.lower()]
    assert said == ["No calibration to show: the model predicted no entity on this split."]
    assert [json.loads(c.proto.spec)["layer"][0]["mark"]["type"] for c in at.get("vega_lite_chart")] == [
        "rect"
    ]


def test_the_predictions_page_shows_the_calibrated_confidence_beside_the_raw_one(db, monkeypatch):
    at = _page(db, monkeypatch, "predictions")
    for run, calibrated in (("pred-cal", [0.25, 0.25]), ("pred-raw", None)):
        at.selectbox(key="pred_run").set_value(run).run()
        assert not at.exception
        found, document, _counts, top = (d.value for d in at.dataframe)
        for frame, raw in ((found, "confidence"), (document, "confidence"), (top, "mean_confidence")):
            cols = list(frame.columns)
            if calibrated is None:
                assert f"{raw}_calibrated" not in cols  # no column of blanks
            else:
                assert cols[cols.index(raw) + 1] == f"{raw}_calibrated"
                assert sorted(frame[f"{raw}_calibrated"]) == calibrated


def test_a_threshold_that_keeps_no_entity_draws_no_precision_point():
    """Precision over zero kept entities is undefined (stored as 0): the line must not drop to 0 there;
    recall and F1 (0 when nothing is kept) are drawn."""
    import pandas as pd

    from ui.calibration_charts import thresholds_chart

    points = pd.DataFrame(
        {
            "threshold": [0.0, 0.5, 0.95],
            "precision": [0.8, 0.9, 0.0],
            "recall": [0.7, 0.5, 0.0],
            "f1": [0.75, 0.64, 0.0],
            "n_kept": [10, 5, 0],
        }
    )
    data = thresholds_chart(points).data
    drawn = {(r.score, r.threshold) for r in data.itertuples()}
    assert ("precision", 0.95) not in drawn
    assert {("recall", 0.95), ("f1", 0.95), ("precision", 0.5)} <= drawn
