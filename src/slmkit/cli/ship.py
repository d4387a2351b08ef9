"""`slm` verbs that adapt and ship models: sft, lora, chat, eval, export, quantize, serve, import-hf, compare."""

from __future__ import annotations

import sys
from pathlib import Path

from slmkit.base.errors import SlmError
from slmkit.cli.base import SAMPLING_FLAGS
from slmkit.engine.evaluate import evaluate_run, format_table
from slmkit.engine.evaluate.suite import EVALS_DIR
from slmkit.engine.evaluate.tasks import LOSS_TASK
from slmkit.model.generate import check_sampling
from slmkit.model.qweights import QUANT_FILE
from slmkit.ship.chat import chat
from slmkit.ship.export.artifact import export
from slmkit.ship.export.hf import import_hf
from slmkit.ship.finetune import merge_run, sft
from slmkit.ship.quantize import quantize
from slmkit.ship.serve.app import serve
from slmkit.study.compare import compare, read_prompts

# ---------------------------------------------------------------------------------------------------------
# fine-tuning and chat


def cmd_sft(args) -> None:
    overrides = [f"train.name={args.name}"] if args.name else []
    sft(args.parent, args.data, list(args.overrides) + overrides, checkpoint=args.checkpoint,
        progress=not args.no_progress)  # fmt: skip


def cmd_lora_merge(args) -> None:
    print(merge_run(args.run, args.checkpoint, name=args.name))


def cmd_chat(args) -> None:
    check_sampling(SAMPLING_FLAGS, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed)  # fmt: skip
    chat(args.run, checkpoint=args.checkpoint, system=args.system, max_new_tokens=args.max_new_tokens,
         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# eval, export, import-hf, compare


def cmd_eval(args) -> None:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    val_options = {"--data": args.data, "--stride": args.stride or None, "--val-tokens": args.val_tokens}
    unused = [flag for flag, value in val_options.items() if value is not None] if LOSS_TASK not in tasks else []
    if not any(t != LOSS_TASK for t in tasks):  # no benchmark: nothing reads --limit or --task-source
        unused += ["--limit"] * bool(args.limit) + ["--task-source"] * (args.task_source != "local")
    if tasks and unused:
        raise SlmError(f"{unused[0]} has no effect on --tasks {','.join(tasks)} ({unused[0]} is for "
                       f"{'the val task' if unused[0] in val_options else 'benchmark tasks'}); drop it or add such a "
                       "task to --tasks")  # fmt: skip
    results = evaluate_run(
        args.run,
        tasks,
        limit=args.limit,
        checkpoint=args.checkpoint,
        data=args.data,
        stride=args.stride,
        val_tokens=args.val_tokens,
        progress=not args.no_progress,
        task_source=args.task_source,
    )
    print(format_table(results))
    written = [str(Path(args.run) / EVALS_DIR / f"{task}.json") for task in results]
    print(f"wrote {', '.join(written)}", file=sys.stderr)


def cmd_export(args) -> None:
    options = {"type": args.type} if args.type else None
    out = export(args.run, args.out, format=args.format, checkpoint=args.checkpoint, force=args.force, options=options)
    print(f"exported {args.run} ({args.format}) to {out}")


def cmd_quantize(args) -> None:
    out = quantize(args.run, args.method, args.out, checkpoint=args.checkpoint, data=args.data,
                   eval_tokens=args.eval_tokens, report=not args.no_report, force=args.force)  # fmt: skip
    report = out / "quantization_report.md"
    print(report.read_text() if report.is_file() else f"wrote {out / QUANT_FILE}")
    print(f"quantized model: {out}  (slm sample {out}  |  slm serve {out})", file=sys.stderr)


def cmd_serve(args) -> None:
    serve(args.run, host=args.host, port=args.port, checkpoint=args.checkpoint, max_tokens_cap=args.max_tokens_cap,
          slots=args.slots, threads=args.threads, allow_hosts=args.allow_host,
          allow_origins=args.allow_origin)  # fmt: skip


def cmd_import_hf(args) -> None:
    out = import_hf(args.dir, args.out, force=args.force)
    print(f"imported {args.dir} as run {out}. Next: slm sample {out}  |  slm eval {out} --tasks hellaswag")


def cmd_lm_eval(args) -> None:
    try:
        from slmkit.engine.evaluate.harness import main as lm_eval_main  # local: it imports lm-eval (optional, slow)
    except ImportError as e:
        raise SlmError(f"lm-eval is not installed ({e}); pip install 'lm-eval[hf]' accelerate") from None

    lm_eval_main(args.args[1:] if args.args[:1] == ["--"] else args.args)


def cmd_compare(args) -> None:
    check_sampling(SAMPLING_FLAGS, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   seed=args.seed)  # fmt: skip
    check_sampling({"seed": "--seed + --num-seeds - 1"}, seed=args.seed + args.num_seeds - 1)
    seeds = tuple(range(args.seed, args.seed + args.num_seeds))
    compare(
        args.models,
        read_prompts(args.prompts),
        args.out,
        seeds=seeds,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        checkpoint=args.checkpoint,
    )
    print(f"wrote {args.out}/compare.md and {args.out}/compare.html")
