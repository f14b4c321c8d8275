"""``ner query "text" ...``: send texts to a running ``ner serve`` and print the entities (the seed's
query.py); the service is ``--url``, by default the settings' ``NER_SERVE_URL``."""

from __future__ import annotations

import argparse
import json
import sys

from ner_core.settings import settings


def add_parser(sub) -> None:
    sp = sub.add_parser("query", help="send texts to a running `ner serve` and print the entities")
    sp.add_argument("texts", nargs="*", help="texts to tag (none or '-': one per line on stdin)")
    sp.add_argument("--url", default=settings().serve_url, help="service address (default %(default)s)")
    sp.add_argument("--json", action="store_true", help="print the service's JSON answer")
    sp.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="send the API key in FILE (default: $NER_API_KEY when set)",
    )
    sp.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default %(default)s)")
    sp.set_defaults(func=cmd_query)


def cmd_query(args: argparse.Namespace) -> int:
    import httpx

    from app.serve_guard import load_api_key

    texts = list(args.texts)
    if not texts or texts == ["-"]:
        texts = [line.strip() for line in sys.stdin if line.strip()]
    if not texts:
        raise ValueError('no text given: ner query "TEXT" [TEXT ...] (or lines on stdin with -)')
    url = args.url.rstrip("/") + "/predict"
    key = load_api_key(getattr(args, "api_key_file", None))
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.post(url, json={"texts": texts}, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(
            f"ner query: error: cannot reach the service at {args.url} ({type(exc).__name__}: {exc}); "
            f"start it with `ner serve`",
            file=sys.stderr,
        )
        return 2
    if r.status_code != 200:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        print(f"ner query: error: the service answered {r.status_code}: {detail}", file=sys.stderr)
        return 2
    body = r.json()
    if args.json:
        print(json.dumps(body, ensure_ascii=False, indent=2))
        return 0
    _print_entities(texts, body["results"])
    return 0


def _print_entities(texts: list[str], results: list[dict]) -> None:
    for text, res in zip(texts, results, strict=True):
        shown = text if len(text) <= 60 else text[:60] + "…"
        print(f"{shown}  ({len(res['entities'])} entities)")
        for e in res["entities"]:
            print(
                f"  {e['label']:<6} [{e['start']}, {e['end']})  {e['text']}  confidence {e['confidence']:.3f}"
            )
