"""Distillation (issue 26): the CRF loss against enumeration of every path (its gradient: student marginals
minus teacher marginals), the span loss's targets, ``ner train --teacher`` end to end with tiny encoders
(a model that loads and tags, the lineage in metrics.json), refusals in one line, kill -9 and resume to the
same model, and old configurations reading distillation as off."""

from __future__ import annotations

import itertools
import json
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import SAMPLE

DISTILL_FIELDS = ("teacher", "distill_alpha", "distill_temperature")


# ------------------------------------------------------------------ the CRF loss, by enumeration
def _crf(K: int, constrained: bool, seed: int):
    from ner_core.model.crf import ConstrainedCRF

    g = torch.Generator().manual_seed(seed)
    allowed = None
    if constrained:  # tag 1 may not start, 2 may not follow 0, 0 may not end
        trans = torch.ones(K, K, dtype=torch.bool)
        trans[0, 2] = False
        start, end = torch.ones(K, dtype=torch.bool), torch.ones(K, dtype=torch.bool)
        start[1], end[0] = False, False
        allowed = (start, trans, end)
    crf = ConstrainedCRF(K, allowed)
    with torch.no_grad():
        for p in crf.crf.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return crf


def _path_scores(crf, em, length, tau=1.0, constrained=False):
    """Every path of ``length`` steps and its score (``/ tau``; forbidden moves removed when constrained)."""
    c = crf.crf
    K = em.shape[1]
    paths = list(itertools.product(range(K), repeat=length))
    scores = []
    for y in paths:
        s = c.start_transitions[y[0]] + c.end_transitions[y[-1]] + sum(em[t, y[t]] for t in range(length))
        s = s + sum(c.transitions[y[t - 1], y[t]] for t in range(1, length))
        ok = not constrained or (
            bool(crf.allowed_start[y[0]]) and bool(crf.allowed_end[y[-1]])
            and all(bool(crf.allowed_trans[y[t - 1], y[t]]) for t in range(1, length))
        )  # fmt: skip
        scores.append(s / tau if ok else torch.tensor(float("-inf"), dtype=s.dtype))
    return paths, torch.stack(scores)


@pytest.mark.parametrize("backend", ["c", "torch"])
@pytest.mark.parametrize("K", [3, 5])
def test_crf_distillation_loss_and_gradient_match_enumeration(backend, K, one_thread):
    """L_kd = log Z_s - E_q[score_s] with q the constrained teacher at temperature 2, on two rows (lengths 4
    and 3); its value and gradients equal those of -sum_y q(y) log p_s(y) over every path, and the gradient
    wrt the student's emissions is the student's marginals minus the teacher's."""
    from ner_core.model import _ckernel
    from ner_core.training.distillation import crf_kd_loss, teacher_targets

    if backend == "c" and _ckernel.load() is None:
        pytest.skip("no C compiler here")
    tau, T = 2.0, 4
    student, teacher = _crf(K, False, 1), _crf(K, True, 2)
    g = torch.Generator().manual_seed(3)
    em_s = torch.randn(2, T, K, generator=g).requires_grad_()
    em_t = torch.randn(2, T, K, generator=g) * 3
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    q, pairs = teacher_targets(teacher, em_t, mask, tau, backend=backend)
    loss = crf_kd_loss(student, em_s, mask, q, pairs, backend=backend)  # (2,)
    grads = torch.autograd.grad(loss.sum(), [em_s, *student.crf.parameters()])

    em_b = em_s.detach().double().requires_grad_()
    brute, student_marg, teacher_marg = [], torch.zeros(2, T, K), torch.zeros(2, T, K)
    for b, n in enumerate((4, 3)):
        paths, s = _path_scores(student, em_b[b], n)
        _, t = _path_scores(teacher, em_t[b].double(), n, tau, constrained=True)
        qy = torch.softmax(t, 0)
        brute.append(-(qy.detach() * torch.log_softmax(s, 0)).sum())
        for y, ps, pt in zip(paths, torch.softmax(s, 0).detach(), qy.detach(), strict=True):
            for i, k in enumerate(y):
                student_marg[b, i, k] += float(ps)
                teacher_marg[b, i, k] += float(pt)
    brute_grads = torch.autograd.grad(torch.stack(brute).sum(), [em_b, *student.crf.parameters()])
    assert torch.allclose(loss.double(), torch.stack(brute).detach(), atol=1e-4)
    assert torch.allclose(q, teacher_marg, atol=1e-5) and float(q[1, 3].abs().sum()) == 0.0
    for mine, ref in zip(grads, brute_grads, strict=True):
        assert torch.allclose(mine.double(), ref.double(), atol=1e-4), (mine, ref)
    assert torch.allclose(grads[0], student_marg - teacher_marg, atol=1e-5)
    assert teacher_marg[:, 0, 1].abs().max() < 1e-6  # the forbidden start: probability 0 under the teacher


def test_the_gold_targets_give_the_crf_likelihood(one_thread):
    """One-hot targets make the same formula the CRF's negative log-likelihood, so one log Z serves both."""
    from ner_core.training.distillation import crf_kd_loss, gold_targets

    crf = _crf(4, True, 5)
    em = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(6))
    mask = torch.arange(6).unsqueeze(0) < torch.tensor([[6], [2], [1]])
    tags = torch.randint(0, 4, (3, 6), generator=torch.Generator().manual_seed(7)).masked_fill(~mask, 0)
    u, p = gold_targets(tags, mask, 4)
    nll = crf_kd_loss(crf, em, mask, u, p).mean()
    assert torch.allclose(nll, crf.neg_log_likelihood(em, tags, mask), atol=1e-5)


def test_span_targets_are_the_teachers_probabilities_at_the_temperature():
    """The span loss is smallest where the student's logits are the teacher's / tau; invalid cells never
    count."""
    from ner_core.training.distillation import span_kd_loss

    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 3, 5, 4, generator=g) * 4
    valid = torch.rand(2, 5, 4, generator=g) > 0.3
    at = (teacher / 2.0).requires_grad_()
    loss = span_kd_loss(at, teacher, valid, tau=2.0)
    (grad,) = torch.autograd.grad(loss.sum(), at)
    assert grad.abs().max() < 1e-6  # the minimum: sigmoid(student) = sigmoid(teacher / tau)
    moved = span_kd_loss(at.detach() + 0.5, teacher, valid, tau=2.0)
    assert bool((moved > loss.detach()).all())
    masked = teacher.clone()
    masked[~valid.unsqueeze(1).expand_as(masked)] = 99.0  # invalid cells never count
    assert torch.allclose(span_kd_loss(at.detach(), masked, valid, tau=2.0), loss.detach())


# ------------------------------------------------------------------ configuration
def test_old_configurations_read_distillation_as_off_and_a_plain_one_saves_none_of_it():
    from ner_core.config import NERConfig
    from tests.conftest import LEGACY

    old = NERConfig.from_file(next((LEGACY / "runs").glob("*/config.json")))
    assert not old.training.distilling and old.training.teacher is None
    assert not set(DISTILL_FIELDS) & set(json.loads(old.to_json())["training"])
    assert not set(DISTILL_FIELDS) & set(json.loads(NERConfig().to_json())["training"])
    on = NERConfig.model_validate({"training": {"teacher": "t", "unlabeled": ["a.txt"]}})
    saved = json.loads(on.to_json())["training"]
    assert set(DISTILL_FIELDS) <= set(saved) and saved["distill_alpha"] == 0.5  # a resume keeps them
    assert on.training.distilling and not on.training.self_training  # its unlabeled texts are distilled on
    assert "silver_weight" not in saved and NERConfig.model_validate_json(on.to_json()) == on
    with pytest.raises(ValueError, match="distill_alpha applies to distillation only: add --teacher"):
        NERConfig.model_validate({"training": {"distill_alpha": 0.3}})
    with pytest.raises(
        ValueError, match="self_train_rounds applies to self-training, which --teacher replaces"
    ):
        NERConfig.model_validate({"training": {"teacher": "t", "unlabeled": ["a"], "self_train_rounds": 2}})


def test_the_distillation_flags_of_ner_train_show_their_defaults(capsys):
    from app.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--teacher" in out and "--distill_alpha" in out and "--distill_temperature" in out
    assert "(default: 1.0)" in out


def test_the_distill_flow_refuses_a_configuration_without_a_teacher(tmp_path):
    from flows.distill import distill_flow
    from ner_core.config import NERConfig

    with pytest.raises(ValueError, match="distill needs a teacher"):
        distill_flow.fn(str(tmp_path / "ner.duckdb"), NERConfig())


# ------------------------------------------------------------------ end to end
def _records(split: str) -> list[dict]:
    with open(SAMPLE / f"{split}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_encoder_dir, sample_texts) -> dict:
    """A dataset (40 train, 8 dev, 8 test), unlabeled texts (30 other train texts, 2 dev texts), a teacher
    trained on it (the session's tiny encoder) and a smaller student encoder with another vocabulary."""
    from app.cli import main
    from flows import steps
    from ner_core.model.encoder import make_tiny_encoder

    d = tmp_path_factory.mktemp("distill")
    train, dev, test = _records("train"), _records("dev"), _records("test")
    files = {"train": train[:40], "dev": dev[:8], "test": test[:8]}
    for split, recs in files.items():
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    unlabeled = [r["text"] for r in train[40:70]] + [dev[0]["text"], dev[1]["text"]]
    (d / "unlabeled.txt").write_text("\n".join(unlabeled) + "\n", encoding="utf-8")
    db = str(d / "ner.duckdb")
    steps.ingest_step(db, "tiny", {k: str(d / f"{k}.jsonl") for k in files})
    student_enc = make_tiny_encoder(d / "student-encoder", sample_texts[::2], hidden_size=16, num_heads=2)
    common = [
        "train",
        "--no-prefect",
        "--db",
        db,
        "--dataset",
        "tiny",
        "--max_len",
        "48",
        "--num_threads",
        "1",
    ]
    common += ["--batch_size", "8", "--learning_rate", "1e-3", "--precision", "fp32", "--head", "bigru"]
    common += ["--rnn_units", "16"]
    assert (
        main([*common, "--encoder", str(tiny_encoder_dir), "--hard_epochs", "2", "--runs-root", str(d)]) == 0
    )
    teacher = next(d.glob("*/model"))
    student = [*common, "--encoder", str(student_enc), "--hard_epochs", "3", "--teacher", str(teacher)]
    student += ["--unlabeled", str(d / "unlabeled.txt"), "--distill_temperature", "2"]
    return {"db": db, "teacher": teacher, "student": student, "encoder": student_enc, "dir": d}


def test_teacher_ids_are_the_same_characters_through_the_teachers_vocabulary(setup):
    """Each batch row's teacher ids are its own chunk's characters through the teacher's vocabulary (the
    student's encoder has another one), in the order the student's batches come."""
    from transformers import AutoTokenizer

    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.data.alignment import CharAligner
    from ner_core.data.batching import TaggedDataset, length_buckets
    from ner_core.training.distillation import TeacherAligned
    from storage.datasets import load_documents

    teacher = load_model_dir(setup["teacher"])
    docs = load_documents(setup["db"], "tiny", None)
    s_al, t_al = (
        CharAligner(AutoTokenizer.from_pretrained(str(setup["encoder"]))),
        CharAligner(teacher.tokenizer),
    )
    base = TaggedDataset(docs, s_al, teacher.tags, "BIOES", 48)
    lengths = [len(it.char_ids) for it in base.items]
    order = length_buckets(lengths, 8, shuffle=True, seed=3)
    batches = list(TeacherAligned(base, t_al).batches(8, shuffle=True, seed=3))
    assert len(batches) == len(order)
    differ = False
    for idx, batch in zip(order, batches, strict=True):
        for r, i in enumerate(idx):
            it = base.items[i]
            text = docs[it.chunk.doc_index].text[it.chunk.start : it.chunk.end]
            n = len(text)
            assert batch["input_ids"][r, 1 : n + 1].tolist() == it.char_ids
            assert batch["teacher_input_ids"][r, 1 : n + 1].tolist() == t_al.char_ids(text)
            assert batch["teacher_input_ids"][r, n + 1] == t_al.sep_id
            differ |= it.char_ids != t_al.char_ids(text)
    assert differ  # the two vocabularies number the characters differently


def test_ner_train_teacher_distils_records_its_teacher_and_resumes_after_a_kill(setup, tmp_path, capsys):
    """A smaller student with another vocabulary, on gold + the teacher's targets + unlabeled texts: its
    model loads and tags, its metrics.json names the teacher; killed -9 after its first checkpoint and
    resumed, it ends at the uninterrupted run's weights."""
    from app.cli import main
    from flows.contracts import TrainSummary
    from flows.distill import distill_markdown
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.tagger import Tagger
    from ner_core.training.distillation import teacher_sha256
    from storage import runs as runs_db
    from tests.test_training import _ner

    student = setup["student"]
    assert main([*student, "--runs-root", str(tmp_path / "full")]) == 0
    out = capsys.readouterr().out
    full = json.loads(out[out.index("{") :])
    assert "distillation: teacher " in out and "30 unlabeled texts" in out
    lineage = json.loads(Path(full["model_dir"], "metrics.json").read_text())["distillation"]
    assert lineage["teacher"] == lineage["teacher_dir"] == str(setup["teacher"].resolve())
    assert lineage["teacher_sha256"] == teacher_sha256(setup["teacher"]) and lineage["alpha"] == 0.5
    assert lineage["temperature"] == 2.0 and lineage["unlabeled"]["texts"] == 30
    assert lineage["unlabeled"]["left_out"] == {"in_dev_test": 2, "duplicate": 0}
    assert json.loads((Path(full["run_dir"]) / "distillation.json").read_text()) == lineage
    loaded = load_model_dir(full["model_dir"])
    assert (
        loaded.tags == load_model_dir(setup["teacher"]).tags and loaded.model.encoder.config.hidden_size == 16
    )
    tagger = Tagger(loaded.model, loaded.tokenizer, max_len=48, precision="fp32")
    assert len(tagger.predict_documents(["张三在北京工作"])) == 1
    assert [e["epoch"] for e in runs_db.epochs(setup["db"], full["run_id"])] == [1, 2, 3]
    report = distill_markdown(TrainSummary(**full))  # the distill flow's artifact
    assert f"teacher: `{setup['teacher'].resolve()}`" in report and "30 texts from" in report

    killed = _ner(*student, "--runs-root", str(tmp_path / "killed"))
    deadline, ckpt = time.time() + 600, None
    while time.time() < deadline and ckpt is None and killed.poll() is None:
        ckpt = next(iter((tmp_path / "killed").glob("*/checkpoint.json")), None)
        time.sleep(0.05)
    assert ckpt is not None, killed.communicate()[0]
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert not (ckpt.parent / "history.json").exists()  # it really did not finish
    assert main(["train", "--no-prefect", "--db", setup["db"], "--resume", ckpt.parent.name]) == 0
    a = load_file(str(Path(full["model_dir"]) / "model.safetensors"))
    b = load_file(str(ckpt.parent / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    hist = [json.loads((Path(p) / "history.json").read_text()) for p in (full["run_dir"], ckpt.parent)]
    assert [h["train_loss"] for h in hist[0]] == [h["train_loss"] for h in hist[1]]


def test_a_teacher_that_cannot_teach_this_student_is_refused_in_one_line(setup, tmp_path, capsys):
    from app.cli import main
    from ner_core.config import NERConfig
    from ner_core.training.distillation import load_teacher

    teacher = setup["teacher"]
    labels = ["FIN", "LOC", "ORG", "PER"]
    cfg = NERConfig.model_validate({"data": {"max_len": 48}})
    assert load_teacher(teacher, cfg, labels).model.training is False
    with pytest.raises(ValueError) as e:
        load_teacher(teacher, cfg, ["LOC", "PER"])
    msg = str(e.value)
    assert (
        "\n" not in msg
        and "'B-FIN'" in msg
        and "['O', 'B-LOC'" in msg
        and "share the label set and scheme" in msg
    )
    with pytest.raises(ValueError, match=r"tags \(scheme BIOES; the student's BIO\)"):
        load_teacher(teacher, cfg.with_overrides({"data.scheme": "BIO"}), labels)
    with pytest.raises(ValueError, match="its decoder is crf, the student's span"):
        load_teacher(teacher, cfg.with_overrides({"decoder.type": "span"}), labels)
    # a run id names its model (the teacher's run is in the database)
    from flows import steps

    assert steps._teacher_dir(setup["db"], teacher.parent.name) == teacher
    # through the command line: one line, exit status 2, no run started
    args = [a for a in setup["student"] if a != str(teacher)]
    i = args.index("--teacher")
    assert main([*args[: i + 1], "no-such-run", *args[i + 1 :], "--runs-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--teacher no-such-run: neither a model directory nor a run" in err[0]


@pytest.mark.parametrize("attack", ["symlink", "oversized"])
def test_an_untrusted_teacher_folder_is_refused_before_training(setup, tmp_path, attack):
    """The teacher folder is read with the model loader's checks: a file linking out of it, or one far
    larger than such a file can be, is refused in one line naming it."""
    import shutil

    from ner_core.artifacts.modeldir import ModelDirError
    from ner_core.config import NERConfig
    from ner_core.model.untrusted import MAX_JSON_BYTES
    from ner_core.training.distillation import load_teacher

    bad = tmp_path / "teacher"
    shutil.copytree(setup["teacher"], bad)
    victim = next(p for p in (bad / "tokenizer").iterdir() if p.suffix == ".json")
    if attack == "symlink":
        secret = tmp_path / "secret.json"
        secret.write_text("{}")
        victim.unlink()
        victim.symlink_to(secret)
    else:
        with open(victim, "r+b") as fh:
            fh.truncate(MAX_JSON_BYTES * 64)  # sparse: large on paper, nothing on disk
    with pytest.raises(ModelDirError) as e:
        load_teacher(bad, NERConfig.model_validate({"data": {"max_len": 48}}), ["FIN", "LOC", "ORG", "PER"])
    assert "\n" not in str(e.value) and str(bad) in str(e.value)


# ------------------------------------------------------------------ the batch loss
def _models_and_batch(encoder_dir, decoder: str, unlabeled_entities: bool):
    from ner_core.config import NERConfig
    from ner_core.data.alignment import CharAligner
    from ner_core.data.batching import TaggedDataset
    from ner_core.data.span_batching import SpanDataset
    from ner_core.documents import Document, Entity
    from ner_core.model.encoder import load_encoder
    from ner_core.model.network import NERModel
    from ner_core.schemes import tag_set
    from ner_core.training.distillation import TeacherAligned

    labels = ["FIN", "LOC", "ORG", "PER"]
    config = NERConfig.model_validate(
        {"encoder": {"name": str(encoder_dir)}, "head": {"type": "bigru", "rnn_units": 8},
         "decoder": {"type": decoder, **({"max_span_len": 6} if decoder == "span" else {})},
         "data": {"max_len": 48}}
    )  # fmt: skip
    span = decoder == "span"
    out = []
    for seed in (0, 1):  # student, teacher
        encoder, tok = load_encoder(config.encoder)
        torch.manual_seed(seed)
        out.append(NERModel(config, labels if span else tag_set(labels, "BIOES"), encoder).eval())
    recs = [r for r in _records("train") if len(r["text"]) <= 40 and r["entities"]][:5]
    docs = [Document(doc_id=str(i), text=r["text"], entities=[Entity(**e) for e in r["entities"]])
            for i, r in enumerate(recs)]  # fmt: skip
    if not unlabeled_entities:  # the unlabeled documents carry no gold; their gold term must not matter
        docs[3:] = [d.model_copy(update={"entities": []}) for d in docs[3:]]
    al, w = CharAligner(tok), [1.0, 1.0, 1.0, 0.0, 0.0]
    ds = SpanDataset(docs, al, labels, 48, 6, w) if span else TaggedDataset(
        docs, al, out[0].tags, "BIOES", 48, w
    )  # fmt: skip
    batch = next(iter(TeacherAligned(ds, al).batches(5, shuffle=False)))
    return out[0], out[1], tok, batch


@pytest.mark.parametrize("decoder", ["crf", "span"])
def test_the_batch_loss_mixes_gold_and_teacher_and_unlabeled_rows_add_only_the_teacher(
    tiny_encoder_dir, decoder, one_thread
):
    """alpha 0 is the plain weighted loss (the rows of weight 0 add nothing); alpha 0.5 is half of it plus
    half the teacher's term over every row, whatever gold the weight-0 rows carry; the teacher gets no
    gradient."""
    from ner_core.training.distillation import Distiller
    from ner_core.training.loop import weighted_loss

    student, teacher, tok, batch = _models_and_batch(tiny_encoder_dir, decoder, False)
    _, _, _, other = _models_and_batch(tiny_encoder_dir, decoder, True)
    gold = "tags" if decoder == "crf" else "targets"
    assert not torch.equal(batch[gold], other[gold]) and sorted(batch["weight"].tolist()) == [0, 0, 1, 1, 1]
    plain = weighted_loss(student, batch)
    assert torch.allclose(Distiller(teacher, tok, 0.0, 1.0).loss(student, batch), plain, atol=1e-5)
    kd = Distiller(teacher, tok, 1.0, 2.0).loss(student, batch)
    half = Distiller(teacher, tok, 0.5, 2.0)
    mixed = half.loss(student, batch)
    assert torch.allclose(mixed, 0.5 * plain + 0.5 * kd, atol=1e-5) and float(kd.detach()) > 0
    assert torch.allclose(half.loss(student, other), mixed, atol=1e-5)  # weight 0: its gold is ignored
    mixed.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
