"""bitconv.data.decode and the sampler of bitconv.data.synth on tiny random models (CPU, fp32): the decoder computes
the model's own logits step by step, and top-k / top-p sample only from the tokens they keep, the same for a seed."""

from __future__ import annotations

import pytest
import torch

from bitconv.data.decode import HFDecoder
from bitconv.data.sources import parse_source
from bitconv.data.synth import SynthOptions, sample_batch, sample_next, stream_key
from bitconv.errors import DataError

LENGTH = 12


def _model(family: str):
    import transformers

    torch.manual_seed(0)
    if family == "gpt2":
        model = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(n_layer=2, n_embd=96, n_head=6, vocab_size=100, n_positions=64)).eval()
    else:  # 6 query heads over 2 key/value heads: groups of 3
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=96, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
            vocab_size=100, max_position_embeddings=64)).eval()
    if family != "gpt2":
        with torch.no_grad():  # peaked attention, so a wrong head, position or rope shows in the logits
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(8.0)
                layer.self_attn.k_proj.weight.mul_(8.0)
    return model


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_decoder_gives_the_full_forward_logits_at_every_step(family):
    model = _model(family)
    ids = torch.randint(0, 100, (3, LENGTH), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(input_ids=ids).logits
    step = HFDecoder(model, LENGTH)
    for t in range(LENGTH):
        torch.testing.assert_close(step(ids[:, t], t), full[:, t], atol=1e-5, rtol=1e-5)


def test_a_reset_decoder_samples_what_a_fresh_one_does():
    model = _model("llama")
    opts = _opts(length=LENGTH, batch=4)
    step = HFDecoder(model, LENGTH)
    cpu = torch.device("cpu")
    sample_batch(model, 0, 4, opts, torch.Generator().manual_seed(9), cpu, step)  # fills the cache
    reused = sample_batch(model, 0, 4, opts, torch.Generator().manual_seed(5), cpu, step)
    assert torch.equal(reused, sample_batch(model, 0, 4, opts, torch.Generator().manual_seed(5), cpu))


def _opts(**kw) -> SynthOptions:
    return SynthOptions(n_tokens=1000, **kw)


def test_top_k_and_top_p_sample_only_the_tokens_they_keep():
    logits = torch.randn(4000, 30, generator=torch.Generator().manual_seed(3))
    ranks = logits.argsort(-1, descending=True).argsort(-1)  # 0 for the largest logit of a row
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next(logits, _opts(top_k=1), gen), logits.argmax(-1))
    got = sample_next(logits, _opts(top_k=5, top_p=1.0), gen)
    kept = ranks.gather(-1, got[:, None]).squeeze(-1)
    assert kept.max() == 4 and kept.min() == 0  # all five candidates occur, nothing else
    # top-p inside top-k: a row whose best token holds almost all the mass always gives that token
    peaked = logits.clone()
    peaked[:, 7] = 100.0
    assert (sample_next(peaked, _opts(top_k=5, top_p=0.9), gen) == 7).all()
    # top_k=0: the whole vocabulary (with top_p=1 every token can occur)
    assert sample_next(logits, _opts(top_k=0, top_p=1.0), gen).unique().numel() == 30


def test_generation_is_the_same_for_a_seed_and_differs_across_seeds():
    model = _model("llama")
    opts = _opts(length=LENGTH, batch=4)

    def batch(seed: int) -> torch.Tensor:
        return sample_batch(model, 0, 4, opts, torch.Generator().manual_seed(seed), torch.device("cpu"))

    first = batch(5)
    assert first.shape == (4, LENGTH) and (first[:, 0] == 0).all()
    assert torch.equal(first, batch(5)) and not torch.equal(first, batch(6))


@pytest.mark.parametrize("option", ["top_k=-1", "top_k=2.5", "top_p=0", "temperature=0", "length=1"])
def test_bad_sampling_options_are_one_line(option):
    with pytest.raises(DataError, match=r"^teacher:1k\?" + option.replace(".", r"\.") + ": ") as err:
        SynthOptions.from_spec(parse_source(f"teacher:1k?{option}"), seq_len=16, seed=0)
    assert "\n" not in str(err.value)


def test_compile_is_refused_like_any_unknown_option():
    """teacher:N?compile=1 (compiled decoding steps) was removed: measured 3x slower on one H200."""
    with pytest.raises(DataError, match=r"^teacher:1k\?compile=1: unknown option\(s\) compile; use ") as err:
        parse_source("teacher:1k?compile=1")
    assert "\n" not in str(err.value)


def test_the_stream_key_is_the_one_streams_were_cached_under():
    """Pinned (the key of teacher:N streams cached with the removed compile option's `"compile": false`): a change
    here would generate every cached stream again."""
    key = stream_key("model", "tok", SynthOptions(n_tokens=1000, length=32, batch=16))
    assert key == "200de594436ea684d3dd57caa7904ca9b6506c1a2e3fde4ebdfe2eae47675616"


def test_the_default_batch_fits_the_device(monkeypatch):
    """On a GPU the largest power of two up to 2048 whose bf16 key/value cache fits in 40% of the card (SmolLM2-135M:
    22.5 GiB at 2048 x 512 tokens; an H200 measured a 23.0 GiB peak); 16 on the CPU; a batch the spec names wins."""
    from types import SimpleNamespace

    from transformers import Gemma3Config, GPT2Config, LlamaConfig, MambaConfig

    from bitconv.data import synth

    smol = LlamaConfig(num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3)
    assert synth.kv_cache_bytes(smol, 512) * 2048 == 22.5 * 2**30
    gpu = torch.device("cuda", 0)
    cards = {}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=cards[device]))
    for total_gb, batch in [(143.7, 2048), (80, 2048), (40, 1024), (24, 512), (0.001, 1)]:
        cards[gpu] = int(total_gb * 1e9)
        assert synth.default_batch(gpu, smol, 512) == batch, total_gb
    cards[gpu] = int(24e9)
    assert synth.default_batch(gpu, smol, 256) == 1024  # half the length, twice the sequences
    gpt2 = GPT2Config(n_layer=12, n_embd=768, n_head=12)  # full multi-head attention: 18 MiB a sequence
    assert synth.default_batch(gpu, gpt2, 512) == 256
    gemma3 = Gemma3Config()  # the text decoder's sizes are nested (26 layers, 4 kv heads of 256): 52 MiB a sequence
    assert synth.kv_cache_bytes(gemma3, 512) == 2 * 26 * 4 * 256 * 512 * 2
    assert synth.default_batch(gpu, gemma3, 512) == 128
    assert synth.kv_cache_bytes(MambaConfig(), 512) is None  # no attention sizes: the fixed batch of before
    assert synth.default_batch(gpu, MambaConfig(), 512) == 1024
    assert synth.default_batch(torch.device("cpu"), smol, 512) == 16

    model = SimpleNamespace(config=smol)
    assert synth.options_for(parse_source("teacher:1k"), 16, 0, model, gpu).batch == 512
    assert synth.options_for(parse_source("teacher:1k?batch=8"), 16, 0, model, gpu).batch == 8
    assert synth.options_for(parse_source("teacher:1k"), 16, 0, model, torch.device("cpu")).batch == 16
