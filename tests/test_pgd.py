"""PGD adversarial training (``--adversarial pgd``) and the encoder learning rate by size
(``--learning_rate auto``): what each moves, what gradient it keeps, what a run saves and resumes."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tests.test_recipes import LABELS, _config, _killed_then_resumed, _same, _train, _weights

EMB = "encoder.embeddings.word_embeddings.weight"


def _model_and_batch(encoder_dir, decoder: str = "crf"):
    """A tiny model (seeded) and one batch of two sentences: ``(model, ids, attention_mask, gold)``."""
    from ner_core.model.encoder import load_encoder
    from ner_core.model.network import NERModel
    from ner_core.schemes import tag_set

    config = _config(encoder_dir, decoder)
    encoder, tok = load_encoder(config.encoder)
    torch.manual_seed(0)
    labels = LABELS if decoder == "span" else tag_set(LABELS, "BIOES")
    model = NERModel(config, labels, encoder)
    enc = tok(["张三在北京工作", "李四去上海"], padding=True, return_tensors="pt")
    ids, am = enc["input_ids"], enc["attention_mask"]
    if decoder == "span":
        gold = torch.tensor([[0, 0, 0, 1], [1, 1, 0, 1]])  # (row, label, start, end)
    else:
        gold = torch.zeros(ids.shape[0], ids.shape[1] - 2, dtype=torch.long)
    return model, ids, am, gold


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------ the attack itself
def test_pgd_keeps_each_move_within_epsilon_moves_only_the_batch_rows_and_restores_them(tiny_encoder_dir):
    from ner_core.training.recipes import PGD

    model, ids, am, tags = _model_and_batch(tiny_encoder_dir)
    weight = model.encoder.get_input_embeddings().weight
    original = weight.detach().clone()
    # 4 steps of 0.4 within 0.5: the projection has to pull the perturbation back
    pgd = PGD(model.encoder.get_input_embeddings(), epsilon=0.5, steps=4, alpha=0.4)
    rows, before = pgd.rows_grad(ids)
    others = torch.ones(weight.shape[0], dtype=torch.bool)
    others[rows] = False
    clean = model(ids, am, tags)
    clean.backward()
    clean_grads = _grads(model)
    norms, losses = [], []

    def ascent():
        delta = weight.detach() - original
        assert float(delta[others].abs().max()) == 0.0  # rows of tokens not in the batch stay
        norms.append(float(torch.linalg.vector_norm(delta[rows])))  # L2 over the whole row block
        losses.append(model(ids, am, tags))
        return losses[-1]

    with pgd.attack(rows, before, ascent) as moved:
        assert moved
        assert _same(_grads(model), clean_grads)  # the earlier steps leave every .grad as it was
        ascent()  # the point of the last step
    assert len(norms) == 4
    assert norms[0] == pytest.approx(0.4, rel=1e-5)  # the first move: alpha along the clean gradient
    assert all(n <= 0.5 * (1 + 1e-6) for n in norms), norms  # never outside the epsilon ball
    assert norms[-1] == pytest.approx(0.5, rel=1e-5)  # ... and pulled back onto it
    assert torch.equal(weight.detach(), original)  # restored bit for bit
    assert float(losses[-1].detach()) > float(clean.detach())  # the ascent raised the loss


def test_pgd_of_one_step_of_epsilon_is_fgm_exactly(tiny_encoder_dir, tmp_path):
    from ner_core.training.recipes import FGM, PGD

    model, ids, am, tags = _model_and_batch(tiny_encoder_dir)
    twin = copy.deepcopy(model)
    after = []
    for m, attack in ((model, FGM), (twin, PGD)):
        emb = m.encoder.get_input_embeddings()
        adversary = FGM(emb, 0.7) if attack is FGM else PGD(emb, 0.7, steps=1, alpha=0.7)
        rows, before = adversary.rows_grad(ids)
        torch.manual_seed(1)  # the same dropout in both
        m(ids, am, tags).backward()
        with adversary.attack(rows, before, lambda m=m: m(ids, am, tags)) as moved:
            assert moved
            after.append(emb.weight.detach().clone())
            m(ids, am, tags).backward()
    assert torch.equal(after[0], after[1])  # the same moved rows, bit for bit
    assert _same(_grads(model), _grads(twin))
    # and through the training loop: the same model
    _train(_config(tiny_encoder_dir, hard_epochs=1, adversarial="fgm", adv_epsilon=0.7), tmp_path / "fgm")
    one = {"adversarial": "pgd", "adv_epsilon": 0.7, "adv_steps": 1, "adv_alpha": 0.7}
    _train(_config(tiny_encoder_dir, hard_epochs=1, **one), tmp_path / "pgd")
    assert _same(_weights(tmp_path / "fgm"), _weights(tmp_path / "pgd"))


@pytest.mark.parametrize("decoder", ["crf", "span"])
def test_pgd_keeps_the_clean_gradient_plus_the_last_steps(tiny_encoder_dir, decoder):
    """Against a hand-written PGD on a copy of the model: K moves, each alpha g / ||g|| at the point
    reached, projected onto the epsilon ball; the gradient kept is clean + the last adversarial pass's."""
    from ner_core.training.recipes import PGD

    eps, alpha, steps = 0.6, 0.25, 3
    model, ids, am, gold = _model_and_batch(tiny_encoder_dir, decoder)
    model.eval()  # no dropout: both sides see the same function
    ref = copy.deepcopy(model)

    params = [p for p in ref.parameters() if p.requires_grad]
    names = [n for n, p in ref.named_parameters() if p.requires_grad]
    w = ref.encoder.get_input_embeddings().weight
    rows = ids.unique()
    g_clean = torch.autograd.grad(ref(ids, am, gold), params, allow_unused=True)  # the pooler: unused
    g = g_clean[names.index(EMB)][rows]
    start = w.data[rows].clone()
    delta = alpha * g / g.norm()
    for _ in range(steps - 1):
        w.data[rows] = start + delta
        (g,) = torch.autograd.grad(ref(ids, am, gold), w)
        delta = delta + alpha * g[rows] / g[rows].norm()
        if delta.norm() > eps:
            delta = delta * (eps / delta.norm())
    w.data[rows] = start + delta
    g_adv = torch.autograd.grad(ref(ids, am, gold), params, allow_unused=True)
    expected = {n: c + a for n, c, a in zip(names, g_clean, g_adv, strict=True) if c is not None}

    pgd = PGD(model.encoder.get_input_embeddings(), eps, steps=steps, alpha=alpha)
    rows, before = pgd.rows_grad(ids)
    model(ids, am, gold).backward()
    with pgd.attack(rows, before, lambda: model(ids, am, gold)):
        model(ids, am, gold).backward()
    got = _grads(model)
    assert got.keys() == expected.keys()
    for n in expected:
        assert torch.allclose(got[n], expected[n], rtol=1e-5, atol=1e-7), n
    assert not torch.allclose(got[EMB], g_clean[names.index(EMB)] * 2, rtol=1e-3)  # an adversarial gradient


def test_pgd_with_a_frozen_encoder_is_refused_in_one_line(tiny_encoder_dir, tmp_path):
    config = _config(tiny_encoder_dir, hard_epochs=1, adversarial="pgd").with_overrides(
        {"encoder.freeze": True}
    )
    with pytest.raises(ValueError, match="adversarial pgd moves the word embeddings .* frozen: drop"):
        _train(config, tmp_path / "run")


# ------------------------------------------------------------------ in training
def test_every_adversarial_pass_uses_the_runs_loss_distillations_too(tiny_encoder_dir):
    """With a distiller its loss replaces the gold loss: PGD's ascent steps and its last pass use it too."""
    from types import SimpleNamespace

    from ner_core.training.loop import _forward_backward, weighted_loss
    from ner_core.training.recipes import PGD

    model, ids, am, tags = _model_and_batch(tiny_encoder_dir)
    calls = []

    def distill_loss(m, batch):
        calls.append(m)
        return weighted_loss(m, batch) * 2.0

    run = SimpleNamespace(
        config=_config(tiny_encoder_dir, adversarial="pgd", adv_steps=3),
        adversary=PGD(model.encoder.get_input_embeddings(), 1.0, steps=3),
        distill=SimpleNamespace(loss=distill_loss),
        model=model,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        precision="fp32",
        device=torch.device("cpu"),
    )
    batch = {"input_ids": ids, "attention_mask": am, "tags": tags}
    _forward_backward(run, batch)
    assert len(calls) == 1 + 3  # the clean pass, two ascent steps and the last adversarial pass


def test_pgd_trains_under_bf16_on_the_span_decoder_with_accumulation(tiny_encoder_dir, tmp_path):
    common = {"hard_epochs": 1, "precision": "bf16", "grad_accum_steps": 2, "adv_epsilon": 1.0}
    fgm = _train(_config(tiny_encoder_dir, "span", adversarial="fgm", **common), tmp_path / "fgm")
    pgd = _train(_config(tiny_encoder_dir, "span", adversarial="pgd", **common), tmp_path / "pgd")
    assert fgm.precision == pgd.precision == "bf16"
    assert fgm.history[0].train_loss != pgd.history[0].train_loss  # later batches see other weights
    assert not torch.equal(_weights(tmp_path / "fgm")[EMB], _weights(tmp_path / "pgd")[EMB])


@pytest.mark.parametrize(
    "recipe",
    [{"adversarial": "pgd", "adv_steps": 2, "adv_alpha": 0.4}, {"adversarial": "fgm", "old_config": True}],
    ids=["pgd", "fgm-saved-before-pgd"],
)
def test_a_run_killed_after_an_epoch_resumes_to_the_same_weights(tiny_encoder_dir, tmp_path, recipe):
    """PGD's extra passes draw dropout from the run's generator, which the checkpoint holds; an FGM run
    whose configuration was saved before PGD (no adv_steps, adv_alpha) resumes as it was trained."""
    from ner_core.config import NERConfig

    recipe = dict(recipe)
    old = recipe.pop("old_config", False)
    config = _config(tiny_encoder_dir, hard_epochs=2, **recipe)
    _train(config, tmp_path / "whole")
    if old:
        doc = json.loads(config.to_json())
        for k in ("adv_steps", "adv_alpha"):
            doc["training"].pop(k, None)
        config = NERConfig.model_validate(doc)
    _killed_then_resumed(config, tmp_path / "part")
    assert _same(_weights(tmp_path / "whole"), _weights(tmp_path / "part"))


# ------------------------------------------------------------------ configuration and CLI
def test_pgd_settings_default_save_and_refuse_as_documented():
    from ner_core.config import NERConfig

    # an old configuration (no adv_steps / adv_alpha) reads them as their defaults, which mean nothing
    # without pgd; a saved FGM or plain configuration does not write them, so older code reads it
    old = NERConfig.model_validate({"training": {"adversarial": "fgm", "adv_epsilon": 0.5}})
    assert (old.training.adv_steps, old.training.adv_alpha) == (3, None)
    assert not {"adv_steps", "adv_alpha"} & set(json.loads(old.to_json())["training"])
    # a PGD configuration writes all its settings, defaults included (a resume keeps them)
    pgd = NERConfig.model_validate({"training": {"adversarial": "pgd"}})
    saved = json.loads(pgd.to_json())["training"]
    assert (saved["adv_epsilon"], saved["adv_steps"], saved["adv_alpha"]) == (1.0, 3, None)
    assert NERConfig.model_validate_json(pgd.to_json()) == pgd
    with pytest.raises(ValueError, match="training.adv_steps applies to --adversarial pgd only"):
        NERConfig.model_validate({"training": {"adversarial": "fgm", "adv_steps": 5}})


def test_ner_train_help_shows_pgd_and_the_learning_rate_choice_with_their_defaults(capsys):
    from app.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "{none,fgm,pgd}" in out
    assert "--adv_steps ADV_STEPS, --adv-steps ADV_STEPS pgd: ascent steps per batch (default: 3)" in out
    assert "(unset: adv_epsilon / adv_steps) (default: None)" in out
    assert "auto: chosen by the encoder's parameter count" in out and "(default: 5e-05)" in out


def test_learning_rate_takes_a_number_or_auto_on_the_command_line(capsys):
    from app.cli import build_parser
    from app.commands.config_options import build_config

    parser = build_parser()
    for value, want in (("auto", "auto"), ("2e-5", 2e-5)):
        args = parser.parse_args(["train", "--learning_rate", value])
        assert build_config(args).training.learning_rate == want
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--learning_rate", "fast"])
    assert "expected a number or auto, got 'fast'" in capsys.readouterr().err


# ------------------------------------------------------------------ learning rate by encoder size
def _meta_bert(layers: int, hidden: int) -> torch.nn.Module:
    """A BERT of the given shape on the meta device (no memory): Chinese BERT's vocabulary."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=21128,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        intermediate_size=hidden * 4,
    )
    with torch.device("meta"):
        return BertModel(cfg)


def test_the_learning_rate_table_by_encoder_size(tiny_encoder_dir):
    from ner_core.config import NERConfig
    from ner_core.model.encoder import load_encoder
    from ner_core.training.recipes import encoder_learning_rate, resolve_learning_rate

    assert encoder_learning_rate(40_000_000 - 1) == 1e-4 and encoder_learning_rate(40_000_000) == 5e-5
    assert encoder_learning_rate(300_000_000 - 1) == 5e-5 and encoder_learning_rate(300_000_000) == 2e-5
    auto = NERConfig.model_validate({"training": {"learning_rate": "auto"}})
    tiny, _ = load_encoder(_config(tiny_encoder_dir).encoder)
    m3e_small = _meta_bert(4, 512)  # m3e-small's shape: 24M parameters
    base, large = _meta_bert(12, 768), _meta_bert(24, 1024)  # 102M, 325M
    for encoder, want in ((tiny, 1e-4), (m3e_small, 1e-4), (base, 5e-5), (large, 2e-5)):
        assert resolve_learning_rate(auto, encoder).training.learning_rate == want
    explicit = NERConfig.model_validate({"training": {"learning_rate": 3e-5}})
    assert resolve_learning_rate(explicit, large) is explicit  # an explicit rate stays


def test_learning_rate_auto_is_the_number_in_the_optimiser_and_the_saved_configs(tiny_encoder_dir, tmp_path):
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.config import NERConfig

    run = tmp_path / "auto"
    _train(_config(tiny_encoder_dir, hard_epochs=1, learning_rate="auto"), run)
    groups = json.loads((run / "checkpoint.json").read_text())["optimizer"]["param_groups"]
    lr = {g["name"]: g["initial_lr"] for g in groups}
    assert lr["encoder"] == lr["encoder_no_decay"] == 1e-4  # the tiny encoder: under 40M parameters
    assert lr["head"] == 1e-3  # the head's own rate, untouched
    saved = NERConfig.from_file(run / "config.json")
    assert saved.training.learning_rate == 1e-4
    assert load_model_dir(run / "model").config.training.learning_rate == 1e-4
    # a re-run from the saved configuration is the same run
    _train(saved, tmp_path / "again")
    assert _same(_weights(run), _weights(tmp_path / "again"))
