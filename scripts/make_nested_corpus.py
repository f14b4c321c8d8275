"""Generate a small synthetic Chinese NER corpus with nested entities (the span decoder's fixture).

Everything here is invented for this project: templates, names and brands are written in this file and
combined with a seeded ``random.Random``; no text is copied from any dataset. The output is
byte-for-byte deterministic for a given ``--seed`` and sizes.

The nesting is the kind Chinese text really has:

- an organisation named after its place: ``北京大学`` ORG contains ``北京`` LOC, ``上海银行`` ORG contains
  ``上海`` LOC (place + 大学 / 银行 / 医院 / 图书馆 ...);
- a product named after its maker: ``星河科技智能手表`` PRODUCT contains ``星河科技`` ORG, and
  ``杭州银行信用卡`` PRODUCT contains ``杭州银行`` ORG, which contains ``杭州`` LOC (three levels);
- beside them flat entities: people (PER), places (LOC), organisations without a place (ORG).

A CRF (one tag per character) can only learn the outer spans; a span decoder can learn every level.

Output (under ``--out``), the JSONL span format that ``ner ingest`` reads:

- ``train.jsonl`` / ``dev.jsonl`` / ``test.jsonl``: ``{"text": ..., "entities": [{"start": s, "end": e,
  "label": L}]}``, half-open character offsets, entities listed outer first; UTF-8.
- ``README.md``: what it is, the command that made it, counts of outer and nested entities per split.

Ingested (policy ``repair``), the outer spans go to ``gold_entities`` and the inner ones to
``dropped_spans`` with reason ``nested``. Dev and test draw part of their places and brands from pools
held out of train, so they hold unseen mentions.

Usage::

    python scripts/make_nested_corpus.py --out /tmp/nested --seed 7
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

LABELS = ("LOC", "ORG", "PER", "PRODUCT")
DEFAULT_SEED = 20250107
DEFAULT_SIZES = {"train": 300, "dev": 60, "test": 60}
HELD_OUT_SHARE = 0.25  # share of the places and brands never used in train
UNSEEN_RATE = 0.4  # chance that a dev/test slot draws from the held-out pool

SURNAMES = "王 李 张 刘 陈 杨 赵 黄 周 吴 徐 孙 胡 朱 高 林 何 郭 马 罗 梁 宋 郑 谢 韩 唐".split()
GIVEN = "伟 芳 娜 敏 静 丽 强 磊 军 洋 勇 艳 杰 涛 明 超 霞 平 刚 浩然 子涵 一鸣 思远 欣怡 俊杰 晓东".split()
PLACES = (
    "北京 上海 广州 深圳 杭州 成都 重庆 武汉 南京 西安 苏州 天津 长沙 郑州 青岛 厦门 合肥 昆明 大连 宁波 "
    "福州 济南 沈阳 贵阳 南宁 兰州 太原 温州 无锡 珠海"
).split()
# an organisation named after its place: place + one of these
PLACE_ORG_SUFFIXES = "大学 银行 医院 图书馆 博物馆 师范大学 农商银行 地铁集团 电视台 交通大学".split()
BRANDS = "星河 瑞丰 嘉禾 天衡 博远 启明 海纳 金桥 青藤 长风 蓝鲸 凌云 千帆 磐石 云帆 恒泰".split()
BRAND_SUFFIXES = "科技 电子 汽车 集团 食品".split()
# a product named after its maker: a brand's organisation + one of these, or a city bank + a bank product
PRODUCTS = "智能手表 手机 电动汽车 扫地机器人 无线耳机 牛奶 笔记本电脑".split()
BANK_SUFFIXES = "银行 农商银行".split()
BANK_PRODUCTS = "信用卡 理财产品 借记卡".split()

TEMPLATES = (
    "{PER}毕业于{PORG}，现在在{BORG}工作。",
    "{PORG}与{BORG}签署了合作协议。",
    "记者从{PORG}获悉，{PROD}将于下月上市。",
    "{PER}在{LOC}入手了{PROD}。",
    "{PER}昨天去{LOC}出差，顺路参观了{PORG}。",
    "{BORG}发布的{PROD}销量很好。",
    "{PER}说{PROD}比去年的好用。",
    "今年{PORG}的招生人数比去年多。",
    "{PER}和{PER}都在{PORG}上班。",
    "{LOC}的市民可以到{PORG}办理{PROD}。",
    "{BORG}的总部设在{LOC}。",
    "天气不错，{PER}在家休息。",
)


def _pools(rng: random.Random) -> dict[str, tuple[list[str], list[str]]]:
    """(train pool, held-out pool) of places and brands."""
    out = {}
    for name, items in (("place", PLACES), ("brand", BRANDS)):
        items = list(items)
        rng.shuffle(items)
        k = max(1, int(len(items) * HELD_OUT_SHARE))
        out[name] = (sorted(items[k:]), sorted(items[:k]))
    return out


class _Sentence:
    """A sentence under construction: text and ``(start, end, label)`` spans, outer spans first."""

    def __init__(self) -> None:
        self.text = ""
        self.spans: list[tuple[int, int, str]] = []

    def put(self, piece: str, *inner: tuple[int, int, str]) -> None:
        """Append ``piece``; ``inner`` are spans relative to the piece."""
        base = len(self.text)
        self.text += piece
        self.spans.extend((base + s, base + e, lab) for s, e, lab in inner)


def _draw(rng: random.Random, pool: tuple[list[str], list[str]], unseen: float) -> str:
    seen, held = pool
    return rng.choice(held if held and rng.random() < unseen else seen)


def _slot(slot: str, rng: random.Random, pools, unseen: float) -> tuple[str, list[tuple[int, int, str]]]:
    """One entity slot: its text and spans (relative), outer first."""
    if slot == "PER":
        name = rng.choice(SURNAMES) + rng.choice(GIVEN)
        return name, [(0, len(name), "PER")]
    if slot == "LOC":
        place = _draw(rng, pools["place"], unseen)
        return place, [(0, len(place), "LOC")]
    if slot == "PORG":  # 北京大学 ORG > 北京 LOC
        place = _draw(rng, pools["place"], unseen)
        org = place + rng.choice(PLACE_ORG_SUFFIXES)
        return org, [(0, len(org), "ORG"), (0, len(place), "LOC")]
    if slot == "BORG":
        org = _draw(rng, pools["brand"], unseen) + rng.choice(BRAND_SUFFIXES)
        return org, [(0, len(org), "ORG")]
    # PROD: a product named after its maker: a brand's gadget (two levels) or a city bank's card (three)
    if rng.random() < 0.3:
        place = _draw(rng, pools["place"], unseen)
        bank = place + rng.choice(BANK_SUFFIXES)
        prod = bank + rng.choice(BANK_PRODUCTS)
        return prod, [(0, len(prod), "PRODUCT"), (0, len(bank), "ORG"), (0, len(place), "LOC")]
    org_text, org_spans = _slot("BORG", rng, pools, unseen)
    prod = org_text + rng.choice(PRODUCTS)
    return prod, [(0, len(prod), "PRODUCT"), *org_spans]


def make_sentence(rng: random.Random, pools, unseen: float) -> dict:
    """One document: a template with its slots filled."""
    template = rng.choice(TEMPLATES)
    sent = _Sentence()
    rest = template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        slot, _, rest = tail.partition("}")
        sent.put(head)
        piece, spans = _slot(slot, rng, pools, unseen)
        sent.put(piece, *spans)
    sent.put(rest)
    entities = [{"start": s, "end": e, "label": lab} for s, e, lab in sent.spans]
    return {"text": sent.text, "entities": entities}


def nesting_stats(docs: list[dict]) -> Counter:
    """Counts per split: documents, entities, outer and nested ones (inside another entity), per label."""
    c: Counter = Counter(documents=len(docs))
    for d in docs:
        spans = [(e["start"], e["end"], e["label"]) for e in d["entities"]]
        for s, e, lab in spans:
            inside = any((s2, e2) != (s, e) and s2 <= s and e <= e2 for s2, e2, _ in spans)
            c["nested" if inside else "outer"] += 1
            c[lab] += 1
    c["entities"] = c["outer"] + c["nested"]
    return c


def make_readme(splits: dict[str, list[dict]], seed: int) -> str:
    rows = []
    for name, docs in splits.items():
        s = nesting_stats(docs)
        rows.append(
            f"| {name} | {s['documents']} | {s['entities']} | {s['outer']} | {s['nested']} | "
            + " | ".join(str(s[lab]) for lab in LABELS)
            + " |"
        )
    return "\n".join(
        [
            "# Nested corpus (synthetic)",
            "",
            "Generated by `scripts/make_nested_corpus.py` from templates and name lists written for this",
            "project; nothing is copied from any dataset. Organisations named after their place (北京大学 >",
            "北京) and products named after their maker (星河科技手机 > 星河科技) nest; the sentences are",
            "formulaic, so do not judge a model's real-world quality on it.",
            "",
            "```",
            f"python scripts/make_nested_corpus.py --out OUT --seed {seed}",
            "```",
            "",
            "| split | documents | entities | outer | nested | " + " | ".join(LABELS) + " |",
            "|---|---|---|---|---|" + "---|" * len(LABELS),
            *rows,
            "",
        ]
    )


def write_corpus(out: Path, seed: int = DEFAULT_SEED, sizes: dict[str, int] | None = None) -> dict[str, list]:
    """Generate the corpus into ``out``; return the splits (lists of ``{"text", "entities"}``)."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    if set(sizes) != set(DEFAULT_SIZES) or any(n < 1 for n in sizes.values()):
        raise ValueError(f"sizes must give a positive count for each of {sorted(DEFAULT_SIZES)}, got {sizes}")
    pools = _pools(random.Random(seed))
    splits: dict[str, list[dict]] = {}
    for i, (name, n) in enumerate(sizes.items()):
        rng = random.Random(seed * 10 + i + 1)
        unseen = 0.0 if name == "train" else UNSEEN_RATE
        docs: list[dict] = []
        texts: set[str] = set()
        while len(docs) < n:  # distinct texts: a repeated sentence would be a duplicate_text warning
            doc = make_sentence(rng, pools, unseen)
            if doc["text"] not in texts:
                texts.add(doc["text"])
                docs.append(doc)
        splits[name] = docs
    out.mkdir(parents=True, exist_ok=True)
    for name, docs in splits.items():
        lines = [json.dumps(d, ensure_ascii=False) for d in docs]
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "README.md").write_text(make_readme(splits, seed), encoding="utf-8")
    return splits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write train/dev/test.jsonl into")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    for name, n in DEFAULT_SIZES.items():
        parser.add_argument(f"--{name}", type=int, default=n, help=f"documents in {name} (default {n})")
    args = parser.parse_args(argv)
    sizes = {name: getattr(args, name) for name in DEFAULT_SIZES}
    splits = write_corpus(args.out, args.seed, sizes)
    for name, docs in splits.items():
        s = nesting_stats(docs)
        print(f"{name}: {s['documents']} documents, {s['outer']} outer and {s['nested']} nested entities")


if __name__ == "__main__":
    main()
