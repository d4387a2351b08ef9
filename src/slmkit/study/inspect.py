"""See inside a model (`slm inspect`) and a tokenizer (`slm tokenize`).

`inspect_prompt` runs one prompt through the model once, with attention written out (`record_attention`), and
returns what happened at every position: the tokens; the next-token top-k and its entropy; each layer's attention
weights per head; and the logit lens, the token each layer's residual stream would predict if it were read out
through the final norm and the head right there. `write_inspect_page` draws the PNGs and one self-contained HTML
page (the PNGs embedded as data URIs, as `slm report` does). `tokenize_text` splits a text with one tokenizer.

Positions and layers count from 0, as the parameter names do (`blocks.0` is layer 0).
"""

from __future__ import annotations

import base64
import html
import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from slmkit.base.atomic import atomic_write_text
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import TiktokenTokenizer, Tokenizer, build_tokenizer, parse_kind
from slmkit.data.dataset import find_tokenizer
from slmkit.model.gpt import GPT, record_attention
from slmkit.runs.checkpoint import load_model
from slmkit.study.expectations import entropy_hint
from slmkit.study.report import CSS as REPORT_CSS

PAGE_FILE, ENTROPY_FILE = "inspect.html", "entropy.png"
LABEL_MAX_TOKENS = 32
"""Attention heatmaps and the entropy chart put token labels on their axes up to this many tokens."""
VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


class InspectError(SlmError):
    """Bad input to `slm inspect` or `slm tokenize`: empty prompt, unknown layer or head, unusable tokenizer."""


# ---------------------------------------------------------------------------------------------------------
# Tokens


@dataclass(frozen=True)
class Token:
    """One token: its id, its bytes and how it is shown (whitespace visible, bytes that are no text as hex)."""

    id: int
    bytes: bytes
    text: str


def visible(raw: bytes) -> str:
    """`raw` as text with whitespace and control characters made visible: space ␣, newline ↵, tab ⇥; bytes that are
    not complete UTF-8 (a byte-level token can hold part of a character) as hex in angle brackets, e.g. ⟨e2 80⟩."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "⟨" + " ".join(f"{b:02x}" for b in raw) + "⟩"
    out = []
    for c in text:
        if c in VISIBLE:
            out.append(VISIBLE[c])
        elif unicodedata.category(c)[0] == "C" or unicodedata.category(c) == "Zs":
            out.append(f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


def token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    """The bytes one token stands for (a special token: its text)."""
    if isinstance(tokenizer, TiktokenTokenizer):
        return tokenizer.enc.decode_single_token_bytes(token_id)
    return tokenizer.decode([token_id]).encode("utf-8")


def make_token(tokenizer: Tokenizer, token_id: int) -> Token:
    raw = token_bytes(tokenizer, token_id)
    return Token(token_id, raw, visible(raw))


# ---------------------------------------------------------------------------------------------------------
# Tokenize


@dataclass
class Split:
    """A text split by one tokenizer."""

    source: str  # what was asked for: a directory or "gpt2"
    name: str  # the tokenizer's name, e.g. bpe:4096
    fingerprint: str
    vocab_size: int
    tokens: list[Token]
    n_bytes: int  # UTF-8 bytes of the text

    @property
    def bytes_per_token(self) -> float:
        return self.n_bytes / max(1, len(self.tokens))


def open_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer of a run, dataset or tokenizer directory (a quantized model's directory too), or `gpt2`.
    `char` and `bpe:N` are learned from a corpus, so they come only from a directory that holds one."""
    if Path(spec).is_dir():
        return find_tokenizer(spec)
    if spec == "gpt2":
        return build_tokenizer("gpt2")
    try:
        parse_kind(spec)
    except SlmError:
        raise InspectError(f"{spec}: no such directory; give a run, dataset or tokenizer directory, or gpt2") from None
    raise InspectError(f"a {spec} tokenizer is learned from a corpus, so it needs the one a run, dataset or tokenizer "
                       "directory holds (`slm tokenizer train` makes one); give that directory, or gpt2")  # fmt: skip


def tokenize_text(spec: str, text: str) -> Split:
    """Split `text` with the tokenizer `spec` names (see `open_tokenizer`). Special-token strings in the text
    become their special ids, as in a prompt."""
    if not text:
        raise InspectError("empty text: nothing to tokenize")
    tok = open_tokenizer(spec)
    ids = tok.encode(text, allow_special=True)
    return Split(spec, tok.name, tok.fingerprint, tok.vocab_size, [make_token(tok, i) for i in ids],
                 len(text.encode("utf-8")))  # fmt: skip


def format_split(split: Split, limit: int = 100) -> str:
    """The split as text: a summary, the tokens in a row with | between them, then a table of id and bytes."""
    lines = [f"tokenizer    {split.name} from {split.source} (fingerprint {split.fingerprint}, "
             f"vocabulary {split.vocab_size:,})",
             f"text         {split.n_bytes:,} bytes -> {len(split.tokens):,} tokens: "
             f"{split.bytes_per_token:.2f} bytes per token", "",
             "|" + "|".join(t.text for t in split.tokens[: limit or None]) + "|"
             + (f" ... ({len(split.tokens) - limit:,} more)" if limit and len(split.tokens) > limit else ""),
             "", f"{'#':>5}  {'id':>7}  {'token':<16}  bytes"]  # fmt: skip
    for i, t in enumerate(split.tokens[: limit or None]):
        lines.append(f"{i:>5}  {t.id:>7}  {t.text:<16}  {t.bytes.hex(' ')}")
    if limit and len(split.tokens) > limit:
        lines.append(f"... {len(split.tokens) - limit:,} more tokens (--limit 0 lists them all)")
    return "\n".join(lines)


def format_comparison(a: Split, b: Split, limit: int = 100) -> str:
    """Two splits of the same text: counts and bytes per token side by side, then each split in full."""
    rows = [("", a.source, b.source), ("tokenizer", a.name, b.name), ("vocabulary", f"{a.vocab_size:,}",
            f"{b.vocab_size:,}"), ("tokens", f"{len(a.tokens):,}", f"{len(b.tokens):,}"),
            ("bytes/token", f"{a.bytes_per_token:.2f}", f"{b.bytes_per_token:.2f}"),
            ("fingerprint", a.fingerprint, b.fingerprint)]  # fmt: skip
    width = max(len(r[1]) for r in rows) + 3
    out = [f"{r[0]:<13}{r[1]:<{width}}{r[2]}" for r in rows]
    fewer = a if len(a.tokens) < len(b.tokens) else b
    if len(a.tokens) != len(b.tokens):
        other = b if fewer is a else a
        out.append(f"\n{fewer.source} needs {len(other.tokens) / len(fewer.tokens):.2f}x fewer tokens for these "
                   f"{a.n_bytes:,} bytes: more text fits in the same context.")  # fmt: skip
    for s in (a, b):
        out += ["", f"== {s.source}", format_split(s, limit)]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------
# Inspect


@dataclass
class Inspection:
    """One prompt through one model. Position p is the p-th token the model saw; its predictions are for p + 1."""

    name: str  # the model's label (run directory name)
    description: str  # layers, heads, widths, norm, positions
    prompt: str
    tokens: list[Token]  # what the model saw, after any cut
    cut: int  # tokens cut from the left because the prompt was longer than the context
    block_size: int
    vocab_size: int
    top: list[list[tuple[Token, float]]]  # per position: the top-k next tokens and their probabilities
    entropy: list[float]  # per position: entropy of the next-token distribution, nats
    next_prob: list[float | None]  # per position: probability of the prompt's own next token (None at the last)
    layers: list[int]  # the layers whose attention was kept
    heads: list[int]  # the heads kept of each of those layers
    attention: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> (len(heads), T, T) weights
    lens: list[list[tuple[Token, float]]] = field(default_factory=list)  # row per layer: top-1 and its probability
    lens_rows: list[str] = field(default_factory=list)  # row names: embedding, then after layer 0, 1, ...

    @property
    def entropy_bits(self) -> list[float]:
        return [h / math.log(2) for h in self.entropy]

    @property
    def n_prompt_tokens(self) -> int:
        return self.cut + len(self.tokens)


def _select(given: list[int] | None, n: int, what: str) -> list[int]:
    if not given:
        return list(range(n))
    bad = [i for i in given if not 0 <= i < n]
    if bad:
        raise InspectError(f"no {what} {bad[0]}: this model has {n} {what}s, numbered 0..{n - 1}")
    return sorted(set(given))


def describe(model: GPT) -> str:
    c = model.config
    kv = f" ({c.kv_heads} key/value heads)" if c.kv_heads != c.n_head else ""
    qk = ", QK-norm" if c.qk_norm else ""
    return (f"{c.n_layer} layers x {c.n_head} heads{kv}, width {c.n_embd}, {c.norm_position}-{c.norm}, "
            f"{'RoPE' if c.pos_emb == 'rope' else 'learned'} positions, {c.mlp} MLP{qk}, "
            f"vocabulary {c.vocab_size:,}, context {c.block_size}")  # fmt: skip


@torch.no_grad()
def inspect_prompt(model: GPT, tokenizer: Tokenizer, prompt: str, *, top_k: int = 5, layers: list[int] | None = None,
                   heads: list[int] | None = None, name: str = "model") -> Inspection:  # fmt: skip
    """Run `prompt` once through `model` (in eval mode) and collect what `Inspection` holds. The prompt is encoded as
    `slm sample` does (special-token strings become their ids, nothing is prepended); one longer than the context is
    cut from the left. Probabilities are over the real vocabulary (the padded logits are left out). A model in
    training mode is switched to eval mode for the pass and back after it."""
    cfg = model.config
    if not prompt:
        raise InspectError("empty prompt: give the text to look at, e.g. --prompt 'To be, or not to be'")
    if top_k < 1:
        raise InspectError(f"--top-k must be at least 1, got {top_k}")
    layers, heads = _select(layers, cfg.n_layer, "layer"), _select(heads, cfg.n_head, "head")
    ids = tokenizer.encode(prompt, allow_special=True)
    if not ids:
        raise InspectError(f"the prompt {prompt!r} encodes to no tokens; give some text")
    cut = max(0, len(ids) - cfg.block_size)
    ids = ids[cut:]
    V = min(cfg.vocab_size, tokenizer.vocab_size)
    device = next(model.parameters()).device

    streams: list[torch.Tensor] = []  # the residual stream: block 0's input, then each block's output
    hooks = [model.blocks[0].register_forward_pre_hook(lambda m, args: streams.append(args[0]))]
    hooks += [b.register_forward_hook(lambda m, args, out: streams.append(out)) for b in model.blocks]
    training = model.training
    try:
        with record_attention(model.eval()) as weights:
            logits, _ = model(torch.tensor([ids], device=device))  # (1, T, padded_vocab)
    finally:
        model.train(training)
        for h in hooks:
            h.remove()

    probs = logits[0, :, :V].float().softmax(dim=-1)  # (T, V)
    entropy = torch.special.entr(probs).sum(dim=-1)  # (T,) nats
    p_top, i_top = probs.topk(min(top_k, V), dim=-1)  # (T, k)
    cache: dict[int, Token] = {}

    def tok(i: int) -> Token:
        if i not in cache:
            cache[i] = make_token(tokenizer, i)
        return cache[i]

    top = [[(tok(int(i)), float(p)) for p, i in zip(pr, ir)] for pr, ir in zip(p_top.tolist(), i_top.tolist())]
    next_prob = [float(probs[t, ids[t + 1]]) for t in range(len(ids) - 1)] + [None]
    attention = {layer: weights[layer][0, heads].float().cpu().numpy() for layer in layers}  # (heads, T, T)
    lens = []
    for x in streams:
        lp = model.lm_head(model.norm_f(x))[0, :, :V].float().softmax(dim=-1)  # (T, V)
        p1, i1 = lp.max(dim=-1)
        lens.append([(tok(int(i)), float(p)) for p, i in zip(p1.tolist(), i1.tolist())])
    rows = ["embedding"] + [f"after layer {i}" for i in range(cfg.n_layer)]
    return Inspection(name, describe(model), prompt, [tok(i) for i in ids], cut, cfg.block_size, V, top,
                      entropy.tolist(), next_prob, layers, heads, attention, lens, rows)  # fmt: skip


def inspect_run(run: str | Path, prompt: str, *, checkpoint: str = "best", top_k: int = 5,
                layers: list[int] | None = None, heads: list[int] | None = None) -> Inspection:  # fmt: skip
    """`inspect_prompt` on a run's checkpoint (or a `slm quantize` output directory)."""
    if not prompt:  # before loading anything
        raise InspectError("empty prompt: give the text to look at, e.g. --prompt 'To be, or not to be'")
    model, tokenizer, _, ckpt = load_model(run, checkpoint)
    name = Path(run).resolve().name + (f" ({Path(ckpt).name})" if Path(ckpt) != Path(run) else "")
    return inspect_prompt(model, tokenizer, prompt, top_k=top_k, layers=layers, heads=heads, name=name)


# ---------------------------------------------------------------------------------------------------------
# Charts


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InspectError("drawing the charts needs matplotlib: pip install 'slmkit[plot]'") from None
    return Figure


def plot_attention(result: Inspection, layer: int, path: Path) -> Path:
    """One layer's heads as a grid of heatmaps: row = query position, column = key position, colour = weight."""
    Figure = _figure_class()
    maps, T = result.attention[layer], len(result.tokens)
    labelled = T <= LABEL_MAX_TOKENS
    cols = min(len(result.heads), 4 if labelled else 6)
    rows = -(-len(result.heads) // cols)
    size = 3.4 if labelled else 2.4
    fig = Figure(figsize=(size * cols + 0.8, size * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for n, ax in enumerate(axes.flat):
        if n >= len(result.heads):
            ax.set_axis_off()
            continue
        image = ax.imshow(maps[n], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"layer {layer} head {result.heads[n]}", fontsize=9)
        if labelled:
            labels = [t.text for t in result.tokens]
            ax.set_xticks(range(T), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(T), labels, fontsize=7)
        else:
            ax.tick_params(labelsize=7)
    fig.suptitle(f"layer {layer}: attention weights (row: the token attending; column: the token attended to)",
                 fontsize=10)  # fmt: skip
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="weight")
    fig.savefig(path, dpi=90)
    return path


def plot_entropy(result: Inspection, path: Path) -> Path:
    """Next-token entropy per position (bars) against ln(V), a uniform guess (dashed)."""
    Figure = _figure_class()
    T = len(result.tokens)
    fig = Figure(figsize=(min(14, max(6, 0.35 * T + 2)), 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(T), result.entropy, color="tab:orange")
    ax.axhline(math.log(result.vocab_size), color="tab:blue", ls="--", lw=1,
               label=f"ln(V) = ln({result.vocab_size}) = {math.log(result.vocab_size):.2f}: uniform guess")  # fmt: skip
    if T <= LABEL_MAX_TOKENS:
        ax.set_xticks(range(T), [t.text for t in result.tokens], rotation=90, fontsize=8)
    ax.set_xlabel("position (the token just read)")
    ax.set_ylabel("entropy of the next token (nats)")
    ax.set_ylim(0, math.log(result.vocab_size) * 1.1)
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(path, dpi=90)
    return path


# ---------------------------------------------------------------------------------------------------------
# The page

PAGE_CSS = """
.toks{line-height:2.1;font-family:ui-monospace,Menlo,Consolas,monospace}
.tok{border:1px solid #888;border-radius:3px;padding:1px 3px;margin-right:2px;white-space:pre}
.tok:nth-child(odd){background:#fff3d6}.tok:nth-child(even){background:#dcebfa}
td.mono,span.mono{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre}
.hint{background:#f6f6e8;border-left:4px solid #b5a642;padding:.4em .8em}
.warn{background:#fdecea;border-left:4px solid #c0392b;padding:.4em .8em}
.lens td{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;white-space:pre;text-align:center}
.lens th{font-size:12px;white-space:pre}.scroll{overflow-x:auto}
"""
CSS = REPORT_CSS + PAGE_CSS


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _img(path: Path, alt: str, cls: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img class='{cls}' alt='{_e(alt)}' src='data:image/png;base64,{data}'>"


def _shade(p: float) -> str:
    """A cell background from white (p = 0) to a saturated blue (p = 1), with text that stays readable."""
    light = 100 - 55 * p
    return f"background:hsl(210,75%,{light:.0f}%);color:{'#fff' if light < 62 else '#222'}"


def to_html(result: Inspection, images: dict[str, Path]) -> str:
    r, T = result, len(result.tokens)
    total = sum(len(t.bytes) for t in r.tokens)
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>inspect {_e(r.name)}</title>"
           f"<style>{CSS}</style></head><body>", f"<h1>Inside {_e(r.name)}</h1>",
           f"<p>{_e(r.description)}.</p>"]  # fmt: skip
    if r.cut:
        out.append(f"<p class='warn' id='cut'>The prompt is {r.n_prompt_tokens:,} tokens, longer than the context "
                   f"of {r.block_size}: the first {r.cut:,} were cut; the model read the last {T}.</p>")  # fmt: skip

    out += ["<h2 id='tokens'>Tokens</h2>",
            f"<p>The model reads {T} tokens ({total:,} bytes, {total / T:.2f} bytes per token). A box is one token; "
            "␣ is a space, ↵ a newline, ⇥ a tab, ⟨..⟩ bytes that are only part of a character.</p>",
            "<p class='toks'>" + "".join(f"<span class='tok' title='position {p}, id {t.id}'>{_e(t.text)}</span>"
                                        for p, t in enumerate(r.tokens)) + "</p>",
            "<table id='tokens-table'><tr><th>position</th><th>token</th><th>id</th><th>bytes</th></tr>"]  # fmt: skip
    out += [f"<tr><td>{p}</td><td class='mono'>{_e(t.text)}</td><td>{t.id}</td><td class='mono'>{t.bytes.hex(' ')}"
            "</td></tr>" for p, t in enumerate(r.tokens)]  # fmt: skip
    out.append("</table>")

    mean = sum(r.entropy) / T
    out += ["<h2 id='next'>Next token at each position</h2>",
            "<p>After reading each token the model gives a probability to every token of its vocabulary as the next "
            "one; here are the most likely, and the entropy H of that distribution (how unsure it is).</p>",
            f"<p class='hint' id='entropy-hint'>Mean over the positions: {_e(entropy_hint(mean, r.vocab_size))}</p>",
            _img(images["entropy"], "entropy per position", "entropy"),
            "<div class='scroll'><table id='next-table'><tr><th>position</th><th>just read</th>"
            "<th>top next tokens</th><th>entropy (nats)</th><th>entropy (bits)</th><th>as unsure as a choice among"
            "</th><th>p(the prompt's next token)</th></tr>"]  # fmt: skip
    for p, t in enumerate(r.tokens):
        tops = " ".join(f"<span class='tok'>{_e(c.text)}</span>&nbsp;{100 * q:.1f}%" for c, q in r.top[p])
        nxt = "-" if r.next_prob[p] is None else f"{100 * r.next_prob[p]:.1f}% ({_e(r.tokens[p + 1].text)})"
        out.append(f"<tr><td>{p}</td><td class='mono'>{_e(t.text)}</td><td>{tops}</td><td>{r.entropy[p]:.2f}</td>"
                   f"<td>{r.entropy_bits[p]:.2f}</td><td>{math.exp(r.entropy[p]):,.1f} tokens</td>"
                   f"<td class='mono'>{nxt}</td></tr>")  # fmt: skip
    out.append("</table></div>")

    out += ["<h2 id='attention'>Attention</h2>",
            "<p>Each head mixes in information from earlier tokens. Row i of a heatmap is how token i spreads its "
            "attention over tokens 0..i (the row sums to 1); nothing is above the diagonal, because a token never "
            f"sees later ones. Heads shown: {', '.join(map(str, r.heads))}.</p>"]  # fmt: skip
    for layer in r.layers:
        out += [f"<h3>Layer {layer}</h3>", _img(images[f"attention-{layer}"], f"attention layer {layer}", "attn")]

    out += ["<h2 id='logit-lens'>Logit lens</h2>",
            "<p>The residual stream after each layer, read out through the final norm and the output head as if the "
            "model stopped there: the token it would predict next and its probability (cell colour). The last row "
            "is the model's real prediction; watch it take shape layer by layer.</p>",
            "<div class='scroll'><table class='lens' id='lens-table'><tr><th>position →<br>just read →</th>"
            + "".join(f"<th>{p}<br>{_e(t.text)}</th>" for p, t in enumerate(r.tokens)) + "</tr>"]  # fmt: skip
    for name, row in zip(r.lens_rows, r.lens):
        cells = "".join(f"<td style='{_shade(q)}' title='{100 * q:.1f}%'>{_e(c.text)}</td>" for c, q in row)
        out.append(f"<tr><th>{_e(name)}</th>{cells}</tr>")
    out.append("</table></div>")
    out.append(f"<h2>Prompt</h2><pre>{_e(r.prompt)}</pre>")
    return "\n".join(out) + "\n</body></html>\n"


def write_inspect_page(result: Inspection, out: str | Path) -> Path:
    """Write the PNGs (entropy.png, attention-layer<i>.png) and the self-contained inspect.html into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = {"entropy": plot_entropy(result, out / ENTROPY_FILE)}
    for layer in result.layers:
        images[f"attention-{layer}"] = plot_attention(result, layer, out / f"attention-layer{layer}.png")
    page = out / PAGE_FILE
    atomic_write_text(page, to_html(result, images))
    return page
