"""Out-of-domain text detection with a language model: text the model finds surprising is flagged.

`fit` scores in-domain held-out text (`ship.score`), per unit, with a length-normalized score and sets the
threshold at the (1 - fpr) quantile of those scores, so about `fpr` of in-domain units are flagged. The detector is
a small JSON file (run, checkpoint, score kind, unit, stride, threshold, calibration statistics, and for the ratio
score its unigram counts) written atomically. `detect` scores new units and flags
those above the threshold; given labels it measures ROC-AUC, PR-AUC (average precision), the true- and
false-positive rates at the threshold, and draws both classes' score histograms. A unit the tokenizer cannot encode
(a character a char model never saw) gets an infinite score: it is flagged.

Scores (`SCORES`): bpb, bits per byte (the default: comparable across unit lengths and tokenizers); loss, nats per
token; ratio, the unit's loss minus its loss under a unigram model of the domain (`data.unigram`), a per-token
log-likelihood ratio that discounts text that is merely full of rare words (names, numbers) yet in domain. Its
counts come from the run's prepared training data when the run has it, else from the calibration text itself (each
unit scored with its own tokens left out of the counts); they are stored in the detector. On the prose track of
benchmarks/bench_anomaly_tracks.py (a 3.3 M-parameter Wikipedia model), ratio lifts Gutenberg-vs-Wikipedia ROC-AUC
from 0.837 (bpb) to 0.883 (benchmarks/results/anomaly_prose.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from slmkit.base.atomic import atomic_path, atomic_write_json
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import Tokenizer, TokenizerError
from slmkit.data.dataset import check_tokenizer
from slmkit.data.sources import DataError
from slmkit.data.unigram import Unigram, count_split, count_texts
from slmkit.runs.checkpoint import check_run_dir, load_model, read_run_info, run_tokenizer
from slmkit.ship.score import UNITS, Unit, check_input, read_documents, score_source, split_units

FORMAT = "slm-anomaly-detector"
VERSION = 3  # 2: the tokenizer fingerprint is recorded and checked; 3: the ratio score and its unigram reference
SCORES = ("bpb", "loss", "ratio")
REFERENCES = ("auto", "train", "normal")
"""Where --score ratio's unigram counts come from: the run's prepared training data (train), the calibration text
(normal), or train when the run has it, else normal (auto)."""
LABELS = {"bpb": "bits per byte", "loss": "loss (nats/token)", "ratio": "loss minus unigram loss (nats/token)"}
POSITIVE = {"1", "true", "anomaly", "anomalous", "ood", "out", "positive", "yes"}
NEGATIVE = {"0", "false", "normal", "in", "id", "negative", "no"}


class DetectorError(SlmError):
    """A detector file that is missing or damaged, a bad --fpr, labels that do not match the units."""


def unit_score(result: dict, kind: str) -> float | None:
    """The anomaly score of one `score_units` result: inf for text the tokenizer cannot encode, None for a unit
    with nothing predicted (fewer than 2 tokens), else its bpb or loss."""
    if result.get("error"):
        return math.inf
    if kind == "ratio":
        return None if result.get("loss") is None else result["loss"] - result["ref_loss"]
    return result.get(kind)


def _training_counts(run: str | Path, tokenizer: Tokenizer) -> tuple[np.ndarray, int, str] | str:
    """(counts, tokens, dataset) of the run's prepared training split, or why there are none."""
    dataset = read_run_info(run).get("dataset")
    if not dataset or not (Path(dataset) / "meta.json").is_file():
        return f"{run} records no prepared training data on this machine (dataset: {dataset or 'none'})"
    try:
        check_tokenizer(dataset, tokenizer)
        counts, tokens = count_split(dataset, "train", tokenizer.vocab_size)
    except (DataError, TokenizerError) as e:
        return f"its training data {dataset} cannot be used: {e}"
    return counts, tokens, str(Path(dataset).resolve())


def _check_reference(choice: str, score: str) -> None:
    if score != "ratio":
        raise DetectorError(f"--reference sets the unigram of --score ratio; it means nothing with --score {score}")
    if choice not in REFERENCES:
        raise DetectorError(f"unknown reference {choice!r}; pick one of {', '.join(REFERENCES)}")


def _unit_ids(tokenizer: Tokenizer, unit: Unit) -> np.ndarray:
    if unit.ids is not None:
        return unit.ids
    try:
        return np.asarray(tokenizer.encode(unit.text), dtype=np.int64)
    except TokenizerError:
        return np.zeros(0, np.int64)  # scored as unencodable (an infinite score), not counted


def build_reference(run: str | Path, tokenizer: Tokenizer, normal: str | Path, choice: str, *, unit: str = "doc",
                    text_field: str = "text", block_size: int = 0) -> tuple[Unigram, dict]:  # fmt: skip
    """The unigram reference of --score ratio (`REFERENCES`) and what the detector records of it."""
    _check_reference(choice, "ratio")
    found = _training_counts(run, tokenizer) if choice in ("auto", "train") else "--reference normal"
    if isinstance(found, str) and choice == "train":
        raise DetectorError(f"--reference train: {found}; use --reference normal to count the calibration text")
    if isinstance(found, tuple):
        counts, tokens, source = found
        kind = "train"
    else:
        units = split_units(read_documents(normal, text_field), unit, tokenizer, block_size)
        counts, tokens = count_texts((_unit_ids(tokenizer, u) for u in units), tokenizer.vocab_size)
        source, kind = str(normal), "normal"
    uni = Unigram(counts)
    return uni, {"kind": kind, "source": source, "tokens": tokens, "alpha": uni.alpha, "counts": counts.tolist()}


def detector_reference(detector: dict) -> Unigram | None:
    """The unigram a ratio detector scores against (None for other scores); DetectorError when it is damaged."""
    if detector["score"] != "ratio":
        return None
    ref = detector.get("reference")
    try:
        return Unigram(ref["counts"], ref.get("alpha", 0.5))
    except (TypeError, KeyError, ValueError, DataError):
        raise DetectorError("the detector's unigram reference (score ratio) is missing or damaged; fit it again "
                            "with `slm anomaly fit --score ratio`") from None  # fmt: skip


def fit(run: str | Path, normal: str | Path, out: str | Path, *, fpr: float = 0.01, checkpoint: str = "best",
        score: str = "bpb", unit: str = "doc", text_field: str = "text", stride: int = 0,
        reference: str | None = None, show_progress: bool = False) -> dict:  # fmt: skip
    """Calibrate a detector on in-domain held-out text and write it to `out`; returns it. `reference`: where the
    ratio score's unigram counts come from (`REFERENCES`, default auto; only with score ratio)."""
    if not (isinstance(fpr, (int, float)) and 0 < fpr < 1):
        raise DetectorError(f"--fpr must be a number between 0 and 1 (exclusive), got {fpr!r}")
    if score not in SCORES:
        raise DetectorError(f"unknown score {score!r}; pick one of {', '.join(SCORES)}")
    if unit not in UNITS:
        raise DetectorError(f"unknown unit {unit!r}; pick one of {', '.join(UNITS)}")
    if reference is not None:
        _check_reference(reference, score)
    if Path(out).is_dir():
        raise DetectorError(f"{out} is a directory; --out names the detector file to write, e.g. {out}/detector.json")
    check_input(normal)
    model, tokenizer, _cfg, ckpt = load_model(run, checkpoint)
    ref, ref_info = None, None
    if score == "ratio":
        uni, ref_info = build_reference(run, tokenizer, normal, reference or "auto", unit=unit, text_field=text_field,
                                        block_size=model.config.block_size)  # fmt: skip
        leave_out = ref_info["kind"] == "normal"  # a unit is not scored against counts of itself
        ref = lambda ids: uni.loss(ids, leave_out=leave_out)  # noqa: E731
    results = list(score_source(model, tokenizer, normal, unit=unit, text_field=text_field, stride=stride,
                                top_spans=0, show_progress=show_progress, reference=ref))  # fmt: skip
    values = [unit_score(r, score) for r in results]
    unencodable = sum(1 for v in values if v == math.inf)
    vals = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(vals) < 2:
        raise DetectorError(f"{normal} gives {len(vals)} scorable {unit} unit(s); calibration needs at least 2 "
                            "(pass more in-domain text or a finer --unit)")  # fmt: skip
    threshold = float(np.quantile(vals, 1 - fpr, method="higher"))
    detector = {
        "format": FORMAT,
        "version": VERSION,
        "run": str(Path(run).resolve()),
        "checkpoint": str(Path(ckpt).resolve()),
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "score": score,
        "unit": unit,
        "text_field": text_field,
        "stride": stride,
        "fpr": fpr,
        "threshold": threshold,
        "calibration": {
            "source": str(normal),
            "units": len(results),
            "scored": len(vals),
            "unencodable": unencodable,
            "mean": float(vals.mean()),
            "std": float(vals.std()),
            "min": float(vals.min()),
            "max": float(vals.max()),
            "quantiles": {str(q): float(np.quantile(vals, q)) for q in (0.5, 0.9, 0.95, 0.99)},
            "flagged_fraction": float((vals > threshold).mean()),
        },
        **({"reference": ref_info} if ref_info else {}),
    }
    atomic_write_json(out, detector)
    return detector


def read_detector(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DetectorError(f"{path} is not a file; pass the detector written by `slm anomaly fit`")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DetectorError(
            f"{path} is not a detector file (not JSON: {e}); pass the output of `slm anomaly fit`"
        ) from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise DetectorError(f"{path} is not a detector file (no \"format\": \"{FORMAT}\"); pass the output of "
                            "`slm anomaly fit`")  # fmt: skip
    missing = [k for k in ("run", "checkpoint", "score", "unit", "threshold") if k not in d]
    if missing or d["score"] not in SCORES or d["unit"] not in UNITS:
        raise DetectorError(f"{path} is a damaged detector file ({', '.join(missing) or 'score/unit'} missing or "
                            "unknown); fit it again with `slm anomaly fit`")  # fmt: skip
    detector_reference(d)
    return d


def detect(detector: dict, source: str | Path, *, unit: str | None = None, text_field: str | None = None,
           run: str | Path | None = None, show_progress: bool = False) -> Iterator[dict]:  # fmt: skip
    """Per unit of `source`: id, score, flagged (score > threshold), and the unit's tokens, loss, bpb. `run` scores
    with another run dir than the detector's (a moved copy): its tokenizer must have the detector's fingerprint."""
    check_input(source)
    uni = detector_reference(detector)
    model, tokenizer = load_detector_model(detector, run)
    kind, threshold = detector["score"], float(detector["threshold"])
    for r in score_source(model, tokenizer, source, unit=unit or detector["unit"],
                          text_field=text_field or detector.get("text_field", "text"),
                          stride=int(detector.get("stride", 0)), top_spans=1, show_progress=show_progress,
                          reference=None if uni is None else uni.loss):  # fmt: skip
        s = unit_score(r, kind)
        yield {"id": r["id"], "score": None if s is None else (s if math.isfinite(s) else "inf"),
               "flagged": None if s is None else bool(s > threshold), "tokens": r["tokens"], "loss": r["loss"],
               "bpb": r["bpb"], **({"ref_loss": r["ref_loss"]} if "ref_loss" in r else {}),
               **({"error": r["error"]} if r.get("error") else {}),
               "top_span": r["top_spans"][0] if r["top_spans"] else None}  # fmt: skip


def load_detector_model(detector: dict, run: str | Path | None = None):
    """(model, tokenizer) the detector scores with: its run's checkpoint, or `run`'s checkpoint of the same step.
    DetectorError when the tokenizer's fingerprint is not the one the detector was calibrated with."""
    source_run = run or detector["run"]
    expected = detector.get("tokenizer_fingerprint")  # absent in version-1 detectors: nothing to compare
    if expected is not None:
        have = run_tokenizer(check_run_dir(source_run)).fingerprint  # checked before any weights are read
        if have != expected:
            raise DetectorError(f"the detector was calibrated with tokenizer {expected}, but {source_run} has "
                                f"tokenizer {have}; its scores are not comparable: fit a detector for this run with "
                                "`slm anomaly fit`")  # fmt: skip
    ckpt = Path(detector["checkpoint"])
    which = int(ckpt.name.split("-")[-1]) if ckpt.name.startswith("step-") else "best"
    model, tokenizer, _cfg, _ = load_model(source_run, which)
    return model, tokenizer


def _label(text: str, where: str) -> int:
    t = str(text).strip().lower()
    if t in POSITIVE:
        return 1
    if t in NEGATIVE:
        return 0
    raise DetectorError(f"{where}: label {text!r} is neither anomalous (1, anomaly, ood) nor normal (0, normal)")


def read_labels(path: str | Path, ids: list[str]) -> np.ndarray:
    """Labels (1 anomalous, 0 normal) of the units `ids`, from a file of one label per line in unit order, or of
    JSON objects {"id": ..., "label": ...} (matched by id)."""
    path = Path(path)
    if not path.is_file():
        raise DetectorError(f"{path} is not a file; --labels names a file of one label (0/1) per unit")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if lines and lines[0].lstrip().startswith("{"):
        by_id = {}
        for n, ln in enumerate(lines, 1):
            obj = json.loads(ln)
            by_id[str(obj.get("id"))] = _label(obj.get("label"), f"{path}:{n}")
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DetectorError(f"{path} has no label for unit {missing[0]!r} ({len(missing)} of {len(ids)} missing)")
        return np.array([by_id[i] for i in ids])
    if len(lines) != len(ids):
        raise DetectorError(f"{path} has {len(lines)} labels for {len(ids)} units; give one per unit, in order, or "
                            "JSON lines with id and label")  # fmt: skip
    return np.array([_label(ln, f"{path}:{n}") for n, ln in enumerate(lines, 1)])


def evaluate(scores: list[float | None], labels: np.ndarray, threshold: float) -> dict:
    """ROC-AUC, PR-AUC (average precision), and the TPR and FPR at `threshold`, over units with a score."""
    try:  # local: optional (the `anomaly` extra) and slow to import, used only with --labels
        from sklearn.metrics import average_precision_score, roc_auc_score
    except ImportError:
        raise DetectorError("--labels needs scikit-learn: pip install 'slmkit[anomaly]' (or scikit-learn)") from None

    keep = np.array([s is not None for s in scores])
    s = np.array([np.inf if s == "inf" else s for s in scores if s is not None], dtype=np.float64)
    y = labels[keep]
    if len(set(y.tolist())) < 2:
        raise DetectorError("the labels hold one class only; ROC-AUC needs both normal and anomalous units")
    finite_cap = np.nanmax(s[np.isfinite(s)]) + 1 if np.isfinite(s).any() else 1.0
    s_auc = np.where(np.isfinite(s), s, finite_cap)
    flagged = s > threshold
    return {
        "units": int(len(y)),
        "anomalous": int(y.sum()),
        "normal": int((1 - y).sum()),
        "roc_auc": float(roc_auc_score(y, s_auc)),
        "pr_auc": float(average_precision_score(y, s_auc)),
        "threshold": threshold,
        "tpr_at_threshold": float(flagged[y == 1].mean()),
        "fpr_at_threshold": float(flagged[y == 0].mean()),
    }


def plot_histograms(scores: list[float | None], labels: np.ndarray, threshold: float, kind: str,
                    out: str | Path) -> None:  # fmt: skip
    """Both classes' score histograms and the threshold, as an image (written atomically)."""
    import matplotlib  # local: slow to import, used only here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [(float(s), int(y)) for s, y in zip(scores, labels, strict=True) if s is not None and s != "inf"]
    fig, ax = plt.subplots(figsize=(7, 4))
    vals = np.array([s for s, _ in pairs]) if pairs else np.zeros(1)
    bins = np.linspace(min(vals.min(), threshold), max(vals.max(), threshold), 41)
    for cls, name, color in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        ax.hist([s for s, y in pairs if y == cls], bins=bins, alpha=0.6, label=name, color=color)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel(LABELS[kind])
    ax.set_ylabel("units")
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".") or "png", dpi=100)
    plt.close(fig)
