"""The seed's (keras-bert-ner's) commands as its README writes them: train from a Google TF checkpoint with
``-save_path``, then ``test`` / ``predict`` with the ``model_configs.json`` train wrote, ``deploy`` with a
request log; Keras artefacts and bad checkpoints refused in one line."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from app import cli
from tests.conftest import SAMPLE

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tf-checkpoints"
ALBERT = FIXTURES / "tf-albert-tiny"
needs_albert = pytest.mark.skipif(
    not (ALBERT / "albert_model.ckpt.index").is_file(), reason=f"{ALBERT} is absent"
)


def seed_train_argv(lm: Path, data: Path, out: Path, *, max_len: str = "48") -> list[str]:
    """The seed README's train command, with only -max_len, -device_map and -max_epochs changed."""
    return [
        "train",
        "-train_data", str(data / "train.jsonl"),
        "-dev_data", str(data / "dev.jsonl"),
        "-save_path", str(out),
        "-bert_config", str(lm / "albert_config.json"),
        "-bert_checkpoint", str(lm / "albert_model.ckpt"),
        "-bert_vocab", str(lm / "vocab.txt"),
        "-albert",
        "-do_eval",
        "-device_map", "cpu",
        "-tag_padding", "X",
        "-best_fit",
        "-max_epochs", "1",
        "-early_stop_patience", "5",
        "-reduce_lr_patience", "3",
        "-reduce_lr_factor", "0.5",
        "-batch_size", "64",
        "-max_len", max_len,
        "-learning_rate", "5e-6",
        "-model_type", "cnn",
        "-cnn_filters", "128",
        "-cnn_kernel_size", "3",
        "-cnn_blocks", "4",
        "-dropout_rate", "0.0",
        "-learning_rate", "5e-5",
    ]  # fmt: skip


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as exc:  # argparse: --help and usage errors
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def one_line_error(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def seed_env(tmp_path, monkeypatch) -> Path:
    """What a seed user's shell has: a working folder, no Prefect server, a private conversion cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NER_DB", str(tmp_path / "ner.duckdb"))
    monkeypatch.setenv("NER_NO_PREFECT", "1")
    monkeypatch.setenv("NER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="module")
def seed_models(tmp_path_factory) -> Path:
    """``ner train`` exactly as the seed's README has it (one epoch, the tiny ALBERT fixture, the sample
    corpus); returns MODELS (the -save_path)."""
    if not (ALBERT / "albert_model.ckpt.index").is_file():
        pytest.skip(f"{ALBERT} is absent")
    root = tmp_path_factory.mktemp("seed")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("NER_DB", str(root / "ner.duckdb"))
        mp.setenv("NER_NO_PREFECT", "1")
        mp.setenv("NER_CACHE_DIR", str(root / "cache"))
        rc, out, err = run_cli(seed_train_argv(ALBERT, SAMPLE, Path("models")))
    assert rc == 0, err[-3000:]
    (root / "train.out").write_text(out, encoding="utf-8")
    (root / "train.err").write_text(err, encoding="utf-8")
    return root / "models"


# ---------------------------------------------------------------------------------------- train
def test_seed_train_converts_the_tf_checkpoint_and_writes_model_configs(seed_models):
    from ner_core.config import NERConfig

    configs = json.loads((seed_models / "model_configs.json").read_text(encoding="utf-8"))
    model_dir = seed_models / configs["model_dir"]
    assert not Path(configs["model_dir"]).is_absolute() and (model_dir / "meta.json").is_file()
    cfg = NERConfig.from_file(model_dir / "ner_config.json")
    assert (cfg.head.type.value, cfg.data.max_len, cfg.training.device) == ("idcnn", 48, "cpu")
    assert (cfg.head.cnn_filters, cfg.head.cnn_blocks, cfg.head.dropout_rate) == (128, 4, 0.0)
    assert cfg.training.learning_rate == 5e-5  # the last of the README's two -learning_rate wins
    # the encoder is the converted checkpoint, cached under NER_CACHE_DIR, and an ALBERT
    assert Path(cfg.encoder.name).is_relative_to(seed_models.parent / "cache")
    enc = json.loads((model_dir / "encoder" / "config.json").read_text(encoding="utf-8"))
    assert enc["model_type"] == "albert" and enc["max_position_embeddings"] == 64
    assert configs["max_len"] == 48 and configs["run_id"] in configs["model_dir"]
    # -do_eval: the seed's log, one block per epoch and the best model's dev figures, also on stderr
    (log,) = seed_models.glob("ALBERT-IDCNN-CRF-*.log")
    text = log.read_text(encoding="utf-8")
    assert "Epoch 1" in text and "Sentence Accuracy" in text and "Char Accuracy" in text
    assert "Dev (best model)" in text and "Dev (best model)" in (seed_models.parent / "train.err").read_text()
    out = (seed_models.parent / "train.out").read_text(encoding="utf-8")
    summary = json.loads(out[out.index("\n{") :])
    assert summary["model_dir"].endswith("/model") and summary["best_epoch"] == 1


# ---------------------------------------------------------------------------------------- test / predict
@pytest.mark.parametrize("command", ["test", "predict"])
def test_seed_test_and_predict_with_the_model_configs_train_wrote(command, seed_models, seed_env):
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.data.formats import read_file
    from ner_core.inference.evaluate import evaluate_model

    out_dir = seed_env / "test_outputs"
    rc, out, err = run_cli(
        [
            command,
            "-test_data", str(SAMPLE / "test.jsonl"),
            "-model_configs", str(seed_models / "model_configs.json"),
            "-output_path", str(out_dir),
            "-device_map", "cpu",
        ]
    )  # fmt: skip
    assert rc == 0, err
    assert not (seed_env / "ner.duckdb").exists()  # the seed's way: file in, files out, no database
    names = {p.name for p in out_dir.iterdir()}
    assert names == {f"{command}_{x}" for x in ("outputs.txt", "entities.jsonl", "report.txt", "report.json")}
    pairs = json.loads((out_dir / f"{command}_outputs.txt").read_text(encoding="utf-8"))
    docs = read_file(SAMPLE / "test.jsonl").documents
    assert [p[0] for p in pairs] == [d.text for d in docs]
    assert all(len(tags.split(" ")) == len(text) for text, tags in pairs)
    lines = (out_dir / f"{command}_entities.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(docs) and json.loads(lines[0])["text"] == docs[0].text

    report = json.loads((out_dir / f"{command}_report.json").read_text(encoding="utf-8"))
    configs = json.loads((seed_models / "model_configs.json").read_text(encoding="utf-8"))
    loaded = load_model_dir(seed_models / configs["model_dir"])
    expected = evaluate_model(loaded.model, loaded.tokenizer, docs, max_len=loaded.config.data.max_len)
    assert report["char_accuracy"] == pytest.approx(expected.char_accuracy)
    assert report["sentence_accuracy"] == pytest.approx(expected.sentence_accuracy)
    per_tag = report["tag_accuracy"]  # summed over the tags, the seed's tag accuracy is the char accuracy
    right, total = sum(v["right"] for v in per_tag.values()), sum(v["total"] for v in per_tag.values())
    assert total == expected.n_chars and right / total == pytest.approx(expected.char_accuracy)
    text = (out_dir / f"{command}_report.txt").read_text(encoding="utf-8")
    assert "Sentence Accuracy" in text and "Tag Accuracy" in text and "Character Accuracy" in text
    assert "Sentence Accuracy" in out
    summary = json.loads(out[out.rindex("\n{") :])
    assert summary["char_accuracy"] == pytest.approx(expected.char_accuracy) and summary["labelled"]


def test_seed_texts_without_entities_give_predictions_only(seed_env, tiny_encoder_dir):
    from tests.test_predict import build_model_dir

    model_dir = build_model_dir(seed_env / "m", tiny_encoder_dir)
    texts = ["张伟在北京工作。", "上海证券交易所今天发布公告。"]
    data = seed_env / "test.txt"  # the seed's test.txt: a JSON array of strings
    data.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    rc, _, err = run_cli(["test", "-test_data", str(data), "-model_configs", str(model_dir)])
    assert rc == 0, err
    assert "holds no gold entities" in err
    out_dir = seed_env / "test_outputs"  # the seed's default -output_path
    assert {p.name for p in out_dir.iterdir()} == {"test_outputs.txt", "test_entities.jsonl"}
    pairs = json.loads((out_dir / "test_outputs.txt").read_text(encoding="utf-8"))
    assert [p[0] for p in pairs] == texts


# ---------------------------------------------------------------------------------------- -model_configs
def test_model_configs_names_a_model_in_every_form(tmp_path, tiny_encoder_dir):
    from app.seed_commands import resolve_model_configs, write_model_configs
    from tests.test_predict import build_model_dir

    save = tmp_path / "models"
    model_dir = build_model_dir(save / "run-1" / "model", tiny_encoder_dir)
    written = write_model_configs(save, model_dir, run_id="run-1", bert_vocab=None)
    assert json.loads(written.read_text(encoding="utf-8"))["model_dir"] == "run-1/model"
    for form in (model_dir, model_dir / "ner_config.json", save / "run-1", save, written):
        assert Path(resolve_model_configs(form)).resolve() == model_dir.resolve(), form
    moved = shutil.move(str(save), str(tmp_path / "elsewhere"))  # relative: the folder can move
    assert (
        Path(resolve_model_configs(Path(moved) / "model_configs.json")).resolve()
        == (Path(moved) / "run-1" / "model").resolve()
    )


def test_model_configs_may_not_lead_out_of_its_folder(seed_env, tiny_encoder_dir):
    """A model_configs.json comes with a folder from anyone: a relative model_dir that climbs out of that
    folder (or leaves it through a symlink) is refused in one line; an absolute one (what ``ner train
    -save_path`` writes for a model elsewhere) is taken as written."""
    import os

    from app.seed_commands import resolve_model_configs
    from tests.test_predict import build_model_dir

    outside = build_model_dir(seed_env / "mine" / "model", tiny_encoder_dir)
    folder = seed_env / "downloaded" / "a" / "b"
    folder.mkdir(parents=True)
    (folder / "link").symlink_to(outside.parent, target_is_directory=True)
    configs = folder / "model_configs.json"
    data = seed_env / "t.txt"
    data.write_text('["文本"]', encoding="utf-8")
    for named in (os.path.relpath(outside, folder), "../../..", "link/model"):
        configs.write_text(json.dumps({"model_dir": named}), encoding="utf-8")
        with pytest.raises(ValueError, match=f"model_dir '{named}' leads outside the file's folder"):
            resolve_model_configs(configs)
        rc, _, err = run_cli(["test", "-test_data", str(data), "-model_configs", str(configs)])
        one_line_error(rc, err, str(configs), "leads outside")
    assert not (seed_env / "test_outputs").exists()
    configs.write_text(json.dumps({"model_dir": str(outside)}), encoding="utf-8")
    assert resolve_model_configs(configs) == str(outside)
    configs.write_text(json.dumps({"model_dir": str(outside)}) + " " * (2 << 20), encoding="utf-8")
    with pytest.raises(ValueError, match=r"2,097,\d+ bytes, more than the 1024 KiB a model_configs\.json"):
        resolve_model_configs(configs)


@pytest.mark.parametrize("command", ["test", "predict", "deploy"])
def test_keras_artefacts_are_refused_in_one_line(command, seed_env):
    models = seed_env / "models"
    models.mkdir()
    (models / "ALBERT-IDCNN-CRF.h5").write_bytes(b"\x89HDF\r\n")
    (models / "tag_to_id.pkl").write_bytes(b"\x80\x04.")
    (models / "model_configs.json").write_text(  # the seed's own model_configs.json
        json.dumps({"max_len": 64, "tag_padding": "X", "model_path": str(models / "ALBERT-IDCNN-CRF.h5")}),
        encoding="utf-8",
    )
    only_h5 = seed_env / "only_h5"
    only_h5.mkdir()
    shutil.copy(models / "ALBERT-IDCNN-CRF.h5", only_h5)
    data = seed_env / "t.txt"
    data.write_text('["文本"]', encoding="utf-8")
    for target in (
        models / "model_configs.json",
        models / "ALBERT-IDCNN-CRF.h5",
        models / "tag_to_id.pkl",
        only_h5,
    ):
        extra = ["-test_data", str(data)] if command != "deploy" else ["-log_path", str(seed_env / "log")]
        rc, _, err = run_cli([command, "-model_configs", str(target), *extra, "-device_map", "cpu"])
        one_line_error(rc, err, "keras-bert-ner (Keras) artefact", "cannot be loaded", "ner train")
    assert not (seed_env / "test_outputs").exists() and not (seed_env / "log").exists()


def test_model_configs_problems_are_one_line(seed_env, tiny_encoder_dir):
    from tests.test_predict import build_model_dir

    model_dir = build_model_dir(seed_env / "m", tiny_encoder_dir)
    data = seed_env / "t.txt"
    data.write_text('["文本"]', encoding="utf-8")
    bad = seed_env / "model_configs.json"
    bad.write_text('{"model_dir": "nowhere"}', encoding="utf-8")
    cases = [
        (["-model_configs", str(bad)], "is not a model directory"),
        (["-model_configs", str(seed_env / "none.json")], "no such file or directory"),
        (["-model_configs", str(model_dir), "--model-dir", str(model_dir)], "both name the model"),
        (["-model_configs", str(model_dir), "--file", str(data)], "drop the other input"),
    ]
    for argv, needle in cases:
        one_line_error(*run_cli(["test", "-test_data", str(data), *argv])[::2], needle)
    one_line_error(*run_cli(["test", "-output_path", "x"])[::2], "-output_path goes with -test_data")
    rc, _, err = run_cli(
        ["predict", "-test_data", str(data), "-model_configs", str(model_dir), "-device_map", "0,1"]
    )
    one_line_error(rc, err, "one device is used")


# ---------------------------------------------------------------------------------------- deploy
def test_deploy_takes_the_seed_flags_and_logs_every_request(seed_env, tiny_encoder_dir, monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient

    from tests.test_predict import build_model_dir

    model_dir = build_model_dir(seed_env / "models" / "run-1" / "model", tiny_encoder_dir)
    from app.seed_commands import write_model_configs

    configs = write_model_configs(seed_env / "models", model_dir, run_id="run-1")
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    rc, out, err = run_cli(
        [
            "deploy",
            "-model_configs", str(configs),
            "-log_path", str(seed_env / "models" / "deploy_log/"),
            "-device_map", "cpu",
        ]
    )  # fmt: skip
    assert rc == 0, err
    app = served["app"]
    assert (
        app.state.info["model_dir"] == str(model_dir.resolve())
        and app.state.info["tagger"]["device"] == "cpu"
    )
    log = seed_env / "models" / "deploy_log" / "requests.log"
    assert str(log) in out
    secret = "张伟在北京的ABC资本工作。"
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:  # a Host the service answers
        assert client.post("/predict", json={"texts": [secret, "上海"]}).status_code == 200
        seed_answer = client.post("/decode", json={"text": secret})  # what the seed's query.py posts
        assert client.get("/health").status_code == 200
        assert client.post("/predict", json={"txt": "x"}).status_code == 422
    assert seed_answer.status_code == 200
    body = seed_answer.json()
    assert body["text"] == secret and len(body["tags"].split(" ")) == len(secret)
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    fields = [ln.split("\t") for ln in lines]
    assert [f[1:3] for f in fields] == [
        ["POST /predict", "200"],
        ["POST /decode", "200"],
        ["GET /health", "200"],
        ["POST /predict", "422"],
    ]
    assert [f[4] for f in fields] == [
        f"{len(secret) + 2} chars",
        f"{len(secret)} chars",
        "- chars",
        "- chars",
    ]
    assert all(f[3].endswith(" ms") and float(f[3][:-3]) >= 0 for f in fields)
    assert "张伟" not in log.read_text(encoding="utf-8")  # never the texts


# ---------------------------------------------------------------------------------------- refusals
@needs_albert
def test_bad_checkpoints_through_ner_train_are_one_line(seed_env):
    lm = seed_env / "lm"
    shutil.copytree(ALBERT, lm)
    for p in lm.iterdir():
        p.chmod(0o644)
    data = seed_env / "data"
    shutil.copytree(SAMPLE, data, ignore=shutil.ignore_patterns("raw"))
    out = seed_env / "models"

    def refused(argv, *needles):
        line = one_line_error(*run_cli(argv)[::2], *needles)
        assert not (seed_env / "ner.duckdb").exists() and not out.exists(), line  # refused before anything

    argv = seed_train_argv(lm, data, out)
    refused([a for a in argv if a != "-albert"], "ALBERT")  # ALBERT variables without -albert
    refused([a.replace("albert_model.ckpt", "nothing.ckpt") for a in argv], "nothing.ckpt")
    without_vocab = argv[: argv.index("-bert_vocab")] + argv[argv.index("-bert_vocab") + 2 :]
    refused(without_vocab, "give -bert_config and -bert_vocab too")
    blob = lm / "albert_model.ckpt.data-00000-of-00001"  # nothing converted yet: no cached copy to reuse
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    blob.write_bytes(bytes(raw))
    refused(argv, "albert_model.ckpt")
    (lm / "albert_model.ckpt.index").unlink()
    refused(argv, ".index")
    import torch

    if not torch.cuda.is_available():  # the README's -device_map "0" on a machine without a GPU
        as_written = [a if a != "cpu" else "0" for a in seed_train_argv(ALBERT, data, out)]
        refused(as_written, "'cuda:0'", "CUDA is not available", "-device_map cpu")
    # the seed's own -max_len 64 counted [CLS] and [SEP]: here it is 64 characters, 66 positions
    refused(seed_train_argv(ALBERT, data, out, max_len="64"), "exceeds the encoder's 64 positions", "minus 2")


def test_a_window_longer_than_the_positions_is_refused_before_the_first_epoch(tmp_path, tiny_encoder_dir):
    from transformers import BertConfig, BertModel

    from ner_core.config import NERConfig
    from ner_core.documents import Document, Entity
    from ner_core.training.loop import train

    enc = tmp_path / "enc40"
    shutil.copytree(tiny_encoder_dir, enc)
    cfg = BertConfig.from_pretrained(enc)
    cfg.max_position_embeddings = 40
    BertModel(cfg).save_pretrained(enc)
    config = NERConfig.model_validate(
        {"data": {"max_len": 48}, "encoder": {"name": str(enc)}, "training": {"max_epochs": 1}}
    )
    docs = [Document(doc_id="d", text="张伟在北京。", entities=[Entity(start=0, end=2, label="PER")])]
    epochs = []
    with pytest.raises(
        ValueError, match="a window of 48 characters plus .CLS. and .SEP. exceeds the encoder's 40"
    ):
        train(config, docs, docs, ["PER"], tmp_path / "run", on_epoch=epochs.append, progress=False)
    assert epochs == [] and not (tmp_path / "run" / "model").exists()
    train(config.with_overrides({"data.max_len": 38}), docs, docs, ["PER"], tmp_path / "ok", progress=False)
    assert (tmp_path / "ok" / "model" / "meta.json").is_file()


# ---------------------------------------------------------------------------------------- help
def test_help_states_the_seed_flags_and_the_max_len_meaning():
    def help_of(*argv):
        rc, out, _ = run_cli([*argv, "--help"])
        assert rc == 0
        return " ".join(out.split())

    train = help_of("train")
    assert "-do_eval" in train and "counted [CLS] and [SEP]" in train and "minus 2" in train
    for command in ("test", "predict"):
        text = help_of(command)
        for flag in ("-test_data", "-model_configs", "-output_path", "-device_map"):
            assert flag in text, (command, flag)
    deploy = help_of("deploy")
    for flag in ("-model_configs", "-log_path", "-device_map"):
        assert flag in deploy, flag
