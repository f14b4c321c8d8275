"""User-dictionary decoding benchmark: whole-text CRF decoding with and without a 100k-entry dictionary.

What it times is the part of prediction a dictionary changes: per text, the Aho-Corasick matching and the
resolution (:meth:`UserDictionary.plan`), and the CRF's Viterbi + marginals over stitched whole-text
emissions in the tagger's batches (length-sorted, at most 64 rows and 262,144 padded positions), plain
(``ConstrainedCRF.viterbi_tensor`` / ``marginals``) against :func:`decode_with_dictionary`. The encoder,
which dominates a real prediction and does not change, is left out, so the ratio is an upper bound on the
slowdown of ``ner predict``. Goal: within 1.2x.

Synthetic and seeded: 100,000 entries (2-6 characters from a 3,000-character vocabulary; a share forbid,
the rest force; 4 labels), written to a JSONL file and read back with :func:`load_dictionary` (its time is
printed too); texts of 200-4,000 characters with dictionary words planted about every ``--every``
characters; BIOES over 4 labels (17 tags), random CRF scores and emissions. Prints wall times (best of a
few repeats) and the machine line; never asserts. Run: ``python -m bench.bench_dictionary``.

``--full N`` also times whole predictions (:meth:`Tagger.predict`: encoder, head, CRF, entities with their
confidence) of the first ``N`` texts with and without the dictionary: an untrained m3e-small + BiLSTM-CRF
(research / non-commercial use only) over the same 4 labels, window 128, batch 16, fp32, rounds
interleaved. That ratio is the goal's own measure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.machine import describe
from ner_core.inference.dictionary import decode_with_dictionary, load_dictionary
from ner_core.inference.tagger import crf_batches
from ner_core.model.crf import ConstrainedCRF
from ner_core.schemes import allowed_transitions, tag_set

LABELS = ["LOC", "ORG", "PER", "TITLE"]
GOAL = 1.2


def _chars(rng: np.random.Generator, n: int) -> str:
    return "".join(chr(0x4E00 + int(c)) for c in rng.integers(0, 3000, size=n))


def make_dictionary(path: Path, n: int, forbid_share: float, seed: int) -> list[str]:
    """Writes ``n`` distinct entries to ``path`` (JSONL); returns their texts."""
    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < n:
        words[_chars(rng, int(rng.integers(2, 7)))] = None
    texts = list(words)
    with path.open("w", encoding="utf-8") as fh:
        for w in texts:
            mode = "forbid" if rng.random() < forbid_share else "force"
            rec = {"text": w, "label": LABELS[int(rng.integers(len(LABELS)))], "mode": mode}
            if rng.random() < 0.1:
                rec["priority"] = int(rng.integers(-3, 4))
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return texts


def make_texts(words: list[str], n_texts: int, every: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed + 1)
    out = []
    for _ in range(n_texts):
        length = int(rng.integers(200, 4001))
        parts, size = [], 0
        while size < length:
            gap = _chars(rng, int(rng.integers(every // 2, every * 3 // 2)))
            word = words[int(rng.integers(len(words)))]
            parts += [gap, word]
            size += len(gap) + len(word)
        out.append("".join(parts)[:length])
    return out


def padded(stitched: list[np.ndarray], rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(stitched[i]) for i in rows)
    em = np.zeros((len(rows), longest, stitched[0].shape[1]), dtype=np.float32)
    lengths = torch.tensor([len(stitched[i]) for i in rows])
    for r, i in enumerate(rows):
        em[r, : len(stitched[i])] = stitched[i]
    return torch.from_numpy(em), torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)


def run(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    tags = tag_set(LABELS, "BIOES")
    crf = ConstrainedCRF(len(tags), allowed_transitions(tags, "BIOES"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dictionary.jsonl"
        words = make_dictionary(path, args.entries, args.forbid_share, args.seed)
        t0 = time.perf_counter()
        dictionary = load_dictionary(path, labels=LABELS)
        load_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1e6
    texts = make_texts(words, args.texts, args.every, args.seed)
    rng = np.random.default_rng(args.seed + 2)
    stitched = [(rng.standard_normal((len(t), len(tags))) * 3).astype(np.float32) for t in texts]
    groups = [(rows, *padded(stitched, rows)) for rows in crf_batches([len(t) for t in texts])]

    def plain() -> None:
        for _, em, mask in groups:
            crf.viterbi_tensor(em, mask)
            crf.marginals(em, mask)

    def with_dictionary() -> None:
        plans = [dictionary.plan(t) for t in texts]
        for rows, em, mask in groups:
            decode_with_dictionary(crf, em, mask, [plans[i] for i in rows], tags, "BIOES")

    def matching() -> None:
        for t in texts:
            dictionary.plan(t)

    plans = [dictionary.plan(t) for t in texts]
    n_forced = sum(len(p.forced) for p in plans)
    n_forbidden = sum(len(p.forbidden) for p in plans)
    chars = sum(len(t) for t in texts)
    print(describe())
    print(
        f"dictionary: {len(dictionary)} entries ({size_mb:.1f} MB JSONL) loaded in {load_s:.2f} s; "
        f"texts: {len(texts)}, {chars} characters, {len(tags)} tags (BIOES); "
        f"{n_forced} forced and {n_forbidden} forbidden spans, "
        f"{sum(bool(p.forbidden) for p in plans)} texts with a forbidden span"
    )
    base = _best(plain, args.repeats)
    match = _best(matching, args.repeats)
    dic = _best(with_dictionary, args.repeats)
    print(f"plain CRF decode (Viterbi + marginals): {base * 1e3:8.1f} ms")
    print(f"matching + resolution only:             {match * 1e3:8.1f} ms")
    print(f"with dictionary (matching + decode):    {dic * 1e3:8.1f} ms")
    verdict = "meets" if dic / base <= GOAL else "misses"
    print(f"ratio with/without, CRF decoding alone: {dic / base:.2f}x ({verdict} the goal of {GOAL}x)")
    extra = (dic - base) / chars  # seconds per character the dictionary adds
    if args.predict_chars_per_s:
        full = 1.0 / args.predict_chars_per_s
        ratio = (full + extra) / full
        verdict = "meets" if ratio <= GOAL else "misses"
        print(
            f"added {extra * 1e6:.2f} us/char; on a whole prediction at "
            f"{args.predict_chars_per_s:,.0f} chars/s "
            f"(given, not measured here) that is {ratio:.3f}x ({verdict} the goal of {GOAL}x; estimate)"
        )
    if args.full:
        full_prediction(dictionary, texts[: args.full], args.repeats)


def full_prediction(dictionary, texts: list[str], repeats: int) -> None:
    """Whole predictions of ``texts`` with and without ``dictionary`` (see the module's doc)."""
    from bench.bench_span import _config
    from ner_core.inference.tagger import Tagger
    from ner_core.model.encoder import load_encoder
    from ner_core.model.network import NERModel

    cfg = _config("crf", None)
    torch.manual_seed(0)
    encoder, tokenizer = load_encoder(cfg.encoder)
    model = NERModel(cfg, tag_set(LABELS, "BIOES"), encoder).eval()
    plain = Tagger(model, tokenizer, max_len=128, batch_size=16)
    with_dict = Tagger(model, tokenizer, max_len=128, batch_size=16, dictionary=dictionary)
    plain.predict(texts[:1])
    with_dict.predict(texts[:1])
    best = {"plain": float("inf"), "dictionary": float("inf")}
    found = {}
    for r in range(repeats):  # interleaved: a load that drifts favours neither
        for name, tagger in [("plain", plain), ("dictionary", with_dict)][:: 1 if r % 2 == 0 else -1]:
            t0 = time.perf_counter()
            preds = tagger.predict(texts)
            best[name] = min(best[name], time.perf_counter() - t0)
            found[name] = sum(len(p) for p in preds), sum(e.from_dictionary for p in preds for e in p)
    chars = sum(len(t) for t in texts)
    for name, s in best.items():
        print(
            f"whole prediction, {name:<10}: {s:7.2f} s, {chars / s:8,.0f} chars/s, "
            f"{found[name][0]} entities ({found[name][1]} from the dictionary)"
        )
    ratio = best["dictionary"] / best["plain"]
    verdict = "meets" if ratio <= GOAL else "misses"
    print(
        f"ratio with/without, whole prediction of {len(texts)} texts ({chars} chars): {ratio:.3f}x "
        f"({verdict} the goal of {GOAL}x)"
    )


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--texts", type=int, default=100)
    p.add_argument("--every", type=int, default=60, help="characters between planted dictionary words")
    p.add_argument("--forbid-share", type=float, default=0.2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--predict-chars-per-s",
        type=float,
        default=0.0,
        help="a measured whole-prediction speed (bench.bench_predict) to put the added time in proportion",
    )
    p.add_argument("--full", type=int, default=0, help="also time whole predictions of this many texts")
    run(p.parse_args())


if __name__ == "__main__":
    main()
