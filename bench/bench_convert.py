"""TF1 checkpoint conversion benchmark: seconds and memory to convert a BERT-base-size Google checkpoint.

Writes a synthetic bundle the size of Google's ``chinese_L-12_H-768_A-12`` (12 layers, hidden 768,
intermediate 3072, vocabulary 21,128, 512 positions; the model variables plus ``global_step``, no Adam
slots: about 400 MB) with :mod:`bench.tf_bundle_writer` (proved byte for byte against TensorFlow's own
files by tests/test_tf_checkpoint.py), then converts it with
:func:`ner_core.artifacts.tf.convert.convert_checkpoint`
in a fresh subprocess. Printed: the conversion's seconds and its own memory (peak RSS minus RSS after the
imports, the peak reset through ``/proc/self/clear_refs`` where allowed), against the goals of at most
15 s and at most 1.5x the checkpoint's size. The bundle was just written, so it is read from the page
cache (a cold disk adds its read time). The machine may be shared: timings are noisy.
Run: ``python -m bench convert`` or ``python -m bench.bench_convert [--layers 12] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 15.0
GOAL_MEMORY_RATIO = 1.5
CPU_FLAGS = ("sse4_2", "pclmulqdq", "avx2", "avx512f", "sha_ni")  # CRC32C, SHA-256 and numpy speed


def _bert_variables(layers: int, hidden: int, intermediate: int, vocab: int, positions: int):
    """(name, shape) of Google's BERT variables, sorted by name as TensorFlow's saver writes them."""
    shapes = {
        "bert/embeddings/word_embeddings": (vocab, hidden),
        "bert/embeddings/position_embeddings": (positions, hidden),
        "bert/embeddings/token_type_embeddings": (2, hidden),
        "bert/pooler/dense/kernel": (hidden, hidden),
        "bert/pooler/dense/bias": (hidden,),
    }
    for norm in ("bert/embeddings/LayerNorm",):
        shapes.update({f"{norm}/gamma": (hidden,), f"{norm}/beta": (hidden,)})
    for n in range(layers):
        base = f"bert/encoder/layer_{n}"
        dense = {
            "attention/self/query": (hidden, hidden),
            "attention/self/key": (hidden, hidden),
            "attention/self/value": (hidden, hidden),
            "attention/output/dense": (hidden, hidden),
            "intermediate/dense": (hidden, intermediate),
            "output/dense": (intermediate, hidden),
        }
        for scope, shape in dense.items():
            shapes[f"{base}/{scope}/kernel"] = shape
            shapes[f"{base}/{scope}/bias"] = shape[1:]
        for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
            shapes.update({f"{base}/{norm}/gamma": (hidden,), f"{base}/{norm}/beta": (hidden,)})
    return sorted(shapes.items())


def write_synthetic(folder: Path, layers: int = 12, hidden: int = 768, vocab: int = 21128) -> Path:
    """Write ``bert_config.json``, ``vocab.txt`` and ``bert_model.ckpt.*`` into ``folder``; return the
    checkpoint prefix."""
    import numpy as np

    from bench.tf_bundle_writer import write_bundle

    intermediate, positions = 4 * hidden, 512
    config = {
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "max_position_embeddings": positions,
        "num_attention_heads": hidden // 64,
        "num_hidden_layers": layers,
        "type_vocab_size": 2,
        "vocab_size": vocab,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bert_config.json").write_text(json.dumps(config, indent=2))
    specials = ["[PAD]", *(f"[unused{i}]" for i in range(1, 100)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(0x4E00 + i) for i in range(vocab - len(specials))]
    (folder / "vocab.txt").write_text("".join(f"{t}\n" for t in specials + chars), encoding="utf-8")
    rng = np.random.default_rng(0)

    def tensors():
        for name, shape in _bert_variables(layers, hidden, intermediate, vocab, positions):
            yield name, (rng.standard_normal(shape, dtype=np.float32) * 0.02)
        yield "global_step", np.int64(1000000)

    return write_bundle(folder / "bert_model.ckpt", tensors())


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(config: str, prefix: str, vocab: str, out: str) -> None:
    """Run in the subprocess: import everything, take the baseline, convert, print one JSON line."""
    import safetensors  # noqa: F401
    import torch  # noqa: F401
    from transformers import AlbertConfig, AlbertModel, BertConfig, BertModel, BertTokenizerFast  # noqa: F401

    from ner_core.artifacts.tf.convert import convert_checkpoint

    try:  # reset the peak (VmHWM) to the current RSS, so imports do not count
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    base_kb = _status_kb("VmRSS")
    t0 = time.perf_counter()
    report = convert_checkpoint(config, prefix, vocab, out, albert=False)
    seconds = time.perf_counter() - t0
    peak_kb = _status_kb("VmHWM")
    print(
        json.dumps(
            {
                "seconds": seconds,
                "base_mb": base_kb / 1024,
                "peak_mb": peak_kb / 1024,
                "peak_reset": reset,
                "mapped": report.mapped,
                "parameters": report.parameters,
                "skipped": report.skipped,
            }
        )
    )


def _cpu() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "lscpu unavailable"
    model = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model name")), "?"
    )
    flag_line = next((ln for ln in text.splitlines() if ln.startswith("Flags")), "")
    flags = set(flag_line.split(":", 1)[-1].split())
    have = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS)
    return f"{model} ({os.cpu_count()} CPUs; {have})"


def _convert_in_subprocess(folder: Path, prefix: Path) -> dict:
    out = folder / "converted"
    cmd = [
        sys.executable,
        "-m",
        "bench.bench_convert",
        "--child",
        str(folder / "bert_config.json"),
        str(prefix),
        str(folder / "vocab.txt"),
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"conversion subprocess failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(folder: Path, layers: int) -> None:
    import google_crc32c

    print(f"cpu: {_cpu()}; google-crc32c implementation: {google_crc32c.implementation}")
    t0 = time.perf_counter()
    prefix = write_synthetic(folder, layers=layers)
    size = sum(p.stat().st_size for p in folder.glob("bert_model.ckpt.*"))
    print(f"wrote {prefix}.* ({size / 2**20:.0f} MiB, {layers} layers) in {time.perf_counter() - t0:.1f} s")
    r = _convert_in_subprocess(folder, prefix)
    own = r["peak_mb"] - r["base_mb"]
    ratio = own * 2**20 / size
    print(f"converted {r['mapped']} variables ({r['parameters']:,} parameters), skipped {r['skipped']}")
    print(
        f"seconds: {r['seconds']:.1f} (goal <= {GOAL_SECONDS:.0f}: "
        f"{'met' if r['seconds'] <= GOAL_SECONDS else 'MISSED'})"
    )
    print(
        f"memory: {own:.0f} MiB over the {r['base_mb']:.0f} MiB after imports = {ratio:.2f}x the checkpoint "
        f"(goal <= {GOAL_MEMORY_RATIO}x: {'met' if ratio <= GOAL_MEMORY_RATIO else 'MISSED'})"
        + ("" if r["peak_reset"] else "; peak not reset after imports, so this over-counts")
    )
    print("(shared machine: timings are noisy; the checkpoint was read from the page cache)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_convert", description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=12, help="encoder layers (default %(default)s)")
    p.add_argument(
        "--keep", metavar="DIR", help="write the bundle and the converted folder here and keep them"
    )
    p.add_argument("--child", nargs=4, metavar=("CONFIG", "PREFIX", "VOCAB", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv if argv is not None else ([] if __name__ != "__main__" else None))
    if args.child:
        _child(*args.child)
        return
    if args.keep:
        run(Path(args.keep), args.layers)
        return
    with tempfile.TemporaryDirectory(prefix="ner-bench-convert-") as tmp:
        run(Path(tmp), args.layers)


if __name__ == "__main__":
    main()
