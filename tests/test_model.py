"""The GPT-2 model: causality, KV cache, parameter counts, sampling."""

from __future__ import annotations

import pytest
import torch
import yaml

from conftest import ROOT
from gpt2.model import GPT, GPTConfig, sample_next

PRESETS = yaml.safe_load((ROOT / "config.yaml").read_text())["models"]


def _tiny(**kw) -> GPT:
    torch.manual_seed(0)
    shape = {"vocab_size": 100, "seq_len": 32, "layers": 2, "heads": 4, "dims": 32, "mlp_ratio": 4, "dropout": 0.0}
    return GPT(GPTConfig(**{**shape, **kw})).eval()


def test_changing_a_future_token_never_changes_earlier_logits():
    model = _tiny()
    ids = torch.randint(0, 100, (2, 20))
    changed = ids.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 100
    a, _, _ = model(ids)
    b, _, _ = model(changed)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_kv_cache_matches_full_recomputation():
    model = _tiny()
    prompt = torch.randint(0, 100, (1, 5))
    cached = model.generate(prompt, max_tokens=20, temperature=0)
    full = prompt
    for _ in range(20):
        logits, _, _ = model(full)
        full = torch.cat([full, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, full)
    # Chunks of several tokens on top of a cache see the cache and their own causal prefix.
    logits_full, _, _ = model(full)
    _, _, past = model(full[:, :10])
    logits_chunk, _, _ = model(full[:, 10:17], past=past)
    torch.testing.assert_close(logits_chunk, logits_full[:, 10:17], atol=1e-5, rtol=1e-5)


def test_generation_stops_at_eos_and_at_seq_len():
    model = _tiny()
    prompt = torch.randint(0, 100, (1, 3))
    greedy = model.generate(prompt, max_tokens=50, temperature=0)
    assert greedy.shape[1] == 32  # capped by the model's positions
    eos = int(greedy[0, 3])
    assert model.generate(prompt, max_tokens=50, temperature=0, eos_id=eos).shape[1] == 4


def gpt2_formula(vocab: int, seq: int, layers: int, dims: int) -> int:
    # token + position embeddings, 12D^2 + 13D per block, final LayerNorm (GPT-2 paper layout).
    return vocab * dims + seq * dims + layers * (12 * dims * dims + 13 * dims) + 2 * dims


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts_match_the_gpt2_formula(name):
    arch = PRESETS[name]
    cfg = GPTConfig(vocab_size=50257, seq_len=1024, mlp_ratio=4, dropout=0.0, **arch)
    with torch.device("meta"):
        model = GPT(cfg)
    counts = model.num_params()
    assert counts["total"] == gpt2_formula(cfg.padded_vocab, 1024, arch["layers"], arch["dims"])
    assert counts["non_embedding"] == arch["layers"] * (12 * arch["dims"] ** 2 + 13 * arch["dims"]) + 2 * arch["dims"]


def test_gpt2_small_has_its_known_size():
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=50257, seq_len=1024, mlp_ratio=4, dropout=0.0, **PRESETS["small"]))
    assert model.num_params()["total"] == 124_475_904  # 124M with the vocab padded to 50304


def test_output_is_tied_and_residual_init_is_scaled():
    model = GPT(GPTConfig(vocab_size=1000, seq_len=16, layers=8, heads=4, dims=256, mlp_ratio=4, dropout=0.0))
    assert model.cfg.padded_vocab == 1024
    std = model.blocks[0].attn.proj.weight.std().item()
    assert abs(std - 0.02 / 4) < 0.002  # 1/sqrt(2 * 8 layers)
    logits, _, _ = model(torch.zeros(1, 4, dtype=torch.long))
    assert logits.shape == (1, 4, 1000)  # padded rows are sliced away


def test_heads_must_divide_dims():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(vocab_size=10, seq_len=8, layers=1, dims=100, heads=3, mlp_ratio=4, dropout=0.0)


def test_nucleus_and_top_k_keep_only_likely_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    top_p = {int(sample_next(logits, 1.0, 0, 0.7, g)) for _ in range(200)}
    assert top_p == {0, 1}
    top_k = {int(sample_next(logits, 1.0, 1, 1.0, g)) for _ in range(50)}
    assert top_k == {0}


def test_output_prior_makes_the_untrained_model_predict_it():
    """With init_output_prior the fresh model's mean prediction is the prior, not the uniform distribution."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=500, seq_len=32, layers=2, heads=2, dims=64, mlp_ratio=4, dropout=0.0)
    counts = torch.arange(1, 501, dtype=torch.float64) ** 2  # a skewed "unigram"
    prior = (counts / counts.sum()).log().float()
    ids = torch.randint(0, 500, (8, 32))
    losses = {}
    for init in (False, True):
        torch.manual_seed(0)
        model = GPT(cfg)
        if init:
            model.init_output_prior(prior)
        with torch.no_grad():
            logits, _, _ = model(ids)
        predicted = logits.float().log_softmax(-1).exp().mean(dim=(0, 1))
        losses[init] = float((prior.exp() * (prior - predicted.log())).sum())  # KL(prior || prediction)
    assert losses[True] < 0.01 < 0.3 < losses[False]


def test_checkpoints_that_name_mlp_ratio_rate_still_load(tmp_path):
    """Checkpoints written before the rename of `rate` (the MLP width multiplier) to `mlp_ratio`."""
    from gpt2.checkpoint import load_model

    model = _tiny()
    legacy = {k: v for k, v in model.cfg.to_dict().items() if k != "mlp_ratio"} | {"rate": model.cfg.mlp_ratio}
    torch.save({"model": model.state_dict(), "model_config": legacy}, tmp_path / "old.pt")
    loaded, _ = load_model(tmp_path / "old.pt", torch.device("cpu"))
    assert loaded.cfg == model.cfg


def test_evaluation_nll_in_chunks_equals_the_whole_batch_loss():
    """`nll` makes at most `chunk_tokens` rows of logits at a time and sums the same NLL as the full logits."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(300, 32, 2, 2, 32, 4, 0.0)).eval()
    ids = torch.randint(0, 300, (5, 33))
    shapes = []
    head = model.head
    model.head = lambda x: shapes.append(tuple(x.shape)) or head(x)
    with torch.no_grad():
        chunked = model.nll(ids[:, :-1], ids[:, 1:], chunk_tokens=48)
        logits, _, _ = model(ids[:, :-1])
    whole = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-6)
    assert max(rows for rows, _ in shapes[:-1]) == 48 and sum(rows for rows, _ in shapes[:-1]) == 160


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA H200 NVL", 835e12), ("NVIDIA GH200 480GB", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A10", 125e12), ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12),
    ("NVIDIA L40", 181e12), ("Tesla V100-SXM2-16GB", 125e12), ("Tesla T4", 65e12), ("NVIDIA GeForce GTX 1080", None)])
def test_each_gpu_gets_its_own_datasheet_peak(name, peak):
    from gpt2.device import datasheet_peak

    assert datasheet_peak(name)[0] == peak


def test_gpus_with_only_emulated_bf16_train_in_fp16(monkeypatch):
    """torch counts emulated bf16 (V100, T4) as supported unless asked not to; those take fp16 + GradScaler."""
    from gpt2.device import half_dtype

    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(
        including_emulation) or including_emulation)
    assert half_dtype(torch.device("cuda")) == torch.float16 and asked == [False]
