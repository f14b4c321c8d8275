"""Precision: CPU flag detection, ``auto``'s choice per device, the dev-F1 gate, the CRF staying fp32 under
autocast, bf16 training and prediction on CPU, old settings mapping onto ``precision``, prediction-run
identity by precision, and the padding share of training batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ner_core.artifacts.modeldir import read_precision_record
from ner_core.config import Precision
from ner_core.runtime.hardware import Hardware, parse_cpu_flags, physical_cores, read_cpu_flags
from ner_core.runtime.precision import DevF1Record, PrecisionError, choose
from tests.conftest import SAMPLE

LABELS = ["FIN", "LOC", "ORG", "PER"]

# ----------------------------------------------------------------------------------------- /proc/cpuinfo
_BASE = "fpu vme de pse tsc msr pae mce cx8 apic sep sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2"
SAPPHIRE_RAPIDS = "\n\n".join(
    f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    f"physical id\t: 0\ncore id\t\t: {i // 2}\n"
    f"flags\t\t: {_BASE} avx512f avx512bw avx_vnni avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8\n"
    for i in range(4)
)
COOPER_LAKE = (
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8380H\n"
    f"flags\t\t: {_BASE} avx512f avx512_bf16 avx512_vnni\n"
)
ZEN3 = (
    "processor\t: 0\nmodel name\t: AMD EPYC 7763 64-Core Processor\n"
    f"flags\t\t: {_BASE} sha_ni vaes vpclmulqdq\n"
)
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 asimddp bf16 i8mm sve\n"


def test_cpu_flags_come_from_proc_cpuinfo_with_a_safe_fallback(tmp_path):
    assert parse_cpu_flags(SAPPHIRE_RAPIDS) == {
        "amx_bf16",
        "amx_int8",
        "avx512_bf16",
        "avx512_vnni",
        "avx_vnni",
    }
    assert parse_cpu_flags(COOPER_LAKE) == {"avx512_bf16", "avx512_vnni"}
    assert parse_cpu_flags(ZEN3) == frozenset()
    assert parse_cpu_flags(GRAVITON3) == {"arm_bf16", "arm_i8mm"}
    # a flag counts only when every processor has it
    assert parse_cpu_flags(COOPER_LAKE + "\n" + ZEN3) == frozenset()
    # unreadable (no /proc on macOS or Windows, a missing file, a directory): no flags, no error
    assert read_cpu_flags(tmp_path / "missing") == frozenset()
    assert read_cpu_flags(tmp_path) == frozenset()
    (tmp_path / "cpuinfo").write_text(COOPER_LAKE, encoding="utf-8")
    assert read_cpu_flags(tmp_path / "cpuinfo") == {"avx512_bf16", "avx512_vnni"}


def test_physical_cores_count_hyperthreads_once(tmp_path):
    import os

    p = tmp_path / "cpuinfo"
    p.write_text(SAPPHIRE_RAPIDS, encoding="utf-8")  # 4 logical CPUs, 2 per core
    allowed = os.sched_getaffinity(0)
    expected = len({i // 2 for i in range(4) if i in allowed})
    assert physical_cores(p) == expected
    assert physical_cores(tmp_path / "missing") == len(allowed)  # no core ids: the CPUs it may use


# ----------------------------------------------------------------------------------------- auto
AMX = Hardware("cpu", parse_cpu_flags(SAPPHIRE_RAPIDS))
AVX512BF16 = Hardware("cpu", parse_cpu_flags(COOPER_LAKE))
ZEN = Hardware("cpu", parse_cpu_flags(ZEN3))
UNKNOWN = Hardware("cpu", frozenset(), int8=False)
GPU_BF16 = Hardware("cuda", cuda_bf16=True)
GPU_FP16 = Hardware("cuda", cuda_bf16=False)


@pytest.mark.parametrize(
    "hw,training,prediction",
    [
        (AMX, "bf16", "bf16"),
        (AVX512BF16, "bf16", "bf16"),
        (ZEN, "fp32", "int8"),
        (UNKNOWN, "fp32", "fp32"),
        (GPU_BF16, "bf16", "bf16"),
        (GPU_FP16, "fp16", "fp16"),
    ],
)
def test_auto_picks_by_device(hw, training, prediction):
    t = choose("auto", purpose="training", hardware=hw)
    p = choose(None, purpose="prediction", hardware=hw)
    assert (t.precision, p.precision) == (training, prediction)
    assert t.requested == p.requested == Precision.AUTO
    assert "no dev-F1 record" in p.reason and "hardware rule" in p.reason
    assert t.line("training").startswith(f"precision {training} (asked auto) for training: ")


def test_explicit_precisions_run_or_are_refused_in_one_line():
    assert choose("bf16", purpose="training", hardware=ZEN).reason.endswith("emulated and slow")
    assert choose("int8", purpose="prediction", hardware=ZEN).precision == Precision.INT8
    for asked, purpose, hw, needle in [
        ("int8", "training", AMX, "int8 is for prediction only"),
        ("int8", "prediction", GPU_BF16, "runs on CPU only"),
        ("bf16", "prediction", GPU_FP16, "does not support bf16"),
        ("fp16", "training", Hardware("cpu", cpu_fp16=False), "fp16 on CPU is not supported"),
        ("fp4", "prediction", AMX, "precision must be one of auto, fp32, bf16, fp16, int8, got 'fp4'"),
    ]:
        with pytest.raises(PrecisionError, match=needle) as err:
            choose(asked, purpose=purpose, hardware=hw)
        assert "\n" not in str(err.value)


def test_auto_never_picks_a_precision_more_than_0_2_points_below_fp32_on_dev():
    def rec(**f1):
        return DevF1Record(dev_f1={"fp32": 0.9000, **f1})

    worse = choose("auto", purpose="prediction", hardware=AMX, record=rec(bf16=0.8970, int8=0.8960))
    assert worse.precision == Precision.FP32
    assert "bf16 dev F1 89.70 is 0.30 points below fp32's 90.00" in worse.reason
    close = choose("auto", purpose="prediction", hardware=AMX, record=rec(bf16=0.8990, int8=0.80))
    assert close.precision == Precision.BF16
    better = choose("auto", purpose="prediction", hardware=AMX, record=rec(bf16=0.9100))
    assert better.precision == Precision.BF16
    # bf16 blocked, int8 within the tolerance: the next fastest
    assert (
        choose("auto", purpose="prediction", hardware=AMX, record=rec(bf16=0.89, int8=0.899)).precision
        == "int8"
    )
    # an explicit precision is used as asked, whatever the record says
    assert choose("bf16", purpose="prediction", hardware=AMX, record=rec(bf16=0.5)).precision == "bf16"


# ----------------------------------------------------------------------------------------- fp32 CRF
def _model(tiny_encoder_dir, head="bilstm"):
    from ner_core.config import NERConfig
    from ner_core.model.encoder import load_encoder
    from ner_core.model.network import NERModel
    from ner_core.schemes import tag_set

    cfg = NERConfig.model_validate(
        {"data": {"max_len": 32}, "encoder": {"name": str(tiny_encoder_dir)}, "head": {"type": head}}
    )
    torch.manual_seed(0)
    encoder, tokenizer = load_encoder(cfg.encoder)
    return NERModel(cfg, tag_set(LABELS, "BIOES"), encoder), tokenizer


def test_the_crf_and_the_loss_stay_fp32_under_autocast(tiny_encoder_dir, monkeypatch, one_thread):
    from ner_core.inference.tagger import Tagger
    from ner_core.runtime.precision import autocast

    model, tokenizer = _model(tiny_encoder_dir)
    seen: list[tuple] = []
    for name in ("neg_log_likelihood", "viterbi_tensor", "marginals"):
        real = getattr(model.crf, name)

        def spy(emissions, *args, _real=real, _name=name, **kw):
            seen.append((_name, emissions.dtype, torch.is_autocast_enabled(emissions.device.type)))
            return _real(emissions, *args, **kw)

        monkeypatch.setattr(model.crf, name, spy)
    ids = torch.tensor([[101, 5, 6, 7, 102]])
    am = torch.ones_like(ids)
    with autocast("bf16", "cpu"):
        em, _ = model.emissions(ids, am)
        loss = model(ids, am, torch.zeros(1, 3, dtype=torch.long))
    assert em.dtype == torch.bfloat16  # the encoder and the head did run in bf16
    assert loss.dtype == torch.float32
    tagger = Tagger(model, tokenizer, max_len=16, precision="bf16")
    tagger.predict(["张三在北京工作，李四去上海。"])
    assert [s[0] for s in seen] == ["neg_log_likelihood", "viterbi_tensor", "marginals"]
    assert all(dtype == torch.float32 and not on for _, dtype, on in seen), seen


# ----------------------------------------------------------------------------------------- bf16 on CPU
def _docs(split: str, n: int):
    from ner_core.data.formats import read_file

    return read_file(SAMPLE / f"{split}.jsonl").documents[:n]


def test_a_bf16_training_run_records_dev_f1_per_precision_and_saves_fp32_weights(
    tiny_encoder_dir, tmp_path, one_thread, caplog
):
    from safetensors import safe_open

    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.config import NERConfig
    from ner_core.inference.tagger import Tagger
    from ner_core.training.loop import train

    cfg = NERConfig.model_validate(
        {
            "data": {"max_len": 48},
            "encoder": {"name": str(tiny_encoder_dir)},
            "head": {"type": "bigru", "rnn_units": 16},
            "training": {"hard_epochs": 1, "batch_size": 16, "precision": "bf16", "warmup_ratio": 0.0},
        }
    )
    with caplog.at_level("INFO", logger="ner_core"):
        res = train(cfg, _docs("train", 32), _docs("dev", 12), LABELS, tmp_path / "run", progress=False)
    assert res.precision == "bf16" and torch.isfinite(torch.tensor(res.history[0].train_loss))
    lines = [r.getMessage() for r in caplog.records if r.name == "ner_core.training.loop"]
    assert lines[0].startswith("precision bf16 for training: asked for")
    assert 0.0 <= res.history[0].padding_share < 0.5
    record = read_precision_record(res.model_dir)
    assert record is not None and record.trained_in == "bf16"
    assert set(record.dev_f1) == {"fp32", "bf16", "int8"}
    with safe_open(str(Path(res.model_dir) / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} <= {"F32", "BOOL"}  # an fp32 model directory
    loaded = load_model_dir(res.model_dir)
    tagger = Tagger.from_loaded(loaded)  # auto, gated by the record just written
    assert "recorded dev F1" in tagger.precision_choice.reason
    bf16 = Tagger.from_loaded(loaded, _options(precision="bf16"))
    ((tags, probs),) = bf16.tag_texts(["张三在北京工作"])
    assert len(tags) == len(probs) == 7 and all(0.0 <= p <= 1.0 for p in probs)


def _options(**kw):
    from ner_core.config import PredictionConfig

    return PredictionConfig(**kw)


# ----------------------------------------------------------------------------------------- old settings
def test_retired_settings_map_onto_precision():
    from ner_core.config import PredictionConfig, TrainingConfig

    assert TrainingConfig.model_validate({"mixed_precision": True}).precision == "fp32"  # CPU: it was ignored
    assert TrainingConfig.model_validate({"mixed_precision": True, "device": "cuda"}).precision == "fp16"
    assert TrainingConfig.model_validate({"mixed_precision": False, "device": "cuda"}).precision == "fp32"
    assert TrainingConfig().precision == "auto"
    assert PredictionConfig.model_validate({"quantize": "int8"}).precision == "int8"
    assert PredictionConfig.model_validate({"quantize": "none"}).precision == "fp32"
    assert PredictionConfig.model_validate({"quantize": None}).precision is None
    with pytest.raises(ValueError, match="quantize='int8' .* and precision disagree"):
        PredictionConfig.model_validate({"quantize": "int8", "precision": "bf16"})
    assert "mixed_precision" not in TrainingConfig().model_dump()


def test_the_legacy_model_dir_and_database_load_and_keep_their_prediction_run_id(legacy_dir):
    import gzip

    import duckdb

    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.tagger import Tagger
    from storage.predictions import prediction_run_id

    model = Path("runs/20261201-152337-sample-bilstm-56603a/model")
    loaded = load_model_dir(model)  # saved with training.mixed_precision and prediction.quantize
    assert loaded.config.training.precision == "fp32" and loaded.config.prediction.precision == "fp32"
    assert Tagger.from_loaded(loaded).precision == "fp32"  # it tags as it did
    db = legacy_dir / "ner.duckdb"
    db.write_bytes(gzip.decompress((legacy_dir / "ner.duckdb.gz").read_bytes()))
    with duckdb.connect(str(db), read_only=True) as con:
        pred_id, model_dir, ref, cfg = con.execute(
            "SELECT pred_run_id, model_dir, input_ref, config FROM prediction_runs"
        ).fetchone()
    assert "quantize" in json.loads(cfg) and "precision" not in json.loads(cfg)
    assert prediction_run_id(model_dir, ref) == prediction_run_id(model_dir, ref, "fp32") == pred_id
    assert prediction_run_id(model_dir, ref, "bf16") != pred_id != prediction_run_id(model_dir, ref, "int8")


def test_an_fp32_and_a_bf16_prediction_run_of_one_input_are_two_runs(tmp_path, tiny_encoder_dir, one_thread):
    import duckdb

    from flows import steps
    from ner_core.artifacts.modeldir import save_model_dir
    from ner_core.documents import Document

    model, tokenizer = _model(tiny_encoder_dir)
    md = save_model_dir(tmp_path / "model", model, tokenizer)
    db = str(tmp_path / "p.duckdb")
    docs = [Document(doc_id="a", text="张三在北京工作"), Document(doc_id="b", text="李四去上海")]
    ids = []
    for p in ("fp32", "bf16", "fp32"):
        out = steps.predict_step(
            db,
            str(md),
            docs,
            input_kind="texts",
            input_ref="t",
            options=_options(precision=p),
            progress=False,
        )
        ids.append(out.pred_run_id)
    assert ids[0] == ids[2] != ids[1]
    with duckdb.connect(db, read_only=True) as con:
        rows = con.execute("SELECT pred_run_id, config FROM prediction_runs ORDER BY pred_run_id").fetchall()
    assert sorted(json.loads(c)["precision"] for _, c in rows) == ["bf16", "fp32"]


def test_train_cli_refuses_mixed_precision_in_one_line_and_takes_precision(capsys):
    from app import cli

    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["train", "--mixed_precision"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--mixed_precision is replaced by --precision" in err
    args = cli.build_parser().parse_args(["train", "--precision", "bf16"])
    assert cli.build_config(args).training.precision == "bf16"


# ----------------------------------------------------------------------------------------- padding
def test_training_batches_of_the_sample_corpus_pad_under_10_percent(tiny_encoder_dir):
    from ner_core.config import EncoderConfig
    from ner_core.data.alignment import CharAligner
    from ner_core.data.batching import TaggedDataset, padding_share
    from ner_core.model.encoder import load_encoder
    from ner_core.schemes import tag_set

    _, tokenizer = load_encoder(EncoderConfig(name=str(tiny_encoder_dir)))
    docs = _docs("train", 10_000)
    ds = TaggedDataset(docs, CharAligner(tokenizer), tag_set(LABELS, "BIOES"), "BIOES", 128)
    share = padding_share(ds.batches(16, shuffle=True, seed=42_001))
    assert 0.0 < share < 0.10, share
    unsorted = padding_share(_unsorted_batches(ds, 16))
    assert unsorted > share  # the length buckets are what keeps it low


def _unsorted_batches(ds, batch_size):
    from ner_core.data.batching import collate

    for b in range(0, len(ds.items), batch_size):
        yield collate(ds.items[b : b + batch_size], ds.cls_id, ds.sep_id, ds.pad_id)


def test_bf16_prediction_pads_windows_to_few_shapes_and_keeps_the_tags(tiny_encoder_dir, one_thread):
    """bf16 kernels are compiled and cached per input shape: windows are padded to a multiple of 16
    positions there (a service's memory grew with every new length without it), but never beyond the full
    window's own length, and the padding, masked, changes no tag; fp32 keeps exact dynamic padding."""
    from ner_core.inference.tagger import Tagger

    model, tokenizer = _model(tiny_encoder_dir)
    texts = ["张三在北京工作", "李四去上海", "王五" * 9, "赵六在广州的ABC公司工作。"]
    seen: dict[str, set] = {}
    tags: dict[str, list] = {}
    for p in ("fp32", "bf16"):
        tagger = Tagger(model, tokenizer, max_len=16, precision=p, batch_size=2)
        real = tagger.model.emissions
        seen[p] = set()

        def spy(ids, att, real=real, p=p):
            seen[p].add(tuple(ids.shape))
            return real(ids, att)

        tagger.model.emissions = spy
        tags[p] = [t for t, _ in tagger.tag_texts(texts)]
        del tagger.model.emissions
    assert all(width % 16 == 0 or width == 16 + 2 for _, width in seen["bf16"])
    assert any(width % 16 == 0 for _, width in seen["bf16"])
    assert any(width % 16 for _, width in seen["fp32"])  # exact: 5+2, 7+2, ... positions
    assert tags["bf16"] == tags["fp32"]


def test_the_dev_f1_record_skips_bf16_where_it_is_emulated_unless_the_run_trained_in_it():
    """bf16 on a CPU without bf16 units is emulated (several times slower than fp32) and auto never picks it
    there: scoring it at the end of every training only cost time."""
    from ner_core.runtime.hardware import Hardware
    from ner_core.training.precision_record import _worth_scoring

    avx2 = Hardware(device="cpu", cpu_flags=frozenset())
    amx = Hardware(device="cpu", cpu_flags=frozenset({"amx_bf16", "amx_int8"}))
    assert _worth_scoring(avx2, "fp32") == [Precision.FP32, Precision.INT8]
    assert _worth_scoring(avx2, Precision.BF16) == [Precision.FP32, Precision.BF16, Precision.INT8]
    assert _worth_scoring(amx, "fp32") == [Precision.FP32, Precision.BF16, Precision.INT8]
    cuda = Hardware(device="cuda", cuda_bf16=True)
    assert _worth_scoring(cuda, "fp32") == cuda.runnable()
