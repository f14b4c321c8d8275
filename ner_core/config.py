"""One pydantic configuration tree: the single source of hyper-parameters.

The CLI flags, the Prefect flow parameters and the saved model directory all use :class:`NERConfig`.
Every model forbids unknown keys, so a typo in a flag, a YAML file or a saved ``config.json`` is an
error that names the key instead of being silently ignored.

Names follow the seed (keras-bert-ner) where one existed: ``max_epochs``, ``hard_epochs``,
``best_fit``, ``batch_size``, ``max_len``, ``learning_rate``, ``dropout_rate``, ``rnn_units``,
``rnn_num_hidden_layers``, ``cnn_filters``, ``cnn_kernel_size``, ``cnn_blocks``, ``device``.
The seed's ``tag_padding`` is not needed: padding is handled by masks.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ner_core.schemes import Scheme, TrainingScheme


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Precision(StrEnum):
    """The ``precision`` setting of ``ner train``, ``ner predict``, ``ner serve`` and the flows (what each
    value runs and how ``auto`` chooses: :mod:`ner_core.runtime.precision`)."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"


class HeadType(StrEnum):
    """Layers between the encoder and the CRF."""

    BILSTM = "bilstm"
    BIGRU = "bigru"
    IDCNN = "idcnn"
    NONE = "none"


class DataConfig(_Strict):
    dataset: str = Field("sample", description="dataset name in DuckDB (or a label for file input)")
    scheme: TrainingScheme = Field(
        Scheme.BIOES, description="tag scheme the model is trained in; spans are converted on the fly"
    )
    max_len: int = Field(
        128,
        ge=8,
        le=510,
        description="characters per model window ([CLS]/[SEP] come on top, so BERT's 512 = 510 here)",
    )
    untyped_label: str = Field("ENT", description="label given to untyped B/I/O entities (seed data)")

    @model_validator(mode="before")
    @classmethod
    def _drop_window_stride(cls, data: Any) -> Any:
        # ``window_stride`` was a field that nothing read (training cuts texts into chunks, prediction
        # has its own stride). Configurations saved while it existed still carry it: model directories'
        # ner_config.json, runs' config.json and the runs.config column in DuckDB. Drop it so they load.
        if isinstance(data, dict) and "window_stride" in data:
            data = {k: v for k, v in data.items() if k != "window_stride"}
        return data


class EncoderConfig(_Strict):
    name: str = Field(
        "m3e-small",
        description=(
            "short name (m3e-small: the packaged encoder, research / non-commercial use only), "
            "a local folder with a HF model, or a hub id (needs network or a warm cache)"
        ),
    )
    freeze: bool = Field(False, description="keep the encoder's weights fixed")
    dropout_rate: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on the encoder's output")


class HeadConfig(_Strict):
    type: HeadType = Field(HeadType.BILSTM, description="bilstm | bigru | idcnn | none")
    rnn_units: int = Field(128, ge=1, description="hidden units per direction (BiLSTM/BiGRU)")
    rnn_num_hidden_layers: int = Field(1, ge=1, description="stacked recurrent layers")
    cnn_filters: int = Field(128, ge=1, description="IDCNN filters")
    cnn_kernel_size: int = Field(3, ge=1, description="IDCNN kernel width (odd)")
    cnn_dilations: list[int] = Field(default_factory=lambda: [1, 1, 2], description="dilations of one block")
    cnn_blocks: int = Field(4, ge=1, description="times the block is applied (shared weights)")
    dropout_rate: float = Field(0.1, ge=0.0, lt=1.0, description="dropout inside the head")

    @field_validator("cnn_kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"cnn_kernel_size must be odd to keep the sequence length, got {v}")
        return v

    @field_validator("cnn_dilations")
    @classmethod
    def _dilations(cls, v: list[int]) -> list[int]:
        if not v or any(d < 1 for d in v):
            raise ValueError(f"cnn_dilations must be a non-empty list of positive ints, got {v}")
        return v


class CRFConfig(_Strict):
    constrained: bool = Field(True, description="forbid transitions the scheme disallows (O -> I-X, ...)")


class DecoderType(StrEnum):
    """What turns the head's features into entities: the CRF over tags (flat entities only) or the span
    decoder (Efficient GlobalPointer, :mod:`ner_core.model.span`: every (start, end, label) scored on its
    own, so entities may nest or share a span)."""

    CRF = "crf"
    SPAN = "span"


class DecoderConfig(_Strict):
    """The decoder. A configuration saved before the span decoder has no ``decoder`` section and reads as
    the CRF; the span settings below mean nothing to a CRF model."""

    type: DecoderType = Field(DecoderType.CRF, description="crf (flat entities) | span (nested entities)")
    max_span_len: int | None = Field(
        None,
        ge=1,
        description="span: longest entity scored, in characters (default: the training data's longest "
        "entity, set when training starts and saved)",
    )
    threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="span: an entity is every span whose probability reaches this"
    )
    overlap: Literal["allow", "flat"] | None = Field(
        None,
        description="span: allow nested output, or flat (overlaps resolved greedily by score); default: "
        "allow when the training data has nested entities, else flat (set when training starts)",
    )
    head_size: int = Field(64, ge=2, description="span: size of the start/end projections (even, RoPE)")

    @field_validator("head_size")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"head_size must be even (rotary encoding rotates pairs), got {v}")
        return v


class TrainingConfig(_Strict):
    max_epochs: int = Field(10, ge=1, description="upper bound on epochs")
    hard_epochs: int | None = Field(None, ge=1, description="train exactly this many epochs, no early stop")
    best_fit: bool = Field(True, description="early stopping + LR reduction on dev entity F1, best kept")
    early_stop_patience: int = Field(3, ge=1)
    reduce_lr_patience: int = Field(1, ge=1)
    reduce_lr_factor: float = Field(0.5, gt=0.0, lt=1.0)
    batch_size: int = Field(16, ge=1)
    learning_rate: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        5e-5,
        description="encoder learning rate; auto: chosen by the encoder's parameter count (under 40M 1e-4, "
        "under 300M 5e-5, else 2e-5; ner_core.training.recipes.encoder_learning_rate) when training starts, "
        "and saved as that number",
    )
    head_learning_rate: float = Field(1e-3, gt=0)
    crf_learning_rate: float = Field(1e-2, gt=0, description="the CRF usually needs a much larger one")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)
    grad_accum_steps: int = Field(1, ge=1)
    seed: int = 42
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    precision: Precision = Field(
        Precision.AUTO,
        description="auto (bf16 on CPUs with bf16 units and GPUs with bf16, fp16 on other GPUs, else fp32), "
        "fp32, bf16 or fp16; the CRF and the loss stay fp32",
    )
    max_train_seconds: float | None = Field(None, gt=0, description="time budget; stops after the epoch")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")
    # Recipes (issue 26). Each is off by default and a configuration saved before them, which lacks the
    # field, reads as off: an old run resumes exactly as it was trained.
    layer_lr_decay: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="layer-wise LR decay: encoder layer i of L trains at learning_rate * decay^(L - i), the "
        "embeddings at decay^(L + 1) (unset or 1.0: off)",
    )
    adversarial: Literal["none", "fgm", "pgd"] = Field(
        "none",
        description="fgm: a second forward/backward pass with the word embeddings moved along their "
        "gradient; pgd: adv_steps such moves of adv_alpha each, kept within adv_epsilon, the last one's "
        "gradient kept",
    )
    adv_epsilon: float = Field(
        1.0, gt=0.0, description="fgm, pgd: L2 norm of the word-embedding perturbation (pgd: its bound)"
    )
    adv_steps: int = Field(3, ge=1, description="pgd: ascent steps per batch")
    adv_alpha: float | None = Field(
        None, gt=0.0, description="pgd: L2 norm of one ascent step (unset: adv_epsilon / adv_steps)"
    )
    ema_decay: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="exponential moving average of the weights (e.g. 0.999), evaluated and saved instead of "
        "the raw weights (unset: off)",
    )
    adapt_seconds: float | None = Field(
        None,
        gt=0,
        description="first adapt the encoder to the training texts (masked-LM, `ner adapt`) for this many "
        "seconds, then train on the adapted encoder (unset: off)",
    )
    # Self-training (issue 26, ner_core.training.self_training): off unless an unlabeled source is given;
    # the silver settings below apply to it only.
    unlabeled: list[str] | None = Field(
        None,
        description="self-training: unlabeled text files (one text a line, or any supported format, labels "
        "ignored) that the trained model tags; its confident documents become weighted silver training "
        "data of another round (unset: off)",
    )
    unlabeled_dataset: str | None = Field(
        None,
        description="self-training: the texts of this stored dataset (every split, its latest version when "
        "the run starts) instead of files (unset: off)",
    )
    silver_min_confidence: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="self-training: a tagged document with entities is silver when each entity's raw "
        "(uncalibrated) confidence reaches this",
    )
    silver_max_uncertainty: float = Field(
        0.01,
        ge=0.0,
        description="self-training: a tagged document without entities is silver when its uncertainty per "
        "character (summed entropy / characters, nats) is at most this",
    )
    silver_weight: float = Field(
        0.5, gt=0.0, le=1.0, description="self-training: loss weight of a silver document (gold: 1)"
    )
    self_train_rounds: int = Field(
        1, ge=1, description="self-training: rounds of tagging and retraining after the first training"
    )
    # Distillation (issue 26, ner_core.training.distillation): off unless a teacher is given; with one, the
    # unlabeled texts above are distilled on (the teacher's soft targets only) instead of self-trained on.
    teacher: str | None = Field(
        None,
        description="distillation: a teacher's model directory or run id; the student trains on gold plus "
        "the teacher's soft targets (CRF marginals, span probabilities), also on --unlabeled texts "
        "(unset: off)",
    )
    distill_alpha: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="distillation: weight of the teacher's targets; gold documents' loss is (1 - alpha) * "
        "gold + alpha * teacher, unlabeled documents' alpha * teacher",
    )
    distill_temperature: float = Field(
        1.0, gt=0.0, description="distillation: the teacher's scores are divided by this before its targets"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v == "cpu" or v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {v!r}")

    @model_validator(mode="before")
    @classmethod
    def _mixed_precision(cls, data: Any) -> Any:
        # configurations saved before ``precision`` carry ``mixed_precision`` (see legacy_precision)
        return legacy_precision(data, "mixed_precision")

    @property
    def self_training(self) -> bool:
        """Whether the run self-trains: an unlabeled source is set and no teacher (with one, the unlabeled
        texts are distilled on)."""
        return bool(self.unlabeled or self.unlabeled_dataset) and not self.teacher

    @property
    def distilling(self) -> bool:
        """Whether the run distils a teacher (``teacher`` set)."""
        return bool(self.teacher)

    @model_validator(mode="after")
    def _pgd_settings_need_pgd(self) -> TrainingConfig:
        # meaningless otherwise; refusing them also keeps them out of a saved configuration (to_json)
        given = [k for k in _PGD_SETTINGS if getattr(self, k) != TrainingConfig.model_fields[k].default]
        if given and self.adversarial != "pgd":
            raise ValueError(f"training.{given[0]} applies to --adversarial pgd only: add it or leave it out")
        return self

    @model_validator(mode="after")
    def _silver_settings_need_an_unlabeled_source(self) -> TrainingConfig:
        # without one they mean nothing; refusing them also keeps a plain run's saved configuration free of
        # them (to_json), so older code reads it
        if self.unlabeled is not None and self.unlabeled_dataset is not None:
            raise ValueError("give the unlabeled texts as files (unlabeled) or a dataset, not both")
        if self.unlabeled is not None and not self.unlabeled:
            raise ValueError("unlabeled: no files given")
        if not self.self_training:
            given = [k for k in _SILVER_FIELDS if getattr(self, k) != TrainingConfig.model_fields[k].default]
            if given and self.teacher:
                raise ValueError(
                    f"training.{given[0]} applies to self-training, which --teacher replaces (its unlabeled "
                    "texts are distilled on): drop one of them"
                )
            if given:
                raise ValueError(
                    f"training.{given[0]} applies to self-training only: add --unlabeled FILES (or "
                    "--unlabeled_dataset NAME) or leave it out"
                )
        if not self.teacher:
            given = [
                k for k in _DISTILL_SETTINGS if getattr(self, k) != TrainingConfig.model_fields[k].default
            ]
            if given:
                raise ValueError(
                    f"training.{given[0]} applies to distillation only: add --teacher or leave it out"
                )
        return self


class PredictionConfig(_Strict):
    """How a model tags: the options of ``ner predict``, ``ner serve`` and the prediction flows, and the
    ``prediction`` section a model directory saves. A field left ``None`` means "not set": an option
    falls back to the model's saved value, a saved value to the default named in its description."""

    window: int | None = Field(
        None, ge=8, description="characters per window (default: the model's data.max_len)"
    )
    stride: int | None = Field(
        None,
        ge=1,
        description="the most characters between window starts, <= window (default: the window; windows "
        "spread evenly)",
    )
    batch_size: int | None = Field(None, ge=1, description="windows per forward pass (default 32)")
    device: str | None = Field(
        None, description="cpu, cuda, cuda:N or auto (default auto: CUDA when present, else CPU)"
    )
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")
    precision: Precision | None = Field(
        None,
        description="auto, fp32, bf16, fp16 or int8 (default auto: the fastest the hardware runs whose "
        "recorded dev F1 stays within 0.2 points of fp32's)",
    )
    span_threshold: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="span models: an entity is every span whose probability reaches this (default: the "
        "model's decoder.threshold); refused for a CRF model",
    )
    overlap: Literal["allow", "flat"] | None = Field(
        None,
        description="span models: allow nested entities, or flat (overlaps resolved greedily by probability) "
        "(default: the model's decoder.overlap); refused for a CRF model",
    )
    dictionary: str | None = Field(
        None,
        description="a user dictionary file (JSONL or TSV: text, label, mode force|forbid, optional "
        "priority): forced spans are always entities, forbidden ones never (ner_core.inference.dictionary)",
    )

    @model_validator(mode="before")
    @classmethod
    def _quantize(cls, data: Any) -> Any:
        # configurations saved before ``precision`` carry ``quantize`` (see legacy_precision)
        return legacy_precision(data, "quantize")

    @model_validator(mode="before")
    @classmethod
    def _window_named_max_len(cls, data: Any) -> Any:
        """A ``ner_config.json`` saved before the options were unified names the window ``max_len``; it loads
        as ``window``. Such a section also always holds ``device: "cpu"``, the old default, which the commands
        never used (they tagged on ``auto``): it loads as unset, so the model still tags where it did."""
        if isinstance(data, dict) and "max_len" in data:
            data = dict(data)
            max_len = data.pop("max_len")
            if data.get("device") == "cpu":
                data["device"] = None
            if data.get("window") is None:
                data["window"] = max_len
            elif max_len is not None and max_len != data["window"]:
                raise ValueError(f"prediction: max_len ({max_len}) and window ({data['window']}) disagree")
        return data


def legacy_precision(data: Any, key: str) -> Any:
    """Map a retired setting onto ``precision`` so that configurations saved with it still load.

    - ``training.mixed_precision``: autocast fp16 on CUDA, ignored on CPU. ``true`` becomes ``fp16`` on a
      CUDA device and ``fp32`` on CPU (what such a run computed, so it resumes exactly); ``false`` ``fp32``.
    - ``prediction.quantize``: ``"int8"`` becomes ``int8``, ``"none"`` ``fp32`` (the model tags as it did);
      ``null`` stays unset.
    Both the old and the new key at once must agree.
    """
    if not isinstance(data, dict) or key not in data:
        return data
    data = dict(data)
    old = data.pop(key)
    if key == "mixed_precision":
        on_cuda = str(data.get("device", "cpu")).startswith("cuda")
        mapped = "fp16" if (old and on_cuda) else "fp32"
    else:
        mapped = {"int8": "int8", "none": "fp32", None: None}.get(old, old)
    if mapped is None:
        return data
    if data.get("precision") is not None and str(data["precision"]) != mapped:
        raise ValueError(f"{key}={old!r} (retired, read as precision {mapped}) and precision disagree")
    data["precision"] = mapped
    return data


#: training options added with the recipes, left out of a saved configuration while at their defaults
_RECIPE_FIELDS = (
    "layer_lr_decay",
    "adversarial",
    "adv_epsilon",
    "adv_steps",
    "adv_alpha",
    "ema_decay",
    "adapt_seconds",
)
#: PGD's own settings: refused without ``adversarial pgd`` (they would mean nothing)
_PGD_SETTINGS = ("adv_steps", "adv_alpha")
#: self-training's settings: all written while it is on (a resume then keeps them whatever later defaults
#: become), all left out while it is off (it is off unless an unlabeled source is given)
_SILVER_FIELDS = ("silver_min_confidence", "silver_max_uncertainty", "silver_weight", "self_train_rounds")
_SELF_TRAINING_FIELDS = ("unlabeled", "unlabeled_dataset", *_SILVER_FIELDS)
#: distillation's settings: all written while a teacher is set, all left out while none is (old code reads it)
_DISTILL_SETTINGS = ("distill_alpha", "distill_temperature")
_DISTILL_FIELDS = ("teacher", *_DISTILL_SETTINGS)


class NERConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    crf: CRFConfig = Field(default_factory=CRFConfig)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    prediction: PredictionConfig = Field(default_factory=PredictionConfig)

    @model_validator(mode="after")
    def _span_settings_need_the_span_decoder(self) -> NERConfig:
        # a CRF model has no use for them; refusing them also keeps a CRF configuration's ``decoder``
        # section at its default, which to_json leaves out (older code reads the file)
        if self.decoder.type is DecoderType.CRF:
            default = DecoderConfig()
            given = [k for k in ("max_span_len", "threshold", "overlap", "head_size")
                     if getattr(self.decoder, k) != getattr(default, k)]  # fmt: skip
            if given:
                raise ValueError(
                    f"decoder.{given[0]} applies to the span decoder only: add --decoder span "
                    "(decoder.type: span) or leave it out"
                )
        return self

    def to_json(self) -> str:
        """The configuration as JSON. A default ``decoder`` section (the CRF) is left out, so a CRF model's
        saved configuration stays what code from before the span decoder reads (it forbids unknown keys);
        reading it back gives the same configuration. So are the prediction section's span options and user
        dictionary while unset, the training recipes while off and self-training's and distillation's fields
        while they are off."""
        exclude: dict[str, Any] = {}
        if self.decoder == DecoderConfig():
            exclude["decoder"] = True
        unset = {
            k for k in ("span_threshold", "overlap", "dictionary") if getattr(self.prediction, k) is None
        }
        if unset:
            exclude["prediction"] = unset
        # the training recipes while off (their defaults): a run without them saves what older code reads
        defaults = TrainingConfig.model_fields
        off = {k for k in _RECIPE_FIELDS if getattr(self.training, k) == defaults[k].default}
        # an attack's settings are written while it is on, so a resume keeps them whatever later defaults are
        if self.training.adversarial != "none":
            off -= {"adv_epsilon", *(_PGD_SETTINGS if self.training.adversarial == "pgd" else ())}
        off |= {k for k in _SELF_TRAINING_FIELDS if getattr(self.training, k) is None}
        if not self.training.self_training:
            off |= set(_SILVER_FIELDS)
        if not self.training.distilling:
            off |= set(_DISTILL_FIELDS)
        if off:
            exclude["training"] = off
        return self.model_dump_json(indent=2, exclude=exclude or None)

    @classmethod
    def from_file(cls, path: str | Path) -> NERConfig:
        p = Path(path)
        try:
            raw: Any = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: configuration file not found") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
        return cls.model_validate(raw)

    def with_overrides(self, overrides: dict[str, Any]) -> NERConfig:
        """Return a copy with dotted keys replaced, e.g. ``{"head.type": "idcnn"}``; validated."""
        data = self.model_dump(mode="json")
        for key, value in overrides.items():
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                if part not in node or not isinstance(node[part], dict):
                    raise KeyError(f"unknown configuration key {key!r}")
                node = node[part]
            if parts[-1] not in node:
                raise KeyError(f"unknown configuration key {key!r}")
            node[parts[-1]] = value
        return NERConfig.model_validate(data)
