"""The network: encoder loading (``encoder``), heads (``heads``), the constrained CRF (``crf``, with its C
kernels in ``_ckernel`` / ``csrc/``), dropout masks (``fast_dropout``), the span decoder (``span``:
Efficient GlobalPointer and its loss) and the whole tagger network (``network.NERModel``)."""

from ner_core._moved import moved

__getattr__ = moved(__name__, {"NERModel": "ner_core.model.network"})
