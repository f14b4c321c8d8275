"""The formats by name: each reader module registers the formats it reads with :func:`register`.

A new format is one new module in this package that defines its read function, decorates it with
``@register("name", ...)``, and is imported by ``ner_core/data/formats/__init__.py`` (the import runs the
registration). :func:`ner_core.data.formats.read_file` then finds it by name with :func:`get_reader`;
:func:`ner_core.data.formats.detect_format` knows the built-in formats only, so a new one is named explicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ner_core.data.formats.context import ReadContext
from ner_core.schemes import Scheme

__all__ = ["FormatReader", "ReadFn", "format_names", "get_reader", "register"]

# Reads the file's bytes into the context (records, problems); False when the file cannot be read at all.
ReadFn = Callable[[ReadContext, bytes], bool]


@dataclass(frozen=True)
class FormatReader:
    """A registered format.

    ``tagged``: records come from per-character tags, so the result carries the scheme they were read
    in. ``default_scheme`` applies when the caller names none; ``schemes`` are the ones accepted.
    ``scheme_from_data(data)``, when set and the caller names no scheme, may pick another from the
    content (``None``: keep the default).
    """

    name: str
    read: ReadFn
    tagged: bool = False
    default_scheme: Scheme = Scheme.BIO
    schemes: tuple[Scheme, ...] = tuple(Scheme)
    scheme_from_data: Callable[[bytes], Scheme | None] | None = None


_READERS: dict[str, FormatReader] = {}


def register(
    name: str,
    *,
    tagged: bool = False,
    default_scheme: Scheme = Scheme.BIO,
    schemes: tuple[Scheme, ...] = tuple(Scheme),
    scheme_from_data: Callable[[bytes], Scheme | None] | None = None,
) -> Callable[[ReadFn], ReadFn]:
    """Decorator: register the decorated function as the reader of format ``name``."""
    if default_scheme not in schemes:
        raise ValueError(f"format {name!r}: default scheme {default_scheme} is not among {schemes}")

    def decorate(read: ReadFn) -> ReadFn:
        if name in _READERS:
            raise ValueError(f"format {name!r} is registered already")
        _READERS[name] = FormatReader(name, read, tagged, default_scheme, tuple(schemes), scheme_from_data)
        return read

    return decorate


def get_reader(name: str) -> FormatReader:
    """The reader registered as ``name``; ``ValueError`` naming the registered formats otherwise."""
    try:
        return _READERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown format {name!r}; registered formats: {format_names()}") from None


def format_names() -> tuple[str, ...]:
    """The registered format names, in order of registration."""
    return tuple(_READERS)
