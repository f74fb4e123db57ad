"""PEFT modules: identity at init, gating, LoRA merge, freezing, save/load, parameter counts."""

import copy
import os
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import peft
from checkpoint import CheckpointError, load_peft, read_config, read_peft_config, save_peft
from conftest import TINY_CONFIG, tiny_classifier
from peft import (Adapter, BitFit, Full, LoRA, LoRALinear, PeftError, Prefix, inject, is_peft_param, merge_lora,
                  param_summary, unmerge_lora)
from registry import Registry

K = 3  # classes
L = TINY_CONFIG.num_hidden_layers
CASES = {
    "lora": LoRA(),
    "lora-all": LoRA(lora_targets="all-linear"),
    "houlsby": Adapter(adapter_kind="houlsby"),
    "pfeiffer": Adapter(adapter_kind="pfeiffer"),
    "prefix": Prefix(prefix_len=5),
    "prefix-mlp": Prefix(prefix_len=5, prefix_mlp=True, prefix_mlp_hidden=16),
    "bitfit": BitFit(),
    "full": Full(),
}
IDENTITY_CASES = ["lora", "lora-all", "houlsby", "pfeiffer", "bitfit"]  # every case but prefix (and full)
GATED_CASES = ["lora", "lora-all", "houlsby", "pfeiffer", "bitfit"]     # deltas multiplied by the gate


def pretrained(seed=0):
    return tiny_classifier(K, seed)


def batch(lengths=(9, 6, 4, 9), seed=1):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(1, TINY_CONFIG.vocab_size, (len(lengths), T), generator=g)
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask  # padding id 0 after each sequence


def perturb_trainable(model, std=0.3, include_head=True):
    """Make every trainable (PEFT) tensor non-trivial, e.g. LoRA B and adapter up non-zero."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and (include_head or not name.startswith("head.")):
                p.add_(torch.randn_like(p) * std)
    return model


def injected(case, seed=0):
    return inject(pretrained(seed), copy.deepcopy(CASES[case]))


# ----------------------------------------------------------------------------
# identity at init

@pytest.mark.parametrize("case", IDENTITY_CASES + ["full"])
def test_identity_at_init(case):
    ids, mask = batch()
    model = pretrained()
    with torch.no_grad():
        before = model(ids, mask)
        inject(model, copy.deepcopy(CASES[case])).eval()
        assert torch.equal(model(ids, mask), before)


# ----------------------------------------------------------------------------
# prefix tuning: mask logic and gates

def prefixed_encoder(P=4):
    model = inject(pretrained(), Prefix(prefix_len=P))
    with torch.no_grad():
        model.prefix.prefix_embedding.normal_(std=1.0)  # a prefix with a clearly visible effect
    return model.encoder, model.prefix()


@torch.no_grad()
def test_prefix_padding_matches_each_sequence_alone():
    enc, prefix = prefixed_encoder()
    lengths = (9, 6, 4, 9)
    ids, mask = batch(lengths)
    padded = enc(ids, mask, prefix=prefix)
    assert not torch.allclose(padded, enc(ids, mask), atol=1e-3)  # the prefix does something
    for i, n in enumerate(lengths):
        alone = enc(ids[i:i + 1, :n], prefix=prefix)[0]  # no padding at all
        torch.testing.assert_close(padded[i, :n], alone, atol=1e-6, rtol=0)


@torch.no_grad()
def test_prefix_zero_gate_removes_that_layers_prefix():
    enc, prefix = prefixed_encoder()
    ids, mask = batch()
    B, P = ids.size(0), prefix[0][0].size(0)
    # all gates 0: as if there were no prefix; all gates 1: as if there were no gates
    torch.testing.assert_close(enc(ids, mask, gates=torch.zeros(B, L), prefix=prefix), enc(ids, mask),
                               atol=1e-6, rtol=0)
    assert torch.equal(enc(ids, mask, gates=torch.ones(B, L), prefix=prefix), enc(ids, mask, prefix=prefix))
    # layer 0 gated off for every sample: reference runs layer 0 without a prefix, layer 1 with it
    gates = torch.ones(B, L)
    gates[:, 0] = 0
    got = enc(ids, mask, gates=gates, prefix=prefix)
    x = enc.embeddings(ids, torch.zeros_like(ids))
    token_bias = torch.zeros(B, ids.size(1)).masked_fill(mask == 0, float("-inf"))
    x = enc.layers[0](x, token_bias[:, None, None, :])
    bias = torch.cat([torch.zeros(B, P), token_bias], dim=1)
    kv = tuple(t.expand(B, -1, -1) for t in prefix[1])
    x = enc.layers[1](x, bias[:, None, None, :], None, kv)
    torch.testing.assert_close(got, x, atol=1e-6, rtol=0)
    # per sample: sample 0 gated off everywhere, the others on
    gates = torch.ones(B, L)
    gates[0] = 0
    got = enc(ids, mask, gates=gates, prefix=prefix)
    torch.testing.assert_close(got[0], enc(ids, mask)[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1:], enc(ids, mask, prefix=prefix)[1:], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------
# gating of LoRA, adapters and BitFit

@pytest.mark.parametrize("case", GATED_CASES)
@torch.no_grad()
def test_gates(case):
    ids, mask = batch()
    B = ids.size(0)
    model = perturb_trainable(injected(case), include_head=False).eval()
    frozen = pretrained()(ids, mask)  # same head: the head was not perturbed
    on = model(ids, mask)
    assert not torch.allclose(on, frozen, atol=1e-3)  # the deltas are really non-zero
    assert torch.equal(model(ids, mask, gates=torch.zeros(B, L)), frozen)
    assert torch.equal(model(ids, mask, gates=torch.ones(B, L)), on)
    gates = torch.ones(B, L)
    gates[2] = 0  # one sample off, the others on
    mixed = model(ids, mask, gates=gates)
    assert torch.equal(mixed[2], frozen[2])
    assert torch.equal(mixed[[0, 1, 3]], on[[0, 1, 3]])
    # layer 1 off for everyone == layer 1's PEFT parameters zeroed
    gates = torch.ones(B, L)
    gates[:, 1] = 0
    ref = copy.deepcopy(model)
    for name, p in ref.named_parameters():
        if name.startswith("encoder.layers.1.") and is_peft_param(name):
            p.zero_()
    torch.testing.assert_close(model(ids, mask, gates=gates), ref(ids, mask), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------
# LoRA merge / unmerge

def lora_modules(model):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def base_weights(model):
    return [m.base.weight.detach().clone() for m in lora_modules(model)]


@torch.no_grad()
def test_lora_merge_unmerge():
    ids, mask = batch()
    model = perturb_trainable(injected("lora-all")).eval()
    original = base_weights(model)
    ref = model(ids, mask)

    merge_lora(model)
    assert all(m.merged for m in lora_modules(model))
    merged_w = base_weights(model)
    assert not torch.equal(merged_w[0], original[0])
    for m, w in zip(lora_modules(model), original):  # W = W0 + (alpha/r) B A
        torch.testing.assert_close(m.base.weight, w + (16 / 8) * m.lora_B @ m.lora_A)
    torch.testing.assert_close(model(ids, mask), ref, atol=1e-5, rtol=0)
    merge_lora(model)  # idempotent
    assert all(torch.equal(a, b) for a, b in zip(base_weights(model), merged_w))
    model.train()
    model.eval()  # mode switches neither merge nor unmerge
    assert all(m.merged for m in lora_modules(model))
    assert all(torch.equal(a, b) for a, b in zip(base_weights(model), merged_w))
    with pytest.raises(RuntimeError, match="unmerge"):
        model(ids, mask, gates=torch.ones(ids.size(0), L))
    with pytest.raises(RuntimeError, match="unmerge"):
        model.train()(ids, mask)
    model.eval()

    unmerge_lora(model)
    assert not any(m.merged for m in lora_modules(model))
    unmerged_w = base_weights(model)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(unmerged_w, original))
    torch.testing.assert_close(model(ids, mask), ref, atol=1e-5, rtol=0)
    unmerge_lora(model)  # idempotent
    assert all(torch.equal(a, b) for a, b in zip(base_weights(model), unmerged_w))


def test_train_eval_never_merge():
    model = perturb_trainable(injected("lora"))
    original = base_weights(model)
    for _ in range(2):
        model.train()
        model.eval()
    assert not any(m.merged for m in lora_modules(model))
    assert all(torch.equal(a, b) for a, b in zip(base_weights(model), original))


def test_merge_without_lora_raises():
    with pytest.raises(PeftError, match="no LoRA"):
        merge_lora(injected("houlsby"))


# ----------------------------------------------------------------------------
# freezing: only PEFT parameters and the head move

@pytest.mark.parametrize("case", [c for c in CASES if c != "full"])
def test_training_moves_only_peft_params(case):
    torch.manual_seed(0)
    ids, mask = batch()
    labels = torch.tensor([0, 1, 2, 1])
    model = injected(case).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = F.cross_entropy(model(ids, mask), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in model.named_parameters():
        assert p.requires_grad == is_peft_param(name), name
        if is_peft_param(name):
            assert not torch.equal(p, before[name]), f"{name} did not train"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"


def test_full_trains_everything():
    model = injected("full")
    assert all(p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------------
# save / load

@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_save_load_roundtrip(case, tmp_path):
    ids, mask = batch()
    model = perturb_trainable(injected(case)).eval()
    ref = model(ids, mask)
    save_peft(model, tmp_path, extra={"epoch": 3})
    assert sorted(os.listdir(tmp_path)) == ["peft.safetensors", "peft_config.json"]  # no temp files left
    saved = read_peft_config(tmp_path)
    assert saved["kind"] == CASES[case].name and saved["num_classes"] == K and saved["epoch"] == 3
    assert read_config(tmp_path) == CASES[case]
    names = set(load_file(tmp_path / "peft.safetensors"))
    expected = {n for n, _ in model.named_parameters() if case == "full" or is_peft_param(n)}
    assert names == expected
    fresh = inject(pretrained(), read_config(tmp_path)).eval()
    assert not torch.equal(fresh(ids, mask), ref)
    load_peft(fresh, tmp_path)
    assert torch.equal(fresh(ids, mask), ref)


def test_load_mismatches(tmp_path):
    lora8 = injected("lora")
    save_peft(lora8, tmp_path)
    with pytest.raises(CheckpointError, match="saved with kind 'lora'.*'adapter'"):
        load_peft(injected("houlsby"), tmp_path)
    lora4 = inject(pretrained(), LoRA(lora_r=4))
    with pytest.raises(CheckpointError, match="lora_r=8 in the file but 4 in the model"):
        load_peft(lora4, tmp_path)
    with pytest.raises(CheckpointError, match="no PEFT kind injected"):
        load_peft(pretrained(), tmp_path)
    # a weights file that disagrees with its own config: shapes, then a missing tensor
    wpath = str(tmp_path / "peft.safetensors")
    save_file({k: v.contiguous() for k, v in lora4.state_dict().items() if is_peft_param(k)}, wpath)
    with pytest.raises(CheckpointError, match=r"peft.safetensors: tensor encoder.layers.0.query.lora_A has shape "
                                        r"\(4, 32\) in the file but \(8, 32\) in the model"):
        load_peft(injected("lora"), tmp_path)
    state = {k: v.contiguous() for k, v in lora8.state_dict().items() if is_peft_param(k)}
    del state["encoder.layers.1.value.lora_B"]
    save_file(state, wpath)
    with pytest.raises(CheckpointError, match="missing.*encoder.layers.1.value.lora_B"):
        load_peft(injected("lora"), tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_peft(injected("lora"), tmp_path / "nowhere")


def test_inject_twice_and_bad_settings():
    with pytest.raises(PeftError, match="already"):
        inject(injected("lora"), BitFit())
    with pytest.raises(PeftError, match="unknown PEFT kind 'ia3'; choose from full, probe, lora"):
        peft.kind_config("ia3", {})
    with pytest.raises(PeftError, match="lora_r"):
        LoRA(lora_r=0)


def test_kinds_registry():
    """KINDS is the project's one registry shape, in registration order (the --method choices);
    the names other files import from peft all exist."""
    assert isinstance(peft.KINDS, Registry)
    assert list(peft.KINDS)[:6] == ["full", "probe", "lora", "adapter", "prefix", "bitfit"]
    assert [peft.KINDS.get(n) for n in ("lora", "bitfit")] == [LoRA, BitFit]
    with pytest.raises(ValueError, match="'lora' already exists"):
        peft.register(LoRA)
    assert peft.KINDS.help(["lora"]) == "lora: LoRA (peft/lora.py, Hu et al. 2021)"
    for name in ("PeftKind", "register", "head_params", "mark_trainable", "lora_target_names", "LORA_TARGETS",
                 "ADAPTER_SITES", "BITFIT_SITES", "AdapterWrapper", "PrefixTuning", "BitFitWrapper", "Probe"):
        assert hasattr(peft, name), name


def test_unknown_lora_target_lists_valid_names():
    with pytest.raises(PeftError) as err:
        LoRA(lora_targets="query,dense")
    msg = str(err.value)
    assert "dense" in msg
    for name in ("query", "key", "value", "attn_out", "ffn_in", "ffn_out", "all-linear"):
        assert name in msg


# ----------------------------------------------------------------------------
# parameter accounting

def count_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("case", list(CASES))
def test_trainable_counts_match_closed_form(case):
    model = injected(case)
    assert count_trainable(model) == CASES[case].trainable_params(TINY_CONFIG, K)


def test_trainable_counts_by_hand():
    C, I, head = 32, 64, 32 * K + K
    # LoRA r=8 on query,value: 2 layers x 2 targets x r x (in + out)
    assert count_trainable(injected("lora")) == 2 * 2 * 8 * (C + C) + head
    # Houlsby m=16: 2 layers x 2 adapters x (down C*m + m, up m*C + C)
    assert count_trainable(injected("houlsby")) == 2 * 2 * (C * 16 + 16 + 16 * C + C) + head
    # BitFit: per layer q, k, v, attn_out, ffn_out (C each), ffn_in (I), two LayerNorm shifts (C each)
    assert count_trainable(injected("bitfit")) == 2 * (5 * C + I + 2 * C) + head
    # prefix P=5: one key and one value of width C per layer and position
    assert count_trainable(injected("prefix")) == 5 * 2 * 2 * C + head


def test_param_summary_line():
    model = injected("lora")
    line = param_summary(model)
    m = re.fullmatch(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+) \|\| trainable: (\d+\.\d\d)%", line)
    assert m, line
    trainable, total = (int(g.replace(",", "")) for g in m.groups()[:2])
    assert trainable == count_trainable(model) and total == sum(p.numel() for p in model.parameters())
    assert float(m.group(3)) == pytest.approx(100 * trainable / total, abs=0.005)


def test_linear_probe_trains_the_head_alone_on_fixed_features(tiny_model_dir):
    import build
    import train
    args = train.parse_args(["--method", "probe", "--model", tiny_model_dir, "--max_len", "32"])
    model, _ = build.build_model(args, 3)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    model.train()
    assert not model.encoder.training and model.head_dropout.training  # the head keeps its dropout
    ids = torch.randint(1000, 2000, (4, 12))
    mask = torch.ones_like(ids)
    torch.testing.assert_close(model.features(ids, mask), model.features(ids, mask), rtol=0, atol=0)
    plain = build.build_model(train.parse_args(["--method", "lora", "--model", tiny_model_dir, "--max_len", "32"]), 3)[0]
    plain.train()
    assert plain.encoder.training  # every other kind trains with dropout in the encoder
