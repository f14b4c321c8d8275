"""The one split rule for benchmarks on the shared data sets (../shared/datasets), so every bench that
trains or scores on them uses the same sentences.

The shared copies lack splits: MSRA has train and test but no dev; People's Daily has dev and test but
no train (its example.train was not obtained, see SOURCES.md). The rule, applied per data set:

* a missing split is carved from one named file of the same data set: its sentences are shuffled with
  ``random.Random(SEED)`` (file order first, so the result depends on the file's bytes alone) and the
  first :data:`DEV_SENTENCES` become dev; the rest keep the file's role;
* a training set is capped at :data:`TRAIN_SENTENCES`: the first that many of the same seeded shuffle
  (after the dev sentences), so CPU benches train in minutes;
* an official split that exists is used whole, as shipped;
* ``heldout`` (MSRA only): the sentences of the same seeded shuffle after the dev ones and the capped
  training set, which no bench trains on; more held-out text where a figure needs a bigger sample than
  dev (:mod:`bench.bench_calibration`'s ``--fit-on heldout``).

=================  ==================================  ==================================  ==============
data set           train                               dev                                 test
=================  ==================================  ==================================  ==============
``resume``         train.char.bmes (3,821)             dev.char.bmes (463)                 test.char.bmes
``msra``           msra_train_bio, shuffled: the       msra_train_bio, shuffled: the       msra_test_bio
                   10,000 after dev                    first 1,000
``peoples-daily``  example.dev (2,318; the only        example.test, shuffled: the first   the rest of
                   split left to train on)             1,000                               example.test
=================  ==================================  ==================================  ==============

The seed and sizes are part of the rule: changing them changes every bench's figures.
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
#: the shuffle seed of every carved split
SEED = 20240613
#: sentences carved for a dev split that the data set lacks
DEV_SENTENCES = 1000
#: at most this many training sentences
TRAIN_SENTENCES = 10_000

DATASETS = ("resume", "msra", "peoples-daily")

# data set -> split -> (file, part): part "all" is the file whole; "dev" the first DEV_SENTENCES of the
# seeded shuffle; "rest" what follows them (capped at TRAIN_SENTENCES for train)
_RULE: dict[str, dict[str, tuple[str, str]]] = {
    "resume": {
        "train": ("resume-ner/train.char.bmes", "all"),
        "dev": ("resume-ner/dev.char.bmes", "all"),
        "test": ("resume-ner/test.char.bmes", "all"),
    },
    "msra": {
        "train": ("msra/msra_train_bio", "rest"),
        "dev": ("msra/msra_train_bio", "dev"),
        "test": ("msra/msra_test_bio", "all"),
    },
    "peoples-daily": {
        "train": ("peoples-daily/example.dev", "all"),
        "dev": ("peoples-daily/example.test", "dev"),
        "test": ("peoples-daily/example.test", "rest"),
    },
}


@cache
def _read(rel: str) -> tuple:
    from ner_core.data.formats import read_file

    return tuple(read_file(SHARED / rel).documents)


def available(dataset: str) -> bool:
    """Whether every file the rule names for ``dataset`` is present."""
    return all((SHARED / rel).is_file() for rel, _ in _RULE[_check(dataset)].values())


def load(dataset: str, split: str) -> list:
    """The documents of ``split`` (train, dev, test) of ``dataset`` under the rule above."""
    if split == "heldout":
        return _heldout(dataset)
    rel, part = _RULE[_check(dataset)].get(split, (None, None))
    if rel is None:
        raise ValueError(f"split must be train, dev, test or heldout, got {split!r}")
    docs = list(_read(rel))
    cap = TRAIN_SENTENCES if split == "train" else None
    if part == "all":
        return docs[:cap]
    order = list(range(len(docs)))
    random.Random(SEED).shuffle(order)
    picked = order[:DEV_SENTENCES] if part == "dev" else order[DEV_SENTENCES:]
    return [docs[i] for i in picked[:cap]]


def _heldout(dataset: str) -> list:
    """MSRA's train sentences that are neither dev nor in the capped training set."""
    if dataset != "msra":
        raise ValueError(f"only msra has a heldout split (the rest of its train file), not {dataset!r}")
    docs = list(_read(_RULE["msra"]["train"][0]))
    order = list(range(len(docs)))
    random.Random(SEED).shuffle(order)
    return [docs[i] for i in order[DEV_SENTENCES + TRAIN_SENTENCES :]]


def _check(dataset: str) -> str:
    if dataset not in _RULE:
        raise ValueError(f"unknown data set {dataset!r}: one of {', '.join(DATASETS)}")
    return dataset
