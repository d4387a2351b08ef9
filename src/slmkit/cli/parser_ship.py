"""The arguments of the verbs that adapt and ship a model (`ship:` handlers): sft, embed-train, embed, index,
search, lora, chat, eval, score, anomaly, export, quantize, serve, complete, import-hf, compare, lm-eval, classify.
Light on purpose, like `slmkit.cli.parser`: no library imports, so `--help` answers at once.
"""

from __future__ import annotations

import argparse

from slmkit.base.checks import Range
from slmkit.base.config_sections import POOLINGS
from slmkit.cli.base import (
    add,
    add_checkpoint,
    add_field,
    add_overrides,
    add_sampling,
    count,
    group,
    image_out,
    number,
    out_dir,
    run_dir,
    text_file,
)


def register_ship(sub) -> None:
    """Add this module's verbs to the `slm` parser."""
    p = add(
        sub, "sft", "ship:cmd_sft", "supervised fine-tuning of a run on chat/instruction data (a child run)", SFT_HELP
    )
    p.add_argument("parent", metavar="PARENT_RUN", type=run_dir, help="the run to fine-tune")
    sft_data = text_file("file of SFT records", "pass a .json or .jsonl file of alpaca, messages or prompt/completion "
                         "records")  # fmt: skip
    p.add_argument("--data", required=True, type=sft_data, help="alpaca .json/.jsonl, messages/ShareGPT .jsonl or "
                   "prompt/completion .jsonl")  # fmt: skip
    add_overrides(p, "dotted overrides, e.g. lora.rank=8 train.max_steps=500 (also after the options)")
    p.add_argument("--checkpoint", default="best", help="parent checkpoint: best | latest | STEP")
    p.add_argument("--name", help="child run name (default: <parent>-sft or <parent>-lora)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")

    p = add(sub, "embed-train", "ship:cmd_embed_train", "contrastive fine-tuning of a run into a sentence-embedding "
            "model (a child run)", EMBED_TRAIN_HELP)  # fmt: skip
    p.add_argument("parent", metavar="PARENT_RUN", type=run_dir, help="the run to fine-tune")
    pairs_data = text_file("pairs file", "pass a .jsonl/.tsv pairs file, an STS-B or SICK file, or text for simcse")
    p.add_argument("--data", required=True, type=pairs_data, help="pairs: .jsonl (anchor, positive, "
                   "negative(s), score) or .tsv, STS-B train, SICK.txt, or text with embed.pairs=simcse")  # fmt: skip
    add_overrides(p, "dotted overrides, e.g. embed.pooling=last embed.learn_temperature=true lora.rank=8")
    p.add_argument("--checkpoint", default="best", help="parent checkpoint: best | latest | STEP")
    p.add_argument("--name", help="child run name (default: <parent>-embed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")

    p = add(sub, "embed", "ship:cmd_embed", "sentence embeddings of texts with a run (L2-normalized vectors)",
            EMBED_HELP)  # fmt: skip
    p.add_argument("run", type=run_dir, help="run directory (pretrained, sft, lora or embed-train)")
    p.add_argument("--input", required=True, help="a text file (one text a line; empty lines skipped) or .jsonl")
    p.add_argument("--out", help="vectors.npy (float32 matrix) or vectors.jsonl (default: JSON lines on stdout)")
    p.add_argument("--pooling", choices=POOLINGS, help="how token states become one vector "
                   "(default: the run's embed.pooling)")  # fmt: skip
    p.add_argument("--instruction", default="", help="prefix put before every text (e.g. the run's "
                   "embed.instruction, for queries)")  # fmt: skip
    p.add_argument("--batch-size", type=count(1), default=64, help="texts per forward pass")
    p.add_argument("--no-normalize", action="store_true", help="keep raw pooled vectors (not unit length)")
    p.add_argument("--text-field", default="text", help=".jsonl input: the field holding the text")
    add_checkpoint(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add(sub, "index", "ship:cmd_index", "build a semantic search index of documents with a run's embeddings",
            INDEX_HELP)  # fmt: skip
    p.add_argument("run", type=run_dir, help="run directory (pretrained, sft, lora or embed-train)")
    p.add_argument("--input", required=True, help="documents: a text file, .jsonl, .parquet or a directory of them")
    p.add_argument("--out", required=True, type=out_dir, help="index directory to write")
    p.add_argument("--pooling", choices=POOLINGS, help="how token states become one vector "
                   "(default: the run's embed.pooling)")  # fmt: skip
    p.add_argument("--instruction", help="prefix put before each query at search time (default: the run's "
                   "embed.instruction); documents get none")  # fmt: skip
    p.add_argument("--chunk", type=count(0, note="0: the model's context"), default=0, help="tokens per passage at "
                   "most; longer documents are split at paragraphs, lines, words (0: the model's context)")  # fmt: skip
    p.add_argument("--text-field", default="text", help=".jsonl / .parquet input: the field holding the text")
    p.add_argument("--batch-size", type=count(1), default=64, help="passages per forward pass")
    add_checkpoint(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add(sub, "search", "ship:cmd_search", "the passages of an index closest to a query (exact cosine)",
            SEARCH_HELP)  # fmt: skip
    p.add_argument("index", help="index directory (slm index)")
    p.add_argument("query", help="the text to search for")
    p.add_argument("-k", type=count(1), default=5, help="passages to return")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    p.add_argument("--run", type=run_dir, help="embed the query with this run instead of the one the index names "
                   "(its tokenizer must match)")  # fmt: skip
    p.add_argument("--checkpoint", help="checkpoint of the run: best | latest | STEP (default: the one that built "
                   "the index)")  # fmt: skip

    lo = group(sub, "lora", "LoRA adapters: merge them into a full model")
    p = add(lo, "merge", "ship:cmd_lora_merge", "write a new run dir with the adapters folded into full weights")
    p.add_argument("run", type=run_dir, help="a run fine-tuned with lora.rank > 0")
    add_checkpoint(p)
    p.add_argument("--name", help="name of the merged run (default: <run>-merged)")

    p = add(sub, "chat", "ship:cmd_chat", "chat with a fine-tuned run in the terminal (/reset, /system TEXT, /quit)")
    p.add_argument("run", type=run_dir, help="run directory of a fine-tuned (sft) run")
    add_checkpoint(p)
    p.add_argument("--system", default="", help="system message")
    add_sampling(p, max_new_tokens=256, temperature=0.7, top_k=50)
    p.add_argument("--seed", type=int, default=None, help="make the replies reproducible")

    p = add(
        sub,
        "eval",
        "ship:cmd_eval",
        "evaluate a run: val loss/ppl/bpb and zero-shot benchmarks (lm-eval scoring)",
        EVAL_HELP,
    )
    p.add_argument("run", type=run_dir, help="run directory")
    p.add_argument(
        "--tasks",
        default="val,hellaswag",
        help="comma-separated: val, hellaswag, arc_easy, arc_challenge, piqa, winogrande, lambada, mmlu (0-shot), "
        "mmlu_5shot; embedding tasks "
        "sts-b, sts-b-dev, sick-r, sts12 .. sts16, wiki-retrieval (pooled as the run's embed.pooling); code tasks "
        "fim-line, next-line (held-out .py files: --data DIR, else python-stdlib's val split)",
    )
    add_field(p, "--limit", "eval.limit")
    add_checkpoint(p)
    p.add_argument("--data", type=text_file("text file or dataset directory", "pass --data FILE_OR_DATASET_DIR",
                   dir_ok=True), help="val task: a text file or dataset dir (else the run's dataset, val split); "
                   "code tasks: a folder of .py files (else python-stdlib's val split)")  # fmt: skip
    p.add_argument("--stride", type=count(0, note="0: block size"), default=0, help="val task: sliding-window stride "
                   "in tokens (0: block size)")  # fmt: skip
    p.add_argument("--val-tokens", type=count(0, note="0: all"), default=None, help="val task: tokens to score (0: "
                   "all; default: 262144)")  # fmt: skip
    p.add_argument(
        "--task-source",
        default="local",
        choices=("local", "hf"),
        help="benchmark items: local files "
        "under $SLM_DATA_DIR/eval, or hf: the Hugging Face datasets (needs network or the HF cache)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add(sub, "score", "ship:cmd_score", "per-unit loss, perplexity, bits per byte and most surprising spans of "
            "text (JSONL)", SCORE_HELP)  # fmt: skip
    p.add_argument("run", type=run_dir, help="run directory")
    p.add_argument("--input", required=True, help="a text file, a folder of text files, or a .jsonl file")
    p.add_argument("--unit", default="doc", choices=("doc", "line", "window"), help="doc: each file or JSONL record; "
                   "line: each non-blank line; window: pieces of block_size tokens")  # fmt: skip
    p.add_argument("--out", help="JSONL file to write (default: stdout)")
    p.add_argument("--text-field", default="text", help=".jsonl input: the field holding the text")
    p.add_argument("--stride", type=count(0, note="0: block size"), default=0, help="sliding-window stride in tokens "
                   "for units longer than the block (0: block size)")  # fmt: skip
    p.add_argument("--top-spans", type=count(0), default=3, help="most surprising tokens to report per unit")
    add_checkpoint(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    an = group(sub, "anomaly", "flag out-of-domain text: calibrate a threshold on in-domain text, then detect")
    p = add(an, "fit", "ship:cmd_anomaly_fit", "calibrate a detector on in-domain held-out text and write it (JSON)",
            ANOMALY_FIT_HELP)  # fmt: skip
    p.add_argument("run", type=run_dir, help="run directory")
    p.add_argument("--normal", required=True, help="in-domain held-out text: a text file, folder or .jsonl (not the "
                   "training text: its scores are too low)")  # fmt: skip
    p.add_argument(
        "--fpr",
        type=number(float, Range(0, 1, low_open=True, high_open=True)),
        default=0.01,
        help="share of in-domain units to flag: the threshold is the (1 - fpr) quantile of their scores",
    )
    p.add_argument("--out", required=True, help="detector file to write, e.g. detector.json")
    p.add_argument("--score", default="bpb", choices=("bpb", "loss", "ratio"), help="bpb: bits per byte; loss: nats "
                   "per token; ratio: loss minus the loss of a unigram model of the domain (discounts in-domain text "
                   "that is merely full of rare words)")  # fmt: skip
    p.add_argument("--reference", choices=("auto", "train", "normal"), help="--score ratio only: where the unigram "
                   "counts come from: the run's prepared training data (train), the --normal text (normal), or "
                   "train when the run has it, else normal (auto, the default)")  # fmt: skip
    p.add_argument("--unit", default="doc", choices=("doc", "line", "window"), help="what one decision is about")
    p.add_argument("--text-field", default="text", help=".jsonl input: the field holding the text")
    p.add_argument("--stride", type=count(0, note="0: block size"), default=0, help="sliding-window stride in tokens "
                   "(0: block size)")  # fmt: skip
    add_checkpoint(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = add(an, "detect", "ship:cmd_anomaly_detect", "flag each unit of the input whose score is above the "
            "detector's threshold (JSONL)")  # fmt: skip
    p.add_argument("detector", help="detector file written by `slm anomaly fit`")
    p.add_argument("--input", required=True, help="a text file, a folder of text files, or a .jsonl file")
    p.add_argument("--out", help="JSONL file to write (default: stdout)")
    p.add_argument("--labels", help="one label per unit (1/anomaly or 0/normal), in order, or JSON lines "
                   "{\"id\", \"label\"}: report ROC-AUC, PR-AUC and the TPR at the detector's FPR")  # fmt: skip
    p.add_argument("--plot", type=image_out, default="anomaly-scores.png", help="with --labels: the image of both "
                   "classes' score histograms")  # fmt: skip
    p.add_argument("--report", help="with --labels: also write the metrics to this JSON file")
    p.add_argument("--unit", choices=("doc", "line", "window"), help="override the detector's unit")
    p.add_argument("--text-field", help="override the detector's .jsonl text field")
    p.add_argument("--run", type=run_dir, help="score with this run instead of the one the detector names (e.g. a "
                   "moved copy); its tokenizer must be the detector's")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    register_classify(sub)

    p = add(sub, "export", "ship:cmd_export", "export a run's checkpoint: hf (a transformers directory) or gguf "
            "(llama.cpp)")  # fmt: skip
    p.add_argument("run", type=run_dir, help="run directory")
    p.add_argument("--format", default="hf", help="hf (a transformers-loadable directory) | gguf (model.gguf for "
                   "llama.cpp; LLaMA-style models) | sentence-transformers (SentenceTransformer(DIR), pooled as the "
                   "run's embed.pooling)")  # fmt: skip
    p.add_argument("--type", choices=("f16", "q8_0"), help="gguf: tensor type of the matrices (default: f16)")
    p.add_argument("--out", required=True, help="directory to write (gguf: it holds model.gguf)")
    add_checkpoint(p)
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    p = add(sub, "quantize", "ship:cmd_quantize", "int8/bf16 copy of a run, with a size/speed/quality report vs fp32")
    p.add_argument("run", type=run_dir, help="run directory")
    p.add_argument(
        "--method",
        default="int8-dynamic",
        choices=("int8-dynamic", "int8-weight", "bf16"),
        help="int8-dynamic: fastest on CPU; int8-weight: int8 on disk, fp32 compute; bf16",
    )
    p.add_argument("--out", help="directory to write (default: <run>-<method> beside the run)")
    add_checkpoint(p)
    p.add_argument("--data", type=text_file("text file or dataset directory", "pass --data FILE_OR_DATASET_DIR",
                   dir_ok=True), help="dataset dir or text file for the val loss (default: the run's "
                   "dataset)")  # fmt: skip
    p.add_argument("--eval-tokens", type=count(0, note="0: all"), default=32768, help="val tokens to score (0: all)")
    p.add_argument("--no-report", action="store_true", help="skip the comparison with fp32")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    p = add(
        sub, "serve", "ship:cmd_serve", "OpenAI-compatible HTTP API and web chat page for a run (or quantized model)"
    )
    p.add_argument("run", type=run_dir, help="run directory or `slm quantize` output")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    p.add_argument("--port", type=count(1, 65535), default=8000, help="port to listen on")
    add_checkpoint(p)
    p.add_argument("--max-tokens-cap", type=count(1), default=1024, help="largest max_tokens a request may ask for")
    p.add_argument("--max-batch", "--slots", dest="max_batch", type=count(1), default=16, help="requests decoded "
                   "together, one batched forward per token (continuous batching); --slots is its former "
                   "name")  # fmt: skip
    p.add_argument("--max-queue", type=count(0), default=64, help="requests that may wait for a place in the batch; "
                   "one more is answered 429 (server busy) at once")  # fmt: skip
    p.add_argument("--threads", type=count(0, 1024, note="0: torch's choice"), default=None, help="torch CPU threads "
                   "(default: 1 on up to 4 cores, else min(4, cores/2): holds up on a busy CPU; 0: torch's own "
                   "choice)")  # fmt: skip
    p.add_argument("--allow-host", action="append", default=[], metavar="HOST", help="also answer requests "
                   "addressed to HOST (a name, name:port, or '*' for any; repeatable); by default only localhost, "
                   "127.0.0.1 and [::1] at --port, against DNS rebinding")  # fmt: skip
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN", help="let web pages of ORIGIN "
                   "(e.g. http://localhost:3000, or '*' for any; repeatable) call the API from a browser; by default "
                   "only the server's own pages may")  # fmt: skip

    p = add(sub, "complete", "ship:cmd_complete", "autocomplete at a cursor: continue a prefix, or fill in the middle "
            "between a prefix and a suffix (a model trained with data.fim_rate > 0)")  # fmt: skip
    p.add_argument("run", type=run_dir, help="run directory or `slm quantize` output")
    p.add_argument("--prefix", required=True, help="the text before the cursor, or @FILE for a file's text")
    p.add_argument("--suffix", default=None, help="the text after the cursor, or @FILE (needs a model trained with "
                   "data.fim_rate > 0)")  # fmt: skip
    p.add_argument("--mode", choices=("line", "block"), default="line", help="line: stop at the end of the line; "
                   "block: at the end of the middle (or --max-new-tokens)")  # fmt: skip
    p.add_argument("--max-new-tokens", type=count(1), default=None, help="most tokens to generate (default: 48 in "
                   "line mode, 128 in block mode)")  # fmt: skip
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the usual for completion)")
    p.add_argument("--seed", type=int, default=None, help="make a sampled completion reproducible")
    add_checkpoint(p)
    p.add_argument("--json", action="store_true", help="print the completion with its counts and timing as JSON")

    p = add(
        sub,
        "import-hf",
        "ship:cmd_import_hf",
        "turn a local Hugging Face checkpoint (GPT-2, Llama, Qwen2, Qwen3, "
        "Phi-3) or a llama.cpp .gguf file of one into a run dir",
    )
    p.add_argument("dir", help="Hugging Face model directory (config.json, model.safetensors, tokenizer.json) or a "
                   ".gguf file (dequantized to fp32; tokenizer and chat template from its metadata)")  # fmt: skip
    p.add_argument("--out", required=True, help="run directory to create, e.g. runs/gpt2")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    p = add(
        sub,
        "lm-eval",
        "ship:cmd_lm_eval",
        "run lm-evaluation-harness with the slmkit model and the local task files",
        "lm-evaluation-harness's command line (needs lm-eval installed) with `--model slmkit` registered and\n"
        "the local tasks slm_hellaswag, slm_arc_easy, slm_arc_challenge, slm_piqa, slm_winogrande, slm_lambada\n"
        "available. Put its arguments after --:\n"
        "  slm lm-eval -- --model slmkit --model_args run=runs/x --tasks slm_hellaswag --limit 100",
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="lm_eval arguments")

    p = add(
        sub, "compare", "ship:cmd_compare", "generations of several models side by side, each scored by every model"
    )
    p.add_argument("models", nargs="+", metavar="MODEL", type=run_dir, help="run directories or Hugging Face model "
                   "directories")  # fmt: skip
    p.add_argument("--prompts", required=True, type=text_file("prompts file", "write one prompt per line"),
                   help="text file, one prompt per line (\\n for a newline), or .jsonl")  # fmt: skip
    p.add_argument("--out", default="compare", type=out_dir, help="folder for compare.md and compare.html")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--num-seeds", type=count(1), default=1, help="samples per prompt and model, seeds seed..seed+N-1")
    add_sampling(p, max_new_tokens=64, temperature=0.8, top_k=0, top_p=False)
    p.add_argument("--checkpoint", default="best", help="checkpoint of the run dirs")


def register_classify(sub) -> None:
    """`slm classify train|predict|eval`."""
    cl = group(sub, "classify", "text classification: fine-tune a run to answer with a label, predict, evaluate")
    p = add(cl, "train", "ship:cmd_classify_train", "fine-tune a run into a classifier: answer \"<text>\\nLabel:\" "
            "with the label (tail), or one language model per label (lm)", CLASSIFY_HELP)  # fmt: skip
    p.add_argument("parent", metavar="PARENT_RUN", type=run_dir, help="the run to fine-tune")
    p.add_argument("--method", choices=("tail", "lm"), default="tail", help="tail: one child run learns to answer "
                   "with the label (loss on its tokens); lm: one child run per label continues pretraining on that "
                   "label's texts, and the label whose model finds a text likeliest wins (style, authorship, "
                   "domain)")  # fmt: skip
    p.add_argument("--data", required=True, help="labelled .jsonl: one object a line with the text and label fields")
    p.add_argument("--text-field", default="text", help="field holding the text")
    p.add_argument("--label-field", default="label", help="field holding the label")
    add_overrides(p, "dotted overrides, e.g. train.max_steps=500 optim.lr=1e-4 (also after the options)")
    p.add_argument("--checkpoint", default="best", help="parent checkpoint: best | latest | STEP")
    p.add_argument("--name", help="classifier name, beside the parent (default: <parent>-classify, or "
                   "<parent>-classify-lm with --method lm)")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue a classifier whose training was stopped (Ctrl-C, "
                   "SIGTERM, a crash): the same command again plus --resume; finished runs are kept")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")

    p = add(cl, "predict", "ship:cmd_classify_predict", "label each document: every label's likelihood is scored (no "
            "generation); JSONL of label, probability and all label probabilities")  # fmt: skip
    p.add_argument("run", type=run_dir, help="a classifier made by `slm classify train`")
    p.add_argument("--input", required=True, help=".jsonl (one document a record) or a text file (one a line)")
    p.add_argument("--text-field", help=".jsonl input: the field holding the text (default: the training one)")
    p.add_argument("--out", help="JSONL file to write (default: stdout)")
    add_checkpoint(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add(cl, "eval", "ship:cmd_classify_eval", "accuracy, macro-F1, confusion matrix (PNG) and calibration error "
            "on labelled data")  # fmt: skip
    p.add_argument("run", type=run_dir, help="a classifier made by `slm classify train`")
    p.add_argument("--data", required=True, help="labelled .jsonl (held out from training)")
    p.add_argument("--text-field", help="field holding the text (default: the training one)")
    p.add_argument("--label-field", help="field holding the label (default: the training one)")
    p.add_argument("--plot", type=image_out, default="confusion.png", help="image of the confusion matrix")
    p.add_argument("--report", help="also write the metrics to this JSON file")
    p.add_argument("--predictions", help="also write each record's prediction to this JSONL file")
    add_checkpoint(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


CLASSIFY_HELP = """fine-tune a run as a classifier; prediction scores every label, so the answer is always one of them.

methods:
  tail  each record becomes the prompt "<text>\\nLabel:" and the answer " <label>", trained through `slm sft` (loss
        on the label tokens only). The child run holds classify.json (labels, template, how many tokens of a text fit
        in the block; longer texts are cut to their start). Overrides apply to that run (default 300 steps).
  lm    one child run per label continues pretraining on that label's texts (labels/label-NN/ under the
        classifier's folder); a text goes to the label whose model finds it likeliest (times the label's share of
        the records). A temperature fitted on 10% of the records held out makes the probabilities calibrated.
        Overrides apply to every label's run (default: 5 passes over the label's text, lr 3e-4). Best where labels
        differ in how text is written (authorship, register, domain); no length limit.

examples:
  slm classify train runs/x --data train.jsonl --text-field text --label-field label train.max_steps=500
  slm classify train runs/x --data authors.jsonl --method lm
  slm classify predict runs/x-classify --input new.jsonl --out predictions.jsonl
  slm classify eval runs/x-classify --data test.jsonl --plot confusion.png --report metrics.json
"""

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
perplexity), mmlu and mmlu_5shot (57 subjects in lm-eval's prompt, per-subject and macro accuracy; --limit is items
per subject). Task files are read from $SLM_DATA_DIR/eval/<task>/, or with --task-source hf from the Hugging Face
datasets Rowan/hellaswag, allenai/ai2_arc, baber/piqa, allenai/winogrande, EleutherAI/lambada_openai.

examples:
  slm eval runs/x --tasks val,hellaswag --limit 500
  slm eval runs/x --tasks val --data notes.txt --stride 128
  slm eval runs/x --tasks hellaswag,arc_easy --task-source hf
  slm eval runs/x --tasks mmlu,mmlu_5shot --limit 20
"""

EMBED_TRAIN_HELP = """contrastive fine-tuning (InfoNCE over in-batch and hard negatives; plus CoSENT on pairs
with a gold score when embed.cosent_weight > 0) of a run into a sentence-embedding model: a child run with the
training loop's metrics, doctor, checkpoints, exact resume and LoRA. With the STS Benchmark under
$SLM_DATA_DIR, its dev Spearman is logged at every eval (eval/sts-b-dev/spearman).

examples:
  slm embed-train runs/wiki --data pairs.jsonl                              anchor/positive(/negative) records
  slm embed-train runs/wiki --data sts-train.csv embed.min_score=4          STS-B pairs scored >= 4
  slm embed-train runs/wiki --data sts-train.csv embed.cosent_weight=1      ... and every pair ranked by its score
  slm embed-train runs/wiki --data SICK.txt embed.learn_temperature=true    entailments, contradictions as negatives
  slm embed-train runs/wiki --data sentences.txt embed.pairs=simcse model.dropout=0.1"""

EMBED_HELP = """sentence embeddings of each line of a text file (or a .jsonl field) with any run: token states
pooled (mean, last or eos) and L2-normalized; a text's vector does not depend on its batch.

examples:
  slm embed runs/wiki-embed --input sentences.txt --out vectors.npy
  slm embed runs/wiki-embed --input queries.txt --instruction "query: " --out q.jsonl"""

INDEX_HELP = """build a semantic search index: documents split into passages of at most --chunk tokens (paragraphs
packed in order; an over-long paragraph split at lines, then words), embedded with the run, written atomically as a
directory (vectors.npy, passages.jsonl with each passage's file and line or row, manifest.json).

examples:
  slm index runs/wiki-embed --input docs/ --out docs.index
  slm index runs/wiki-embed --input articles.parquet --chunk 128 --instruction "query: " --out wiki.index
  slm search wiki.index "who built the first telescope?" -k 5"""

SEARCH_HELP = """the passages of an index closest to a query: the query is embedded as the documents were (same
run, checkpoint, pooling; the index's query instruction before it) and scored by exact cosine similarity.

examples:
  slm search docs.index "how are checkpoints written?"
  slm search docs.index "atomic writes" -k 10 --json"""

SCORE_HELP = """score text with a run: one JSON line per unit with tokens, loss (nats/token), ppl, bpb and the most
surprising tokens (start/end character offsets into the unit's text). A unit's first token is context only; longer
units than the block are scored with a sliding window of --stride tokens (the same numbers as `slm eval --data`).

examples:
  slm score runs/x --input notes.txt
  slm score runs/x --input docs/ --unit line --out scores.jsonl
  slm score runs/x --input data.jsonl --text-field body --stride 128"""

ANOMALY_FIT_HELP = """calibrate an out-of-domain detector: score in-domain held-out units (bits per byte by default)
and set the threshold so that about --fpr of them are flagged; writes run, checkpoint, score, threshold and
calibration statistics to --out. --score ratio also stores the unigram counts it divides by.

examples:
  slm anomaly fit runs/x --normal heldout/ --fpr 0.01 --out detector.json
  slm anomaly fit runs/x --normal heldout/ --score ratio --out detector.json
  slm anomaly detect detector.json --input new.jsonl --labels labels.txt --plot hist.png"""
