"""A linear-chain CRF whose decoding respects a tag scheme's allowed transitions.

The likelihood is pytorch-crf's (:class:`torchcrf.CRF`, ``batch_first=True``, ``reduction="mean"``,
negated into a loss). Decoding (batched Viterbi) and the posterior marginals (forward-backward) are
implemented here, batched over the whole mini-batch, with the scheme's constraints applied to the
start, transition and end scores.

Constraints and training
------------------------
Constraints apply at **decoding and in the marginals only**, as in allennlp: the training loss is plain
pytorch-crf. Gold paths are valid by construction, so the learned transition scores of disallowed moves
simply drift low; decoding then removes them outright (their scores become ``-inf``), so a path such as
``O -> I-PER`` or a sequence starting with ``I-PER`` or ending in ``B-PER`` (BIOES) never comes out,
whatever the emissions, and the marginals put exactly zero on it. A finite penalty would not do: emissions
larger than the penalty buy a forbidden path back. Keeping the loss unconstrained also keeps it finite on
a noisy gold sequence that breaks the scheme.

No allowed path: masks can contradict themselves for some lengths (say, a tag that may only start a
sequence and only follow itself, but never end one). Such a row is decoded, and its marginals computed,
with a finite penalty of :data:`DISALLOWED` per forbidden start, move or end instead (the least bad path
for ordinary scores), so it still gets an answer and never NaN; rows that have an allowed path are not
affected by that fallback.

Per-position restrictions: :meth:`ConstrainedCRF.viterbi_tensor` and :meth:`ConstrainedCRF.marginals` take
``allowed_tags`` ``(B, T, K)``, the tags each position may take (a user dictionary's forced spans,
:mod:`ner_core.inference.dictionary`): applied as ``-inf`` emissions (:func:`mask_emissions`), exact on both
backends, so the path is the best one through allowed tags and the marginals are conditioned on them.

Speed: on CPU, :meth:`ConstrainedCRF.viterbi_tensor`, :meth:`ConstrainedCRF.marginals` and the training
loss's log-partition with its gradient (:meth:`ConstrainedCRF.neg_log_likelihood`) run compiled C
kernels (``ner_core/csrc/crf.c``, built on first use by :mod:`ner_core.model._ckernel`): Viterbi with 8 rows
per
SIMD register, the whole recursion and back-tracking in C; forward-backward in float64 per row; rows split
across threads. On GPU, or where no C compiler exists, the torch implementations run instead; both give
identical paths and the same marginals (tested).

Padding: masks are boolean ``(B, T)``, right-padded, and every row's first step must be on (slice
``[CLS]`` off before the CRF instead of masking it). A padded row decodes exactly as the same row without
padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchcrf import CRF

from ner_core.model import _ckernel

__all__ = ["DISALLOWED", "ConstrainedCRF", "mask_emissions"]

#: Score added to each disallowed start / transition / end for a row that has no allowed path at all, so
#: it still decodes (to the least bad path) instead of producing NaN. Rows with an allowed path are
#: decoded with the disallowed moves removed (``-inf``), never with this penalty.
DISALLOWED = -1.0e4

Scores = tuple[Tensor, Tensor, Tensor]
AllowedMasks = tuple[
    np.ndarray | Tensor | Sequence, np.ndarray | Tensor | Sequence, np.ndarray | Tensor | Sequence
]


def _as_bool_tensor(value: object, shape: tuple[int, ...], what: str) -> Tensor:
    t = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
    if tuple(t.shape) != shape:
        raise ValueError(f"expected allowed {what} mask of shape {shape}, got {tuple(t.shape)}")
    if t.dtype != torch.bool:
        if t.dtype.is_floating_point or t.dtype.is_complex:
            raise ValueError(f"expected allowed {what} mask to be boolean, got dtype {t.dtype}")
        t = t != 0
    return t.clone()


#: Below this, a shifted exp-space product has lost its terms (underflow, or only removed moves lead
#: there): the entry is recomputed as an exact log-sum-exp (as the C kernel does).
_EXACT_BELOW = 1e-280


class _ShiftedExp:
    """A score matrix m (K, K) with ``exp(m - column max)`` precomputed for :func:`_log_matmul_exp` (the
    scores do not change across the steps). An all ``-inf`` column (no allowed move into that state) is
    shifted by 0, so it gives exp(-inf) = 0 rather than exp(-inf - -inf) = NaN."""

    def __init__(self, m: Tensor) -> None:
        self.m = m  # (K, K)
        self.col_max = m.max(dim=0, keepdim=True).values.nan_to_num(neginf=0.0)  # (1, K)
        self.exp = torch.exp(m - self.col_max)  # (K, K)


def _log_matmul_exp(a: Tensor, m: _ShiftedExp) -> Tensor:
    """``out[b, j] = logsumexp_i a[b, i] + m[i, j]`` for a (B, K), m (K, K), as one matmul in exp space.

    Both sides are shifted by their maxima first, so nothing overflows; ``-inf`` entries (removed moves,
    unreachable states) contribute exactly 0, and an all ``-inf`` row of ``a`` (or column of ``m``) is
    shifted by 0 instead of by its ``-inf`` maximum. Where the product underflows (the scores of one step
    span more than ~650, or no allowed move leads to the state) the entries are recomputed as an exact
    log-sum-exp, so a state no allowed path reaches gets exactly ``-inf`` and large scores stay exact.
    Callers use float64.
    """
    a_max = a.max(dim=1, keepdim=True).values.nan_to_num(neginf=0.0)  # (B, 1)
    prod = torch.exp(a - a_max) @ m.exp  # (B, K)
    out = torch.log(prod) + (a_max + m.col_max)  # (B, K); -inf where prod underflowed to 0
    if float(prod.min()) < _EXACT_BELOW:  # rare with ordinary scores: the (B, K, K) exact form only then
        exact = torch.logsumexp(a.unsqueeze(2) + m.m.unsqueeze(0), dim=1)  # (B, K); all -inf -> -inf
        out = torch.where(prod < _EXACT_BELOW, exact, out)
    return out


def mask_emissions(emissions: Tensor, allowed_tags: Tensor | None, penalty: float | None = None) -> Tensor:
    """Emissions ``(B, T, K)`` with each position's disallowed tags removed: ``-inf`` (or, given a finite
    ``penalty``, the no-allowed-path fallback, that score added) where ``allowed_tags`` ``(B, T, K)`` is off.

    Why emissions: a per-position restriction is exactly a ``-inf`` emission, and both backends already
    treat ``-inf`` scores exactly (the C kernels' max-plus and shifted log-sum-exp, and
    :func:`_log_matmul_exp`), so the same Viterbi and forward-backward give the best allowed path and the
    marginals conditioned on the restriction, with no separate code path to keep in step.
    """
    if allowed_tags is None:
        return emissions
    if not isinstance(allowed_tags, Tensor) or allowed_tags.shape != emissions.shape:
        got = tuple(allowed_tags.shape) if isinstance(allowed_tags, Tensor) else type(allowed_tags).__name__
        want = tuple(emissions.shape)
        raise ValueError(f"expected allowed_tags of shape {want} like the emissions, got {got}")
    if allowed_tags.dtype != torch.bool:
        raise ValueError(f"expected allowed_tags to be boolean, got dtype {allowed_tags.dtype}")
    em = emissions.float()
    allowed = allowed_tags.to(em.device)
    if penalty is None:
        return em.masked_fill(~allowed, float("-inf"))
    return em + torch.where(allowed, 0.0, penalty).to(em.dtype)


class ConstrainedCRF(nn.Module):
    """CRF over ``num_tags`` tags with optional allowed-transition masks.

    Args:
        num_tags: K, the number of tags.
        allowed: ``(start (K,), trans (K, K) [from, to], end (K,))`` boolean arrays, e.g. from
            :func:`ner_core.schemes.allowed_transitions`; ``None`` allows everything.

    Parameters live in ``self.crf`` (a :class:`torchcrf.CRF`): ``start_transitions (K,)``,
    ``transitions (K, K)`` (from, to), ``end_transitions (K,)``. The masks are persistent buffers
    ``allowed_start``, ``allowed_trans``, ``allowed_end`` so a saved model keeps its constraints.
    """

    def __init__(self, num_tags: int, allowed: AllowedMasks | None = None) -> None:
        if not isinstance(num_tags, int) or isinstance(num_tags, bool) or num_tags <= 0:
            raise ValueError(f"expected a positive int num_tags, got {num_tags!r}")
        super().__init__()
        self.num_tags = num_tags
        self.crf = CRF(num_tags, batch_first=True)
        K = num_tags
        if allowed is None:
            start = torch.ones(K, dtype=torch.bool)
            trans = torch.ones(K, K, dtype=torch.bool)
            end = torch.ones(K, dtype=torch.bool)
        else:
            if not isinstance(allowed, (tuple, list)) or len(allowed) != 3:
                raise ValueError(
                    "expected allowed = (start (K,), trans (K, K), end (K,)) or None, "
                    f"got {type(allowed).__name__}"
                    + (f" of length {len(allowed)}" if isinstance(allowed, (tuple, list)) else "")
                )
            start = _as_bool_tensor(allowed[0], (K,), "start")
            trans = _as_bool_tensor(allowed[1], (K, K), "transition")
            end = _as_bool_tensor(allowed[2], (K,), "end")
        self.register_buffer("allowed_start", start)  # (K,)
        self.register_buffer("allowed_trans", trans)  # (K, K)
        self.register_buffer("allowed_end", end)  # (K,)

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}, constrained={self.is_constrained}"

    @property
    def is_constrained(self) -> bool:
        return not bool(self.allowed_trans.all() and self.allowed_start.all() and self.allowed_end.all())

    # ------------------------------------------------------------------ validation
    def _validate(self, emissions: Tensor, mask: Tensor, tags: Tensor | None = None) -> Tensor:
        if not isinstance(emissions, Tensor) or emissions.dim() != 3:
            got = tuple(emissions.shape) if isinstance(emissions, Tensor) else type(emissions).__name__
            raise ValueError(f"expected emissions of shape (B, T, K={self.num_tags}), got {got}")
        B, T, K = emissions.shape
        if K != self.num_tags:
            raise ValueError(f"expected last dimension of emissions is {self.num_tags}, got {K}")
        if not isinstance(mask, Tensor) or tuple(mask.shape) != (B, T):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"expected mask of shape {(B, T)} matching emissions, got {got}")
        if mask.dtype != torch.bool:
            raise ValueError(f"expected a bool mask, got dtype {mask.dtype}")
        if tags is not None:
            if not isinstance(tags, Tensor) or tuple(tags.shape) != (B, T):
                got = tuple(tags.shape) if isinstance(tags, Tensor) else type(tags).__name__
                raise ValueError(f"expected tags of shape {(B, T)} matching emissions, got {got}")
            if tags.dtype != torch.long:
                raise ValueError(f"expected tags of dtype torch.long, got {tags.dtype}")
        if T == 0 or B == 0:
            raise ValueError(
                f"expected at least one row and one time step, got emissions of shape {(B, T, K)}"
            )
        if not bool(mask[:, 0].all()):
            raise ValueError(
                "mask of the first timestep must all be on (slice [CLS] off instead of masking it)"
            )
        if T > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError("expected right-padded masks (no on step after an off step)")
        return emissions

    # ------------------------------------------------------------------ scores
    def _constrained_scores(self, dtype: torch.dtype, penalty: float | None = None) -> Scores:
        """Start (K,), transition (K, K) and end (K,) scores with the forbidden ones removed (``-inf``),
        or, given a finite ``penalty`` (the no-allowed-path fallback), with ``penalty`` added to them."""
        dev = self.allowed_trans.device
        if penalty is None:
            off = torch.tensor(float("-inf"), dtype=dtype, device=dev)
            return (
                torch.where(self.allowed_start, self.crf.start_transitions.to(dtype), off),  # (K,)
                torch.where(self.allowed_trans, self.crf.transitions.to(dtype), off),  # (K, K)
                torch.where(self.allowed_end, self.crf.end_transitions.to(dtype), off),  # (K,)
            )
        zero = torch.zeros((), dtype=dtype, device=dev)
        pen = torch.tensor(penalty, dtype=dtype, device=dev)
        start = self.crf.start_transitions.to(dtype) + torch.where(self.allowed_start, zero, pen)  # (K,)
        trans = self.crf.transitions.to(dtype) + torch.where(self.allowed_trans, zero, pen)  # (K, K)
        end = self.crf.end_transitions.to(dtype) + torch.where(self.allowed_end, zero, pen)  # (K,)
        return start, trans, end

    def _scores_numpy(self, penalty: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_constrained_scores` as float32 numpy arrays (for the C kernels)."""
        start, trans, end = (
            x.detach().cpu().numpy() for x in self._constrained_scores(torch.float32, penalty)
        )
        return start, trans, end

    @staticmethod
    def _use_kernel(backend: str, emissions: Tensor, what: str) -> bool:
        if backend not in ("auto", "c", "torch"):
            raise ValueError(f"unknown {what} backend {backend!r}; choose auto, c or torch")
        on_cpu = emissions.device.type == "cpu"
        if backend == "c" and not on_cpu:
            raise ValueError(f"the C {what} kernel runs on CPU tensors only")
        return backend == "c" or (backend == "auto" and on_cpu and _ckernel.load() is not None)

    # ------------------------------------------------------------------ public API
    def neg_log_likelihood(
        self, emissions: Tensor, tags: Tensor, mask: Tensor, backend: str = "auto"
    ) -> Tensor:
        """Mean negative log-likelihood over the batch (pytorch-crf's, unconstrained; see module doc).

        Args:
            emissions: ``(B, T, K)`` scores.
            tags: ``(B, T)`` long gold tag ids (padded positions may hold anything in ``[0, K)``).
            mask: ``(B, T)`` bool, right-padded, ``mask[:, 0]`` all True.
            backend: ``"c"``: the log-partition and its gradient by the compiled forward-backward
                (:func:`ner_core.model._ckernel.logz_grad`, one call per batch instead of ``T`` steps of
                tensor
                operations forward and again backward), the gold path's score by tensor operations;
                ``"torch"``: pytorch-crf's implementation (any device); ``"auto"``: the kernel for CPU
                tensors when it is available. Both give the same loss and gradients (tested).

        Returns:
            A scalar tensor: ``-mean_b log p(tags_b | emissions_b)``.
        """
        self._validate(emissions, mask, tags)
        if tags.numel() and (int(tags.min()) < 0 or int(tags.max()) >= self.num_tags):
            raise ValueError(
                f"expected tag ids in [0, {self.num_tags}), "
                f"got values in [{int(tags.min())}, {int(tags.max())}]"
            )
        if not self._use_kernel(backend, emissions, "likelihood"):
            return -self.crf(emissions.float(), tags, mask=mask, reduction="mean")  # ()
        em = emissions.float()  # (B, T, K)
        start, trans, end = self.crf.start_transitions, self.crf.transitions, self.crf.end_transitions
        lengths = mask.sum(dim=1)  # (B,)
        logz = _LogPartition.apply(em, start, trans, end, lengths)  # (B,)
        return (logz - self._gold_score(em, tags, mask, lengths)).mean()  # ()

    def _gold_score(self, em: Tensor, tags: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        """Score of each row's gold path, as pytorch-crf's ``_compute_score`` -> ``(B,)``."""
        c = self.crf
        on = mask.to(em.dtype)  # (B, T)
        emitted = (em.gather(2, tags.unsqueeze(2)).squeeze(2) * on).sum(dim=1)  # (B,)
        moved = (c.transitions[tags[:, :-1], tags[:, 1:]] * on[:, 1:]).sum(dim=1)  # (B,)
        last = tags.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)  # (B,)
        return c.start_transitions[tags[:, 0]] + emitted + moved + c.end_transitions[last]  # (B,)

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor) -> list[list[int]]:
        """Constrained batched Viterbi.

        Args:
            emissions: ``(B, T, K)``; mask: ``(B, T)`` bool, right-padded, first step on.

        Returns:
            For each row, the best allowed tag path as a list of ``mask[b].sum()`` ints.
        """
        self._validate(emissions, mask)
        paths, lengths = self.viterbi_tensor(emissions, mask)
        rows = paths.tolist()
        return [row[:n] for row, n in zip(rows, lengths.tolist(), strict=True)]

    @torch.no_grad()
    def viterbi_tensor(
        self, emissions: Tensor, mask: Tensor, backend: str = "auto", allowed_tags: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Batched Viterbi returning tensors: paths ``(B, T)`` long (steps past a row's length repeat its
        last tag) and lengths ``(B,)`` long. Inputs as in :meth:`decode` (validated there).

        ``backend``: ``"c"`` the compiled CPU kernel (:mod:`ner_core.model._ckernel`), ``"torch"`` the tensor
        implementation below (any device), ``"auto"`` the kernel for CPU tensors when it is available.
        Both return identical paths: the best allowed path of each row, exactly (removed moves are
        ``-inf``); a row with no allowed path gets the penalised fallback of the module doc.

        ``allowed_tags``: optional ``(B, T, K)`` bool, the tags each position may take (a user dictionary's
        forced spans, :mod:`ner_core.inference.dictionary`); the path is then the best one through allowed
        tags only (see :func:`mask_emissions`), on either backend.
        """
        kernel = self._use_kernel(backend, emissions, "Viterbi")
        em = mask_emissions(emissions, allowed_tags)
        paths, lengths, stuck = self._viterbi_with(em, mask, kernel, None)
        if bool(stuck.any()):  # rows with no allowed path at all (never without constraints)
            em = mask_emissions(emissions, allowed_tags, DISALLOWED)
            paths[stuck] = self._viterbi_with(em[stuck], mask[stuck], kernel, DISALLOWED)[0]
        return paths, lengths

    def _viterbi_with(
        self, emissions: Tensor, mask: Tensor, kernel: bool, penalty: float | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Viterbi by the C kernel or the tensor implementation, under :meth:`_constrained_scores`:
        paths ``(B, T)``, lengths ``(B,)`` and ``(B,)`` bool, True for a row with no allowed path (its
        path is meaningless)."""
        if kernel:
            lengths = mask.sum(dim=1)  # (B,)
            paths = torch.from_numpy(
                _ckernel.viterbi(
                    emissions.detach().float().numpy(force=True),
                    *self._scores_numpy(penalty),
                    lengths.numpy(),
                    threads=torch.get_num_threads(),
                )
            )
            return paths, lengths, paths[:, 0] < 0  # the kernel writes -1 for a row with no allowed path
        return self._viterbi_torch(emissions, mask, self._constrained_scores(torch.float32, penalty))

    def _viterbi_torch(
        self, emissions: Tensor, mask: Tensor, scores: Scores
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The tensor implementation of :meth:`viterbi_tensor`.

        The forward pass runs unmasked (a step only depends on earlier ones, so each row's scores up to
        its own length are exact); each row's final score is then read at its last step. Back-tracking
        is one batched ``gather`` over the backpointer tensor per step for all rows at once (no loop per
        sequence, no ``.item()``). Not a log-depth suffix scan composing the backpointer maps: on CPU its
        ``log2(T)`` gathers over the whole ``(T, B, K)`` tensor cost more than ``T`` tiny ones.
        """
        B, T, K = emissions.shape
        device = emissions.device
        em = emissions.float().transpose(0, 1).contiguous()  # (T, B, K)
        start, trans, end = scores  # -inf entries are fine here: max and + never meet +inf
        trans_t = trans.t().contiguous().unsqueeze(0)  # (1, K_to, K_from): reduce over the last dim
        scores = torch.empty(T, B, K, dtype=em.dtype, device=device)  # best score ending in each tag
        history = torch.empty(T, B, K, dtype=torch.long, device=device)  # backpointers: tag at t -> t-1
        best = torch.empty(B, K, dtype=em.dtype, device=device)
        torch.add(em[0], start, out=scores[0])  # (B, K)
        for t in range(1, T):
            # (B, 1, K_from) + (1, K_to, K_from) -> (B, K_to, K_from); max over the previous tag
            torch.max(scores[t - 1].unsqueeze(1) + trans_t, dim=2, out=(best, history[t]))  # (B, K)
            torch.add(best, em[t], out=scores[t])  # (B, K)
        lengths = mask.sum(dim=1)  # (B,)
        rows = torch.arange(B, device=device)
        final = scores[lengths - 1, rows] + end.unsqueeze(0)  # (B, K)
        last = final.argmax(dim=1)  # (B,)
        stuck = torch.isneginf(final.amax(dim=1))  # (B,): no allowed path
        # Steps past a row's end get identity backpointers, so back-tracking from the last column
        # carries the row's last tag through its padding unchanged.
        identity = torch.arange(K, device=device).view(1, 1, K)  # (1, 1, K)
        history = torch.where(mask.t().unsqueeze(2), history, identity)  # (T, B, K)
        path_tb = torch.empty(T, B, 1, dtype=torch.long, device=device)  # (T, B, 1)
        path_tb[T - 1, :, 0] = last
        for t in range(T - 1, 0, -1):  # one batched gather per step, never a loop per sequence
            torch.gather(history[t], 1, path_tb[t], out=path_tb[t - 1])  # (B, 1)
        paths = path_tb.squeeze(2).t()  # (B, T)
        return paths, lengths, stuck

    @staticmethod
    def _forward_alphas(em: Tensor, mask: Tensor, start: Tensor, trans: Tensor) -> Tensor:
        """Forward log-scores ``(B, T, K)`` under the given start (K,) and transition (K, K) scores;
        padded steps repeat the row's last."""
        T = em.shape[1]
        shifted = _ShiftedExp(trans)
        alpha = start.unsqueeze(0) + em[:, 0]  # (B, K)
        out = [alpha]
        for t in range(1, T):
            nxt = _log_matmul_exp(alpha, shifted) + em[:, t]  # (B, K)
            alpha = torch.where(mask[:, t].unsqueeze(1), nxt, alpha)  # (B, K)
            out.append(alpha)
        return torch.stack(out, dim=1)  # (B, T, K)

    @torch.no_grad()
    def marginals(
        self, emissions: Tensor, mask: Tensor, backend: str = "auto", allowed_tags: Tensor | None = None
    ) -> Tensor:
        """Posterior tag probabilities by forward-backward over the allowed paths (exactly: a forbidden
        start, move or end gets probability 0 whatever the emissions; a row with no allowed path gets the
        penalised fallback of the module doc).

        Args:
            emissions: ``(B, T, K)``; mask: ``(B, T)`` bool, right-padded, first step on.
            backend: ``"c"`` the compiled CPU kernel (:func:`ner_core.model._ckernel.marginals`), ``"torch"``
                the tensor implementation below (any device), ``"auto"`` the kernel for CPU tensors when
                it is available. Both compute the same float64 arithmetic (tested to agree).
            allowed_tags: optional ``(B, T, K)`` bool, the tags each position may take: the marginals are
                then conditioned on the path going through allowed tags only (as in :meth:`viterbi_tensor`).

        Returns:
            ``(B, T, K)`` float32: ``p(y_t = k | x)``; each on step sums to 1, padded steps are all 0.
            Computed in float64: alpha + beta - log Z cancels large magnitudes on long sequences.
        """
        self._validate(emissions, mask)
        kernel = self._use_kernel(backend, emissions, "marginals")
        out = self._marginals_with(mask_emissions(emissions, allowed_tags), mask, kernel, None)
        stuck = torch.isnan(out[:, 0, 0])  # (B,): no allowed path (the whole row is NaN; step 0 is on)
        if bool(stuck.any()):
            em = mask_emissions(emissions, allowed_tags, DISALLOWED)
            out[stuck] = self._marginals_with(em[stuck], mask[stuck], kernel, DISALLOWED)
        return out

    def _marginals_with(self, emissions: Tensor, mask: Tensor, kernel: bool, penalty: float | None) -> Tensor:
        """Marginals by the C kernel or the tensor implementation, under :meth:`_constrained_scores`; a
        row with no allowed path comes back NaN (its log-partition is ``-inf``)."""
        if kernel:
            out = _ckernel.marginals(
                emissions.detach().float().numpy(force=True),
                *self._scores_numpy(penalty),
                mask.sum(dim=1).numpy(),
                threads=torch.get_num_threads(),
            )
            return torch.from_numpy(out)
        return self._marginals_torch(emissions, mask, self._constrained_scores(torch.float64, penalty))

    def _marginals_torch(self, emissions: Tensor, mask: Tensor, scores: Scores) -> Tensor:
        """The tensor implementation of :meth:`marginals` (inputs validated there)."""
        em = emissions.double()  # (B, T, K)
        B, T, K = em.shape
        start, trans, end = scores
        alphas = self._forward_alphas(em, mask, start, trans)  # (B, T, K)
        end_b = end.unsqueeze(0).expand(B, K)  # (B, K)
        trans_t = _ShiftedExp(trans.t())  # (K, K) [to, from]
        beta = end_b
        betas = [beta]
        for t in range(T - 2, -1, -1):
            # beta_t(i) = logsumexp_j trans[i, j] + em[t+1, j] + beta_{t+1}(j)
            nxt = _log_matmul_exp(em[:, t + 1] + beta, trans_t)  # (B, K)
            # when step t+1 is padding, step t is the row's last (or padding): only the end score remains
            beta = torch.where(mask[:, t + 1].unsqueeze(1), nxt, end_b)  # (B, K)
            betas.append(beta)
        betas_t = torch.stack(betas[::-1], dim=1)  # (B, T, K)
        log_z = torch.logsumexp(alphas[:, -1] + end.unsqueeze(0), dim=1)  # (B,); -inf: no allowed path
        post = torch.exp(alphas + betas_t - log_z.view(B, 1, 1))  # (B, T, K)
        post = torch.where(torch.isinf(log_z).view(B, 1, 1), torch.nan, post)
        return (post * mask.unsqueeze(2).to(post.dtype)).float()  # (B, T, K)


class _LogPartition(torch.autograd.Function):
    """``log Z`` per row of an unconstrained CRF by the C forward-backward, with its exact gradient
    (marginals for the emissions, start and end; expected transition counts for the transitions)."""

    @staticmethod
    def forward(ctx, em: Tensor, start: Tensor, trans: Tensor, end: Tensor, lengths: Tensor) -> Tensor:
        logz, marg, pairs = _ckernel.logz_grad(
            em.detach().numpy(),
            start.detach().float().numpy(),
            trans.detach().float().numpy(),
            end.detach().float().numpy(),
            lengths.numpy(),
            threads=torch.get_num_threads(),
        )
        ctx.save_for_backward(torch.from_numpy(marg), torch.from_numpy(pairs), lengths)
        return torch.from_numpy(logz).to(em.dtype)  # (B,)

    @staticmethod
    def backward(ctx, grad: Tensor):
        marg, pairs, lengths = ctx.saved_tensors  # (B, T, K), (B, K, K), (B,)
        g = grad.to(marg.dtype)  # (B,)
        rows = torch.arange(marg.shape[0])
        d_em = marg * g[:, None, None]  # (B, T, K)
        d_start = (marg[:, 0] * g[:, None]).sum(dim=0)  # (K,)
        d_end = (marg[rows, lengths - 1] * g[:, None]).sum(dim=0)  # (K,)
        d_trans = (pairs * grad.double()[:, None, None]).sum(dim=0).float()  # (K, K)
        return d_em, d_start, d_trans, d_end, None
