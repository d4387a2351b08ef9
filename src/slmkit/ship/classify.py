"""Text classification with an instruction tail: the model learns to continue "<text>\\nLabel:" with a label.

`train` turns each labelled example into a prompt/completion pair (prompt `TEMPLATE` with the text, completion
" <label>") and fine-tunes a child run through the ordinary SFT path (`ship.finetune.sft`, data.format =
prompt_completion), so the loss falls on the label's tokens and its end-of-turn only. The label set, the template
and the text budget (how many tokens of a text fit in the block beside the prompt and the longest label) are
written to the child run dir as `classify.json`.

`predict` never generates: it scores every label's tokens (and the end-of-turn that closes it) after the prompt with
`engine.evaluate.scoring.Scorer` (one prefill of the prompt, the labels as one batch on its KV cache), and the
softmax over those label log-likelihoods gives each label's probability, so the answer is always a valid label.
`evaluate` reports accuracy (with a 95% Wilson interval), macro-F1, the confusion matrix (also drawn as a PNG) and
expected calibration error of the top label's probability. Reading labelled files and the metrics are
`ship.classify_data`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from slmkit.base.atomic import atomic_path, atomic_write_json
from slmkit.base.config import override_key, override_value, owned_override
from slmkit.base.console import progress
from slmkit.base.tokenizer import END_OF_TURN, Tokenizer, load_tokenizer
from slmkit.data.chat import ensure_chat_tokens, render
from slmkit.engine.evaluate.scoring import Scorer
from slmkit.engine.train import train as train_run
from slmkit.model.gpt import GPT
from slmkit.runs import checkpoint as ckpt_io
from slmkit.runs.parents import parent_config
from slmkit.ship import classify_lm
from slmkit.ship.classify_data import (
    META_FILE,
    RESUME_HINT,
    ClassifyError,
    Example,
    classification_metrics,
    label_set,
    plot_confusion,
    read_examples,
    read_inputs,
    refuse_finished,
    require_finished,
)
from slmkit.ship.finetune import sft

TEMPLATE = "{text}\nLabel:"  # the user turn; the assistant turn is " " + label
FORMAT = "slm-classifier"
VERSION = 1
BUDGET_MARGIN = 2  # tokens kept free: re-encoding a cut text can merge differently at the cut
MIN_TEXT_TOKENS = 8
CLASSIFY_DEFAULTS = ["train.max_steps=300", "train.eval_every=50"]
_OWNED = ("data.format", "data.source")  # overrides classify sets itself
METHODS = ("tail", "lm")


# ---------------------------------------------------------------------------------------------------------
# prompts


def _completion(label: str) -> str:
    return " " + label


def _prompt_overhead(tokenizer: Tokenizer) -> int:
    """Tokens of the rendered prompt around an empty text, assistant tag included."""
    ids, _ = render([{"role": "user", "content": TEMPLATE.format(text="")}], tokenizer, add_generation_prompt=True)
    return len(ids)


def text_budget(tokenizer: Tokenizer, block_size: int, labels: list[str]) -> int:
    """How many tokens of a text fit in the block beside the prompt, the longest label and its end-of-turn (the
    model reads block_size + 1 tokens of an example, the last one only as a target)."""
    longest = max(len(tokenizer.encode(_completion(lab))) for lab in labels) + 1
    budget = block_size + 1 - _prompt_overhead(tokenizer) - longest - BUDGET_MARGIN
    if budget < MIN_TEXT_TOKENS:
        raise ClassifyError(f"block_size={block_size} leaves {budget} tokens for the text beside the prompt and "
                            f"the longest label ({longest} tokens); use shorter labels or a longer block")  # fmt: skip
    return budget


def fit_text(tokenizer: Tokenizer, text: str, budget: int) -> str:
    """`text`, cut to its first `budget` tokens when longer (the same cut at training and prediction)."""
    ids = tokenizer.encode(text)
    return text if len(ids) <= budget else tokenizer.decode(ids[:budget])


def prompt(text: str) -> str:
    return TEMPLATE.format(text=text)


# ---------------------------------------------------------------------------------------------------------
# training


def _check_overrides(overrides: list[str]) -> None:
    key = owned_override(overrides, _OWNED)
    if key:
        raise ClassifyError(f"{key} is set by `slm classify train` (prompt/completion pairs made from --data); "
                            "drop that override")  # fmt: skip


def train(parent: str | Path, data: str | Path, *, text_field: str = "text", label_field: str = "label",
          overrides: Iterable[str] = (), checkpoint: str = "best", name: str | None = None,
          progress: bool = True, method: str = "tail", resume: bool = False) -> Path:  # fmt: skip
    """Fine-tune `parent` to classify the records of `data` (.jsonl, `text_field` and `label_field`); returns the
    classifier's dir, which holds `classify.json`. Method "tail": one child run that answers "<text>\nLabel:" with
    the label (labels, template, text budget and tokenizer fingerprint in classify.json; the prompt/completion file
    it trains on is written beside the child run as <child>.classify.jsonl, its config's data.source, so the run
    can be resumed). Method "lm": one child run per label on that label's texts (`ship.classify_lm`). A training
    stopped part-way leaves the classifier unfinished (no classify.json); `resume` continues it from the same data
    and parent (`name` defaults to the first default name)."""
    if method not in METHODS:
        raise ClassifyError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    overrides = list(overrides)
    examples = read_examples(data, text_field, label_field)
    labels = label_set(examples, data)
    run = ckpt_io.check_run_dir(parent)
    if method == "lm":
        return _train_lms(run, data, examples, labels, overrides, checkpoint, name, progress,
                          {"text_field": text_field, "label_field": label_field}, resume)  # fmt: skip
    _check_overrides(overrides)
    ckpt = ckpt_io.resolve_checkpoint(run, checkpoint)
    pcfg = parent_config(ckpt)
    add_chat = override_value(overrides, "data.add_chat_tokens")
    add_chat = pcfg.data.add_chat_tokens if add_chat is None else add_chat.lower() == "true"
    tokenizer = ensure_chat_tokens(load_tokenizer(ckpt / ckpt_io.TOKENIZER_DIR), add_chat)
    budget = text_budget(tokenizer, pcfg.model.block_size, labels)
    out_dir = Path(override_value(overrides, "train.out_dir") or run.parent)
    base = f"{run.name}-classify"
    name = name or override_value(overrides, "train.name") or (base if resume else _free(out_dir, base))
    pairs = out_dir / f"{name}.classify.jsonl"
    recs = ({"prompt": prompt(fit_text(tokenizer, ex.text, budget)), "completion": _completion(ex.label)}
            for ex in examples)  # fmt: skip
    lines = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in recs)
    ov = [*CLASSIFY_DEFAULTS, "data.format=prompt_completion", f"train.out_dir={out_dir}", *overrides,
          f"train.name={name}"]  # fmt: skip
    if resume:
        child = _resume_tail(out_dir / name, pairs, lines, ov, progress)
    else:
        if (out_dir / name).exists():
            child = out_dir / name
            stopped = (child / ckpt_io.RUN_FILE).is_file() and pairs.is_file() and not (child / META_FILE).is_file()
            hint = f", or, since its training was stopped, {RESUME_HINT}" if stopped else ""
            raise ClassifyError(f"run {child} already exists; pick another --name{hint}")
        if pairs.exists():
            raise ClassifyError(f"{pairs} exists (left by an earlier classify run of that name); remove it or pick "
                                "another --name")  # fmt: skip
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(pairs) as tmp:
            Path(tmp).write_text(lines, encoding="utf-8")
        child = sft(run, pairs, ov, checkpoint=checkpoint, progress=progress)
    require_finished(child, f"classifier {child.name}")
    counts = {lab: sum(ex.label == lab for ex in examples) for lab in labels}
    atomic_write_json(child / META_FILE, {
        "format": FORMAT, "version": VERSION, "method": "label-likelihood", "labels": labels, "template": TEMPLATE,
        "completion": " {label}", "text_budget": budget, "text_field": text_field, "label_field": label_field,
        "data": str(Path(data).resolve()), "pairs": str(pairs.resolve()), "examples": len(examples),
        "label_counts": counts, "tokenizer_fingerprint": ckpt_io.run_tokenizer(child).fingerprint,
    })  # fmt: skip
    return child


def _resume_tail(child: Path, pairs: Path, lines: str, overrides: list[str], progress: bool) -> Path:
    """Continue the stopped training of a tail classifier made from the same prompt/completion pairs."""
    refuse_finished(child)
    if not (child / ckpt_io.RUN_FILE).is_file() or not pairs.is_file():
        raise ClassifyError(f"nothing to resume: no unfinished classifier {child} (with {pairs.name} beside it); "
                            "drop --resume to start one")  # fmt: skip
    if pairs.read_text(encoding="utf-8") != lines:
        raise ClassifyError(f"cannot resume {child}: its pairs ({pairs}) differ from those of this data and parent; "
                            "train a new classifier with another --name")  # fmt: skip
    if ckpt_io.read_run_info(child).get("status") != "finished":
        train_run(overrides=overrides, resume=child, progress=progress)
    return child


def _train_lms(run: Path, data, examples: list[Example], labels: list[str], overrides: list[str], checkpoint: str,
               name: str | None, progress: bool, fields: dict, resume: bool) -> Path:  # fmt: skip
    out_dir = Path(override_value(overrides, "train.out_dir") or run.parent)
    base = f"{run.name}-classify-lm"
    name = name or override_value(overrides, "train.name") or (base if resume else _free(out_dir, base))
    overrides = [o for o in overrides if override_key(o) not in ("train.out_dir", "train.name")]
    if (out_dir / name).exists() and not resume:
        folder = out_dir / name
        unfinished = (folder / classify_lm.JOB_FILE).is_file() and not (folder / META_FILE).is_file()
        raise ClassifyError(
            f"{folder} already exists; pick another --name"
            + (f", or, since its training was stopped, {RESUME_HINT}" if unfinished else "")
        )
    counts = {lab: sum(ex.label == lab for ex in examples) for lab in labels}
    meta = {"format": FORMAT, "version": VERSION, "labels": labels, **fields, "data": str(Path(data).resolve()),
            "examples": len(examples), "label_counts": counts, "parent": str(run.resolve())}  # fmt: skip
    return classify_lm.train(run, examples, labels, out_dir / name, overrides=overrides, checkpoint=checkpoint,
                             progress=progress, meta=meta, resume=resume)  # fmt: skip


def _free(out_dir: Path, base: str) -> str:
    """A run name free in out_dir whose data file <name>.classify.jsonl is free too."""
    name, i = base, 2
    while (out_dir / name).exists() or (out_dir / f"{name}.classify.jsonl").exists():
        name, i = f"{base}-{i}", i + 1
    return name


# ---------------------------------------------------------------------------------------------------------
# prediction


def read_meta(run: str | Path) -> dict:
    """The classify.json of a classifier (a run, or the folder of a label-lms classifier); ClassifyError when the
    folder is not one."""
    folder = Path(run)
    path = folder / META_FILE
    if not path.is_file():
        if (folder / classify_lm.JOB_FILE).is_file() or (folder.parent / f"{folder.name}.classify.jsonl").is_file():
            raise ClassifyError(f"{run} is an unfinished classifier (its training stopped); {RESUME_HINT}")
        path = Path(ckpt_io.check_run_dir(run)) / META_FILE
    if not path.is_file():
        raise ClassifyError(f"{run} is not a classifier run ({META_FILE} missing); make one with "
                            "`slm classify train PARENT --data FILE`")  # fmt: skip
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClassifyError(f"{path} is damaged ({e}); train the classifier again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("labels"), list):
        raise ClassifyError(f"{path} is not a classifier file (format {FORMAT!r} with labels); train it again")
    return meta


class Classifier:
    """A classifier run loaded for scoring: `log_likelihoods(text)` per label, `predict(texts)` records."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, meta: dict):
        if meta.get("tokenizer_fingerprint") not in (None, tokenizer.fingerprint):
            raise ClassifyError(f"the checkpoint's tokenizer ({tokenizer.fingerprint}) is not the one the "
                                f"classifier was trained with ({meta['tokenizer_fingerprint']}); the run dir was "
                                "changed")  # fmt: skip
        self.model, self.tokenizer, self.meta = model, tokenizer, meta
        self.labels: list[str] = list(meta["labels"])
        self.budget = int(meta["text_budget"])
        self.scorer = Scorer(model, tokenizer.vocab_size)
        end = tokenizer.token_id(END_OF_TURN)
        self.conts = [tokenizer.encode(_completion(lab)) + [end] for lab in self.labels]  # label tokens + <|end|>

    def prompt_ids(self, text: str) -> list[int]:
        msgs = [{"role": "user", "content": prompt(fit_text(self.tokenizer, text, self.budget))}]
        return render(msgs, self.tokenizer, add_generation_prompt=True)[0]

    def log_likelihoods(self, text: str) -> np.ndarray:
        """(n_labels,) sum of log p(label tokens, end-of-turn | prompt) in nats."""
        return np.array([lp for lp, _ in self.scorer.score_choices(self.prompt_ids(text), self.conts)])

    def probabilities(self, text: str) -> np.ndarray:
        ll = self.log_likelihoods(text)
        p = np.exp(ll - ll.max())
        return p / p.sum()

    def predict(self, items: Iterable[tuple[str, str]], show_progress: bool = False,
                total: int | None = None) -> Iterator[dict]:  # fmt: skip
        """Per (id, text): id, label, probability and every label's probability (softmax over log-likelihoods)."""
        bar = progress(total, desc="classify", unit="doc", enabled=show_progress)
        try:
            for id_, text in items:
                p = self.probabilities(text)
                k = int(p.argmax())
                yield {"id": id_, "label": self.labels[k], "probability": float(p[k]),
                       "probs": {lab: float(v) for lab, v in zip(self.labels, p, strict=True)}}  # fmt: skip
                bar.update(1)
        finally:
            bar.close()


def load_classifier(run: str | Path, checkpoint: str = "best") -> Classifier | classify_lm.LabelLMClassifier:
    meta = read_meta(run)
    if meta.get("method") == classify_lm.METHOD:
        return classify_lm.LabelLMClassifier(run, meta, checkpoint)
    model, tokenizer, _cfg, _ckpt = ckpt_io.load_model(run, checkpoint)
    return Classifier(model, tokenizer, meta)


def predict(run: str | Path, source: str | Path, *, text_field: str | None = None, checkpoint: str = "best",
            show_progress: bool = False) -> Iterator[dict]:  # fmt: skip
    """One record per input document (.jsonl: one per record, its `text_field`; a text file: one per non-blank
    line): id, label, probability, probs."""
    meta = read_meta(run)
    items = read_inputs(source, text_field or meta.get("text_field", "text"))
    clf = load_classifier(run, checkpoint)
    return clf.predict(items, show_progress, len(items))


# ---------------------------------------------------------------------------------------------------------
# evaluation


def evaluate(run: str | Path, data: str | Path, *, text_field: str | None = None, label_field: str | None = None,
             checkpoint: str = "best", plot: str | Path | None = None, predictions: str | Path | None = None,
             report: str | Path | None = None, show_progress: bool = False) -> dict:  # fmt: skip
    """Accuracy (95% Wilson interval), macro-F1, per-label F1, confusion matrix and expected calibration error of
    the classifier on the labelled records of `data`; draws the confusion matrix to `plot` and writes the
    per-record predictions to `predictions` (JSONL) and the metrics to `report` (JSON) when given. Labels the model
    does not know are refused before the model is loaded."""
    meta = read_meta(run)
    examples = read_examples(data, text_field or meta.get("text_field", "text"),
                             label_field or meta.get("label_field", "label"))  # fmt: skip
    known = list(meta["labels"])
    unknown = sorted({ex.label for ex in examples} - set(known))
    if unknown:
        first = next(ex.line for ex in examples if ex.label in unknown)
        raise ClassifyError(f"{data} has label(s) the model does not know: {', '.join(map(repr, unknown[:5]))} (first "
                            f"at line {first}); the model's labels are {', '.join(map(repr, known))}")  # fmt: skip
    clf = load_classifier(run, checkpoint)
    records = list(clf.predict(((str(ex.line), ex.text) for ex in examples), show_progress, len(examples)))
    result = summarize(examples, records, known)
    result.update({"run": str(Path(run).resolve()), "data": str(data), "checkpoint": checkpoint})
    if predictions:
        _write_predictions(predictions, examples, records)
    if plot:
        plot_confusion(np.array(result["confusion"]), known, plot)
        result["plot"] = str(plot)
    if report:
        atomic_write_json(report, result)
    return result


def summarize(examples: list[Example], records: list[dict], labels: list[str]) -> dict:
    """The metrics of predictions `records` against the examples' labels."""
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([index[ex.label] for ex in examples])
    probs = np.array([[r["probs"][lab] for lab in labels] for r in records])
    return classification_metrics(y, probs, labels)


def _write_predictions(path: str | Path, examples: list[Example], records: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for ex, r in zip(examples, records, strict=True):
            f.write(json.dumps({**r, "id": ex.line, "true": ex.label, "correct": r["label"] == ex.label}) + "\n")
