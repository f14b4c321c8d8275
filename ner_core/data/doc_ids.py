"""Document ids that stay unique when several files share a stem, without renaming any file.

A reader names a record ``<file stem>:<key>`` (:mod:`ner_core.data.formats`). Files named in the CoNLL-2003
manner (``corpus.train``, ``corpus.dev``, ``corpus.test``) share the stem ``corpus``, so their ids collide.
:func:`unique_doc_ids` gives only such files a longer prefix: the file name (``corpus.train:1``), or, when
the names are equal too (``a/train.txt``, ``b/train.txt``), the shortest trailing part of the path that
tells them apart (``a/train.txt:1``). Files whose stem-based ids do not collide keep them byte for byte:
ids already stored (which nightly prediction matches on) never change.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import PurePath

__all__ = ["unique_doc_ids"]


def _collide(id_lists: list[list[str]]) -> bool:
    seen: set[str] = set()
    for ids in id_lists:
        if not seen.isdisjoint(ids):
            return True
        seen.update(ids)
    return False


def _distinct_suffixes(paths: list[PurePath]) -> list[str] | None:
    """The shortest trailing parts (at least the file name) that tell ``paths`` apart; None if none do."""
    longest = max(len(p.parts) for p in paths)
    for k in range(1, longest + 1):
        names = ["/".join(p.parts[-k:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return None


def unique_doc_ids(sources: list[str], ids: list[list[str]]) -> list[list[str]]:
    """``ids`` (one list per file of ``sources``, each id ``<stem>:<key>``) with the ids of files whose stem
    is shared by another file *and* whose ids collide prefixed by their file name (or a longer trailing
    part of their path) instead of the stem. Other lists come back unchanged (the same objects).

    A file given twice cannot be told apart: its ids are left to collide (the caller reports it).
    """
    if len(sources) != len(ids):
        raise ValueError(f"expected one id list per source, got {len(ids)} lists for {len(sources)} sources")
    paths = [PurePath(os.path.abspath(s)) for s in sources]  # the same suffix from any working dir
    by_stem: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(paths):
        by_stem[p.stem].append(i)
    out = list(ids)
    for stem, members in by_stem.items():
        if len(members) < 2 or not _collide([ids[i] for i in members]):
            continue
        names = _distinct_suffixes([paths[i] for i in members])
        if names is None:
            continue
        cut = len(stem)
        for i, name in zip(members, names, strict=True):
            out[i] = [name + doc_id[cut:] for doc_id in ids[i]]
    return out
