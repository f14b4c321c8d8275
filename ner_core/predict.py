"""Moved: the tagger is :mod:`ner_core.inference.tagger` (this path keeps working; see
:mod:`ner_core._moved`)."""

from ner_core._moved import moved

_NEW = "ner_core.inference.tagger"
__getattr__ = moved(
    __name__,
    {
        n: _NEW
        for n in (
            "Tagger",
            "PredictedEntity",
            "DocumentPrediction",
            "default_stride",
            "resolve_device",
            "token_entropy",
            "choose_for_model_dir",
        )
    },
)
