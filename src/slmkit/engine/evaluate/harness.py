"""lm-evaluation-harness adapter: our models as an lm-eval `LM`, and lm-eval task files for the local data.

lm-eval finds models only through its registry, so this module must be imported before lm-eval looks `slmkit`
up. From the shell, run lm-eval through this module (same arguments as `lm_eval`):

    python -m slmkit.engine.evaluate.harness --model slmkit --model_args run=runs/x,checkpoint=best --tasks hellaswag
    slm lm-eval -- --model slmkit --model_args run=runs/x --tasks slm_hellaswag,slm_piqa   (the same, via slm)

From Python: `import slmkit.engine.evaluate.harness` then `lm_eval.simple_evaluate(model="slmkit", ...)`, or pass
`SlmkitLM(run=...)` itself as the model.

`write_lm_eval_tasks(dir)` writes the YAMLs of `lm_eval_tasks/` (tasks `slm_hellaswag`, `slm_arc_easy`, ...)
with absolute paths to the files under $SLM_DATA_DIR/eval (PIQA's labels and the HellaSwag text export are first
converted to jsonl there); give the dir to lm-eval with `--include_path DIR`. They score exactly as
`slm eval` does, so the two can be compared item by item (tests/test_lm_eval_parity.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import lm_eval.models  # noqa: F401  (fills lm-eval's model registry first: it only does so itself when empty)
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from slmkit.base.tokenizer import EOT
from slmkit.engine.evaluate.scoring import Scorer
from slmkit.engine.evaluate.tasks import TASKS, TaskError, check_tasks, hellaswag_preprocess, read_records, task_files
from slmkit.model.generate import sample_text
from slmkit.runs.checkpoint import load_model

TEMPLATES = Path(__file__).parent / "lm_eval_tasks"


@register_model("slmkit")
class SlmkitLM(TemplateLM):
    """An slmkit run (or an already loaded model + tokenizer) as an lm-eval language model.

    model_args: run=DIR, checkpoint=best|latest|STEP, dtype=float32|float64 (float64 for exact comparisons)."""

    def __init__(
        self,
        run: str | None = None,
        checkpoint: str = "best",
        model=None,
        tokenizer=None,
        device: str = "cpu",
        dtype: str = "float32",
        **_ignored,
    ) -> None:
        super().__init__()
        if model is None:
            import torch

            if str(device).startswith("cuda") and not torch.cuda.is_available():
                device = "cpu"  # lm-eval's CLI defaults to cuda
            model, tokenizer, _, _ = load_model(run, checkpoint, device=device)
            model = model.to(getattr(torch, dtype))
        self.model, self.slm_tokenizer = model.eval(), tokenizer
        self.scorer = Scorer(model)

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
# Task files for the local data


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def write_lm_eval_tasks(out_dir: str | Path, tasks: list[str] | None = None, root: str | Path | None = None) -> dict:
    """Write lm-eval YAMLs for `tasks` (default: all) into out_dir; returns {our task name: lm-eval task name}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {}
    for name in check_tasks(tasks or list(TASKS)):
        if name not in TASKS:
            continue
        if name == "hellaswag":
            recs = [
                {
                    "query": hellaswag_preprocess(r["ctx"]),
                    "choices": [hellaswag_preprocess(e) for e in r["endings"]],
                    "label": r["label"],
                }
                for r in read_records(name, root)
            ]
            data = out_dir / "hellaswag.jsonl"
            _write_jsonl(data, recs)
        elif name == "piqa":
            data = out_dir / "piqa.jsonl"
            _write_jsonl(data, read_records(name, root))
        else:
            data = task_files(name, root)[0].resolve()
        text = (TEMPLATES / f"slm_{name}.yaml").read_text(encoding="utf-8")
        (out_dir / f"slm_{name}.yaml").write_text(text.replace("@DATA_FILE@", str(data)), encoding="utf-8")
        names[name] = f"slm_{name}"
    return names


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the `slmkit` model registered and, unless --include_path is given, the local
    task files (slm_hellaswag, slm_arc_easy, ... for those whose files exist) written to a temporary folder."""
    import sys
    import tempfile

    from lm_eval.__main__ import cli_evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="slm-lm-eval-") as tmp:
        if not any(a.startswith("--include_path") for a in argv):
            available = []
            for name in TASKS:
                try:
                    task_files(name)
                    available.append(name)
                except TaskError:
                    pass
            if available:
                write_lm_eval_tasks(tmp, available)
                argv += ["--include_path", tmp]
        sys.argv = [sys.argv[0], *argv]
        cli_evaluate()


if __name__ == "__main__":
    main()
