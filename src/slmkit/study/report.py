"""Run reports (`slm report RUN`): RUN/report.md and a self-contained RUN/report.html (charts embedded).

An offline reader of the run dir. Sections: summary (params, tokens, tokens/params vs Chinchilla, losses,
perplexity, bits per byte, throughput, MFU), expected ranges, charts, doctor findings, sample generations,
checkpoints, config and its diff against the preset, hardware and versions. The report is built once as a list
of blocks and rendered twice (Markdown and HTML), so the two always say the same thing.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from pathlib import Path

from slmkit.base.atomic import atomic_write_text
from slmkit.base.chinchilla import TOKENS_PER_PARAM
from slmkit.base.config import ConfigError, diff_configs
from slmkit.base.config_files import load_config, to_toml
from slmkit.base.errors import SlmError
from slmkit.base.metrics import RunMetrics
from slmkit.data.dataset import read_meta
from slmkit.data.stream_data import parse_mix
from slmkit.engine.doctor import diagnose, run_facts
from slmkit.engine.runtime import hardware_summary
from slmkit.model.generate import sample_text
from slmkit.runs import checkpoint as ckpt_io
from slmkit.runs.table import run_params, run_status
from slmkit.study.expectations import hints
from slmkit.study.plots import plot_runs

CHART_FILE, MD_FILE, HTML_FILE = "report.png", "report.md", "report.html"

# A block is one of: ("h2", text) ("p", text) ("ul", [text]) ("table", header, rows) ("pre", text) ("img", path)


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _summary(run_dir: Path, metrics: RunMetrics, info: dict, cfg) -> tuple[list, dict]:
    """The headline numbers as table rows, and the values other sections reuse."""

    train = metrics.step_records()
    val = list(zip(*metrics.series("val/loss")))
    bpb = metrics.last("val/bpb")
    tail = train[-max(1, len(train) // 20) :]
    params = run_params(run_dir)
    tokens = int(max((e.get("train/tokens", 0) for e in train), default=0))
    tok_s = [float(e["perf/tok_per_s"]) for e in train[len(train) // 10 :] if "perf/tok_per_s" in e]
    mfu = [float(e["perf/mfu"]) for e in train[len(train) // 10 :] if "perf/mfu" in e]
    final_val = val[-1][1] if val else None
    best = min(val, key=lambda p: p[1]) if val else None
    ratio = tokens / params if params and tokens else None
    rows = [
        ("status", run_status(run_dir, info)),
        ("steps", _fmt(train[-1]["step"] if train else 0)),
        ("parameters", _fmt(params)),
        ("tokens seen", _fmt(tokens)),
        (
            "tokens / parameter",
            f"{ratio:.2f} (Chinchilla's compute-optimal is ~{TOKENS_PER_PARAM:g})" if ratio else "-",
        ),
        (
            "final train loss (mean of the last 5% of steps)",
            _fmt(statistics.fmean(float(e["train/loss"]) for e in tail) if train else None),
        ),  # fmt: skip
        ("final val loss", _fmt(final_val)),
        ("best val loss", f"{best[1]:.4g} at step {best[0]}" if best else "-"),
        ("val perplexity", _fmt(math.exp(min(final_val, 50)) if final_val is not None else None)),
        ("val bits per byte", _fmt(bpb)),
        ("throughput (median tokens/s)", _fmt(round(statistics.median(tok_s))) if tok_s else "-"),
        ("MFU (median)", f"{100 * statistics.median(mfu):.1f}%" if mfu else "-"),
    ]
    facts = {"final_val": final_val, "initial_val": val[0][1] if val and val[0][0] == 0 else None,
             "step": train[-1]["step"] if train else 0}  # fmt: skip
    return rows, facts


def _config_blocks(cfg) -> list:
    blocks: list = [("h2", "Config")]
    if cfg.preset:
        try:
            diff = diff_configs(load_config(cfg.preset), cfg)
        except ConfigError:
            diff = None
        if diff is None:
            blocks.append(("p", f"Preset {cfg.preset!r} is not available here; no diff."))
        else:
            ignore = ("train.name", "train.out_dir", "model.vocab_size", "data.dir")
            rows = [(k, _fmt(a), _fmt(b)) for k, (a, b) in diff.items() if k not in ignore]
            blocks.append(("p", f"Differences from preset `{cfg.preset}` (run name, output folder and resolved "
                                "vocabulary left out):" if rows else f"Same as preset `{cfg.preset}`."))  # fmt: skip
            if rows:
                blocks.append(("table", ["field", "preset", "this run"], rows))
    else:
        blocks.append(("p", "No preset recorded (a config file was used); full config below."))
    blocks.append(("pre", to_toml(cfg)))
    return blocks


def _sample_blocks(run_dir: Path, n: int, max_new_tokens: int = 200) -> list:
    if n <= 0:
        return []

    blocks: list = [("h2", "Samples"), ("p", f"{n} generation(s) from the best checkpoint, {max_new_tokens} tokens, "
                                              "temperature 0.8, fixed seeds (1234, 1235, ...):")]  # fmt: skip
    try:
        model, tok, _, ckpt = ckpt_io.load_model(run_dir, "best")
        for i in range(n):
            text = sample_text(model, tok, "", max_new_tokens=max_new_tokens, temperature=0.8, seed=1234 + i)
            blocks.append(("pre", text.strip("\n") or "(empty)"))
    except Exception as e:  # a report must not fail because sampling did; say why instead
        blocks.append(("p", f"No samples: {str(e).splitlines()[0] if str(e) else type(e).__name__}"))
    return blocks


def _checkpoint_blocks(run_dir: Path) -> list:
    ckpts = ckpt_io.checkpoints(run_dir)
    if not ckpts:
        return [("h2", "Checkpoints"), ("p", "No checkpoints.")]
    index = ckpt_io.read_index(run_dir)
    rows = []
    for step, path in ckpts:
        state = ckpt_io.read_state(path)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
        tags = [t for t in ("best", "latest") if index.get(t) == step]
        rows.append((str(step), _fmt(state.get("val_loss")), f"{size:.1f} MB", ", ".join(tags), path.name))
    return [("h2", "Checkpoints"), ("table", ["step", "val loss", "size", "", "folder"], rows)]


def _data_blocks(metrics: RunMetrics, cfg) -> list:
    """Stream mode: the training tokens each source gave (data/tokens/<name>) against its data.mix weight, the
    epochs and documents read."""
    names = sorted({k.removeprefix("data/tokens/") for e in metrics.events for k in e if k.startswith("data/tokens/")})
    if not names:
        return []
    tokens = {n: metrics.last(f"data/tokens/{n}") or 0 for n in names}
    total = sum(tokens.values()) or 1
    weights = {name: w for name, _, w in parse_mix(cfg.data.mix)}  # the names data/tokens/<name> uses
    wsum = sum(weights.values()) or 1
    shares = {n: weights[n] / wsum if n in weights else None for n in names}
    rows = [(n, f"{tokens[n]:,.0f}", f"{100 * tokens[n] / total:.1f}%",
             "-" if shares[n] is None else f"{100 * shares[n]:.1f}%") for n in names]  # fmt: skip
    epoch, docs = metrics.last("data/epoch"), metrics.last("data/docs")
    note = f"Stream mode: {docs or 0:,.0f} documents read, epoch {epoch or 0:.0f} of the first source."
    return [("h2", "Data per source"), ("p", note), ("table", ["source", "tokens", "share", "data.mix weight"], rows)]


def _hardware_blocks(info: dict) -> list:
    hw = hardware_summary()
    rows = [(k, str(v)) for k, v in hw.items()] + [("slmkit (training)", str(info.get("slmkit", "-")))]
    return [("h2", "Hardware and versions"), ("p", "Of the machine that wrote this report:"),
            ("table", ["", ""], rows)]  # fmt: skip


def build_report(run_dir: str | Path, samples: int = 2) -> list:
    """The report as a list of blocks (see the comment above `_fmt`). Writes the chart PNG into the run dir."""

    run_dir = ckpt_io.check_run_dir(run_dir)
    info, cfg = ckpt_io.read_run_info(run_dir), ckpt_io.read_run_config(run_dir)
    metrics = RunMetrics.read(run_dir)
    rows, facts = _summary(run_dir, metrics, info, cfg)
    blocks: list = [("h1", f"Run report: {run_dir.name}"),
                    ("p", f"Preset: {cfg.preset or '-'} · data: {cfg.data.source} · tokenizer: {cfg.tokenizer.kind}"
                          f" · parent: {info.get('parent') or '-'} · {cfg.description}".rstrip(" ·")),
                    ("h2", "Summary"), ("table", ["", ""], rows)]  # fmt: skip
    bpt = _bytes_per_token(info)
    blocks += [("h2", "Is this normal?"), ("ul", hints(cfg.preset, cfg.data.source, cfg.tokenizer.kind,
               cfg.model.vocab_size, facts["step"], facts["initial_val"], facts["final_val"], bpt))]  # fmt: skip
    if metrics.has("train/loss"):
        blocks += [("h2", "Charts"), ("img", plot_runs([run_dir], run_dir / CHART_FILE))]
    findings = diagnose(metrics, run_facts(run_dir)) if metrics.events else []
    blocks.append(("h2", "Doctor"))
    blocks.append(("ul", [f"**{f.severity}** · {f.rule} at {f.where()}: {f.what}. Why: {f.why}. Try: {f.fix}."
                          for f in findings]) if findings else ("p", "Healthy: no problems found."))  # fmt: skip
    blocks += _data_blocks(metrics, cfg)
    blocks += _sample_blocks(run_dir, samples) + _checkpoint_blocks(run_dir) + _config_blocks(cfg)
    return blocks + _hardware_blocks(info)


def _bytes_per_token(info: dict) -> float | None:
    try:
        val = read_meta(info["dataset"]).get("splits", {}).get("val", {})
    except (KeyError, SlmError, OSError):
        return None
    return val["bytes"] / val["tokens"] if val.get("bytes") and val.get("tokens") else None


def write_report(run_dir: str | Path, samples: int = 2) -> tuple[Path, Path]:
    """Write RUN/report.md (chart as RUN/report.png) and a self-contained RUN/report.html. Returns both paths."""

    run_dir = Path(run_dir)
    blocks = build_report(run_dir, samples)
    md, page = run_dir / MD_FILE, run_dir / HTML_FILE
    atomic_write_text(md, to_markdown(blocks, run_dir))
    atomic_write_text(page, to_html(blocks))
    return md, page


# ---------------------------------------------------------------------------------------------------------
# Renderers.


def to_markdown(blocks: list, base: Path) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in b[1]))
        elif kind == "table":
            header, rows = b[1], b[2]
            cells = [header, ["---"] * len(header), *[[str(c).replace("|", "\\|") for c in r] for r in rows]]
            out.append("\n".join("| " + " | ".join(c) + " |" for c in cells))
        elif kind == "pre":
            out.append("```\n" + b[1].rstrip("\n") + "\n```")
        elif kind == "img":
            out.append(f"![charts]({Path(b[1]).relative_to(base)})")
    return "\n\n".join(out) + "\n"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{border-bottom:2px solid #444}h2{margin-top:1.6em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 9px;text-align:left;
vertical-align:top}th{background:#eee}pre{background:#f4f4f4;padding:.8em;overflow-x:auto;white-space:pre-wrap}
img{max-width:100%;border:1px solid #ddd}li{margin:.35em 0}"""


def _inline(text: str) -> str:
    """Escape, then render **bold** and `code` (the only inline markup the blocks use)."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def to_html(blocks: list) -> str:
    title = next((b[1] for b in blocks if b[0] == "h1"), "slmkit report")
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body>"]  # fmt: skip
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{_inline(b[1])}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b[1]) if any(b[1]) else ""
            body = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            out.append(f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>")
        elif kind == "pre":
            out.append(f"<pre>{html.escape(b[1])}</pre>")
        elif kind == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            out.append(f"<img alt='charts' src='data:image/png;base64,{data}'>")
    return "\n".join(out) + "\n</body></html>\n"
