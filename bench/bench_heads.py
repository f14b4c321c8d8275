"""Head benchmark.

1. Head-only inference time of BiLSTM, BiGRU and IDCNN (default HeadConfig sizes) at batch 64 x 256
   characters with 512-dim inputs (m3e-small's width), and IDCNN's speed-up over each RNN.
2. The RNN heads' inference per precision at batch 16 x 128 (prediction windows): fp32, under bf16 autocast
   (where oneDNN has a bf16 kernel; the GRU has none and runs float32 there), the int8 copy's one-way passes
   (``BiRNNHead.quantize_int8``) and ``run_in_bf16``, so the int8 tagger's head choice can be checked.
3. When the packaged m3e-small encoder is installed: head + emission layer + constrained CRF decode time
   as a share of the encoder's forward time on CPU at batch 32 x 128 (goal <= 10%), per head.

Prints best-of-N wall times; never asserts. Run: ``python -m bench.bench_heads``.
"""

from __future__ import annotations

import os
import time

import torch

from ner_core.config import HeadConfig, HeadType, NERConfig
from ner_core.model.heads import build_head

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HEADS = [HeadType.BILSTM, HeadType.BIGRU, HeadType.IDCNN]
SHARE_GOAL = 0.10


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def head_times(B: int = 64, T: int = 256, H: int = 512, repeats: int = 3) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(B, T, H)  # (B, T, H)
    mask = torch.ones(B, T, dtype=torch.bool)  # (B, T)
    out = {}
    for kind in HEADS:
        head = build_head(HeadConfig(type=kind), H).eval()
        with torch.inference_mode():
            out[kind.value] = _best(lambda head=head: head(x, mask), repeats)
    return out


def encoder_share(B: int = 32, T: int = 128, repeats: int = 3) -> list[dict] | None:
    from ner_core import schemes
    from ner_core.model.encoder import load_encoder, resolve_encoder
    from ner_core.model.network import NERModel

    try:
        resolve_encoder("m3e-small")
    except ValueError as exc:
        print(f"encoder share: skipped ({exc})")
        return None
    cfg = NERConfig()
    encoder, _ = load_encoder(cfg.encoder)
    encoder.eval()
    tags = schemes.tag_set(["PER", "LOC", "ORG", "TIME", "NUM"], cfg.data.scheme)  # 21 BIOES tags
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(106, 8000, (B, T), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    am = torch.ones(B, T, dtype=torch.long)
    with torch.inference_mode():
        enc_s = _best(lambda: encoder(input_ids=ids, attention_mask=am).last_hidden_state, repeats)
        hidden = encoder(input_ids=ids, attention_mask=am).last_hidden_state[:, 1:-1]  # (B, T-2, 512)
    char_mask = torch.ones(B, T - 2, dtype=torch.bool)  # (B, T-2)
    rows = []
    for kind in HEADS:
        model = NERModel(cfg.with_overrides({"head.type": kind.value}), tags, encoder).eval()

        def rest(model=model):
            em = model.classifier(model.head(hidden, char_mask))  # (B, T-2, K)
            return model.crf.decode(em, char_mask)

        with torch.inference_mode():
            rest_s = _best(rest, repeats)
        rows.append({"head": kind.value, "encoder_s": enc_s, "head_crf_s": rest_s, "share": rest_s / enc_s})
    return rows


def precision_times(B: int = 16, T: int = 128, H: int = 512, repeats: int = 5) -> dict[str, dict[str, float]]:
    """Per RNN head, inference seconds: fp32, bf16 autocast, int8 one-way passes, bf16 for an int8 copy."""
    torch.manual_seed(0)
    x = torch.randn(B, T, H)  # (B, T, H)
    mask = torch.ones(B, T, dtype=torch.bool)  # (B, T)
    out: dict[str, dict[str, float]] = {}
    for kind in (HeadType.BILSTM, HeadType.BIGRU):
        head = build_head(HeadConfig(type=kind), H).eval()
        row = {}
        with torch.inference_mode():
            row["fp32"] = _best(lambda head=head: head(x, mask), repeats)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                row["bf16 autocast"] = _best(lambda head=head: head(x, mask), repeats)
            head.quantize_int8()
            row["int8"] = _best(lambda head=head: head(x, mask), repeats)
            head._int8 = None
            head.run_in_bf16()
            row["run_in_bf16"] = _best(lambda head=head: head(x, mask), repeats)
        out[kind.value] = row
    return out


def main() -> dict:
    from bench.machine import describe

    print(describe())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    times = head_times()
    print("head-only inference, batch 64 x 256, input 512 (best of 3):")
    for name, s in times.items():
        print(f"  {name:>7}: {s * 1e3:9.1f} ms")
    print(
        f"  IDCNN speed-up: {times['bilstm'] / times['idcnn']:.1f}x vs BiLSTM, "
        f"{times['bigru'] / times['idcnn']:.1f}x vs BiGRU",
        flush=True,
    )
    per_precision = precision_times()
    print("RNN head inference per precision, batch 16 x 128, input 512 (best of 5):")
    for name, row in per_precision.items():
        print(f"  {name:>7}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in row.items()))
    share = encoder_share()
    if share:
        print(
            "head + CRF decode as a share of the m3e-small forward, batch 32 x 128 "
            f"(goal <= {SHARE_GOAL:.0%}):"
        )
        for r in share:
            print(
                f"  {r['head']:>7}: encoder {r['encoder_s'] * 1e3:8.1f} ms, "
                f"head+CRF {r['head_crf_s'] * 1e3:8.1f} ms"
                f" = {r['share']:.1%}"
            )
    return {"heads": times, "per_precision": per_precision, "share": share}


if __name__ == "__main__":
    main()
