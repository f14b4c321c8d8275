"""Constrained decoding and marginals are exact whatever the emissions: forbidden moves are removed, not
penalised, so emissions far above any finite penalty (1e5 here) never buy a forbidden path back, and
the marginals put exactly zero on it. Both backends (C kernel and torch), against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ner_core.model.crf import DISALLOWED, ConstrainedCRF
from tests.test_crf import BACKENDS, brute, decode, hand_allowed, make_crf, path_allowed, path_score, tag_set

BIG = 1.0e5


def lure(tags: list[str]) -> torch.Tensor:
    """Emissions (1, 2, K) whose best path by far is the forbidden ``O -> I-PER`` (worth 2e5); the allowed
    ``O -> O``, ``O -> B-*`` and ``B-PER -> I-PER`` are worth 1e5 each, so their marginals are mixed."""
    em = torch.zeros(1, 2, len(tags))
    em[0, 0, tags.index("O")] = BIG
    em[0, 1, tags.index("I-PER")] = BIG
    return em


@pytest.mark.parametrize("backend", BACKENDS)
def test_emissions_far_above_any_penalty_never_give_a_forbidden_path(backend):
    tags = tag_set("BIO")
    allowed = hand_allowed(tags, "BIO")
    crf = make_crf(len(tags), allowed, seed=3)
    em = lure(tags)
    mask = torch.ones(1, 2, dtype=torch.bool)
    path = decode(crf, em, mask, backend)[0]
    assert path_allowed(allowed, path), [tags[i] for i in path]
    assert path == brute(crf, em[0], 2, allowed)[1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme,seed", [("BIO", 0), ("BIOES", 1), ("BIOES", 2)])
def test_viterbi_at_emissions_of_1e5_equals_brute_force_over_allowed_paths(scheme, seed, backend):
    """Random emissions of magnitude 1e5 and random extra restrictions on top of the scheme (O stays
    open, so every row has an allowed path): the decoded path is the best allowed one."""
    tags = tag_set(scheme)
    K = len(tags)
    start, trans, end = hand_allowed(tags, scheme)
    rng = np.random.default_rng(seed)
    trans = trans & (rng.random((K, K)) < 0.7)
    trans[0, 0] = start[0] = end[0] = True
    allowed = (start, trans, end)
    crf = make_crf(K, allowed, seed=seed)
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 3 if scheme == "BIOES" else 4
    em = torch.randn(B, T, K, generator=g) * BIG
    lengths = torch.tensor([T, 1, 2, T, T - 1, T])
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    paths = decode(crf, em, mask, backend)
    for b in range(B):
        n = int(lengths[b])
        assert path_allowed(allowed, paths[b]), (b, [tags[i] for i in paths[b]])
        assert paths[b] == brute(crf, em[b], n, allowed)[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_marginals_at_emissions_of_1e5_are_exact_and_zero_on_forbidden_moves(backend):
    tags = tag_set("BIO")
    allowed = hand_allowed(tags, "BIO")
    crf = make_crf(len(tags), allowed, seed=3)
    em = lure(tags)
    mask = torch.ones(1, 2, dtype=torch.bool)
    marg = crf.marginals(em, mask, backend=backend)
    assert torch.isfinite(marg).all()
    expected = brute(crf, em[0], 2, allowed)[2]
    assert 0.01 < expected[1, tags.index("I-PER")] < 0.99  # the lure leaves a genuine mixture
    np.testing.assert_allclose(marg[0].numpy(), expected, atol=1e-5)
    # p(O at 0, I-PER at 1) = 0 exactly: p(I-PER at 1) comes from B-PER at 0 alone
    assert float(marg[0, 1, tags.index("I-PER")]) == pytest.approx(float(marg[0, 0, tags.index("B-PER")]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme,seed", [("BIO", 4), ("BIOES", 5)])
def test_random_marginals_at_emissions_of_1e5_equal_brute_force(scheme, seed, backend):
    tags = tag_set(scheme)
    allowed = hand_allowed(tags, scheme)
    crf = make_crf(len(tags), allowed, seed=seed)
    g = torch.Generator().manual_seed(seed)
    em = torch.randn(4, 3, len(tags), generator=g) * BIG
    em[:, :, 0] -= BIG  # keep away from all-O so the constraints matter
    lengths = torch.tensor([3, 1, 2, 3])
    mask = torch.arange(3).unsqueeze(0) < lengths.unsqueeze(1)
    marg = crf.marginals(em, mask, backend=backend)
    assert torch.isfinite(marg).all()
    for b in range(4):
        n = int(lengths[b])
        np.testing.assert_allclose(marg[b, :n].numpy(), brute(crf, em[b], n, allowed)[2], atol=1e-5)
        assert float(marg[b, 0, ~torch.as_tensor(allowed[0])].sum()) == 0.0  # cannot open a sequence


def penalised_brute(crf: ConstrainedCRF, em: torch.Tensor, n: int, allowed) -> tuple[list[int], np.ndarray]:
    """Best path and marginals over all paths with :data:`DISALLOWED` per forbidden start, move or end."""
    start, trans, end = allowed
    K = em.shape[1]
    paths = list(itertools.product(range(K), repeat=n))
    scores = []
    for p in paths:
        bad = (not start[p[0]]) + (not end[p[-1]]) + sum(not trans[a, b] for a, b in itertools.pairwise(p))
        scores.append(path_score(crf, em, p) + DISALLOWED * bad)
    scores = np.array(scores)
    probs = np.exp(scores - np.logaddexp.reduce(scores))
    marg = np.zeros((n, K))
    for p, pr in zip(paths, probs, strict=True):
        for t, k in enumerate(p):
            marg[t, k] += pr
    return list(paths[int(scores.argmax())]), marg


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_without_any_allowed_path_fall_back_to_penalties_others_stay_exact(backend):
    """Masks that only allow the path (0, 1): rows of length 1 and 3 have no allowed path and get the
    finite-penalty answer (no NaN, no crash); the row of length 2 in the same batch stays exact even
    when its emissions pull hard elsewhere."""
    K = 3
    start = np.array([True, False, False])
    end = np.array([False, True, False])
    trans = np.zeros((K, K), bool)
    trans[0, 1] = True
    allowed = (start, trans, end)
    crf = make_crf(K, allowed, seed=6)
    g = torch.Generator().manual_seed(6)
    em = torch.randn(3, 3, K, generator=g)
    em[1, :2, 2] = BIG  # row of length 2: the emissions want (2, 2), only (0, 1) is allowed
    lengths = torch.tensor([1, 2, 3])
    mask = torch.arange(3).unsqueeze(0) < lengths.unsqueeze(1)
    paths = decode(crf, em, mask, backend)
    marg = crf.marginals(em, mask, backend=backend)
    assert paths[1] == [0, 1]
    np.testing.assert_allclose(marg[1, :2].numpy(), [[1, 0, 0], [0, 1, 0]], atol=0)
    for b in (0, 2):
        n = int(lengths[b])
        best, expected = penalised_brute(crf, em[b], n, allowed)
        assert paths[b] == best
        assert torch.isfinite(marg[b]).all()
        # the kernel adds the penalty in float32 (DISALLOWED + score rounds to ~1e-3)
        np.testing.assert_allclose(marg[b, :n].numpy(), expected, atol=1e-3)
    assert bool((marg[~mask] == 0).all())


def test_training_loss_stays_unconstrained_and_finite_for_a_gold_path_that_breaks_the_scheme():
    """Noisy gold (``O -> I-PER``) keeps a finite loss, equal to the unconstrained CRF's, at any scale."""
    tags = tag_set("BIO")
    allowed = hand_allowed(tags, "BIO")
    crf = make_crf(len(tags), allowed, seed=3)
    free = make_crf(len(tags), None, seed=3)
    em = lure(tags)
    gold = torch.tensor([[tags.index("O"), tags.index("I-PER")]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss = crf.neg_log_likelihood(em, gold, mask)
    assert torch.isfinite(loss)
    assert loss.item() == free.neg_log_likelihood(em, gold, mask).item()
