"""Generate the bundled synthetic sample corpus (``sample_corpus/``).

Everything here is invented for this project: sentence templates, name lists, organisation, place
and product names are written in this file and combined with a seeded ``random.Random``. No text
is copied from any dataset. The output is byte-for-byte deterministic for a given ``--seed``.

Output (under ``--out``):

- ``train.jsonl`` / ``dev.jsonl`` / ``test.jsonl``: one document per line,
  ``{"text": ..., "entities": [{"start": s, "end": e, "label": L}]}`` with half-open character
  offsets ``[s, e)``; UTF-8, ``ensure_ascii=False``.
- ``raw/*.txt``: unlabelled texts for prediction, one document per file (one longer than 2,000
  characters mixing Chinese with Latin words, digits, spaces, full-width punctuation and emoji).
- ``README.md``: what the corpus is, the command that made it, counts per split and per type.

Entity types: PER (people), ORG (organisations), LOC (places), FIN (financial products/platforms).
Dev and test draw part of their names from pools held out of train, so they contain unseen names.

Usage::

    python scripts/make_sample_corpus.py --out sample_corpus --seed 20240601
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

LABELS = ("PER", "ORG", "LOC", "FIN")
DEFAULT_SEED = 20240601
DEFAULT_SIZES = {"train": 400, "dev": 80, "test": 80}
HELD_OUT_SHARE = 0.2  # share of each name pool never used in train
UNSEEN_RATE = 0.35  # chance that a dev/test entity slot draws from the held-out pool
PAIR_RATE = 0.45  # chance that a sentence is two templates joined (longer, more entities)

# --------------------------------------------------------------------------------------------
# Name material (invented combinations; common surnames/given-name characters, real place names)
# --------------------------------------------------------------------------------------------
SURNAMES = (
    "王 李 张 刘 陈 杨 赵 黄 周 吴 徐 孙 胡 朱 高 林 何 郭 马 罗 梁 宋 郑 谢 韩 唐 冯 于 董 萧 "
    "程 曹 袁 邓 许 傅 沈 曾 彭 吕 欧阳 司马 上官 诸葛"
).split()
GIVEN_NAMES = (
    "伟 芳 娜 秀英 敏 静 丽 强 磊 军 洋 勇 艳 杰 娟 涛 明 超 秀兰 霞 平 刚 浩然 子涵 雨桐 一鸣 "
    "思远 欣怡 梓轩 嘉怡 俊杰 晓东 文博 海燕 志强 婷婷 宇航 晨曦 若溪 天佑 书瑶 明轩 安琪 建华 "
    "立新 春梅 秋云 冬青 亦凡 泽宇 沐阳 清扬 可馨 锦程 知行 望舒 慕白 听雨"
).split()
FOREIGN_NAMES = [
    "卡尔·贝诺",
    "索菲·莫兰",
    "汉斯·韦伯",
    "艾玛·罗斯",
    "诺亚·格兰",
    "米娅·卡特",
    "奥利·维斯",
    "露西·布伦",
    "Tom Lee",
    "Anna Wu",
    "Kevin Zhao",
    "Lisa Ma",
]

ORG_CORES = (
    "瑞丰 嘉禾 天衡 博远 明德 启明 海纳 睿智 金桥 青藤 长风 聚源 万象 蓝鲸 凌云 新程 乐途 翰林 "
    "景川 北辰 南湖 东升 西岭 千帆 星火 磐石 远航 星河 华信 鼎盛 云帆 恒泰 ABC KX"
).split()
ORG_SUFFIXES = (
    "科技有限公司 集团 银行 证券 资本 保险 大学 研究院 医院 传媒 咨询 控股 实业 网络科技 信托 "
    "消费金融公司 基金管理有限公司 农商银行 律师事务所 汽车"
).split()
ORG_EXTRA = ["Nova Labs", "BlueOcean资本", "Zeta数据", "Q9网络", "云上5G实验室", "T&K咨询"]

PLACES = (
    "北京 上海 广州 深圳 杭州 成都 重庆 武汉 南京 西安 苏州 天津 长沙 郑州 青岛 厦门 合肥 昆明 "
    "大连 宁波 福州 济南 哈尔滨 沈阳 贵阳 南宁 海口 三亚 拉萨 兰州 石家庄 太原 呼和浩特 乌鲁木齐 "
    "浙江 江苏 广东 四川 云南 海南 新疆 内蒙古 香港 澳门 新加坡 东京 伦敦 纽约 巴黎 悉尼 迪拜 首尔 "
    "硅谷 陆家嘴 中关村 西湖 珠江新城 浦东新区 前海 滨江区 黄浦江 洱海"
).split()
PLACE_SUFFIXED = ["浙江省杭州市", "广东省深圳市", "四川省成都市", "江苏省苏州市", "湖北省武汉市"]

FIN_CORES = (
    "金盈 聚财 安鑫 稳利 薪享 鑫益 恒信 乐存 惠民 招财 如意 多多 满盈 月月 添利 盛世 锦绣 悦享"
).split()
FIN_SUFFIXES = (
    "宝 贷 理财 钱包 花 通 盈 成长混合基金 稳健债券基金 指数基金 定投计划 理财计划 1号 30天理财"
).split()
FIN_EXTRA = ["e路贷", "U享花", "iFund成长基金", "Q钱包", "Fin360理财", "极速e贷", "Pay宝"]

# --------------------------------------------------------------------------------------------
# Templates: {PER} {ORG} {LOC} {FIN} are entity slots; {Y} {M} {D} {N} {P} {A} are filler slots.
# --------------------------------------------------------------------------------------------
TEMPLATES = [
    # finance news
    "{Y}年{M}月{D}日，{ORG}宣布旗下产品{FIN}的年化收益率调整为{P}%。",
    "据{ORG}披露，{FIN}上半年规模增长至{A}元，较去年同期提升{P}%。",
    "{ORG}首席经济学家{PER}表示，{LOC}的消费市场仍有较大潜力。",
    "{FIN}今日起暂停大额申购，单日限额调整为{N}万元。",
    "受市场波动影响，{FIN}近一周净值下跌{P}%，投资者情绪趋于谨慎。",
    "{ORG}在{LOC}设立区域总部，计划三年内投资{A}元。",
    "分析师{PER}认为，{ORG}与{ORG}的合并将重塑{LOC}的银行业格局。",
    "{ORG}发布公告称，{FIN}将于{M}月{D}日起开放赎回。",
    "{LOC}金融监管部门约谈了{FIN}的运营方{ORG}。",
    "{ORG}第{N}季度营收为{A}元，同比增长{P}%，超出市场预期。",
    "投资者可通过{FIN}购买{ORG}发行的债券，起购金额为{N}元。",
    "{PER}出任{ORG}董事长，此前曾在{ORG}担任副总裁。",
    "{ORG}推出的{FIN}上线首日吸引了超过{N}万名用户。",
    "截至{Y}年末，{FIN}管理资产规模达到{A}元，用户数突破{N}万。",
    "{ORG} CEO {PER}在{LOC}举行的金融科技峰会上谈及数字人民币。",
    "{ORG}旗下{FIN}与{FIN}同时下调管理费率至{P}%。",
    "{PER}建议普通投资者将资金分散配置在{FIN}和{FIN}之间。",
    "{LOC}一家名为{ORG}的网贷平台因违规推广{FIN}被处罚{N}万元。",
    "{ORG}今年在{LOC}、{LOC}两地新增{N}家网点。",
    "{Y}年Q{Q}，{ORG}的净利润为{A}元，ROE约为{P}%。",
    # general news
    "{PER}昨日抵达{LOC}，出席{ORG}主办的文化交流活动。",
    "{LOC}气象台发布暴雨预警，预计未来{N}小时内累计降雨量将超过{N}毫米。",
    "{ORG}的研究团队在{LOC}发现了一种新的植物物种。",
    "{Y}年{LOC}国际马拉松吸引了{N}多名选手参赛，{PER}夺得男子组冠军。",
    "{PER}和{PER}在{LOC}共同创办了{ORG}。",
    "{LOC}至{LOC}的高铁线路预计于{Y}年底通车，全程约{N}分钟。",
    "{ORG}宣布向{LOC}受灾地区捐赠价值{A}元的物资。",
    "记者{PER}从{ORG}获悉，新校区将落户{LOC}。",
    "在{LOC}举行的发布会上，{ORG}展示了新款iPhone配件和智能手表。",
    "{PER}的新书在{LOC}首发，出版方{ORG}表示首印{N}万册。",
    "{ORG}与{LOC}市政府签署战略合作协议，共建智慧城市。",
    # resume lines
    "姓名：{PER}，籍贯：{LOC}，现任{ORG}高级工程师。",
    "{Y}年至{Y}年就职于{ORG}，负责{FIN}的风控模型开发。",
    "{PER}，毕业于{ORG}，曾在{LOC}从事金融分析工作{N}年。",
    "工作经历：{ORG}（{Y}.{M}-{Y}.{M}）产品经理，主导{FIN}改版。",
    "教育背景：{Y}年毕业于{ORG}计算机系，获硕士学位，GPA 3.{N}。",
    "{PER}先生现居{LOC}，擅长Python和SQL数据分析。",
    "项目经历：参与{ORG}与{ORG}联合开发的{FIN}系统建设。",
    "联系人：{PER}，工作地点：{LOC}，所属单位：{ORG}风险管理部。",
    "求职意向：{LOC}地区金融产品经理，期望薪资{N}K，曾负责{FIN}运营。",
    # social posts
    "今天在{LOC}吃到了超好吃的小笼包😀，下次还要来！",
    "刚把工资转进{FIN}，看着收益一点点涨📈",
    "有人用过{FIN}吗？利率{P}%靠谱不？",
    "和{PER}一起去{LOC}看展，人好多啊🚀",
    "{FIN}又提额了，但我还是决定少用点信用额度。",
    "关注{ORG}很久了，终于等到他们来{LOC}开店！",
    "#理财日记# 第{N}天，{FIN}累计收益{N}.{N}元😀",
    "@{PER} 周末一起去{LOC}爬山吗？",
    "听说{PER}跳槽去了{ORG}，羡慕😀",
    "{LOC}的房价又涨了，还是老老实实定投{FIN}吧📈",
    "转发：{ORG}的客服{PER}态度超好，帮我解决了{FIN}的还款问题👍",
]
NO_ENTITY_TEMPLATES = [
    "今天天气不错，适合出去走走，顺便买杯咖啡。",
    "会议将于下午{N}点准时开始，请大家提前十分钟到场。",
    "本季度整体经营情况稳定，成本控制取得一定成效。",
    "请在{Y}年{M}月{D}日前提交全部材料，逾期不予受理。",
    "这款手机支持5G网络和120Hz刷新率，续航表现也不错。",
    "周末和朋友去看了电影，剧情一般但特效很棒😀",
    "市场普遍预期下半年利率将维持在较低水平，波动有限。",
    "系统将于今晚{N}点进行升级维护，届时服务暂停约{N}分钟。",
    "他说这份报告的数据还需要再核实一遍，明天再定稿。",
    "年化收益率并不代表实际收益，理财有风险，投资需谨慎。",
    "新版App上线了dark mode，用起来舒服多了。",
]
NO_ENTITY_RATE = 0.08

SLOT_RE = re.compile(r"\{([A-Z]+)\}")
Pools = dict[str, tuple[list[str], list[str]]]  # label -> (names usable in train, held-out names)


def _fill(slot: str, rng: random.Random) -> str:
    """Text for a non-entity filler slot."""
    if slot == "Y":
        return str(rng.randint(2015, 2025))
    if slot == "M":
        return str(rng.randint(1, 12))
    if slot == "D":
        return str(rng.randint(1, 28))
    if slot == "Q":
        return str(rng.randint(1, 4))
    if slot == "N":
        return str(rng.choice([rng.randint(2, 9), rng.randint(10, 99), rng.randint(100, 999)]))
    if slot == "P":
        return f"{rng.randint(0, 9)}.{rng.randint(0, 99):02d}"
    if slot == "A":
        if rng.random() < 0.3:
            return f"{rng.randint(1, 99)}.{rng.randint(1, 9)}亿"
        return f"{rng.randint(1, 999)}{rng.choice(['万', '亿'])}"
    raise ValueError(f"unknown template slot {{{slot}}}; expected one of {LABELS} or Y M D Q N P A")


def build_pools(rng: random.Random) -> Pools:
    """Return ``{label: (seen, held_out)}`` name pools; held-out names never appear in train."""
    people = [s + g for s in SURNAMES for g in GIVEN_NAMES]
    people += FOREIGN_NAMES
    orgs = [c + s for c in ORG_CORES for s in ORG_SUFFIXES] + ORG_EXTRA
    places = PLACES + PLACE_SUFFIXED
    products = [c + s for c in FIN_CORES for s in FIN_SUFFIXES] + FIN_EXTRA
    pools: Pools = {}
    for label, names in (("PER", people), ("ORG", orgs), ("LOC", places), ("FIN", products)):
        names = sorted(set(names))
        rng.shuffle(names)
        k = max(1, int(len(names) * HELD_OUT_SHARE))
        pools[label] = (names[k:], names[:k])
    return pools


def render(template: str, rng: random.Random, pools: Pools, unseen_rate: float) -> tuple[str, list[dict]]:
    """Fill one template; return the text and its entities with half-open offsets."""
    parts: list[str] = []
    entities: list[dict] = []
    pos = 0
    used: set[str] = set()
    for i, piece in enumerate(SLOT_RE.split(template)):
        if i % 2 == 0:
            parts.append(piece)
            pos += len(piece)
            continue
        if piece in LABELS:
            seen, held = pools[piece]
            pool = held if rng.random() < unseen_rate else seen
            name = rng.choice(pool)
            while name in used:  # two slots of one type get different names
                name = rng.choice(pool)
            used.add(name)
            entities.append({"start": pos, "end": pos + len(name), "label": piece})
        else:
            name = _fill(piece, rng)
        parts.append(name)
        pos += len(name)
    return "".join(parts), entities


def make_sentence(rng: random.Random, pools: Pools, unseen_rate: float) -> dict:
    if rng.random() < NO_ENTITY_RATE:
        text, ents = render(rng.choice(NO_ENTITY_TEMPLATES), rng, pools, unseen_rate)
        return {"text": text, "entities": ents}
    text, ents = render(rng.choice(TEMPLATES), rng, pools, unseen_rate)
    if rng.random() < PAIR_RATE:
        text2, ents2 = render(rng.choice(TEMPLATES), rng, pools, unseen_rate)
        shift = len(text)
        ents += [{"start": e["start"] + shift, "end": e["end"] + shift, "label": e["label"]} for e in ents2]
        text += text2
    return {"text": text, "entities": ents}


def make_split(
    n: int, seed: int, pools: Pools, unseen_rate: float, taken: set[str] | None = None
) -> list[dict]:
    """``n`` sentences whose texts are unique within the split and absent from ``taken`` (the texts of the
    splits made before), so dev and test never repeat a training sentence."""
    rng = random.Random(seed)
    taken = set() if taken is None else taken
    out: list[dict] = []
    while len(out) < n:
        doc = make_sentence(rng, pools, unseen_rate)
        if doc["text"] not in taken:
            taken.add(doc["text"])
            out.append(doc)
    return out


# --------------------------------------------------------------------------------------------
# Raw, unlabelled texts for prediction
# --------------------------------------------------------------------------------------------
def _paragraph(rng: random.Random, pools: Pools, templates: list[str], n: int) -> str:
    return "".join(render(rng.choice(templates), rng, pools, 0.5)[0] for _ in range(n))


def make_raw(seed: int, pools: Pools) -> dict[str, str]:
    rng = random.Random(seed)
    finance = TEMPLATES[:20]
    news = TEMPLATES[20:31]
    resume = TEMPLATES[31:40]
    social = TEMPLATES[40:]
    raw = {
        "01_finance_news.txt": _paragraph(rng, pools, finance, 6) + "\n",
        "02_general_news.txt": _paragraph(rng, pools, news, 5) + "\n",
        "03_resume.txt": "\n".join(render(t, rng, pools, 0.5)[0] for t in rng.sample(resume, 6)) + "\n",
        "04_social_posts.txt": "\n".join(render(t, rng, pools, 0.5)[0] for t in rng.sample(social, 6)) + "\n",
        "05_short.txt": render("{PER}在{LOC}买了一份{FIN}。", rng, pools, 0.5)[0] + "\n",
    }
    # The long one: Chinese + Latin words + digits + spaces + full-width punctuation + emoji.
    mixed = [
        "【年度观察】{ORG}发布《{Y}年数字金融白皮书》：用户规模达到{N}万，同比增长{P}%。",
        "{PER}在采访中说：“我们希望在2026年前把服务覆盖到100个城市，包括{LOC}和{LOC}。”",
        "报告指出（见第{N}页），AI 风控模型的 AUC 从 0.82 提升到 0.9{N}，坏账率下降 {P}% 📈。",
        "在 {LOC} 的 Fintech Week 上，{ORG} 的 CTO {PER} 演示了基于 Transformer 的 NER 系统🚀。",
        "网友评论：“{FIN}的 App 越来越好用了😀，但是 iOS 17 上偶尔闪退。”",
        "数据显示，{FIN}在 {Y} 年 Q{Q} 的日均申购额约为 {N}.{N} 亿元（人民币）。",
        "{ORG}（股票代码：SZ30{N}）今日收涨 {P}%，成交额 {A}元。",
        "备注：以上内容仅供参考，不构成投资建议。Data source: 内部统计，截至 {Y} 年 {M} 月 {D} 日。",
    ]
    body: list[str] = [f"# 金融科技周报 Weekly Fintech Digest No.{rng.randint(10, 99)}\n"]
    i = 0
    while sum(len(p) for p in body) < 2300:
        body.append(render(mixed[i % len(mixed)], rng, pools, 0.5)[0])
        body.append(render(rng.choice(TEMPLATES), rng, pools, 0.5)[0])
        if i % 3 == 2:
            body.append("\n\n")
        i += 1
    raw["06_long_mixed.txt"] = "".join(body).rstrip() + "\n"
    return raw


# --------------------------------------------------------------------------------------------
# README with counts
# --------------------------------------------------------------------------------------------
def split_stats(docs: list[dict]) -> dict[str, int]:
    c = Counter(e["label"] for d in docs for e in d["entities"])
    return {
        "sentences": len(docs),
        "characters": sum(len(d["text"]) for d in docs),
        "no_entity": sum(1 for d in docs if not d["entities"]),
        **{label: c.get(label, 0) for label in LABELS},
    }


def unseen_mentions(train: list[dict], docs: list[dict]) -> int:
    """Entity mentions in ``docs`` whose surface string never occurs as a mention in train."""
    known = {d["text"][e["start"] : e["end"]] for d in train for e in d["entities"]}
    return sum(1 for d in docs for e in d["entities"] if d["text"][e["start"] : e["end"]] not in known)


def make_readme(splits: dict[str, list[dict]], raw: dict[str, str], seed: int) -> str:
    rows = []
    for name, docs in splits.items():
        s = split_stats(docs)
        avg = s["characters"] / max(1, s["sentences"])
        unseen = unseen_mentions(splits["train"], docs) if name != "train" else 0
        rows.append(
            f"| {name} | {s['sentences']} | {s['characters']} | {avg:.1f} | {s['PER']} | {s['ORG']} | "
            f"{s['LOC']} | {s['FIN']} | {s['no_entity']} | {unseen} |"
        )
    raw_rows = [f"| raw/{name} | {len(text)} |" for name, text in raw.items()]
    return "\n".join(
        [
            "# Sample corpus (synthetic)",
            "",
            "A small **synthetic** Chinese NER corpus shipped with the project for demos, tests and smoke",
            "runs. Every sentence was generated from templates and name lists written for this project",
            "(`scripts/make_sample_corpus.py`); nothing is copied from any dataset. Names of people,",
            "organisations and financial products are invented combinations; place names are ordinary",
            "geography. Any resemblance to real entities is coincidental. Do not use it to judge a model's",
            "real-world quality: the sentences are formulaic.",
            "",
            "Entity types: `PER` (people), `ORG` (organisations), `LOC` (places), `FIN` (financial",
            "products and platforms: wealth-management products, loan apps, funds).",
            "",
            "## How it was generated",
            "",
            "```",
            f"python scripts/make_sample_corpus.py --out sample_corpus --seed {seed}",
            "```",
            "",
            "The generator is deterministic: the same seed gives the same bytes. Dev and test draw part",
            f"of their names ({UNSEEN_RATE:.0%} of entity slots) from pools held out of train, so they",
            "contain mentions never seen in training (column `unseen`).",
            "",
            "## Format",
            "",
            "`train.jsonl`, `dev.jsonl`, `test.jsonl`: one JSON document per line, UTF-8,",
            '`{"text": "...", "entities": [{"start": s, "end": e, "label": "PER"}]}` with half-open',
            "character offsets: `text[s:e]` is the mention.",
            "",
            "`raw/*.txt`: unlabelled texts for batch prediction, one document per file.",
            "`raw/06_long_mixed.txt` is longer than 2,000 characters and mixes Chinese with Latin words,",
            "digits, spaces, full-width punctuation and emoji, to exercise windowing and alignment.",
            "",
            "## Counts",
            "",
            "| split | sentences | characters | avg chars | PER | ORG | LOC | FIN | no-entity | unseen |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "| raw file | characters |",
            "|---|---|",
            *raw_rows,
            "",
        ]
    )


def write_corpus(
    out: Path, seed: int = DEFAULT_SEED, sizes: dict[str, int] | None = None
) -> dict[str, list[dict]]:
    """Generate the corpus into ``out``; return the splits."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    if set(sizes) != set(DEFAULT_SIZES) or any(n < 1 for n in sizes.values()):
        raise ValueError(f"sizes must give a positive count for each of {sorted(DEFAULT_SIZES)}, got {sizes}")
    pools = build_pools(random.Random(seed))
    taken: set[str] = set()
    splits = {
        name: make_split(n, seed * 10 + i + 1, pools, 0.0 if name == "train" else UNSEEN_RATE, taken)
        for i, (name, n) in enumerate(sizes.items())
    }
    raw = make_raw(seed * 10 + 9, pools)
    out.mkdir(parents=True, exist_ok=True)
    for name, docs in splits.items():
        lines = [json.dumps(d, ensure_ascii=False) for d in docs]
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "raw").mkdir(exist_ok=True)
    for name, text in raw.items():
        (out / "raw" / name).write_text(text, encoding="utf-8")
    (out / "README.md").write_text(make_readme(splits, raw, seed), encoding="utf-8")
    return splits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "sample_corpus")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    splits = write_corpus(args.out, args.seed)
    for name, docs in splits.items():
        print(name, split_stats(docs))


if __name__ == "__main__":
    main()
