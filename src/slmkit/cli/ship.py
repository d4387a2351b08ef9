"""`slm` verbs that adapt and ship models: sft, lora, chat, eval, score, anomaly, export, quantize, serve, import-hf,
compare."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from slmkit.base.atomic import atomic_path, atomic_write_json
from slmkit.base.errors import SlmError
from slmkit.cli.base import SAMPLING_FLAGS, read_text_arg
from slmkit.engine.evaluate import evaluate_run, format_table
from slmkit.engine.evaluate.suite import EVALS_DIR
from slmkit.engine.evaluate.tasks import CODE_TASKS, LOSS_TASK
from slmkit.model.generate import check_sampling
from slmkit.model.qweights import QUANT_FILE
from slmkit.runs.checkpoint import load_model
from slmkit.ship import anomaly, classify
from slmkit.ship.chat import chat
from slmkit.ship.complete import complete
from slmkit.ship.embed import embed, summary
from slmkit.ship.embed_train import embed_train
from slmkit.ship.export.artifact import export
from slmkit.ship.export.hf import import_hf
from slmkit.ship.finetune import merge_run, sft
from slmkit.ship.quantize import quantize
from slmkit.ship.score import check_input, score_source
from slmkit.ship.search import build_index, format_hits, index_summary, search
from slmkit.ship.serve.app import serve
from slmkit.study.compare import compare, read_prompts
from slmkit.study.expectations import eval_hints

# ---------------------------------------------------------------------------------------------------------
# fine-tuning and chat


def cmd_sft(args) -> None:
    overrides = [f"train.name={args.name}"] if args.name else []
    sft(args.parent, args.data, list(args.overrides) + overrides, checkpoint=args.checkpoint,
        progress=not args.no_progress)  # fmt: skip


def cmd_embed_train(args) -> None:
    overrides = [f"train.name={args.name}"] if args.name else []
    embed_train(args.parent, args.data, list(args.overrides) + overrides, checkpoint=args.checkpoint,
                progress=not args.no_progress)  # fmt: skip


def cmd_embed(args) -> None:
    vectors, stats = embed(args.run, args.input, args.out, pooling=args.pooling, instruction=args.instruction,
                           checkpoint=args.checkpoint, batch_size=args.batch_size, normalize=not args.no_normalize,
                           text_field=args.text_field, overwrite=args.overwrite,
                           progress=not args.no_progress)  # fmt: skip
    if args.out is None:
        for n, v in zip(stats["lines"], vectors):
            print(json.dumps({"line": n, "embedding": [round(float(x), 7) for x in v]}))
    print(summary(stats, args.out), file=sys.stderr)


def cmd_index(args) -> None:
    manifest = build_index(args.run, args.input, args.out, pooling=args.pooling, instruction=args.instruction,
                           chunk=args.chunk, checkpoint=args.checkpoint, text_field=args.text_field,
                           batch_size=args.batch_size, overwrite=args.overwrite,
                           progress=not args.no_progress)  # fmt: skip
    print(index_summary(manifest, args.out), file=sys.stderr)


def cmd_search(args) -> None:
    hits = search(args.index, args.query, args.k, run=args.run, checkpoint=args.checkpoint)
    print(json.dumps({"query": args.query, "hits": hits}, ensure_ascii=False, indent=1) if args.json
          else format_hits(hits))  # fmt: skip


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
    if any(t in CODE_TASKS for t in tasks):  # the code tasks read their held-out .py files from --data
        unused = [flag for flag in unused if flag != "--data"]
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
    for hint in eval_hints(results):
        print(f"- {hint}")
    written = [str(Path(args.run) / EVALS_DIR / f"{task}.json") for task in results]
    print(f"wrote {', '.join(written)}", file=sys.stderr)


@contextlib.contextmanager
def _jsonl_out(out: str | None):
    """A write(line) for JSON lines: to stdout, or streamed to a temporary file renamed to `out` at the end (an
    interrupted run leaves no half-written `out`)."""
    if not out:
        yield lambda obj: print(json.dumps(obj), flush=True)
        return
    if Path(out).is_dir():
        raise SlmError(f"{out} is a directory; --out names the JSONL file to write")
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yield lambda obj: (f.write(json.dumps(obj) + "\n"), f.flush())


def cmd_score(args) -> None:
    check_input(args.input)
    model, tokenizer, _cfg, _ckpt = load_model(args.run, args.checkpoint)
    results = score_source(model, tokenizer, args.input, unit=args.unit, text_field=args.text_field,
                           stride=args.stride, top_spans=args.top_spans,
                           show_progress=not args.no_progress)  # fmt: skip
    n = errors = 0
    with _jsonl_out(args.out) as write:
        for r in results:
            write(r)
            n, errors = n + 1, errors + bool(r.get("error"))
    note = f' ({errors} could not be tokenized: see their "error")' if errors else ""
    print(f"scored {n} {args.unit} unit(s){note}" + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)


def cmd_anomaly_fit(args) -> None:
    d = anomaly.fit(args.run, args.normal, args.out, fpr=args.fpr, checkpoint=args.checkpoint, score=args.score,
                    unit=args.unit, text_field=args.text_field, stride=args.stride, reference=args.reference,
                    show_progress=not args.no_progress)  # fmt: skip
    c = d["calibration"]
    if "reference" in d:
        r = d["reference"]
        print(f"unigram reference: {r['tokens']:,} tokens of {r['kind']} text ({r['source']})")
    print(f"threshold {d['threshold']:.4f} {d['score']} (fpr {d['fpr']}) from {c['scored']} in-domain {d['unit']} "
          f"units: mean {c['mean']:.4f}, std {c['std']:.4f}; wrote {args.out}")  # fmt: skip


def cmd_anomaly_detect(args) -> None:
    if not args.labels and args.report:
        raise SlmError("--report needs --labels (the metrics compare the flags with the labels)")
    det = anomaly.read_detector(args.detector)
    ids, scores, flagged = [], [], 0
    with _jsonl_out(args.out) as write:
        for r in anomaly.detect(det, args.input, unit=args.unit, text_field=args.text_field, run=args.run,
                                show_progress=not args.no_progress):  # fmt: skip
            write(r)
            ids.append(r["id"])
            scores.append(r["score"])
            flagged += bool(r["flagged"])
    print(f"flagged {flagged} of {len(ids)} unit(s) (threshold {det['threshold']:.4f} {det['score']})", file=sys.stderr)
    if args.labels:
        labels = anomaly.read_labels(args.labels, ids)
        metrics = anomaly.evaluate(scores, labels, float(det["threshold"]))
        metrics["detector_fpr"] = det.get("fpr")
        anomaly.plot_histograms(scores, labels, float(det["threshold"]), det["score"], args.plot)
        if args.report:
            atomic_write_json(args.report, metrics)
        m = metrics
        print(f"ROC-AUC {m['roc_auc']:.4f}  PR-AUC {m['pr_auc']:.4f}  TPR {m['tpr_at_threshold']:.4f} at FPR "
              f"{m['fpr_at_threshold']:.4f} (target {det.get('fpr')}); histograms: {args.plot}",
              file=sys.stderr)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# classify


def cmd_classify_train(args) -> None:
    run = classify.train(args.parent, args.data, text_field=args.text_field, label_field=args.label_field,
                         overrides=list(args.overrides), checkpoint=args.checkpoint, name=args.name,
                         progress=not args.no_progress, method=args.method, resume=args.resume)  # fmt: skip
    print(run)


def cmd_classify_predict(args) -> None:
    n = 0
    with _jsonl_out(args.out) as write:
        for r in classify.predict(args.run, args.input, text_field=args.text_field, checkpoint=args.checkpoint,
                                  show_progress=not args.no_progress):  # fmt: skip
            write(r)
            n += 1
    print(f"labelled {n} document(s)" + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)


def cmd_classify_eval(args) -> None:
    m = classify.evaluate(args.run, args.data, text_field=args.text_field, label_field=args.label_field,
                          checkpoint=args.checkpoint, plot=args.plot, predictions=args.predictions,
                          report=args.report, show_progress=not args.no_progress)  # fmt: skip
    lo, hi = m["accuracy_ci95"]
    print(
        f"accuracy {m['accuracy']:.4f} (95% CI {lo:.4f}-{hi:.4f}, n={m['n']})  macro-F1 {m['macro_f1']:.4f}  "
        f"ECE {m['ece']:.4f}; confusion matrix: {args.plot}" + (f"; metrics: {args.report}" if args.report else "")
    )


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
          max_batch=args.max_batch, max_queue=args.max_queue, threads=args.threads, allow_hosts=args.allow_host,
          allow_origins=args.allow_origin)  # fmt: skip


def cmd_complete(args) -> None:
    prefix = read_text_arg(args.prefix)
    suffix = None if args.suffix is None else read_text_arg(args.suffix)
    result = complete(args.run, prefix, suffix, mode=args.mode, max_new_tokens=args.max_new_tokens,
                      checkpoint=args.checkpoint, temperature=args.temperature, seed=args.seed)  # fmt: skip
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    print(result.text)
    cut = f"; cut to fit: {result.prefix_tokens_cut} prefix, {result.suffix_tokens_cut} suffix tokens" if (
        result.prefix_tokens_cut or result.suffix_tokens_cut) else ""  # fmt: skip
    print(f"# {'infill' if result.infill else 'continuation'}: {result.completion_tokens} tokens in {result.ms:.0f} ms "
          f"({result.finish_reason}){cut}", file=sys.stderr)  # fmt: skip


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
