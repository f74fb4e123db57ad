"""LoRAMoE (experts per FFN linear, localized balancing) and Match-Tuning (in-batch mixing head)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoint
import mixture
import peft
from conftest import TINY_CONFIG, tiny_classifier
from batching import Batch
from model import Linear
from loramoe import LoRAMoE, LoRAMoEConfig, LoRAMoELinear, LoRAMoEHooks, balance_loss
from match_tuning import MatchConfig, MatchHead, MatchHooks, replace_head_with_match

K = 3


def pretrained(seed=0):
    return tiny_classifier(K, seed)


def make_batch(lengths=(9, 6, 4, 9), seed=1, pad_to=None, label=None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY_CONFIG.vocab_size, (len(lengths), max(lengths)), generator=g)
    T = pad_to or max(lengths)
    ids = F.pad(ids, (0, T - ids.size(1)))  # extra padding columns, same tokens
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    n = len(lengths)
    label = torch.zeros(n, dtype=torch.long) if label is None else torch.tensor(label)
    return Batch(ids * mask, mask, torch.arange(n), label)


def inject_loramoe(model, cfg=None):
    return peft.inject(model, cfg or LoRAMoE(moe_experts=4, moe_r=2))


def moe_model(seed=0):
    return inject_loramoe(pretrained(seed))


# ---------------------------------------------------------------------------- LoRAMoE


def test_loramoe_is_identity_at_init():
    model = pretrained()
    b = make_batch()
    with torch.no_grad():
        before = model(b.input_ids, b.attention_mask)
        inject_loramoe(model)
        after = model(b.input_ids, b.attention_mask)
    assert torch.equal(before, after)
    moe = [m for m in model.modules() if isinstance(m, LoRAMoELinear)]
    assert len(moe) == 2 * TINY_CONFIG.num_hidden_layers
    assert moe[0].lora_A.shape == (4, 2, TINY_CONFIG.hidden_size) and moe[0].lora_B.shape == (4, TINY_CONFIG.intermediate_size, 2)
    bound = 1 / TINY_CONFIG.hidden_size ** 0.5  # kaiming-uniform(a=sqrt(5)) per expert: U(-1/sqrt(in), 1/sqrt(in))
    assert 0.5 * bound < moe[0].lora_A[0].abs().max() <= bound


def test_only_lora_router_and_head_train():
    model = moe_model()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("head.") or n.split(".")[-1].startswith(("lora_", "router_")) for n in names)
    assert any("router_weight" in n for n in names) and "head.weight" in names
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".base." in n)
    with pytest.raises(peft.PeftError):
        inject_loramoe(model, LoRAMoE())


def test_router_rows_sum_to_one_in_fp32_even_under_autocast():
    torch.manual_seed(0)
    layer = LoRAMoELinear(Linear(8, 5), n_experts=3, r=2, alpha=4, dropout=0.0)
    x = torch.randn(2, 7, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and layer.last_route.dtype == torch.float32
    torch.testing.assert_close(layer.last_route.sum(-1), torch.ones(2, 7), rtol=0, atol=1e-6)


def test_gate_multiplies_the_expert_delta():
    torch.manual_seed(0)
    layer = LoRAMoELinear(Linear(8, 5), n_experts=3, r=2, alpha=4, dropout=0.0)
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 4, 8)
    full, base = layer(x), layer.base(x)
    y = layer(x, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(y[0], base[0])
    torch.testing.assert_close(y[1], full[1])
    assert not torch.allclose(full, base)


def test_padding_does_not_change_the_balance_loss():
    model = moe_model()
    hooks = LoRAMoEHooks(model, 4, LoRAMoEConfig())
    losses = []
    for pad_to in (None, 14):
        b = make_batch(pad_to=pad_to)
        with torch.no_grad():
            model(b.input_ids, b.attention_mask)
        losses.append(hooks.extra_losses(None, b)["balance"])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=0)
    # the function itself ignores whatever the router says on padding positions
    route = torch.softmax(torch.randn(2, 6, 4), -1)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6])
    garbage = route.clone()
    garbage[0, 3:] = torch.tensor([1.0, 0, 0, 0])
    assert balance_loss(route, mask, None, 0.1, 0.1) == balance_loss(garbage, mask, None, 0.1, 0.1)


def test_balance_loss_is_zero_only_when_balanced():
    mask = torch.ones(2, 5)
    uniform = torch.full((2, 5, 4), 0.25)
    assert balance_loss(uniform, mask, None, 0.1, 0.1) == 0
    types = torch.tensor([0, 1])
    # typed optimum: the serving group holds (1 + delta) / 2 of each sample's mass, split evenly
    s, o = 1.1 / 2 / 2, 0.9 / 2 / 2
    typed = torch.tensor([[s, s, o, o], [o, o, s, s]])[:, None].expand(2, 5, 4)
    assert balance_loss(typed, mask, types, 0.1, 0.1).abs() < 1e-12
    assert balance_loss(uniform, mask, types, 0.1, 0.1) > 0  # uniform is not balanced once typed
    skewed = torch.softmax(torch.randn(2, 5, 4), -1)
    assert balance_loss(skewed, mask, None, 0.1, 0.1) > 0
    assert balance_loss(typed, mask, None, 0.1, 0.1) > 0


def minimise_balance(layer, hooks, x, batch, steps=300):
    """Adam on the router weights against the balance loss alone; returns the last loss."""
    opt = torch.optim.Adam([layer.router_weight], lr=0.05)
    for _ in range(steps):
        layer(x)
        loss = hooks.extra_losses(None, batch)["balance"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss


def test_balance_loss_sends_clean_to_group_0_and_noisy_to_group_1():
    """The documented direction, proved by optimisation: Adam on the balance loss alone
    moves each sample's mass to its serving group, to the analytic optimum (1 + delta) / 2."""
    torch.manual_seed(0)
    B, T, C, delta = 8, 6, 8, 0.1
    layer = LoRAMoELinear(Linear(C, 4), n_experts=4, r=2, alpha=4, dropout=0.0)
    types = torch.arange(B) % 2  # 0 = clean, 1 = suspected noisy
    x = torch.randn(B, T, C)
    x[..., 0] = 2.0 * types[:, None] - 1  # a feature the router can read the type from
    hooks = LoRAMoEHooks(torch.nn.ModuleList([layer]), B, LoRAMoEConfig(moe_delta=delta, moe_beta=1.0))
    hooks.types, hooks.typed = types, True
    observed, true = types.numpy(), torch.zeros(B, dtype=torch.long).numpy()  # label != true exactly for type 1
    batch = Batch(torch.zeros(B, T, dtype=torch.long), torch.ones(B, T, dtype=torch.long), torch.arange(B),
                  torch.as_tensor(observed))
    assert minimise_balance(layer, hooks, x, batch) < 1e-4
    hooks.end_epoch(0, torch.zeros(B, 2).numpy(), observed, None)
    m = hooks.epoch_metrics(observed, true)
    share0 = layer.last_route[..., :2].sum(-1).mean(1)  # (B,) group 0's share per sample
    torch.testing.assert_close(share0[types == 0], torch.full((B // 2,), (1 + delta) / 2), rtol=0, atol=0.01)
    torch.testing.assert_close(share0[types == 1], torch.full((B // 2,), (1 - delta) / 2), rtol=0, atol=0.01)
    # the logged shares (averaged over the whole run) point the same way
    assert m["moe_g0_clean"] > 0.5 > m["moe_g0_noisy"] and m["moe_g1_noisy"] > 0.5
    assert m["moe_g0_typed_clean"] > 0.5 > m["moe_g0_typed_noisy"]  # and by assigned type (here the same split)


def test_loramoe_routing_types_from_the_loss_gmm_after_warmup():
    model = moe_model()
    n = 40
    cfg = LoRAMoEConfig(moe_types="clean")
    hooks = LoRAMoEHooks(model, n, cfg, warmup_epochs=2)
    true = torch.zeros(n, dtype=torch.long).numpy()
    observed = true.copy()
    observed[:10] = 1  # the first 10 are noisy: the model predicts the true class with confidence
    logits = torch.zeros(n, 2)
    logits[:, 0] = 4.0 + 0.1 * torch.randn(n)
    b = make_batch(label=[1, 1, 1, 1])  # examples 0..3, all truly noisy (true is 0 everywhere)
    with torch.no_grad():
        model(b.input_ids, b.attention_mask)
    hooks.extra_losses(None, b)
    fit = mixture.LossDetector(0).update(logits.numpy(), observed)
    hooks.end_epoch(0, logits.numpy(), observed, fit)
    m = hooks.epoch_metrics(observed, true)
    assert not hooks.typed and m["moe_balance"] > 0
    assert m["moe_g0_noisy"] is not None and m["moe_g0_clean"] is None  # the truth comes from epoch_metrics
    hooks.end_epoch(0, logits.numpy(), observed, fit)
    assert hooks.epoch_metrics(observed, true)["moe_g0_clean"] is None  # accumulators reset
    hooks.end_epoch(1, logits.numpy(), observed, fit)
    m = hooks.epoch_metrics(observed, true)
    assert hooks.typed and hooks.types[:10].eq(1).all() and hooks.types[10:].eq(0).all()
    assert m["moe_typed_noisy"] == 0.25 and mixture.detector_metrics(fit, observed, true)["det_auroc"] == 1.0
    fresh = LoRAMoEHooks(model, n, cfg, warmup_epochs=2)
    fresh.load_state_dict(hooks.state_dict())
    assert fresh.typed and torch.equal(fresh.types, hooks.types)


def test_loramoe_label_types_are_the_label_half_from_the_first_step():
    """--moe_types label: a sample's type is the half of the class list its observed label lies in (two
    classes: the class itself), known from the first step and used by the balance loss."""
    model = moe_model()
    model.head = torch.nn.Linear(model.head.in_features, 2)  # two classes: the type is the class
    hooks = LoRAMoEHooks(model, 8, LoRAMoEConfig(moe_types="label"))
    assert hooks.typed
    b = make_batch(label=[0, 1, 1, 0])
    with torch.no_grad():
        model(b.input_ids, b.attention_mask)
    typed = hooks.extra_losses(None, b)["balance"]
    plain = LoRAMoEHooks(model, 8, LoRAMoEConfig()).extra_losses(None, b)["balance"]
    assert hooks.types[:4].tolist() == [0, 1, 1, 0] and not torch.allclose(typed, plain)
    hooks.end_epoch(0, np.zeros((8, 2)), np.array([0, 1, 1, 0, 0, 0, 0, 0]), None)
    m = hooks.epoch_metrics(np.zeros(8, dtype=np.int64), np.zeros(8, dtype=np.int64))
    assert m["moe_g0_typed_clean"] is not None and m["moe_g0_typed_noisy"] is not None and "moe_typed_gap" in m
    model.head = torch.nn.Linear(model.head.in_features, 4)  # four classes: 0, 1 -> type 0; 2, 3 -> type 1
    four = LoRAMoEHooks(model, 8, LoRAMoEConfig(moe_types="label"))
    with torch.no_grad():
        model(b.input_ids, b.attention_mask)
    four.extra_losses(None, make_batch(label=[3, 1, 2, 0]))
    assert four.types[:4].tolist() == [1, 0, 1, 0]


def test_loramoe_save_load_round_trip(tmp_path):
    """checkpoint.save_peft / load_peft handle LoRAMoE (model.peft_config is its loramoe.LoRAMoE kind)."""
    model = moe_model()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    checkpoint.save_peft(model, tmp_path)
    fresh = moe_model()
    checkpoint.load_peft(fresh, tmp_path)
    b = make_batch()
    with torch.no_grad():
        assert torch.equal(model(b.input_ids, b.attention_mask), fresh(b.input_ids, b.attention_mask))


# ---------------------------------------------------------------------------- Match-Tuning


def match_config(tau=1.0, eval_mix=False, init="identity", mix="batch"):
    return MatchConfig(match_tau=tau, match_eval="mix" if eval_mix else "plain", match_init=init, match_mix=mix)


def match_model(tau=1.0, eval_mix=False, init="identity", mix="batch"):
    return replace_head_with_match(pretrained(), match_config(tau, eval_mix, init, mix))


def test_match_dense_starts_as_a_new_bert_layer_by_default():
    """As published: a fresh dense layer before the matching - N(0, 0.02) weights, zero bias."""
    torch.manual_seed(0)
    head = MatchHead(384, K, MatchConfig())
    w = head.match_dense.weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.001 and abs(float(w.mean())) < 0.001
    assert torch.equal(head.match_dense.bias, torch.zeros(384))


def test_the_no_mixing_control_keeps_the_layer_and_never_mixes():
    model = match_model(tau=1.0, init="normal", mix="none").train()
    b = make_batch(lengths=(5, 5, 5, 5))
    out = model(b.input_ids, b.attention_mask)
    assert model.head.last_mix is None and out.shape == (4, K)
    model.eval()
    h = model.encoder(b.input_ids, b.attention_mask)[:, 0]
    head = model.head
    want = head.classifier(head.match_dense(h))  # the plain path, batch-independent
    torch.testing.assert_close(model(b.input_ids, b.attention_mask), want)
    assert head.as_linear() is not None


def test_match_head_keeps_the_old_head_at_identity_init_and_mixes_rows_to_one():
    model = pretrained()
    b = make_batch(lengths=(5, 5, 5, 5))
    with torch.no_grad():
        before = model(b.input_ids, b.attention_mask)
        replace_head_with_match(model, match_config(tau=10.0))
        after = model(b.input_ids, b.attention_mask)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)  # eval: plain z through the copied head
    assert model.head.last_mix is None and model.head.out_features == K
    model.train()
    model(b.input_ids, b.attention_mask)
    M = model.head.last_mix
    assert M.shape == (4, 4) and not M.requires_grad
    torch.testing.assert_close(M.sum(-1), torch.ones(4))


def test_tiny_tau_makes_the_mix_the_identity():
    head = MatchHead(16, K, match_config(tau=1e-6))
    z = F.normalize(torch.randn(5, 16), dim=-1) * 4  # equal norms: each row is its own nearest neighbour
    z_mix, M = head.mix(z)
    torch.testing.assert_close(z_mix, z, rtol=0, atol=1e-6)
    torch.testing.assert_close(M, torch.eye(5))
    model_mix, model_plain = match_model(1e-6, eval_mix=True), match_model(1e-6)
    b = make_batch(lengths=(5, 7, 3, 7))
    with torch.no_grad():
        torch.testing.assert_close(model_mix(b.input_ids, b.attention_mask),
                                   model_plain(b.input_ids, b.attention_mask), rtol=0, atol=1e-6)


def test_eval_predictions_depend_on_the_batch_only_with_eval_mix():
    a = make_batch(lengths=(6, 6, 6), seed=1)
    b = make_batch(lengths=(6, 6, 6), seed=2)
    ids2 = torch.cat([a.input_ids[:1], b.input_ids[1:]])  # same first example, different company
    for eval_mix, same in ((False, True), (True, False)):
        model = match_model(tau=50.0, eval_mix=eval_mix)
        with torch.no_grad():
            y1 = model(a.input_ids, a.attention_mask)[0]
            y2 = model(ids2, a.attention_mask)[0]
        assert torch.allclose(y1, y2, rtol=0, atol=1e-6) == same


def test_gradients_flow_through_match_dense():
    model = match_model(tau=10.0).train()
    b = make_batch(label=[0, 1, 2, 0])
    F.cross_entropy(model(b.input_ids, b.attention_mask), b.label).backward()
    g = model.head.match_dense.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert {n for n, p in model.named_parameters() if n.startswith("head.")} >= {"head.match_dense.weight",
                                                                               "head.classifier.weight"}


def test_match_routing_statistics():
    model = match_model()
    hooks = MatchHooks(model)
    model.head.last_mix = torch.tensor([[0.5, 0.3, 0.2],
                                        [0.1, 0.6, 0.3],
                                        [0.2, 0.2, 0.6]])
    observed, true = torch.tensor([0, 0, 1]).numpy(), torch.tensor([0, 1, 1]).numpy()
    b = Batch(None, None, torch.arange(3), torch.as_tensor(observed))
    assert hooks.extra_losses(None, b) == {}
    hooks.end_epoch(0, None, observed, None)
    m = hooks.epoch_metrics(observed, true)
    assert m["match_diag"] == pytest.approx((0.5 + 0.6 + 0.6) / 3)
    assert m["match_same_label"] == pytest.approx((0.3 + 0.1 + 0.0) / 3)   # observed labels 0, 0, 1
    assert m["match_diff_label"] == pytest.approx((0.2 + 0.3 + 0.4) / 3)
    assert m["match_same_true"] == pytest.approx((0.0 + 0.3 + 0.2) / 3)    # true labels 0, 1, 1
    assert m["match_diff_true"] == pytest.approx((0.5 + 0.1 + 0.2) / 3)
    hooks.end_epoch(1, None, observed, None)
    assert hooks.epoch_metrics(observed, true)["match_diag"] is None   # reset each epoch


def test_balance_sends_every_sample_to_its_group_whatever_its_length():
    """Samples of 6 to 60 tokens, all of type 0 (clean), the balance loss alone minimised with
    Adam: each sample must end with more than half of its mass in group 0. With importance
    summed over tokens (the code before the fix) a third of them ended below half - short
    samples pushed to the wrong group to even out the long ones."""
    torch.manual_seed(0)
    B, T, C = 32, 60, 8
    lengths = torch.linspace(6, 60, B).long()
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    layer = LoRAMoELinear(Linear(C, 4), n_experts=4, r=2, alpha=4, dropout=0.0)
    x = torch.randn(B, T, C)
    hooks = LoRAMoEHooks(torch.nn.ModuleList([layer]), B, LoRAMoEConfig(moe_delta=0.1, moe_beta=1.0))
    hooks.types, hooks.typed = torch.zeros(B, dtype=torch.long), True
    batch = Batch(torch.zeros(B, T, dtype=torch.long), mask, torch.arange(B), torch.zeros(B, dtype=torch.long))
    minimise_balance(layer, hooks, x, batch)
    route = layer.last_route.detach()
    share0 = (route[..., :2].sum(-1) * mask).sum(1) / mask.sum(1)  # (B,) group 0's share of real tokens
    assert (share0 > 0.5).all(), share0


def test_match_dense_gets_its_own_learning_rate(tiny_model_dir):
    import engine
    import methods
    import build
    import train
    args = train.parse_args(["--method", "match", "--model", tiny_model_dir, "--max_len", "64", "--lr", "1e-3",
                             "--match_lr", "5e-2"])
    model, _ = build.build_model(args, K)
    opt, _ = engine.build_optimizer(model, args.lr, 0.01, 0.1, 100, methods.get("match").lr_overrides(args))
    dense = {id(p) for p in model.head.match_dense.parameters()}
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= dense if group["initial_lr"] == 5e-2 else not ids & dense  # (lr itself is warming up)
    assert sum(len(g["params"]) for g in opt.param_groups if g["initial_lr"] == 5e-2) == 2  # weight and bias
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in model.parameters())


def test_blind_share_is_the_minimum_a_type_blind_router_can_reach():
    """blind_share's closed form against a brute-force minimum of balance_loss over rows that are the
    same for every sample (a router that cannot see the types), at several noisy shares."""
    from loramoe import balance_loss, blind_share
    B, N = 40, 4
    for p in (0.0, 0.2, 0.4, 0.5, 0.9):
        types = (torch.arange(B) < round(p * B)).long()
        best, best_a = None, None
        for a in torch.linspace(0.3, 0.7, 4001):
            Q = torch.tensor([a / 2, a / 2, (1 - a) / 2, (1 - a) / 2]).expand(B, 1, N)  # (B, T=1, N)
            loss = float(balance_loss(Q, torch.ones(B, 1), types, 0.1, 1.0))
            if best is None or loss < best:
                best, best_a = loss, float(a)
        assert abs(blind_share(float(types.float().mean()), 0.1) - best_a) < 2e-4
    assert blind_share(0.0, 0.1) == pytest.approx(0.55) and blind_share(0.5, 0.1) == pytest.approx(0.5)
