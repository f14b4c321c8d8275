"""Every reader of :mod:`ner_core.data.formats` fuzzed: mutations of the real files in ../shared/datasets (the
sample corpus where a format has none there) and inputs drawn from hypothesis strategies.

Per case: no exception other than a ``ValueError`` naming the file (the ``ner`` command turns that into
one line); every problem carries a documented code (:data:`ner_core.data.formats.problems.CODES`) and its line
or record; a file read as fatal or with rejected records carries an error problem; what is let in is
sound (non-empty text, spans inside it, no overlaps, no duplicate ids). A sample of the rejected files is
then ingested: none may leave a dataset version behind. The readers' sources are also searched for a
catch-all handler (``except Exception``) that would turn any bug into a generic problem.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import tempfile
from pathlib import Path

from bench.reliability.harness import DATASETS, REPO, SAMPLE, Context, StageResult, stage

FAILED_CASES = Path(tempfile.gettempdir()) / "ner-reliability-cases"

_TOKENS = [
    b"\x00", b"\xff", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\r", b"\r\n", b"\t", b" ", b"\n", b"\n\n",
    b"B-", b"I-", b"M-", b"E-", b"S-", b"O", b"B", b"I", b"-", b"B-\xe4\xba\xba", b"[", b"]", b"{", b"}",
    b'"', b",", b":", b"-1", b"0", b"99999999999999999999", b"1e308", b"NaN", b"null", b"true", b'"\\ud800"',
    b'"\\u0000"', b"[" * 3000, b"{" * 50, b"\xe2\x80\xa8", b'"text"', b'"label"', b'"entities"', b'"start"',
]  # fmt: skip


def _head(path: Path, n_bytes: int = 6000) -> bytes:
    """The file's first blank-line-separated blocks, about ``n_bytes`` long."""
    with open(path, "rb") as fh:
        data = fh.read(n_bytes)
    cut = data.rfind(b"\n\n")
    return data[: cut + 2] if cut > 0 else data


def _sample_jsonl() -> list[dict]:
    with open(SAMPLE / "train.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for _, line in zip(range(30), fh, strict=False)]


def _to_cluener(rec: dict) -> dict:
    label: dict = {}
    for e in rec["entities"]:
        label.setdefault(e["label"], {}).setdefault(rec["text"][e["start"] : e["end"]], []).append(
            [e["start"], e["end"] - 1]
        )
    return {"text": rec["text"], "label": label}


def seed_inputs() -> dict[str, list[bytes]]:
    """Real inputs per format: heads of the shared datasets' files, the sample corpus otherwise."""
    recs = _sample_jsonl()
    seeds: dict[str, list[bytes]] = {
        "jsonl": [(SAMPLE / "train.jsonl").read_bytes()[:6000].rsplit(b"\n", 1)[0] + b"\n"],
        "cluener": ["".join(json.dumps(_to_cluener(r), ensure_ascii=False) + "\n" for r in recs).encode()],
        "text": [p.read_bytes()[:3000] for p in sorted((SAMPLE / "raw").glob("*.txt"))],
    }
    finance = DATASETS / "keras-bert-ner-finance" / "dev.txt"
    if finance.is_file():
        pairs = [p for p in json.loads(finance.read_text(encoding="utf-8")) if len(p[0]) < 300][:12]
        seeds["seed_json"] = [json.dumps(pairs, ensure_ascii=False).encode()]
        seeds["seed_texts"] = [json.dumps([p[0] for p in pairs], ensure_ascii=False).encode()]
    else:
        tags = [" ".join("O" for _ in r["text"]) for r in recs[:10]]
        seeds["seed_json"] = [
            json.dumps([[r["text"], t] for r, t in zip(recs, tags, strict=True)], ensure_ascii=False).encode()
        ]
        seeds["seed_texts"] = [json.dumps([r["text"] for r in recs], ensure_ascii=False).encode()]
    conll = [DATASETS / "msra" / "msra_test_bio", DATASETS / "peoples-daily" / "example.dev"]
    seeds["conll"] = [_head(p) for p in conll if p.is_file()] or [_sample_conll(recs)]
    bmes = DATASETS / "resume-ner" / "dev.char.bmes"
    seeds["bmes"] = [_head(bmes)] if bmes.is_file() else [_sample_conll(recs, bmes=True)]
    return seeds


def _sample_conll(recs: list[dict], bmes: bool = False) -> bytes:
    from ner_core.documents import Entity
    from ner_core.schemes import spans_to_tags

    out = []
    for r in recs:
        spans = [Entity(start=e["start"], end=e["end"], label=e["label"]) for e in r["entities"]]
        tags = spans_to_tags(len(r["text"]), spans, "BMES" if bmes else "BIO")
        out.append(
            "".join(f"{c} {t}\n" for c, t in zip(r["text"], tags, strict=True) if not c.isspace()) + "\n"
        )
    return "".join(out).encode()


#: hand-made inputs every format gets (both policies): deep nesting, odd encodings, empty files
CRAFTED = [
    b"", b"\n", b"\xef\xbb\xbf", b"\x00" * 64, b"[" * 100_000 + b"]" * 100_000,
    b'{"text": "a", "entities": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
    b'{"text": "a", "label": ' + b"{" * 50_000 + b"}" * 50_000 + b"}\n",
    b'[["\\ud800", "O"]]', b'{"text": "\\ud800", "entities": []}\n',
    b"\xe5\xbc\xa0\tB-PER\r\n\xe4\xb8\x89\tI-PER\r\n",
    b"x" * 200_000 + b"\tO\n",
    b"\xff\xfe" + "张\tO\n".encode("utf-16-le"),
]  # fmt: skip


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four random edits: a token inserted, bytes flipped, deleted, duplicated, lines swapped, a
    cut; JSON inputs sometimes get a value replaced by a value of another type."""
    if data[:1] in (b"[", b"{") and rng.random() < 0.3:
        structured = _mutate_json(rng, data)
        if structured is not None:
            return structured
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        i = rng.randrange(len(b) + 1)
        if op == 0:
            b[i:i] = rng.choice(_TOKENS)
        elif op == 1 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 2:
            del b[i : i + rng.randint(1, 40)]
        elif op == 3:
            b[i:i] = b[i : i + rng.randint(1, 80)]
        elif op == 4:
            lines = bytes(b).split(b"\n")
            if len(lines) > 2:
                x, y = rng.randrange(len(lines)), rng.randrange(len(lines))
                lines[x], lines[y] = lines[y], lines[x]
                b = bytearray(b"\n".join(lines))
        else:
            del b[i:]
    return bytes(b)


_ODD_VALUES = [None, True, -1, 0, 10**12, 1.5, "", "x", [], {}, [[1, 2]], [None], {"a": 1}, "\ud800", "\x00"]


def _mutate_json(rng: random.Random, data: bytes) -> bytes | None:
    text = data.decode("utf-8", errors="strict")
    lines = text.splitlines() if text.startswith("{") else [text]
    k = rng.randrange(len(lines))
    try:
        obj = json.loads(lines[k])
    except json.JSONDecodeError:
        return None
    _replace_somewhere(rng, obj)
    lines[k] = json.dumps(obj, ensure_ascii=rng.random() < 0.5)
    return "\n".join(lines).encode("utf-8", errors="surrogatepass")


def _replace_somewhere(rng: random.Random, obj, depth: int = 0) -> None:
    """Replace one value (or key's value) somewhere inside ``obj`` by an odd one."""
    if isinstance(obj, list) and obj:
        i = rng.randrange(len(obj))
        if depth < 4 and isinstance(obj[i], (list, dict)) and rng.random() < 0.7:
            _replace_somewhere(rng, obj[i], depth + 1)
        else:
            obj[i] = rng.choice(_ODD_VALUES)
    elif isinstance(obj, dict) and obj:
        key = rng.choice(list(obj))
        if depth < 4 and isinstance(obj[key], (list, dict)) and rng.random() < 0.7:
            _replace_somewhere(rng, obj[key], depth + 1)
        elif rng.random() < 0.2:
            obj[rng.choice(["text", "label", "entities", "start", "end", "extra"])] = rng.choice(_ODD_VALUES)
        else:
            obj[key] = rng.choice(_ODD_VALUES)


# ----------------------------------------------------------------------------------------- checks
class Checker:
    """Runs one case through :func:`ner_core.data.formats.read_file` and records what it finds in ``res``."""

    def __init__(self, res: StageResult, folder: Path) -> None:
        from ner_core.data.formats.problems import CODES

        self.res, self.folder, self.codes = res, folder, set(CODES)
        self.rejected: list[tuple[Path, str | None, str]] = []  # files read as entirely rejected
        self.counts = {"clean": 0, "with problems": 0, "rejected whole": 0, "refused (ValueError)": 0}
        self.codes_seen: dict[str, int] = {}

    def __call__(self, data: bytes, fmt: str | None, policy: str, origin: str) -> None:
        from ner_core.data.formats import read_file

        self.res.cases += 1
        path = self.folder / f"case-{self.res.cases % 400}.{fmt or 'detect'}"
        path.write_bytes(data)
        try:
            result = read_file(path, format=fmt, policy=policy)
        except ValueError as exc:
            self.counts["refused (ValueError)"] += 1
            if path.name not in str(exc):
                self._fail(data, fmt, policy, origin, f"ValueError without the file's name: {exc}")
            return
        except Exception as exc:  # noqa: BLE001  (the point: any other exception is a traceback)
            self.res.tracebacks += 1
            self._fail(data, fmt, policy, origin, f"{type(exc).__name__}: {exc}")
            return
        for what in self._unsound(result):
            self._fail(data, fmt, policy, origin, what)
        if result.problems:
            self.counts["with problems"] += 1
        else:
            self.counts["clean"] += 1
        for p in result.problems:
            self.codes_seen[p.code] = self.codes_seen.get(p.code, 0) + 1
        if result.fatal or (not result.records and result.errors):
            self.counts["rejected whole"] += 1
            if len(self.rejected) < 400:
                keep = self.folder / "rejected" / f"{len(self.rejected)}.{fmt or 'detect'}"
                keep.parent.mkdir(exist_ok=True)
                keep.write_bytes(data)
                self.rejected.append((keep, fmt, policy))

    def _unsound(self, result) -> list[str]:
        found = []
        for p in result.problems:
            if p.code not in self.codes:
                found.append(f"undocumented problem code {p.code!r}: {p.message}")
            if p.line is None and p.record is None:
                found.append(f"problem {p.code!r} without its line or record: {p.message}")
        if (result.fatal or result.rejected) and not result.errors:
            found.append(f"fatal={result.fatal}, rejected={result.rejected} but no error problem")
        ids = set()
        for doc_id, text, spans, _line in result.records:
            if doc_id in ids:
                found.append(f"duplicate doc_id {doc_id!r} let in")
            ids.add(doc_id)
            if not isinstance(text, str) or not text.strip():
                found.append(f"{doc_id}: empty text let in")
            last_end = 0
            for s, e, label in sorted(spans):
                if not (0 <= s < e <= len(text)) or not isinstance(label, str) or not label:
                    found.append(f"{doc_id}: unsound span {(s, e, label)} let in (text length {len(text)})")
                elif s < last_end:
                    found.append(f"{doc_id}: overlapping spans let in: {sorted(spans)}")
                last_end = max(last_end, e)
        return found

    def _fail(self, data: bytes, fmt: str | None, policy: str, origin: str, what: str) -> None:
        FAILED_CASES.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1(data).hexdigest()[:12] + f".{fmt or 'detect'}"
        (FAILED_CASES / name).write_bytes(data)
        repro = (
            f'PYTHONPATH=. python -c "from ner_core.data.formats import read_file; '
            f"print(read_file('{FAILED_CASES / name}', format={fmt!r}, policy={policy!r}).problems)\""
        )
        self.res.fail(f"[{fmt or 'detected'}, {policy}, {origin}] {what}", repro)


# ----------------------------------------------------------------------------------------- hypothesis
def strategies() -> dict[str, object]:
    """A hypothesis strategy of file contents per built-in format: near-valid structure, odd values."""
    from hypothesis import strategies as st

    text = st.one_of(
        st.text(st.characters(codec="utf-8"), max_size=30),
        st.sampled_from(["", " ", "张三在北京工作", "\u2028", "a\tb", "\r\n", "\ufeff李四"]),
    )
    label = st.one_of(
        st.sampled_from(["PER", "LOC", "ORG", "B-X", "a b"]), st.text(max_size=3), st.integers(), st.none()
    )
    num = st.one_of(st.integers(-3, 40), st.sampled_from([10**12, -(10**12)]), st.floats(), st.none(), text)
    entity = st.fixed_dictionaries({"start": num, "end": num, "label": label}, optional={"text": text})
    jsonl = st.fixed_dictionaries(
        {"text": text, "entities": st.lists(entity, max_size=4)}, optional={"id": num}
    )
    spans = st.lists(st.lists(num, max_size=3), max_size=3)
    cluener = st.fixed_dictionaries(
        {
            "text": text,
            "label": st.one_of(
                st.dictionaries(st.text(max_size=4), st.dictionaries(text, spans, max_size=2), max_size=3),
                label,
            ),
        }
    )

    def lines(record):
        row = st.one_of(record, record, text, st.lists(text, max_size=2))
        return st.lists(row, max_size=6).map(
            lambda rs: "\n".join(
                json.dumps(r, ensure_ascii=False) if not isinstance(r, str) else r for r in rs
            )
        )

    tag = st.sampled_from(
        ["O", "B-PER", "I-PER", "E-PER", "M-LOC", "S-ORG", "B", "I", "X-Y", "B-", "-", "o", ""]
    )
    char = st.one_of(st.characters(codec="utf-8"), st.sampled_from(["", "0", "ab", " "]))
    sep = st.sampled_from(["\t", " ", "  ", "\t\t"])
    line = st.tuples(char, sep, tag).map("".join)
    conll = st.lists(st.lists(line, max_size=8).map("\n".join), max_size=5).map("\n\n".join)
    tags = st.lists(tag, max_size=12).map(" ".join)
    seed_json = st.lists(
        st.one_of(st.tuples(text, tags).map(list), st.lists(text, max_size=3), st.integers(), st.none()),
        max_size=5,
    )
    seed_texts = st.lists(st.one_of(text, st.integers(), st.none(), st.lists(text, max_size=2)), max_size=5)
    return {
        "jsonl": lines(jsonl),
        "cluener": lines(cluener),
        "conll": conll,
        "bmes": conll,
        "seed_json": seed_json.map(lambda v: json.dumps(v, ensure_ascii=False)),
        "seed_texts": seed_texts.map(lambda v: json.dumps(v, ensure_ascii=False)),
        "text": text,
    }  # fmt: skip


def _run_hypothesis(ctx: Context, check: Checker, fmt: str, n: int) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    strat = strategies().get(fmt, st.text())
    raw = st.binary(max_size=200)
    content = st.one_of(strat.map(lambda s: s.encode("utf-8", errors="surrogatepass")), raw)

    @hseed(ctx.seed)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(content, st.sampled_from(["repair", "strict"]), st.booleans())
    def one(data: bytes, policy: str, detect: bool) -> None:
        check(data, None if detect else fmt, policy, "hypothesis")

    one()


# ----------------------------------------------------------------------------------------- the stage
def catch_alls() -> list[str]:
    """``file:line`` of every handler in the readers and the ingest planner that catches everything
    (bare ``except``, ``Exception``, ``BaseException``)."""
    found = []
    for path in sorted((REPO / "ner_core" / "data" / "formats").glob("*.py")) + [
        REPO / "ner_core" / "data" / "ingest.py"
    ]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ExceptHandler):
                continue
            names = [node.type] if not isinstance(node.type, ast.Tuple) else list(node.type.elts)
            if node.type is None or any(
                isinstance(n, ast.Name) and n.id in ("Exception", "BaseException") for n in names
            ):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


@stage("fuzz every reader", "bad input")
def fuzz_readers(ctx: Context, res: StageResult) -> None:
    from ner_core.data.formats import format_names

    for where in catch_alls():
        res.fail(f"a catch-all exception handler in a reader: {where} (turns any bug into a generic problem)")
    folder = ctx.scratch("fuzz")
    check = Checker(res, folder)
    seeds = seed_inputs()
    names = format_names()
    per_format = ctx.n(10_000, 300) // len(names) + 1
    rng = ctx.rng("fuzz")
    for fmt in names:
        pool = seeds.get(fmt) or [b for v in seeds.values() for b in v]
        for data in pool:  # the real files themselves first
            check(data, fmt, "repair", "real file")
        for data in CRAFTED:
            for policy in ("repair", "strict"):
                check(data, fmt, policy, "crafted")
        n_mut = per_format // 2
        for _ in range(n_mut):
            detect = rng.random() < 0.15
            check(
                mutate(rng, rng.choice(pool)),
                None if detect else fmt,
                rng.choice(["repair", "strict"]),
                "mutation",
            )
        _run_hypothesis(ctx, check, fmt, max(1, per_format - n_mut - len(pool) - 2 * len(CRAFTED)))
    res.figures["cases"] = ", ".join(f"{k} {v}" for k, v in check.counts.items())
    res.figures["problem codes seen"] = ", ".join(f"{k} {v}" for k, v in sorted(check.codes_seen.items()))
    _ingest_rejected(ctx, res, check.rejected)


def _ingest_rejected(ctx: Context, res: StageResult, rejected: list) -> None:
    """Ingest a sample of the rejected files: each must raise (nothing stored) and leave no version."""
    from bench.reliability.snapshots import half_written
    from storage.datasets import ingest_dataset, list_datasets

    db = ctx.scratch("fuzz") / "rejected.duckdb"
    sample = ctx.rng("fuzz-ingest").sample(rejected, min(len(rejected), ctx.n(60, 8)))
    for i, (path, fmt, policy) in enumerate(sample):
        try:
            ingest_dataset(db, f"fuzz{i}", {"train": str(path)}, format=fmt, policy=policy)
        except ValueError:
            continue
        except Exception as exc:  # noqa: BLE001
            res.tracebacks += 1
            res.fail(
                f"ingest of a rejected file raised {type(exc).__name__}: {exc}",
                f"ner ingest --name x --train {path}",
            )
            continue
        res.fail(
            f"a rejected file was stored as dataset fuzz{i}",
            f"ner ingest --name x --train {path} --format {fmt}",
        )
    stored = [d["name"] for d in list_datasets(db)] if db.exists() else []
    half = half_written(db) if db.exists() else []
    if stored or half:
        res.fail(f"after ingesting rejected files: datasets {stored}, half-written {half}")
    res.figures["rejected files ingested"] = (
        f"{len(sample)} (of {len(rejected)} rejected whole): {len(stored)} stored"
    )
