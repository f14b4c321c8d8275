"""The seqeval cross-check reads invalid tag sequences (``I-`` without ``B-``, a type change inside an
entity, an ``E-`` without its ``B-``) the way the project's decoding does, conlleval-like, in every
scheme: BIO and BIOES are canonicalised first, as IOB1 and BMES always were."""

from __future__ import annotations

import pytest

from ner_core.metrics import entity_prf, seqeval_prf
from ner_core.schemes import convert_tags, tags_to_spans

#: (scheme, gold, prediction) with ill-formed predictions.
CASES = [
    ("BIO", ["B-PER", "I-PER", "O", "B-LOC"], ["I-PER", "I-PER", "O", "B-LOC"]),  # opened by I-
    ("BIO", ["B-PER", "B-LOC", "O"], ["I-PER", "I-LOC", "O"]),  # type change, no B- at all
    ("BIO", ["B-PER", "O", "O", "O"], ["I-PER", "O", "I-PER", "I-PER"]),
    ("BIOES", ["B-PER", "E-PER", "O", "S-LOC"], ["I-PER", "E-PER", "O", "S-LOC"]),
    ("BIOES", ["B-PER", "E-PER", "O", "S-LOC"], ["B-PER", "I-PER", "O", "E-LOC"]),  # unclosed, E- alone
    ("BIOES", ["S-PER", "B-LOC", "E-LOC", "O"], ["I-PER", "I-LOC", "E-LOC", "O"]),
    ("IOB1", ["I-PER", "I-PER", "O", "I-LOC"], ["B-PER", "I-PER", "O", "I-LOC"]),  # B- after no entity
    ("BMES", ["B-PER", "E-PER", "O", "S-LOC"], ["M-PER", "E-PER", "O", "S-LOC"]),
    ("BMES", ["B-PER", "E-PER", "O", "S-LOC"], ["B-PER", "M-PER", "O", "E-LOC"]),
]


@pytest.mark.parametrize("scheme,gold,pred", CASES)
def test_seqeval_cross_check_reads_invalid_sequences_like_the_decoding(scheme, gold, pred):
    assert convert_tags(pred, scheme, scheme) != pred  # the prediction is ill-formed
    expected = entity_prf([tags_to_spans(gold, scheme)], [tags_to_spans(pred, scheme)])[:3]
    assert expected != (0.0, 0.0, 0.0)
    assert seqeval_prf([gold], [pred], scheme)[:3] == pytest.approx(expected, abs=1e-12)


def test_an_entity_opened_by_i_counts_as_found():
    gold, pred = [["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]]
    assert seqeval_prf(gold, pred, "BIO")[:3] == (1.0, 1.0, 1.0)
    # the same sequences in IOB1, where I- opens an entity by design, always agreed
    assert seqeval_prf([["I-PER", "I-PER", "O"]], pred, "IOB1")[:3] == (1.0, 1.0, 1.0)
