"""Heads: factory, shapes, padding invariance, IDCNN weight sharing."""

from __future__ import annotations

import pytest
import torch

from ner_core.config import HeadConfig, HeadType
from ner_core.model.heads import BiRNNHead, IDCNNHead, IdentityHead, build_head, head_choices

H = 12


def cfg(kind: str, **kw) -> HeadConfig:
    base = {"rnn_units": 5, "cnn_filters": 6, "cnn_blocks": 3, "dropout_rate": 0.0}
    base.update(kw)
    return HeadConfig(type=kind, **base)


def batch(B=4, T=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, H, generator=g)
    lengths = torch.tensor([T, 3, 1, 6][:B])
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    return x, mask


@pytest.mark.parametrize(
    "kind,cls,out",
    [("bilstm", BiRNNHead, 10), ("bigru", BiRNNHead, 10), ("idcnn", IDCNNHead, 6), ("none", IdentityHead, H)],
)
def test_factory_builds_each_head_with_its_output_size(kind, cls, out):
    torch.manual_seed(0)
    head = build_head(cfg(kind), H)
    assert isinstance(head, cls)
    assert head.output_size == out
    x, mask = batch()
    y = head(x, mask)
    assert y.shape == (4, 9, out)
    if kind != "none":
        assert y[~mask].abs().sum() == 0  # padded positions are zero
        assert y[mask].abs().sum() > 0


def test_rnn_cell_types_and_layers():
    lstm = build_head(cfg("bilstm", rnn_num_hidden_layers=2), H)
    gru = build_head(cfg("bigru"), H)
    assert isinstance(lstm.rnn, torch.nn.LSTM) and lstm.rnn.num_layers == 2 and lstm.rnn.bidirectional
    assert isinstance(gru.rnn, torch.nn.GRU) and gru.rnn.hidden_size == 5


@pytest.mark.parametrize("kind", ["bilstm", "bigru", "idcnn"])
def test_padded_rows_equal_unpadded_rows(kind):
    torch.manual_seed(1)
    head = build_head(cfg(kind, rnn_num_hidden_layers=2, cnn_dilations=[1, 2, 4]), H).eval()
    x, mask = batch()
    x = x.masked_fill(~mask.unsqueeze(2), 7.0)  # garbage in the padding must not leak
    y = head(x, mask)
    for b in range(4):
        n = int(mask[b].sum())
        alone = head(x[b : b + 1, :n], torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(y[b : b + 1, :n], alone, atol=1e-5, rtol=1e-5)


def test_idcnn_shares_one_block_across_iterations():
    c = cfg("idcnn", cnn_blocks=4, cnn_dilations=[1, 1, 2])
    head = build_head(c, H)
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [m.dilation[0] for m in convs] == [1, 1, 2]  # one block, not four copies
    n_params = sum(p.numel() for p in head.parameters())
    more = build_head(cfg("idcnn", cnn_blocks=8, cnn_dilations=[1, 1, 2]), H)
    assert sum(p.numel() for p in more.parameters()) == n_params  # more iterations, same weights
    # but more iterations change the receptive field: output differs
    torch.manual_seed(3)
    a = build_head(c, H).eval()
    torch.manual_seed(3)
    b = build_head(cfg("idcnn", cnn_blocks=1, cnn_dilations=[1, 1, 2]), H).eval()
    x, mask = batch()
    assert not torch.allclose(a(x, mask), b(x, mask))


def test_idcnn_receptive_field_grows_with_iterations():
    torch.manual_seed(0)
    T = 40
    x = torch.zeros(1, T, H)
    mask = torch.ones(1, T, dtype=torch.bool)
    for blocks, reach in [(1, 4), (2, 8)]:  # dilations 1,1,2 with kernel 3: 1+1+2 = 4 per block
        head = build_head(cfg("idcnn", cnn_blocks=blocks), H).eval()
        base = head(x, mask)
        x2 = x.clone()
        x2[0, 20] = 5.0
        changed = (head(x2, mask) - base).abs().sum(-1)[0] > 1e-7  # (T,)
        idx = changed.nonzero().squeeze(1)
        assert idx.min().item() >= 20 - reach and idx.max().item() <= 20 + reach
        assert changed[20 - reach] or changed[20 + reach]


def test_identity_head_returns_input():
    x, mask = batch()
    head = build_head(cfg("none"), H)
    assert head(x, mask) is x
    assert list(head.parameters()) == []


def test_unknown_head_and_bad_inputs_raise_clear_errors():
    bad = HeadConfig.model_construct(**{**HeadConfig().model_dump(), "type": "transformer"})
    with pytest.raises(
        ValueError, match=r"unknown head type 'transformer'; choose one of: bilstm, bigru, idcnn, none"
    ):
        build_head(bad, H)
    assert head_choices() == [h.value for h in HeadType]
    with pytest.raises(ValueError, match="expected a positive int input_size, got 0"):
        build_head(cfg("bilstm"), 0)
    head = build_head(cfg("idcnn"), H)
    x, mask = batch()
    with pytest.raises(ValueError, match=r"expected x of shape \(B, T, 12\), got \(4, 9, 5\)"):
        head(torch.randn(4, 9, 5), mask)
    with pytest.raises(ValueError, match=r"expected a bool mask of shape \(4, 9\)"):
        head(x, mask.long())


def test_rnn_handles_empty_rows():
    head = build_head(cfg("bilstm"), H)
    x = torch.randn(2, 5, H)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :3] = True
    y = head(x, mask)
    assert y.shape == (2, 5, 10) and y[1].abs().sum() == 0 and y[0, :3].abs().sum() > 0


def _packed_reference(head: BiRNNHead, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The bidirectional RNN as torch runs it over packed sequences (the computation the head replaces)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    packed = pack_padded_sequence(x, mask.sum(1).clamp(min=1), batch_first=True, enforce_sorted=False)
    out, _ = head.rnn(packed)
    y, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return y * mask.unsqueeze(2)


@pytest.mark.parametrize("kind,layers", [("bilstm", 1), ("bilstm", 2), ("bigru", 2)])
def test_rnn_head_equals_the_packed_bidirectional_rnn_outputs_and_gradients(kind, layers):
    """Each direction runs as its own padded pass (the backward one over rows reversed within their length):
    outputs and every weight's gradient equal torch's packed bidirectional RNN on the same weights."""
    torch.manual_seed(2)
    head = build_head(cfg(kind, rnn_num_hidden_layers=layers), H).eval()
    x, mask = batch()
    x = x.masked_fill(~mask.unsqueeze(2), 3.0)
    ours = head(x, mask)
    ours.pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in head.named_parameters()}
    head.zero_grad()
    ref = _packed_reference(head, x, mask)
    ref.pow(2).sum().backward()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert set(grads) == {n for n, _ in head.named_parameters()}
    for name, p in head.named_parameters():
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-5, msg=name)
    # the one-way templates hold no weights of their own and never reach a state dict
    assert set(head.state_dict()) == {f"rnn.{n}" for n, _ in head.rnn.named_parameters()}


def test_rnn_head_runs_in_bf16_under_cpu_autocast():
    """Under bf16 autocast the one-way passes run in bf16 (the packed path stayed in float32) where this
    CPU's oneDNN runs a bf16 LSTM, else in float32; either way the result stays close to the float32 head."""
    from ner_core.runtime.hardware import bf16_lstm_runs

    torch.manual_seed(4)
    head = build_head(cfg("bilstm", rnn_units=16), H).eval()
    x, mask = batch()
    exact = head(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = head(x, mask)
    assert low.dtype == (torch.bfloat16 if bf16_lstm_runs() else torch.float32)
    assert low[~mask].abs().sum() == 0
    torch.testing.assert_close(low.float(), exact, atol=0.03, rtol=0.05)


@pytest.mark.parametrize("padded", [True, False])
def test_an_lstm_the_cpu_cannot_run_in_bf16_runs_in_float32_and_learns(monkeypatch, padded):
    """Where oneDNN cannot build a bf16 LSTM (AVX2-only CPUs: the whole bf16 run failed there), the head runs
    its LSTM in float32 under bf16 autocast, forward and backward, padded rows or not; it equals the float32
    head and its gradients are finite."""
    from ner_core.model import heads

    monkeypatch.setattr(heads, "bf16_lstm_runs", lambda: False)
    torch.manual_seed(4)
    head = build_head(cfg("bilstm", rnn_units=16), H)
    x, mask = batch()
    if not padded:
        mask = torch.ones_like(mask)
    head.eval()
    exact = head(x, mask)
    head.train()
    head.dropout.p = 0.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = head(x.bfloat16(), mask)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, exact, atol=0.02, rtol=0.02)  # the input was rounded to bf16
    low.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.rnn.parameters())


@pytest.mark.parametrize("kind", ["bilstm", "bigru"])
def test_rnn_inference_on_cpu_runs_on_one_thread_and_restores_the_callers_setting(kind, monkeypatch):
    """An RNN pass is a chain of small per-step products: threaded, every step waits for every thread (on a
    busy machine a scheduler slice each), so inference runs it on one thread; training keeps the setting."""
    head = build_head(cfg(kind), H).eval()
    seen: list[int] = []
    real = type(head.rnn).forward
    monkeypatch.setattr(
        type(head.rnn),
        "forward",
        lambda self, *a, **k: seen.append(torch.get_num_threads()) or real(self, *a, **k),
    )
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, mask = batch()
        full = torch.ones_like(mask)
        with torch.inference_mode():
            padded, unpadded = head(x, mask), head(x, full)
        assert seen and set(seen) == {1}  # both the padded (one-way passes) and the unpadded path
        assert torch.get_num_threads() == 2
        with torch.no_grad():
            assert torch.equal(head(x, mask), padded) and torch.equal(head(x, full), unpadded)
        seen.clear()
        head(x, mask).sum().backward()  # training: torch's setting
        assert seen and set(seen) == {2} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["bilstm", "bigru"])
def test_an_int8_rnn_head_stays_close_to_float_and_training_keeps_the_float_weights(kind):
    """int8 prediction quantizes the RNN head of its copy too: inference (padded and unpadded rows) runs
    the int8 one-way passes, close to the float head; with gradients on, the float weights still run."""
    head = build_head(cfg(kind), H).eval()
    x, mask = batch()
    full = torch.ones_like(mask)
    with torch.inference_mode():
        ref_padded, ref_full = head(x, mask), head(x, full)
    state = {k: v.clone() for k, v in head.state_dict().items()}
    head.quantize_int8()
    calls: list[int] = []
    for pair in head._int8:
        for one in pair:
            one.register_forward_hook(lambda *_: calls.append(1))
    with torch.inference_mode():
        got_padded, got_full = head(x, mask), head(x, full)
    assert len(calls) == 2 * 2 * cfg(kind).rnn_num_hidden_layers  # both directions, both calls
    for got, ref in ((got_padded, ref_padded), (got_full, ref_full)):
        assert not torch.equal(got, ref)  # it did run in int8
        assert (got - ref).norm() / ref.norm() < 0.05
    assert (got_padded[~mask] == 0).all()  # padding stays zero
    calls.clear()
    train_out = head(x, mask)
    assert not calls and torch.allclose(train_out, ref_padded, atol=1e-5)  # float weights with gradients
    assert all(torch.equal(v, state[k]) for k, v in head.state_dict().items())


def test_whether_the_cpu_runs_a_bf16_lstm_does_not_depend_on_where_it_is_first_asked():
    """The answer is cached per process: asked first under the tagger's inference_mode it must be the
    same as asked with gradients on (the trial's backward pass would fail there on any CPU)."""
    from ner_core.runtime.hardware import bf16_lstm_runs

    bf16_lstm_runs.cache_clear()
    with torch.inference_mode():
        inside = bf16_lstm_runs()
    bf16_lstm_runs.cache_clear()
    outside = bf16_lstm_runs()
    assert inside == outside


@pytest.mark.parametrize("padded", [True, False])
def test_a_gru_runs_in_float32_under_bf16_autocast(padded):
    """oneDNN has no bf16 GRU: under CPU bf16 autocast torch sends it to a reference kernel several times
    slower than float32, so the head runs its GRU in float32 there (the result equals the float32 head)."""
    torch.manual_seed(4)
    head = build_head(cfg("bigru", rnn_units=16), H).eval()
    x, mask = batch()
    if not padded:
        mask = torch.ones_like(mask)
    seen: list[bool] = []  # autocast on when the GRU ran
    for module in (head.rnn, *head._one_way):
        module.register_forward_pre_hook(lambda _m, _a: seen.append(torch.is_autocast_enabled("cpu")))
    exact = head(x, mask)
    with torch.inference_mode():
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = head(x, mask)
    assert seen and set(seen) == {False}
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, exact)


def test_an_int8_copys_lstm_runs_in_bf16_where_the_cpu_has_bf16_units_else_in_int8(monkeypatch):
    """int8 prediction: the LSTM head of the copy runs in bf16 where oneDNN's bf16 LSTM runs and the CPU has
    bf16 units (faster there than the int8 LSTM); elsewhere, and for the GRU, in int8."""
    from ner_core.inference import tagger
    from ner_core.runtime.hardware import Hardware

    for kind, flags, lstm_ok, want in [
        ("bilstm", {"avx512_bf16"}, True, "bf16"),
        ("bilstm", set(), True, "int8"),
        ("bilstm", {"avx512_bf16"}, False, "int8"),
        ("bigru", {"avx512_bf16"}, True, "int8"),
    ]:
        monkeypatch.setattr(
            tagger.Hardware,
            "detect",
            classmethod(lambda cls, d="cpu", f=flags: Hardware("cpu", frozenset(f))),
        )
        monkeypatch.setattr(tagger, "bf16_lstm_runs", lambda ok=lstm_ok: ok)
        head = build_head(cfg(kind), H).eval()
        tagger._int8_head(head)
        assert ("bf16" if head._bf16_inference else "int8" if head._int8 else "float") == want, (kind, flags)
        x, mask = batch()
        with torch.inference_mode():
            out = head(x, mask)
        assert out.dtype == torch.float32 and (out[~mask] == 0).all()
