"""The run configuration: one typed dataclass tree, built from dicts and overridden from the command line.

Every field has a docstring right under it; those docstrings are the help text of `slm config show` and of the
CLI flags that mirror a field (`field_default`, `field_help`). Configs on disk (presets, TOML) are `config_files`.
Validation lives in each section's `__post_init__` and names the field to change. Derived values
(padded vocabulary, MLP hidden size, accumulation) are computed in one place: `RunConfig.resolve`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from slmkit.base.checks import (
    CONTAMINATION_MODES,
    DEDUP_METHODS,
    QUALITY_FILTERS,
    show,
    suggest,
)
from slmkit.base.config_docs import field_docs
from slmkit.base.config_sections import (
    ConfigError,
    DistillConfig,
    EmbedConfig,
    EvalConfig,
    LogConfig,
    LoraConfig,
    _check_choice,
    _check_ranges,
    _fields,
    check_stream_fields,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class ModelConfig:
    """The transformer's architecture. GPT-2 and LLaMA are two presets of these same fields."""

    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Number of attention (query) heads; must divide n_embd."""
    n_kv_head: int = 0
    """Number of key/value heads (GQA/MQA); 0 means the same as n_head (plain multi-head attention)."""
    n_embd: int = 128
    """Width of the residual stream."""
    block_size: int = 256
    """Context length in tokens."""
    vocab_size: int = 0
    """Vocabulary size; 0 takes it from the tokenizer. Padded up to a multiple of 64 for speed."""
    norm: str = "layernorm"
    """Normalization layer: layernorm | rmsnorm."""
    norm_position: str = "pre"
    """Where the norm sits in each block: pre (GPT-2, LLaMA) | post (original transformer)."""
    norm_eps: float = 1e-5
    """Epsilon of the normalization layers."""
    pos_emb: str = "learned"
    """Position information: learned (absolute, GPT-2) | rope (rotary, LLaMA)."""
    rope_theta: float = 10000.0
    """Base of the rotary frequencies (pos_emb = rope only)."""
    mlp: str = "gelu"
    """Feed-forward type: gelu (tanh approximation, GPT-2) | gelu_exact (erf, nanoGPT's nn.GELU; 4x faster than the
    tanh form on a CPU) | swiglu (LLaMA) | relu2 (squared ReLU, modded-nanogpt)."""
    mlp_hidden: int = 0
    """Hidden size of the MLP; 0 means 4*n_embd (gelu, gelu_exact, relu2) or 8/3*n_embd rounded up to 64 (swiglu)."""
    qk_norm: bool = False
    """Normalize queries and keys per head before attention (stabilizes training at high LR)."""
    bias: bool = True
    """Biases in linear layers and layernorms (GPT-2 has them, LLaMA does not)."""
    qkv_bias: bool = False
    """Biases on the query, key and value projections only (Qwen2 / Qwen2.5); model.bias = true has them already."""
    tie_embeddings: bool = True
    """Share the token embedding matrix with the output head."""
    dropout: float = 0.0
    """Dropout probability; 0 for pretraining small models, 0.1-0.2 for fine-tuning on little data."""
    init_std: float = 0.02
    """Standard deviation of the normal init; residual projections get init_std/sqrt(2*n_layer) (GPT-2)."""

    def __post_init__(self) -> None:
        _check_ranges("model", self)
        _check_choice("model", "norm", self.norm, ("layernorm", "rmsnorm"))
        _check_choice("model", "norm_position", self.norm_position, ("pre", "post"))
        _check_choice("model", "pos_emb", self.pos_emb, ("learned", "rope"))
        _check_choice("model", "mlp", self.mlp, ("gelu", "gelu_exact", "swiglu", "relu2"))
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if self.kv_heads <= 0 or self.n_head % self.kv_heads:
            raise ConfigError(f"model.n_head ({self.n_head}) must be divisible by model.n_kv_head ({self.n_kv_head})")
        if self.bias and self.qkv_bias:
            raise ConfigError("model.qkv_bias adds biases to q, k and v only; model.bias = true has them already "
                              "(set model.bias=false for the Qwen2 block)")  # fmt: skip
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ConfigError(f"rope needs an even head dim; n_embd/n_head = {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden_size(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            return -(-int(8 * self.n_embd / 3) // 64) * 64
        return 4 * self.n_embd


@dataclass
class TokenizerConfig:
    """How text becomes token ids."""

    kind: str = "bpe:4096"
    """char | gpt2 | bpe:<vocab size> (trained on the corpus), or a path to a saved tokenizer directory."""

    def __post_init__(self) -> None:
        k = self.kind
        ok = k in ("char", "gpt2") or (k.startswith("bpe:") and k[4:].isdigit()) or os.sep in k or k.startswith(".")
        if not ok:
            raise ConfigError(
                f"tokenizer.kind = {k!r} is unknown; use char, gpt2, bpe:<vocab size> (e.g. bpe:8192) "
                "or the path of a saved tokenizer directory"
            )


@dataclass
class DataConfig:
    """Where the training text comes from and where its tokens are stored."""

    source: str = "python-stdlib"
    """A built-in corpus (python-stdlib, tinyshakespeare, tinystories, wikitext-2), a file, directory,
    glob, .jsonl, .parquet, or hf:<dataset>[:<config>[:<split>]] (stream mode also reads .jsonl.gz / .jsonl.zst)."""
    dir: str = ""
    """Prepared dataset directory; empty means data/<source>-<tokenizer>. Prepared on first use."""
    val_fraction: float = 0.05
    """Fraction of documents held out for validation."""
    seed: int = 1337
    """Seed of the train/val document split."""
    text_field: str = "text"
    """Field of .jsonl records or column of .parquet files holding the text."""
    include: list[str] = field(default_factory=list)
    """Glob patterns of files to include when the source is a directory (default: all text files)."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns of files to skip when the source is a directory."""
    align_to_docs: bool = False
    """Start training windows at document starts instead of anywhere."""
    fim_rate: float = 0.0
    """Fill-in-the-middle training (Bavarian et al. 2022): the fraction of documents (the piece of each in a
    training window) rearranged as <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> middle, so the model
    learns to infill (`slm complete --suffix`). 0 = plain left-to-right; 0.5 is the paper's choice. The val loss
    stays left-to-right. char/gpt2 tokenizers (and bpe ones trained before the FIM tokens were reserved) get the
    FIM tokens appended. Read by text pretraining (data.format=text); a fine-tuned child keeps its parent's value,
    which records that the weights can infill."""
    fim_spm_rate: float = 0.5
    """Of the FIM documents, the share in suffix-prefix-middle order instead of prefix-suffix-middle."""
    fim_line_rate: float = 0.0
    """Of the FIM documents, the share whose middle is one whole line (cut where a token starts a new line) instead
    of a span between two random positions: the case of an editor completing the line at the cursor, which random
    spans seldom give (`slmkit.data.fim`). Needs data.fim_rate > 0."""
    format: str = "text"
    """text (pretraining on prepared token shards) | auto | alpaca | messages | prompt_completion (supervised
    fine-tuning: chat examples read from data.source, loss only on the assistant's replies) | pairs (contrastive
    embedding training: text pairs read from data.source as embed.pairs says)."""
    packing: bool = True
    """Fine-tuning: pack several whole examples into each block_size row (no loss target crosses from one example
    into the next); false puts one example per row, padded."""
    chat_template: str = "auto"
    """Fine-tuning: how messages become tokens. slm: <|role|>content<|end|> per turn, after end-of-text (its tokens
    are added when missing); model: the parent's own chat template (an imported model's, e.g. ChatML), loss on what
    it renders for each assistant turn; auto: model when the parent has its own template, else slm. Chat and the
    server then use the template the run was tuned with."""
    add_chat_tokens: bool = True
    """Fine-tuning: when the tokenizer lacks the chat tokens (char, gpt2), add them and grow the embeddings (new
    rows start at the mean embedding); false refuses such a tokenizer."""
    dedup: list[str] = field(default_factory=list)
    """Deduplication while preparing: exact (same text) and/or near (MinHash over word 5-grams, Jaccard >=
    data.near_threshold); the first copy is kept. Empty: none. The dataset's meta.json records what was removed."""
    filters: list[str] = field(default_factory=list)
    """Quality filters while preparing: boilerplate, short, encoding, gopher, gopher-repetition, c4, fineweb
    (`slm data clean --help` says what each does). Empty: none. Stream mode applies them on the fly, per
    document (all but boilerplate); data/removed/<rule> counts what they drop."""
    near_threshold: float = 0.7
    """Near-duplicate threshold: estimated Jaccard similarity of word 5-gram sets (data.dedup = near). FineWeb's
    MinHash (14 bands of 8) sits near 0.72; a 2% word edit rate alone brings a copy down to about 0.8."""
    contamination: str = "warn"
    """Documents sharing a 13-gram with an eval task (hellaswag, lambada, ...): warn (name task and count), remove
    (drop those documents) or off (no check). Checked when a dataset is prepared, and in stream mode on the fly:
    the first overlap with each task is logged and data/overlap/<task> counts the documents."""
    contamination_tasks: list[str] = field(default_factory=list)
    """Eval tasks to check against; empty: every task whose files are present under $SLM_DATA_DIR/eval."""
    stream: bool = False
    """Stream the source instead of preparing it: documents are read, tokenized by background workers and packed
    while training, nothing of the corpus is written, training starts in seconds. Use it for corpora too large to
    prepare (web crawls, hf: datasets, big parquet folders) and for data.mix; false (prepared shards) suits small
    corpora read many times. char/bpe tokenizers are then learnt from a sample (or pass a tokenizer dir)."""
    mix: list[str] = field(default_factory=list)
    """Stream mode: several sources with weights, SOURCE=WEIGHT each (e.g. [/data/wiki=0.7,python-stdlib=0.3]);
    weights are shares of training tokens. When set, data.source is not read."""
    shuffle_buffer: int = 1000
    """Stream mode: documents are shuffled in blocks of this many (besides the per-epoch order of files and row
    groups); 1 keeps the source's order within files."""
    val_tokens: int = 262144
    """Stream mode: tokens of held-out documents (chosen by a hash of their text) in the fixed, cached val set."""
    stream_workers: int = 2
    """Stream mode: tokenizer worker processes (0: one background thread in the training process)."""

    def __post_init__(self) -> None:
        _check_ranges("data", self)
        check_stream_fields(self)
        _check_choice("data", "format", self.format,
                      ("text", "auto", "alpaca", "messages", "prompt_completion", "pairs"))  # fmt: skip
        _check_choice("data", "chat_template", self.chat_template, ("auto", "slm", "model"))
        for name in self.dedup:
            _check_choice("data", "dedup", name, DEDUP_METHODS)
        for name in self.filters:
            _check_choice("data", "filters", name, QUALITY_FILTERS)
        _check_choice("data", "contamination", self.contamination, CONTAMINATION_MODES)
        if self.fim_line_rate > 0 and self.fim_rate <= 0:
            raise ConfigError("data.fim_line_rate shapes the middles of fill-in-the-middle documents, but "
                              "data.fim_rate is 0; set data.fim_rate > 0 (e.g. 0.5) or leave data.fim_line_rate at "
                              "0")  # fmt: skip


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    name: str = "adamw"
    """adamw | muon (Muon on hidden matrices, AdamW on embeddings, head, norms and biases)."""
    lr: float = 1e-3
    """Peak learning rate (of AdamW, and of the AdamW groups under muon)."""
    min_lr: float = 1e-4
    """Learning rate at the end of the decay. An override of optim.lr without one of optim.min_lr scales min_lr
    with it (the config's min_lr/lr ratio is kept)."""
    weight_decay: float = 0.1
    """Decoupled weight decay (nanoGPT's rule): applied to every parameter with >= 2 dims (weight matrices,
    embeddings, the head; the Muon matrices under muon), never to norms or biases."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    schedule: str = "cosine"
    """cosine (warmup then cosine to min_lr) | wsd (warmup, stable, decay) | constant (after warmup)."""
    warmup: float = 100
    """Warmup length: steps when >= 1, a fraction of train.max_steps when < 1."""
    decay_fraction: float = 0.2
    """wsd only: fraction of the steps spent decaying to min_lr at the end."""
    muon_lr: float = 0.02
    """Learning rate of the Muon groups (optim.name = muon)."""
    muon_momentum: float = 0.95
    """Momentum of Muon (Nesterov)."""

    def __post_init__(self) -> None:
        _check_choice("optim", "name", self.name, ("adamw", "muon"))
        _check_choice("optim", "schedule", self.schedule, ("cosine", "wsd", "constant"))
        _check_ranges("optim", self)
        if self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr ({self.min_lr}) must be between 0 and optim.lr ({self.lr})")


@dataclass
class TrainConfig:
    """The training loop: batch, steps, device, checkpoints."""

    name: str = ""
    """Run name (describe the hypothesis); empty derives it from the preset and overrides."""
    out_dir: str = "runs"
    """Parent directory of run directories."""
    max_steps: int = 600
    """Number of optimizer steps."""
    batch_size: int = 16
    """Micro-batch size (sequences per forward pass)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step (ignored when tokens_per_step is set)."""
    tokens_per_step: int = 0
    """Tokens per optimizer step; when set, grad_accum is derived from it."""
    seed: int = 1337
    """Seed of model init and dropout."""
    data_seed: int = -1
    """Seed of the data order; -1 uses train.seed. Separate so ablations can vary one without the other."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N | mps."""
    dtype: str = "auto"
    """auto | fp32 | bf16 (autocast). auto picks bf16 on a GPU with bf16, and on a CPU with native bf16 (avx512_bf16
    or amx_bf16) whose bf16 matmuls measured >= 1.3x fp32 here (about 1.3-1.6x fp32's tokens/s for small models,
    the same loss on short runs; on thousands of steps with a large vocabulary bf16 logits cost loss, see
    docs/speedrun.md); fp32 elsewhere. The run's first line says which and why."""
    compile: bool = False
    """torch.compile the model (20-35 s of compilation first; pays off on long runs)."""
    parallel: str = "ddp"
    """With several processes (torchrun, slm train --nproc N): ddp (a full copy of the model per process, gradients
    all-reduced) | fsdp (FSDP2: parameters, gradients and optimizer state sharded across processes)."""
    eval_every: int = 100
    """Evaluate val loss every this many steps (and at the end); 0 evaluates only at the end."""
    eval_batches: int = 20
    """Number of val batches per evaluation, at most: a val split of fine-tuning examples or pairs smaller than that
    is read once (more batches would only read the same examples again)."""
    log_every: int = 10
    """Print a console line every this many steps (metrics.jsonl gets every step)."""
    ckpt_every: int = 0
    """Save a checkpoint every this many steps; 0 means at every eval."""
    ckpt_minutes: float = 0.0
    """Also save a checkpoint when this many minutes passed since the last one; 0 disables."""
    keep_last: int = 2
    """Keep the last K checkpoints (plus the best by val loss)."""
    threads: int = 0
    """CPU threads for torch; 0 lets torch decide."""
    doctor: bool = True
    """Watch loss and gradient norm live: console warnings and doctor/* events in metrics.jsonl."""
    on_spike: str = "none"
    """Guard against loss spikes (needs train.doctor): none | skip (skip that update) | rollback (restore the last
    good checkpoint's weights and optimizer, keep reading new data so the bad window is skipped)."""
    init_from: str = ""
    """Start from another run's weights (its best checkpoint, or a checkpoint dir): continued pretraining and
    fine-tuning. The model section must match the parent's (vocab_size may grow, dropout may change)."""

    def __post_init__(self) -> None:
        _check_choice("train", "dtype", self.dtype, ("auto", "fp32", "bf16"))
        _check_choice("train", "on_spike", self.on_spike, ("none", "skip", "rollback"))
        _check_choice("train", "parallel", self.parallel, ("ddp", "fsdp"))
        if self.on_spike != "none" and not self.doctor:
            raise ConfigError(f"train.on_spike = {self.on_spike!r} needs train.doctor = true (it detects the spikes)")
        _check_ranges("train", self)  # the lower (and upper) bounds of checks.RANGES


@dataclass
class RunConfig:
    """Everything that defines a run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    preset: str = ""
    """Name of the preset this config started from (informational; used in derived run names)."""
    description: str = ""
    """One line saying what this config is for."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> RunConfig:
        """A validated copy with dotted keys changed, e.g. replace(**{"optim.lr": 3e-4})."""
        data = self.to_dict()
        for key, value in overrides.items():
            section, _, name = key.rpartition(".")
            (data.setdefault(section, {}) if section else data)[name] = value
        return from_dict(data)


# ---------------------------------------------------------------------------------------------------------
# Field help: the docstring under each field (`config_docs`), by dotted key.


def _section_of(key: str) -> tuple[type, str]:
    section, _, name = key.partition(".")
    cls = {f.name: f.type_cls for f in _fields(RunConfig)}.get(section)
    if cls is None or name not in {f.name for f in _fields(cls)}:
        raise _unknown(key, all_keys())
    return cls, name


def field_default(key: str) -> Any:
    """The default of a dotted config field, e.g. field_default("data.val_fraction") -> 0.05 (a CLI flag that
    mirrors a field takes its default from here, so the two never drift apart)."""
    cls, name = _section_of(key)
    return getattr(cls(), name)


def field_help(key: str) -> str:
    """The docstring under a dotted config field (the help text of a CLI flag that mirrors it)."""
    cls, name = _section_of(key)
    return field_docs(cls).get(name, "")


def describe(cfg: RunConfig) -> list[tuple[str, Any, Any, str]]:
    """Every leaf field as (dotted key, value, default, help), in declaration order."""
    rows = []
    for sec in _fields(RunConfig):
        if sec.type_cls is None:
            default = getattr(RunConfig(), sec.name)
            rows.append((sec.name, getattr(cfg, sec.name), default, field_docs(RunConfig).get(sec.name, "")))
            continue
        default, docs = sec.type_cls(), field_docs(sec.type_cls)
        for f in _fields(sec.type_cls):
            value = getattr(getattr(cfg, sec.name), f.name)
            rows.append((f"{sec.name}.{f.name}", value, getattr(default, f.name), docs.get(f.name, "")))
    return rows


def all_keys() -> list[str]:
    return [k for k, *_ in describe(RunConfig())]


# ---------------------------------------------------------------------------------------------------------
# Building from dicts, typed coercion, overrides.


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _coerce(key: str, value: Any, t: Any) -> Any:
    """Convert a TOML value or a command-line string to the field's type, or raise naming the field."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(key, value, args[0])
    if origin is list:
        (item_t,) = typing.get_args(t)
        if isinstance(value, str):
            value = _parse_list(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} expects a list of {_type_name(item_t)}, got {value!r}")
        return [_coerce(key, v, item_t) for v in value]
    try:
        if t is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            raise ValueError
        if t is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            if isinstance(value, str):
                try:  # exactly, however large ("1e3" and "2.0" go through float)
                    return int(value.strip().replace("_", ""))
                except ValueError:
                    f = float(value.replace("_", ""))
                if not f.is_integer():
                    raise ValueError
                return int(f)
            return int(value)
        if t is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if t is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (ValueError, TypeError, OverflowError):  # OverflowError: an int too large for a float (TOML's 10**400)
        raise ConfigError(f"{key} expects {_type_name(t)}, got {show(value)}") from None
    raise ConfigError(f"{key}: unsupported field type {t}")  # pragma: no cover


def _unknown(key: str, candidates: list[str]) -> ConfigError:
    close = suggest(key, candidates)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; `slm config show` lists every key"
    return ConfigError(f"unknown config key {key!r}{hint}")


def _parse_list(text: str) -> list:
    """A list field's value as typed on the command line: TOML/JSON list syntax (`["a", "b"]`, `['a']`, `[]`, what
    `slm config show` prints) or the comma form (`a,b`); the items are typed by the caller."""
    s = text.strip()
    if s.startswith("[") and s.endswith("]"):
        try:
            value = tomllib.loads(f"v = {s}")["v"]
        except tomllib.TOMLDecodeError:  # unquoted items, `[*.py, *.md]`: the comma form inside the brackets
            s = s[1:-1]
        else:
            if isinstance(value, list):
                return value
    items = (v.strip() for v in s.split(","))
    return [v[1:-1] if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"" else v for v in items if v]


def _build(cls: type, data: dict, prefix: str) -> Any:
    fields = {f.name: f for f in _fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in fields:
            raise _unknown(key, all_keys())
        f = fields[k]
        if f.type_cls is not None:
            if not isinstance(v, dict):
                raise ConfigError(f"[{key}] must be a table of fields, got {v!r}")
            kwargs[k] = _build(f.type_cls, v, f"{key}.")
        else:
            kwargs[k] = _coerce(key, v, f.type)
    return cls(**kwargs)


def from_dict(data: dict) -> RunConfig:
    """Build a validated RunConfig; unknown keys and wrong types raise ConfigError."""
    return _build(RunConfig, data, "")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.field=value` strings to a nested dict (values are coerced later, in from_dict)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    before = dict(data.get("optim", {}))
    keys = set(all_keys())
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value (e.g. optim.lr=3e-4)")
        key, value = override_key(item), item.split("=", 1)[1]
        if key not in keys:
            raise _unknown(key, sorted(keys))
        if "." in key:
            sec, name = key.split(".", 1)
            data.setdefault(sec, {})[name] = value
        else:
            data[key] = value
    given = {override_key(item) for item in overrides}
    if "optim.lr" in given and "optim.min_lr" not in given:
        _scale_min_lr(data, before)
    return data


def override_key(item: str) -> str:
    """The dotted key of one `key=value` override (`--key=value` too)."""
    return item.split("=", 1)[0].strip().removeprefix("--")


def owned_override(overrides: list[str], owned: tuple[str, ...]) -> str | None:
    """The first key of `overrides` that is in `owned` (fields a verb sets itself, so a user may not), or None."""
    return next((k for k in map(override_key, overrides) if k in owned), None)


def override_value(overrides: list[str], key: str) -> str | None:
    """The value the last `key=value` of `overrides` gives (stripped), or None when none names `key`."""
    for item in reversed(overrides):
        if "=" in item and override_key(item) == key:
            return item.split("=", 1)[1].strip()
    return None


def scaled_min_lr(lr: Any, old_lr: Any, old_min_lr: Any) -> float | None:
    """The min_lr that keeps old_min_lr / old_lr at a new `lr` (the schedule's shape); None when a value is not a
    positive number's string or float (the caller's check names it)."""
    try:
        lr, old_lr, old_min_lr = float(lr), float(old_lr), float(old_min_lr)
    except (TypeError, ValueError):
        return None
    return float(f"{old_min_lr * lr / old_lr:.6g}") if old_lr > 0 else None


def _scale_min_lr(data: dict, before: dict) -> None:
    """optim.lr was overridden and optim.min_lr not: keep the schedule's shape (min_lr/lr) at the new lr."""
    new = scaled_min_lr(data["optim"]["lr"], before.get("lr", OptimConfig.lr), before.get("min_lr", OptimConfig.min_lr))
    if new is not None:  # else from_dict names the bad value
        data["optim"]["min_lr"] = new


def diff_configs(a: RunConfig, b: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ: {key: (a_value, b_value)}."""
    ra, rb = describe(a), describe(b)
    return {k: (va, vb) for (k, va, _, _), (_, vb, _, _) in zip(ra, rb) if va != vb}
