"""The encoder against the reference implementation, the name map, and bad weight files."""

import copy
import json
import os

import pytest
import torch

from model import (BertConfig, Encoder, ModelLoadError, default_model_dir, hf_name_map, load_pretrained,
                   load_encoder_weights, mean_pool, save_encoder_weights)

HERE = os.path.dirname(__file__)
# produced with Hugging Face transformers (eager attention, fp32) and its pure-Python
# vocab.txt tokenizer; see "generated_by" inside the file
REFERENCE = json.load(open(os.path.join(HERE, "reference_minilm.json")))
TOL = 1e-5


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained()


def encode_padded(tokenizer, sentences):
    ids = [e.ids for e in tokenizer.encode_batch(sentences)]
    T = max(map(len, ids))
    input_ids = torch.tensor([x + [0] * (T - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in ids])
    return ids, input_ids, mask


def test_tokenizer_matches_reference_wordpiece(minilm):
    _, tok = minilm
    ids, _, _ = encode_padded(tok, REFERENCE["sentences"])
    assert ids == REFERENCE["input_ids"]
    assert tok.padding is None and tok.truncation is None


def test_issue_reference_values(minilm):
    """The values quoted in the foundation issue, computed with the reference implementation."""
    enc, tok = minilm
    s = ["A gripping, beautifully acted film.",
         "The plot is thin and the jokes fall flat, but the cast is fun to watch."]
    ids, input_ids, mask = encode_padded(tok, s)
    assert ids[0] == [101, 1037, 13940, 1010, 17950, 6051, 2143, 1012, 102]
    with torch.no_grad():
        h = enc(input_ids, mask)
    torch.testing.assert_close(h[0, 0, :5], torch.tensor([-0.07066477, -0.46160901, 0.22853455, -0.25514627, 0.05844112]),
                               atol=TOL, rtol=0)
    torch.testing.assert_close(h[1, 0, :5], torch.tensor([-0.04894093, -0.20729099, 0.15882823, -0.00440209, 0.04292287]),
                               atol=TOL, rtol=0)
    e = torch.nn.functional.normalize(mean_pool(h, mask), dim=-1)
    assert abs((e[0] @ e[1]).item() - 0.42462569) < TOL


def test_hidden_states_match_reference(minilm):
    enc, tok = minilm
    ids, input_ids, mask = encode_padded(tok, REFERENCE["sentences"])
    with torch.no_grad():
        h = enc(input_ids, mask)
        three = copy.deepcopy(enc)
        three.layers = three.layers[:3]
        h3 = three(input_ids, mask)
    pooled = mean_pool(h, mask)
    for b, x in enumerate(ids):
        n = len(x)
        close = lambda got, key: torch.testing.assert_close(got, torch.tensor(REFERENCE[key][b]), atol=TOL, rtol=0)
        close(h[b, 0, :8], "cls_first8")
        close(h[b, n - 1, :8], "last_token_first8")
        close(pooled[b, :8], "mean_pooled_first8")
        close(h3[b, 0, :8], "layer3_cls_first8")
        assert abs(h[b, :n].norm(dim=-1).sum().item() - REFERENCE["hidden_norm_sum"][b]) < 1e-3  # sum of ~80 norms
    e = torch.nn.functional.normalize(pooled, dim=-1)
    assert abs((e[0] @ e[1]).item() - REFERENCE["cosine_01"]) < TOL


def test_padding_does_not_change_real_tokens(minilm):
    """Also covers the unpadded fast path: a batch without padding runs with no attention mask."""
    enc, tok = minilm
    ids = tok.encode("It's a bore.").ids
    x = torch.tensor([ids])
    padded = torch.tensor([ids + [0] * 7])
    with torch.no_grad():
        a = enc(x, torch.ones_like(x))
        b = enc(padded, (padded != 0).long())
    torch.testing.assert_close(a[0], b[0, :len(ids)], atol=TOL, rtol=0)


TINY = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=32, max_position_embeddings=32)


def write_model_dir(path, encoder, prefix=""):
    from safetensors.torch import save_file, load_file
    os.makedirs(path, exist_ok=True)
    save_encoder_weights(encoder, os.path.join(path, "model.safetensors"))
    if prefix:
        state = load_file(os.path.join(path, "model.safetensors"))
        save_file({prefix + k: v for k, v in state.items()}, os.path.join(path, "model.safetensors"))
    cfg = {k: getattr(encoder.config, k) for k in vars(encoder.config)}
    json.dump({**cfg, "model_type": "bert"}, open(os.path.join(path, "config.json"), "w"))
    src = os.path.join(default_model_dir(), "tokenizer.json")
    with open(src) as f, open(os.path.join(path, "tokenizer.json"), "w") as g:
        g.write(f.read())


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_name_map_round_trip(tmp_path, prefix):
    torch.manual_seed(0)
    enc = Encoder(TINY)
    write_model_dir(tmp_path, enc, prefix)
    loaded, _ = load_pretrained(str(tmp_path))
    for k, v in enc.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert len(hf_name_map(TINY)) == len(enc.state_dict())


def test_missing_weights_file(tmp_path):
    write_model_dir(tmp_path, Encoder(TINY))
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="model.safetensors: weights file not found"):
        load_pretrained(str(tmp_path))


def test_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="model directory not found"):
        load_pretrained(str(tmp_path / "nope"))


def test_corrupt_weights_file(tmp_path):
    write_model_dir(tmp_path, Encoder(TINY))
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:200])  # truncated download
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_pretrained(str(tmp_path))


def test_shape_mismatch_names_the_tensor(tmp_path):
    write_model_dir(tmp_path, Encoder(TINY))
    cfg = json.load(open(tmp_path / "config.json"))
    cfg["intermediate_size"] = 64
    json.dump(cfg, open(tmp_path / "config.json", "w"))
    with pytest.raises(ModelLoadError, match=r"intermediate.dense.weight has shape \(32, 16\)"):
        load_pretrained(str(tmp_path))


def test_missing_tensor(tmp_path):
    from safetensors.torch import load_file, save_file
    write_model_dir(tmp_path, Encoder(TINY))
    state = load_file(tmp_path / "model.safetensors")
    del state["encoder.layer.1.output.dense.bias"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="1 expected tensors missing"):
        load_encoder_weights(Encoder(TINY), str(tmp_path / "model.safetensors"))


def test_unsupported_model_type(tmp_path):
    write_model_dir(tmp_path, Encoder(TINY))
    cfg = json.load(open(tmp_path / "config.json"))
    cfg["model_type"] = "roberta"
    json.dump(cfg, open(tmp_path / "config.json", "w"))
    with pytest.raises(ModelLoadError, match="roberta"):
        load_pretrained(str(tmp_path))


def test_gates_and_prefix_seams():
    """Zero-length prefix and all-ones gates leave a plain encoder unchanged; a gated-off prefix is masked."""
    torch.manual_seed(0)
    enc = Encoder(TINY).eval()
    x = torch.randint(1, 100, (3, 7))
    mask = torch.ones_like(x)
    with torch.no_grad():
        base = enc(x, mask)
        torch.testing.assert_close(enc(x, mask, gates=torch.ones(3, 2)), base)
        prefix = [(torch.randn(4, 16), torch.randn(4, 16)) for _ in range(2)]
        with_prefix = enc(x, mask, prefix=prefix)
        gated_off = enc(x, mask, gates=torch.zeros(3, 2), prefix=prefix)
    assert not torch.allclose(with_prefix, base)
    torch.testing.assert_close(gated_off, base, atol=1e-6, rtol=0)


def test_grad_checkpointing_gives_the_same_gradients():
    """Recomputation replays the RNG, so even with dropout on the loss and gradients are equal."""
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        enc = Encoder(TINY).train()
        enc.grad_checkpointing = ckpt
        calls = []
        enc.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
        torch.manual_seed(1)
        loss = enc(ids, mask)[mask.bool()].pow(2).mean()
        loss.backward()
        assert len(calls) == (2 if ckpt else 1)  # checkpointing really recomputes the layer in backward
        grads.append((loss.detach(), [p.grad.clone() for p in enc.parameters() if p.grad is not None]))
    (l0, g0), (l1, g1) = grads
    assert torch.equal(l0, l1) and len(g0) == len(g1) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1))
