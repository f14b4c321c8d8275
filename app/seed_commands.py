"""The seed's (keras-bert-ner's) commands as written: its files and its ways of naming a model.

- ``ner train -save_path OUT`` writes ``OUT/model_configs.json`` (:func:`write_model_configs`) pointing at
  the model directory it trained, as the seed's train did; with ``-do_eval`` it also writes the seed's
  training log ``OUT/<ALBERT|BERT>-<HEAD>-<time>.log`` (:func:`write_train_log`).
- ``-model_configs`` (``ner test`` / ``predict`` / ``deploy``) names a model directory, one of its files,
  a run directory, or a ``model_configs.json`` written by ``-save_path`` (:func:`resolve_model_configs`).
  The seed's own Keras artefacts (``.h5``, ``.pkl``, a seed ``model_configs.json`` naming an ``.h5``) are
  refused in one line: they cannot be loaded without TensorFlow and Keras.
- ``ner test`` / ``ner predict -test_data FILE [-output_path DIR]`` tag one file with no database
  (:func:`tag_to_outputs`) and write, named after the command (``test_*`` or ``predict_*``; the seed's two
  commands were one script, so both write the same set):

  ``<cmd>_outputs.txt``    the seed's shape: a JSON array of ``[text, "tag tag ..."]`` pairs, one tag per
                           character in the model's scheme (the seed cut texts at max_len; here every text
                           is tagged whole, in windows). Tags cannot nest: a span model's (possibly
                           nested) entities are written as the tags of the outermost ones (the ingest's
                           rules, :func:`ner_core.schemes.outermost`), and the summary's
                           ``tags`` line says so
  ``<cmd>_entities.jsonl`` one line per text: ``{"doc_id", "text", "entities": [{start, end, label, text,
                           confidence}]}`` (half-open character spans)
  ``<cmd>_report.txt``     when the file holds gold entities: the seed's accuracy report (sentence accuracy,
                           then right / total / accuracy per tag), character accuracy and the entity scores;
                           for a span model the gold includes the file's nested spans (the reader's
                           dropped ``nested`` / ``same_span`` spans) and the tag figures come from the
                           outermost spans
  ``<cmd>_report.json``    the same figures as JSON (the evaluation report plus ``tag_accuracy``)
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from ner_core.artifacts import layout

MODEL_CONFIGS = "model_configs.json"
MAX_MODEL_CONFIGS_BYTES = 1 << 20  # what ner train writes is a few hundred bytes
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras", ".pkl", ".pickle")
DEFAULT_OUTPUT_PATH = "test_outputs"  # the seed's default -output_path
UNLABELLED_FORMATS = ("seed_texts", "text")  # formats that carry texts only (the seed's test.txt is one)
_HEAD_NAMES = {"idcnn": "IDCNN-CRF", "bilstm": "BILSTM-CRF", "bigru": "BIGRU-CRF", "none": "CRF"}


def keras_refusal(path: str | os.PathLike) -> str:
    """The one line that refuses a keras-bert-ner artefact and says what to do instead."""
    return (
        f"{path} is a keras-bert-ner (Keras) artefact, which cannot be loaded here (there is no TensorFlow "
        "or Keras): retrain with `ner train` (the seed's flags work as written), or convert the encoder's "
        "TF checkpoint with `ner convert-checkpoint`"
    )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------- model_configs
def _saved_config(model_dir: Path):
    from ner_core.artifacts.modeldir import read_saved_config

    return read_saved_config(model_dir)


def write_model_configs(
    save_path: str | os.PathLike, model_dir: str | os.PathLike, *, run_id: str, bert_vocab=None
) -> Path:
    """Write ``save_path/model_configs.json`` naming ``model_dir`` (relative to ``save_path`` when inside
    it, so the folder can move); the seed's train wrote such a file and its test / predict read it."""
    config = _saved_config(Path(model_dir))
    out = Path(save_path)
    out.mkdir(parents=True, exist_ok=True)
    target = Path(model_dir).resolve()
    try:
        named = str(target.relative_to(out.resolve()))
    except ValueError:
        named = str(target)
    body = {
        "model_dir": named,
        "run_id": run_id,
        "max_len": config.data.max_len,
        "max_len_counts": "characters per window; [CLS] and [SEP] come on top (the seed counted them)",
        "encoder": config.encoder.name,
        "bert_vocab": str(Path(bert_vocab).resolve()) if bert_vocab else None,
        "written_by": "ner train",
    }
    path = out / MODEL_CONFIGS
    _write_atomic(path, json.dumps(body, ensure_ascii=False, indent=4) + "\n")
    return path


def resolve_model_configs(value: str | os.PathLike) -> str:
    """The model directory named by ``-model_configs``: a model directory, a run directory (its ``model/``),
    a file inside a model directory (its ``ner_config.json``), a folder holding ``model_configs.json`` or
    that file itself. Keras artefacts are refused (:func:`keras_refusal`)."""
    p = Path(value)
    if p.suffix.lower() in KERAS_SUFFIXES:
        raise ValueError(keras_refusal(p))
    if p.is_dir():
        if layout.is_model_dir(p):
            return str(p)
        if layout.is_model_dir(p / "model"):
            return str(p / "model")
        if (p / MODEL_CONFIGS).is_file():
            return _from_model_configs(p / MODEL_CONFIGS)
        keras = sorted(x.name for x in p.iterdir() if x.suffix.lower() in KERAS_SUFFIXES)
        if keras:
            raise ValueError(keras_refusal(p / keras[0]))
        raise ValueError(
            f"-model_configs {p}: not a model directory (no {layout.META}), a run directory (no model/) "
            f"and no {MODEL_CONFIGS} in it"
        )
    if not p.is_file():
        raise FileNotFoundError(f"-model_configs {p}: no such file or directory")
    if p.name != MODEL_CONFIGS and layout.is_model_dir(p.parent):
        return str(p.parent)  # the model directory's ner_config.json (or another of its files)
    return _from_model_configs(p)


def _from_model_configs(path: Path) -> str:
    """The model directory a ``model_configs.json`` names. The file may come with a folder from anyone, so it
    is read within :data:`MAX_MODEL_CONFIGS_BYTES`, and a relative ``model_dir`` must stay inside the file's
    folder (``"../../.."`` or a symlink out of it is refused); an absolute one is what ``ner train
    -save_path`` writes for a model outside that folder, and is taken as written."""
    if path.stat().st_size > MAX_MODEL_CONFIGS_BYTES:
        raise ValueError(
            f"{path}: {path.stat().st_size:,} bytes, more than the {MAX_MODEL_CONFIGS_BYTES >> 10} KiB a "
            f"{MODEL_CONFIGS} may have"
        )
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read(MAX_MODEL_CONFIGS_BYTES + 1).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with model_dir, got {type(data).__name__}")
    if "model_dir" not in data:
        if "model_path" in data:  # the seed's own file: {max_len, tag_padding, model_path (.h5), bert_vocab}
            raise ValueError(keras_refusal(f"{path} (model_path {str(data['model_path'])[:200]})"))
        raise ValueError(f"{path}: no model_dir (not a {MODEL_CONFIGS} written by `ner train -save_path`)")
    named = data["model_dir"]
    if not isinstance(named, str) or not named or "\0" in named:
        raise ValueError(f"{path}: model_dir must be a path (a non-empty string), got {str(named)[:100]!r}")
    model_dir = Path(named)
    if not model_dir.is_absolute():
        folder = path.parent.resolve()
        model_dir = path.parent / model_dir
        real = model_dir.resolve()
        if real != folder and folder not in real.parents:
            raise ValueError(
                f"{path}: model_dir {named[:200]!r} leads outside the file's folder {folder}; a relative "
                "model_dir must lie inside it (give the model directory with --model-dir, or write its "
                "absolute path)"
            )
    if not layout.is_model_dir(model_dir):
        raise ValueError(f"{path}: model_dir {model_dir} is not a model directory (no {layout.META})")
    return str(model_dir)


# ----------------------------------------------------------------------------------------- train log
def write_train_log(save_path: str | os.PathLike, summary, *, albert: bool) -> tuple[Path, str]:
    """The seed's ``-do_eval`` log for a finished run (``summary``: a :class:`flows.contracts.TrainSummary`):
    one block per epoch (train loss, dev scores), then the best model's dev figures. Returns the file
    written and its text."""
    from ner_core.artifacts.modeldir import read_metrics

    run_dir, model_dir = Path(summary.run_dir), Path(summary.model_dir)
    config = _saved_config(model_dir)
    history = json.loads((run_dir / "history.json").read_text(encoding="utf-8"))
    metrics = read_metrics(model_dir)
    head = _HEAD_NAMES.get(config.head.type.value, config.head.type.value.upper())
    name = f"{'ALBERT' if albert else 'BERT'}-{head}-{time.strftime('%Y%m%d_%H%M%S')}.log"
    lines: list[str] = []
    for ep in history:
        lines += [
            "*" * 30 + f" Epoch {ep['epoch']} " + "*" * 30,
            f"Train Loss\t\t{ep['train_loss']}",
            f"Valid F1\t\t{ep['dev_f1']}",
            f"Sentence Accuracy\t{ep['dev_sentence_accuracy']}",
            f"Char Accuracy\t\t{ep['dev_char_accuracy']}",
            "",
        ]
    dev = metrics.get("dev") or {}
    lines += [f"best epoch {summary.best_epoch} ({summary.stopped_reason}); model {model_dir}", ""]
    lines += _figures_table(dev)
    text = "\n".join(lines) + "\n"
    path = Path(save_path) / name
    _write_atomic(path, text)
    return path, text


def _figures_table(fig: dict[str, Any]) -> list[str]:
    if not fig:
        return ["(no dev split: no scores)"]
    out = [
        "-" * 25 + " Dev (best model) " + "-" * 25,
        f"Sentence Accuracy\t{fig['sentence_accuracy']:.4f}",
        f"Char Accuracy\t\t{fig['char_accuracy']:.4f}",
        f"Entity P / R / F1\t{fig['precision']:.4f} / {fig['recall']:.4f} / {fig['f1']:.4f}",
    ]
    labels = sorted({k.split(".")[0] for k in fig if k.endswith(".f1") and not k.startswith("macro")})
    out += [f"{lab}\t\tF1 {fig[f'{lab}.f1']:.4f}  support {fig[f'{lab}.support']}" for lab in labels]
    return out


# ----------------------------------------------------------------------------------------- test / predict
def tag_to_outputs(
    command: str, test_data: str, model_dir: str, output_path: str | os.PathLike, options=None
) -> dict[str, Any]:
    """Tag ``test_data`` (any supported format) with ``model_dir`` and write the seed's output files into
    ``output_path`` (see the module docstring); scores too when the file holds gold entities."""
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.data.formats import read_file
    from ner_core.data.formats.overlaps import nested_documents
    from ner_core.inference.tagger import Tagger

    if not Path(test_data).is_file():
        raise FileNotFoundError(f"{test_data}: no such file")
    loaded = load_model_dir(model_dir)
    span = is_span_model(loaded.config)
    parsed = read_file(test_data, untyped_label=loaded.config.data.untyped_label)
    if parsed.fatal or not parsed.documents:
        first = next((str(p) for p in parsed.problems if p.severity == "error"), "")
        raise ValueError(first or f"{test_data}: no texts to tag")
    docs = nested_documents(parsed)[0] if span else parsed.documents
    labelled = parsed.format not in UNLABELLED_FORMATS
    if labelled:
        unknown = sorted({e.label for d in docs for e in d.entities} - set(loaded.labels))
        if unknown:
            raise ValueError(
                f"{test_data}: labels {unknown} are not in the model's label set {loaded.labels}"
            )
    preds = Tagger.from_loaded(loaded, options).predict([d.text for d in docs])
    out = Path(output_path)
    out.mkdir(parents=True, exist_ok=True)
    written, flattened = _write_predictions(command, out, docs, preds, loaded.scheme)
    summary: dict[str, Any] = {
        "output_path": str(out.resolve()),
        "model_dir": str(Path(model_dir).resolve()),
        "n_texts": len(docs),
        "n_entities": sum(map(len, preds)),
        "labelled": labelled,
    }
    if span or flattened:
        summary["tags"] = (
            f"{command}_outputs.txt holds the tags of the outermost entities ({flattened} nested or "
            f"overlapping entities have no tags); {command}_entities.jsonl holds every entity"
        )
    if labelled:
        report_files, figures = _write_report(command, out, docs, preds, loaded.scheme, span)
        written += report_files
        summary.update(figures)
    summary["files"] = [p.name for p in written]
    return summary


def _spans(preds) -> list[list]:
    """Predicted entities as :class:`ner_core.documents.Entity` spans (what the scheme functions take)."""
    from ner_core.documents import Entity

    return [[Entity(start=e.start, end=e.end, label=e.label) for e in p] for p in preds]


def is_span_model(config) -> bool:
    """Whether ``config`` (a model directory's NERConfig) has a span decoder (configs without a
    ``decoder`` are CRF models)."""
    return str(getattr(getattr(config, "decoder", None), "type", "crf")) == "span"


def _write_predictions(command: str, out: Path, docs, preds, scheme: str) -> tuple[list[Path], int]:
    """The outputs and entities files; plus how many predicted entities the tags leave out (nested)."""
    from ner_core.schemes import outermost, spans_to_tags

    pairs = []
    flattened = 0
    for d, ents in zip(docs, _spans(preds), strict=True):
        flat = outermost(ents)
        flattened += len(ents) - len(flat)
        pairs.append([d.text, " ".join(spans_to_tags(len(d.text), flat, scheme))])
    outputs = out / f"{command}_outputs.txt"
    _write_atomic(outputs, json.dumps(pairs, ensure_ascii=False, indent=4) + "\n")
    entities = out / f"{command}_entities.jsonl"
    _write_atomic(
        entities,
        "".join(
            json.dumps(
                {"doc_id": d.doc_id, "text": d.text, "entities": [e.to_dict() for e in ents]},
                ensure_ascii=False,
            )
            + "\n"
            for d, ents in zip(docs, preds, strict=True)
        ),
    )
    return [outputs, entities], flattened


def tag_accuracy(docs, preds, scheme: str) -> dict[str, dict[str, float | int]]:
    """The seed's per-tag accuracy: for each gold tag, the characters carrying it and how many of them the
    model tagged the same (tags in ``scheme``); summed over the tags this is the character accuracy. Tags
    are those of the outermost spans (gold and predicted entities may nest for a span model)."""
    from ner_core.schemes import outermost, spans_to_tags

    right: dict[str, int] = {}
    total: dict[str, int] = {}
    for d, ents in zip(docs, _spans(preds), strict=True):
        gold = spans_to_tags(len(d.text), outermost(d.entities), scheme)
        pred = spans_to_tags(len(d.text), outermost(ents), scheme)
        for g, p in zip(gold, pred, strict=True):
            total[g] = total.get(g, 0) + 1
            right[g] = right.get(g, 0) + (g == p)
    return {t: {"right": right[t], "total": total[t], "acc": right[t] / total[t]} for t in sorted(total)}


def _write_report(command: str, out: Path, docs, preds, scheme: str, span: bool) -> tuple[list[Path], dict]:
    from ner_core.metrics import evaluate

    report = evaluate(docs, _spans(preds), scheme, outermost_tags=span or None)
    per_tag = tag_accuracy(docs, preds, scheme)
    n_right = round(report.sentence_accuracy * report.n_sentences)
    lines = [
        "-" * 25 + " Sentence Accuracy " + "-" * 25,
        "\t\tRight\t\tTotal\t\tAcc",
        f"\t\t{n_right}\t\t{report.n_sentences}\t\t{report.sentence_accuracy}",
        "-" * 28 + " Tag Accuracy " + "-" * 27,
        "\t\tRight\t\tTotal\t\tAcc",
        *(f"{t}\t\t{v['right']}\t\t{v['total']}\t\t{v['acc']}" for t, v in per_tag.items()),
        "-" * 25 + " Character Accuracy " + "-" * 24,
        f"\t\t{report.char_accuracy}",
        "",
        report.to_markdown(),
    ]
    txt, js = out / f"{command}_report.txt", out / f"{command}_report.json"
    _write_atomic(txt, "\n".join(lines))
    body = json.loads(report.model_dump_json()) | {"tag_accuracy": per_tag}
    _write_atomic(js, json.dumps(body, ensure_ascii=False, indent=2) + "\n")
    figures = {
        k: getattr(report, k) for k in ("char_accuracy", "sentence_accuracy", "precision", "recall", "f1")
    }
    return [txt, js], figures
