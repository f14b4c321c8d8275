"""``--precision auto`` by measurement: the fastest timed precision the dev-F1 record allows, timed once per
machine and model shape and cached; ``NER_PRECISION_AUTO`` pins it without timing (the suite pins fp32 in
conftest; the tests here that time unset it)."""

from __future__ import annotations

import json

import pytest
import torch

from ner_core.config import Precision
from ner_core.runtime import calibrate
from ner_core.runtime.calibrate import Timing
from ner_core.runtime.hardware import Hardware, parse_cpu_flags
from ner_core.runtime.precision import DevF1Record, choose, measurable
from tests.test_precision import COOPER_LAKE, LABELS, SAPPHIRE_RAPIDS, ZEN3

#: the CPU of the issue: AVX512-BF16 and VNNI, no AMX (the same flags as a Cooper Lake Xeon)
EPYC = Hardware("cpu", parse_cpu_flags(COOPER_LAKE.replace("Intel(R) Xeon(R) Platinum 8380H", "AMD EPYC")))
AMX = Hardware("cpu", parse_cpu_flags(SAPPHIRE_RAPIDS))
ZEN = Hardware("cpu", parse_cpu_flags(ZEN3))
#: the figures of the issue (chars/s) on each CPU kind, and the dev F1 that vetoes int8
ON_EPYC = Timing({"fp32": 4287.0, "bf16": 7273.0, "int8": 12169.0}, seconds=2.5)
ON_AMX = Timing({"fp32": 1000.0, "bf16": 3320.0, "int8": 2640.0}, seconds=2.5)
INT8_VETOED = DevF1Record(dev_f1={"fp32": 0.7690, "bf16": 0.7685, "int8": 0.7564})
INT8_CLOSE = DevF1Record(dev_f1={"fp32": 0.7690, "bf16": 0.7685, "int8": 0.7680})


@pytest.fixture
def timing_here(tmp_path, monkeypatch):
    """Nothing pinned and a private cache root: ``auto`` times (the compiled CRF kernel is used where it
    was built; a fresh cache root would only compile it again)."""
    from ner_core.model import _ckernel

    _ckernel.load()  # loaded once per process: from the suite's cache root, not built in the private one
    monkeypatch.delenv(calibrate.PIN_VARIABLE, raising=False)
    monkeypatch.setenv("NER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "calibration"


# ----------------------------------------------------------------------------------------- the choice
def test_auto_takes_the_fastest_measured_precision_the_dev_f1_record_allows():
    def pick(hw, timing, record=None, purpose="prediction"):
        return choose("auto", purpose=purpose, hardware=hw, record=record, timing=timing).precision

    # the EPYC: the flag rule said bf16; measured, int8 is the fastest ...
    assert choose("auto", purpose="prediction", hardware=EPYC).precision == "bf16"
    assert pick(EPYC, ON_EPYC) == pick(EPYC, ON_EPYC, INT8_CLOSE) == "int8"
    # ... unless its recorded dev F1 is more than the tolerance below fp32's; then the next fastest
    assert pick(EPYC, ON_EPYC, INT8_VETOED) == "bf16"
    # the Xeon with AMX the other way round
    assert pick(AMX, ON_AMX) == pick(AMX, ON_AMX, INT8_CLOSE) == "bf16"
    # training never takes int8, and fp32 stays the fallback of a slow or vetoed everything
    assert pick(EPYC, ON_EPYC, purpose="training") == "bf16"
    assert pick(EPYC, Timing({"fp32": 9.0, "bf16": 5.0}), purpose="training") == "fp32"
    slow_fp32_vetoed = DevF1Record(dev_f1={"fp32": 0.9, "bf16": 0.5, "int8": 0.5})
    assert pick(EPYC, ON_EPYC, slow_fp32_vetoed) == "fp32"
    # int8 measured but not runnable on a GPU: skipped
    assert pick(Hardware("cuda", cuda_bf16=False), Timing({"int8": 9.0, "fp16": 5.0, "fp32": 1.0})) == "fp16"


def test_the_choice_line_shows_the_measured_figures_and_what_was_vetoed():
    c = choose("auto", purpose="prediction", hardware=EPYC, record=INT8_VETOED, timing=ON_EPYC)
    line = c.line("prediction")
    assert line.startswith("precision bf16 (asked auto) for prediction: measured here, chars/s: int8 12,169")
    assert "bf16 7,273, fp32 4,287 (2.5 s calibration)" in line
    assert "skipped: int8 dev F1 75.64 is 1.26 points below fp32's 76.90" in line
    assert c.timing is ON_EPYC and c.timing.to_dict()["chars_per_s"]["int8"] == 12169.0
    cached = Timing(ON_EPYC.rates, 2.5, "cached", {"bf16": "RuntimeError: no kernel"})
    assert (
        "measured on this machine (cached)" in cached.describe() and "bf16: RuntimeError" in cached.describe()
    )


def test_what_auto_times_is_what_runs_natively():
    assert measurable("prediction", EPYC) == ["fp32", "bf16", "int8"]
    assert measurable("training", EPYC) == ["fp32", "bf16"]
    assert measurable("training", ZEN) == ["fp32"]  # nothing to choose between: nothing timed
    assert measurable("prediction", ZEN) == ["fp32", "int8"]  # no emulated bf16
    assert measurable("training", Hardware("cuda", cuda_bf16=True)) == ["fp32", "bf16", "fp16"]


# ----------------------------------------------------------------------------------------- measuring
class _Clock:
    """A fake ``time`` for :func:`calibrate.measure`: each step advances it by what it is told."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_measure_warms_up_keeps_each_fastest_call_and_leaves_out_what_fails(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(calibrate, "time", clock)
    calls = {"fp32": [], "bf16": []}

    def step(name, seconds):
        durations = iter(seconds)

        def run():
            calls[name].append(1)
            clock.now += next(durations)
            return 1000

        return lambda: run

    def broken():
        raise RuntimeError("could not create a primitive descriptor\nsecond line")

    t = calibrate.measure(
        # the first call is the warm-up (slow, not counted); a slow call among the timed ones is noise
        {
            "fp32": step("fp32", [9.0, 0.5, 0.9, 0.4]),
            "bf16": step("bf16", [9.0, 0.2, 0.25, 2.0]),
            "int8": broken,
        },
        rounds=3,
        budget_s=1e9,
    )
    assert t.rates == pytest.approx({"fp32": 2500.0, "bf16": 5000.0})
    assert t.fastest_first() == ["bf16", "fp32"]
    assert t.failed == {"int8": "RuntimeError: could not create a primitive descriptor"}
    assert len(calls["fp32"]) == len(calls["bf16"]) == 4
    # past the budget no new round starts once one has run
    short = calibrate.measure(
        {"fp32": step("fp32", [9.0, 0.5, 0.5]), "bf16": step("bf16", [9.0, 0.1, 0.1])}, rounds=3, budget_s=1.0
    )
    assert short.rates == pytest.approx({"fp32": 2000.0, "bf16": 10000.0})
    # fp32 failing is the model's own error, not a missing precision
    with pytest.raises(RuntimeError, match="primitive descriptor"):
        calibrate.measure({"fp32": broken})


def test_timings_are_cached_per_machine_and_model_shape(timing_here, monkeypatch):
    built = []

    def candidates(rate):
        def make(p):
            def build():
                built.append(p)
                return lambda: rate[p]

            return build

        return {p: make(p) for p in rate}

    monkeypatch.setattr(calibrate, "measure", lambda c, **kw: Timing({p: float(c[p]()()) for p in c}))
    shape = {"encoder": {"hidden_size": 64}, "head": {"type": "bilstm"}, "tags": 17, "window": 128}
    key = calibrate.calibration_key("prediction", "cpu", shape)
    assert key["torch"] == torch.__version__ and key["threads"] == torch.get_num_threads()
    assert key["processor"] and key["shape"] == shape and key["purpose"] == "prediction"
    first = calibrate.calibrated(key, candidates({"fp32": 5, "int8": 9}), purpose="prediction")
    assert (
        first.source == "measured" and first.fastest_first() == ["int8", "fp32"] and built == ["fp32", "int8"]
    )
    (path,) = timing_here.glob("prediction-*.json")
    assert json.loads(path.read_text())["key"] == key
    again = calibrate.calibrated(key, candidates({"fp32": 1, "int8": 1}), purpose="prediction")
    assert again.source == "cached" and again.rates == first.rates and len(built) == 2  # nothing built
    # another model shape (or CPU, torch, threads) is timed on its own
    other = calibrate.calibration_key("prediction", "cpu", {**shape, "window": 64})
    assert calibrate.calibrated(other, candidates({"fp32": 3}), purpose="prediction").source == "measured"
    # a cache file that cannot be used is timed again and rewritten
    path.write_text("{not json", encoding="utf-8")
    redo = calibrate.calibrated(key, candidates({"fp32": 7, "int8": 2}), purpose="prediction")
    assert redo.source == "measured" and redo.fastest_first() == ["fp32", "int8"]
    assert json.loads(path.read_text())["chars_per_s"] == {"fp32": 7.0, "int8": 2.0}
    path.write_text(json.dumps({**json.loads(path.read_text()), "key": other}), encoding="utf-8")
    assert calibrate.calibrated(key, candidates({"fp32": 1}), purpose="prediction").source == "measured"


def test_the_pin_decides_without_timing(monkeypatch, tmp_path):
    from ner_core.settings import settings

    monkeypatch.setenv("NER_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(calibrate.PIN_VARIABLE, "INT8")

    def never():
        raise AssertionError("a pinned auto times nothing")

    t = calibrate.calibrated({"purpose": "prediction"}, {Precision.FP32: never}, purpose="prediction")
    assert t.pinned == "int8" and t.describe() == "pinned by NER_PRECISION_AUTO=int8 (nothing timed)"
    assert choose("auto", purpose="prediction", hardware=EPYC, timing=t).precision == "int8"
    assert choose("auto", purpose="training", hardware=EPYC, timing=t).precision == "fp32"  # no int8 training
    assert (
        choose("auto", purpose="prediction", hardware=EPYC, timing=t, record=INT8_VETOED).precision == "fp32"
    )
    assert not (tmp_path / "calibration").exists()
    monkeypatch.setenv(calibrate.PIN_VARIABLE, "fastest")
    with pytest.raises(
        ValueError, match="^NER_PRECISION_AUTO: expected fp32, bf16, fp16 or int8, got 'fastest'$"
    ):
        settings()


# ----------------------------------------------------------------------------------------- real models
def _model(tiny_encoder_dir, max_len=48):
    from ner_core.config import NERConfig
    from ner_core.model.encoder import load_encoder
    from ner_core.model.network import NERModel
    from ner_core.schemes import tag_set

    cfg = NERConfig.model_validate(
        {
            "data": {"max_len": max_len},
            "encoder": {"name": str(tiny_encoder_dir)},
            "head": {"type": "bilstm", "rnn_units": 16},
            "training": {"batch_size": 4, "num_threads": 1},
        }
    )
    torch.manual_seed(0)
    encoder, tokenizer = load_encoder(cfg.encoder)
    return NERModel(cfg, tag_set(LABELS, "BIOES"), encoder), tokenizer, cfg


def test_a_tagger_with_auto_times_its_whole_path_once_and_takes_the_fastest(
    tiny_encoder_dir, timing_here, monkeypatch, one_thread
):
    from ner_core.inference.tagger import Tagger

    model, tokenizer, _ = _model(tiny_encoder_dir)
    if len(measurable("prediction", Hardware.detect("cpu"))) < 2:
        pytest.skip("this CPU runs only fp32 natively: nothing to time")
    seen = {"encoder": 0, "head": 0, "viterbi_tensor": 0, "marginals": 0}

    def count(name):
        seen[name] += 1

    # hooks travel with the int8 copy of the model (a deep copy)
    model.encoder.register_forward_hook(lambda *_: count("encoder"))
    model.head.register_forward_hook(lambda *_: count("head"))
    for name in ("viterbi_tensor", "marginals"):
        real = getattr(type(model.crf), name)
        monkeypatch.setattr(
            type(model.crf), name, lambda *a, _r=real, _n=name, **kw: count(_n) or _r(*a, **kw)
        )
    tagger = Tagger(model, tokenizer, max_len=32, batch_size=16, precision="auto")
    timing = tagger.precision_choice.timing
    assert timing is not None and timing.source == "measured"
    assert set(timing.rates) | set(timing.failed) == set(measurable("prediction", Hardware.detect("cpu")))
    assert tagger.precision == timing.fastest_first()[0]  # no record: the fastest measured
    assert all(n > 0 for n in seen.values()), seen  # the whole forward: encoder, head and the CRF decoder
    assert "measured here, chars/s: " in tagger.precision_choice.reason
    assert len(list(timing_here.glob("prediction-*.json"))) == 1
    before = dict(seen)
    again = Tagger(model, tokenizer, max_len=32, batch_size=16, precision="auto")
    assert again.precision == tagger.precision and again.precision_choice.timing.source == "cached"
    assert seen == before  # nothing ran again
    # the dev-F1 record still vetoes: the fastest blocked, the next one taken
    fastest, *rest = timing.fastest_first()
    veto = DevF1Record(dev_f1={"fp32": 0.9, **{fastest.value: 0.5}})
    vetoed = Tagger(model, tokenizer, max_len=32, batch_size=16, precision="auto", record=veto)
    assert vetoed.precision == (rest[0] if fastest != "fp32" else "fp32")


def test_training_auto_times_forward_and_backward_and_leaves_the_random_state(
    tiny_encoder_dir, timing_here, monkeypatch, one_thread
):
    from ner_core.training.calibration import choose_training_precision

    _, _, cfg = _model(tiny_encoder_dir)
    monkeypatch.setattr(Hardware, "detect", classmethod(lambda cls, device="cpu": EPYC))
    backward = []
    real = torch.Tensor.backward
    monkeypatch.setattr(
        torch.Tensor, "backward", lambda self, *a, **kw: backward.append(1) or real(self, *a, **kw)
    )
    rng = torch.get_rng_state()
    choice = choose_training_precision(cfg, LABELS)
    assert torch.equal(torch.get_rng_state(), rng)  # the run's seeding is not moved by the timing
    assert choice.timing is not None and set(choice.timing.rates) | set(choice.timing.failed) == {
        "fp32",
        "bf16",
    }
    assert choice.precision == choice.timing.fastest_first()[0] and choice.precision != "int8"
    assert len(backward) >= 4  # a warm-up and at least one timed forward and backward per precision
    assert len(list(timing_here.glob("training-*.json"))) == 1
    assert choose_training_precision(cfg, LABELS).timing.source == "cached"
    explicit = cfg.with_overrides({"training.precision": "fp32"})
    assert choose_training_precision(explicit, LABELS).timing is None  # asked for: nothing timed


def test_dask_refuses_an_unpinned_auto_with_a_remote_scheduler(tmp_path, tiny_encoder_dir, monkeypatch):
    from flows.dask_predict import predict_sharded
    from ner_core.config import PredictionConfig
    from tests.test_predict import build_model_dir

    md = str(build_model_dir(tmp_path / "model", tiny_encoder_dir))
    monkeypatch.delenv(calibrate.PIN_VARIABLE, raising=False)
    with pytest.raises(ValueError) as err:
        predict_sharded(
            str(tmp_path / "p.duckdb"),
            md,
            [],
            input_kind="texts",
            input_ref="r",
            address="tcp://10.0.0.9:8786",
        )
    assert str(err.value) == (
        "precision auto is chosen by timing this machine, but the workers of the Dask scheduler "
        "tcp://10.0.0.9:8786 may run on other CPUs, where another precision may be the fastest: name one "
        "(--precision fp32, bf16 or int8), or pin auto with NER_PRECISION_AUTO=<precision>"
    )
    # a named precision (or a pinned auto) is the same on every worker: not refused
    from flows import dask_predict

    named = dask_predict._decided(md, PredictionConfig(precision="int8"), "tcp://10.0.0.9:8786")
    assert named.precision == "int8"
    monkeypatch.setenv(calibrate.PIN_VARIABLE, "bf16")
    assert dask_predict._decided(md, None, "tcp://10.0.0.9:8786").precision == "bf16"
