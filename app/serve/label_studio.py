"""``ner serve --label-studio``: the service speaks Label Studio's ML backend protocol
(HumanSignal/label-studio-ml-backend, ``label_studio_ml/api.py``) with the loaded model.

In this mode the service answers ``GET /health`` (``{"status": "UP", ...}``), ``POST /setup``,
``POST /predict`` and ``POST /webhook`` in Label Studio's shapes, plus ``GET /model``; the plain
``/predict`` and the seed's ``/decode`` are not served (Label Studio owns ``/predict``'s shape here).

- ``/setup`` ``{"project": "<id>.<created>", "schema": "<View>...</View>"}``: the label config is parsed
  (:func:`parse_label_config`: no DTD or entity, at most :data:`MAX_CONFIG_BYTES`) for its first ``Labels``
  control over a ``Text`` object: ``from_name`` (the Labels' ``name``), ``to_name`` (its ``toName``), the
  task data key (the Text's ``value="$key"``) and the label values; the model's labels are mapped onto
  them (:func:`map_labels`: same name, else same name ignoring case); none matching is one 422 line.
  Answers ``{"model_version"}``.
- ``/predict`` ``{"tasks": [{"id", "data": {key: text}}], "project", "label_config"}`` ->
  ``{"results": [{"result": [{"from_name", "to_name", "type": "labels", "value": {"start", "end", "text",
  "labels": [label]}, "score"}], "score", "model_version"}]}``, one per task in order. Offsets count code
  points, as Label Studio's ``Text`` tag has since 2022 (its e2e test ``ner/emoji.cy.ts``, "Should
  calculate offsets by code points in text"; see :mod:`ner_core.data.formats.label_studio`), which is
  Python's ``str`` indexing: an entity's offsets are the tagger's. An entity's ``score`` is its confidence;
  the task's ``score`` is the document's uncertainty (summed token entropy; Label Studio sorts tasks by
  prediction score, so sorting by it descending puts the most uncertain first). The answers are stored as
  a prediction run (:class:`storage.predictions.PredictionRunWriter`, input ``label-studio project <id>``,
  one document ``task-<id>`` per task; a task stored already with the same text is not written again):
  the review queue, the review rules and ``retrain-from-reviews``' counting apply to them unchanged.
- ``/webhook`` on ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED``: the annotation in the payload (or,
  when the payload carries none, fetched from Label Studio's API: ``GET <url>/api/annotations/<id>/`` with
  ``Authorization: Token <token>``, URL and token from ``--label-studio-url`` / ``$LABEL_STUDIO_URL`` and
  ``--label-studio-token-file`` / ``$LABEL_STUDIO_API_KEY``, never logged) becomes review events of the
  prediction run that answered ``/predict`` for its task (:func:`annotation_events`: the current entities
  the annotation keeps are accepted, relabelled ones relabelled, missing ones rejected, new ones added,
  then ``done``), recorded by :func:`storage.reviews.record_events` (its rules refuse what the Review page
  would refuse). Other events are answered ``{"status": "ignored"}``.
- Retraining: every ``--retrain-every N`` annotations stored (counted by this process since it started or
  since the last trigger) start a run of the ``retrain-from-reviews`` Prefect deployment
  (``--retrain-deployment``) for the run, from a background thread, never inside the request
  (:class:`RetrainTrigger`); ``/health`` shows the count and the last trigger's outcome.
- Auth: Label Studio's backend connection offers no auth or HTTP Basic auth. With an API key set,
  ``Authorization: Basic base64(user:KEY)`` (any user name) is accepted besides ``Bearer KEY`` and
  ``X-API-Key`` (:class:`BasicAuthAsBearer`); every other rule of ``ner serve`` holds.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 256 * 1024  # a label config is a few KiB; anything near this is not one
URL_ENV = "LABEL_STUDIO_URL"
TOKEN_ENV = "LABEL_STUDIO_API_KEY"
DEFAULT_DEPLOYMENT = "retrain-from-reviews/retrain-from-reviews"
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
REVIEWER_PREFIX = "label-studio"


class LabelStudioError(ValueError):
    """A request Label Studio sent that this backend cannot answer; the message is one line (422)."""


# ----------------------------------------------------------------------------------------- label config
@dataclass(frozen=True)
class LabelControl:
    """The ``Labels`` control of a project's label config and the mapping of the model's labels."""

    from_name: str
    to_name: str
    value_key: str
    labels: tuple[str, ...]
    to_ls: Mapping[str, str] = field(default_factory=dict)  # model label -> Label Studio label

    @property
    def to_model(self) -> dict[str, str]:
        return {v: k for k, v in self.to_ls.items()}


def parse_label_config(xml: str) -> tuple[str, str, str, tuple[str, ...]]:
    """(from_name, to_name, data key, label values) of the first ``<Labels>`` whose ``toName`` names a
    ``<Text>`` (or ``<HyperText>``) object. The config comes over the network: more than
    :data:`MAX_CONFIG_BYTES`, a DTD or an entity declaration is refused before parsing (no entity
    expansion), and so is XML that does not parse. :class:`LabelStudioError` says what was wrong."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelStudioError("the label config is empty: send the project's label config (XML)")
    if len(xml.encode("utf-8")) > MAX_CONFIG_BYTES:
        raise LabelStudioError(f"the label config is larger than {MAX_CONFIG_BYTES} bytes")
    if "<!DOCTYPE" in xml.upper() or "<!ENTITY" in xml.upper():
        raise LabelStudioError("the label config holds a DTD or entity declaration; refused")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelStudioError(f"the label config is not valid XML: {exc}") from None
    objects = {
        el.get("name"): el.get("value", "")
        for el in root.iter()
        if el.tag in ("Text", "HyperText") and el.get("name")
    }
    for el in root.iter("Labels"):
        name, to_name = el.get("name"), el.get("toName", "")
        if not name or to_name.split(",")[0] not in objects:
            continue
        value = objects[to_name.split(",")[0]]
        labels = tuple(lab.get("value") for lab in el.iter("Label") if lab.get("value"))
        key = value[1:] if value.startswith("$") else "text"
        return name, to_name.split(",")[0], key, labels
    raise LabelStudioError(
        "the label config has no <Labels> control over a <Text> object (named in its toName): this backend "
        "answers span labelling of text"
    )


def map_labels(model_labels: Iterable[str], ls_labels: Iterable[str]) -> dict[str, str]:
    """Model label -> Label Studio label: the same name, else the same name ignoring case. Model labels the
    config lacks are left out (the model's entities of those labels are not sent). ``LabelStudioError``
    when none matches."""
    model_labels, ls_labels = list(model_labels), list(ls_labels)
    folded = {lab.casefold(): lab for lab in ls_labels}
    out = {}
    for lab in model_labels:
        if lab in ls_labels:
            out[lab] = lab
        elif lab.casefold() in folded:
            out[lab] = folded[lab.casefold()]
    if not out:
        raise LabelStudioError(
            f"none of the model's labels ({', '.join(model_labels)}) is a label of the project's Labels "
            f"control ({', '.join(ls_labels) or 'none'}): name the labels as the model does"
        )
    return out


def label_control(xml: str, model_labels: Iterable[str]) -> LabelControl:
    from_name, to_name, key, labels = parse_label_config(xml)
    return LabelControl(from_name, to_name, key, labels, map_labels(model_labels, labels))


# ----------------------------------------------------------------------------------------- answers
def task_result(control: LabelControl, prediction, model_version: str) -> dict:
    """One task's prediction in Label Studio's shape (entities of labels the config lacks left out)."""
    result = []
    for e in prediction.entities:
        if e.label not in control.to_ls:
            continue
        result.append(
            {
                "from_name": control.from_name,
                "to_name": control.to_name,
                "type": "labels",
                "value": {"start": e.start, "end": e.end, "text": e.text, "labels": [control.to_ls[e.label]]},
                "score": float(e.confidence),
            }
        )
    score = float(prediction.uncertainty) if prediction.uncertainty is not None else 0.0
    return {"result": result, "score": score, "model_version": model_version}


def project_id(value: Any) -> str:
    """The project id of Label Studio's ``project`` field (``"<id>.<created timestamp>"``, an id, or a
    webhook's project object)."""
    if isinstance(value, Mapping):
        value = value.get("id")
    if isinstance(value, bool) or value is None or str(value).strip() == "":
        raise LabelStudioError("the request names no project")
    return str(value).split(".", 1)[0]


def task_text(task: Any, control: LabelControl, index: int) -> tuple[str, str]:
    """(doc_id, text) of one task of a ``/predict`` request."""
    if not isinstance(task, Mapping) or not isinstance(task.get("data"), Mapping):
        raise LabelStudioError(f"task {index}: expected an object with a data object")
    data = task["data"]
    text = data.get(control.value_key, data.get("text"))
    if not isinstance(text, str):
        raise LabelStudioError(f"task {index}: data.{control.value_key} is not a text")
    tid = task.get("id")
    if isinstance(tid, bool) or not isinstance(tid, (int, str)) or str(tid) == "":
        raise LabelStudioError(f"task {index}: no task id")
    return f"task-{tid}", text


# ----------------------------------------------------------------------------------------- annotations
def annotated_spans(annotation: Mapping, control: LabelControl, text: str) -> list[tuple[int, int, str]]:
    """(start, end, model label) of an annotation's ``labels`` results for the control; a Label Studio
    label the model lacks keeps its name. Offsets are code points; a span outside the text, or whose
    ``value.text`` is not the text at its offsets, is one :class:`LabelStudioError` line."""
    result = annotation.get("result")
    if not isinstance(result, list):
        raise LabelStudioError("the annotation has no result list")
    spans = []
    to_model = control.to_model
    for i, r in enumerate(result):
        if not isinstance(r, Mapping) or r.get("type") != "labels" or r.get("from_name") != control.from_name:
            continue
        v = r.get("value") or {}
        s, e, labels = v.get("start"), v.get("end"), v.get("labels") or []
        if not (isinstance(s, int) and isinstance(e, int) and 0 <= s < e <= len(text)):
            raise LabelStudioError(f"annotation result {i}: span [{s}, {e}) is not inside the text")
        if "text" in v and v["text"] != text[s:e]:
            raise LabelStudioError(
                f"annotation result {i}: value.text {v['text']!r} is not the text at [{s}, {e}) "
                f"({text[s:e]!r}); offsets must count code points"
            )
        spans += [(s, e, to_model.get(lab, lab)) for lab in labels if isinstance(lab, str) and lab]
    return sorted(set(spans))


def annotation_events(
    current: list[dict], spans: list[tuple[int, int, str]], known_labels: Iterable[str]
) -> list[dict]:
    """The review decisions that turn the document's ``current`` entities
    (:func:`storage.reviews.current_entities`) into the annotated ``spans``: an entity kept as it is is
    accepted (unless accepted already), one on the same span with another label relabelled, one the
    annotation lacks rejected; a new span is added; then ``done``. A label the run does not know is
    introduced first (``add_label``), and rejections come before the rest, so a relabelled or added span
    never overlaps a rejected one. Fields only:
    the caller adds run, document, hash and reviewer."""
    wanted = set(spans)
    by_span = {(s, e): lab for s, e, lab in spans}
    known = set(known_labels)
    new_labels = sorted({lab for _, _, lab in spans} - known)
    rejects, events, kept = [], [], set()
    for c in current:
        key = {"start": c["key_start"], "end": c["key_end"], "label": c["key_label"]}
        span, now = (c["start"], c["end"]), (c["start"], c["end"], c["label"])
        if now in wanted:
            kept.add(now)
            if c["state"] == "predicted":
                events.append({"action": "accept", **key})
        elif span in by_span and (span[0], span[1], by_span[span]) not in kept:
            kept.add((span[0], span[1], by_span[span]))
            events.append({"action": "relabel", **key, "new_label": by_span[span]})
        else:
            rejects.append({"action": "reject", **key})
    events += [{"action": "add", "start": s, "end": e, "label": lab} for s, e, lab in sorted(wanted - kept)]
    added = [{"action": "add_label", "label": lab} for lab in new_labels]
    return added + rejects + events + [{"action": "done"}]


def reviewer_name(annotation: Mapping) -> str:
    """``label-studio:<email or user id>`` of the annotation's author."""
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        who = who.get("email") or who.get("id")
    return f"{REVIEWER_PREFIX}:{who}" if who not in (None, "") else REVIEWER_PREFIX


class LabelStudioClient:
    """Reads annotations from Label Studio's API. The token is sent, never logged or shown."""

    def __init__(self, url: str | None, token: str | None, timeout_s: float = 10.0) -> None:
        self.url = (url or "").rstrip("/")
        self._token = token
        self.timeout_s = timeout_s

    def annotation(self, annotation_id: Any) -> dict:
        if not self.url or not self._token:
            raise LabelStudioError(
                f"the webhook carries no annotation result and no Label Studio URL and token are set "
                f"(--label-studio-url / ${URL_ENV}, --label-studio-token-file / ${TOKEN_ENV})"
            )
        if isinstance(annotation_id, bool) or not isinstance(annotation_id, int):
            raise LabelStudioError(f"annotation id {annotation_id!r} is not an integer")
        req = urllib.request.Request(
            f"{self.url}/api/annotations/{annotation_id}/",
            headers={"Authorization": f"Token {self._token}", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 (http(s) URL set by the operator)
                return json.loads(resp.read(8 * 1024 * 1024))
        except (OSError, ValueError) as exc:
            raise LabelStudioError(
                f"could not read annotation {annotation_id} from {self.url}: {type(exc).__name__}"
            ) from None


# ----------------------------------------------------------------------------------------- retraining
def deployment_trigger(deployment: str, db_path: str) -> Callable[[str], Any]:
    """A trigger that starts a run of the Prefect deployment ``deployment`` (the ``retrain-from-reviews``
    flow of prefect.yaml; ``make prefect-up`` serves it) for one prediction run, without waiting for it."""

    def fire(pred_run_id: str):
        from prefect.deployments import run_deployment

        params = {"db_path": str(Path(db_path).resolve()), "pred_run_id": pred_run_id, "min_new_decisions": 0}
        return str(run_deployment(deployment, parameters=params, timeout=0).id)

    return fire


class RetrainTrigger:
    """Counts the annotations stored; at ``every`` (0: never) it calls ``fire(pred_run_id)`` in a
    background thread (a webhook answers at once; a retrain takes minutes) and starts counting again.
    ``state()`` is what ``/health`` shows: the count, the triggers and the last one's outcome."""

    def __init__(self, every: int, fire: Callable[[str], Any]) -> None:
        self.every = every
        self.fire = fire
        self._lock = threading.Lock()
        self.count = 0
        self.triggered = 0
        self.last: dict | None = None
        self.threads: list[threading.Thread] = []

    def add(self, pred_run_id: str, n: int = 1) -> bool:
        with self._lock:
            self.count += n
            if not self.every or self.count < self.every:
                return False
            self.count, self.triggered = 0, self.triggered + 1
            self.last = {"pred_run_id": pred_run_id, "status": "starting", "at": time.time()}
            last = self.last
        thread = threading.Thread(target=self._run, args=(pred_run_id, last), name="ner-retrain", daemon=True)
        self.threads.append(thread)
        thread.start()
        return True

    def _run(self, pred_run_id: str, last: dict) -> None:
        try:
            out = self.fire(pred_run_id)
            last.update(status="started", result=None if out is None else str(out))
        except Exception as exc:  # the service keeps serving; /health says why the trigger failed
            logger.warning("retrain trigger for %s failed: %s", pred_run_id, exc)
            last.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:300])

    def state(self) -> dict:
        with self._lock:
            return {
                "every": self.every,
                "annotations_since_trigger": self.count,
                "triggered": self.triggered,
                "last": dict(self.last) if self.last else None,
            }


# ----------------------------------------------------------------------------------------- auth
class BasicAuthAsBearer:
    """ASGI middleware in front of :class:`app.serve_guard.RequestGuard`: ``Authorization: Basic
    base64(user:password)`` becomes ``Authorization: Bearer password``, so the guard compares the password
    with the API key (constant time) as it does a bearer token. Anything else passes unchanged."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = []
            for name, value in scope["headers"]:
                if name == b"authorization" and value[:6].lower() == b"basic ":
                    try:
                        _, _, password = base64.b64decode(value[6:].strip(), validate=True).partition(b":")
                    except ValueError:
                        password = b""
                    value = b"Bearer " + password if password else b"Basic (malformed)"
                headers.append((name, value))
            scope = dict(scope, headers=headers)
        return await self.app(scope, receive, send)


def env_settings(url: str | None, token_file: str | None) -> tuple[str | None, str | None]:
    """Label Studio's URL and API token: the flags, else ``$LABEL_STUDIO_URL`` / ``$LABEL_STUDIO_API_KEY``."""
    token = None
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise ValueError(f"--label-studio-token-file {path}: no such file")
        lines = path.read_text(encoding="utf-8").strip().splitlines()
        token = lines[0].strip() if lines else None
    return url or os.environ.get(URL_ENV) or None, token or os.environ.get(TOKEN_ENV) or None
