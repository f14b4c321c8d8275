"""Tagging texts of any length with a trained model.

Long texts are tagged whole: windows of ``max_len`` characters whose starts lie at most ``stride``
characters apart, as few as fixed windows every ``stride`` characters but spread evenly over the text
(:func:`tagging_windows`), go through the encoder and the head; each character keeps the *emission
scores* of the window in which it sits most centrally (largest distance to the window's nearer edge; ties
go to the earlier window), so no character is scored at a window's ragged edge when a better window exists.
The CRF then runs once over each whole text's stitched emissions: one Viterbi path per text, with the
scheme's constraints and the learned transitions applied across window boundaries too, so the tags of a
text always form valid spans (merging per-window *tags* instead could join a B-ORG of one window to an
I-LOC of the next). Every character gets exactly one tag. Spans are read off the tag sequence
(:func:`ner_core.schemes.tags_to_spans`).

Windows of all texts are pooled, sorted by length and encoded in batches under ``torch.inference_mode``,
so padding is small; in fp32, bf16 and fp16 the order of the windows never changes the result (int8's
dynamic quantisation scales each batch's activations by that batch's range, so there the batch a window
lands in moves its scores slightly). Texts are processed in groups of about a million characters, so memory
stays bounded however many texts one call gets.

Confidence of an entity: the minimum, over the entity's characters, of the CRF's posterior marginal
probability ``p(y_t = predicted tag | text)`` (forward-backward over the allowed paths of the whole text's
stitched emissions). It is 1.0 only when the CRF is certain of every character of the span; a span whose
weakest character the model hesitates on gets a low confidence.

Calibrated confidence (:mod:`ner_core.inference.temperature`): a tagger with a temperature ``T != 1`` (read
by :meth:`Tagger.from_loaded` from the model directory's ``calibration.json``, fitted on dev at the end of
training: :mod:`ner_core.inference.calibration`) also gives each entity ``confidence_calibrated``: the same
minimum over its characters, of the marginals of the emissions and CRF scores divided by ``T`` (the Viterbi
path and so the entities are those of ``T = 1``); for a span model ``sigmoid(logit / T)``. The raw
``confidence`` is unchanged, so thresholds and the review queue built on it keep their meaning. An entity a
user dictionary forces is calibrated under the same force (the scaled marginals are conditioned on the
dictionary's spans as the raw ones are; a span model's forced entity keeps 1.0 in both).

Uncertainty of a document (:meth:`Tagger.predict_documents`): the summed token entropy of the same CRF
marginals, ``-sum_t sum_k p(y_t = k | text) * ln p(y_t = k | text)`` in nats: 0 when the CRF is certain
of every character's tag, larger the more characters it hesitates on and the more it hesitates (a long
text sums more characters: it also costs a reviewer more). The review queue orders by it.

A span-decoder model (``config.decoder.type == "span"``) takes another path, with no tags and no CRF
(:mod:`ner_core.inference.spans`): windows overlapping by at least its ``max_span_len``, each span scored in
the window where it sits most centrally, entities = spans whose probability reaches the threshold (nested
or flat), confidence = the span's probability, and document uncertainty = the summed binary entropy (nats)
of the scored spans with probability in [0.05, 0.95], ``-sum (p ln p + (1 - p) ln (1 - p))``: 0 when the
model is sure of every span, so the review queue orders both decoders' documents by one kind of figure.
:meth:`Tagger.tag_texts` gives a span model's tags as those of its outermost entities.

On CPU the whole-text Viterbi and forward-backward run in the compiled C kernels of
:mod:`ner_core.model._ckernel` (thousands of sequential steps for a 16,000-character text); without a C
compiler
the torch implementations give the same result, more slowly.

Precision (:mod:`ner_core.runtime.precision`): the encoder and the head run under autocast at ``bf16`` or
``fp16``;
``int8`` replaces the encoder's ``nn.Linear`` layers of a *copy* of the model by dynamically quantized int8
ones (CPU only). The CRF always decodes float32 emissions. ``auto`` (the commands' default) picks the fastest
precision *measured on this machine* (:func:`calibrate_prediction`, timed once and cached) whose recorded
dev F1 stays within 0.2 points of fp32's; a Tagger built directly defaults to ``fp32``. Measured in
``bench/bench_predict.py``.

Whitespace at either edge of a predicted span is trimmed (an entity never begins or ends with a space;
whitespace has its own model position, so a model can tag it); a span of whitespace alone is dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ner_core.artifacts.calibration_file import check_temperature, read_calibration
from ner_core.artifacts.modeldir import read_precision_record, read_saved_config
from ner_core.config import Precision, PredictionConfig
from ner_core.data.alignment import CharAligner
from ner_core.data.batching import EncodedChunk, collate
from ner_core.data.formats.overlaps import outermost
from ner_core.documents import Entity
from ner_core.inference import spans as span_decoding
from ner_core.inference.dictionary import (
    DictionaryPlan,
    UserDictionary,
    apply_to_spans,
    decode_with_dictionary,
    load_dictionary,
)
from ner_core.inference.temperature import scaled_crf, scaled_marginals, sigmoid_at
from ner_core.model import _ckernel
from ner_core.model.encoder import check_window
from ner_core.model.heads import BiRNNHead
from ner_core.runtime.calibrate import Timing, calibrated, calibration_key, model_shape, pinned
from ner_core.runtime.hardware import Hardware, bf16_lstm_runs
from ner_core.runtime.precision import Choice, autocast, choose, int8_copy, is_auto, measurable
from ner_core.schemes import span_tuples, spans_to_tags, tag_set

#: characters per group of texts tagged together (the group's stitched emissions are held in memory:
#: K float32 per character, 68 MB at 17 tags)
_GROUP_CHARS = 1_000_000
#: rows and padded positions per batch of the whole-text CRF pass
_CRF_BATCH = 64
_CRF_CELLS = 262_144
#: windows per timed call of :func:`calibrate_prediction` (at most the batch size): a few seconds in all
_CALIBRATION_WINDOWS = 4


def _groups(texts: Sequence[str]) -> list[list[str]]:
    """``texts`` in consecutive groups of about :data:`_GROUP_CHARS` characters (a longer text alone)."""
    groups: list[list[str]] = []
    group: list[str] = []
    size = 0
    for text in texts:
        if group and size + len(text) > _GROUP_CHARS:
            groups.append(group)
            group, size = [], 0
        group.append(text)
        size += len(text)
    if group:
        groups.append(group)
    return groups


def crf_batches(lengths: Sequence[int]) -> list[list[int]]:
    """The indices of the non-empty sequences of ``lengths`` in batches for one whole-text CRF pass each:
    sorted by length, at most :data:`_CRF_BATCH` rows and :data:`_CRF_CELLS` padded positions a batch
    (a longer sequence alone)."""
    order = sorted((i for i, n in enumerate(lengths) if n), key=lambda i: lengths[i])
    out = []
    b = 0
    while b < len(order):
        e = b + 1
        while e < len(order) and e - b < _CRF_BATCH and (e - b + 1) * lengths[order[e]] <= _CRF_CELLS:
            e += 1
        out.append(order[b:e])
        b = e
    return out


def padded(
    stitched: Sequence[np.ndarray], rows: Sequence[int], K: int, where: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The emissions ``(R, T, K)`` of ``stitched[i]`` for ``i`` in ``rows``, right-padded to the longest,
    and their mask ``(R, T)``, on ``where``."""
    lengths = np.array([len(stitched[i]) for i in rows], dtype=np.int64)  # (R,)
    longest = int(lengths.max())
    em = np.zeros((len(rows), longest, K), dtype=np.float32)  # (R, T, K)
    for r, i in enumerate(rows):
        em[r, : lengths[r]] = stitched[i]
    mask = torch.arange(longest).unsqueeze(0) < torch.from_numpy(lengths).unsqueeze(1)  # (R, T)
    return torch.from_numpy(em).to(where), mask.to(where)


@dataclass(frozen=True)
class DocumentPrediction:
    """The entities of one text and its uncertainty (summed token entropy of the CRF marginals, or a span
    model's summed binary entropy of its scored spans, nats; ``None`` when marginals were not computed)."""

    entities: list[PredictedEntity]
    uncertainty: float | None


def token_entropy(marginals: np.ndarray) -> np.ndarray:
    """Per-position entropy (nats) of marginals of shape (T, K) -> (T,); 0 * ln 0 counts as 0."""
    p = np.clip(marginals.astype(np.float64), 0.0, 1.0)  # (T, K)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)  # (T, K)
    return -plogp.sum(axis=-1)  # (T,)


@dataclass(frozen=True)
class PredictedEntity:
    """A predicted span ``[start, end)`` of the original text, its label, mention and confidence; with a
    temperature, its calibrated confidence too (``None`` without one)."""

    start: int
    end: int
    label: str
    text: str
    confidence: float
    from_dictionary: bool = False  # forced by the user dictionary (its confidence is then under that force)
    confidence_calibrated: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.from_dictionary:  # the key only where a dictionary put the entity there
            del d["from_dictionary"]
        if self.confidence_calibrated is None:  # the key only where a temperature was applied
            del d["confidence_calibrated"]
        return d


@dataclass(frozen=True)
class _Tagged:
    """One text's tags, the marginal of each (1.0 without confidence), its summed token entropy (None
    without confidence) and, under a temperature, the scaled marginal of each tag."""

    tags: list[str]
    probs: list[float]
    entropy: float | None
    calibrated: list[float] | None = None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` -> CUDA when present, else CPU; otherwise the named device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} asked for, but CUDA is not available here (use cpu or auto)"
        )
    return dev


def tagging_windows(length: int, max_len: int, stride: int) -> list[tuple[int, int]]:
    """The windows ``[start, end)`` that tag a text of ``length`` characters: as few windows of ``max_len``
    characters as fixed windows every ``stride`` characters would take, their starts spread evenly from
    the text's start to ``length - max_len``, so consecutive windows overlap by at least ``max_len - stride``
    characters and usually more (a text no longer than ``max_len`` is one window).

    Fixed windows every ``stride`` characters end with one pinned to the text's end that overlaps its
    neighbour by up to ``max_len - 1`` characters while every other pair overlaps by the minimum; here the
    same windows' surplus is shared out, so every boundary gets the extra context at no extra encoding."""
    if max_len < 1 or stride < 1:
        raise ValueError(f"max_len and stride must be positive, got {max_len} and {stride}")
    if stride > max_len:
        raise ValueError(
            f"stride ({stride}) must not exceed max_len ({max_len}): characters would be skipped"
        )
    if length <= max_len:
        return [(0, length)]
    n = 1 + -(-(length - max_len) // stride)  # what fixed windows every stride take
    # starts step by at most ceil((length - max_len) / (n - 1)) <= stride characters
    return [(start, start + max_len) for start in (i * (length - max_len) // (n - 1) for i in range(n))]


def _int8_head(head) -> None:
    """The RNN head of an int8 copy (its own copy): an LSTM in bf16 where the CPU has bf16 units and oneDNN
    runs a bf16 LSTM (faster there than the int8 LSTM), else int8 products like the encoder's (the GRU
    always: it has no bf16 kernel). Other heads stay as they are."""
    if not isinstance(head, BiRNNHead):
        return
    if isinstance(head.rnn, torch.nn.LSTM) and Hardware.detect("cpu").bf16_units and bf16_lstm_runs():
        head.run_in_bf16()
    else:
        head.quantize_int8()


def _dictionary_id(dictionary: UserDictionary) -> str:
    """A user dictionary's identity in a prediction run's settings: its entries' hash (a run never resumes
    under another dictionary)."""
    digest = hashlib.sha256()
    for e in dictionary.entries:
        digest.update(f"{e.text}\t{e.label}\t{e.mode}\t{e.priority}\n".encode())
    return f"{len(dictionary)} entries, sha256 {digest.hexdigest()[:16]}"


def _tag_labels(tags: Sequence[str]) -> list[str]:
    """The entity labels of a tag list (``B-PER``, ``I-PER`` ... -> ``PER``)."""
    return sorted({t.split("-", 1)[1] for t in tags if "-" in t})


def default_stride(max_len: int) -> int:
    """A CRF model's default stride: the window. Windows are spread evenly (:func:`tagging_windows`), so
    the boundaries of a text that is not a multiple of the window still overlap a little, and on Resume NER
    dev stride = window scored as stride 7/8 did at every window tried (``bench/bench_predict.py``'s
    windowed-F1 table); each character is encoded about once (the 1/8 overlap cost an eighth more
    encoding on long texts). A span model's windows follow :func:`_span_min_overlap` instead."""
    return max_len


def _span_min_overlap(max_len: int) -> int:
    """The least overlap of a span model's windows, whatever its span limit: 1/8 of the window."""
    return max(1, max_len // 8)


def is_span_model(model) -> bool:
    """Whether ``model`` decodes spans (:mod:`ner_core.model.span`) rather than tags with a CRF."""
    return _is_span_config(model.config)


def _is_span_config(config) -> bool:
    return str(getattr(getattr(config, "decoder", None), "type", None) or "crf") == "span"


def _span_settings(
    config, max_len: int, threshold: float | None, overlap: str | None
) -> span_decoding.SpanSettings | None:
    """A span model's decoding settings: the given threshold and overlap, else the model's saved ones
    (overlap "allow" when the model names none); ``None`` for a CRF model, which takes neither. A model
    without a recorded span limit (not trained yet) is windowed as if the limit were the CRF's overlap."""
    if not _is_span_config(config):
        if threshold is not None or overlap is not None:
            raise ValueError(
                "a span threshold and the overlap mode apply to a span-decoder model only; this model "
                "decodes with a CRF"
            )
        return None
    cfg = config.decoder
    return span_decoding.SpanSettings(
        threshold=float(cfg.threshold if threshold is None else threshold),
        overlap=overlap or cfg.overlap or "allow",
        max_span_len=cfg.max_span_len or _span_min_overlap(max_len),
    )


def _decoding(span: span_decoding.SpanSettings | None) -> dict:
    if span is None:
        return {"decoder": "crf"}
    return {
        "decoder": "span",
        "span_threshold": span.threshold,
        "overlap": span.overlap,
        "max_span_len": span.max_span_len,
    }


def _pick(options: PredictionConfig, saved: PredictionConfig, name: str, default=None):
    """An option: given, else the model's saved prediction setting, else ``default``."""
    value = getattr(options, name, None)
    if value is None:
        value = getattr(saved, name, None)
    return default if value is None else value


def planned_decoding(config, options: PredictionConfig | None = None) -> dict:
    """:attr:`Tagger.decoding` of ``Tagger.from_loaded(loaded, options)`` for a model whose saved
    configuration is ``config``, without loading its weights (a sharded run records it once); refuses
    what the tagger would refuse: the span options for a CRF model, a span model's window no longer than
    its span limit or a stride whose windows overlap by less."""
    opts, saved = options or PredictionConfig(), config.prediction
    window = _pick(opts, saved, "window", config.data.max_len)
    threshold, overlap = _pick(opts, saved, "span_threshold"), _pick(opts, saved, "overlap")
    span = _span_settings(config, window, threshold, overlap)
    if span is not None:
        span_decoding.span_stride(window, span.max_span_len, _pick(opts, saved, "stride"), 1)
    return _decoding(span)


class Tagger:
    """Batched, windowed inference for an :class:`ner_core.model.network.NERModel`.

    Args:
        model: a NERModel (or anything with ``tags``, ``config.data.scheme``, ``emissions`` and ``crf``).
        tokenizer: the model's tokenizer (characters are mapped one-to-one by :class:`CharAligner`).
        max_len: characters per window (without [CLS]/[SEP]).
        stride: the most characters between window starts, ``1 <= stride <= max_len``; default the window
            for a CRF model (:func:`default_stride`: windows spread evenly, so boundaries still overlap;
            ``bench/bench_predict.py`` compares the F1 of wider and narrower strides), for a span model
            the window minus its span limit (at least 1/8 of the window).
        batch_size: windows per forward pass.
        device: ``cpu``, ``cuda[:N]`` or ``auto`` (CUDA when present).
        num_threads: torch CPU threads (``None`` leaves torch's setting alone).
        precision: ``fp32`` (default), ``bf16``, ``fp16``, ``int8`` (dynamic int8 encoder on CPU; the given
            model is not changed) or ``auto`` (:func:`ner_core.runtime.precision.choose`, gated by
            ``record``).
        record: the model directory's dev-F1 record (:func:`ner_core.artifacts.modeldir.read_record`) for
        ``auto``.
        temperature: the entity-confidence temperature (1.0: none; see the module docstring).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_len: int,
        stride: int | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = "cpu",
        num_threads: int | None = None,
        precision: str | Precision = Precision.FP32,
        record=None,
        span_threshold: float | None = None,
        overlap: str | None = None,
        dictionary: UserDictionary | None = None,
        temperature: float = 1.0,
    ):
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        if stride is not None and (not isinstance(stride, int) or stride < 1):
            raise ValueError(f"stride must be a positive int or None, got {stride!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if num_threads is not None:
            if not isinstance(num_threads, int) or num_threads < 1:
                raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
            torch.set_num_threads(num_threads)
        check_window(max_len, getattr(getattr(model, "encoder", None), "config", None), flag="--window")
        self.model = model.eval()
        self.aligner = CharAligner(tokenizer)
        self.scheme: str = model.config.data.scheme
        self.max_len = max_len
        self.span: span_decoding.SpanSettings | None = _span_settings(
            model.config, max_len, span_threshold, overlap
        )
        if self.span is None:
            self.tags: list[str] = list(model.tags)
            self.stride = stride or default_stride(max_len)
        else:  # tags of a span model: those of its outermost entities (tag_texts)
            self.labels: list[str] = list(model.labels)
            self.tags = list(getattr(model, "tags", None) or tag_set(self.labels, self.scheme))
            overlap_crf = _span_min_overlap(max_len)
            self.stride = span_decoding.span_stride(max_len, self.span.max_span_len, stride, overlap_crf)
        if self.stride > max_len:
            raise ValueError(f"stride ({self.stride}) must not exceed max_len ({max_len})")
        if dictionary is not None:
            dictionary.check_labels(self.labels if self.span is not None else _tag_labels(self.tags))
        self.dictionary = dictionary
        self.batch_size = batch_size
        self.device = resolve_device(device)
        hardware = Hardware.detect(self.device)
        timing = None
        if is_auto(precision):
            timing = calibrate_prediction(
                model,
                tokenizer,
                max_len=max_len,
                batch_size=batch_size,
                device=self.device,
                hardware=hardware,
            )
        self.precision_choice: Choice = choose(
            precision, purpose="prediction", hardware=hardware, record=record, timing=timing
        )
        self.precision: Precision = self.precision_choice.precision
        if self.precision is Precision.INT8:
            self.model = int8_copy(self.model, tokenizer)
            _int8_head(getattr(self.model, "head", None))
        # reduced-precision kernels are compiled and cached per shape: window batches are padded to a
        # multiple of 16 positions there, so a long-running service meets few shapes, but never beyond the
        # window, so full windows are not padded (see batching.collate)
        self._pad_to = 16 if self.precision in (Precision.BF16, Precision.FP16) else 1
        self.model.to(self.device)
        self.temperature = temperature

    @property
    def temperature(self) -> float:
        """The entity-confidence temperature: 1.0 gives raw confidences only; any other value adds
        ``confidence_calibrated`` to every entity (see the module docstring)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = check_temperature(value)
        self._scaled = None  # the CRF with its scores divided by the temperature, made on first use

    def _scaled_crf(self):
        if self._scaled is None:
            self._scaled = scaled_crf(self.model.crf, self._temperature)
        return self._scaled

    @classmethod
    def from_loaded(cls, loaded, options: PredictionConfig | None = None) -> Tagger:
        """A tagger for a :class:`ner_core.artifacts.modeldir.LoadedModel`.

        Every field of ``options`` left ``None`` comes from the model's saved ``prediction`` configuration,
        and where that is unset too: the window from the model's ``data.max_len``, batch size 32, device
        ``auto`` (CUDA when present), precision ``auto`` gated by the model directory's dev-F1 record (the
        stride from the window, see :func:`default_stride`). The temperature is the model directory's
        for the precision chosen, else its fp32 one, else none (``calibration.json``; a refused file stops
        here in one line naming it).
        """
        if options is not None and not isinstance(options, PredictionConfig):
            raise ValueError(f"expected options as a PredictionConfig, got {type(options).__name__}")
        opts = options or PredictionConfig()
        saved = loaded.config.prediction

        def pick(name: str, default=None):
            return _pick(opts, saved, name, default)

        stored = read_calibration(getattr(loaded, "path", None))  # refused before the model is copied
        tagger = cls(
            loaded.model,
            loaded.tokenizer,
            max_len=pick("window", loaded.config.data.max_len),
            stride=pick("stride"),
            batch_size=pick("batch_size", 32),
            device=pick("device", "auto"),
            num_threads=pick("num_threads"),
            precision=pick("precision", Precision.AUTO),
            record=read_precision_record(getattr(loaded, "path", None)),
            span_threshold=pick("span_threshold"),
            overlap=pick("overlap"),
            # the caller's file only: a model directory's saved settings never name a file to read
            dictionary=load_dictionary(opts.dictionary) if opts.dictionary else None,
        )
        t = stored.temperature_for(tagger.precision) if stored is not None else None
        tagger.temperature = 1.0 if t is None else t
        return tagger

    #: how windows are placed and joined: evenly spread windows (:func:`tagging_windows`), each character's
    #: emissions from its most central one, then one CRF pass over the whole text (stored with prediction
    #: runs, so a run never resumes under another rule: "emissions" was fixed windows every stride)
    merge = "emissions/even-windows"
    #: a span model's rule: evenly spread windows overlapping by at least max_span_len, each span scored in
    #: the window where it sits most centrally (:mod:`ner_core.inference.spans`)
    span_merge = "spans/most-central-window"

    @property
    def decoding(self) -> dict:
        """What turns scores into entities, beside the windows: ``{"decoder": "crf"}``, or for a span model
        the decoder, its threshold, overlap mode and span limit (stored with prediction runs: a run never
        resumes under other values)."""
        return _decoding(self.span)

    @property
    def settings(self) -> dict:
        return {
            "max_len": self.max_len,
            "stride": self.stride,
            "batch_size": self.batch_size,
            "device": str(self.device),
            "precision": self.precision.value,
            "merge": self.merge if self.span is None else self.span_merge,
            **({} if self.span is None else self.decoding),  # a CRF tagger's settings are as before
            **({} if self.dictionary is None else {"dictionary": _dictionary_id(self.dictionary)}),
            **({} if self.temperature == 1.0 else {"temperature": self.temperature}),
        }

    @staticmethod
    def _check_texts(texts: Sequence[str]) -> None:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(f"expected a sequence of texts (list of str), got {type(texts).__name__}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"expected every text to be a str, got {type(t).__name__} at index {i}")

    @torch.inference_mode()
    def tag_texts(
        self,
        texts: Sequence[str],
        *,
        confidence: bool = True,
        progress: Callable[[int], None] | None = None,
        uncertainty: bool = False,
    ) -> list[tuple]:
        """Per text: one tag per character and the marginal probability of that tag.

        Args:
            texts: N texts of any length (empty ones give empty lists).
            confidence: compute CRF marginals (else every probability is 1.0; a little faster).
            progress: called after each batch of windows with the number of characters it covered for
                the first time (overlaps counted once: the calls add up to the texts' total length).
            uncertainty: also return each text's summed token entropy of the marginals (a span
                model's: summed binary entropy of its spans; ``None`` without ``confidence`` for a CRF
                model; 0.0 for an empty text).

        Returns:
            N pairs ``(tags, probs)``, each of length ``len(text)``; with ``uncertainty``, N triples
            ``(tags, probs, entropy)``. The probabilities are the raw ones, whatever the temperature.
        """
        self._check_texts(texts)
        if self.span is not None:  # a span model: the tags of its outermost entities
            tagged = [
                self._span_tags(t, sc)
                for t, sc in zip(texts, self._score_spans(texts, progress), strict=True)
            ]
            return tagged if uncertainty else [(tags, probs) for tags, probs, _ in tagged]
        out = self._tag_crf(texts, confidence, progress, calibrate=False)
        return [(r.tags, r.probs, r.entropy) if uncertainty else (r.tags, r.probs) for r in out]

    def _tag_crf(
        self,
        texts: Sequence[str],
        confidence: bool,
        progress: Callable[[int], None] | None,
        *,
        calibrate: bool,
    ) -> list[_Tagged]:
        """A CRF model's :class:`_Tagged` per text; ``calibrate`` adds the scaled marginals (with
        ``confidence``, under a temperature other than 1)."""
        # texts are tagged in groups of at most _GROUP_CHARS characters, so the stitched emissions of a
        # huge input never all sit in memory at once; windows are pooled and length-sorted within a group
        return [
            r for group in _groups(texts) for r in self._tag_group(group, confidence, progress, calibrate)
        ]

    def _tag_group(
        self,
        texts: Sequence[str],
        confidence: bool,
        progress: Callable[[int], None] | None,
        calibrate: bool = False,
    ) -> list[_Tagged]:
        stitched = self._stitch(texts, progress)
        plans = [self.dictionary.plan(t) for t in texts] if self.dictionary is not None else None
        return self._decode(stitched, confidence, plans, calibrate=calibrate)

    @torch.inference_mode()
    def stitched_emissions(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text's stitched emissions ``(len(text), K)`` float32: what the CRF decodes (a CRF model's
        only; :mod:`ner_core.inference.calibration` runs the CRF on them at many temperatures)."""
        self._check_texts(texts)
        if self.span is not None:
            raise ValueError("a span model has no emissions: its spans are scored directly")
        return [em for group in _groups(texts) for em in self._stitch(group, None)]

    def _stitch(self, texts: Sequence[str], progress: Callable[[int], None] | None) -> list[np.ndarray]:
        """The windows of ``texts`` through the encoder and the head; each character's emissions from the
        window where it sits most centrally (see the module docstring)."""
        K = len(self.tags)
        windows: list[tuple[int, int, int]] = []  # (text index, start, end)
        for ti, text in enumerate(texts):
            if text:
                windows.extend((ti, s, e) for s, e in tagging_windows(len(text), self.max_len, self.stride))
        stitched = [np.zeros((len(t), K), dtype=np.float32) for t in texts]  # per text (L, K) emissions
        best = [np.full(len(t), -1, dtype=np.int32) for t in texts]  # centrality of the supplying window
        # stable sort by length: windows of one text stay in order, so ties go to the earlier window
        order = sorted(range(len(windows)), key=lambda w: windows[w][2] - windows[w][1])
        for b in range(0, len(order), self.batch_size):
            batch_w = [windows[w] for w in order[b : b + self.batch_size]]
            items = [EncodedChunk(None, self.aligner.char_ids(texts[ti][s:e]), None) for ti, s, e in batch_w]
            al = self.aligner
            enc = collate(items, al.cls_id, al.sep_id, al.pad_id, pad_to=self._pad_to, max_chars=self.max_len)
            ids = enc["input_ids"].to(self.device)  # (B, T+2)
            att = enc["attention_mask"].to(self.device)  # (B, T+2)
            with autocast(self.precision, self.device.type):  # encoder + head; the CRF gets float32
                emissions, _ = self.model.emissions(ids, att)  # (B, T, K)
            em = emissions.float().cpu().numpy()  # (B, T, K)
            first_seen = 0
            for r, (ti, s, e) in enumerate(batch_w):
                n = e - s
                j = np.arange(n)
                central = np.minimum(j, n - 1 - j)  # (n,) distance to the nearer window edge
                first_seen += int((best[ti][s:e] < 0).sum())
                better = central > best[ti][s:e]  # (n,)
                best[ti][s:e][better] = central[better]
                stitched[ti][s:e][better] = em[r, :n][better]
            if progress is not None:
                progress(first_seen)
        return stitched

    def crf_device(self) -> torch.device:
        """Where the whole-text CRF runs: on CPU when the C kernels are there, else where the CRF is."""
        return torch.device("cpu") if _ckernel.load() is not None else self.model.crf.allowed_trans.device

    def _decode(
        self,
        stitched: list[np.ndarray],
        confidence: bool,
        plans: list[DictionaryPlan] | None = None,
        *,
        calibrate: bool = False,
    ) -> list[_Tagged]:
        """One CRF pass over each whole text's stitched emissions: Viterbi tags and, with ``confidence``,
        the posterior marginal of each chosen tag and the text's summed token entropy; with ``calibrate``
        too (and a temperature other than 1), the chosen tags' marginals under the temperature. Texts are
        decoded in length-sorted, padded batches (:func:`crf_batches`)."""
        crf = self.model.crf
        where = self.crf_device()
        calibrate = calibrate and confidence and self.temperature != 1.0
        out = [_Tagged([], [], 0.0 if confidence else None, [] if calibrate else None) for _ in stitched]
        for rows in crf_batches([len(em) for em in stitched]):
            em_t, mask = padded(stitched, rows, len(self.tags), where)
            row_plans = [plans[i] for i in rows] if plans is not None else None
            if row_plans is None:
                paths, _ = crf.viterbi_tensor(em_t, mask)  # (R, T)
                marg_t = crf.marginals(em_t, mask) if confidence else None  # (R, T, K)
            else:  # the best path holding every forced span and no forbidden one, marginals under that
                paths, marg_t = decode_with_dictionary(
                    crf, em_t, mask, row_plans, self.tags, self.scheme, confidence=confidence
                )
            cal_t = None
            if calibrate:  # the same path; the marginals of the scaled scores, under the same dictionary
                cal_t = scaled_marginals(
                    crf, em_t, mask, self.temperature, scaled=self._scaled_crf(), plans=row_plans,
                    tags=self.tags, scheme=self.scheme,
                )  # fmt: skip
            paths = paths.cpu().numpy()
            marg = marg_t.cpu().numpy() if marg_t is not None else None
            cal = cal_t.cpu().numpy() if cal_t is not None else None
            for r, i in enumerate(rows):
                n = len(stitched[i])
                path = paths[r, :n]
                entropy, probs, scaled = None, [1.0] * n, None
                if marg is not None:
                    probs = marg[r, np.arange(n), path].astype(np.float64).tolist()
                    entropy = round(float(token_entropy(marg[r, :n]).sum()), 6)
                if cal is not None:
                    scaled = cal[r, np.arange(n), path].astype(np.float64).tolist()
                out[i] = _Tagged([self.tags[k] for k in path.tolist()], probs, entropy, scaled)
        return out

    def predict(
        self, texts: Sequence[str], *, confidence: bool = True, progress: Callable[[int], None] | None = None
    ) -> list[list[PredictedEntity]]:
        """Entities per text, half-open character spans over the original text (see module docstring).
        A span model's entities may overlap, and carry their span probability whatever ``confidence``
        says (it costs nothing there). Under a temperature (and with ``confidence``) each entity also
        carries its calibrated confidence."""
        if self.span is not None:
            self._check_texts(texts)
            scored = self._score_spans(texts, progress)
            return [self._span_entities(t, sc) for t, sc in zip(texts, scored, strict=True)]
        if self.temperature != 1.0 and confidence:
            self._check_texts(texts)
            with torch.inference_mode():
                tagged = self._tag_crf(texts, True, progress, calibrate=True)
            pairs = zip(texts, tagged, strict=True)
            return [self._entities(t, r.tags, r.probs, True, r.calibrated) for t, r in pairs]
        return [
            self._entities(text, tags, probs, confidence)
            for text, (tags, probs) in zip(
                texts, self.tag_texts(texts, confidence=confidence, progress=progress), strict=True
            )
        ]

    def predict_documents(
        self, texts: Sequence[str], *, progress: Callable[[int], None] | None = None
    ) -> list[DocumentPrediction]:
        """Per text: its entities (as :meth:`predict`) and its uncertainty, the summed token entropy of the
        CRF marginals (see module docstring), or for a span model the summed binary entropy of its scored
        spans (:mod:`ner_core.inference.spans`); what a stored prediction run keeps."""
        if self.span is not None:
            self._check_texts(texts)
            scored = self._score_spans(texts, progress)
            return [
                DocumentPrediction(self._span_entities(t, sc), span_decoding.binary_entropy_sum(sc.probs))
                for t, sc in zip(texts, scored, strict=True)
            ]
        self._check_texts(texts)
        with torch.inference_mode():
            tagged = self._tag_crf(texts, True, progress, calibrate=True)
        return [
            DocumentPrediction(self._entities(text, r.tags, r.probs, True, r.calibrated), r.entropy)
            for text, r in zip(texts, tagged, strict=True)
        ]

    def _entities(
        self,
        text: str,
        tags: list[str],
        probs: list[float],
        confidence: bool,
        calibrated: list[float] | None = None,
    ) -> list[PredictedEntity]:
        ents = []
        plan = self.dictionary.plan(text) if self.dictionary is not None else None
        for start, end, label in span_tuples(tags, self.scheme):
            # an entity never begins or ends with whitespace: trim it ("李超 " -> "李超")
            while start < end and text[start].isspace():
                start += 1
            while end > start and text[end - 1].isspace():
                end -= 1
            if start == end or (plan and plan.is_forbidden(start, end, label)):  # trimming can make one
                continue
            conf = min(probs[start:end]) if confidence else 1.0
            cal = round(min(calibrated[start:end]), 6) if calibrated is not None else None
            forced = bool(plan) and plan.is_forced(start, end, label)
            ents.append(PredictedEntity(start, end, label, text[start:end], round(conf, 6), forced, cal))
        return ents

    # ------------------------------------------------------------------ span models
    @torch.inference_mode()
    def _score_spans(
        self, texts: Sequence[str], progress: Callable[[int], None] | None
    ) -> list[span_decoding.ScoredSpans]:
        """Each text's scored spans (:class:`span_decoding.ScoredSpans`), in groups of about
        ``_GROUP_CHARS`` characters (their windows pooled and length-sorted, as the CRF path's)."""
        out: list[span_decoding.ScoredSpans] = []
        group: list[str] = []
        size = 0
        for text in texts:
            if group and size + len(text) > _GROUP_CHARS:
                out.extend(self._span_group(group, progress))
                group, size = [], 0
            group.append(text)
            size += len(text)
        if group:
            out.extend(self._span_group(group, progress))
        return out

    def _span_group(
        self, texts: Sequence[str], progress: Callable[[int], None] | None
    ) -> list[span_decoding.ScoredSpans]:
        """Windows of ``texts`` through the encoder, head and span scorer; of each window's cells above the
        floor, those whose most central window it is (:func:`span_decoding.owner_windows`)."""
        assert self.span is not None
        floor = min(self.span.threshold, span_decoding.ENTROPY_BAND[0])
        starts = [np.array([s for s, _ in tagging_windows(len(t), self.max_len, self.stride)]) for t in texts]
        windows = [(ti, k, int(s)) for ti, st in enumerate(starts) if texts[ti] for k, s in enumerate(st)]
        width = [min(len(t), self.max_len) for t in texts]
        seen = [np.zeros(len(t), dtype=bool) for t in texts]
        parts: list[list[span_decoding.ScoredSpans]] = [[] for _ in texts]
        al = self.aligner
        windows.sort(key=lambda w: width[w[0]])  # stable: the windows of one text stay in order
        for b in range(0, len(windows), self.batch_size):
            batch_w = windows[b : b + self.batch_size]
            items = [
                EncodedChunk(None, al.char_ids(texts[ti][s : s + width[ti]]), None) for ti, _, s in batch_w
            ]
            enc = collate(items, al.cls_id, al.sep_id, al.pad_id, pad_to=self._pad_to, max_chars=self.max_len)
            with autocast(self.precision, self.device.type):  # encoder + head; the span scores are float32
                band, char_mask = self.model.span_band(
                    enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
                )  # (B, C, L, W): only the cells a span can occupy, (B, L)
            first_seen = 0
            for (ti, k, s), (lab, a, z, p, lg) in zip(
                batch_w, span_decoding.window_candidates(band, char_mask, floor), strict=True
            ):
                i, j = a + s, z + s
                own = span_decoding.owner_windows(starts[ti], width[ti], i, j) == k
                parts[ti].append(span_decoding.ScoredSpans(lab[own], i[own], j[own] + 1, p[own], lg[own]))
                first_seen += int((~seen[ti][s : s + width[ti]]).sum())
                seen[ti][s : s + width[ti]] = True
            if progress is not None:
                progress(first_seen)
        return [span_decoding.ScoredSpans.join(p) for p in parts]

    def _span_entities(self, text: str, scored: span_decoding.ScoredSpans) -> list[PredictedEntity]:
        """The entities of one text: its spans at or above the threshold, whitespace at their edges trimmed
        (:func:`span_decoding.entity_spans`), flat or not, by start, end and label; under a temperature
        each with ``sigmoid(logit / T)`` too (1.0 for a span the dictionary forces)."""
        assert self.span is not None
        full = span_decoding.scored_entity_spans(text, scored, self.span.threshold, self.labels)
        logit = {(s, e, lab): z for s, e, lab, _p, z in full}
        spans = [x[:4] for x in full]
        forced: set[tuple[int, int, str]] = set()
        if self.dictionary is not None:  # forbidden spans out, forced ones in (probability 1.0)
            marked = apply_to_spans(spans, self.dictionary.plan(text), flat=self.span.overlap == "flat")
            forced = {(s, e, lab) for s, e, lab, _p, f in marked if f}
            spans = [(s, e, lab, p) for s, e, lab, p, _f in marked]
        if self.span.overlap == "flat":
            flat = span_decoding.flat_subset(spans, {lab: i for i, lab in enumerate(self.labels)})
            spans = sorted(flat, key=lambda x: x[:3])
        cal: list[float | None] = [None] * len(spans)
        if self.temperature != 1.0:
            keys = [(s, e, lab) for s, e, lab, _p in spans]
            z = np.array([np.inf if k in forced else logit.get(k, np.inf) for k in keys], dtype=np.float64)
            cal = [round(float(c), 6) for c in sigmoid_at(z, self.temperature)]
        return [
            PredictedEntity(s, e, lab, text[s:e], round(p, 6), (s, e, lab) in forced, c)
            for (s, e, lab, p), c in zip(spans, cal, strict=True)
        ]

    def _span_tags(
        self, text: str, scored: span_decoding.ScoredSpans
    ) -> tuple[list[str], list[float], float]:
        """Tags of the outermost entities (:func:`ner_core.data.formats.overlaps.outermost`); per character
        the probability of the outermost entity holding it, elsewhere 1 minus the highest probability of a
        span over it (of those scoring at least the entropy band's 0.05; 1.0 where none does); and the
        document's uncertainty."""
        ents = self._span_entities(text, scored)
        outer = outermost([Entity(start=e.start, end=e.end, label=e.label) for e in ents])
        probs = np.ones(len(text), dtype=np.float64)
        for s, e, p in zip(scored.starts.tolist(), scored.ends.tolist(), scored.probs.tolist(), strict=True):
            probs[s:e] = np.minimum(probs[s:e], 1.0 - p)
        conf = {(e.start, e.end, e.label): e.confidence for e in ents}
        for e in outer:
            probs[e.start : e.end] = conf[(e.start, e.end, e.label)]
        tags = spans_to_tags(len(text), outer, self.scheme)
        return tags, probs.tolist(), span_decoding.binary_entropy_sum(scored.probs)


def calibration_text(n_chars: int, seed: int = 0) -> str:
    """A fixed text of ``n_chars`` CJK characters (what it says does not change the speed)."""
    return "".join(chr(0x4E00 + (seed * 7919 + i * 104729) % 20902) for i in range(n_chars))


def calibrate_prediction(
    model, tokenizer, *, max_len: int, batch_size: int, device: torch.device, hardware: Hardware
) -> Timing | None:
    """How fast this machine tags with ``model`` in each precision ``auto`` may choose: the tagger's
    whole path (windows, encoder, head, CRF Viterbi and marginals) over a batch of full windows, one
    tagger per precision (:func:`ner_core.runtime.calibrate.calibrated`: pinned, cached, or timed now).
    ``None`` when there is nothing to choose between."""
    todo = measurable("prediction", hardware)
    if len(todo) < 2:
        return None
    fixed = pinned()  # no model shape needed: nothing is timed
    if fixed is not None:
        return fixed
    n = max(1, min(batch_size, _CALIBRATION_WINDOWS))
    texts = [calibration_text(max_len, i) for i in range(n)]  # one full window each

    def build(p: Precision) -> Callable[[], Callable[[], int]]:
        def make() -> Callable[[], int]:
            tagger = Tagger(model, tokenizer, max_len=max_len, batch_size=n, device=device, precision=p)

            def step() -> int:
                tagger.tag_texts(texts, uncertainty=True)  # with marginals, as a stored run tags
                return n * max_len

            return step

        return make

    # a span model's path costs differently from a CRF model's of the same encoder: its own cache entry
    shape = model_shape(
        model, window=max_len, windows=n, **({"decoder": "span"} if is_span_model(model) else {})
    )
    key = calibration_key("prediction", device, shape)
    with torch.random.fork_rng(devices=[]):
        return calibrated(key, {p: build(p) for p in todo}, purpose="prediction")


def choose_for_model_dir(
    model_dir: str | Path,
    requested: str | Precision | None = None,
    *,
    device: str = "cpu",
    options: PredictionConfig | None = None,
) -> Choice:
    """The choice :meth:`Tagger.from_loaded` makes for ``model_dir`` on ``device``: ``requested``, else the
    model's saved ``prediction.precision``, else ``auto``, gated by its dev-F1 record (a sharded run decides
    once, before its workers start). An unpinned ``auto`` loads the model and times it here (once per
    machine, cached) with ``options``' window and batch size; otherwise the weights are not loaded."""
    asked = requested or read_saved_config(model_dir).prediction.precision or Precision.AUTO
    hardware = Hardware.detect(device)
    if is_auto(asked) and pinned() is None and len(measurable("prediction", hardware)) > 1:
        from ner_core.artifacts.modeldir import load_model_dir

        opts = (options or PredictionConfig()).model_copy(update={"precision": asked, "device": device})
        return Tagger.from_loaded(load_model_dir(model_dir), opts).precision_choice
    return choose(
        asked,
        purpose="prediction",
        hardware=hardware,
        record=read_precision_record(model_dir),
        timing=pinned() if is_auto(asked) else None,
    )
