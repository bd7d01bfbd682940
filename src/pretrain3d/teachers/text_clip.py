"""CLIP text towers with Hugging Face ``CLIPTextModelWithProjection`` parameter names.

Architecture (Radford et al., CLIP): token + learned position embeddings (77 positions), pre-LN
transformer layers with a *causal* attention mask (``h += attn(LN1 h)``, ``h += fc2 act(fc1 LN2 h)``,
act = QuickGELU ``x·σ(1.702x)`` for the OpenAI checkpoints), a final LayerNorm, the hidden state
at the end-of-text token (the first ``<|endoftext|>`` of each row; the OpenAI code's
``argmax(token ids)`` picks the same position) and a bias-free ``text_projection``.

Parameter names::

    text_model.embeddings.{token_embedding,position_embedding}.weight
    text_model.encoder.layers.{i}.self_attn.{q_proj,k_proj,v_proj,out_proj}.{weight,bias}
    text_model.encoder.layers.{i}.layer_norm{1,2}.{weight,bias}
    text_model.encoder.layers.{i}.mlp.{fc1,fc2}.{weight,bias}
    text_model.final_layer_norm.{weight,bias}
    text_projection.weight

Weights: a full ``CLIPModel`` checkpoint (its ``vision_model.*``, ``visual_projection.*`` and
``logit_scale`` are skipped, and from a .safetensors file never read), a text-only one, or a bare
``CLIPTextTransformer`` one plus ``text_projection.weight``. Sizes come from the tensor shapes;
heads, activation and LayerNorm eps from ``config.json`` (a ``CLIPConfig``'s ``text_config`` or a
flat ``CLIPTextConfig``), defaulting to the OpenAI values (64-d heads, quick_gelu, 1e-5). The
tokenizer is the repository's ``tokenizer.json`` read with ``tokenizers``, truncated at the
position table's length (77; its post-processor keeps the start/end tokens).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pretrain3d.errors import DataError
from pretrain3d.teachers.base import sha256_file
from pretrain3d.teachers.text_base import TextEncoder
from pretrain3d.teachers.text_bert import drop_position_ids, load_tokenizer, read_state_dict, resolve_model_files

EOS_TOKEN = "<|endoftext|>"
_SKIPPED_PREFIXES = ("vision_model.", "visual_projection.", "logit_scale")
_HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    projection_dim: int = 512
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


_ACTS = {"quick_gelu": _quick_gelu, "gelu": F.gelu}


class _Attention(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.heads = c.num_attention_heads
        self.q_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.k_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.v_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.out_proj = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor, allow: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t):
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                           attn_mask=allow)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, d))


class _MLP(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, c.hidden_size)
        self.act = _ACTS[c.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Layer(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.self_attn = _Attention(c)
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = _MLP(c)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, allow: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), allow)
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embedding = nn.Embedding(c.max_position_embeddings, c.hidden_size)


class _Encoder(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class _TextTransformer(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.embeddings = _Embeddings(c)
        self.encoder = _Encoder(c)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


class CLIPTextModel(nn.Module):
    """``hidden_states`` (B, N, D) after the final LayerNorm; ``embed`` → projected (B, projection_dim)."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        self.text_model = _TextTransformer(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

    def hidden_states(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n = ids.shape[1]
        if n > self.config.max_position_embeddings:
            raise ValueError(f"{n} tokens exceed CLIP's {self.config.max_position_embeddings} positions")
        emb = self.text_model.embeddings
        x = emb.token_embedding(ids) + emb.position_embedding(torch.arange(n, device=ids.device))[None]
        # token i attends to tokens j <= i that are not padding
        allow = torch.ones((n, n), dtype=torch.bool, device=ids.device).tril()[None, None]
        if mask is not None:
            allow = allow & mask.bool()[:, None, None, :]
        for layer in self.text_model.encoder.layers:
            x = layer(x, allow)
        return self.text_model.final_layer_norm(x)

    def embed(self, ids: torch.Tensor, mask: torch.Tensor, eos_index: torch.Tensor) -> torch.Tensor:
        h = self.hidden_states(ids, mask)
        pooled = h[torch.arange(h.shape[0], device=h.device), eos_index]
        return self.text_projection(pooled)


class CLIPTextEncoder(TextEncoder):
    def __init__(self, name: str, model: CLIPTextModel, tokenizer, *, eos_id: int, weights_source: str = "",
                 weights_file: Path | None = None, tokenizer_file: Path | None = None):
        super().__init__()
        self.name = name
        self.model = model
        self.dim = model.config.projection_dim
        self.eos_id = int(eos_id)
        self.max_length = model.config.max_position_embeddings
        self.weights_source = weights_source
        self._weights_file = weights_file
        self._tokenizer_file = tokenizer_file
        self._sha: dict[str, str] = {}
        self.tokenizer = tokenizer
        tokenizer.no_padding()  # padded below, with an attention mask
        tokenizer.enable_truncation(max_length=self.max_length)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, mask, eos_index): (B, N), (B, N), (B,), right-padded with the end token."""
        encs = self.tokenizer.encode_batch(texts)
        n = max(len(e.ids) for e in encs)
        ids = torch.full((len(encs), n), self.eos_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)] = torch.tensor(e.ids)
            mask[i, :len(e.ids)] = 1
        is_eos = (ids == self.eos_id) & mask.bool()
        if not is_eos.any(dim=1).all():
            bad = texts[int((~is_eos.any(dim=1)).nonzero()[0])]
            raise DataError(self._tokenizer_file or Path("tokenizer.json"),
                            f"the tokenizer did not end {bad!r} with {EOS_TOKEN} (its post-processor must add it)")
        return ids, mask, is_eos.int().argmax(dim=1)  # argmax: the first end token

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        ids, mask, eos = (t.to(self.device) for t in self.tokenize(texts))
        return self.model.embed(ids, mask, eos)

    def identity(self) -> dict:
        for key, path in (("weights", self._weights_file), ("tokenizer", self._tokenizer_file)):
            if key not in self._sha and path is not None:
                self._sha[key] = sha256_file(path)
        return {
            "name": self.name,
            "family": "clip",
            "config": asdict(self.model.config),
            "max_length": self.max_length,
            "eos_id": self.eos_id,
            "normalize": True,
            "weights_source": self.weights_source,
            "weights_sha256": self._sha.get("weights"),
            "tokenizer_sha256": self._sha.get("tokenizer"),
        }


# -------------------------------------------------------------------------------------- load


def _read_text_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The text tower's tensors; vision tensors of a full CLIPModel are skipped (and not even read
    from .safetensors); any other name is kept so that the strict load reports it."""
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                keys = [k for k in f.keys() if not k.startswith(_SKIPPED_PREFIXES)]
                sd = {k: f.get_tensor(k) for k in keys}
        except Exception as e:  # a truncated file or a foreign format
            raise DataError(path, f"cannot read model weights ({type(e).__name__}: {e})") from e
    else:
        sd = {k: v for k, v in read_state_dict(path).items() if not k.startswith(_SKIPPED_PREFIXES)}
    for prefix in ("module.", "model.", "clip."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
            sd = {k: v for k, v in sd.items() if not k.startswith(_SKIPPED_PREFIXES)}
    if not any(k.startswith("text_model.") for k in sd) and "embeddings.token_embedding.weight" in sd:
        sd = {k if k == "text_projection.weight" else f"text_model.{k}": v for k, v in sd.items()}
    drop_position_ids(sd, "text_model.embeddings.position_ids", path)
    return sd


def _config_from(sd: dict, path: Path, config_json: Path | None) -> CLIPTextConfig:
    need = ("text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight",
            "text_model.encoder.layers.0.mlp.fc1.weight", "text_projection.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        raise DataError(path, f"not a CLIP text tower with a projection: missing {missing}")
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))}
    vocab, hidden = sd[need[0]].shape
    extra: dict = {}
    if config_json is not None and config_json.is_file():
        try:
            cfg = json.loads(config_json.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(config_json, f"config is not valid JSON ({e})") from e
        text_cfg = cfg.get("text_config") or cfg.get("text_config_dict") or cfg
        extra = {k: text_cfg[k] for k in ("num_attention_heads", "hidden_act", "layer_norm_eps") if k in text_cfg}
    c = CLIPTextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=sd[need[2]].shape[0],
        num_hidden_layers=max(layers) + 1, max_position_embeddings=sd[need[1]].shape[0],
        projection_dim=sd[need[3]].shape[0],
        num_attention_heads=int(extra.get("num_attention_heads", max(hidden // 64, 1))),
        hidden_act=str(extra.get("hidden_act", "quick_gelu")),
        layer_norm_eps=float(extra.get("layer_norm_eps", 1e-5)),
    )
    where = config_json if extra else path
    if c.hidden_act not in _ACTS:
        raise DataError(where, f"unsupported hidden_act {c.hidden_act!r} (supported: {sorted(_ACTS)})")
    if hidden % c.num_attention_heads:
        raise DataError(where, f"hidden size {hidden} is not a multiple of {c.num_attention_heads} heads")
    return c


def _hf_hub_download(repo: str, filename: str) -> str:
    """One file of a Hugging Face repository (a seam for the tests)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo, filename)


def _download_from_hub(name: str, repo: str) -> tuple[Path, Path, Path | None]:
    """(weights file, tokenizer.json, config.json or None) from the hub cache or the network."""
    from pretrain3d.teachers.registry import WeightsUnavailableError

    advice = (f"Without network access, pass weights=<a local directory holding {repo}'s "
              f"{' or '.join(_HUB_WEIGHT_FILES)}, tokenizer.json and config.json> "
              f"(download them elsewhere, e.g. `huggingface-cli download {repo}`, and copy them here)")
    try:
        from huggingface_hub import errors as hub_errors
    except ImportError as e:
        raise WeightsUnavailableError(f"downloading the {name} text encoder needs the 'huggingface_hub' package "
                                      f"(pip install huggingface-hub). {advice}") from e

    def missing_remotely(e: Exception) -> bool:  # the repository lacks the file (the network answered)
        return isinstance(e, hub_errors.EntryNotFoundError) and not isinstance(e, hub_errors.LocalEntryNotFoundError)

    def get(filename: str, optional: bool = False) -> Path | None:
        try:
            return Path(_hf_hub_download(repo, filename))
        except Exception as e:  # no network, DNS, HTTP errors, missing files
            if optional and missing_remotely(e):
                return None
            raise WeightsUnavailableError(f"could not download {filename} of the {name} text encoder from the "
                                          f"Hugging Face hub repository {repo} ({type(e).__name__}: {e}). "
                                          f"{advice}") from e

    tok = get("tokenizer.json")  # small: fail fast when offline
    cfg = get("config.json", optional=True)
    for i, f in enumerate(_HUB_WEIGHT_FILES):
        w = get(f, optional=i + 1 < len(_HUB_WEIGHT_FILES))
        if w is not None:
            return w, tok, cfg
    raise AssertionError("unreachable")


def load_clip_text(name: str, weights: str | Path | None = None, hub_repo: str | None = None) -> CLIPTextEncoder:
    if weights is None:
        if hub_repo is None:
            raise ValueError(f"text encoder {name!r} needs weights=<a local CLIP model directory or weights file>")
        wfile, tok_file, cfg_file = _download_from_hub(name, hub_repo)
        source = f"hf-hub:{hub_repo}"
    else:
        model_dir, wfile = resolve_model_files(weights, name)
        tok_file, cfg_file, source = model_dir / "tokenizer.json", model_dir / "config.json", str(wfile)
    tokenizer = load_tokenizer(tok_file)
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    if eos_id is None:
        raise DataError(tok_file, f"the tokenizer has no {EOS_TOKEN} token: not a CLIP tokenizer")
    sd = _read_text_state_dict(wfile)
    config = _config_from(sd, wfile, cfg_file)
    with torch.device("meta"):  # no random init: every tensor comes from the file (strict)
        model = CLIPTextModel(config)
    from pretrain3d.teachers.registry import _assign

    _assign(model, sd, f"CLIP text tower {config.num_hidden_layers}x{config.hidden_size}", wfile)
    return CLIPTextEncoder(name, model, tokenizer, eos_id=eos_id, weights_source=source, weights_file=wfile,
                           tokenizer_file=tok_file)
