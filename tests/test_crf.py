"""ConstrainedCRF against brute-force enumeration, pytorch-crf and the scheme's rules."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchcrf import CRF

from ner_core.model import _ckernel
from ner_core.model.crf import ConstrainedCRF

#: Both Viterbi implementations; the C kernel only where this machine can build it.
BACKENDS = [
    "torch",
    pytest.param(
        "c",
        marks=pytest.mark.skipif(_ckernel.load() is None, reason="no C compiler for the CRF kernel"),
    ),
]


def decode(crf, em, mask, backend):
    paths, lengths = crf.viterbi_tensor(em, mask, backend=backend)
    return [row[:n] for row, n in zip(paths.tolist(), lengths.tolist(), strict=True)]


LABELS = ["PER", "LOC"]


def tag_set(scheme: str) -> list[str]:
    parts = "BI" if scheme == "BIO" else "BIES"
    return ["O"] + [f"{p}-{lab}" for lab in LABELS for p in parts]


def hand_allowed(tags: list[str], scheme: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Allowed (start, trans[from, to], end) from the scheme's rules, written independently of schemes.py."""
    K = len(tags)
    start = np.zeros(K, bool)
    end = np.zeros(K, bool)
    trans = np.zeros((K, K), bool)
    split = [(t, None) if t == "O" else tuple(t.split("-", 1)) for t in tags]
    for i, (p, lab) in enumerate(split):
        if scheme == "BIO":
            start[i] = p in ("O", "B")  # I-X cannot open a sequence
            end[i] = True  # any tag can close a BIO sequence
        else:
            start[i] = p in ("O", "B", "S")  # I-X, E-X continue an entity
            end[i] = p in ("O", "E", "S")  # B-X, I-X leave an entity open
        for j, (q, lab2) in enumerate(split):
            if scheme == "BIO":
                # I-X only after B-X or I-X of the same label; everything else may follow anything
                trans[i, j] = q != "I" or (p in ("B", "I") and lab == lab2)
            else:
                if p in ("B", "I"):  # inside an entity: continue it with I-X or close it with E-X
                    trans[i, j] = q in ("I", "E") and lab == lab2
                else:  # outside (O, E-X, S-X): O, B-Y or S-Y
                    trans[i, j] = q in ("O", "B", "S")
    return start, trans, end


def path_score(crf: ConstrainedCRF, em: torch.Tensor, path: tuple[int, ...]) -> float:
    """Unconstrained score of one path over em (T, K)."""
    em = em.detach()
    s = float(crf.crf.start_transitions.detach()[path[0]]) + float(em[0, path[0]])
    for t in range(1, len(path)):
        s += float(crf.crf.transitions.detach()[path[t - 1], path[t]]) + float(em[t, path[t]])
    return s + float(crf.crf.end_transitions.detach()[path[-1]])


def path_allowed(allowed, path) -> bool:
    start, trans, end = allowed
    return bool(start[path[0]] and end[path[-1]] and all(trans[a, b] for a, b in itertools.pairwise(path)))


def brute(crf, em, n, allowed=None):
    """(log Z, best path, marginals (n, K)) over all (allowed) paths of length n."""
    K = em.shape[1]
    paths = [p for p in itertools.product(range(K), repeat=n) if allowed is None or path_allowed(allowed, p)]
    scores = np.array([path_score(crf, em, p) for p in paths], dtype=np.float64)
    log_z = float(np.logaddexp.reduce(scores))
    best = paths[int(scores.argmax())]
    marg = np.zeros((n, K))
    probs = np.exp(scores - log_z)
    for p, pr in zip(paths, probs, strict=True):
        for t, k in enumerate(p):
            marg[t, k] += pr
    return log_z, list(best), marg


def random_problem(B, T, K, seed, min_len=1):
    g = torch.Generator().manual_seed(seed)
    em = torch.randn(B, T, K, generator=g) * 2
    lengths = torch.randint(min_len, T + 1, (B,), generator=g)
    lengths[0] = T  # at least one full row
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    tags = torch.randint(0, K, (B, T), generator=g)
    return em, mask, tags


def make_crf(K, allowed=None, seed=0):
    torch.manual_seed(seed)
    crf = ConstrainedCRF(K, allowed)
    with torch.no_grad():  # larger transitions than the default +-0.1 make the tests sharper
        crf.crf.transitions.uniform_(-2, 2)
        crf.crf.start_transitions.uniform_(-2, 2)
        crf.crf.end_transitions.uniform_(-2, 2)
    return crf


# ------------------------------------------------------------------ likelihood


@pytest.mark.parametrize("K,T", [(2, 1), (3, 4), (4, 3), (2, 6)])
def test_nll_equals_brute_force(K, T):
    crf = make_crf(K, seed=K * 10 + T)
    em, mask, tags = random_problem(4, T, K, seed=T)
    nll = crf.neg_log_likelihood(em, tags, mask)
    expected = []
    for b in range(4):
        n = int(mask[b].sum())
        log_z, _, _ = brute(crf, em[b], n)
        gold = tuple(tags[b, :n].tolist())
        expected.append(log_z - path_score(crf, em[b], gold))
    assert nll.item() == pytest.approx(float(np.mean(expected)), rel=1e-5, abs=1e-4)


def test_nll_is_mean_of_torchcrf_and_has_gradients():
    crf = make_crf(5)
    em, mask, tags = random_problem(6, 7, 5, seed=3)
    em.requires_grad_(True)
    nll = crf.neg_log_likelihood(em, tags, mask)
    ref = CRF(5, batch_first=True)
    ref.load_state_dict(
        {k.removeprefix("crf."): v for k, v in crf.state_dict().items() if k.startswith("crf.")}
    )
    assert nll.item() == pytest.approx(-ref(em, tags, mask, reduction="mean").item(), rel=1e-6)
    assert nll.item() > 0
    nll.backward()
    assert crf.crf.transitions.grad is not None and crf.crf.transitions.grad.abs().sum() > 0
    assert em.grad is not None and em.grad[~mask].abs().sum() == 0  # padding gets no gradient


@pytest.mark.skipif(_ckernel.load() is None, reason="no C compiler for the CRF kernel")
@pytest.mark.parametrize(
    "B,T,K,threads,scale", [(1, 1, 1, 1, 1.0), (6, 9, 5, 1, 1.0), (40, 37, 13, 2, 3.0), (3, 400, 9, 2, 30.0)]
)
def test_c_likelihood_loss_and_gradients_equal_pytorch_crf(B, T, K, threads, scale, monkeypatch):
    """The kernel's log-partition with its analytic gradient (marginals, expected transition counts) gives
    pytorch-crf's loss and the gradients autograd takes through pytorch-crf (run in float64 as the
    reference: in float32 it drifts on long rows with large scores), for the emissions and all three
    score tensors, ragged rows included; the torch backend agrees where float32 suffices."""
    crf = make_crf(K, seed=B + T)
    em, mask, tags = random_problem(B, T, K, seed=K + T)
    em = (em * scale).requires_grad_(True)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)

    def loss_and_grads(fn, module, x):
        x = x.detach().requires_grad_(True)
        loss = fn(x)
        loss.backward()
        params = [module.start_transitions, module.end_transitions, module.transitions]
        # a one-step problem leaves pytorch-crf's transitions without a gradient
        grads = [
            torch.zeros(p.shape, dtype=torch.float64) if p.grad is None else p.grad.double() for p in params
        ]
        return [loss.detach().double(), x.grad.double(), *grads]

    ours = loss_and_grads(lambda x: crf.neg_log_likelihood(x, tags, mask, backend="c"), crf.crf, em)
    ref = CRF(K, batch_first=True).double()
    ref.load_state_dict(
        {k.removeprefix("crf."): v.double() for k, v in crf.state_dict().items() if "crf." in k}
    )
    exact = loss_and_grads(lambda x: -ref(x, tags, mask, reduction="mean"), ref, em.double())
    names = ["loss", "emissions", "start", "end", "transitions"]
    for name, c, t in zip(names, ours, exact, strict=True):
        assert torch.isfinite(c).all(), name
        torch.testing.assert_close(c, t, atol=2e-5, rtol=1e-5, msg=name)
    assert ours[1][~mask].abs().sum() == 0  # padding gets no gradient
    if scale <= 3:
        crf.zero_grad()
        fp32 = loss_and_grads(lambda x: crf.neg_log_likelihood(x, tags, mask, backend="torch"), crf.crf, em)
        for name, c, t in zip(names, ours, fp32, strict=True):
            torch.testing.assert_close(c, t, atol=2e-5, rtol=1e-5, msg=name)
    assert crf.neg_log_likelihood(em, tags, mask).item() == ours[0].item()  # "auto": the kernel


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_normalises_over_all_paths_and_marginals_over_allowed_paths(backend):
    """Constraints act in decoding and the marginals only: a constrained CRF's loss is normalised over every
    path (log Z unconstrained), its marginals over the allowed paths (log Z constrained)."""
    tags = tag_set("BIOES")
    allowed = hand_allowed(tags, "BIOES")
    K = len(tags)
    crf = make_crf(K, allowed, seed=1)
    em, mask, gold = random_problem(3, 3, K, seed=5)
    marg = crf.marginals(em, mask, backend=backend)
    for b in range(3):
        n = int(mask[b].sum())
        row = crf.neg_log_likelihood(em[b : b + 1, :n], gold[b : b + 1, :n], mask[b : b + 1, :n])
        expected = brute(crf, em[b], n)[0] - path_score(crf, em[b], tuple(gold[b, :n].tolist()))
        assert row.item() == pytest.approx(expected, abs=1e-4)
        np.testing.assert_allclose(marg[b, :n].numpy(), brute(crf, em[b], n, allowed)[2], atol=1e-5)
    assert brute(crf, em[0], 3, allowed)[0] < brute(crf, em[0], 3)[0] - 1e-3  # the constraints matter here


# ------------------------------------------------------------------ Viterbi


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K,T,seed", [(3, 4, 0), (4, 3, 1), (2, 7, 2), (5, 1, 3), (1, 3, 4)])
def test_viterbi_equals_brute_force_unconstrained(K, T, seed, backend):
    crf = make_crf(K, seed=seed)
    em, mask, _ = random_problem(5, T, K, seed=seed)
    paths = decode(crf, em, mask, backend)
    for b in range(5):
        n = int(mask[b].sum())
        assert paths[b] == brute(crf, em[b], n)[1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme,T,seed", [("BIO", 4, 0), ("BIOES", 3, 1), ("BIOES", 4, 2), ("BIO", 1, 3)])
def test_viterbi_equals_brute_force_over_allowed_paths(scheme, T, seed, backend):
    tags = tag_set(scheme)
    allowed = hand_allowed(tags, scheme)
    crf = make_crf(len(tags), allowed, seed=seed)
    em, mask, _ = random_problem(4, T, len(tags), seed=seed)
    em[:, :, 0] -= 3  # push away from all-O so the constraints matter
    paths = decode(crf, em, mask, backend)
    for b in range(4):
        n = int(mask[b].sum())
        best = brute(crf, em[b], n, allowed)[1]
        assert paths[b] == best
        assert path_allowed(allowed, best)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unconstrained_decode_identical_to_torchcrf(backend):
    # B = 16 stays on one thread in the C kernel; B = 70 is split across threads, not on 8-row blocks
    for seed, B in zip(range(6), [16, 16, 70, 16, 70, 9], strict=True):
        K = 3 + seed
        crf = make_crf(K, seed=seed)
        em, mask, _ = random_problem(B, 20, K, seed=100 + seed)
        ref = CRF(K, batch_first=True)
        ref.load_state_dict(
            {k.removeprefix("crf."): v for k, v in crf.state_dict().items() if k.startswith("crf.")}
        )
        assert decode(crf, em, mask, backend) == ref.decode(em, mask)


@pytest.mark.skipif(_ckernel.load() is None, reason="no C compiler for the CRF kernel")
@pytest.mark.parametrize(
    "B,T,K,threads", [(1, 1, 1, 1), (7, 33, 9, 2), (8, 5, 21, 1), (67, 40, 13, 2), (200, 64, 5, 3)]
)
def test_c_kernel_paths_and_padding_equal_the_torch_implementation(B, T, K, threads, monkeypatch):
    tags = tag_set("BIOES")
    allowed = hand_allowed(tags, "BIOES") if K == len(tags) else None
    crf = make_crf(K, allowed, seed=B + T)
    em, mask, _ = random_problem(B, T, K, seed=K)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    c_paths, c_len = crf.viterbi_tensor(em, mask, backend="c")
    t_paths, t_len = crf.viterbi_tensor(em, mask, backend="torch")
    assert torch.equal(c_len, t_len)
    assert torch.equal(c_paths, t_paths)  # padding included: steps past a row's end repeat its last tag
    assert crf.viterbi_tensor(em, mask)[0].equal(c_paths)  # "auto" takes the kernel on CPU


@pytest.mark.skipif(_ckernel.load() is None, reason="no C compiler for the CRF kernel")
@pytest.mark.parametrize(
    "B,T,K,threads,scale",
    [(1, 1, 1, 1, 1.0), (7, 33, 9, 2, 3.0), (67, 40, 13, 2, 1.0), (3, 3000, 9, 2, 10.0), (5, 50, 9, 1, 30.0)],
)
def test_c_marginals_equal_the_torch_implementation(B, T, K, threads, scale, monkeypatch):
    """Same float64 arithmetic: agreement to float32 rounding, padding (zeros) included, long rows with
    large scores too (no overflow, no NaN)."""
    tags = tag_set("BIOES")
    allowed = hand_allowed(tags, "BIOES") if K == len(tags) else None
    crf = make_crf(K, allowed, seed=B + T)
    em, mask, _ = random_problem(B, T, K, seed=K + T)
    em = em * scale
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    c = crf.marginals(em, mask, backend="c")
    t = crf.marginals(em, mask, backend="torch")
    assert c.dtype == torch.float32 and c.shape == (B, T, K)
    assert torch.isfinite(c).all()
    torch.testing.assert_close(c, t, atol=2e-6, rtol=0)
    assert bool((c[~mask] == 0).all())
    torch.testing.assert_close(c.sum(-1)[mask], torch.ones(int(mask.sum())), atol=1e-4, rtol=0)
    assert crf.marginals(em, mask).equal(c)  # "auto" takes the kernel on CPU


@pytest.mark.skipif(_ckernel.load() is None, reason="no C compiler for the CRF kernel")
@pytest.mark.parametrize("scale", [100.0, 1000.0])
def test_c_marginals_stay_exact_when_scores_span_more_than_exp_can_hold(scale):
    """Scores of one step that differ by hundreds underflow the shifted exp-space product (the torch
    implementation then loses probability mass); the kernel recomputes those entries exactly."""
    tags = tag_set("BIOES")
    allowed = hand_allowed(tags, "BIOES")
    crf = make_crf(len(tags), allowed, seed=5)
    em, mask, _ = random_problem(4, 4, len(tags), seed=6)
    em = em * scale
    marg = crf.marginals(em, mask, backend="c")
    torch.testing.assert_close(marg.sum(-1), mask.float(), atol=1e-5, rtol=0)
    for b in range(4):
        n = int(mask[b].sum())
        np.testing.assert_allclose(marg[b, :n].numpy(), brute(crf, em[b], n, allowed)[2], atol=1e-5)


def test_viterbi_backend_errors():
    crf = make_crf(3)
    em, mask, _ = random_problem(2, 4, 3, seed=0)
    with pytest.raises(ValueError, match="unknown Viterbi backend 'cuda'; choose auto, c or torch"):
        crf.viterbi_tensor(em, mask, backend="cuda")
    with pytest.raises(ValueError, match="unknown marginals backend 'numba'; choose auto, c or torch"):
        crf.marginals(em, mask, backend="numba")
    with pytest.raises(ValueError, match="expected 2 lengths in \\[1, 4\\]"):
        _ckernel.marginals(em.numpy(), *[np.zeros(s, np.float32) for s in (3, (3, 3), 3)], np.array([1, 5]))
    with pytest.raises(ValueError, match="expected 2 lengths in \\[1, 4\\]"):
        _ckernel.viterbi(em.numpy(), *[np.zeros(s, np.float32) for s in (3, (3, 3), 3)], np.array([0, 4]))


@pytest.fixture
def fresh_kernel_state():
    saved = dict(_ckernel._STATE)
    _ckernel._STATE.clear()
    yield
    _ckernel._STATE.clear()
    _ckernel._STATE.update(saved)


@pytest.mark.parametrize("how", ["disabled", "compiler_fails"])
def test_without_the_c_kernel_decoding_falls_back_to_torch(
    how, fresh_kernel_state, monkeypatch, tmp_path, caplog
):
    monkeypatch.setenv("NER_CACHE_DIR", str(tmp_path / "cache"))  # nothing cached: must build
    if how == "disabled":
        monkeypatch.setenv("NER_CRF_KERNEL", "0")
    else:
        bad_cc = tmp_path / "bad-cc"
        bad_cc.write_text("#!/bin/sh\necho 'bad-cc: cannot compile' >&2\nexit 1\n")
        bad_cc.chmod(0o755)
        monkeypatch.setenv("CC", str(bad_cc))
    crf = make_crf(4, seed=1)
    em, mask, _ = random_problem(5, 6, 4, seed=1)
    with caplog.at_level("INFO", logger="ner_core.model._ckernel"):
        assert _ckernel.load() is None
        paths = crf.decode(em, mask)
        marg = crf.marginals(em, mask)
    assert paths == decode(crf, em, mask, "torch")
    assert marg.equal(crf.marginals(em, mask, backend="torch"))
    if how == "compiler_fails":
        assert (
            "bad-cc: cannot compile" in caplog.text and "using the torch Viterbi and marginals" in caplog.text
        )
        assert not list((tmp_path / "cache").glob("*.so"))  # no half-written library left behind
    with pytest.raises(_ckernel.KernelUnavailable):
        crf.viterbi_tensor(em, mask, backend="c")
    with pytest.raises(_ckernel.KernelUnavailable):
        crf.marginals(em, mask, backend="c")


def test_padded_rows_decode_exactly_as_unpadded():
    tags = tag_set("BIOES")
    crf = make_crf(len(tags), hand_allowed(tags, "BIOES"), seed=4)
    em, mask, _ = random_problem(8, 15, len(tags), seed=9)
    batch = crf.decode(em, mask)
    for b in range(8):
        n = int(mask[b].sum())
        alone = crf.decode(em[b : b + 1, :n], torch.ones(1, n, dtype=torch.bool))[0]
        assert batch[b] == alone
        assert len(batch[b]) == n


def test_constraints_change_the_decoded_path():
    tags = tag_set("BIO")
    allowed = hand_allowed(tags, "BIO")
    K = len(tags)
    crf = ConstrainedCRF(K, allowed)
    free = ConstrainedCRF(K)
    free.load_state_dict({k: v for k, v in crf.state_dict().items() if k.startswith("crf.")}, strict=False)
    with torch.no_grad():
        for c in (crf, free):
            c.crf.transitions.zero_()
            c.crf.start_transitions.zero_()
            c.crf.end_transitions.zero_()
    em = torch.zeros(1, 2, K)
    em[0, 0, tags.index("O")] = 5.0
    em[0, 1, tags.index("I-PER")] = 5.0  # emissions alone want O -> I-PER
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert free.decode(em, mask) == [[0, tags.index("I-PER")]]
    out = crf.decode(em, mask)[0]
    assert [tags[i] for i in out] != ["O", "I-PER"]
    assert path_allowed(allowed, out)


@st.composite
def constrained_problems(draw):
    scheme = draw(st.sampled_from(["BIO", "BIOES"]))
    tags = tag_set(scheme)
    K = len(tags)
    start, trans, end = hand_allowed(tags, scheme)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    # random extra restrictions on top of the scheme; O -> O, start O and end O stay so a path exists
    keep = draw(st.floats(0.3, 1.0))
    trans = trans & (rng.random((K, K)) < keep)
    start = start & (rng.random(K) < keep)
    end = end & (rng.random(K) < keep)
    trans[0, 0] = start[0] = end[0] = True
    B = draw(st.integers(1, 6))
    T = draw(st.integers(1, 12))
    scale = draw(st.sampled_from([1.0, 10.0, 100.0, 1.0e5]))
    return (start, trans, end), B, T, scale, seed


@settings(max_examples=60, deadline=None)
@given(constrained_problems())
def test_constrained_decoding_never_emits_a_disallowed_transition(problem):
    allowed, B, T, scale, seed = problem
    K = allowed[0].shape[0]
    crf = make_crf(K, allowed, seed=seed % 1000)
    em, mask, _ = random_problem(B, T, K, seed=seed)
    em = em * scale
    for path in crf.decode(em, mask):
        assert path_allowed(allowed, path), path


# ------------------------------------------------------------------ marginals


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", ["BIO", "BIOES", None])
def test_marginals_sum_to_one_and_equal_brute_force(scheme, backend):
    if scheme is None:
        K, allowed = 3, None
    else:
        tags = tag_set(scheme)
        K, allowed = len(tags), hand_allowed(tags, scheme)
    crf = make_crf(K, allowed, seed=7)
    em, mask, _ = random_problem(3, 3 if scheme == "BIOES" else 4, K, seed=11)
    marg = crf.marginals(em, mask, backend=backend)
    assert marg.shape == em.shape
    torch.testing.assert_close(marg.sum(-1), mask.float())  # 1 on steps, 0 on padding
    for b in range(3):
        n = int(mask[b].sum())
        expected = brute(crf, em[b], n, allowed)[2]
        np.testing.assert_allclose(marg[b, :n].numpy(), expected, atol=1e-5)
        if allowed is not None:  # a tag that cannot open a sequence has zero probability at step 0
            assert float(marg[b, 0, ~torch.as_tensor(allowed[0])].sum()) < 1e-6


# ------------------------------------------------------------------ errors and state


def test_bad_shapes_and_masks_raise_clear_errors():
    crf = ConstrainedCRF(5)
    em = torch.randn(2, 4, 5)
    ok = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="expected last dimension of emissions is 5, got 7"):
        crf.decode(torch.randn(2, 4, 7), ok)
    with pytest.raises(ValueError, match=r"expected emissions of shape \(B, T, K=5\), got \(2, 4\)"):
        crf.decode(torch.randn(2, 4), ok)
    with pytest.raises(ValueError, match=r"expected mask of shape \(2, 4\) matching emissions, got \(2, 3\)"):
        crf.decode(em, ok[:, :3])
    with pytest.raises(ValueError, match="expected a bool mask, got dtype torch.uint8"):
        crf.decode(em, ok.to(torch.uint8))
    first_off = ok.clone()
    first_off[1, 0] = False
    with pytest.raises(ValueError, match="mask of the first timestep must all be on"):
        crf.marginals(em, first_off)
    holes = ok.clone()
    holes[0, 1] = False
    with pytest.raises(ValueError, match="right-padded"):
        crf.decode(em, holes)
    with pytest.raises(ValueError, match=r"expected tags of shape \(2, 4\) matching emissions, got \(2, 3\)"):
        crf.neg_log_likelihood(em, torch.zeros(2, 3, dtype=torch.long), ok)
    with pytest.raises(ValueError, match="expected tags of dtype torch.long"):
        crf.neg_log_likelihood(em, torch.zeros(2, 4, dtype=torch.int32), ok)
    with pytest.raises(ValueError, match=r"expected tag ids in \[0, 5\), got values in \[0, 9\]"):
        crf.neg_log_likelihood(
            em, torch.full((2, 4), 9, dtype=torch.long).index_fill_(1, torch.tensor([0]), 0), ok
        )
    with pytest.raises(ValueError, match=r"expected allowed transition mask of shape \(5, 5\), got \(4, 4\)"):
        ConstrainedCRF(5, (np.ones(5, bool), np.ones((4, 4), bool), np.ones(5, bool)))
    with pytest.raises(ValueError, match="expected a positive int num_tags, got 0"):
        ConstrainedCRF(0)


def test_constraints_are_saved_in_the_state_dict():
    tags = tag_set("BIOES")
    allowed = hand_allowed(tags, "BIOES")
    crf = make_crf(len(tags), allowed)
    assert crf.is_constrained and not ConstrainedCRF(3).is_constrained
    other = ConstrainedCRF(len(tags))
    other.load_state_dict(crf.state_dict())
    assert other.is_constrained
    assert torch.equal(other.allowed_trans, torch.as_tensor(allowed[1]))
    em, mask, _ = random_problem(4, 9, len(tags), seed=2)
    assert other.decode(em, mask) == crf.decode(em, mask)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_and_marginals_are_finite_for_long_sequences_with_large_scores(backend):
    crf = make_crf(4)
    em = torch.randn(2, 200, 4) * 50
    mask = torch.ones(2, 200, dtype=torch.bool)
    assert torch.isfinite(crf.neg_log_likelihood(em, torch.zeros(2, 200, dtype=torch.long), mask))
    marg = crf.marginals(em, mask, backend=backend)
    assert torch.isfinite(marg).all() and math.isclose(float(marg.sum()), 400.0, rel_tol=1e-4)


@pytest.mark.skipif(_ckernel.load() is None, reason="no C compiler for the CRF kernel")
def test_c_kernel_threads_work_in_a_forked_child(monkeypatch):
    """The kernel's thread pool is per process: a child forked after the parent used it must not hang."""
    import multiprocessing as mp

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    crf = make_crf(5, seed=3)
    em, mask, _ = random_problem(64, 12, 5, seed=3)
    expected = decode(crf, em, mask, "c")  # starts the parent's pool (64 rows -> 2 threads)
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(decode, (crf, em, mask, "c")).get(timeout=60)
    assert got == expected
