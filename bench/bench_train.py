"""Training benchmark on real data: entity F1 within a time budget, ours against a plain HF softmax tagger.

    python -m bench.bench_train                          # quick profile: 5 min, BiLSTM-CRF + HF baseline
    python -m bench.bench_train --minutes 30 --heads bilstm,bigru,idcnn,none   # the full comparison
    python -m bench.bench_train --dataset finance --minutes 20 --heads bilstm  # seed finance dev

Resume NER (../shared/datasets/resume-ner): train on train, early-stop on dev, report test. The finance
data (the seed's) has no labelled test split: train on train, report dev. Every model gets the same
encoder (m3e-small unless --encoder), data, max_len and wall-clock budget; the baseline is
``AutoModelForTokenClassification`` (linear softmax head, no CRF) trained by the same loop settings.
Figures are printed, never asserted. m3e-small: research / non-commercial use only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def load_split(dataset: str, split: str):
    from ner_core.data.formats import read_file

    if dataset == "resume":
        path = SHARED / "resume-ner" / f"{split}.char.bmes"
    elif dataset == "finance":
        path = SHARED / "keras-bert-ner-finance" / f"{split}.txt"
    else:
        raise ValueError(f"unknown dataset {dataset!r}: resume or finance")
    if not path.exists():
        return None
    return read_file(path, untyped_label="FIN").documents


def load_resume() -> tuple[list, list, list] | None:
    """Resume NER's train, dev and test documents, or ``None`` (with the skip line printed) where
    ../shared lacks them: the opening of every recipe bench."""
    train_docs = load_split("resume", "train")
    if train_docs is None:
        print("skipped: no Resume NER data in ../shared/datasets/resume-ner")
        return None
    return train_docs, load_split("resume", "dev"), load_split("resume", "test")


def run_ours(
    head: str,
    encoder: str,
    train_docs,
    dev_docs,
    test_docs,
    minutes: float,
    max_len: int,
    out: Path,
    precision: str = "auto",
):
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.config import NERConfig
    from ner_core.inference.evaluate import evaluate_model
    from ner_core.training.loop import train

    labels = sorted({e.label for d in train_docs for e in d.entities})
    cfg = NERConfig.model_validate(
        {
            "data": {"max_len": max_len},
            "encoder": {"name": encoder},
            "head": {"type": head},
            "training": {
                "max_epochs": 50,
                "batch_size": 32,
                "learning_rate": 1e-4,
                "head_learning_rate": 2e-3,
                "crf_learning_rate": 2e-2,
                "max_train_seconds": minutes * 60,
                "early_stop_patience": 3,
                "precision": precision,
            },
        }
    )
    res = train(cfg, train_docs, dev_docs, labels, out / f"{head}-{precision}", progress=False)
    loaded = load_model_dir(res.model_dir)
    t0 = time.perf_counter()
    report = evaluate_model(loaded.model, loaded.tokenizer, test_docs, max_len=max_len)
    sps = sum(h.sentences_per_second * (h.seconds) for h in res.history) / max(
        1e-9, sum(h.seconds for h in res.history)
    )
    return {
        "model": f"{head}-crf" if head != "none" else "crf only",
        "f1": report.f1,
        "p": report.precision,
        "r": report.recall,
        "char_acc": report.char_accuracy,
        "sent_acc": report.sentence_accuracy,
        "epochs": len(res.history),
        "best_epoch": res.best_epoch,
        "train_s": sum(h.seconds for h in res.history),
        "sent_per_s": max(h.sentences_per_second for h in res.history),
        "mean_sent_per_s": sps,
        "eval_s": time.perf_counter() - t0,
        "precision": res.precision,
    }


def _steps(batches: list, step) -> float:
    """Sentences per second of ``step`` over ``batches``, in the steady state: one untimed pass first, so
    every batch shape has been seen once (oneDNN builds and caches a kernel per new shape; a training run
    meets the same bucketed shapes every epoch), then the timed pass."""
    for b in batches:
        step(b)
    t0, seen = time.perf_counter(), 0
    for b in batches:
        step(b)
        seen += b["input_ids"].size(0)
    return seen / (time.perf_counter() - t0)


def throughput(encoder: str, train_docs, precisions: list[str], n_batches: int, max_len: int) -> dict:
    """Training sentences/s: ours (BiLSTM-CRF) at each precision against the HF softmax tagger in fp32, the
    same encoder weights, data and batches (batch 32, length-bucketed), one optimiser step per batch."""
    import torch
    from transformers import AutoModelForTokenClassification

    from ner_core.config import NERConfig
    from ner_core.data.alignment import CharAligner
    from ner_core.data.batching import TaggedDataset
    from ner_core.model.encoder import load_encoder, resolve_encoder
    from ner_core.model.network import NERModel
    from ner_core.runtime.precision import autocast
    from ner_core.schemes import tag_set
    from ner_core.training.loop import make_optimizer

    labels = sorted({e.label for d in train_docs for e in d.entities})
    tags = tag_set(labels, "BIOES")
    cfg = NERConfig.model_validate({"data": {"max_len": max_len}, "encoder": {"name": encoder}})
    cpu = torch.device("cpu")
    _, tok = load_encoder(cfg.encoder)
    data = TaggedDataset(train_docs, CharAligner(tok), tags, "BIOES", max_len)
    batches = list(data.batches(32, shuffle=True, seed=1))[:n_batches]
    out: dict[str, float] = {}
    for p in precisions:
        torch.manual_seed(0)
        model = NERModel(cfg, tags, load_encoder(cfg.encoder)[0]).train()
        opt = make_optimizer([{"params": list(model.parameters()), "lr": 1e-5}], 0.01, cpu)  # as training

        def ours(b, model=model, opt=opt, p=p):
            with autocast(p, "cpu"):
                loss = model(b["input_ids"], b["attention_mask"], b["tags"])
            loss.backward()
            opt.step()
            opt.zero_grad()

        out[f"ours {p}"] = _steps(batches, ours)
        print(f"  ours BiLSTM-CRF {p:<5} {out[f'ours {p}']:7.1f} sent/s", flush=True)
    # the baseline as HF's Trainer runs it by default with torch >= 2.8 (optim "adamw_torch_fused"), and,
    # for comparison with earlier figures, with the unfused AdamW
    for name, fused in (("HF softmax fp32", True), ("HF softmax fp32, unfused AdamW", None)):
        torch.manual_seed(0)
        hf = AutoModelForTokenClassification.from_pretrained(
            resolve_encoder(encoder), num_labels=len(tags)
        ).train()
        opt = torch.optim.AdamW(hf.parameters(), lr=1e-5, weight_decay=0.01, fused=fused)

        def softmax(b, hf=hf, opt=opt):
            lab = torch.full_like(b["input_ids"], -100)  # (B, T+2)
            lab[:, 1:-1] = b["tags"].masked_fill(b["attention_mask"][:, 2:] == 0, -100)
            hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=lab).loss.backward()
            opt.step()
            opt.zero_grad()

        out[name] = _steps(batches, softmax)
        print(f"  {name:<31} {out[name]:7.1f} sent/s", flush=True)
    base = out["HF softmax fp32"]
    for p in precisions:
        print(
            f"  ours {p} / HF softmax fp32: {out[f'ours {p}'] / base:.2f}x (goal >= 1.5x with bf16 units); "
            f"/ unfused: {out[f'ours {p}'] / out['HF softmax fp32, unfused AdamW']:.2f}x"
        )
    return out


def run_baseline(encoder: str, train_docs, dev_docs, test_docs, minutes: float, max_len: int):
    """HF AutoModelForTokenClassification (softmax), same encoder, data, batches, optimiser, budget."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from ner_core.data.alignment import CharAligner
    from ner_core.data.batching import EncodedChunk, TaggedDataset, collate, sliding_windows
    from ner_core.documents import Entity
    from ner_core.metrics import evaluate
    from ner_core.model.encoder import resolve_encoder
    from ner_core.schemes import tag_set, tags_to_spans

    torch.manual_seed(42)
    labels = sorted({e.label for d in train_docs for e in d.entities})
    tags = tag_set(labels, "BIOES")
    path = resolve_encoder(encoder)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForTokenClassification.from_pretrained(path, num_labels=len(tags))
    aligner = CharAligner(tok)
    data = TaggedDataset(train_docs, aligner, tags, "BIOES", max_len)
    enc_params = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
    opt = torch.optim.AdamW(
        [{"params": enc_params, "lr": 1e-4}, {"params": model.classifier.parameters(), "lr": 2e-3}],
        weight_decay=0.01,
    )
    budget, t0, seen, epochs = minutes * 60, time.perf_counter(), 0, 0
    model.train()
    while time.perf_counter() - t0 < budget:
        epochs += 1
        for batch in data.batches(32, shuffle=True, seed=epochs):
            lab = torch.full_like(batch["input_ids"], -100)  # (B, T+2): -100 on [CLS], [SEP], padding
            n = batch["attention_mask"].sum(1) - 2
            for b in range(lab.size(0)):
                lab[b, 1 : n[b] + 1] = batch["tags"][b, : n[b]]
            loss = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=lab
            ).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            seen += lab.size(0)
            if time.perf_counter() - t0 > budget:
                break
    train_s = time.perf_counter() - t0
    model.eval()
    preds = []
    with torch.inference_mode():
        for d in test_docs:
            char_tags = ["O"] * len(d.text)
            for s, e in sliding_windows(len(d.text), max_len, max_len) if d.text else []:
                enc = collate(
                    [EncodedChunk(None, aligner.char_ids(d.text[s:e]), None)],
                    aligner.cls_id,
                    aligner.sep_id,
                    aligner.pad_id,
                )
                logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[
                    0, 1:-1
                ]
                for j, t in enumerate(logits.argmax(-1).tolist()):
                    char_tags[s + j] = tags[t]
            preds.append(
                [Entity(start=x.start, end=x.end, label=x.label) for x in tags_to_spans(char_tags, "BIOES")]
            )
    report = evaluate(test_docs, preds, scheme="BIOES")
    return {
        "model": "HF softmax",
        "f1": report.f1,
        "p": report.precision,
        "r": report.recall,
        "char_acc": report.char_accuracy,
        "sent_acc": report.sentence_accuracy,
        "epochs": epochs,
        "best_epoch": epochs,
        "train_s": train_s,
        "sent_per_s": seen / train_s,
        "mean_sent_per_s": seen / train_s,
        "eval_s": 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.bench_train")
    p.add_argument("--dataset", default="resume", choices=["resume", "finance"])
    p.add_argument(
        "--minutes", type=float, default=5.0, help="training budget per model (full comparison: 30)"
    )
    p.add_argument("--heads", default="bilstm", help="comma-separated: bilstm,bigru,idcnn,none")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--encoder", default="m3e-small")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training documents")
    p.add_argument("--out", help="keep the trained model directories here (default: a temporary folder)")
    p.add_argument("--precision", default="auto", help="precision of our runs (auto, fp32, bf16, fp16)")
    p.add_argument(
        "--throughput",
        type=int,
        metavar="N_BATCHES",
        help="only measure training sentences/s over N batches, fp32 and bf16 vs HF softmax in fp32",
    )
    args = p.parse_args(argv if argv is not None else [])
    import torch

    from bench.machine import describe

    print(describe(), flush=True)

    train_docs = load_split(args.dataset, "train")
    if train_docs is None:
        print(f"skipped: {SHARED} has no {args.dataset} data")
        return
    if args.train_limit:
        train_docs = train_docs[: args.train_limit]
    dev_docs = load_split(args.dataset, "dev")
    test_docs = load_split(args.dataset, "test") if args.dataset == "resume" else dev_docs
    if args.throughput:
        n = args.throughput
        print(f"training throughput, {args.dataset}, encoder {args.encoder}, batch 32, {n} batches:")
        throughput(args.encoder, train_docs, ["fp32", "bf16"], args.throughput, args.max_len)
        return
    print(
        f"{args.dataset}: {len(train_docs)} train / {len(dev_docs)} dev / {len(test_docs)} eval documents; "
        f"encoder {args.encoder}; budget {args.minutes} min per model; "
        f"torch threads {torch.get_num_threads()}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.out:
            tmp = args.out
            Path(tmp).mkdir(parents=True, exist_ok=True)
        for head in [h for h in args.heads.split(",") if h]:
            rows.append(
                run_ours(
                    head,
                    args.encoder,
                    train_docs,
                    dev_docs,
                    test_docs,
                    args.minutes,
                    args.max_len,
                    Path(tmp),
                    args.precision,
                )
            )
            _print(rows[-1])
        if args.baseline:
            rows.append(
                run_baseline(args.encoder, train_docs, dev_docs, test_docs, args.minutes, args.max_len)
            )
            _print(rows[-1])
    _table(rows)


def _table(rows: list[dict]) -> None:
    print("\n| model | entity F1 | P | R | char acc | sent acc | epochs | train s | sent/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['f1'] * 100:.2f} | {r['p'] * 100:.2f} | {r['r'] * 100:.2f} | "
            f"{r['char_acc'] * 100:.2f} | {r['sent_acc'] * 100:.2f} | {r['epochs']} | {r['train_s']:.0f} | "
            f"{r['sent_per_s']:.1f} |"
        )
    base = next((r for r in rows if r["model"] == "HF softmax"), None)
    if base:
        for r in rows:
            if r is not base:
                ratio = r["mean_sent_per_s"] / base["sent_per_s"]
                print(f"throughput ratio {r['model']} / HF softmax: {ratio:.2f} (goal >= 0.9)")


def _print(r: dict) -> None:
    print(
        f"  {r['model']}: F1 {r['f1'] * 100:.2f} after {r['epochs']} epochs, {r['train_s']:.0f} s, "
        f"{r['sent_per_s']:.1f} sent/s",
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
