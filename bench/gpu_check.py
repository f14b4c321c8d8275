"""The GPU check: the ``gpu``-marked tests, training throughput at BERT-base size (ours against an HF
Trainer-style loop at the same precision) and prediction throughput (ours against HF's token-classification
pipeline at the same precision), printed as one table.

Run it through ``bench/gpu_check.sh`` (or ``make gpu-check``): on the accelerator machine that script
installs the carried wheels (made by ``bench/gpu_wheels.sh``) for the machine's own Python and torch.
Without CUDA it prints one line and exits 0; ``--dry-run`` runs every part on the CPU with a tiny encoder
and a few steps instead, to check the code, not the speed.

The encoder has bert-base-chinese's shape (hidden 768, 12 layers, 12 heads, intermediate 3072, 512
positions, 21128 tokens) and random weights, built in code: nothing is downloaded, and the speed depends
on the shape, not on the weights. Training batches: the sample corpus's training sentences joined into
documents and cut into windows of ``--max-len`` characters (full-length batches), their gold entities as
tags; both sides get the same batches, already on the device. Ours is one step of ``ner_core``'s training
loop (BiLSTM-CRF head; autocast for encoder and head, the CRF in fp32; the loss read every step; AMP loss
scaling for fp16; gradient clipping; fused AdamW); HF's is what ``Trainer`` runs per step by default
(``AutoModelForTokenClassification``, autocast at the same precision, fused AdamW, linear schedule,
clipping at 1.0). Prediction: the sample corpus's short texts, cycled; ours is ``Tagger.predict`` with
CRF confidences, HF's the ``token-classification`` pipeline (aggregation "simple") with its weights cast
to the precision; both batch 32. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_corpus"
LABELS = ["FIN", "LOC", "ORG", "PER"]
#: bert-base-chinese's shape
BERT_BASE = {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072}
BERT_BASE_VOCAB = 21128
#: the dry run's sizes: every code path, seconds on a CPU
TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}


# --------------------------------------------------------------------------------------- helpers
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _freed(result: dict, device) -> dict:
    """``result``, after the memory of the run that made it is given back (its locals are gone by now) and
    the peak counter reset, so each run's peak is its own."""
    _free(device)
    return result


def _peak_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def _sample_docs(split: str):
    from ner_core.data.formats import read_file

    return read_file(SAMPLE / f"{split}.jsonl").documents


def _short_texts() -> list[str]:
    """The sample corpus's texts of at most 126 characters (one window of either side, no stride)."""
    texts = [d.text for s in ("train", "dev", "test") for d in _sample_docs(s)]
    texts += [
        line for p in sorted((SAMPLE / "raw").glob("*.txt")) for line in p.read_text("utf-8").splitlines()
    ]
    return [t for t in texts if t.strip() and len(t) <= 126]


def bert_base_chars(texts: list[str]) -> str:
    """Every character of ``texts`` (lower-cased, no whitespace), then CJK ideographs, until the vocabulary
    :func:`make_tiny_encoder` builds from them (its specials first) has bert-base-chinese's size."""
    from ner_core.model.encoder import SPECIAL_TOKENS

    chars = {c for t in texts for c in t.lower() if not c.isspace()} - set(SPECIAL_TOKENS)
    need = BERT_BASE_VOCAB - len(SPECIAL_TOKENS)
    for code in itertools.chain(range(0x4E00, 0xA000), range(0x3400, 0x4DC0)):  # CJK, then extension A
        if len(chars) >= need:
            break
        chars.add(chr(code))
    return "".join(sorted(chars))


def encoder_folder(out: Path, dry_run: bool) -> tuple[Path, str]:
    """A random-weight BERT with bert-base-chinese's shape (the dry run: a tiny one) and its description."""
    from ner_core.model.encoder import make_tiny_encoder

    texts = [d.text for s in ("train", "dev", "test") for d in _sample_docs(s)]
    if dry_run:
        return make_tiny_encoder(out, texts, **TINY), f"tiny random BERT {TINY} (dry run)"
    folder = make_tiny_encoder(out, [bert_base_chars(texts)], **BERT_BASE)
    vocab = json.loads((folder / "config.json").read_text("utf-8"))["vocab_size"]
    if vocab != BERT_BASE_VOCAB:
        raise RuntimeError(
            f"{folder}: the BERT-base-shaped encoder has {vocab} tokens, not {BERT_BASE_VOCAB}"
        )
    return folder, f"random-weight BERT, bert-base-chinese's shape {BERT_BASE}, vocabulary {vocab}"


# ------------------------------------------------------------------------------------ gpu tests
def run_gpu_tests(timeout_s: float) -> dict:
    """``pytest -m gpu tests/test_gpu.py`` in a child process; its summary line (and its output's tail when
    it did not pass)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/test_gpu.py"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"ok": False, "summary": f"timed out after {timeout_s:.0f} s", "s": time.perf_counter() - t0}
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    summary = next((ln.strip("= ") for ln in reversed(lines) if " in " in ln), lines[-1] if lines else "")
    ok = proc.returncode == 0
    if not ok:
        print("\n".join(lines[-60:]), flush=True)
    print(f"gpu tests: {summary} (exit {proc.returncode})", flush=True)
    return {"ok": ok, "summary": summary, "exit": proc.returncode, "s": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------- training
def training_batches(folder: Path, max_len: int, batch: int, n: int, device) -> tuple[list[dict], list[str]]:
    """``n`` batches of full windows from the sample corpus's training sentences, on ``device``."""
    from ner_core.config import EncoderConfig
    from ner_core.data.alignment import CharAligner
    from ner_core.data.batching import TaggedDataset
    from ner_core.documents import Document, Entity
    from ner_core.model.encoder import load_encoder
    from ner_core.schemes import tag_set

    sents = _sample_docs("train")
    docs = []
    for k in range(0, len(sents), 40):  # 40 sentences a document: windows of max_len characters
        text, ents = "", []
        for d in sents[k : k + 40]:
            ents += [
                Entity(start=e.start + len(text), end=e.end + len(text), label=e.label) for e in d.entities
            ]
            text += d.text
        docs.append(Document(doc_id=f"joined-{k}", text=text, entities=ents))
    tags = tag_set(LABELS, "BIOES")
    _, tok = load_encoder(EncoderConfig(name=str(folder)))
    data = TaggedDataset(docs, CharAligner(tok), tags, "BIOES", max_len)
    pool = list(data.batches(batch, shuffle=True, seed=1))
    pool = [b for b in pool if b["input_ids"].size(0) == batch] or pool
    out = [{k: v.to(device) for k, v in b.items()} for b in itertools.islice(itertools.cycle(pool), n)]
    return out, tags


def _time_steps(step, batches: list[dict], warmup: int, device) -> dict:
    """Sentences per second over ``batches[warmup:]`` after ``warmup`` untimed steps; peak GPU memory."""
    for b in batches[:warmup]:
        step(b)
    _sync(device)
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    t0, seen = time.perf_counter(), 0
    for b in batches[warmup:]:
        step(b)
        seen += b["input_ids"].size(0)
    _sync(device)
    return {"per_s": seen / (time.perf_counter() - t0), "peak_gib": _peak_gib(device)}


def train_ours(folder: Path, tags: list[str], batches, precision: str, warmup: int, device) -> dict:
    """One step of ner_core's training loop (``_train_epoch`` + ``_optimizer_step``), repeated."""
    import torch

    from ner_core.config import NERConfig
    from ner_core.model.encoder import load_encoder
    from ner_core.model.network import NERModel
    from ner_core.runtime.precision import autocast, needs_grad_scaler
    from ner_core.training.loop import make_optimizer

    max_len = max(b["input_ids"].size(1) for b in batches) - 2  # the windows' longest, in characters
    cfg = NERConfig.model_validate({"data": {"max_len": max_len}, "encoder": {"name": str(folder)}})
    tc = cfg.training
    torch.manual_seed(0)
    model = NERModel(cfg, tags, load_encoder(cfg.encoder)[0]).to(device).train()
    groups = model.param_groups(tc)
    for g in groups:
        g["initial_lr"] = g["lr"]
    opt = make_optimizer(groups, tc.weight_decay, device)
    scaler = torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(precision))

    def step(b):
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"]
        with autocast(precision, device.type):  # encoder + head; the CRF and the loss stay fp32
            loss = model(b["input_ids"], b["attention_mask"], b["tags"])
        scaler.scale(loss).backward()
        float(loss.detach())  # the loop reads every step's loss
        if tc.grad_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return _time_steps(step, batches, warmup, device)  # the model is freed by the caller (_freed)


def train_hf(folder: Path, tags: list[str], batches, precision: str, warmup: int, device) -> dict:
    """What HF's ``Trainer`` runs per step by default, at the same precision: autocast, backward (through
    a loss scaler for fp16), clip to 1.0, fused AdamW, the linear schedule's step."""
    import torch
    from transformers import AutoModelForTokenClassification, get_linear_schedule_with_warmup

    torch.manual_seed(0)
    hf = AutoModelForTokenClassification.from_pretrained(str(folder), num_labels=len(tags))
    hf = hf.to(device).train()
    opt = torch.optim.AdamW(hf.parameters(), lr=5e-5, weight_decay=0.0, fused=device.type in ("cpu", "cuda"))
    sched = get_linear_schedule_with_warmup(opt, 0, len(batches))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step(b):
        lab = torch.full_like(b["input_ids"], -100)  # (B, T+2): -100 on [CLS], [SEP] and padding
        lab[:, 1:-1] = b["tags"].masked_fill(b["attention_mask"][:, 2:] == 0, -100)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=lab).loss
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)

    return _time_steps(step, batches, warmup, device)


# ------------------------------------------------------------------------------------ prediction
def predict_ours(model, tok, texts: list[str], precision: str, device) -> dict:
    """``Tagger.predict`` (window 128, default stride, batch 32, CRF confidences): characters per second."""
    from ner_core.inference.tagger import Tagger

    tagger = Tagger(model, tok, max_len=128, batch_size=32, device=device, precision=precision)
    tagger.predict(texts[:64])
    _sync(device)
    t0 = time.perf_counter()
    tagger.predict(texts)
    _sync(device)
    return {"per_s": sum(map(len, texts)) / (time.perf_counter() - t0), "peak_gib": _peak_gib(device)}


def predict_hf(folder: Path, n_labels: int, texts: list[str], precision: str, device) -> dict:
    """HF's token-classification pipeline (aggregation "simple", batch 32), weights cast to the precision."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    hf = AutoModelForTokenClassification.from_pretrained(str(folder), num_labels=n_labels)
    hf = hf.to(device=device, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    pipe = pipeline(
        "token-classification", model=hf, tokenizer=tok, device=device, aggregation_strategy="simple"
    )
    pipe(texts[:64], batch_size=32)
    _sync(device)
    t0 = time.perf_counter()
    pipe(texts, batch_size=32)
    _sync(device)
    return {"per_s": sum(map(len, texts)) / (time.perf_counter() - t0), "peak_gib": _peak_gib(device)}


# ------------------------------------------------------------------------------------ the table
def _row(part: str, precision: str, unit: str, ours: dict | None, hf: dict | None, note: str = "") -> dict:
    return {"part": part, "precision": precision, "unit": unit, "ours": ours, "hf": hf, "note": note}


def _guarded(rows: list[dict], part: str, precision: str, unit: str, deadline: float, run) -> None:
    """Run one comparison into ``rows``: skipped past the deadline, a failure kept as its one line."""
    if time.monotonic() > deadline:
        rows.append(_row(part, precision, unit, None, None, "skipped: time budget spent"))
        return
    try:
        ours, hf = run()
        rows.append(_row(part, precision, unit, ours, hf))
    except Exception as exc:  # one broken part must not hide the others' figures
        traceback.print_exc()
        rows.append(_row(part, precision, unit, None, None, f"failed: {type(exc).__name__}: {exc}"[:200]))
    r = rows[-1]
    print(f"  {part} {precision}: {_fmt(r['ours'])} ours, {_fmt(r['hf'])} HF {r['note']}", flush=True)


def _fmt(x: dict | None) -> str:
    if not x:
        return "-"
    v = x["per_s"]
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def training_rows(folder: Path, args, device, precisions: list[str], deadline: float) -> list[dict]:
    batches, tags = training_batches(folder, args.max_len, args.batch, args.warmup + args.steps, device)
    tokens = sum(b["input_ids"].size(1) for b in batches) / len(batches)
    part = f"training, batch {batches[0]['input_ids'].size(0)} x {tokens:.0f} tokens (mean, [CLS]/[SEP] in)"
    print(f"{part}: {args.warmup} warm-up + {args.steps} timed steps per run", flush=True)
    rows: list[dict] = []
    for p in precisions:
        _guarded(
            rows,
            part,
            p,
            "sentences/s",
            deadline,
            lambda p=p: (
                _freed(train_ours(folder, tags, batches, p, args.warmup, device), device),
                _freed(train_hf(folder, tags, batches, p, args.warmup, device), device),
            ),
        )
    return rows


def prediction_rows(folder: Path, args, device, precisions: list[str], deadline: float) -> list[dict]:
    import torch

    from ner_core.config import EncoderConfig, NERConfig
    from ner_core.model.encoder import load_encoder
    from ner_core.model.network import NERModel
    from ner_core.schemes import tag_set

    short = _short_texts()
    texts = [short[i % len(short)] for i in range(args.n_texts)]
    part = f"prediction, {len(texts):,} texts of {sum(map(len, texts)) / len(texts):.0f} chars"
    print(f"{part}: chars/s", flush=True)
    cfg = NERConfig.model_validate({"data": {"max_len": 128}, "encoder": {"name": str(folder)}})
    torch.manual_seed(0)
    encoder, tok = load_encoder(EncoderConfig(name=str(folder)))
    model = NERModel(cfg, tag_set(LABELS, "BIOES"), encoder)
    n_tags = len(model.tags)
    rows: list[dict] = []
    for p in precisions:
        _guarded(
            rows,
            part,
            p,
            "chars/s",
            deadline,
            lambda p=p: (
                _freed(predict_ours(model, tok, texts, p, device), device),
                _freed(predict_hf(folder, n_tags, texts, p, device), device),
            ),
        )
    long = ("".join(short) * (args.long_chars // max(1, len("".join(short))) + 1))[: args.long_chars]
    best = precisions[-1] if len(precisions) == 1 else ("bf16" if "bf16" in precisions else "fp16")
    _guarded(
        rows,
        f"prediction, one text of {len(long):,} chars (no HF pipeline row: it needs a stride set)",
        best,
        "chars/s",
        deadline,
        lambda: (_freed(predict_ours(model, tok, [long], best, device), device), None),
    )
    return rows  # the model is freed by the caller


def table(rows: list[dict]) -> str:
    out = [
        "| part | precision | ours | HF | ours / HF | unit | peak GPU GiB (ours / HF) | note |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        o, h = r["ours"], r["hf"]
        ratio = f"{o['per_s'] / h['per_s']:.2f}x" if o and h else ""
        mem = " / ".join(
            f"{x['peak_gib']:.1f}" if x and x.get("peak_gib") is not None else "-" for x in (o, h)
        )
        out.append(
            f"| {r['part']} | {r['precision']} | {_fmt(o)} | {_fmt(h)} | {ratio} | {r['unit']} | {mem} | "
            f"{r['note']} |"
        )
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ main
def _args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="every part on the CPU, tiny encoder, few steps")
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "runs" / "gpu-check"))
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting parts after this long")
    p.add_argument("--tests-timeout-s", type=float, default=240.0)
    p.add_argument("--skip-tests", action="store_true", help="leave out the gpu-marked tests")
    p.add_argument("--max-len", type=int, default=128, help="training window in characters")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--n-texts", type=int)
    p.add_argument("--long-chars", type=int)
    args = p.parse_args(argv if argv is not None else [])
    small = args.dry_run
    args.warmup = args.warmup if args.warmup is not None else (1 if small else 10)
    args.steps = args.steps or (2 if small else 40)
    args.n_texts = args.n_texts or (40 if small else 5000)
    args.long_chars = args.long_chars or (2000 if small else 100_000)
    return args


def _header(device, encoder: str) -> str:
    import platform

    import torch
    import transformers

    from bench.machine import describe

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{describe()}\npython {platform.python_version()}, torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}), transformers {transformers.__version__}; device {device}; "
        f"load average {load}\nencoder: {encoder}"
    )


def main(argv: list[str] | None = None) -> int:
    """Print the table; 0 when every part ran (or no CUDA without ``--dry-run``: skipped), else 1."""
    args = _args(argv)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # the load reports of untrained heads, 20 lines each

    if not torch.cuda.is_available() and not args.dry_run:
        print(f"gpu_check: skipped, no CUDA here (torch {torch.__version__}); --dry-run runs it on the CPU")
        return 0
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    device = torch.device("cpu" if args.dry_run else "cuda")
    precisions = (
        ["fp32"] if args.dry_run else ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    )
    rows: list[dict] = []
    if not args.skip_tests:
        res = run_gpu_tests(min(args.tests_timeout_s, args.budget_s))
        rows.append(
            _row("gpu-marked tests (pytest -m gpu tests/test_gpu.py)", "-", "", None, None, res["summary"])
        )
        rows[-1]["ok"] = res["ok"]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder, encoder = encoder_folder(Path(tmp) / "encoder", args.dry_run)
        header = _header(device, encoder)
        print(header, flush=True)
        rows += training_rows(folder, args, device, precisions, deadline)
        rows += prediction_rows(folder, args, device, precisions, deadline)
        _free(device)
    text = f"{header}\n{time.monotonic() - t0:.0f} s in all\n\n{table(rows)}"
    print("\n" + text, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.md").write_text(text + "\n", encoding="utf-8")
    (out / "gpu_check.json").write_text(
        json.dumps({"header": header, "rows": rows}, indent=1), encoding="utf-8"
    )
    print(f"written: {out / 'gpu_check.md'}, {out / 'gpu_check.json'}", flush=True)
    failed = [r for r in rows if r["note"].startswith(("failed", "skipped")) or r.get("ok") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
