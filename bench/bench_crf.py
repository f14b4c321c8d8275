"""CRF decoding benchmark: our batched Viterbi vs pytorch-crf's ``decode``.

Shapes (batch x steps x tags): 64 x 128 x 9 and 256 x 256 x 21, random right-padded lengths.
Goal: >= 20x faster than pytorch-crf, with identical paths when unconstrained. Also prints the
constrained (BIOES-style masks) decode time and the marginals (forward-backward) time, ours (the C kernel)
against the torch implementation, and their largest difference.
"ours" is the default on CPU: the compiled C kernels (ner_core/csrc/crf.c) when this machine can build
them; "torch impl" is the tensor implementation kept for GPUs and machines without a compiler.
Prints wall and CPU time (best of a few repeats); never asserts. Run: ``python -m bench.bench_crf``.
"""

from __future__ import annotations

import time

import torch
from torchcrf import CRF

from ner_core.model import _ckernel
from ner_core.model.crf import ConstrainedCRF

SHAPES = [(64, 128, 9), (256, 256, 21)]
GOAL = 20.0


def _timed(fn, repeats: int) -> tuple[float, float, object]:
    """Best wall and CPU seconds over ``repeats`` runs, and the last result."""
    best_wall = best_cpu = float("inf")
    out = None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best_wall, best_cpu, out


def _bioes_masks(K: int):
    """Allowed masks for O + (K-1)/4 labels in BIOES, built without ner_core.schemes."""
    n_labels = (K - 1) // 4
    tags = ["O"] + [f"{p}-L{i}" for i in range(n_labels) for p in "BIES"]
    tags += [f"X{i}" for i in range(K - len(tags))]  # filler tags behave like O
    role = [t.split("-")[0] if "-" in t else "O" for t in tags]
    lab = [t.split("-")[1] if "-" in t else None for t in tags]
    start = torch.tensor([r in ("O", "B", "S") for r in role])
    end = torch.tensor([r in ("O", "E", "S") for r in role])
    trans = torch.tensor(
        [
            [
                (b in ("I", "E") and lab[i] == lab[j]) if a in ("B", "I") else b in ("O", "B", "S")
                for j, b in enumerate(role)
            ]
            for i, a in enumerate(role)
        ]
    )
    return start, trans, end


def run_shape(B: int, T: int, K: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    em = torch.randn(B, T, K, generator=g)  # (B, T, K)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    torch.manual_seed(seed)
    ours = ConstrainedCRF(K)
    ref = CRF(K, batch_first=True)
    ref.load_state_dict(
        {k.removeprefix("crf."): v for k, v in ours.state_dict().items() if k.startswith("crf.")}
    )
    constrained = ConstrainedCRF(K, _bioes_masks(K))
    constrained.load_state_dict(
        {
            **ours.state_dict(),
            **{k: v for k, v in constrained.state_dict().items() if k.startswith("allowed_")},
        }
    )
    with torch.inference_mode():
        ref_w, ref_c, ref_paths = _timed(lambda: ref.decode(em, mask), 2)
        our_w, our_c, our_paths = _timed(lambda: ours.decode(em, mask), 20)
        tor_w, _, tor_paths = _timed(lambda: ours.viterbi_tensor(em, mask, backend="torch"), 5)
        con_w, _, _ = _timed(lambda: constrained.decode(em, mask), 20)
        mar_w, _, marg = _timed(lambda: constrained.marginals(em, mask), 5)
        mar_t, _, marg_t = _timed(lambda: constrained.marginals(em, mask, backend="torch"), 2)
    return {
        "shape": f"{B}x{T}x{K}",
        "torchcrf_s": ref_w,
        "torchcrf_cpu_s": ref_c,
        "ours_s": our_w,
        "ours_cpu_s": our_c,
        "speedup": ref_w / our_w,
        "identical": our_paths == ref_paths,
        "torch_impl_s": tor_w,
        "torch_impl_identical": [
            row[:n] for row, n in zip(tor_paths[0].tolist(), tor_paths[1].tolist(), strict=True)
        ]
        == ref_paths,
        "constrained_s": con_w,
        "marginals_s": mar_w,
        "marginals_torch_s": mar_t,
        "marginals_max_diff": float((marg - marg_t).abs().max()),
    }


def main() -> list[dict]:
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"goal: >= {GOAL:.0f}x pytorch-crf decode; Viterbi and marginals backend: "
        + ("C kernel" if _ckernel.load() is not None else "torch (no C compiler)")
    )
    print(
        f"{'shape':>12} {'torchcrf ms':>12} {'ours ms':>9} {'speed-up':>9} {'cpu speed-up':>13} "
        f"{'identical':>9} {'torch impl ms':>13} {'constr. ms':>10} {'marginals ms':>12} "
        f"{'torch marg. ms':>14} {'max diff':>8}"
    )
    rows = []
    for B, T, K in SHAPES:
        r = run_shape(B, T, K)
        rows.append(r)
        print(
            f"{r['shape']:>12} {r['torchcrf_s'] * 1e3:12.1f} {r['ours_s'] * 1e3:9.2f} {r['speedup']:8.1f}x "
            f"{r['torchcrf_cpu_s'] / max(r['ours_cpu_s'], 1e-9):12.1f}x {r['identical']!s:>9} "
            f"{r['torch_impl_s'] * 1e3:13.2f} "
            f"{r['constrained_s'] * 1e3:10.2f} {r['marginals_s'] * 1e3:12.2f} "
            f"{r['marginals_torch_s'] * 1e3:14.1f} {r['marginals_max_diff']:8.1e}",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
