"""The wheel carries the whole tree: built from the working tree, installed (not editable) into a fresh
virtual environment, every package imports from there and a model trained-from-random tags a text with the
C kernel built from the shipped source.

An editable install (``make setup``) finds every sub-package through the source tree, so a package missing
from ``pyproject.toml``'s list, or ``csrc/crf.c`` missing from the package data, would only show here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import importlib, json, sys, tempfile
from pathlib import Path
packages = json.loads(sys.argv[1])
where = {p: importlib.import_module(p).__file__ for p in packages}
from ner_core.model import _ckernel
from ner_core.model.encoder import make_tiny_encoder
from ner_core.config import NERConfig
from ner_core.model.network import NERModel
from ner_core.schemes import tag_set
from ner_core.artifacts.modeldir import save_model_dir, load_model_dir
from ner_core.inference.tagger import Tagger
from transformers import AutoModel, AutoTokenizer
tmp = Path(tempfile.mkdtemp())
enc = make_tiny_encoder(tmp / "enc", ["张三在北京工作"])
cfg = NERConfig.model_validate({"encoder": {"name": str(enc)}, "head": {"type": "bigru", "rnn_units": 8}})
model = NERModel(cfg, tag_set(["LOC", "PER"], "BIOES"), AutoModel.from_pretrained(str(enc)))
save_model_dir(tmp / "model", model, AutoTokenizer.from_pretrained(str(enc)))
tagger = Tagger.from_loaded(load_model_dir(tmp / "model"))
(ents,) = tagger.predict(["张三在北京工作"])
print(json.dumps({"where": where, "kernel": _ckernel.load() is not None, "source": str(_ckernel._SOURCE),
                  "n_tags": len(tagger.tags), "entities": len(ents)}))
"""


def _listed_packages() -> list[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return pyproject["tool"]["setuptools"]["packages"]


def _working_tree(dst: Path) -> Path:
    """The project's files as git sees them (tracked and new, not ignored), without tests, copied to
    ``dst``: what a clone of this change would hold."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    archive = dst.with_suffix(".tar")
    with tarfile.open(archive, "w") as tar:
        for name in files:
            if not name.startswith("tests/") and (REPO / name).is_file():
                tar.add(REPO / name, arcname=name)
    with tarfile.open(archive) as tar:
        tar.extractall(dst, filter="data")
    return dst


def test_a_wheel_installed_into_a_fresh_venv_imports_every_package_and_tags(tmp_path):
    src = _working_tree(tmp_path / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "dist", "."],
        cwd=src,
        check=True,
        capture_output=True,
    )
    (wheel,) = (src / "dist").glob("zh_ner-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", site, wheel],
        check=True,
        capture_output=True,
    )
    # the test environment's third-party packages, as a plain path: its .pth files (among them the editable
    # install's finder of this source tree) are not read from there
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    packages = _listed_packages()
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "NER_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run(
        [python, "-c", _SCRIPT, json.dumps(packages)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(out["where"]) == set(packages)
    outside = {p: f for p, f in out["where"].items() if not f.startswith(str(site))}
    assert not outside, f"imported from outside the installed wheel: {outside}"
    assert out["source"].startswith(str(site)) and Path(out["source"]).is_file()
    if any(shutil.which(cc, path=env["PATH"]) for cc in ("cc", "gcc", "clang")):
        assert out["kernel"], "the C kernel did not build from the shipped csrc/crf.c"
    assert out["n_tags"] == 9 and out["entities"] >= 0
