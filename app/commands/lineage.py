"""``ner lineage RUN_ID [--events]``: the dataset versions and review events that made a run's model, the
training sources beyond them (adapt corpus, unlabeled texts, silver rounds, teacher), and its promotions."""

from __future__ import annotations

import argparse

from app.commands.shared import add_common


def add_parser(sub) -> None:
    sp = add_common(
        sub.add_parser(
            "lineage",
            help="which dataset versions, review events, unlabeled texts and teacher made a run's model",
        )
    )
    sp.add_argument("run_id")
    sp.add_argument("--events", action="store_true", help="list every review event too")
    sp.set_defaults(func=cmd_lineage)


def cmd_lineage(args: argparse.Namespace) -> int:
    from storage.runs import model_lineage

    lin = model_lineage(args.db, args.run_id)
    star = " [production]" if lin["is_production"] else ""
    print(f"run {lin['run_id']}{star}: model {lin['model_dir'] or '-'}")
    for d in lin["datasets"]:
        src = f"review export of {', '.join(d['pred_runs']) or '-'}" if d["is_review_export"] else "ingested"
        who = f" by {', '.join(d['reviewers'])}" if d["reviewers"] else ""
        print(f"  {d['role']:<5} {d['dataset']} v{d['version']} ({src}): {d['events']} review events{who}")
    for line in source_lines(lin["sources"]):
        print(f"  {line}")
    for p in lin["promotions"]:
        what = "promoted" if p["run_id"] == lin["run_id"] else f"replaced by {p['run_id']}"
        print(f"  {p['promoted_at']:%Y-%m-%d %H:%M:%S} {what} ({p['reason']})")
    if args.events:
        for e in lin["events"]:
            print(
                f"    {e['created_at']:%Y-%m-%d %H:%M:%S} {e['reviewer']:<12} {e['action']:<9} "
                f"{e['doc_id']} ({e['pred_run_id']}) -> {e['dataset']} v{e['version']}"
            )
    return 0


def _fingerprint(sha) -> str:
    return f", sha256 {sha[:12]}" if sha else ""


def _source_line(s: dict) -> str:
    """One training source as ``ner lineage`` prints it."""
    d = s["detail"]
    fp = _fingerprint(s["fingerprint"])
    if s["kind"] == "adapt_corpus":
        return (
            f"adapt {s['name'] or '-'}: {s['n_docs']} texts{fp}; encoder {d.get('source_encoder')} -> "
            f"{d.get('encoder')} ({d.get('masking')} masking, {d.get('steps')} steps)"
        )
    if s["kind"] == "unlabeled":
        return f"unlabeled {s['name'] or '-'}: {s['n_docs']} texts{fp} ({d.get('used_by', '-')})"
    if s["kind"] == "silver_round":
        counts = d.get("counts") or {}
        out = ", ".join(
            f"{n:g} {why}"
            for why, n in counts.items()
            if n and why not in ("with_entities", "without_entities")
        )
        return (
            f"silver round {d.get('round')}: {s['n_docs']} documents in {s['name']}{fp} (teacher "
            f"{d.get('teacher')}); left out: {out or 'none'}"
        )
    if s["kind"] == "teacher":
        return (
            f"teacher {s['name']}{fp} (alpha {d.get('alpha')}, temperature {d.get('temperature')}; "
            f"{d.get('teacher_dir', '-')})"
        )
    return f"{s['kind']} {s['name']}{fp}"


def source_lines(sources: dict) -> list[str]:
    """The ``sources`` of :func:`storage.runs.model_lineage` as lines: "not recorded" for a run stored
    before they were (or not completed), the refusal for a record that could not be read, "none" for a
    plain run."""
    if not sources["recorded"]:
        return ["training sources: not recorded (the run was stored before they were, or has not completed)"]
    if sources["problem"]:
        return [f"training sources: not recorded: {sources['problem']}"]
    if not sources["items"]:
        return ["training sources: none beyond the datasets"]
    return [_source_line(s) for s in sources["items"]]
