"""Evaluation metrics: character-, sentence- and entity-level, plus an error breakdown.

Definitions (those of the seed, keras-bert-ner, made explicit):

* **Character accuracy**: correct tags over all non-padding positions, ``O`` included. Tags are in
  the run's scheme and derived from spans with :func:`ner_core.schemes.spans_to_tags`, so gold and
  prediction are compared in the same canonical encoding. A tag sequence holds no overlapping
  entities: when gold or prediction nest, and always for a span decoder's run (``evaluate(...,
  outermost_tags=True)``), both accuracies are computed from the outermost spans
  (:func:`ner_core.schemes.outermost`, the ingest's rules) and the report says so (``tags_from``).
* **Sentence accuracy**: the share of sentences whose every tag is right (a sentence with no
  characters counts as right).
* **Entity level**: strict exact-span match: a predicted entity is correct iff a gold entity has the
  same ``start``, ``end`` and ``label``. Micro P/R/F1 pool all entities; macro P/R/F1 are the
  unweighted means over the labels that occur in gold *or* prediction (as seqeval does).
  Conventions: precision with nothing predicted is 0, recall with no gold entity is 0, and F1 is 0
  when ``p + r == 0``. No warnings are emitted.

The entity figures are computed from span sets, so they hold for nested sets as they are;
:func:`seqeval_prf` computes the same figures with seqeval (strict mode, IOB2 or IOBES) and the tests
check that the two agree on flat data.

Nesting levels (:func:`level_prf`): the *depth* of a span in its set is the number of other spans of the
set (with other boundaries) that contain it; ``outer`` spans have depth 0, ``nested`` ones depth >= 1.
A gold entity's level is its depth among the gold entities. A prediction that exactly matches a gold
entity takes that entity's level (a correct answer is scored where the answer lies, even when the model
missed the span around it); any other prediction takes its depth among the predictions. Each level then
gets strict P/R/F1; the two levels together add up to the overall counts.

Error kinds (:data:`ERROR_KINDS`), per sentence, after removing exact matches; a gold entity is only
compared with the predictions at its own nesting depth (depths as above, each in its own set: an inner
gold entity with the model's inner predictions, an outer one with the outer ones), so on flat data,
where every depth is 0, the kinds are exactly those of the flat rules:

* ``boundary``: a gold entity overlapped by a prediction of the same label with other boundaries;
* ``type``: a gold entity predicted with exactly its span but another label;
* ``boundary+type``: a gold entity overlapped only by predictions that differ in span and label;
* ``missed``: a gold entity that no remaining prediction overlaps;
* ``spurious``: a remaining prediction that overlaps no remaining gold entity.

Each unmatched gold entity gets one kind (the first that applies in the order type, boundary,
boundary+type), counted under the *gold* label; ``spurious`` is counted under the *predicted* label.
A prediction spanning two gold entities therefore yields two errors (one per gold entity). With
nesting, a prediction of an inner span where gold has none at that depth is ``spurious``, and an outer
prediction that misses the outer gold entity's boundaries is a ``boundary`` error of that entity, never
of the inner gold entities it also overlaps.

Confusion cells (:func:`confusion_cells`, ``EvaluationReport.confusion``): per document, predicted and gold
entities are paired by identical ``(start, end)``. A span both sides have gives ``(gold label, predicted
label)`` cells: its labels common to both sides pair with themselves (the diagonal), the rest pair in sorted
order (a span with two labels on one side and one on the other leaves one label over); a gold label left
over gives ``(gold label, "O")``, a predicted one ``("O", predicted label)``. Duplicates count once, as in
the entity scores, so the cells of a gold label add up to its support and those of a predicted label to
its predicted count.

Calibration (:class:`CalibrationReport`, filled by :mod:`ner_core.inference.calibration`): is a predicted
entity with confidence ``p`` correct (the strict match above) with probability ``p``? Confidences fall in
10 equal-width bins over [0, 1] (bin ``k`` holds ``[k/10, (k+1)/10)``, the last one 1.0 as well; the bin
is ``floor(10 p)``, capped at 9); the expected calibration error is ``sum_k (n_k / N) |accuracy_k -
mean_confidence_k|``, an empty bin contributing 0 (it is still listed, with zeros). The threshold curve
keeps the entities whose confidence is at least ``t``: precision over those kept, recall over every gold
entity of the split.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from ner_core.documents import Document, Entity
from ner_core.schemes import Scheme, convert_tags, has_overlaps, outermost, scheme_spec, spans_to_tags

__all__ = [
    "ERROR_KINDS",
    "N_BINS",
    "THRESHOLDS",
    "CalibrationReport",
    "ConfusionCell",
    "ErrorCounts",
    "ErrorSentence",
    "EvaluationReport",
    "ReliabilityBin",
    "SUMMARY_FIELDS",
    "ThresholdPoint",
    "TypeScores",
    "bins_ece",
    "calibration_report",
    "char_accuracy",
    "classify_errors",
    "confusion_cells",
    "entity_correctness",
    "entity_prf",
    "evaluate",
    "expected_calibration_error",
    "level_prf",
    "nesting_depths",
    "prf",
    "reliability_bins",
    "sentence_accuracy",
    "seqeval_prf",
    "threshold_curve",
]

ERROR_KINDS: tuple[str, ...] = ("boundary", "type", "boundary+type", "missed", "spurious")
#: reliability bins over [0, 1]
N_BINS = 10
#: the confidence thresholds of :func:`threshold_curve`: 0.00, 0.05, ..., 0.95
THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20))

_Span = tuple[int, int, str]


class TypeScores(BaseModel):
    """Strict entity scores of one label. ``support`` = gold count, ``predicted`` = predicted count."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int
    predicted: int
    correct: int = Field(0, description="exact matches (true positives)")


class ErrorCounts:
    """Counts of error kinds per label: ``counts[label][kind]``; every kind of a seen label is present."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}

    def add(self, label: str, kind: str, n: int = 1) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"expected an error kind in {ERROR_KINDS}, got {kind!r}")
        self.touch(label)
        self.counts[label][kind] += n

    def touch(self, label: str) -> None:
        """Make ``label`` appear (with zeros) even if it has no errors."""
        if label not in self.counts:
            self.counts[label] = dict.fromkeys(ERROR_KINDS, 0)

    def total(self, kind: str | None = None) -> int:
        """All errors, or all errors of ``kind``, over labels."""
        if kind is not None and kind not in ERROR_KINDS:
            raise ValueError(f"expected an error kind in {ERROR_KINDS}, got {kind!r}")
        return sum(v for c in self.counts.values() for k, v in c.items() if kind is None or k == kind)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {label: dict(self.counts[label]) for label in sorted(self.counts)}


class ErrorSentence(BaseModel):
    """A sentence with at least one error; ``kinds`` lists its distinct error kinds (ERROR_KINDS order)."""

    doc_id: str
    text: str
    gold: list[Entity]
    pred: list[Entity]
    kinds: list[str]


class ReliabilityBin(BaseModel):
    """One bin of a reliability table: confidences in ``[lo, hi)`` (the last bin: ``[lo, hi]``)."""

    lo: float
    hi: float
    n: int
    mean_confidence: float
    accuracy: float


class ThresholdPoint(BaseModel):
    """Strict entity scores of the predicted entities whose confidence is at least ``threshold``."""

    threshold: float
    precision: float
    recall: float
    f1: float
    n_kept: int


class ConfusionCell(BaseModel):
    """How often gold label ``gold`` and predicted label ``pred`` share a span (``"O"``: no entity there)."""

    gold: str
    pred: str
    n: int


class CalibrationReport(BaseModel):
    """The calibration of one evaluation's entity confidences, raw and under the model's temperature."""

    temperature: float = Field(description="the one applied (1.0 where the model directory has none)")
    fitted_on: str = Field(description='what the temperature was fitted on, e.g. "dev" or "none"')
    precision: str = Field(description='the precision the evaluation ran in, e.g. "fp32"')
    n_entities: int = Field(description="predicted entities scored")
    ece_raw: float
    ece_calibrated: float
    bins_raw: list[ReliabilityBin] = Field(default_factory=list)
    bins_calibrated: list[ReliabilityBin] = Field(default_factory=list)
    thresholds: list[ThresholdPoint] = Field(
        default_factory=list, description="calibrated confidence >= t for t in THRESHOLDS"
    )

    def to_markdown(self) -> list[str]:
        """The lines of the report's calibration section."""
        lines = [
            "### Calibration",
            "",
            f"Expected calibration error of {self.n_entities} predicted entities ({self.precision}): "
            f"{self.ece_raw:.4f} raw -> {self.ece_calibrated:.4f} at temperature {self.temperature:.4g} "
            f"(fitted on: {self.fitted_on}).",
            "",
            "| confidence | n | mean confidence | accuracy | n (calibrated) | mean confidence | accuracy |",
            "|---|---|---|---|---|---|---|",
        ]
        for raw, cal in zip(self.bins_raw, self.bins_calibrated, strict=False):
            close = "]" if raw.hi >= 1.0 else ")"
            lines.append(
                f"| [{raw.lo:.1f}, {raw.hi:.1f}{close} | {raw.n} | {raw.mean_confidence:.4f} | "
                f"{raw.accuracy:.4f} | {cal.n} | {cal.mean_confidence:.4f} | {cal.accuracy:.4f} |"
            )
        return [*lines, ""]


class EvaluationReport(BaseModel):
    """Everything one evaluation produces. Entity-level figures are strict and micro unless ``macro_``."""

    scheme: str
    n_sentences: int
    n_chars: int
    char_accuracy: float
    sentence_accuracy: float
    precision: float
    recall: float
    f1: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    n_gold: int = 0
    n_pred: int = 0
    n_correct: int = 0
    per_type: list[TypeScores] = Field(default_factory=list)
    errors: dict[str, dict[str, int]] = Field(default_factory=dict)
    error_sentences: list[ErrorSentence] = Field(default_factory=list)
    tags_from: str = Field(
        "spans",
        description='what the character/sentence accuracies were computed from: "spans" (all of them, '
        'flat) or "outermost spans" (gold or prediction nest; see the module docstring)',
    )
    levels: list[TypeScores] = Field(
        default_factory=list,
        description='strict scores of the "outer" and "nested" entities (:func:`level_prf`), present '
        "when the gold entities or the predictions nest, or the run's decoder can nest (outermost_tags)",
    )
    calibration: CalibrationReport | None = Field(
        None, description="entity confidence calibration; None when the evaluation had no confidences"
    )
    confusion: list[ConfusionCell] = Field(
        default_factory=list, description="every non-zero (gold label, predicted label) cell"
    )

    def summary(self) -> dict[str, float | int]:
        """Flat numbers: the overall figures (:data:`SUMMARY_FIELDS`, in field order), ``"<label>.<metric>"``
        per type, ``"errors.<kind>"``, and with a calibration ``"calibration.<temperature|ece_raw|
        ece_calibrated>"``."""
        out: dict[str, float | int] = {name: getattr(self, name) for name in SUMMARY_FIELDS}
        for t in self.per_type:
            for key in ("precision", "recall", "f1", "support", "predicted", "correct"):
                out[f"{t.label}.{key}"] = getattr(t, key)
        for kind in ERROR_KINDS:
            out[f"errors.{kind}"] = sum(c.get(kind, 0) for c in self.errors.values())
        for t in self.levels:
            for key in ("precision", "recall", "f1", "support", "predicted", "correct"):
                out[f"levels.{t.label}.{key}"] = getattr(t, key)
        if self.calibration is not None:
            for key in ("temperature", "ece_raw", "ece_calibrated"):
                out[f"calibration.{key}"] = getattr(self.calibration, key)
        return out

    def to_markdown(self, max_error_sentences: int = 20) -> str:
        """A readable report: overall table, per-type table, error table, first error sentences."""
        if max_error_sentences < 0:
            raise ValueError(f"expected max_error_sentences >= 0, got {max_error_sentences}")
        lines = [
            f"## Evaluation ({self.n_sentences} sentences, {self.n_chars} characters, scheme {self.scheme})",
            "",
            "| metric | value |",
            "|---|---|",
            f"| character accuracy | {self.char_accuracy:.4f} |",
            f"| sentence accuracy | {self.sentence_accuracy:.4f} |",
            f"| entity precision (micro, strict) | {self.precision:.4f} |",
            f"| entity recall (micro, strict) | {self.recall:.4f} |",
            f"| entity F1 (micro, strict) | {self.f1:.4f} |",
            f"| entity precision (macro) | {self.macro_precision:.4f} |",
            f"| entity recall (macro) | {self.macro_recall:.4f} |",
            f"| entity F1 (macro) | {self.macro_f1:.4f} |",
            f"| gold / predicted / correct entities | {self.n_gold} / {self.n_pred} / {self.n_correct} |",
            "",
            *self._nesting_lines(),
            "### Per type",
            "",
            "| type | precision | recall | F1 | support | predicted | correct |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in self.per_type:
            lines.append(
                f"| {t.label} | {t.precision:.4f} | {t.recall:.4f} | {t.f1:.4f} | {t.support} | "
                f"{t.predicted} | {t.correct} |"
            )
        lines += [
            "",
            "### Errors",
            "",
            "| type | " + " | ".join(ERROR_KINDS) + " |",
            "|---|" + "---|" * len(ERROR_KINDS),
        ]
        for label in sorted(self.errors):
            lines.append(
                f"| {label} | " + " | ".join(str(self.errors[label].get(k, 0)) for k in ERROR_KINDS) + " |"
            )
        if self.calibration is not None:
            lines += ["", *self.calibration.to_markdown()[:-1]]
        shown = self.error_sentences[:max_error_sentences]
        lines += ["", f"### Sentences with errors ({len(shown)} of {len(self.error_sentences)} shown)", ""]
        for s in shown:
            one_line = s.text.replace("\r", " ").replace("\n", " ")  # same length: offsets still hold
            lines.append(f"- `{s.doc_id}` ({', '.join(s.kinds)}): {one_line}")
            lines.append(f"  - gold: {_mentions(s.text, s.gold)}")
            lines.append(f"  - pred: {_mentions(s.text, s.pred)}")
        return "\n".join(lines) + "\n"

    def _nesting_lines(self) -> list[str]:
        out = []
        if self.tags_from != "spans":
            out += [f"Character and sentence accuracy are computed from the {self.tags_from}.", ""]
        if self.levels:
            out += [
                "### Outer and nested entities",
                "",
                "| level | precision | recall | F1 | support | predicted | correct |",
                "|---|---|---|---|---|---|---|",
                *(
                    f"| {t.label} | {t.precision:.4f} | {t.recall:.4f} | {t.f1:.4f} | {t.support} | "
                    f"{t.predicted} | {t.correct} |"
                    for t in self.levels
                ),
                "",
            ]
        return out


#: the overall figures of a report, in field order: its int and float fields (``scheme`` and the lists
#: are not figures). :meth:`EvaluationReport.summary` and ``flows.contracts.EvaluateSummary`` are built
#: from it.
SUMMARY_FIELDS: tuple[str, ...] = tuple(
    name for name, f in EvaluationReport.model_fields.items() if f.annotation in (int, float)
)


def _mentions(text: str, entities: Sequence[Entity]) -> str:
    if not entities:
        return "(none)"
    return ", ".join(f"「{e.mention(text)}」{e.label} [{e.start}, {e.end})" for e in entities)


# ----------------------------------------------------------------------------------------------
# Character and sentence level
# ----------------------------------------------------------------------------------------------
def _check_tag_pairs(gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> None:
    if isinstance(gold_tags, str) or isinstance(pred_tags, str):
        raise ValueError("expected sequences of tag sequences, got a string")
    if len(gold_tags) != len(pred_tags):
        raise ValueError(
            f"expected as many predicted as gold sentences, "
            f"got {len(pred_tags)} predicted and {len(gold_tags)} gold"
        )
    for i, (g, p) in enumerate(zip(gold_tags, pred_tags, strict=True)):
        if isinstance(g, str) or isinstance(p, str):
            raise ValueError(f"sentence {i}: expected a sequence of tags, got a string")
        if len(g) != len(p):
            raise ValueError(
                f"sentence {i}: expected {len(g)} predicted tags (one per gold tag), got {len(p)}"
            )


def char_accuracy(gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> float:
    """Correct tags over all (non-padding) positions, ``O`` included.

    ``gold_tags[i]`` and ``pred_tags[i]`` are the unpadded tags of sentence ``i`` and must have the same
    length. Returns 0.0 when there is no position at all.
    """
    _check_tag_pairs(gold_tags, pred_tags)
    total = sum(len(g) for g in gold_tags)
    correct = sum(
        1 for g, p in zip(gold_tags, pred_tags, strict=True) for a, b in zip(g, p, strict=True) if a == b
    )
    return correct / total if total else 0.0


def sentence_accuracy(gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> float:
    """Share of sentences whose every tag is right; 0.0 for no sentences."""
    _check_tag_pairs(gold_tags, pred_tags)
    if not gold_tags:
        return 0.0
    return sum(1 for g, p in zip(gold_tags, pred_tags, strict=True) if list(g) == list(p)) / len(gold_tags)


# ----------------------------------------------------------------------------------------------
# Entity level
# ----------------------------------------------------------------------------------------------
def prf(correct: int, predicted: int, gold: int) -> tuple[float, float, float]:
    """Precision, recall, F1 from counts; 0 for an empty denominator (no warning)."""
    if min(correct, predicted, gold) < 0 or correct > min(predicted, gold):
        raise ValueError(
            f"expected 0 <= correct <= min(predicted, gold), got correct={correct}, "
            f"predicted={predicted}, gold={gold}"
        )
    p = correct / predicted if predicted else 0.0
    r = correct / gold if gold else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


def _span_set(entities: Sequence[Entity], where: str) -> set[_Span]:
    if isinstance(entities, (str, Entity)):
        raise ValueError(f"{where}: expected a sequence of Entity, got {type(entities).__name__}")
    out: set[_Span] = set()
    for e in entities:
        if not isinstance(e, Entity):
            raise ValueError(f"{where}: expected Entity objects, got {type(e).__name__} {e!r}")
        out.add((e.start, e.end, e.label))
    return out


def entity_prf(
    gold: Sequence[Sequence[Entity]], pred: Sequence[Sequence[Entity]]
) -> tuple[float, float, float, dict[str, TypeScores]]:
    """Strict exact-span entity scores: ``(micro_p, micro_r, micro_f1, {label: TypeScores})``.

    ``gold[i]`` and ``pred[i]`` are the entities of sentence ``i``; duplicates within a sentence count
    once. Labels in the dict are those of gold or prediction, sorted.
    """
    if len(gold) != len(pred):
        raise ValueError(f"expected as many predicted as gold sentences, got {len(pred)} and {len(gold)}")
    n_gold: dict[str, int] = {}
    n_pred: dict[str, int] = {}
    n_ok: dict[str, int] = {}
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        gs, ps = _span_set(g, f"gold sentence {i}"), _span_set(p, f"predicted sentence {i}")
        for s in gs:
            n_gold[s[2]] = n_gold.get(s[2], 0) + 1
        for s in ps:
            n_pred[s[2]] = n_pred.get(s[2], 0) + 1
        for s in gs & ps:
            n_ok[s[2]] = n_ok.get(s[2], 0) + 1
    per_type: dict[str, TypeScores] = {}
    for label in sorted(set(n_gold) | set(n_pred)):
        c, np_, ng = n_ok.get(label, 0), n_pred.get(label, 0), n_gold.get(label, 0)
        p, r, f = prf(c, np_, ng)
        per_type[label] = TypeScores(
            label=label, precision=p, recall=r, f1=f, support=ng, predicted=np_, correct=c
        )
    p, r, f = prf(sum(n_ok.values()), sum(n_pred.values()), sum(n_gold.values()))
    return p, r, f, per_type


def _macro(per_type: dict[str, TypeScores]) -> tuple[float, float, float]:
    if not per_type:
        return 0.0, 0.0, 0.0
    n = len(per_type)
    return (
        sum(t.precision for t in per_type.values()) / n,
        sum(t.recall for t in per_type.values()) / n,
        sum(t.f1 for t in per_type.values()) / n,
    )


def seqeval_prf(
    gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]], scheme: Scheme | str
) -> tuple[float, float, float, dict[str, dict[str, float]]]:
    """The same strict entity scores computed by seqeval (the cross-check).

    Every scheme's tags are first read as the project reads them (leniently, conlleval-like: an ``I-``
    without its ``B-`` opens an entity) and rewritten canonically with
    :func:`ner_core.schemes.convert_tags`: BIO and BIOES as themselves, BMES as BIOES and IOB1 as BIO
    (seqeval knows neither), then scored by seqeval (``mode="strict"``, scheme IOB2/IOBES). Strict
    seqeval on raw tags would drop ill-formed entities instead, so the check would differ from
    :func:`entity_prf` on exactly the sequences it should cover.
    Returns ``(micro_p, micro_r, micro_f1, {label: {"precision", "recall", "f1", "support"}})`` plus
    the key ``"macro avg"`` in the dict. Zero divisions give 0 without warnings.
    """
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2, IOBES

    _check_tag_pairs(gold_tags, pred_tags)
    sch = scheme_spec(scheme).scheme  # ValueError listing the schemes for an unknown name
    dst = Scheme.BIOES if sch in (Scheme.BMES, Scheme.BIOES) else Scheme.BIO
    gold_tags = [convert_tags(t, sch, dst) for t in gold_tags]
    pred_tags = [convert_tags(t, sch, dst) for t in pred_tags]
    sch = dst
    seq_scheme = IOBES if sch == Scheme.BIOES else IOB2
    y_true = [list(t) for t in gold_tags]
    y_pred = [list(t) for t in pred_tags]
    kw = dict(mode="strict", scheme=seq_scheme, zero_division=0)
    p = float(precision_score(y_true, y_pred, **kw))
    r = float(recall_score(y_true, y_pred, **kw))
    f = float(f1_score(y_true, y_pred, **kw))
    per: dict[str, dict[str, float]] = {}
    has_entities = any(t != "O" for s in y_true + y_pred for t in s)
    if has_entities:
        report = classification_report(y_true, y_pred, output_dict=True, **kw)
        for key, vals in report.items():
            if key in ("micro avg", "weighted avg"):
                continue
            per[key] = {
                "precision": float(vals["precision"]),
                "recall": float(vals["recall"]),
                "f1": float(vals["f1-score"]),
                "support": float(vals["support"]),
            }
    return p, r, f, per


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------
def _overlap(a: _Span, b: _Span) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _any_overlap(sorted_spans: list[_Span]) -> bool:
    end = -1
    for s, e, _lab in sorted_spans:
        if s < end:
            return True
        end = max(end, e)
    return False


def nesting_depths(spans: set[_Span] | Sequence[_Span]) -> dict[_Span, int]:
    """The depth of each ``(start, end, label)`` span in its set: how many spans of the set with other
    boundaries contain it (0 for all of a flat set; a span with two labels is one span twice)."""
    keys = sorted(set(spans))
    out = dict.fromkeys(keys, 0)
    if not _any_overlap(keys):
        return out  # flat: nothing contains anything
    bounds = sorted({k[:2] for k in keys})
    for k in keys:
        out[k] = sum(1 for b in bounds if b != k[:2] and b[0] <= k[0] and k[1] <= b[1])
    return out


def _levels_of(gs: set[_Span], ps: set[_Span]) -> tuple[dict[_Span, int], dict[_Span, int]]:
    """0 (outer) or 1 (nested) per gold and per predicted span, by the module docstring's rule."""
    gd, pd = nesting_depths(gs), nesting_depths(ps)
    g_lev = {g: min(d, 1) for g, d in gd.items()}
    p_lev = {p: g_lev[p] if p in g_lev else min(d, 1) for p, d in pd.items()}
    return g_lev, p_lev


def level_prf(gold: Sequence[Sequence[Entity]], pred: Sequence[Sequence[Entity]]) -> list[TypeScores]:
    """Strict scores of the ``outer`` and the ``nested`` entities (levels: see the module docstring), as
    two :class:`TypeScores` labelled ``"outer"`` and ``"nested"``; their counts add up to the overall
    ones of :func:`entity_prf`."""
    if len(gold) != len(pred):
        raise ValueError(f"expected as many predicted as gold sentences, got {len(pred)} and {len(gold)}")
    n_gold, n_pred, n_ok = [0, 0], [0, 0], [0, 0]
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        gs, ps = _span_set(g, f"gold sentence {i}"), _span_set(p, f"predicted sentence {i}")
        g_lev, p_lev = _levels_of(gs, ps)
        for lev in g_lev.values():
            n_gold[lev] += 1
        for lev in p_lev.values():
            n_pred[lev] += 1
        for s in gs & ps:
            n_ok[g_lev[s]] += 1
    out = []
    for lev, name in enumerate(("outer", "nested")):
        p_, r_, f_ = prf(n_ok[lev], n_pred[lev], n_gold[lev])
        out.append(
            TypeScores(
                label=name,
                precision=p_,
                recall=r_,
                f1=f_,
                support=n_gold[lev],
                predicted=n_pred[lev],
                correct=n_ok[lev],
            )  # fmt: skip
        )
    return out


def classify_errors(gold: Sequence[Entity], pred: Sequence[Entity]) -> list[tuple[str, str]]:
    """The errors of one sentence as ``(label, kind)`` pairs (see the module docstring for the rules).

    Exact matches are not errors; an empty list means the sentence's entities are all right.
    """
    gs, ps = _span_set(gold, "gold"), _span_set(pred, "predicted")
    gd, pd = nesting_depths(gs), nesting_depths(ps)
    ok = gs & ps
    g_rem = sorted(gs - ok)
    p_rem = sorted(ps - ok)
    out: list[tuple[str, str]] = []
    for g in g_rem:
        hits = [p for p in p_rem if pd[p] == gd[g] and _overlap(g, p)]
        if not hits:
            out.append((g[2], "missed"))
        elif any(p[:2] == g[:2] for p in hits):
            out.append((g[2], "type"))
        elif any(p[2] == g[2] for p in hits):
            out.append((g[2], "boundary"))
        else:
            out.append((g[2], "boundary+type"))
    for p in p_rem:
        if not any(gd[g] == pd[p] and _overlap(g, p) for g in g_rem):
            out.append((p[2], "spurious"))
    return out


# ----------------------------------------------------------------------------------------------
# Confusion and calibration
# ----------------------------------------------------------------------------------------------
def confusion_cells(
    gold_docs_entities: Sequence[Sequence[Entity]], pred_entities: Sequence[Sequence[Entity]]
) -> list[ConfusionCell]:
    """The non-zero ``(gold label, predicted label)`` cells of all documents (pairing by identical span:
    see the module docstring), sorted by gold then predicted label; ``"O"`` stands for no entity."""
    if len(gold_docs_entities) != len(pred_entities):
        raise ValueError(
            f"expected as many predicted as gold documents, got {len(pred_entities)} and "
            f"{len(gold_docs_entities)}"
        )
    counts: dict[tuple[str, str], int] = {}
    for i, (g, p) in enumerate(zip(gold_docs_entities, pred_entities, strict=True)):
        by_span: dict[tuple[int, int], tuple[set[str], set[str]]] = {}
        for s, e, label in _span_set(g, f"gold document {i}"):
            by_span.setdefault((s, e), (set(), set()))[0].add(label)
        for s, e, label in _span_set(p, f"predicted document {i}"):
            by_span.setdefault((s, e), (set(), set()))[1].add(label)
        for gold, pred in by_span.values():
            pairs = [(lab, lab) for lab in sorted(gold & pred)]
            g_rest, p_rest = sorted(gold - pred), sorted(pred - gold)
            pairs += list(zip(g_rest, p_rest, strict=False))
            pairs += [(lab, "O") for lab in g_rest[len(p_rest) :]]
            pairs += [("O", lab) for lab in p_rest[len(g_rest) :]]
            for pair in pairs:
                counts[pair] = counts.get(pair, 0) + 1
    return [ConfusionCell(gold=g, pred=q, n=n) for (g, q), n in sorted(counts.items())]


def _check_scores(conf: Sequence[float], correct: Sequence[bool]) -> tuple[list[float], list[bool]]:
    c, ok = [float(x) for x in conf], [bool(x) for x in correct]
    if len(c) != len(ok):
        raise ValueError(f"expected one correctness flag per confidence, got {len(ok)} for {len(c)}")
    bad = next((x for x in c if not 0.0 <= x <= 1.0), None)  # NaN fails both comparisons
    if bad is not None:
        raise ValueError(f"expected confidences in [0, 1], got {bad!r}")
    return c, ok


def reliability_bins(
    conf: Sequence[float], correct: Sequence[bool], n_bins: int = N_BINS
) -> list[ReliabilityBin]:
    """``n_bins`` equal-width bins over [0, 1] of the confidences ``conf`` of predicted entities and
    whether each was correct: per bin its count, mean confidence and accuracy (all 0 for an empty bin)."""
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"expected a positive int n_bins, got {n_bins!r}")
    c, ok = _check_scores(conf, correct)
    n = [0] * n_bins
    conf_sum = [0.0] * n_bins
    ok_sum = [0] * n_bins
    for x, y in zip(c, ok, strict=True):
        k = min(int(x * n_bins), n_bins - 1)
        n[k] += 1
        conf_sum[k] += x
        ok_sum[k] += y
    return [
        ReliabilityBin(
            lo=k / n_bins,
            hi=(k + 1) / n_bins,
            n=n[k],
            mean_confidence=conf_sum[k] / n[k] if n[k] else 0.0,
            accuracy=ok_sum[k] / n[k] if n[k] else 0.0,
        )
        for k in range(n_bins)
    ]


def expected_calibration_error(conf: Sequence[float], correct: Sequence[bool], n_bins: int = N_BINS) -> float:
    """ECE of predicted entities' confidences and correctness (:func:`reliability_bins`, then
    :func:`bins_ece`); 0.0 with no entity at all."""
    return bins_ece(reliability_bins(conf, correct, n_bins))


def bins_ece(bins: Sequence[ReliabilityBin]) -> float:
    """ECE of a reliability table: the count-weighted mean of ``|accuracy - mean confidence|``."""
    total = sum(b.n for b in bins)
    if not total:
        return 0.0
    return sum(b.n / total * abs(b.accuracy - b.mean_confidence) for b in bins)


def threshold_curve(
    conf: Sequence[float],
    correct: Sequence[bool],
    n_gold: int,
    thresholds: Sequence[float] = THRESHOLDS,
) -> list[ThresholdPoint]:
    """Per threshold ``t``: strict precision, recall and F1 of the predicted entities with confidence >= t
    (recall over all ``n_gold`` gold entities), and how many were kept."""
    c, ok = _check_scores(conf, correct)
    if n_gold < sum(ok):
        raise ValueError(f"expected n_gold >= the correct entities ({sum(ok)}), got {n_gold}")
    out = []
    for t in thresholds:
        kept = [y for x, y in zip(c, ok, strict=True) if x >= t]
        p, r, f = prf(sum(kept), len(kept), n_gold)
        out.append(ThresholdPoint(threshold=float(t), precision=p, recall=r, f1=f, n_kept=len(kept)))
    return out


def entity_correctness(
    gold: Sequence[Sequence[Entity]], pred: Sequence[Sequence[Entity]]
) -> list[list[bool]]:
    """Per document and predicted entity: whether a gold entity of the document has its exact start, end
    and label (the strict match of the entity scores)."""
    if len(gold) != len(pred):
        raise ValueError(f"expected as many predicted as gold documents, got {len(pred)} and {len(gold)}")
    out = []
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        gs = _span_set(g, f"gold document {i}")
        _span_set(p, f"predicted document {i}")
        out.append([(e.start, e.end, e.label) in gs for e in p])
    return out


def calibration_report(
    raw: Sequence[float],
    calibrated: Sequence[float],
    correct: Sequence[bool],
    n_gold: int,
    *,
    temperature: float,
    fitted_on: str,
    precision: str,
) -> CalibrationReport:
    """The :class:`CalibrationReport` of predicted entities' raw and calibrated confidences (parallel
    sequences) and correctness; the threshold curve is over the calibrated confidences."""
    if len(raw) != len(calibrated):
        raise ValueError(
            f"expected as many calibrated as raw confidences, got {len(calibrated)} and {len(raw)}"
        )
    bins_raw = reliability_bins(raw, correct)
    bins_cal = reliability_bins(calibrated, correct)
    return CalibrationReport(
        temperature=float(temperature),
        fitted_on=fitted_on,
        precision=precision,
        n_entities=len(raw),
        ece_raw=bins_ece(bins_raw),
        ece_calibrated=bins_ece(bins_cal),
        bins_raw=bins_raw,
        bins_calibrated=bins_cal,
        thresholds=threshold_curve(calibrated, correct, n_gold),
    )


# ----------------------------------------------------------------------------------------------
# Everything together
# ----------------------------------------------------------------------------------------------
def _check_evaluate_args(
    gold: Sequence[Document], pred: Sequence[Sequence[Entity]], max_error_sentences: int | None
) -> None:
    if isinstance(gold, (str, Document)) or isinstance(pred, (str, Entity)):
        raise ValueError("expected a sequence of Documents and a sequence of entity lists")
    if len(gold) == 0:
        raise ValueError("expected at least one gold document, got none")
    if len(gold) != len(pred):
        raise ValueError(
            f"expected one prediction list per gold document, "
            f"got {len(pred)} predictions for {len(gold)} documents"
        )
    if max_error_sentences is not None and max_error_sentences < 0:
        raise ValueError(f"expected max_error_sentences >= 0 or None, got {max_error_sentences}")


def _sentence_tags(
    doc: Document, p: list[Entity], sch: Scheme, resolve: bool
) -> tuple[list[str], list[str], bool]:
    """Gold and predicted tags of one document, from the outermost spans when ``resolve``; plus whether
    the gold or the predicted entities overlap."""
    n = len(doc.text)
    where = f"prediction for document {doc.doc_id!r}"
    _span_set(p, where)  # Entity objects only
    for e in p:  # checked here: outermost() may leave an inner span out of the tags
        if e.end > n:
            raise ValueError(
                f"{where}: entity [{e.start}, {e.end}) {e.label} lies outside the text (length {n})"
            )
    nested = has_overlaps(doc.entities) or has_overlaps(p)
    g, q = (outermost(doc.entities), outermost(p)) if resolve else (doc.entities, p)
    try:
        gold_tags = spans_to_tags(n, g, sch)
    except ValueError as err:
        raise ValueError(f"gold document {doc.doc_id!r}: {err}") from None
    try:
        pred_tags = spans_to_tags(n, q, sch)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return gold_tags, pred_tags, nested


def _error_sentence(doc: Document, p: list[Entity], errs: list[tuple[str, str]]) -> ErrorSentence:
    kinds = {k for _, k in errs}
    return ErrorSentence(
        doc_id=doc.doc_id,
        text=doc.text,
        gold=doc.sorted_entities(),
        pred=sorted(p, key=lambda e: (e.start, e.end, e.label)),
        kinds=[k for k in ERROR_KINDS if k in kinds],
    )


def evaluate(
    gold: Sequence[Document],
    pred: Sequence[Sequence[Entity]],
    scheme: Scheme | str = "BIOES",
    *,
    max_error_sentences: int | None = None,
    outermost_tags: bool | None = None,
) -> EvaluationReport:
    """Evaluate predicted entities against gold documents.

    ``pred[i]`` are the predicted entities of ``gold[i]`` (half-open spans over ``gold[i].text``, inside
    the text; gold and predictions may nest or overlap: the entity scores are set matches). Tags for the
    character/sentence accuracies are derived in ``scheme`` from the outermost spans when
    ``outermost_tags`` (a span decoder's run: the report says so even when this data set happens to be
    flat), from all spans when it is False (overlapping entities then raise ``ValueError``, the strict
    check of a flat model's output); None (the default) resolves them only when some gold or predicted
    entities overlap. On flat data all three give the same figures. ``max_error_sentences`` caps the
    sentences kept in ``error_sentences`` (None: all).
    """
    _check_evaluate_args(gold, pred, max_error_sentences)
    sch = scheme_spec(scheme).scheme  # ValueError listing the schemes for an unknown name

    gold_tags: list[list[str]] = []
    pred_tags: list[list[str]] = []
    gold_ents: list[list[Entity]] = []
    pred_ents: list[list[Entity]] = []
    errors = ErrorCounts()
    error_sentences: list[ErrorSentence] = []
    any_nested = False
    for i, (doc, p) in enumerate(zip(gold, pred, strict=True)):
        if not isinstance(doc, Document):
            raise ValueError(f"gold[{i}]: expected a Document, got {type(doc).__name__}")
        if isinstance(p, (str, Entity)):
            raise ValueError(f"pred[{i}]: expected a sequence of Entity, got {type(p).__name__}")
        p = list(p)
        g_tags, p_tags, nested = _sentence_tags(doc, p, sch, outermost_tags is not False)
        any_nested |= nested
        gold_tags.append(g_tags)
        pred_tags.append(p_tags)
        gold_ents.append(list(doc.entities))
        pred_ents.append(p)
        for e in [*doc.entities, *p]:
            errors.touch(e.label)
        errs = classify_errors(doc.entities, p)
        for label, kind in errs:
            errors.add(label, kind)
        if errs and (max_error_sentences is None or len(error_sentences) < max_error_sentences):
            error_sentences.append(_error_sentence(doc, p, errs))

    p_, r_, f_, per_type = entity_prf(gold_ents, pred_ents)
    mp, mr, mf = _macro(per_type)
    levels = level_prf(gold_ents, pred_ents) if any_nested or outermost_tags else []
    return EvaluationReport(
        scheme=sch.value,
        n_sentences=len(gold),
        n_chars=sum(len(t) for t in gold_tags),
        char_accuracy=char_accuracy(gold_tags, pred_tags),
        sentence_accuracy=sentence_accuracy(gold_tags, pred_tags),
        precision=p_,
        recall=r_,
        f1=f_,
        macro_precision=mp,
        macro_recall=mr,
        macro_f1=mf,
        n_gold=sum(t.support for t in per_type.values()),
        n_pred=sum(t.predicted for t in per_type.values()),
        n_correct=sum(t.correct for t in per_type.values()),
        per_type=list(per_type.values()),
        errors=errors.as_dict(),
        error_sentences=error_sentences,
        tags_from="outermost spans" if outermost_tags or (outermost_tags is None and any_nested) else "spans",
        levels=levels,
        confusion=confusion_cells(gold_ents, pred_ents),
    )
