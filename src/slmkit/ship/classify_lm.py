"""Classification by one language model per label (`slm classify train --method lm`): a generative classifier.

Each label gets a child run of the parent that continues pretraining on that label's training texts (the one
training loop: `ship.finetune.init_from_config`, then `engine.train.train`). A text's label is the one whose model
finds it most likely. With every label's model reading the text through the same tokenizer, the posterior is

    log p(label | text) = -NLL_label(text) / T + log p(label) + const

where NLL is the text's summed negative log-likelihood in nats, p(label) the label's share of the training records
and T a temperature fitted on a held-out share of the training records (`calibration`, per label, seeded), because
a sum over hundreds of tokens makes the raw posterior far too sure of itself. The argmax does not depend on T.
This suits labels that differ in how the text is written (authorship, register, domain), where the instruction
tail of the default method (`ship.classify`) has too little signal per example to learn from.

The classifier is a directory, not a run: classify.json (method "label-lms": labels, each label's run, the
temperature, the tokenizer fingerprint) and `labels/label-NN/`, each an ordinary child run (its parent recorded;
`slm runs`, `slm eval` and `slm sample` read it). Each label's training text is one file, `data/label-NN.txt` (its
records joined by blank lines; its last share, 1.5 blocks and the longest record, is the run's val split).
`classify.job.json` records what the classifier is being made from (parent, data and its digest, labels, the
calibration split), so a training stopped part-way (Ctrl-C, SIGTERM, a crash) is continued with `--resume`: finished
label runs are kept, an unfinished one resumes from its last checkpoint (exactly, as `slm train --resume`), and
nothing changed since the start is allowed. classify.json is written last: a folder without it is no classifier.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from slmkit.base.atomic import atomic_path, atomic_write_json
from slmkit.base.config import override_value, owned_override
from slmkit.base.console import progress, say
from slmkit.base.errors import SlmError
from slmkit.engine.train import train as train_run
from slmkit.runs import checkpoint as ckpt_io
from slmkit.ship.classify_data import META_FILE, ClassifyError, Example, refuse_finished, require_finished
from slmkit.ship.finetune import init_from_config
from slmkit.ship.score import score_units

METHOD = "label-lms"
EPOCHS = 5  # default passes over a label's texts when train.max_steps is not given
MIN_STEPS, MAX_STEPS = 10, 1000
LM_DEFAULTS = ["optim.lr=3e-4", "optim.min_lr=3e-5", "train.keep_last=1"]
CALIBRATION_SHARE = 0.1
T_MIN, T_MAX = 0.1, 1000.0  # the temperature's range (fit_temperature)
MIN_CALIBRATION = 10  # held-out records needed to fit the temperature (fewer: T = 1, and every record trains)
_OWNED = ("data.source", "data.dir", "data.format", "train.name", "train.out_dir", "train.init_from")
MIN_WINDOWS = 5  # a label's text must fill this many blocks (and twice its val split)
SEPARATOR = "\n\n"  # between a label's records in its training text
PREDICT_CHUNK = 1024  # texts every label's model reads before their predictions are yielded
JOB_FILE = "classify.job.json"


def calibration_split(examples: list[Example], labels: list[str], share: float, seed: int) -> tuple[list, list]:
    """(train, held-out) records: `share` of each label's records (rounded, none for a label of fewer than 5) held
    out by a seeded draw; no hold-out at all when that gives fewer than MIN_CALIBRATION records."""
    if not 0.0 <= share < 1.0:
        raise ClassifyError(f"the calibration share must be in [0, 1), got {share}")
    rng = random.Random(seed)
    held: set[int] = set()
    for lab in labels:
        idx = [i for i, ex in enumerate(examples) if ex.label == lab]
        k = round(share * len(idx)) if len(idx) >= 5 else 0
        held.update(rng.sample(idx, k))
    if len(held) < MIN_CALIBRATION:
        return list(examples), []
    return [ex for i, ex in enumerate(examples) if i not in held], [ex for i, ex in enumerate(examples) if i in held]


def default_steps(n_tokens: int, tokens_per_step: int) -> int:
    """EPOCHS passes over `n_tokens`, clamped to [MIN_STEPS, MAX_STEPS]."""
    return max(MIN_STEPS, min(MAX_STEPS, math.ceil(EPOCHS * n_tokens / max(tokens_per_step, 1))))


def train(parent: str | Path, examples: list[Example], labels: list[str], out: Path, *,
          overrides: list[str], checkpoint: str, calibration: float = CALIBRATION_SHARE, seed: int = 1337,
          progress: bool = True, meta: dict, resume: bool = False) -> Path:  # fmt: skip
    """Train one child run of `parent` per label under `out`, fit the temperature on the held-out records, write
    out/classify.json (`meta`, which holds label_counts, plus this method's fields); returns `out`. `resume`
    continues an unfinished `out` made from the same job (see the module docstring)."""
    key = owned_override(overrides, _OWNED)
    if key:
        raise ClassifyError(f"{key} is set by `slm classify train --method lm` (one run per label, under the "
                            "classifier's folder); drop that override")  # fmt: skip
    run = ckpt_io.check_run_dir(parent)
    ckpt = ckpt_io.resolve_checkpoint(run, checkpoint)
    tokenizer = ckpt_io.run_tokenizer(run)
    cfg = init_from_config(ckpt, overrides=[*LM_DEFAULTS, *overrides])  # bad overrides fail here, before any file
    block = cfg.model.block_size
    tokens_per_step = cfg.train.tokens_per_step or cfg.train.batch_size * block * cfg.train.grad_accum
    fit, held = calibration_split(examples, labels, calibration, seed)
    texts = {lab: [ex.text for ex in fit if ex.label == lab] for lab in labels}
    lengths = {lab: [len(tokenizer.encode(t)) + 2 for t in texts[lab]] for lab in labels}
    n_tokens = {lab: sum(lengths[lab]) for lab in labels}
    val_tokens = {lab: math.ceil(1.5 * (block + 1)) + max(lengths[lab], default=0) for lab in labels}
    for lab in labels:
        need = max(MIN_WINDOWS * (block + 1), 2 * val_tokens[lab])
        if n_tokens[lab] < need:
            raise ClassifyError(f"label {lab!r} has {n_tokens[lab]} tokens of training text; --method lm trains a "
                                f"model per label and needs at least {need} per label here ({MIN_WINDOWS} blocks, and "
                                "a val split of 1.5 blocks beside the longest record); add records or use --method "
                                "tail")  # fmt: skip
    job = {**meta, "checkpoint": str(ckpt.resolve()), "calibration": calibration, "seed": seed,
           "examples_sha256": _digest(examples)}  # fmt: skip
    if resume:
        _check_job(out, job)
    else:
        out.mkdir(parents=True)
        atomic_write_json(out / JOB_FILE, job)
    try:
        runs = {lab: _train_label(ckpt, out, k, lab, texts[lab], n_tokens[lab], val_tokens[lab], tokens_per_step,
                                  overrides, len(labels), progress) for k, lab in enumerate(labels)}  # fmt: skip
        temperature, cal_nll = 1.0, None
        priors = {lab: meta["label_counts"][lab] / len(examples) for lab in labels}
        if held:
            nll = label_nlls(out, runs, labels, [ex.text for ex in held], "best", show_progress=progress)
            y = np.array([labels.index(ex.label) for ex in held])
            temperature, cal_nll = fit_temperature(nll, np.log([priors[lab] for lab in labels]), y)
        atomic_write_json(out / META_FILE, {
            **meta, "method": METHOD, "runs": runs, "checkpoint": "best", "priors": priors,
            "temperature": temperature, "calibration": {"records": len(held), "share": calibration, "seed": seed,
                                                        "nll": cal_nll},
            "tokenizer_fingerprint": tokenizer.fingerprint,
        })  # fmt: skip
    except BaseException:
        if not (out / "labels").exists():  # nothing trained yet: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def _digest(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.text, ex.label], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def _check_job(out: Path, job: dict) -> None:
    """Refuse --resume of a folder that is not an unfinished classifier made from this same job."""
    refuse_finished(out)
    path = out / JOB_FILE
    if not path.is_file():
        raise ClassifyError(f"nothing to resume: {path} does not exist; drop --resume to start the classifier")
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClassifyError(f"{path} is damaged ({e}); remove {out} and train the classifier again") from None
    changed = sorted(k for k in set(job) | set(old) if json.dumps(job.get(k)) != json.dumps(old.get(k)))
    if changed:
        raise ClassifyError(f"cannot resume {out}: {', '.join(changed)} changed since it started; train a new "
                            "classifier with another --name")  # fmt: skip


def _train_label(ckpt: Path, out: Path, k: int, label: str, texts: list[str], n_tokens: int, val_tokens: int,
                 tokens_per_step: int, overrides: list[str], n_labels: int, show_progress: bool) -> str:  # fmt: skip
    """Write label k's text and train its child run; returns the run's path relative to `out`."""
    src = out / "data" / f"label-{k:02d}.txt"  # one text file: its last val_fraction is the val split
    src.parent.mkdir(exist_ok=True)
    with atomic_path(src) as tmp:
        Path(tmp).write_text(SEPARATOR.join(texts) + "\n", encoding="utf-8")
    val = max(0.05, val_tokens / n_tokens)  # the split falls between lines: a whole record's margin
    steps = int(override_value(overrides, "train.max_steps") or default_steps(n_tokens, tokens_per_step))
    batches = max(1, math.ceil(val * n_tokens / tokens_per_step))  # the val split about once over, not 20 times
    ov = [*LM_DEFAULTS, f"train.max_steps={steps}", f"train.eval_every={steps}", f"data.val_fraction={val:.4f}",
          f"train.eval_batches={batches}",
          f"optim.warmup={max(1, min(steps // 10, 100))}", *overrides, f"data.source={src}",
          f"data.dir={out / 'data' / f'label-{k:02d}'}", f"train.out_dir={out / 'labels'}",
          f"train.name=label-{k:02d}"]  # fmt: skip
    run = out / "labels" / f"label-{k:02d}"
    if run.is_dir() and ckpt_io.read_run_info(run).get("status") == "finished":
        say(f"classify: label {k + 1}/{n_labels} {label!r}: trained already ({run})")
    elif run.is_dir():  # left unfinished by an earlier attempt: continue it from its last checkpoint
        say(f"classify: label {k + 1}/{n_labels} {label!r}: resuming {run}")
        train_run(overrides=ov, resume=run, progress=show_progress)
    else:
        say(f"classify: label {k + 1}/{n_labels} {label!r}: {len(texts)} records, {n_tokens:,} tokens, {steps} steps")
        run = train_run(init_from_config(ckpt, overrides=ov), overrides=ov, progress=show_progress)
    require_finished(run, f"label {label!r}")
    return str(run.relative_to(out))


def label_nlls(root: Path, runs: dict[str, str], labels: list[str], texts: list[str], checkpoint: str,
               show_progress: bool = False) -> np.ndarray:  # fmt: skip
    """(n_texts, n_labels) summed negative log-likelihood in nats of each text under each label's model (one model
    in memory at a time)."""
    out = np.zeros((len(texts), len(labels)))
    bar = progress(len(texts) * len(labels), desc="classify", unit="doc", enabled=show_progress)
    try:
        for j, lab in enumerate(labels):
            model, tok, _cfg, _ckpt = ckpt_io.load_model(root / runs[lab], checkpoint)
            for i, r in enumerate(score_units(model, tok, texts, top_spans=0)):
                if r.get("error") or r["loss"] is None:
                    raise ClassifyError(f"document {i + 1} cannot be scored: {r.get('error') or 'under 2 tokens'}")
                out[i, j] = r["loss"] * r["tokens"]
                bar.update(1)
            del model
    finally:
        bar.close()
    return out


def posterior(nll: np.ndarray, log_prior: np.ndarray, temperature: float) -> np.ndarray:
    """Rows of label probabilities from summed NLLs, log priors and a temperature."""
    z = -nll / temperature + log_prior
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def fit_temperature(nll: np.ndarray, log_prior: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The temperature on a log-spaced grid from T_MIN to T_MAX (40 points a decade) that minimises the held-out
    records' mean negative log posterior of their true label; returns (T, that mean). T_MIN bounds the sharpening:
    held-out records a model tells apart perfectly would push T to 0 and every probability to 1."""

    def loss(t: float) -> float:
        p = posterior(nll, log_prior, t)[np.arange(len(y)), y]
        return float(-np.log(np.maximum(p, 1e-12)).mean())

    grid = np.logspace(np.log10(T_MIN), np.log10(T_MAX), 40 * round(np.log10(T_MAX / T_MIN)) + 1)
    losses = [loss(t) for t in grid]
    k = int(np.argmin(losses))
    return float(grid[k]), losses[k]


class LabelLMClassifier:
    """A label-lms classifier loaded for prediction; `predict` has ship.classify.Classifier's interface."""

    def __init__(self, root: str | Path, meta: dict, checkpoint: str | None = None):
        self.root, self.meta = Path(root), meta
        self.labels: list[str] = list(meta["labels"])
        runs = meta.get("runs")
        if not isinstance(runs, dict) or set(runs) != set(self.labels):
            raise ClassifyError(f"{self.root / 'classify.json'} does not name a run for every label; train again")
        priors = meta.get("priors")
        if not isinstance(priors, dict) or set(priors) != set(self.labels):
            raise ClassifyError(f"{self.root / 'classify.json'} does not give a prior for every label; train again")
        self.runs = runs
        for lab in self.labels:
            try:
                tok = ckpt_io.run_tokenizer(self.root / runs[lab])
            except SlmError as e:
                raise ClassifyError(f"the run of label {lab!r} cannot be read ({e}); train the classifier "
                                    "again") from None  # fmt: skip
            if meta.get("tokenizer_fingerprint") not in (None, tok.fingerprint):
                raise ClassifyError(f"the run of label {lab!r} has tokenizer {tok.fingerprint}, not the one the "
                                    f"classifier was trained with ({meta['tokenizer_fingerprint']})")  # fmt: skip
        self.checkpoint = checkpoint or meta.get("checkpoint", "latest")
        self.log_prior = np.log([float(priors[lab]) for lab in self.labels])
        self.temperature = float(meta.get("temperature", 1.0))

    def probabilities(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        nll = label_nlls(self.root, self.runs, self.labels, texts, self.checkpoint, show_progress)
        return posterior(nll, self.log_prior, self.temperature)

    def predict(self, items: Iterable[tuple[str, str]], show_progress: bool = False,
                total: int | None = None) -> Iterator[dict]:  # fmt: skip
        """Per (id, text): id, label, probability, probs. Items are read PREDICT_CHUNK at a time: every label's model
        reads a chunk (one model in memory at a time) before its records are yielded, so output streams and memory
        stays bounded on any input size."""
        it = iter(items)
        while chunk := list(itertools.islice(it, PREDICT_CHUNK)):
            probs = self.probabilities([t for _, t in chunk], show_progress)
            for (id_, _), p in zip(chunk, probs, strict=True):
                k = int(p.argmax())
                yield {"id": id_, "label": self.labels[k], "probability": float(p[k]),
                       "probs": {lab: float(v) for lab, v in zip(self.labels, p, strict=True)}}  # fmt: skip
