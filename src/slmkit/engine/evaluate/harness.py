"""lm-evaluation-harness adapter: our models as an lm-eval `LM`, and lm-eval tasks over the local benchmark data.

After `make setup` (which runs `python -m slmkit.lm_eval_plugin`), lm-eval's own command knows both:

    lm_eval --model slmkit --model_args run=runs/x,checkpoint=best --tasks slm_hellaswag,slm_arc_easy --limit 100

The plugin registers the `slmkit` model when lm-eval loads its model registry, and puts TASK_DIR (`lm_eval_tasks/`
next to this file: slm_hellaswag, slm_arc_easy, slm_arc_challenge, slm_piqa, slm_lambada, slm_winogrande) on the
include path of every lm-eval TaskManager. Those tasks read their items from $SLM_DATA_DIR/eval when they load
(`lm_eval_dataset`); lm-eval's own `hellaswag`, `arc_easy`, ... still download their data from the Hugging Face Hub.
They score exactly as `slm eval` does, so the two can be compared item by item (tests/test_lm_eval_parity.py).

`slm lm-eval -- ARGS` runs the same command line and needs no plugin: it adds `--include_path TASK_DIR` unless
another --include_path is given. From Python: import this module, then `lm_eval.simple_evaluate(model="slmkit",
model_args="run=runs/x", tasks=["slm_piqa"], task_manager=TaskManager(include_path=str(TASK_DIR)))`, or pass
`SlmkitLM(run=...)` itself as the model. `write_lm_eval_tasks(dir)` copies the task files with the data folder
pinned, for an lm-eval run elsewhere (`--include_path dir`).

Two records lm-eval cannot get right for a model it does not know are corrected here (`_fix_lm_eval_records`):
`model_name` (lm-eval takes it from a pretrained=/model=/path= argument, else makes up a random name, which is also
the folder under --output_path) becomes the run's folder name, and `config.device` (lm-eval records the requested
--device, cuda:0 by default, even when the model ran elsewhere) becomes the device the model ran on.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from pathlib import Path

import datasets
import lm_eval.evaluator
import lm_eval.models  # noqa: F401  (fills lm-eval's model registry first: it only does so itself when empty)
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker
from lm_eval.utils import sanitize_model_name, simple_parse_args_string

from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import EOT
from slmkit.engine.evaluate.scoring import Scorer
from slmkit.engine.evaluate.tasks import (
    TASKS,
    TaskError,
    check_tasks,
    data_root,
    hellaswag_preprocess,
    read_records,
    task_files,
)
from slmkit.model.generate import sample_text
from slmkit.runs.checkpoint import load_model

TASK_DIR = Path(__file__).parent / "lm_eval_tasks"


def run_name(run: str | Path) -> str:
    """The name a run (or `slm quantize` artifact) is reported under: its folder's name."""
    return Path(run).resolve().name


@register_model("slmkit")
class SlmkitLM(TemplateLM):
    """An slmkit run (or an already loaded model + tokenizer) as an lm-eval language model.

    model_args: run=DIR, checkpoint=best|latest|STEP, dtype=float32|float64 (float64 for exact comparisons).
    device: lm-eval's --device; a CUDA device when CUDA is unavailable (lm-eval's default is cuda:0) means cpu."""

    def __init__(
        self,
        run: str | None = None,
        checkpoint: str = "best",
        model=None,
        tokenizer=None,
        device: str | None = "cpu",
        dtype: str = "float32",
        **_ignored,
    ) -> None:
        super().__init__()
        self.run_name = None
        if model is None:
            if run is None:
                raise ValueError("the slmkit model needs a run: --model_args run=runs/NAME")
            device = device or "cpu"
            if str(device).startswith("cuda") and not torch.cuda.is_available():
                device = "cpu"
            model, tokenizer, _, _ = load_model(run, checkpoint, device=device)
            model = model.to(getattr(torch, dtype))
            self.run_name = run_name(run)
        self.model, self.slm_tokenizer = model.eval(), tokenizer
        self._device = next(model.parameters()).device  # what lm-eval's `device` property reports
        self.scorer = Scorer(model)

    def get_model_info(self) -> dict:
        """Added to lm-eval's results["config"]."""
        return {"model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(next(self.model.parameters()).dtype)}  # fmt: skip

    @property
    def eot_token_id(self) -> int:
        return self.slm_tokenizer.special_tokens[EOT]

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.slm_tokenizer.encode(string)

    def tok_decode(self, tokens: list[int], **kwargs) -> str:
        return self.slm_tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation), context ids, continuation ids); shared contexts are prefilled once."""
        return self.scorer.score_requests([(ctx, cont) for _, ctx, cont in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole strings in disjoint block_size windows (lm-eval's rolling windows)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for (string,) in [r.args for r in requests]:
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(string),
                prefix_token=self.eot_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            out.append(sum(self.scorer.score_full(*make_disjoint_window(w))[0] for w in windows))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, when the task asks) continuation cut at the task's stop strings."""

        out = []
        for context, gen_kwargs in [r.args for r in requests]:
            kw = dict(gen_kwargs)
            until = kw.get("until") or [EOT]
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kw.get("temperature", 0.0)) if kw.get("do_sample", False) else 0.0
            text = sample_text(
                self.model,
                self.slm_tokenizer,
                context,
                max_new_tokens=int(kw.get("max_gen_toks", 256)),
                temperature=temperature,
                top_p=float(kw.get("top_p") or 1.0),
                seed=0,
                stop=until,
            )
            out.append(text)
        return out


# ---------------------------------------------------------------------------------------------------------
# What lm-eval records about a `slmkit` model


def _run_from_args(model_args) -> str | None:
    args = simple_parse_args_string(model_args) if isinstance(model_args, str) else dict(model_args or {})
    return run_name(str(args["run"])) if args.get("run") else None


def _fix_lm_eval_records() -> None:
    """Wrap GeneralConfigTracker.log_experiment_args (names the results and their folder) and the evaluator's
    add_tokenizer_info (the last step of building results["config"], and the only one that sees the LM object): no
    lm-eval API sets either record. Other models' records are untouched; applied once."""
    log_args = GeneralConfigTracker.log_experiment_args
    if not getattr(log_args, "_slmkit", False):

        @functools.wraps(log_args)
        def log_experiment_args(self, *args, **kwargs):
            log_args(self, *args, **kwargs)
            bound = inspect.signature(log_args).bind_partial(self, *args, **kwargs).arguments
            name = _run_from_args(bound.get("model_args")) if bound.get("model_source") == "slmkit" else None
            if name:
                self.model_name, self.model_name_sanitized = name, sanitize_model_name(name)

        log_experiment_args._slmkit = True
        GeneralConfigTracker.log_experiment_args = log_experiment_args

    add_info = lm_eval.evaluator.add_tokenizer_info
    if not getattr(add_info, "_slmkit", False):

        @functools.wraps(add_info)
        def add_tokenizer_info(storage, lm, *args, **kwargs):
            add_info(storage, lm, *args, **kwargs)
            if isinstance(lm, SlmkitLM) and isinstance(storage.get("config"), dict):
                storage["config"]["device"] = str(lm.device)

        add_tokenizer_info._slmkit = True
        lm_eval.evaluator.add_tokenizer_info = add_tokenizer_info


_fix_lm_eval_records()


# ---------------------------------------------------------------------------------------------------------
# Tasks over the local data


def task_records(name: str, root: str | Path | None = None) -> list[dict]:
    """The items of local task `name` in the fields its lm-eval YAML reads (HellaSwag's text export becomes
    query/choices/label through lm-eval's preprocess; PIQA gets its labels); TaskError when files are missing."""
    recs = read_records(name, root)
    if name == "hellaswag":
        return [{"query": hellaswag_preprocess(r["ctx"]), "choices": [hellaswag_preprocess(e) for e in r["endings"]],
                 "label": r["label"]} for r in recs]  # fmt: skip
    return recs


def lm_eval_dataset(slm_task: str, slm_split: str, slm_data_root: str | None = None, **_metadata) -> dict:
    """The `custom_dataset` of the YAMLs in TASK_DIR: {split: datasets.Dataset} of the task's local items, read from
    slm_data_root, else $SLM_DATA_DIR/eval. lm-eval also passes the task's metadata (model_args among them)."""
    recs = task_records(slm_task, slm_data_root)
    keys = list(dict.fromkeys(k for r in recs for k in r))
    return {slm_split: datasets.Dataset.from_dict({k: [r.get(k) for r in recs] for k in keys})}


def available_tasks(root: str | Path | None = None) -> list[str]:
    """The local tasks whose files are present."""
    out = []
    for name in TASKS:
        try:
            task_files(name, root)
            out.append(name)
        except TaskError:
            pass
    return out


def write_lm_eval_tasks(out_dir: str | Path, tasks: list[str] | None = None, root: str | Path | None = None) -> dict:
    """Copy the YAMLs of `tasks` (default: all) into out_dir with their data folder pinned to `root` (default:
    $SLM_DATA_DIR/eval as it is now); returns {our task name: lm-eval task name}. TaskError for missing files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = (Path(root) if root is not None else data_root()).resolve()
    names = {}
    for name in check_tasks(tasks or list(TASKS)):
        if name not in TASKS:
            continue
        task_files(name, root)
        text = (TASK_DIR / f"slm_{name}.yaml").read_text(encoding="utf-8")
        text = text.replace("slm_data_root: null", f"slm_data_root: {json.dumps(str(root))}")
        (out_dir / f"slm_{name}.yaml").write_text(text, encoding="utf-8")
        names[name] = f"slm_{name}"
    return names


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the `slmkit` model registered and, unless --include_path is given, TASK_DIR's
    tasks available (the plugin adds them in any case)."""
    from lm_eval.__main__ import cli_evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    given = {a.split("=", 1)[0] for a in argv}
    missing = [flag for flag in ("--model", "--tasks") if flag not in given]
    if missing and not given & {"-h", "--help"}:
        raise SlmError(f"lm-eval needs {' and '.join(missing)}, e.g. slm lm-eval -- --model slmkit --model_args "
                       "run=runs/x --tasks slm_hellaswag")  # fmt: skip
    if not any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        argv += ["--include_path", str(TASK_DIR)]
    present = ", ".join(f"slm_{t}" for t in available_tasks()) or "none"
    print(f"slmkit tasks: --include_path {TASK_DIR} (items from {data_root()}: {present})", file=sys.stderr)
    sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
