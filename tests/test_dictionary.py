"""User dictionaries: reading (bad records in one line each, limits), Aho-Corasick matching and resolution,
exact CRF decoding under forced / forbidden spans against brute force over all tag paths (both backends),
and the span decoder's add / remove."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from ner_core.inference import dictionary as dic
from ner_core.inference.dictionary import (
    DictionaryError,
    DictionaryPlan,
    Entry,
    UserDictionary,
    apply_to_spans,
    decode_with_dictionary,
    load_dictionary,
)
from ner_core.schemes import span_tuples
from tests.test_crf import BACKENDS, hand_allowed, make_crf, path_allowed, path_score, tag_set

BIG = 1.0e5


# ------------------------------------------------------------------------------------------ brute force
def brute(crf, em, tags, scheme, n, forced=(), forbidden=()):
    """All allowed paths of length n holding every forced span and no forbidden one: (best path, its
    score, marginals (n, K)) by enumeration."""
    allowed = hand_allowed(tags, scheme)
    K = len(tags)
    paths, scores = [], []
    for path in itertools.product(range(K), repeat=n):
        if not path_allowed(allowed, path):
            continue
        ents = set(span_tuples([tags[k] for k in path], scheme))
        if not set(forced) <= ents or ents & set(forbidden):
            continue
        paths.append(path)
        scores.append(path_score(crf, em, path))
    scores = np.array(scores, dtype=np.float64)
    best = int(np.argmax(scores))
    w = np.exp(scores - scores.max())
    w /= w.sum()
    marg = np.zeros((n, K))
    for p, wt in zip(paths, w, strict=True):
        marg[np.arange(n), p] += wt
    return list(paths[best]), scores[best], marg


def run(crf, em, lengths, plans, tags, scheme, backend):
    T = em.shape[1]
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    paths, marg = decode_with_dictionary(crf, em, mask, plans, tags, scheme, backend=backend)
    return [paths[r, :n].tolist() for r, n in enumerate(lengths)], marg


def lure(tags, T, spans, seed):
    """Random emissions plus a huge bonus on the tags of ``spans`` (the model 'wants' them)."""
    g = torch.Generator().manual_seed(seed)
    em = torch.randn(T, len(tags), generator=g) * 3
    bioes = "S-PER" in tags
    for s, e, lab in spans:
        em[s, tags.index(f"S-{lab}" if e - s == 1 and bioes else f"B-{lab}")] += BIG
        for t in range(s + 1, e):
            em[t, tags.index(f"E-{lab}" if t == e - 1 and bioes else f"I-{lab}")] += BIG
    return em


# ------------------------------------------------------------------------------------------ decoding
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_forced_span_appears_even_against_strong_emissions(scheme, backend):
    tags = tag_set(scheme)
    crf = make_crf(len(tags), hand_allowed(tags, scheme), seed=1)
    T = 5
    em = torch.zeros(1, T, len(tags))
    em[0, :, 0] = BIG  # every position wants O by 1e5
    em[0, 2, tags.index("B-LOC")] = BIG / 2
    forced = [(1, 4, "PER")]
    paths, marg = run(crf, em, [T], [DictionaryPlan(forced=forced)], tags, scheme, backend)
    assert (1, 4, "PER") in span_tuples([tags[k] for k in paths[0]], scheme)
    best, _, bm = brute(crf, em[0], tags, scheme, T, forced=forced)
    assert paths[0] == best
    np.testing.assert_allclose(marg[0].numpy(), bm, atol=1e-5)
    assert np.allclose(marg[0, 1:4].max(dim=1).values.numpy(), 1.0)  # conditioned: certain of the span


FORBID_CASES = [
    # one span; the model wants exactly it
    ([(1, 3, "PER")], [(1, 3, "PER")]),
    # two ends from one start, and a second start inside the first's range (two slots of one label)
    ([(0, 2, "PER"), (0, 4, "PER"), (1, 3, "PER"), (1, 5, "PER")], [(0, 4, "PER")]),
    # single characters, two labels, the last position
    ([(2, 3, "LOC"), (4, 5, "PER"), (0, 1, "PER")], [(2, 3, "LOC"), (4, 5, "PER")]),
    # nested starts of one label whose ranges overlap, and one of the other label
    ([(0, 5, "LOC"), (1, 2, "LOC"), (2, 4, "LOC"), (1, 4, "PER")], [(0, 5, "LOC")]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
@pytest.mark.parametrize("case", range(len(FORBID_CASES)))
def test_forbidden_spans_never_appear_and_the_best_other_path_is_returned(case, scheme, backend):
    """Paths and marginals against brute force over every path, the model pulling towards the forbidden
    spans by 1e5; a second row without a plan decodes as without a dictionary."""
    forbidden, wanted = FORBID_CASES[case]
    tags = tag_set(scheme)
    crf = make_crf(len(tags), hand_allowed(tags, scheme), seed=case)
    T = 5
    em = torch.stack([lure(tags, T, wanted, seed=case), lure(tags, T, [], seed=case + 10)])
    free, _ = run(crf, em[:1], [T], [None], tags, scheme, backend)
    assert set(span_tuples([tags[k] for k in free[0]], scheme)) & set(forbidden)  # what the model wants
    paths, marg = run(crf, em, [T, T - 1], [DictionaryPlan(forbidden=forbidden), None], tags, scheme, backend)
    ents = set(span_tuples([tags[k] for k in paths[0]], scheme))
    assert not ents & set(forbidden)
    best, best_score, bm = brute(crf, em[0], tags, scheme, T, forbidden=forbidden)
    assert path_score(crf, em[0], tuple(paths[0])) == pytest.approx(best_score, rel=1e-6)
    assert paths[0] == best
    np.testing.assert_allclose(marg[0].numpy(), bm, atol=1e-5)
    mask = torch.tensor([[True] * (T - 1)])
    plain, _ = crf.viterbi_tensor(em[1:, : T - 1], mask, backend)
    assert paths[1] == plain[0].tolist()
    np.testing.assert_allclose(marg[1, : T - 1].numpy(), crf.marginals(em[1:, : T - 1], mask, backend)[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_marginals_under_forced_and_forbidden_spans_equal_brute_force_conditionals(seed, scheme, backend):
    tags = tag_set(scheme)
    crf = make_crf(len(tags), hand_allowed(tags, scheme), seed=seed)
    rng = np.random.default_rng(seed)
    T = 5
    em = torch.from_numpy(rng.normal(size=(2, T, len(tags))).astype(np.float32) * 2)
    forced = [(0, 2, "LOC")]
    forbidden = [(3, 5, "PER"), (3, 4, "PER"), (2, 5, "LOC"), (4, 5, "LOC")]
    plans = [DictionaryPlan(forced=forced, forbidden=forbidden), DictionaryPlan(forced=[(2, 3, "PER")])]
    paths, marg = run(crf, em, [T, T], plans, tags, scheme, backend)
    for r, plan in enumerate(plans):
        best, _, bm = brute(crf, em[r], tags, scheme, T, forced=plan.forced, forbidden=plan.forbidden)
        assert paths[r] == best
        np.testing.assert_allclose(marg[r].numpy(), bm, atol=1e-5)


def test_without_any_plan_decoding_is_exactly_the_plain_crf():
    tags = tag_set("BIOES")
    crf = make_crf(len(tags), hand_allowed(tags, "BIOES"), seed=4)
    em = torch.randn(3, 6, len(tags))
    mask = torch.ones(3, 6, dtype=torch.bool)
    paths, marg = decode_with_dictionary(crf, em, mask, [None, DictionaryPlan(), None], tags, "BIOES")
    assert torch.equal(paths, crf.viterbi_tensor(em, mask)[0])
    assert torch.equal(marg, crf.marginals(em, mask))


def test_iob1_models_are_refused_in_one_line():
    tags = ["O", "I-PER", "B-PER"]
    crf = make_crf(3, seed=0)
    with pytest.raises(ValueError, match="BIO, BIOES and BMES models, not IOB1"):
        decode_with_dictionary(
            crf,
            torch.zeros(1, 2, 3),
            torch.ones(1, 2, dtype=torch.bool),
            [DictionaryPlan([(0, 1, "PER")])],
            tags,
            "IOB1",
        )


# ------------------------------------------------------------------------------------------ resolution
def entries(*rows):
    return UserDictionary(
        [Entry(t, lab, mode, pri, line) for line, (t, lab, mode, pri) in enumerate(rows, 1)]
    )


def test_overlapping_forced_matches_longest_first_then_priority_then_earlier():
    d = entries(
        ("北京", "LOC", "force", 9),
        ("北京大学", "ORG", "force", 0),
        ("大学城", "LOC", "force", 5),  # as long as... no: shorter than 北京大学, overlaps it: dropped
        ("城里", "LOC", "force", 0),
        ("里人", "PER", "force", 1),  # same length as 城里, higher priority: kept; 城里 dropped
    )
    plan = d.plan("北京大学城里人")
    assert plan.forced == [(0, 4, "ORG"), (5, 7, "PER")]
    dropped = {(s, e, lab) for s, e, lab, _, _ in plan.dropped}
    assert dropped == {(0, 2, "LOC"), (2, 5, "LOC"), (4, 6, "LOC")}
    assert all("forced span" in why and ":" in why for *_, why in plan.dropped)
    assert plan.is_forced(0, 4, "ORG") and not plan.is_forced(0, 2, "LOC")
    assert not plan.is_forbidden(0, 4, "ORG")
    assert entries(("ab", "PER", "forbid", 0)).plan("xab").is_forbidden(1, 3, "PER")
    # equal length and priority: the earlier start wins
    plan = entries(("ab", "PER", "force", 0), ("bc", "PER", "force", 0)).plan("abc")
    assert plan.forced == [(0, 2, "PER")]


def test_force_and_forbid_of_one_span_priority_then_file_order():
    plan = entries(("张三", "PER", "forbid", 0), ("张三", "PER", "force", 0)).plan("张三说")
    assert plan.forced == [] and plan.forbidden == [(0, 2, "PER")]
    assert plan.dropped[0][:4] == (0, 2, "PER", "force")
    plan = entries(("张三", "PER", "forbid", 0), ("张三", "PER", "force", 1)).plan("张三说")
    assert plan.forced == [(0, 2, "PER")] and plan.forbidden == []
    # another label of the same text is another span: both stand
    plan = entries(("张三", "PER", "forbid", 0), ("张三", "ORG", "force", 0)).plan("张三说张三")
    assert plan.forced == [(0, 2, "ORG"), (3, 5, "ORG")]
    assert plan.forbidden == [(0, 2, "PER"), (3, 5, "PER")]


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_conflicting_forced_spans_decode_with_the_kept_one(scheme):
    """Overlapping forced matches never reach the CRF: the kept one is decoded, the dropped one is not
    forced (and the row has an allowed path: no penalised fallback)."""
    tags = tag_set(scheme)
    crf = make_crf(len(tags), hand_allowed(tags, scheme), seed=5)
    d = entries(("abc", "PER", "force", 0), ("cd", "LOC", "force", 9))
    plan = d.plan("xabcde")
    assert plan.forced == [(1, 4, "PER")]
    em = torch.zeros(1, 6, len(tags))
    em[0, 3:5, 0] = BIG
    paths, marg = run(crf, em, [6], [plan], tags, scheme, "torch")
    ents = span_tuples([tags[k] for k in paths[0]], scheme)
    assert (1, 4, "PER") in ents and not any(lab == "LOC" and s == 3 for s, _, lab in ents)
    assert torch.isfinite(marg).all()


def test_matching_finds_every_occurrence_with_many_entries():
    rng = np.random.default_rng(0)
    words = {
        "".join(chr(0x4E00 + int(c)) for c in rng.integers(0, 300, size=rng.integers(2, 5)))
        for _ in range(3000)
    }
    d = UserDictionary([Entry(w, "PER", "forbid", 0, i) for i, w in enumerate(sorted(words))])
    text = "".join(chr(0x4E00 + int(c)) for c in rng.integers(0, 300, size=2000))
    got = {(s, e) for s, e, _ in d.matches(text)}
    want = {(i, i + len(w)) for w in words for i in range(len(text)) if text.startswith(w, i)}
    assert got == want and want


# ------------------------------------------------------------------------------------------ reading
def test_jsonl_and_tsv_read_with_priority_header_and_bom(tmp_path):
    j = tmp_path / "d.jsonl"
    j.write_text(
        "\ufeff"
        + json.dumps({"text": "张三", "label": "PER", "mode": "force"}, ensure_ascii=False)
        + "\n\n"
        + json.dumps({"text": "北京", "label": "LOC", "mode": "forbid", "priority": 3}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    d = load_dictionary(j, labels=["PER", "LOC"])
    assert [(e.text, e.label, e.mode, e.priority, e.line) for e in d.entries] == [
        ("张三", "PER", "force", 0, 1),
        ("北京", "LOC", "forbid", 3, 3),
    ]
    t = tmp_path / "d.tsv"
    t.write_text(
        "text\tlabel\tmode\tpriority\n# a comment\n张三\tPER\tforce\n北京\tLOC\tforbid\t-2\n",
        encoding="utf-8",
    )
    d = load_dictionary(t)
    assert [(e.text, e.priority, e.line) for e in d.entries] == [("张三", 0, 3), ("北京", -2, 4)]


def test_every_bad_record_is_one_line_naming_file_line_and_problem(tmp_path):
    p = tmp_path / "bad.jsonl"
    rows = [
        '{"text": "张三", "label": "PER", "mode": "force"}',
        "not json",
        '{"text": "", "label": "PER", "mode": "force"}',
        '{"text": "李四", "label": "PER", "mode": "maybe"}',
        '{"text": "王五", "label": "PER", "mode": "force", "priority": "high"}',
        '{"text": " 赵六", "label": "PER", "mode": "force"}',
        '{"text": "钱七", "label": "PER", "mode": "force", "weight": 2}',
        '{"text": "孙八", "label": "ORG", "mode": "force"}',
        "[1, 2]",
        "[" * 2000 + "]" * 2000,
    ]
    p.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DictionaryError) as exc:
        load_dictionary(p, labels=["PER"])
    lines = str(exc.value).splitlines()
    assert [ln.split(": ", 1)[0] for ln in lines] == [f"{p}:{i}" for i in range(2, 11)]
    for ln, word in zip(
        lines,
        [
            "JSON",
            "non-empty",
            "mode",
            "priority",
            "whitespace",
            "unknown field",
            "label 'ORG'",
            "JSON object",
            "nested too deeply",
        ],
        strict=True,
    ):
        assert word in ln, ln
    t = tmp_path / "bad.tsv"
    t.write_text("张三\tPER\n李四\tPER\tforce\tx\n", encoding="utf-8")
    with pytest.raises(DictionaryError, match=r"bad.tsv:1: expected 3 or 4 tab-separated") as exc:
        load_dictionary(t)
    assert "bad.tsv:2: priority must be an integer" in str(exc.value)


def test_untrusted_limits_size_line_length_text_length_format(tmp_path, monkeypatch):
    p = tmp_path / "d.tsv"
    p.write_text("a" * (dic.MAX_LINE_BYTES + 10) + "\tPER\tforce\n张三\tPER\tforce\n", encoding="utf-8")
    with pytest.raises(DictionaryError, match=r"d.tsv:1: line longer than") as exc:
        load_dictionary(p)
    assert len(str(exc.value).splitlines()) == 1  # the long line's rest is skipped, line 2 is fine
    p.write_text("啊" * (dic.MAX_TEXT_CHARS + 1) + "\tPER\tforce\n", encoding="utf-8")
    with pytest.raises(DictionaryError, match=r"d.tsv:1: text is \d+ characters, more than the limit"):
        load_dictionary(p)
    monkeypatch.setattr(dic, "MAX_FILE_BYTES", 10)
    p.write_text("张三\tPER\tforce\n", encoding="utf-8")
    with pytest.raises(DictionaryError, match=r"d.tsv: \d+ bytes, more than the limit of 10"):
        load_dictionary(p)
    with pytest.raises(DictionaryError, match="unknown dictionary format '.csv'"):
        load_dictionary(tmp_path / "d.csv")
    with pytest.raises(DictionaryError, match="cannot read"):
        load_dictionary(tmp_path / "missing.tsv")
    monkeypatch.setattr(dic, "MAX_FILE_BYTES", 1 << 20)
    monkeypatch.setattr(dic, "MAX_ENTRIES", 2)
    p.write_text("a\tPER\tforce\nb\tPER\tforce\nc\tPER\tforce\n", encoding="utf-8")
    with pytest.raises(DictionaryError, match=r"d.tsv:3: more than 2 records"):
        load_dictionary(p)


def test_check_labels_names_the_entries_the_model_does_not_know():
    d = entries(("张三", "PER", "force", 0), ("某地", "GPE", "forbid", 0))
    d.check_labels(["PER", "GPE"])
    with pytest.raises(DictionaryError, match=r"<entries>:2: label 'GPE' is not one of the model's labels"):
        d.check_labels(["PER", "LOC"])


# ------------------------------------------------------------------------------------------ span decoder
def test_span_decoder_adds_forced_with_probability_one_and_removes_forbidden():
    spans = [(0, 2, "PER", 0.7), (1, 3, "LOC", 0.9), (4, 6, "ORG", 0.6), (4, 6, "PER", 0.55)]
    plan = DictionaryPlan(forced=[(1, 3, "LOC"), (3, 4, "PER")], forbidden=[(4, 6, "ORG")])
    got = apply_to_spans(spans, plan)
    assert got == [
        (0, 2, "PER", 0.7, False),
        (1, 3, "LOC", 1.0, True),
        (3, 4, "PER", 1.0, True),
        (4, 6, "PER", 0.55, False),
    ]
    flat = apply_to_spans(spans, plan, flat=True)
    assert flat == [(1, 3, "LOC", 1.0, True), (3, 4, "PER", 1.0, True), (4, 6, "PER", 0.55, False)]
    assert apply_to_spans(spans, None) == [(*s, False) for s in spans]


@pytest.mark.parametrize("backend", BACKENDS)
def test_crf_allowed_tags_with_no_allowed_path_fall_back_to_penalties_not_nan(backend):
    """Per-position masks that leave a position no tag at all: the CRF's penalised fallback answers (the
    least bad tag there), never NaN; the other row is decoded exactly under its masks."""
    tags = tag_set("BIO")
    crf = make_crf(len(tags), hand_allowed(tags, "BIO"), seed=2)
    em = torch.randn(2, 4, len(tags))
    ok = torch.ones(2, 4, len(tags), dtype=torch.bool)
    ok[0, 2] = False
    ok[1, 1] = False
    ok[1, 1, tags.index("B-LOC")] = True
    mask = torch.ones(2, 4, dtype=torch.bool)
    paths, _ = crf.viterbi_tensor(em, mask, backend, allowed_tags=ok)
    marg = crf.marginals(em, mask, backend, allowed_tags=ok)
    assert torch.isfinite(marg).all()
    assert paths[1, 1] == tags.index("B-LOC") and float(marg[1, 1, tags.index("B-LOC")]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="allowed_tags of shape"):
        crf.viterbi_tensor(em, mask, backend, allowed_tags=ok[:, :3])


@pytest.mark.skipif(BACKENDS[1].marks[0].args[0], reason="no C compiler for the CRF kernel")
@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_c_kernel_and_torch_agree_on_a_batch_of_mixed_rows(scheme):
    """More rows than the kernel's 8-row block, some with forced / forbidden spans and some without, of
    several lengths: the sparse (masked) and dense paths of the kernel give the torch results."""
    tags = tag_set(scheme)
    crf = make_crf(len(tags), hand_allowed(tags, scheme), seed=7)
    rng = np.random.default_rng(7)
    R, T = 11, 30
    em = torch.from_numpy(rng.normal(size=(R, T, len(tags))).astype(np.float32) * 3)
    lengths = [T, 12, 30, 7, 30, 25, 30, 1, 30, 18, 29]
    plans = []
    for r in range(R):
        spans = [
            (s, s + k, ["PER", "LOC"][int(rng.integers(2))])
            for s, k in zip(
                rng.integers(0, max(lengths[r] - 3, 1), size=4).tolist(),
                rng.integers(1, 4, size=4).tolist(),
                strict=True,
            )
            if s + k <= lengths[r]
        ]
        plans.append(None if r % 3 == 0 else DictionaryPlan(forced=spans[:1], forbidden=spans[1:]))
    # a forbid equal to a forced span: the force stands
    plans[1] = DictionaryPlan(forced=[(2, 5, "PER")], forbidden=[(2, 5, "PER"), (0, 2, "LOC")])
    by = {b: run(crf, em, lengths, plans, tags, scheme, b) for b in ("c", "torch")}
    assert by["c"][0] == by["torch"][0]
    np.testing.assert_allclose(by["c"][1].numpy(), by["torch"][1].numpy(), atol=1e-5)
    for r, plan in enumerate(plans):
        ents = set(span_tuples([tags[k] for k in by["c"][0][r]], scheme))
        if plan:
            assert set(plan.forced) <= ents and not ents & (set(plan.forbidden) - set(plan.forced)), (
                r,
                plan,
                ents,
            )


def test_plans_that_contradict_themselves_are_refused_in_one_line():
    tags = tag_set("BIO")
    crf = make_crf(len(tags), hand_allowed(tags, "BIO"), seed=0)
    em, mask = torch.zeros(1, 5, len(tags)), torch.ones(1, 5, dtype=torch.bool)
    bad = DictionaryPlan(forced=[(0, 3, "PER"), (2, 4, "LOC")])
    with pytest.raises(ValueError, match=r"row 0: forced span \[2, 4\) LOC overlaps another"):
        decode_with_dictionary(crf, em, mask, [bad], tags, "BIO")
    with pytest.raises(ValueError, match="row 0: a forbidden span lies outside"):
        decode_with_dictionary(crf, em, mask, [DictionaryPlan(forbidden=[(3, 6, "PER")])], tags, "BIO")
