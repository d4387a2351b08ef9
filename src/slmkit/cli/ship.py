"""`slm` verbs that adapt and ship models: sft, lora, chat, eval, export, quantize, serve, import-hf, compare."""

from __future__ import annotations

import argparse
import sys

from slmkit.cli.base import add, add_checkpoint, add_sampling, group
from slmkit.errors import SlmError

# ---------------------------------------------------------------------------------------------------------
# fine-tuning and chat


def cmd_sft(args) -> None:
    from slmkit.finetune import sft

    overrides = [f"train.name={args.name}"] if args.name else []
    sft(args.parent, args.data, list(args.overrides) + overrides, checkpoint=args.checkpoint,
        progress=not args.no_progress)  # fmt: skip


def cmd_lora_merge(args) -> None:
    from slmkit.finetune import merge_run

    print(merge_run(args.run, args.checkpoint, name=args.name))


def cmd_chat(args) -> None:
    from slmkit.chat import chat

    chat(args.run, checkpoint=args.checkpoint, system=args.system, max_new_tokens=args.max_new_tokens,
         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# eval, export, import-hf, compare


def cmd_eval(args) -> None:
    from slmkit.evaluate import evaluate_run, format_table

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
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
    print(f"wrote {args.run}/evals/<task>.json for {', '.join(results)}", file=sys.stderr)


def cmd_export(args) -> None:
    from slmkit.export import export

    options = {"type": args.type} if args.type else None
    out = export(args.run, args.out, format=args.format, checkpoint=args.checkpoint, force=args.force, options=options)
    print(f"exported {args.run} ({args.format}) to {out}")


def cmd_quantize(args) -> None:
    from slmkit.quantize import QUANT_FILE, quantize

    out = quantize(args.run, args.method, args.out, checkpoint=args.checkpoint, data=args.data,
                   eval_tokens=args.eval_tokens, report=not args.no_report, force=args.force)  # fmt: skip
    report = out / "quantization_report.md"
    print(report.read_text() if report.is_file() else f"wrote {out / QUANT_FILE}")
    print(f"quantized model: {out}  (slm sample {out}  |  slm serve {out})", file=sys.stderr)


def cmd_serve(args) -> None:
    from slmkit.serve.app import serve

    serve(args.run, host=args.host, port=args.port, checkpoint=args.checkpoint, max_tokens_cap=args.max_tokens_cap,
          slots=args.slots, threads=args.threads)  # fmt: skip


def cmd_import_hf(args) -> None:
    from slmkit.export import import_hf

    out = import_hf(args.dir, args.out, force=args.force)
    print(f"imported {args.dir} as run {out}. Next: slm sample {out}  |  slm eval {out} --tasks hellaswag")


def cmd_lm_eval(args) -> None:
    try:
        from slmkit.evaluate.harness import main as lm_eval_main
    except ImportError as e:
        raise SlmError(f"lm-eval is not installed ({e}); pip install 'lm-eval[hf]' accelerate") from None

    lm_eval_main(args.args[1:] if args.args[:1] == ["--"] else args.args)


def cmd_compare(args) -> None:
    from slmkit.compare import compare, read_prompts

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


def register(sub) -> None:
    """Add this module's verbs to the `slm` parser."""
    p = add(sub, "sft", cmd_sft, "supervised fine-tuning of a run on chat/instruction data (a child run)", SFT_HELP)
    p.add_argument("parent", metavar="PARENT_RUN", help="the run to fine-tune")
    p.add_argument("--data", required=True, help="alpaca .json/.jsonl, messages/ShareGPT .jsonl or prompt/completion "
                   ".jsonl")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. lora.rank=8 train.max_steps=500")
    p.set_defaults(overrides_anywhere=True)  # `slm sft RUN --data FILE a.b=1`: overrides may follow the options
    p.add_argument("--checkpoint", default="best", help="parent checkpoint: best | latest | STEP (default: best)")
    p.add_argument("--name", help="child run name (default: <parent>-sft or <parent>-lora)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")

    lo = group(sub, "lora", "LoRA adapters: merge them into a full model")
    p = add(lo, "merge", cmd_lora_merge, "write a new run dir with the adapters folded into full weights")
    p.add_argument("run", help="a run fine-tuned with lora.rank > 0")
    add_checkpoint(p)
    p.add_argument("--name", help="name of the merged run (default: <run>-merged)")

    p = add(sub, "chat", cmd_chat, "chat with a fine-tuned run in the terminal (/reset, /system TEXT, /quit)")
    p.add_argument("run", help="run directory of a fine-tuned (sft) run")
    add_checkpoint(p)
    p.add_argument("--system", default="", help="system message")
    add_sampling(p, max_new_tokens=256, temperature=0.7, top_k=50)
    p.add_argument("--seed", type=int, default=None)

    p = add(
        sub, "eval", cmd_eval, "evaluate a run: val loss/ppl/bpb and zero-shot benchmarks (lm-eval scoring)", EVAL_HELP
    )
    p.add_argument("run", help="run directory")
    p.add_argument(
        "--tasks",
        default="val,hellaswag",
        help="comma-separated: val, hellaswag, arc_easy, arc_challenge, "
        "piqa, winogrande, lambada (default: val,hellaswag)",
    )
    p.add_argument("--limit", type=int, default=0, help="items per benchmark task (0: all)")
    add_checkpoint(p)
    p.add_argument("--data", help="val task: a text file or dataset dir (default: the run's dataset, val split)")
    p.add_argument("--stride", type=int, default=0, help="val task: sliding-window stride in tokens (0: block size)")
    p.add_argument("--val-tokens", type=int, default=None, help="val task: tokens to score (0: all; default 262144)")
    p.add_argument(
        "--task-source",
        default="local",
        choices=("local", "hf"),
        help="benchmark items: local files "
        "under $SLM_DATA_DIR/eval, or hf: the Hugging Face datasets (needs network or the HF cache)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add(sub, "export", cmd_export, "export a run's checkpoint (hf: transformers-loadable directory)")
    p.add_argument("run", help="run directory")
    p.add_argument("--format", default="hf", help="export format: hf | gguf (llama.cpp, LLaMA-style) (default: hf)")
    p.add_argument("--type", choices=("f16", "q8_0"), help="gguf: tensor type of the matrices (default: f16)")
    p.add_argument("--out", required=True, help="directory to write")
    add_checkpoint(p)
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    p = add(sub, "quantize", cmd_quantize, "int8/bf16 copy of a run, with a size/speed/quality report vs fp32")
    p.add_argument("run", help="run directory")
    p.add_argument("--method", default="int8-dynamic", choices=("int8-dynamic", "int8-weight", "bf16"),
                   help="int8-dynamic: fastest on CPU; int8-weight: int8 on disk, fp32 compute; bf16 (default: "
                   "int8-dynamic)")  # fmt: skip
    p.add_argument("--out", help="directory to write (default: <run>-<method> beside the run)")
    add_checkpoint(p)
    p.add_argument("--data", help="dataset dir or text file for the val loss (default: the run's dataset)")
    p.add_argument("--eval-tokens", type=int, default=32768, help="val tokens to score (default: 32768)")
    p.add_argument("--no-report", action="store_true", help="skip the comparison with fp32")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    p = add(sub, "serve", cmd_serve, "OpenAI-compatible HTTP API and web chat page for a run (or quantized model)")
    p.add_argument("run", help="run directory or `slm quantize` output")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    add_checkpoint(p)
    p.add_argument("--max-tokens-cap", type=int, default=1024, help="largest max_tokens a request may ask for")
    p.add_argument("--slots", type=int, default=4, help="requests generated at once, round-robin (default: 4)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 is often fastest "
                   "for small models)")  # fmt: skip

    p = add(sub, "import-hf", cmd_import_hf, "turn a local Hugging Face GPT-2 or LLaMA checkpoint into a run dir")
    p.add_argument("dir", help="Hugging Face model directory (config.json, model.safetensors, tokenizer.json)")
    p.add_argument("--out", required=True, help="run directory to create, e.g. runs/gpt2")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    p = add(
        sub,
        "lm-eval",
        cmd_lm_eval,
        "run lm-evaluation-harness with the slmkit model and the local task files",
        "lm-evaluation-harness's command line (needs lm-eval installed) with `--model slmkit` registered and\n"
        "the local tasks slm_hellaswag, slm_arc_easy, slm_arc_challenge, slm_piqa, slm_winogrande, slm_lambada\n"
        "available. Put its arguments after --:\n"
        "  slm lm-eval -- --model slmkit --model_args run=runs/x --tasks slm_hellaswag --limit 100",
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="lm_eval arguments")

    p = add(sub, "compare", cmd_compare, "generations of several models side by side, each scored by every model")
    p.add_argument("models", nargs="+", metavar="MODEL", help="run directories or Hugging Face model directories")
    p.add_argument("--prompts", required=True, help="text file, one prompt per line (\\n for a newline), or .jsonl")
    p.add_argument("--out", default="compare", help="folder for compare.md and compare.html (default: compare)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    p.add_argument("--num-seeds", type=int, default=1, help="samples per prompt and model, seeds seed..seed+N-1")
    add_sampling(p, max_new_tokens=64, temperature=0.8, top_k=0, top_p=False)
    p.add_argument("--checkpoint", default="best", help="checkpoint of the run dirs (default: best)")


SFT_HELP = """fine-tune a run on instruction or chat data: loss only on the assistant's replies, a held-out split with
masked val loss, a child run dir that records its parent run and checkpoint. Same loop as `slm train`.

data formats (chosen from the first record, or data.format=...):
  alpaca             {"instruction", "input", "output"} (.json array or .jsonl)
  messages           {"messages": [{"role", "content"}, ...]} or ShareGPT {"conversations": [{"from", "value"}]}
  prompt_completion  {"prompt", "completion"}

examples:
  slm sft runs/default --data alpaca.json                        full fine-tuning
  slm sft runs/default --data chats.jsonl lora.rank=8            LoRA: only adapters train
  slm sft runs/default --data alpaca.json data.packing=false     one example per row (padded)
  slm lora merge runs/default-lora                               then: slm chat runs/default-lora-merged
"""


EVAL_HELP = """evaluate a run; results go to RUN/evals/<task>.json and a table with chance and reference models

tasks: val (loss, perplexity, bits per byte on the run's val split, or --data), hellaswag, arc_easy, arc_challenge,
piqa, winogrande (acc, acc_norm as lm-eval defines them, with standard errors), lambada (last-word accuracy and
perplexity). Task files are read from $SLM_DATA_DIR/eval/<task>/, or with --task-source hf from the Hugging Face
datasets Rowan/hellaswag, allenai/ai2_arc, baber/piqa, allenai/winogrande, EleutherAI/lambada_openai.

examples:
  slm eval runs/x --tasks val,hellaswag --limit 500
  slm eval runs/x --tasks val --data notes.txt --stride 128
  slm eval runs/x --tasks hellaswag,arc_easy --task-source hf
"""
