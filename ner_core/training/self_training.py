"""Self-training on the user's unlabeled text (issue 26): train, tag the unlabeled texts with the best
model, keep the documents it is sure of as silver data, and train again on gold + silver, the silver
documents weighing less in the loss (``training.silver_weight``,
:func:`ner_core.training.loop.weighted_loss`).

Which tagged documents become silver (:func:`select_silver`), in this order of refusal:

- a text whose hash (sha1 of its UTF-8 bytes, DuckDB's ``documents.text_sha1``, as the review export
  matches texts) is in the dev or test split: it would leak into the evaluation that chooses the epoch and
  scores the model; one in the ``exclude`` set the caller passes (the storage side passes the dev and test
  texts of every other stored dataset version, so a model scored on another data set here has not trained
  on its test texts; counted apart, as ``in_other_dev_test``); one that is in the gold training data (it
  has its gold labels already); a text seen earlier in the unlabeled corpus;
- a document with entities: kept when *every* entity's confidence reaches ``silver_min_confidence``. The
  confidence is the model's raw one (:attr:`PredictedEntity.confidence`), never a calibrated one: the
  threshold then means the same for every model, whatever temperature its dev split fitted;
- a document without entities: kept when its uncertainty *per character* (the tagger's summed token
  entropy, or a span model's summed binary entropy, divided by the text's length) is at most
  ``silver_max_uncertainty``: the summed figure grows with the length, so a fixed bound on it would keep
  short texts only.

Rounds: round 0 is the ordinary :func:`ner_core.training.loop.train` on gold (the teacher); round k tags
with round k-1's model and trains on gold + that round's silver. Each round trains from the encoder anew
(same seed), not from the teacher's weights: a student started from the teacher already fits the teacher's
own confident labels, so the silver would teach it little; a fresh student learns them as it learns gold
(the Noisy Student recipe; Xie et al. 2020). Every round early-stops on the same dev split.

Layout: the last round trains in the run directory itself (its ``model/`` is the run's model, as for a
plain run); the earlier ones and the silver data in ``self-train/``::

    self-train/unlabeled.json      the corpus: its source (files with their sha256, or a dataset version),
                                   text count and the sha256 of the texts in order
    self-train/round-<k>/          round k < last: an ordinary run directory (model/, checkpoint, history)
    self-train/silver-<k>.jsonl    round k's silver documents (text, entities), a JSONL any ingest reads
    self-train/silver-<k>.sha1     their text hashes, one a line
    self-train/silver-<k>.json     round k's record: the teacher, the counts per reason, the files' sha256

Resume: a finished round (its ``history.json`` written) is not trained again; an interrupted one resumes
from its checkpoint as any run does (so a kill -9 ends at the uninterrupted run's weights, on CPU); a
round's silver, once its record is written, is read back (its sha256 checked) instead of tagged again. A
resumed run refuses an unlabeled corpus other than the one it started with. The final model's
``metrics.json`` holds the lineage: the corpus, each teacher and each round's silver files and counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ner_core.config import NERConfig, TrainingConfig
from ner_core.documents import Document, Entity
from ner_core.runtime.precision import Choice
from ner_core.training.adapt import corpus_sha256
from ner_core.training.loop import TrainResult, train
from ner_core.training.run_state import EpochStats

log = logging.getLogger(__name__)

__all__ = [
    "REJECTED",
    "SELF_TRAIN_DIR",
    "SelfTrainResult",
    "SilverSelection",
    "read_json_object",
    "recorded_source",
    "select_silver",
    "self_train",
    "tag_unlabeled",
    "text_hash",
]

SELF_TRAIN_DIR = "self-train"
_CORPUS = "unlabeled.json"
#: what :func:`ner_core.training.loop.train` writes when a run has finished (a round done)
_HISTORY = "history.json"
#: why a tagged document is not silver, in the order the rules are tried
REJECTED = (
    "in_dev_test",
    "in_other_dev_test",
    "in_train",
    "duplicate",
    "low_confidence",
    "uncertain_no_entity",
)


def text_hash(text: str) -> str:
    """sha1 (hex) of the text's UTF-8 bytes: DuckDB's ``documents.text_sha1``, how texts are matched."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class _Entity(Protocol):
    start: int
    end: int
    label: str
    confidence: float


class _Prediction(Protocol):
    entities: Sequence[_Entity]
    uncertainty: float | None


@dataclass
class SilverSelection:
    """The silver documents of one round and the tagged documents counted by outcome: ``with_entities``
    and ``without_entities`` (selected), and one count per reason of :data:`REJECTED`."""

    docs: list[Document]
    counts: dict[str, int]

    @property
    def hashes(self) -> list[str]:
        return [text_hash(d.text) for d in self.docs]


def select_silver(
    texts: Sequence[str],
    predictions: Sequence[_Prediction],
    *,
    min_confidence: float,
    max_uncertainty: float,
    held_out: Iterable[str] = (),
    train_hashes: Iterable[str] = (),
    round_no: int = 1,
    exclude: Iterable[str] = (),
) -> SilverSelection:
    """The silver documents among the tagged ``texts`` (see the module's doc for the rules).

    Args:
        texts: the unlabeled texts; ``predictions``: the tagger's, one per text, each with ``entities``
            (carrying the raw ``confidence``) and ``uncertainty`` (summed, nats; ``None``: not computed,
            so a document without entities is not kept).
        held_out: text hashes of the dev and test splits; ``train_hashes``: those of the gold training data;
            ``exclude``: other text hashes no silver document may have (counted as ``in_other_dev_test``).
        round_no: names the silver documents (``silver<round>:<index in texts>``).
    """
    if len(texts) != len(predictions):
        raise ValueError(f"expected one prediction per text, got {len(predictions)} for {len(texts)} texts")
    held, gold, seen, other = set(held_out), set(train_hashes), set(), set(exclude)
    counts = dict.fromkeys(("with_entities", "without_entities", *REJECTED), 0)
    docs = []
    for i, (text, pred) in enumerate(zip(texts, predictions, strict=True)):
        h = text_hash(text)
        reason = "in_other_dev_test" if h in other and h not in held else None
        reason = reason or _rejected(h, text, pred, held, gold, seen, min_confidence, max_uncertainty)
        seen.add(h)
        if reason:
            counts[reason] += 1
            continue
        counts["with_entities" if pred.entities else "without_entities"] += 1
        ents = [Entity(start=e.start, end=e.end, label=e.label) for e in pred.entities]
        docs.append(Document(doc_id=f"silver{round_no}:{i}", text=text, entities=ents, source="silver"))
    return SilverSelection(docs, counts)


def _rejected(h, text, pred, held, gold, seen, min_confidence, max_uncertainty) -> str | None:
    """Why one tagged document is not silver (``None``: it is)."""
    if h in held:
        return "in_dev_test"
    if h in gold:
        return "in_train"
    if h in seen:
        return "duplicate"
    if pred.entities:
        ok = all(e.confidence >= min_confidence for e in pred.entities)
        return None if ok else "low_confidence"
    if pred.uncertainty is None or pred.uncertainty / max(1, len(text)) > max_uncertainty:
        return "uncertain_no_entity"
    return None


def tag_unlabeled(model_dir: str | Path, texts: Sequence[str], tc: TrainingConfig) -> list:
    """The model's entities (raw confidences) and uncertainty for each text, tagged in fp32 on the run's
    device: the result depends on the model only, not on a timing (``auto`` precision) or a temperature."""
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.tagger import Tagger

    loaded = load_model_dir(model_dir)
    tagger = Tagger(
        loaded.model,
        loaded.tokenizer,
        max_len=loaded.config.data.max_len,
        device=tc.device,
        num_threads=tc.num_threads,
        precision="fp32",
    )
    return tagger.predict_documents(list(texts))


# ----------------------------------------------------------------------------------------------
# The rounds
# ----------------------------------------------------------------------------------------------
@dataclass
class SelfTrainResult:
    """The final round's :class:`TrainResult` (its ``best_epoch`` numbered after the earlier rounds'
    epochs, as :func:`self_train`'s ``on_epoch`` numbers them), and the lineage saved with the model."""

    result: TrainResult
    lineage: dict


@dataclass
class _Rounds:
    """What the rounds share."""

    config: NERConfig
    train_docs: Sequence[Document]
    dev_docs: Sequence[Document]
    labels: Sequence[str]
    run_dir: Path
    texts: Sequence[str]
    held_out: set[str]
    exclude: set[str]
    resume: bool
    progress: bool
    on_epoch: Callable[[EpochStats], None] | None
    extra_metadata: dict
    precision: Choice | None

    @property
    def work(self) -> Path:
        return self.run_dir / SELF_TRAIN_DIR


def self_train(
    config: NERConfig,
    train_docs: Sequence[Document],
    dev_docs: Sequence[Document],
    labels: Sequence[str],
    run_dir: str | Path,
    unlabeled: Sequence[str],
    *,
    held_out: Iterable[str],
    source: dict,
    resume: bool = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
    progress: bool = True,
    extra_metadata: dict | None = None,
    precision: Choice | None = None,
    exclude: Iterable[str] = (),
) -> SelfTrainResult:
    """Round 0 on gold, then ``training.self_train_rounds`` rounds on gold + silver (module doc).

    ``unlabeled``: the texts to tag; ``source``: how they were named (recorded, checked on resume);
    ``held_out``: the text hashes of the dev and test splits; ``exclude``: other text hashes no silver
    document may have (the dev and test texts of other datasets: the caller knows them). ``on_epoch`` sees
    every round's epochs, numbered on from the earlier rounds' (1..n0 the teacher's, then n0+1..). The
    other arguments are :func:`ner_core.training.loop.train`'s, used for every round.
    """
    if not config.training.self_training:
        raise ValueError("self-training needs unlabeled texts: training.unlabeled or unlabeled_dataset")
    texts = [t for t in unlabeled if t.strip()]
    if not texts:
        raise ValueError("self-training: the unlabeled corpus holds no text")
    r = _Rounds(config, train_docs, dev_docs, labels, Path(run_dir), texts, set(held_out), set(exclude),
                resume, progress, on_epoch, dict(extra_metadata or {}), precision)  # fmt: skip
    r.work.mkdir(parents=True, exist_ok=True)
    lineage: dict[str, Any] = {"unlabeled": _corpus_record(r.work, texts, source, resume), "rounds": []}
    lineage["settings"] = {k: getattr(config.training, k) for k in _SETTINGS}
    offset, teacher = 0, None
    n = config.training.self_train_rounds
    for k in range(n + 1):
        silver: list[Document] = []
        if k:
            selection, record = _silver(r, k, teacher)
            silver = selection.docs
            lineage["rounds"].append(record)
        rdir = r.run_dir if k == n else r.work / f"round-{k}"
        result = _train_round(r, k, rdir, silver, offset, lineage)
        if k < n:
            offset += len(result.history)
            teacher = result.model_dir
    result.best_epoch += offset
    return SelfTrainResult(result, lineage)


_SETTINGS = ("silver_min_confidence", "silver_max_uncertainty", "silver_weight", "self_train_rounds")


def _train_round(r: _Rounds, k: int, rdir: Path, silver: list[Document], offset: int, lineage: dict):
    """Round ``k`` trained in ``rdir`` (an earlier round that finished is read back, not trained again)."""
    done = _finished(rdir) if k < r.config.training.self_train_rounds else None
    if done is not None:
        log.info("self-training round %d: finished before (%s), not trained again", k, rdir)
        return done
    log.info(
        "self-training round %d: %d gold + %d silver documents (weight %g) in %s",
        k, len(r.train_docs), len(silver), r.config.training.silver_weight, rdir,
    )  # fmt: skip

    def shifted(stats: EpochStats) -> None:
        if r.on_epoch:
            r.on_epoch(dataclasses.replace(stats, epoch=stats.epoch + offset))

    meta = {**r.extra_metadata, "self_training": {**lineage, "round": k, "epoch_offset": offset}}
    return train(r.config, r.train_docs, r.dev_docs, r.labels, rdir, resume=r.resume, on_epoch=shifted,
                 progress=r.progress, extra_metadata=meta, precision=r.precision, silver=silver)  # fmt: skip


def _finished(rdir: Path) -> TrainResult | None:
    """An earlier round that ran to its end (its history written), as a :class:`TrainResult`."""
    path = rdir / _HISTORY
    if not path.is_file():
        return None
    try:
        history = [EpochStats(**h) for h in json.loads(path.read_text(encoding="utf-8"))]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a training history ({exc})") from None
    best = next((h for h in reversed(history) if h.is_best), None)
    return TrainResult(
        run_dir=rdir,
        model_dir=rdir / "model",
        best_epoch=best.epoch if best else 0,
        best_dev_f1=best.dev_f1 if best else None,
        history=history,
        stopped_reason="finished before",
    )


# ----------------------------------------------------------------------------------------------
# Corpus and silver files
# ----------------------------------------------------------------------------------------------
def recorded_source(run_dir: str | Path) -> dict | None:
    """The unlabeled corpus's source as a self-training run in ``run_dir`` recorded it when it started
    (``None``: not started yet): a resume reads the same files, or the same dataset version."""
    path = Path(run_dir) / SELF_TRAIN_DIR / _CORPUS
    if not path.is_file():
        return None
    return read_json_object(path).get("source")


def _corpus_record(work: Path, texts: Sequence[str], source: dict, resume: bool) -> dict:
    """The corpus's record, written when the run starts; on resume the texts must be the recorded ones."""
    path = work / _CORPUS
    record = {"source": source, "texts": len(texts), "sha256": corpus_sha256(texts)}
    if resume and path.is_file():
        old = read_json_object(path)
        if old.get("sha256") != record["sha256"]:
            raise ValueError(
                f"{path}: the unlabeled texts are not those the run started with ({old.get('texts')} texts, "
                f"sha256 {str(old.get('sha256'))[:12]}..., now {len(texts)}, {record['sha256'][:12]}...): "
                "restore them, or start a new run"
            )
        return old
    _write_atomic(path, json.dumps(record, ensure_ascii=False, indent=2))
    return record


def _silver(r: _Rounds, k: int, teacher: Path | None) -> tuple[SilverSelection, dict]:
    """Round ``k``'s silver: read back when its record exists, else tagged by ``teacher`` and written."""
    stem = r.work / f"silver-{k}"
    record_path = stem.with_suffix(".json")
    if record_path.is_file():
        record = read_json_object(record_path)
        selection = SilverSelection(_read_silver(stem.with_suffix(".jsonl"), record), record["counts"])
        log.info(
            "self-training round %d: %d silver documents read back from %s", k, len(selection.docs), stem
        )
        return selection, record
    tc = r.config.training
    assert teacher is not None  # round k >= 1 follows round k - 1
    predictions = tag_unlabeled(teacher, r.texts, tc)
    selection = select_silver(
        r.texts,
        predictions,
        min_confidence=tc.silver_min_confidence,
        max_uncertainty=tc.silver_max_uncertainty,
        held_out=r.held_out,
        train_hashes={text_hash(d.text) for d in r.train_docs},
        round_no=k,
        exclude=r.exclude,
    )
    c = selection.counts
    log.info(
        "self-training round %d: %d of %d unlabeled texts are silver (%d with entities, %d without); "
        "left out: %s",
        k, len(selection.docs), len(r.texts), c["with_entities"], c["without_entities"],
        ", ".join(f"{c[x]} {x.replace('_', ' ')}" for x in REJECTED),
    )  # fmt: skip
    return selection, _write_silver(stem, selection, teacher, r.run_dir)


def _write_silver(stem: Path, selection: SilverSelection, teacher: Path, run_dir: Path) -> dict:
    """The silver documents, their hashes and then the round's record (whose presence says both are whole)."""
    lines = [
        json.dumps(
            {"doc_id": d.doc_id, "text": d.text, "entities": [e.model_dump() for e in d.entities]},
            ensure_ascii=False,
        )  # fmt: skip
        for d in selection.docs
    ]
    docs_text = "".join(line + "\n" for line in lines)
    hashes_text = "".join(h + "\n" for h in selection.hashes)
    _write_atomic(stem.with_suffix(".jsonl"), docs_text)
    _write_atomic(stem.with_suffix(".sha1"), hashes_text)
    record = {
        "round": int(stem.name.rsplit("-", 1)[1]),
        "teacher": str(teacher.relative_to(run_dir) if teacher.is_relative_to(run_dir) else teacher),
        "selected": len(selection.docs),
        "counts": selection.counts,
        "silver": str(stem.with_suffix(".jsonl").relative_to(run_dir)),
        "silver_sha256": hashlib.sha256(docs_text.encode("utf-8")).hexdigest(),
        "silver_hashes": str(stem.with_suffix(".sha1").relative_to(run_dir)),
        "silver_hashes_sha256": hashlib.sha256(hashes_text.encode("utf-8")).hexdigest(),
    }
    _write_atomic(stem.with_suffix(".json"), json.dumps(record, indent=2))
    return record


def _read_silver(path: Path, record: dict) -> list[Document]:
    """The silver documents written for ``record``; a file that is not the one written is refused."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(
            f"{path}: the round's silver documents are missing (its record names them)"
        ) from None
    if hashlib.sha256(data).hexdigest() != record.get("silver_sha256"):
        raise ValueError(f"{path}: changed since it was written (sha256 differs from its record)")
    return [Document.model_validate_json(line) for line in data.decode("utf-8").splitlines() if line]


def read_json_object(path: Path) -> dict:
    """A run folder's JSON record (a lineage or silver record): its object, or one ``ValueError`` line
    naming the file."""
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(out, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
