"""The CPU dropout mask drawn from 16-bit lanes of 64-bit random words (ner_core.model.fast_dropout)."""

from __future__ import annotations

import torch
from torch import nn

from ner_core.model.fast_dropout import FastDropout, fast_dropout, use_fast_dropout


def test_drops_with_probability_p_and_scales_the_rest():
    torch.manual_seed(0)
    x = torch.ones(2_000_000)
    for p in (0.1, 0.5, 0.03):
        y = fast_dropout(x, p)
        rate = float((y == 0).float().mean())
        assert abs(rate - p) < 5 * (p * (1 - p) / x.numel()) ** 0.5 + 1 / 32768, (p, rate)
        assert torch.allclose(y[y != 0], torch.full((int((y != 0).sum()),), 1 / (1 - p)))
    assert fast_dropout(x, 0.0) is x and float(fast_dropout(x, 1.0).abs().sum()) == 0.0


def test_every_lane_of_a_word_is_used_and_masks_are_independent_of_position():
    """A lane per element, four per word: a mask whose lanes repeated or stuck would show in the rate of
    each position modulo 4, and in the agreement of neighbouring elements."""
    torch.manual_seed(1)
    keep = fast_dropout(torch.ones(400_000), 0.5) != 0
    for lane in range(4):
        assert abs(float(keep[lane::4].float().mean()) - 0.5) < 0.01
    agree = float((keep[1:] == keep[:-1]).float().mean())
    assert abs(agree - 0.5) < 0.01


def test_gradient_is_the_mask_times_the_scale_and_seeds_reproduce_masks():
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(7)
    y = fast_dropout(x, 0.2)
    y.sum().backward()
    expected = (y != 0).float() / 0.8
    torch.testing.assert_close(x.grad, expected)
    torch.manual_seed(7)
    torch.testing.assert_close(fast_dropout(x.detach(), 0.2), y.detach())


def test_bf16_inputs_keep_their_dtype():
    torch.manual_seed(2)
    x = torch.randn(8, 16, dtype=torch.bfloat16)
    y = fast_dropout(x, 0.1)
    assert y.dtype == torch.bfloat16
    kept = y != 0
    torch.testing.assert_close(y[kept], (x[kept] * torch.tensor(1 / 0.9, dtype=torch.bfloat16)))


def test_module_is_identity_in_eval_and_swaps_every_plain_dropout():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3), nn.Sequential(nn.Dropout(0.1), nn.ReLU()))
    assert use_fast_dropout(net) == 2
    assert isinstance(net[1], FastDropout) and net[1].p == 0.3 and isinstance(net[2][0], FastDropout)
    assert use_fast_dropout(net) == 0  # already swapped
    x = torch.randn(5, 4)
    net.eval()
    assert torch.equal(net[1](x), x)
    net.train()
    assert (net[1](torch.ones(10_000)) == 0).any()


def test_the_ner_model_uses_it_in_its_encoder_too(tiny_encoder_dir):
    from tests.test_model import build

    model, _ = build(tiny_encoder_dir)
    assert {type(m) for m in model.modules() if isinstance(m, nn.Dropout)} == {FastDropout}
    assert sum(isinstance(m, FastDropout) for m in model.encoder.modules()) >= 3
    assert not any("dropout" in k.lower() for k in model.state_dict())  # nothing new is saved
