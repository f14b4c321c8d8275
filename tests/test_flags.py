"""The flag generator (:mod:`app.flags`): pydantic fields -> argparse options; and the commands' flags that
come from it (NERConfig's sections on train, PredictionConfig on predict / serve, ServeLimits on serve)."""

from __future__ import annotations

import argparse
import dataclasses
import enum
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from app.flags import FlagTable, positive_int


class Decoder(enum.StrEnum):
    CRF = "crf"
    SPAN = "span"


class Small(BaseModel):
    decoder: Decoder = Field(Decoder.CRF, description="how tags are decoded")
    overlap: Literal["first", "longest"] = Field("first", description="which of two overlapping spans wins")
    window: Literal[64, 128] = Field(128, description="a window")
    adversarial: bool = Field(False, description="FGM training")
    dilations: list[int] = Field(default_factory=lambda: [1, 2], description="dilations of a block")
    names: list[str] | None = Field(None, description="names")
    files: list[Path] = Field(default_factory=list, description="extra files")
    limit: int | None = Field(None, description="at most this many")
    rate: float = Field(0.5, description="a share, 50% by default")
    out: Path = Field(Path("out"), description="where to write")


class Section(BaseModel):
    rate: float = Field(0.1, description="a section's rate")


class Tree(BaseModel):
    a: Section = Field(default_factory=Section)
    b: Section = Field(default_factory=Section)


def parser_of(table: FlagTable) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    table.add_to(p)
    return p


def parse(table: FlagTable, *argv: str) -> argparse.Namespace:
    return parser_of(table).parse_args(list(argv))


def help_of(table: FlagTable) -> str:
    return " ".join(parser_of(table).format_help().split())


def refused(table: FlagTable, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        parser_of(table).parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


# ----------------------------------------------------------------------------------------- types
def test_enum_and_literal_fields_offer_their_values_as_choices_in_help(capsys):
    table = FlagTable(Small)
    text = help_of(table)
    assert "--decoder {crf,span}" in text and "--overlap {first,longest}" in text
    assert "--window {64,128}" in text  # an int Literal: its values, parsed as ints
    args = parse(table, "--decoder", "span", "--overlap", "longest", "--window", "64")
    assert table.values(args) == {"decoder": "span", "overlap": "longest", "window": 64}
    assert "invalid choice: 'beam'" in refused(table, ["--decoder", "beam"], capsys)
    assert "invalid choice: 'all'" in refused(table, ["--overlap", "all"], capsys)
    assert Small(**table.values(args)).decoder is Decoder.SPAN


def test_lists_of_int_str_and_path_take_one_or_more_values(capsys):
    table = FlagTable(Small)
    args = parse(table, "--dilations", "1", "2", "4", "--names", "a", "b", "--files", "x.txt", "y/z.txt")
    assert args.dilations == [1, 2, 4] and args.names == ["a", "b"]
    assert args.files == [Path("x.txt"), Path("y/z.txt")]
    assert "invalid int value: 'x'" in refused(table, ["--dilations", "1", "x"], capsys)
    assert "expected at least one argument" in refused(table, ["--files"], capsys)
    assert "--dilations DILATIONS [DILATIONS ...]" in help_of(table)


def test_optional_fields_take_the_type_of_x_and_are_not_given_when_left_out(capsys):
    table = FlagTable(Small)
    assert parse(table, "--limit", "3").limit == 3
    assert parse(table, "--out", "o/p").out == Path("o/p")
    assert table.values(parse(table)) == {}  # nothing given: nothing overrides a configuration
    assert "invalid int value: 'many'" in refused(table, ["--limit", "many"], capsys)
    assert "(default: None)" in help_of(table)


def test_bool_fields_are_switches_both_ways():
    table = FlagTable(Small)
    assert parse(table, "--adversarial").adversarial is True
    assert parse(table, "--no-adversarial").adversarial is False
    assert parse(table).adversarial is None
    kept = FlagTable(Small, keep_defaults=True)
    assert parse(kept).adversarial is False and parse(kept).decoder == "crf"
    assert kept.values(parse(kept))["dilations"] == [1, 2]


def test_a_type_without_a_flag_form_is_refused_naming_the_field():
    class Odd(BaseModel):
        table: dict[str, int] = Field(default_factory=dict)

    with pytest.raises(TypeError, match="Odd field table: a field of type dict"):
        parser_of(FlagTable(Odd))

    class Switches(BaseModel):
        flags: list[bool] = Field(default_factory=list)

    with pytest.raises(TypeError, match="Switches field flags"):
        parser_of(FlagTable(Switches))


# ----------------------------------------------------------------------------------------- help
def test_help_is_the_description_then_the_default():
    text = help_of(FlagTable(Small))
    assert "a share, 50% by default (default: 0.5)" in text  # a % in a description is no format
    assert "dilations of a block (default: [1, 2])" in text and "how tags are decoded (default: crf)" in text
    assert "(default:" not in help_of(FlagTable(Small, default_help=None))
    quiet = help_of(FlagTable(Small, default_help=" (default {})", show_none=False))
    assert "at most this many (default" not in quiet and "(default 0.5)" in quiet


def test_a_field_added_to_a_model_shows_up_as_a_flag():
    class Bigger(Small):
        temperature: float = Field(1.0, description="softmax temperature")

    assert "--temperature" not in help_of(FlagTable(Small))
    assert "--temperature TEMPERATURE softmax temperature (default: 1.0)" in help_of(FlagTable(Bigger))
    table = FlagTable(Bigger)
    assert table.values(parse(table, "--temperature", "0.5")) == {"temperature": 0.5}


# ----------------------------------------------------------------------------------------- names
def test_two_fields_that_would_make_one_flag_are_refused_naming_both():
    with pytest.raises(ValueError, match="--rate would be the flag of both Tree fields a.rate and b.rate"):
        parser_of(FlagTable(Tree))
    table = FlagTable(Tree, renames={"b.rate": "b_rate"})
    args = parse(table, "--rate", "0.2", "--b-rate", "0.3")
    assert table.values(args) == {"a.rate": 0.2, "b.rate": 0.3}
    with pytest.raises(ValueError, match="would be the flag of both"):  # a rename can collide too
        parser_of(FlagTable(Small, renames={"limit": "rate"}))


def test_spellings_renames_and_the_seeds_single_dash():
    table = FlagTable(Tree, renames={"b.rate": "b_rate"}, single_dash=frozenset({"b_rate"}))
    assert table.flag_of("b.rate").names == ("--b_rate", "--b-rate", "-b_rate")
    assert table.values(parse(table, "-b_rate", "0.7")) == {"b.rate": 0.7}
    dashed = FlagTable(Tree, renames={"b.rate": "b_rate"}, dashed=True)
    assert dashed.flag_of("b.rate").names == ("--b-rate",)
    assert [f.key for f in FlagTable(Tree, skip=frozenset({"b"})).flags] == ["a.rate"]  # a section left off


def test_data_that_names_no_field_or_flag_is_refused():
    with pytest.raises(ValueError, match="renames names no field 'nothing'"):
        parser_of(FlagTable(Small, renames={"nothing": "x"}))
    with pytest.raises(ValueError, match="help names no flag 'nope'"):
        parser_of(FlagTable(Small, help={"nope": "..."}))
    with pytest.raises(ValueError, match="no field \\['nothing'\\]"):
        FlagTable(Small).add_to(argparse.ArgumentParser(), only=["nothing"])


def test_a_flag_the_command_already_has_is_refused_naming_the_field():
    p = argparse.ArgumentParser()
    p.add_argument("--rate")
    with pytest.raises(ValueError, match="the flag of Small field rate: .*conflicting option string"):
        FlagTable(Small).add_to(p)


def test_retired_flags_answer_in_one_line_and_no_field_may_make_them_again(capsys):
    table = FlagTable(Small, retired={"old_rate": "is replaced by --rate"})
    for argv in (["--old_rate", "3"], ["--old-rate"]):
        assert f"{argv[0]} is replaced by --rate" in refused(table, argv, capsys)
    assert "old_rate" not in parser_of(table).format_help()
    with pytest.raises(ValueError, match="--rate is a retired flag, but Small field rate would make it"):
        parser_of(FlagTable(Small, retired={"rate": "is gone"}))


def test_value_checks_and_metavars_are_data(capsys):
    table = FlagTable(Small, types={"limit": positive_int}, metavars={"limit": "N"})
    assert "expected a positive integer, got 0" in refused(table, ["--limit", "0"], capsys)
    assert parse(table, "--limit", "2").limit == 2 and "--limit N" in help_of(table)


# ----------------------------------------------------------------------------------------- the commands
def _options_of(command: str) -> dict[str, argparse.Action]:
    from app import cli

    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    return sub.choices[command]._option_string_actions


def test_train_flags_are_every_field_of_the_config_tree_but_prediction():
    from app.commands.config_options import CONFIG_FLAGS
    from ner_core.config import NERConfig

    leaves = {
        f"{section}.{name}"
        for section, info in NERConfig.model_fields.items()
        if section != "prediction"
        for name in info.annotation.model_fields
    }
    assert {f.key for f in CONFIG_FLAGS.flags} == leaves
    for command in ("train", "pipeline", "demo"):
        options = _options_of(command)
        assert all(set(f.names) <= set(options) for f in CONFIG_FLAGS.flags), command
        assert "--window" not in options and "--stride" not in options  # prediction stays off


def test_a_field_added_to_a_config_section_becomes_a_train_flag():
    from app.commands.config_options import CONFIG_FLAGS
    from ner_core.config import NERConfig, TrainingConfig

    class TrainingPlus(TrainingConfig):
        adversarial: bool = Field(False, description="FGM on the embeddings")

    class ConfigPlus(NERConfig):
        training: TrainingPlus = Field(default_factory=TrainingPlus)

    table = dataclasses.replace(CONFIG_FLAGS, model=ConfigPlus)
    assert table.flag_of("training.adversarial").names == ("--adversarial",)
    args = parse(table, "--adversarial", "-max_epochs", "2")
    assert table.values(args) == {"training.adversarial": True, "training.max_epochs": 2}


def test_prediction_flags_are_the_fields_of_prediction_config():
    from app import cli
    from app.options import PREDICTION_FLAGS, prediction_options
    from ner_core.config import PredictionConfig

    assert {f.key for f in PREDICTION_FLAGS.flags} == set(PredictionConfig.model_fields)
    for command in ("predict", "serve"):
        options = _options_of(command)
        assert all(set(f.names) <= set(options) for f in PREDICTION_FLAGS.flags), command
    argv = ["--window", "40", "--stride", "9", "--batch-size", "3", "--threads", "2", "--device", "cpu"]
    args = cli.build_parser().parse_args(["serve", *argv, "--precision", "int8"])
    assert prediction_options(args) == PredictionConfig(
        window=40, stride=9, batch_size=3, num_threads=2, device="cpu", precision="int8"
    )

    class WithOverlap(PredictionConfig):
        overlap: Literal["first", "longest"] | None = Field(None, description="which span wins")

    table = dataclasses.replace(PREDICTION_FLAGS, model=WithOverlap)
    assert "--overlap {first,longest}" in help_of(table)


def test_limit_flags_are_the_fields_of_serve_limits(capsys):
    from app import cli
    from app.commands.serve import LIMIT_FLAGS
    from app.serve import ServeLimits

    assert {f.key for f in LIMIT_FLAGS.flags} == set(ServeLimits.model_fields)
    options = _options_of("serve")
    assert all(set(f.names) <= set(options) for f in LIMIT_FLAGS.flags)
    args = cli.build_parser().parse_args(["serve", "--max-queue", "3", "--body-timeout", "2.5"])
    assert ServeLimits(**LIMIT_FLAGS.values(args)) == ServeLimits(max_queue=3, body_timeout_s=2.5)
    assert ServeLimits(**LIMIT_FLAGS.values(cli.build_parser().parse_args(["serve"]))) == ServeLimits()
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--max-queue", "0"])
    assert "expected a positive integer, got 0" in capsys.readouterr().err


def test_train_scheme_offers_the_training_schemes_only(capsys):
    from app import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--scheme", "BMES"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid choice: 'BMES'" in err and err.count("\n") == 1
    assert cli.build_config(cli.build_parser().parse_args(["train", "--scheme", "BIO"])).data.scheme == "BIO"
