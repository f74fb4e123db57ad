"""speedups.py: every speed path computes what the plain path in model.py computes."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import speedups
from conftest import TINY_CONFIG, tiny_classifier
from model import Attention, Encoder, Linear
from speedups import CastCacheLinear, CheapDropout, HandAttention, cheap_dropout
from test_peft import CASES, batch, perturb_trainable
from peft import inject

L = TINY_CONFIG.num_hidden_layers


def test_cheap_dropout_statistics_and_gradient():
    torch.manual_seed(0)
    x = torch.ones(1001, 999, requires_grad=True)  # odd element count: the last 16-bit draw is cut
    y = cheap_dropout(x, 0.1)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.002
    assert abs(y.mean().item() - 1.0) < 0.003  # inverted dropout keeps the expectation
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * y.max().item())  # gradient = mask * scale
    drop = CheapDropout(0.3)
    z = torch.randn(64, 64)
    assert torch.equal(drop.eval()(z), z) and torch.equal(CheapDropout(0.0).train()(z), z)
    assert abs((drop.train()(torch.ones(400, 400)) == 0).float().mean().item() - 0.3) < 0.01


def test_cheap_dropout_bf16_rounds_once_and_is_seeded():
    """bf16: a kept value is x * (1 / (1 - p)) rounded once to bf16, as F.dropout computes it (a
    bf16 mask value of 1/(1-p) would be 1.109375, 0.16% low, and would round twice); the draws
    repeat under torch.manual_seed and differ without it."""
    torch.manual_seed(0)
    x = torch.randn(512, 512).bfloat16().requires_grad_()
    y = cheap_dropout(x, 0.1)
    keep = y != 0
    scale = 65536 / (65536 - round(0.1 * 65536))
    assert y.dtype == torch.bfloat16 and abs((~keep).float().mean().item() - 0.1) < 0.003
    assert torch.equal(y[keep], (x.detach().float() * scale).bfloat16()[keep])
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, (keep * scale).bfloat16())  # gradient = mask * scale
    torch.manual_seed(5)
    a = cheap_dropout(torch.ones(999), 0.5)
    torch.manual_seed(5)
    assert torch.equal(cheap_dropout(torch.ones(999), 0.5), a) and not torch.equal(cheap_dropout(torch.ones(999), 0.5), a)


def test_hand_attention_is_sdpa_with_the_cheap_sampler(monkeypatch):
    """In CPU training HandAttention writes the softmax out; with its dropout switched off it
    equals SDPA, and with dropout it is softmax -> cheap_dropout -> @ v, draw for draw."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8) for _ in range(3))
    bias = torch.zeros(2, 1, 1, 5)
    bias[1, ..., 3:] = float("-inf")  # padding keys of the second sample
    plain, hand = Attention(0.2).train(), HandAttention(0.2).train()
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert torch.equal(hand.eval()(q, k, v, bias), plain.eval()(q, k, v, bias))  # eval: the same SDPA call
    torch.manual_seed(1)
    got = hand.train()(q, k, v, bias)
    torch.manual_seed(1)
    ref = cheap_dropout(torch.softmax(q @ k.transpose(-2, -1) / 8 ** 0.5 + bias, -1), 0.2) @ v
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    monkeypatch.setattr(speedups, "cheap_dropout", lambda x, p: x)
    torch.testing.assert_close(hand.train()(q, k, v, bias), want, atol=1e-6, rtol=0)


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, (nn.Dropout, Attention)):
            m.p = 0.0
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_cls_only_top_layer_gives_the_same_logits_and_gradients(case):
    model = no_dropout(perturb_trainable(inject(tiny_classifier(3), copy.deepcopy(CASES[case]))))
    ids, mask = batch()
    gates = torch.rand(len(ids), L, generator=torch.Generator().manual_seed(2))
    results = []
    for cls_only in (False, True):
        model.cls_only = cls_only
        model.zero_grad(set_to_none=True)
        logits = model.train()(ids, mask, gates=gates)
        logits.pow(2).sum().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (full, g_full), (top_cls, g_cls) = results
    assert model.encoder(ids, mask, gates=gates, cls_only=True).shape == (len(ids), 1, TINY_CONFIG.hidden_size)
    torch.testing.assert_close(top_cls, full, atol=1e-5, rtol=0)
    assert g_full.keys() == g_cls.keys() and g_full
    for name in g_full:
        torch.testing.assert_close(g_cls[name], g_full[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_enable_swaps_every_path_and_keeps_the_function(case):
    """enable() leaves no plain dropout or attention module behind, keeps train/eval modes,
    and in eval (no dropout) the model computes what the plain one computes."""
    plain = perturb_trainable(inject(tiny_classifier(3), copy.deepcopy(CASES[case]))).eval()
    fast = speedups.enable(copy.deepcopy(plain))
    kinds = {type(m) for m in fast.modules()}
    assert nn.Dropout not in kinds and Attention not in kinds and Linear not in kinds
    assert {CheapDropout, HandAttention, CastCacheLinear} <= kinds
    assert not any(m.training for m in fast.modules())
    assert fast.cls_only and not plain.cls_only  # the textbook path is the default
    for ids, mask in (batch(), batch(lengths=(7, 7, 7, 7))):  # padded and unpadded
        torch.testing.assert_close(fast(ids, mask), plain(ids, mask), atol=1e-5, rtol=0)
    only = speedups.enable(copy.deepcopy(plain), cls_only=False, paths=("dropout",))
    assert Attention in {type(m) for m in only.modules()} and not only.cls_only
    for path in ("dropout", "attention", "cast_cache"):
        speedups.switch(fast, path, False)
    back = {type(m) for m in fast.modules()}
    assert not {CheapDropout, HandAttention, CastCacheLinear} & back and {nn.Dropout, Linear} <= back  # off again
    with pytest.raises(ValueError, match="unknown speed path"):
        speedups.enable(plain, paths=("turbo",))


def test_cast_cache_is_autocast_and_follows_every_weight_change():
    """Under bf16 autocast a frozen CastCacheLinear gives autocast's own output bit for bit,
    before and after an in-place update (an optimizer step, a LoRA merge) and a load; a
    trainable one is a plain Linear with its gradient; without autocast it is fp32."""
    torch.manual_seed(0)
    plain = Linear(24, 16).requires_grad_(False)
    fast = speedups.switch(nn.Sequential(copy.deepcopy(plain)), "cast_cache")[0]
    assert type(fast) is CastCacheLinear
    x = torch.randn(5, 24)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    for change in (None, lambda m: m.weight.add_(0.5), lambda m: m.load_state_dict({"weight": torch.randn(16, 24),
                                                                                   "bias": torch.randn(16)})):
        if change:
            torch.manual_seed(1)
            change(plain)
            torch.manual_seed(1)
            change(fast)
        with bf16():
            assert torch.equal(fast(x), plain(x)) and fast(x).dtype == torch.bfloat16
        assert torch.equal(fast(x), plain(x)) and fast(x).dtype == torch.float32
    plain.requires_grad_(True), fast.requires_grad_(True)
    with bf16():
        plain(x).float().sum().backward(), fast(x).float().sum().backward()
    assert torch.equal(fast.weight.grad, plain.weight.grad)
