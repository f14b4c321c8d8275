"""The Evaluation page's pictures of entity confidence and of which label became which: a reliability
diagram, a confidence histogram, precision/recall/F1 against a confidence threshold and a per-label
confusion matrix, as Altair charts built from :mod:`storage.evaluations`' frames.

Plain functions of DataFrames (no Streamlit, no database): the page decides what to show, these only draw.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

#: the label of "no entity on this span" in the confusion cells
NO_ENTITY = "O"
#: colours of the two confidences, the same in every chart
_KIND_SCALE = alt.Scale(domain=["raw", "calibrated"], range=["#9aa5b1", "#1f77b4"])
_SCORE_SCALE = alt.Scale(domain=["precision", "recall", "f1"], range=["#1f77b4", "#ff7f0e", "#2ca02c"])


def calibration_caption(row: pd.Series, calibration: dict) -> str:
    """One line: ECE raw -> calibrated, the temperature and what it was fitted on, the precision the
    evaluation ran in and how many predicted entities were scored (``calibration``: the report's
    ``calibration`` dict, may be empty)."""

    def num(value, spec: str) -> str:
        return "-" if value is None or pd.isna(value) else format(float(value), spec)

    parts = [
        f"ECE {num(row.get('ece_raw'), '.4f')} raw → {num(row.get('ece_calibrated'), '.4f')} calibrated",
        f"temperature T = {num(row.get('temperature'), '.3f')}"
        + (f" (fitted on {calibration['fitted_on']})" if calibration.get("fitted_on") else ""),
    ]
    precision = row.get("calibration_precision")
    if isinstance(precision, str) and precision:
        parts.append(f"precision {precision}")
    if calibration.get("n_entities") is not None:
        parts.append(f"{int(calibration['n_entities']):,} predicted entities, 10 equal-width bins")
    return " · ".join(parts)


def reliability_chart(bins: pd.DataFrame) -> alt.LayerChart:
    """Accuracy against mean confidence per bin, raw and calibrated (bins holding no entity left out), with
    the diagonal a perfectly calibrated model lies on."""
    data = bins.loc[bins["n"] > 0, ["kind", "bin", "lo", "hi", "n", "mean_confidence", "accuracy"]]
    unit = alt.Scale(domain=[0, 1], nice=False)
    x = alt.X("mean_confidence:Q", title="mean confidence in the bin", scale=unit)
    y = alt.Y("accuracy:Q", title="share correct", scale=unit)
    colour = alt.Color("kind:N", scale=_KIND_SCALE, legend=alt.Legend(orient="bottom", title=None))
    tooltip = [
        "kind:N",
        alt.Tooltip("lo:Q", title="from", format=".1f"),
        alt.Tooltip("hi:Q", title="to", format=".1f"),
        "n:Q",
        alt.Tooltip("mean_confidence:Q", format=".3f"),
        alt.Tooltip("accuracy:Q", format=".3f"),
    ]
    diagonal = (
        alt.Chart(pd.DataFrame({"mean_confidence": [0.0, 1.0], "accuracy": [0.0, 1.0]}))
        .mark_line(strokeDash=[4, 4], color="#888888")
        .encode(x=x, y=y)
    )
    points = (
        alt.Chart(data)
        .mark_line(point=alt.OverlayMarkDef(size=60, filled=True))
        .encode(x=x, y=y, color=colour, tooltip=tooltip)
    )
    return alt.layer(diagonal, points).properties(height=300)


def histogram_chart(bins: pd.DataFrame) -> alt.Chart:
    """Predicted entities per confidence bin, raw and calibrated side by side."""
    data = bins[["kind", "bin", "lo", "hi", "n"]].copy()
    data["range"] = [f"{lo:.1f}–{hi:.1f}" for lo, hi in zip(data["lo"], data["hi"], strict=True)]
    order = data.sort_values("bin")["range"].drop_duplicates().tolist()
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("range:N", title="confidence", sort=order, axis=alt.Axis(labelAngle=-45)),
            xOffset=alt.XOffset("kind:N", sort=["raw", "calibrated"]),
            y=alt.Y("n:Q", title="predicted entities"),
            color=alt.Color("kind:N", scale=_KIND_SCALE, legend=alt.Legend(orient="bottom", title=None)),
            tooltip=["kind:N", "range:N", "n:Q"],
        )
        .properties(height=300)
    )


def thresholds_chart(points: pd.DataFrame) -> alt.Chart:
    """Precision, recall and F1 when only entities with calibrated confidence >= the threshold are kept.
    Where a threshold keeps no entity its precision is undefined (stored as 0): that point is left out, so
    the line does not drop to 0 as if every kept entity were wrong."""
    data = points.melt(
        id_vars=["threshold", "n_kept"], value_vars=["precision", "recall", "f1"], var_name="score"
    )
    data = data[~((data["score"] == "precision") & (data["n_kept"] == 0))]
    return (
        alt.Chart(data)
        .mark_line(point=alt.OverlayMarkDef(size=30, filled=True))
        .encode(
            x=alt.X("threshold:Q", title="kept: calibrated confidence ≥", scale=alt.Scale(nice=False)),
            y=alt.Y("value:Q", title=None, scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("score:N", scale=_SCORE_SCALE, legend=alt.Legend(orient="bottom", title=None)),
            tooltip=[
                alt.Tooltip("threshold:Q", format=".2f"),
                "score:N",
                alt.Tooltip("value:Q", format=".4f"),
                alt.Tooltip("n_kept:Q", title="entities kept"),
            ],
        )
        .properties(height=300)
    )


def confusion_grid(cells: pd.DataFrame) -> pd.DataFrame:
    """Every (gold label, predicted label) pair of the labels in ``cells`` with its count (0 where none was
    stored), ``O`` last on both axes; the (O, O) cell is left out (no entity on either side is not
    counted)."""
    labels = sorted(set(cells["gold_label"]) | set(cells["pred_label"]) | {NO_ENTITY})
    labels = [lb for lb in labels if lb != NO_ENTITY] + [NO_ENTITY]
    pairs = pd.MultiIndex.from_product([labels, labels], names=["gold_label", "pred_label"])
    grid = pairs.to_frame(index=False)
    grid = grid[(grid["gold_label"] != NO_ENTITY) | (grid["pred_label"] != NO_ENTITY)]
    out = grid.merge(cells[["gold_label", "pred_label", "n"]], how="left", on=["gold_label", "pred_label"])
    out["n"] = out["n"].fillna(0).astype(int)
    return out.reset_index(drop=True)


def confusion_chart(cells: pd.DataFrame) -> alt.LayerChart:
    """Heatmap of the confusion cells: rows the gold label, columns the predicted one, the count in each
    non-empty cell; ``O`` is "no entity on that span" (a missed gold entity, or a spurious prediction)."""
    data = confusion_grid(cells)
    order = data["gold_label"].drop_duplicates().tolist()
    base = alt.Chart(data).encode(
        x=alt.X(
            "pred_label:N",
            title="predicted",
            sort=order,
            axis=alt.Axis(orient="top", labelAngle=0, labelOverlap=False),
        ),
        y=alt.Y("gold_label:N", title="gold", sort=order),
    )
    rect = base.mark_rect().encode(
        color=alt.condition(  # an empty cell grey, so a small count stands out from none
            "datum.n > 0",
            alt.Color("n:Q", scale=alt.Scale(scheme="blues"), legend=None),
            alt.value("#f2f2f2"),
        ),
        tooltip=["gold_label:N", "pred_label:N", "n:Q"],
    )
    threshold = max(1, int(data["n"].max()) // 2)
    text = (
        base.transform_filter("datum.n > 0")
        .mark_text(fontSize=12)
        .encode(
            text="n:Q",
            color=alt.condition(f"datum.n > {threshold}", alt.value("white"), alt.value("black")),
        )
    )
    return alt.layer(rect, text).properties(width=alt.Step(56), height=alt.Step(32))
