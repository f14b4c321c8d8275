"""Distillation (issue 26): a student trains on gold plus a fixed teacher's soft targets, on the labelled
and on the user's unlabeled texts. The use: a large encoder trained elsewhere (a GPU, a model directory)
distilled into a small one that tags fast on CPU.

CRF. The teacher's target is its whole distribution over tag paths, not a per-position softmax: for one row
the loss is the student's cross-entropy under the teacher's path distribution q,

    L_kd = log Z_s - E_q[score_s(y)]
         = log Z_s - sum_t sum_k q_t(k) em_s[t, k] - sum_ij P(i, j) trans_s(i, j)
           - sum_k q_0(k) start_s(k) - sum_k q_{n-1}(k) end_s(k),

with q_t the teacher's unary marginals and P its expected transition counts (summed over the row's steps),
both by forward-backward over the teacher's scores divided by the temperature tau. Its gradient with respect
to the student's emissions is p_s - q_t (the student's marginals minus the teacher's), which the C
likelihood kernel's backward already gives for the log Z term. The teacher's distribution is the one it
decodes with: its scheme's forbidden starts, moves and ends are removed (a finite :data:`DISALLOWED` score,
so the few rows that no allowed path fits still get targets). The gold NLL is the same formula with the
gold path's one-hot marginals and transition counts, so one log Z serves both.

Span decoder. Binary cross-entropy between the student's span logits and the teacher's span probabilities
``sigmoid(teacher logit / tau)`` over the band of cells the student scores (:meth:`NERModel.span_band`);
a span longer than the teacher's own ``max_span_len`` has teacher probability 0 (it never predicts one).
The targets are computed per batch from the teacher's forward pass, never stored: dense span targets of a
large corpus would not fit on disk, let alone in memory.

Loss of a batch: per row with characters, ``(1 - alpha) * w * gold + alpha * kd``, averaged over those rows
(``w`` the row's document weight: 1 for gold, 0 for an unlabeled text, whose gold tags mean nothing). With
``alpha = 0`` and no unlabeled text this is the plain training loss.

The teacher runs in eval mode under ``no_grad`` on the student's batch windows, in the run's precision for its
encoder and head (its CRF and span scores in float32, as the student's); in eval mode it draws no random
numbers, so a batch's targets depend only on the batch and a resumed run (kill -9, ``--resume``) trains on
the same targets as an uninterrupted one. Tokenisation: the teacher reads every chunk through its own
vocabulary, character by character (:class:`ner_core.data.alignment.CharAligner`: one position per character
in both models), so teacher and student may have different vocabularies but see the same windows.

Refused in one line: a teacher whose labels, scheme or decoder differ from the student's (both named), one
whose encoder has fewer positions than the student's windows, and any model directory the loader refuses
(symlinks out of it, oversized files, ...: :func:`ner_core.artifacts.modeldir.load_model_dir`).

Lineage: ``run_dir/distillation.json`` (written when the run starts; a resume refuses another teacher or
other unlabeled texts) and the model's ``metrics.json`` key ``distillation``: the teacher as named (run id or
folder), its resolved folder, the sha256 of its weights, alpha, temperature and the unlabeled corpus.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ner_core.artifacts.layout import WEIGHTS
from ner_core.artifacts.modeldir import LoadedModel, load_model_dir
from ner_core.config import DecoderType, NERConfig
from ner_core.data.alignment import CharAligner
from ner_core.data.batching import length_buckets
from ner_core.documents import Document
from ner_core.model import _ckernel
from ner_core.model.crf import DISALLOWED, ConstrainedCRF, _LogPartition
from ner_core.model.encoder import check_window
from ner_core.model.network import NERModel
from ner_core.model.span import MASKED, band_mask, circle_loss
from ner_core.runtime.precision import Choice
from ner_core.schemes import tag_set
from ner_core.training.adapt import corpus_sha256
from ner_core.training.loop import TrainResult, train
from ner_core.training.run_state import EpochStats
from ner_core.training.self_training import read_json_object, text_hash

log = logging.getLogger(__name__)

__all__ = [
    "RECORD",
    "DistillResult",
    "Distiller",
    "crf_kd_loss",
    "distill",
    "expected_score",
    "gold_targets",
    "log_partition",
    "recorded_unlabeled",
    "span_kd_loss",
    "teacher_sha256",
    "teacher_targets",
]

#: the run's distillation record (teacher, its sha256, settings, the unlabeled corpus)
RECORD = "distillation.json"


# ----------------------------------------------------------------------------------------------
# CRF: log Z, teacher marginals, expected scores
# ----------------------------------------------------------------------------------------------
def _kernel(em: Tensor, backend: str) -> bool:
    if backend not in ("auto", "c", "torch"):
        raise ValueError(f"unknown backend {backend!r}; choose auto, c or torch")
    return backend != "torch" and em.device.type == "cpu" and _ckernel.load() is not None


def _log_partition_torch(em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor) -> Tensor:
    """``log Z`` per row ``(B,)`` in float64 by the forward algorithm, differentiable; ``trans`` is ``(K, K)``
    or one matrix per row ``(B, K, K)`` (whose gradient is then each row's expected transition counts)."""
    em = em.double()
    tr = trans.double() if trans.dim() == 3 else trans.double().unsqueeze(0)  # (B|1, K, K)
    alpha = start.double().unsqueeze(0) + em[:, 0]  # (B, K)
    for t in range(1, em.shape[1]):
        nxt = torch.logsumexp(alpha.unsqueeze(2) + tr, dim=1) + em[:, t]  # (B, K)
        alpha = torch.where(mask[:, t].unsqueeze(1), nxt, alpha)
    return torch.logsumexp(alpha + end.double().unsqueeze(0), dim=1)  # (B,)


def log_partition(crf: ConstrainedCRF, em: Tensor, mask: Tensor, backend: str = "auto") -> Tensor:
    """The student's unconstrained ``log Z`` per row ``(B,)`` (the training loss's), differentiable: the C
    kernel on CPU (its backward gives the marginals), the forward algorithm in torch elsewhere."""
    c = crf.crf
    if _kernel(em, backend):
        return _LogPartition.apply(
            em.float(), c.start_transitions, c.transitions, c.end_transitions, mask.sum(dim=1)
        )
    return _log_partition_torch(em, mask, c.start_transitions, c.transitions, c.end_transitions).float()


def _tempered_scores(crf: ConstrainedCRF, tau: float) -> tuple[Tensor, Tensor, Tensor]:
    """The teacher's start, transition and end scores divided by ``tau``, its forbidden ones lowered by
    :data:`DISALLOWED` (finite: a row no allowed path fits still has a distribution)."""
    c = crf.crf
    out = []
    for x, ok in ((c.start_transitions, crf.allowed_start), (c.transitions, crf.allowed_trans),
                  (c.end_transitions, crf.allowed_end)):  # fmt: skip
        x = x.detach().float() / tau
        out.append(torch.where(ok, x, x + DISALLOWED))
    return out[0], out[1], out[2]


@torch.no_grad()
def teacher_targets(
    crf: ConstrainedCRF, em: Tensor, mask: Tensor, tau: float = 1.0, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """The teacher's unary marginals ``(B, T, K)`` (0 past a row's length) and expected transition counts
    ``(B, K, K)`` [from, to] at temperature ``tau``: the C kernel's forward-backward on CPU, else the
    gradient of a torch forward algorithm (both exact; tested to agree with enumeration)."""
    start, trans, end = _tempered_scores(crf, tau)
    em = em.detach().float() / tau
    lengths = mask.sum(dim=1)
    if _kernel(em, backend):
        _, marg, pairs = _ckernel.logz_grad(
            em.numpy(force=True), start.numpy(), trans.numpy(), end.numpy(), lengths.numpy(),
            threads=torch.get_num_threads(),
        )  # fmt: skip
        return torch.from_numpy(marg), torch.from_numpy(pairs).float()
    B, _, K = em.shape
    with torch.enable_grad():
        e = em.double().requires_grad_()
        tr = trans.double().expand(B, K, K).clone().requires_grad_()
        logz = _log_partition_torch(e, mask, start, tr, end)
        d_em, d_tr = torch.autograd.grad(logz.sum(), (e, tr))
    return (d_em * mask.unsqueeze(2)).float(), d_tr.float()


def gold_targets(tags: Tensor, mask: Tensor, num_tags: int) -> tuple[Tensor, Tensor]:
    """The gold path as targets: one-hot marginals ``(B, T, K)`` (0 past a row's length) and its transition
    counts ``(B, K, K)``, so that :func:`expected_score` gives the gold path's score."""
    on = mask.float()
    unary = F.one_hot(tags.long(), num_tags).float() * on.unsqueeze(2)  # (B, T, K)
    B = tags.shape[0]
    pairs = torch.zeros(B, num_tags, num_tags, device=tags.device)
    if tags.shape[1] > 1:
        rows = torch.arange(B, device=tags.device).unsqueeze(1).expand_as(tags[:, 1:])
        pairs.index_put_((rows, tags[:, :-1], tags[:, 1:]), on[:, 1:], accumulate=True)
    return unary, pairs


def expected_score(crf: ConstrainedCRF, em: Tensor, mask: Tensor, unary: Tensor, pairs: Tensor) -> Tensor:
    """``E[score_s(y)]`` per row ``(B,)`` under the target marginals ``unary`` ``(B, T, K)`` and transition
    counts ``pairs`` ``(B, K, K)``: emissions, transitions, start (step 0) and end (the row's last step)."""
    c = crf.crf
    u = unary.to(em.dtype) * mask.unsqueeze(2).to(em.dtype)
    rows = torch.arange(em.shape[0], device=em.device)
    last = u[rows, mask.sum(dim=1) - 1]  # (B, K)
    emitted = (em * u).sum(dim=(1, 2))
    moved = (pairs.to(em.dtype) * c.transitions).sum(dim=(1, 2))
    return emitted + moved + u[:, 0] @ c.start_transitions + last @ c.end_transitions


def crf_kd_loss(
    crf: ConstrainedCRF, em: Tensor, mask: Tensor, unary: Tensor, pairs: Tensor, backend: str = "auto"
) -> Tensor:
    """``log Z_s - E_q[score_s(y)]`` per row ``(B,)``: the student's cross-entropy under the path
    distribution whose marginals are ``unary`` and ``pairs`` (:func:`teacher_targets`)."""
    return log_partition(crf, em, mask, backend) - expected_score(crf, em, mask, unary, pairs)


# ----------------------------------------------------------------------------------------------
# Span decoder
# ----------------------------------------------------------------------------------------------
def span_kd_loss(student: Tensor, teacher: Tensor, valid: Tensor, tau: float = 1.0) -> Tensor:
    """Binary cross-entropy of the student's span logits ``(B, C, L, W)`` against the teacher's span
    probabilities ``sigmoid(teacher / tau)``, summed over each row's valid band cells ``(B, L, W)`` and
    averaged over the labels: ``(B,)``."""
    ok = valid.unsqueeze(1).float()  # (B, 1, L, W)
    target = torch.sigmoid(teacher.detach().float() / tau) * ok
    bce = F.binary_cross_entropy_with_logits(student.float(), target, reduction="none")
    return (bce * ok).sum(dim=(2, 3)).mean(dim=1)


def _teacher_band(teacher: NERModel, ids: Tensor, am: Tensor, W: int) -> Tensor:
    """The teacher's span band cut (or padded with :data:`MASKED`: spans longer than it scores) to the
    student's band width ``W``."""
    band, _ = teacher.span_band(ids, am)  # (B, C, L, Wt)
    if band.shape[3] >= W:
        return band[..., :W]
    return F.pad(band, (0, W - band.shape[3]), value=MASKED)


# ----------------------------------------------------------------------------------------------
# The teacher in the training loop
# ----------------------------------------------------------------------------------------------
class TeacherAligned:
    """The student's training set whose batches also carry ``teacher_input_ids``: the same characters,
    one position each, through the teacher's vocabulary. Batches are the base set's (same order, same
    windows); the teacher's rows are built from the same items, found by the same length buckets."""

    def __init__(self, base: Any, aligner: CharAligner) -> None:
        self.base = base
        chunks = [getattr(it, "chunk", None) or it.encoded.chunk for it in base.items]
        self.ids = [aligner.char_ids(base.docs[c.doc_index].text[c.start : c.end]) for c in chunks]
        self.cls_id, self.sep_id, self.pad_id = aligner.cls_id, aligner.sep_id, aligner.pad_id

    def __len__(self) -> int:
        return len(self.base)

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0) -> Iterator[dict[str, Tensor]]:
        order = length_buckets([len(x) for x in self.ids], batch_size, shuffle=shuffle, seed=seed)
        for idx, batch in zip(order, self.base.batches(batch_size, shuffle=shuffle, seed=seed), strict=True):
            t = torch.full_like(batch["input_ids"], self.pad_id)  # (B, T+2)
            for r, i in enumerate(idx):
                n = len(self.ids[i])
                if int(batch["attention_mask"][r].sum()) != n + 2:
                    raise RuntimeError("distillation: the teacher's rows are out of step with the batch")
                t[r, 0], t[r, n + 1] = self.cls_id, self.sep_id
                t[r, 1 : n + 1] = torch.tensor(self.ids[i], dtype=torch.long)
            batch["teacher_input_ids"] = t
            yield batch


class Distiller:
    """A fixed teacher and the distillation settings; :meth:`loss` replaces the training loss.

    Args:
        teacher: the teacher model (put in eval mode, its parameters frozen), on the run's device.
        tokenizer: the teacher's tokenizer (its vocabulary reads the characters, :class:`TeacherAligned`).
        alpha, temperature: ``training.distill_alpha`` and ``training.distill_temperature``.
        unlabeled: documents without gold that are distilled on (loss weight 0 for their gold term).
    """

    def __init__(
        self, teacher: NERModel, tokenizer: Any, alpha: float, temperature: float, unlabeled=()
    ) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.aligner = CharAligner(tokenizer)
        self.alpha, self.tau = float(alpha), float(temperature)
        self.unlabeled: list[Document] = list(unlabeled)

    def dataset(self, base: Any) -> TeacherAligned:
        """``base`` (gold then :attr:`unlabeled`, the latter at weight 0) with the teacher's input ids."""
        return TeacherAligned(base, self.aligner)

    def loss(self, model: NERModel, batch: dict[str, Tensor]) -> Tensor:
        """The batch's loss (module doc): one student forward, one teacher forward without gradients."""
        ids, am = batch["input_ids"], batch["attention_mask"]
        t_ids = batch.get("teacher_input_ids", ids).to(ids.device)
        if model.decoder is DecoderType.SPAN:
            return self._span_loss(model, ids, am, t_ids, batch)
        em, cm = model.emissions(ids, am)  # (B, L, K), (B, L)
        with torch.no_grad():
            t_em, _ = self.teacher.emissions(t_ids, am)
        rows = cm[:, 0] if cm.shape[1] else cm.new_zeros(cm.shape[0])  # (B,) rows with characters
        if not bool(rows.any()):
            return em.sum() * 0.0
        crf = model.crf
        with torch.autocast(em.device.type, enabled=False):
            em_r, mask = em[rows].float(), cm[rows]
            logz = log_partition(crf, em_r, mask)
            q, pairs = teacher_targets(self.teacher.crf, t_em[rows].float(), mask, self.tau)
            kd = logz - expected_score(crf, em_r, mask, q.to(em_r.device), pairs.to(em_r.device))
            if self.alpha == 1.0:
                return kd.mean()
            gq, gp = gold_targets(batch["tags"][rows].masked_fill(~mask, 0), mask, crf.num_tags)
            nll = logz - expected_score(crf, em_r, mask, gq, gp)
            return self._combine(nll, kd, batch.get("weight"), rows)

    def _span_loss(self, model: NERModel, ids: Tensor, am: Tensor, t_ids: Tensor, batch) -> Tensor:
        band, cm = model.span_band(ids, am)  # (B, C, L, W), (B, L)
        B, C, L, W = band.shape
        rows = cm[:, 0] if L else cm.new_zeros(B)
        if not bool(rows.any()):
            return band.sum() * 0.0
        with torch.no_grad():
            t_band = _teacher_band(self.teacher, t_ids, am, W)
        with torch.autocast(band.device.type, enabled=False):
            valid = band_mask(cm, W, model.max_span_len)  # (B, L, W)
            kd = span_kd_loss(band, t_band, valid, self.tau)
            t = batch["targets"].long().to(band.device)  # (N, 4) [row, label, start, end]
            gold = torch.zeros_like(band, dtype=torch.bool)
            gold[t[:, 0], t[:, 1], t[:, 2], t[:, 3] - t[:, 2]] = True
            nll = circle_loss(band, gold, valid).mean(dim=1)  # (B,)
            return self._combine(nll[rows], kd[rows], batch.get("weight"), rows)

    def _combine(self, nll: Tensor, kd: Tensor, weight: Tensor | None, rows: Tensor) -> Tensor:
        """``(1 - alpha) * w * nll + alpha * kd`` averaged over the rows with characters."""
        w = weight[rows].to(nll.device).float() if weight is not None else torch.ones_like(nll)
        return ((1.0 - self.alpha) * w * nll + self.alpha * kd).mean()


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
def teacher_sha256(model_dir: str | Path) -> str:
    """sha256 of the teacher's weights file: what its targets depend on besides its configuration."""
    digest = hashlib.sha256()
    with open(Path(model_dir) / WEIGHTS, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_teacher(model_dir: str | Path, config: NERConfig, labels: Sequence[str]) -> LoadedModel:
    """The teacher, loaded as ``ner predict`` loads a model (every check of an untrusted folder) onto the
    run's device, refused in one line when it cannot teach this student."""
    loaded = load_model_dir(model_dir, device=config.training.device)
    where = f"teacher {model_dir}"
    student = config.decoder.type
    if loaded.decoder is not student:
        raise ValueError(
            f"{where}: its decoder is {loaded.decoder.value}, the student's {student.value}: teacher and "
            "student must use the same decoder"
        )
    if student is DecoderType.SPAN:
        mine, theirs, what = sorted(labels), list(loaded.model.labels), "labels"
    else:
        mine, theirs = tag_set(sorted(labels), config.data.scheme), list(loaded.tags)
        what = f"tags (scheme {loaded.scheme}; the student's {config.data.scheme})"
    if mine != theirs:
        raise ValueError(
            f"{where}: its {what} {theirs} are not the student's {mine}: teacher and student must share "
            "the label set and scheme"
        )
    try:
        check_window(config.data.max_len, loaded.model.encoder.config)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return loaded


def recorded_unlabeled(run_dir: str | Path) -> dict | None:
    """The unlabeled corpus's source as the run recorded it when it started (``None``: not started, or no
    unlabeled texts): a resume reads the same files or dataset version."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return None
    return (read_json_object(path).get("unlabeled") or {}).get("source")


def _unlabeled_docs(texts: Iterable[str], held_out: set[str]) -> tuple[list[Document], dict[str, int]]:
    """The unlabeled texts as documents without gold: empty ones, repeats and texts of the dev or test split
    (by text hash, as self-training leaves them out) dropped and counted."""
    docs, seen = [], set()
    counts = {"kept": 0, "in_dev_test": 0, "duplicate": 0}
    for i, text in enumerate(texts):
        if not text.strip():
            continue
        h = text_hash(text)
        why = "in_dev_test" if h in held_out else "duplicate" if h in seen else "kept"
        seen.add(h)
        counts[why] += 1
        if why == "kept":
            docs.append(Document(doc_id=f"unlabeled:{i}", text=text, source="unlabeled"))
    return docs, counts


def _record(run_dir: Path, lineage: dict, resume: bool) -> dict:
    """Write the run's record; a resume must find the same teacher weights and unlabeled texts."""
    path = run_dir / RECORD
    if resume and path.is_file():
        old = read_json_object(path)
        for key, what in (("teacher_sha256", "teacher's weights"), ("unlabeled", "unlabeled texts")):
            a = old.get(key) if key != "unlabeled" else (old.get(key) or {}).get("sha256")
            b = lineage.get(key) if key != "unlabeled" else (lineage.get(key) or {}).get("sha256")
            if a != b:
                raise ValueError(
                    f"{path}: the {what} are not those the run started with (sha256 {str(a)[:12]}..., now "
                    f"{str(b)[:12]}...): restore them, or start a new run"
                )
        return old
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(lineage, ensure_ascii=False, indent=2), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return lineage


@dataclass
class DistillResult:
    """The student's :class:`TrainResult` and the lineage saved with its model (``metrics.json``)."""

    result: TrainResult
    lineage: dict


def distill(
    config: NERConfig,
    train_docs: Sequence[Document],
    dev_docs: Sequence[Document],
    labels: Sequence[str],
    run_dir: str | Path,
    unlabeled: Sequence[str] = (),
    *,
    teacher_dir: str | Path,
    teacher: str | None = None,
    source: dict | None = None,
    held_out: Iterable[str] = (),
    resume: bool = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
    progress: bool = True,
    extra_metadata: dict | None = None,
    precision: Choice | None = None,
) -> DistillResult:
    """Train the student of ``config`` on gold + the teacher in ``teacher_dir`` (named ``teacher``: a run id
    or the folder), also on the ``unlabeled`` texts (from ``source``, recorded); the other arguments are
    :func:`ner_core.training.loop.train`'s. ``held_out``: text hashes of the dev and test splits."""
    tc = config.training
    loaded = load_teacher(teacher_dir, config, labels)
    docs, counts = _unlabeled_docs(unlabeled, set(held_out))
    corpus = None
    if source is not None:
        corpus = {"source": source, "texts": len(docs), "sha256": corpus_sha256(d.text for d in docs),
                  "left_out": {k: v for k, v in counts.items() if k != "kept"}}  # fmt: skip
    lineage = {
        "teacher": teacher or str(teacher_dir),
        "teacher_dir": str(teacher_dir),
        "teacher_sha256": teacher_sha256(teacher_dir),
        "alpha": tc.distill_alpha,
        "temperature": tc.distill_temperature,
        "unlabeled": corpus,
    }
    lineage = _record(Path(run_dir), lineage, resume)
    log.info(
        "distillation: teacher %s (%s), alpha %g, temperature %g, %d gold + %d unlabeled documents",
        lineage["teacher"], loaded.config.encoder.name, tc.distill_alpha, tc.distill_temperature,
        len(train_docs), len(docs),
    )  # fmt: skip
    distiller = Distiller(loaded.model, loaded.tokenizer, tc.distill_alpha, tc.distill_temperature, docs)
    meta = {**(extra_metadata or {}), "distillation": lineage}
    result = train(config, train_docs, dev_docs, labels, run_dir, resume=resume, on_epoch=on_epoch,
                   progress=progress, extra_metadata=meta, precision=precision,
                   distill=distiller)  # fmt: skip
    return DistillResult(result, lineage)
