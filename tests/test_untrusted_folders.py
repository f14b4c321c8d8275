"""Folders from anyone (ner_core/model/untrusted.py): an encoder folder (``ner train --encoder``) and a
model directory (``ner serve --model-dir``, ``ner predict``) run no code and make this process allocate
nothing beyond their real files, and each refusal is one line naming the file.

The attacks are the ones found by trying: ``auto_map`` with a ``.py`` beside it (transformers asks "run the
custom code? [y/N]" and runs it on a yes), ``vocab_size: 1e8`` (gigabytes from ``AutoModel.from_config``
before the weights were compared), a 2 GiB ``tokenizer.json`` (a symlink to a sparse file), a
3-million-token vocabulary, a FIFO where a file should be, and weights that declare more bytes than the
file holds (a sparse file).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ner_core.artifacts.layout import ModelDirError
from ner_core.artifacts.modeldir import load_model_dir, save_model_dir
from ner_core.config import EncoderConfig
from ner_core.model.encoder import check_encoder_folder, load_encoder
from ner_core.model.untrusted import UntrustedFileError, data_bytes
from tests.test_modeldir import build

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
GiB = 1 << 30

#: custom code that leaves a marker file when it runs (it never may)
EVIL_PY = """
import pathlib, os
pathlib.Path(os.environ["NER_TEST_MARKER"]).write_text("ran")
from transformers import BertConfig
class EvilConfig(BertConfig):
    model_type = "evil"
"""


@pytest.fixture(scope="module")
def saved(tiny_encoder_dir, tmp_path_factory):
    model, tok = build(tiny_encoder_dir)
    return save_model_dir(tmp_path_factory.mktemp("m") / "model", model, tok)


@pytest.fixture
def encoder(tiny_encoder_dir, tmp_path) -> Path:
    """A copy of the tiny encoder folder to tamper with."""
    return Path(shutil.copytree(tiny_encoder_dir, tmp_path / "encoder"))


@pytest.fixture
def model_dir(saved, tmp_path) -> Path:
    """A copy of a saved model directory to tamper with."""
    return Path(shutil.copytree(saved, tmp_path / "model"))


def _edit_json(path: Path, **fields) -> None:
    obj = json.loads(path.read_text(encoding="utf-8"))
    obj.update(fields)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _plant_custom_code(folder: Path, marker: Path, monkeypatch) -> None:
    (folder / "evil.py").write_text(EVIL_PY, encoding="utf-8")
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    _edit_json(folder / "config.json", auto_map=auto_map)
    monkeypatch.setenv("NER_TEST_MARKER", str(marker))


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------------------- custom code
def test_an_encoder_with_auto_map_is_refused_and_its_code_never_runs(encoder, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    _plant_custom_code(encoder, marker, monkeypatch)
    monkeypatch.setattr("builtins.input", lambda *a: "y")  # a yes to transformers' prompt would run it
    with pytest.raises(UntrustedFileError) as info:
        load_encoder(EncoderConfig(name=str(encoder)))
    assert "config.json has auto_map (AutoConfig, AutoModel)" in _one_line(info.value)
    assert "never" in str(info.value) and not marker.exists()


def test_a_tokenizer_config_with_auto_map_is_refused(encoder, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setenv("NER_TEST_MARKER", str(marker))
    (encoder / "evil.py").write_text(EVIL_PY, encoding="utf-8")
    _edit_json(encoder / "tokenizer_config.json", auto_map={"AutoTokenizer": ["evil.EvilTok", None]})
    with pytest.raises(UntrustedFileError, match=r"tokenizer_config.json has auto_map"):
        check_encoder_folder(encoder)
    assert not marker.exists()


def test_ner_train_refuses_an_encoder_with_custom_code_in_one_line(encoder, tmp_path):
    """The command line's pre-flight (before any data is read): exit status 2, one line, nothing run."""
    marker = tmp_path / "ran"
    (encoder / "evil.py").write_text(EVIL_PY, encoding="utf-8")
    _edit_json(encoder / "config.json", auto_map={"AutoModel": "evil.EvilModel"})
    env = {**os.environ, "NER_TEST_MARKER": str(marker), "NER_NO_PREFECT": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "train", "--dataset", "sample", "--encoder", str(encoder),
         "--db", str(tmp_path / "x.duckdb"), "--no-prefect"],
        cwd=REPO, env=env, capture_output=True, text=True, input="y\n", timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "auto_map" in lines[0] and str(encoder) in lines[0], proc.stderr
    assert not marker.exists()


def test_a_model_directory_whose_encoder_config_has_auto_map_is_refused(model_dir, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    _plant_custom_code(model_dir / "encoder", marker, monkeypatch)
    with pytest.raises(ModelDirError, match=r"encoder/config.json has auto_map"):
        load_model_dir(model_dir)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- memory bombs
def _peak_rss_mb_of(code: str) -> tuple[float, str]:
    """Run ``code`` in a fresh interpreter; its peak RSS in MiB (its own ``VmHWM``: ``ru_maxrss`` would
    carry the test runner's size, inherited at exec) and its stdout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    script = textwrap.dedent(code) + textwrap.dedent(
        """
        hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
        print("PEAK", int(hwm.split()[1]) / 1024)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = float(proc.stdout.split("PEAK")[-1])
    return peak, proc.stdout


def test_a_huge_vocab_size_is_refused_before_anything_is_allocated(model_dir, encoder):
    """``vocab_size: 1e8`` would build a 1e8-row embedding (gigabytes) before the weights were compared;
    the configuration is compared with the weights' header on the meta device first."""
    _edit_json(model_dir / "encoder" / "config.json", vocab_size=100_000_000)
    _edit_json(encoder / "config.json", vocab_size=100_000_000)
    peak, out = _peak_rss_mb_of(
        f"""
        from ner_core.artifacts.modeldir import load_model_dir
        from ner_core.model.encoder import check_encoder_folder
        for call, arg in ((load_model_dir, {str(model_dir)!r}), (check_encoder_folder, {str(encoder)!r})):
            try:
                call(arg)
            except ValueError as exc:
                print("REFUSED", exc)
        """
    )
    refusals = [ln for ln in out.splitlines() if ln.startswith("REFUSED")]
    assert len(refusals) == 2, out
    assert "word_embeddings.weight" in refusals[0] and "100000000" in refusals[0], refusals[0]
    assert "does not match the weights" in refusals[1] and "100000000" in refusals[1], refusals[1]
    assert peak < 1500, f"peak RSS {peak:.0f} MiB: something was built for real"  # 1e8 x 32 fp32 = 12 GiB


def test_a_million_layers_are_refused_before_even_the_meta_device_builds_them(model_dir):
    _edit_json(model_dir / "encoder" / "config.json", num_hidden_layers=1_000_000)
    with pytest.raises(ModelDirError, match=r"num_hidden_layers 1,000,000: more modules than its weights'"):
        load_model_dir(model_dir)


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


def test_a_tokenizer_json_symlinked_to_a_sparse_file_outside_is_refused(model_dir, tmp_path):
    big = _sparse(tmp_path / "outside.json", 2 * GiB, b'{"model": {"vocab": {"')
    tok = model_dir / "tokenizer" / "tokenizer.json"
    tok.unlink()
    tok.symlink_to(big)
    with pytest.raises(ModelDirError) as info:
        load_model_dir(model_dir)
    msg = _one_line(info.value)
    assert "tokenizer/tokenizer.json is a symlink to" in msg and "outside the folder" in msg


def test_a_sparse_2_gib_tokenizer_json_inside_is_refused_by_its_size(model_dir):
    tok = model_dir / "tokenizer" / "tokenizer.json"
    _sparse(tok, 2 * GiB, b'{"model": {"vocab": {"')
    peak, out = _peak_rss_mb_of(
        f"""
        from ner_core.artifacts.modeldir import load_model_dir
        try:
            load_model_dir({str(model_dir)!r})
        except ValueError as exc:
            print("REFUSED", exc)
        """
    )
    assert "REFUSED" in out and "tokenizer/tokenizer.json is 2,147,483,648 bytes, more than the" in out, out
    assert peak < 1500, f"peak RSS {peak:.0f} MiB: the file was read"


def test_a_three_million_token_vocabulary_is_refused_before_it_is_loaded(model_dir):
    """The vocabulary may not hold more tokens than the encoder's embedding has rows (which the weights
    confirmed): counted in bounded memory, refused before transformers reads it."""
    tok = model_dir / "tokenizer"
    (tok / "tokenizer.json").unlink()
    with open(tok / "vocab.txt", "w", encoding="utf-8") as fh:
        fh.writelines(f"t{i}\n" for i in range(3_000_000))
    with pytest.raises(ModelDirError) as info:
        load_model_dir(model_dir)
    assert "tokenizer/vocab.txt has 3,000,000 lines, more than the" in _one_line(info.value)


def test_weights_that_declare_more_bytes_than_the_file_holds_are_refused(model_dir):
    """A safetensors file padded out sparsely to what its header declares: the tensors must lie in real
    data, not in holes."""
    weights = model_dir / "model.safetensors"
    raw = weights.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k.endswith("word_embeddings.weight"))
    begin, end = header[name]["data_offsets"]
    rows = 40_000_000 // header[name]["shape"][1]
    grow = rows * header[name]["shape"][1] * 4 - (end - begin)
    header[name]["shape"][0] = rows
    header[name]["data_offsets"] = [begin, end + grow]
    for k, v in header.items():  # every later tensor moves by grow
        if k != "__metadata__" and k != name and v["data_offsets"][0] >= end:
            v["data_offsets"] = [v["data_offsets"][0] + grow, v["data_offsets"][1] + grow]
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    data = raw[8 + n :]
    with open(weights, "wb") as fh:
        fh.write(len(blob).to_bytes(8, "little") + blob + data[:end])
        fh.seek(8 + len(blob) + end + grow)  # a hole where the grown tensor's bytes would be
        fh.write(data[end:])
    assert data_bytes(weights) < weights.stat().st_size  # really sparse here
    sparse = r"model.safetensors declares [\d,]+ bytes of tensors but holds only"
    with pytest.raises(ModelDirError, match=sparse):
        load_model_dir(model_dir)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_the_model_directory_is_refused_without_blocking(model_dir):
    (model_dir / "metrics.json").unlink()
    os.mkfifo(model_dir / "metrics.json")  # a read would block forever
    with pytest.raises(ModelDirError, match=r"metrics.json is a FIFO; expected a regular file"):
        load_model_dir(model_dir)


def test_a_symlink_inside_the_folder_is_allowed_and_an_intact_copy_loads(model_dir):
    """Symlinks that stay inside are fine (a hub snapshot's files link into its blobs/)."""
    metrics = model_dir / "metrics.json"
    (model_dir / "metrics.real.json").write_bytes(metrics.read_bytes())
    metrics.unlink()
    metrics.symlink_to("metrics.real.json")
    loaded = load_model_dir(model_dir)
    assert loaded.tags and loaded.metrics == json.loads((model_dir / "metrics.real.json").read_text())
