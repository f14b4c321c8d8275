"""Command-line flags from pydantic fields: one generator behind every option a command takes from a model.

A :class:`FlagTable` says how the fields of one model, or of a tree of models (``NERConfig``'s sections),
become argparse options. What differs between commands is data on the table (renames, the seed's one-dash
spellings, extra help, retired flags, value checks, how a default is shown), never a special case in the
code. A field's type decides the option's form:

=====================================  ==============================================================
field type                             option
=====================================  ==============================================================
``bool``                               ``--x`` / ``--no-x`` (:class:`argparse.BooleanOptionalAction`)
``int``, ``float``, ``str``, ``Path``  one value of that type
an ``Enum``, a ``Literal``             one of its values (``choices``, listed in ``--help``)
``list[X]``                            one or more values (``nargs="+"``), X any of the above but bool
``int | Literal["w"]`` (or ``float``)  a number or one of the words (``--learning_rate auto``)
``X | None``                           as X; left out, the option is ``None`` ("not given")
a pydantic model (a section)           its fields, each keyed ``section.field``
=====================================  ==============================================================

A field whose JSON schema names its values (``WithJsonSchema({"enum": [...]})``, as
:data:`ner_core.schemes.TrainingScheme` does) offers exactly those values. The help is the field's
``description`` (or the table's replacement text), then its extra help, then its default. Two fields
that would make the same option string are refused when the parser is built, with both named; so is a
field whose flag another option of the command already has, and data that names no field or flag (a
rename left behind by a renamed field).
"""

from __future__ import annotations

import argparse
import enum
import functools
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, WithJsonSchema
from pydantic.fields import FieldInfo

__all__ = ["Flag", "FlagTable", "Retired", "positive_int"]

_SCALARS = (int, float, str, Path)


class Retired(argparse.Action):
    """A flag that is refused with its one-line explanation, whatever value it is given."""

    def __init__(self, option_strings, dest, *, explanation: str, **kwargs):
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.explanation = explanation

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} {self.explanation}")


def positive_int(text: str) -> int:
    """argparse type (a value check for :attr:`FlagTable.types`): an int >= 1, one line otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


@dataclass(frozen=True)
class Flag:
    """One field's option: ``key`` the field's dotted path in the model (``training.max_epochs``),
    ``names`` its option strings (the canonical one first), ``dest`` where argparse puts the value and
    ``kwargs`` the rest of :meth:`argparse.ArgumentParser.add_argument`'s keyword arguments."""

    key: str
    names: tuple[str, ...]
    dest: str
    kwargs: dict[str, Any] = field(compare=False)

    @property
    def name(self) -> str:
        """The flag's name without its dashes (``max_len``, ``batch-size``): what the table's data names."""
        return self.names[0][2:]

    def option_strings(self) -> list[str]:
        """Every string that selects this option, ``--no-x`` of a switch included."""
        strings = list(self.names)
        if self.kwargs.get("action") is argparse.BooleanOptionalAction:
            strings += [f"--no-{s[2:]}" for s in self.names if s.startswith("--")]
        return strings


@dataclass(frozen=True)
class FlagTable:
    """How the fields of ``model`` become flags (see the module's doc). Every mapping below is keyed by
    flag name without dashes (after renaming and dashing), except ``renames`` and ``skip`` (field keys).

    - ``renames``: field key -> flag name (``{"head.type": "head"}``); by default the field's own name;
    - ``skip``: field keys, of fields or whole sections, that make no flag;
    - ``dashed``: flags are spelled with dashes only (``--max-texts``); otherwise a name with an
      underscore is spelled so and also with dashes (``--max_len`` and ``--max-len``);
    - ``single_dash``: flags also accepted with one dash (the seed's ``-max_len``);
    - ``help``: text replacing a field's description; ``extra_help``: text appended to it;
    - ``metavars``: the value's name in ``--help`` (default: the field's name in capitals);
    - ``types``: the argparse type (a value check such as :func:`positive_int`) instead of the field's;
    - ``retired``: flags that are gone -> why and what to use instead (refused in one line);
    - ``default_help``: how a default is shown after the help (``None``: not shown), and ``show_none``
      whether a default of ``None`` is shown too;
    - ``keep_defaults``: an option left out holds the field's default; otherwise ``None`` ("not given",
      so that only the options given override a configuration);
    - ``dest_prefix``: put before each flag's name (dashes as underscores) to make its ``dest``.
    """

    model: type[BaseModel]
    renames: Mapping[str, str] = field(default_factory=dict)
    skip: frozenset[str] = frozenset()
    dashed: bool = False
    single_dash: frozenset[str] = frozenset()
    help: Mapping[str, str] = field(default_factory=dict)
    extra_help: Mapping[str, str] = field(default_factory=dict)
    metavars: Mapping[str, str] = field(default_factory=dict)
    types: Mapping[str, Callable[[str], Any]] = field(default_factory=dict)
    retired: Mapping[str, str] = field(default_factory=dict)
    default_help: str | None = " (default: {})"
    show_none: bool = True
    keep_defaults: bool = False
    dest_prefix: str = ""

    @functools.cached_property
    def flags(self) -> tuple[Flag, ...]:
        """One :class:`Flag` per field (sections walked in the model's order); ``ValueError`` for two
        fields with one flag, a retired flag a field makes again, or data naming no field or flag."""
        built = tuple(self._flag(key, info) for key, info in _fields(self.model, "", self.skip))
        _refuse_duplicates(built, self._retired_names(), self.model.__name__)
        self._check_data(built)
        return built

    def add_to(self, parser, only: Iterable[str] | None = None) -> None:
        """Add the flags to ``parser`` (an argument parser or group): those of the field keys ``only``,
        else every flag and the retired ones."""
        wanted = None if only is None else set(only)
        unknown = (wanted or set()) - {f.key for f in self.flags}
        if unknown:
            raise ValueError(f"{self.model.__name__} has no field {sorted(unknown)} to make a flag of")
        for flag in self.flags:
            if wanted is None or flag.key in wanted:
                try:
                    parser.add_argument(*flag.names, dest=flag.dest, **flag.kwargs)
                except argparse.ArgumentError as exc:
                    raise ValueError(f"the flag of {self.model.__name__} field {flag.key}: {exc}") from None
        if wanted is None:
            for names, explanation in self._retired_names():
                parser.add_argument(*names, action=Retired, explanation=explanation)

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """Field key -> value of every option that holds one (not ``None``) in ``args``: the options given,
        with ``keep_defaults`` the defaults of the others too."""
        found = {f.key: getattr(args, f.dest, None) for f in self.flags}
        return {key: value for key, value in found.items() if value is not None}

    def flag_of(self, key: str) -> Flag:
        """The flag of field ``key``."""
        for flag in self.flags:
            if flag.key == key:
                return flag
        raise KeyError(f"{self.model.__name__} has no flag for field {key!r}")

    # ------------------------------------------------------------------------------------- one flag
    def _spell(self, name: str) -> tuple[str, ...]:
        if self.dashed:
            return (f"--{name.replace('_', '-')}",)
        return (f"--{name}", *([f"--{name.replace('_', '-')}"] if "_" in name else []))

    def _flag(self, key: str, info: FieldInfo) -> Flag:
        field_name = key.rsplit(".", 1)[-1]
        names = self._spell(self.renames.get(key, field_name))
        name = names[0][2:]
        if name in self.single_dash:
            names = (*names, f"-{name}")
        kwargs = _form(info, where=f"{self.model.__name__} field {key}")
        if name in self.types:
            kwargs["type"] = self.types[name]
        if "action" not in kwargs and "choices" not in kwargs:
            kwargs["metavar"] = self.metavars.get(name, field_name.upper())
        elif name in self.metavars:
            kwargs["metavar"] = self.metavars[name]
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        kwargs["required"] = info.is_required()
        kwargs["default"] = _plain(default) if self.keep_defaults else None
        kwargs["help"] = self._help(name, info, default) or None
        return Flag(key=key, names=names, dest=self.dest_prefix + name.replace("-", "_"), kwargs=kwargs)

    def _help(self, name: str, info: FieldInfo, default: Any) -> str:
        text = self.help.get(name, info.description or "") + self.extra_help.get(name, "")
        shown = self.default_help is not None and not info.is_required()
        if shown and (default is not None or self.show_none):
            text += self.default_help.format(_shown(default))
        return text.strip().replace("%", "%%")  # argparse formats help with %

    def _retired_names(self) -> list[tuple[tuple[str, ...], str]]:
        return [(self._spell(name), why) for name, why in self.retired.items()]

    def _check_data(self, built: tuple[Flag, ...]) -> None:
        keys = {f.key for f in built}
        names = {f.name for f in built}
        problems = [f"renames names no field {k!r}" for k in self.renames if k not in keys]
        for what in ("single_dash", "help", "extra_help", "metavars", "types"):
            problems += [f"{what} names no flag {n!r}" for n in getattr(self, what) if n not in names]
        if problems:
            raise ValueError(f"flags of {self.model.__name__}: {'; '.join(problems)}")


# ----------------------------------------------------------------------------------------- fields
def _fields(model: type[BaseModel], prefix: str, skip: frozenset[str]) -> Iterator[tuple[str, FieldInfo]]:
    """``(dotted key, field)`` of every leaf field of ``model``, sections (model-typed fields) walked."""
    for name, info in model.model_fields.items():
        key = prefix + name
        if key in skip:
            continue
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _fields(ann, f"{key}.", skip)
        else:
            yield key, info


def _form(info: FieldInfo, where: str) -> dict[str, Any]:
    """``add_argument`` keywords for the field's type: ``action``, or ``type`` (+ ``choices``, ``nargs``)."""
    ann = _optional_of(info.annotation)
    if ann is bool:
        return {"action": argparse.BooleanOptionalAction}
    many = typing.get_origin(ann) is list
    if many:
        (ann,) = typing.get_args(ann) or (None,)
        ann = _optional_of(ann)
    form = _one_value(ann, info.metadata if not many else []) or _number_or_words(ann)
    if form is None:
        raise TypeError(
            f"{where}: a field of type {info.annotation!r} has no flag form (bool, int, float, str, Path, an "
            "Enum or a Literal, a list of one of those but bool, or one of them | None); leave it off (skip)"
        )
    return {**form, "nargs": "+"} if many else form


def _one_value(ann: Any, metadata: list) -> dict[str, Any] | None:
    """``type`` (+ ``choices``) for one value of type ``ann``; ``None`` when it has no flag form."""
    if typing.get_origin(ann) is typing.Annotated:
        ann, *extra = typing.get_args(ann)
        metadata = [*metadata, *extra]
    choices: list | None = None
    if typing.get_origin(ann) is typing.Literal:
        choices = list(typing.get_args(ann))
    elif isinstance(ann, type) and issubclass(ann, enum.Enum):
        choices = [member.value for member in ann]
    for item in metadata:  # the schema names the values it allows (TrainingScheme: BIO, BIOES)
        if isinstance(item, WithJsonSchema) and isinstance(item.json_schema, dict):
            choices = list(item.json_schema.get("enum") or []) or choices
    if choices:
        kinds = {type(c) for c in choices}
        kind = kinds.pop() if len(kinds) == 1 else None
        return {"type": kind, "choices": choices} if kind in (str, int, float) else None
    if ann in _SCALARS:
        return {"type": ann}
    return None


def _number_or_words(ann: Any) -> dict[str, Any] | None:
    """``type`` for ``float | Literal["auto", ...]`` (or ``int``): a number, or one of the words as it is;
    ``None`` for any other type."""
    if typing.get_origin(ann) not in (typing.Union, types.UnionType):
        return None
    words: list[str] = []
    kinds: list[Any] = []
    for arg in typing.get_args(ann):
        if typing.get_origin(arg) is typing.Annotated:
            arg = typing.get_args(arg)[0]
        if typing.get_origin(arg) is typing.Literal and all(isinstance(w, str) for w in typing.get_args(arg)):
            words += typing.get_args(arg)
        else:
            kinds.append(arg)
    if not words or len(kinds) != 1 or kinds[0] not in (int, float):
        return None
    kind = kinds[0]

    def number_or_word(text: str) -> Any:
        if text in words:
            return text
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number or {' or '.join(words)}, got {text!r}"
            ) from None

    return {"type": number_or_word}


def _optional_of(ann: Any) -> Any:
    """``X`` for ``X | None`` (``Optional[X]``), else ``ann`` itself."""
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return ann


def _plain(value: Any) -> Any:
    """An enum member as its value (what a flag would have given), lists element-wise."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _shown(value: Any) -> str:
    return str(_plain(value))


def _refuse_duplicates(
    flags: tuple[Flag, ...], retired: list[tuple[tuple[str, ...], str]], model: str
) -> None:
    """Two fields with one option string, or a field that makes a retired flag again: ``ValueError``."""
    owner: dict[str, str] = {}
    for flag in flags:
        for s in flag.option_strings():
            if s in owner:
                raise ValueError(
                    f"{s} would be the flag of both {model} fields {owner[s]} and {flag.key}: rename one "
                    "of them (renames) or leave one off (skip)"
                )
            owner[s] = flag.key
    for names, _ in retired:
        for s in names:
            if s in owner:
                raise ValueError(f"{s} is a retired flag, but {model} field {owner[s]} would make it again")
