"""Proof that SFT works: pretrain a small bpe model on local corpora, fine-tune it on the Alpaca sample, and measure

1. the masked held-out loss (val/loss of the SFT run: loss on the held-out replies only) before and after SFT;
2. the share of greedy generations for held-out instructions that end with end-of-turn within the token limit,
   for the SFT model and for the base model given the same chat prompt.

The base model is the modern block (RMSNorm, RoPE, ReLU^2, QK-norm) trained with Muon, 4 layers x 256, with a 1024
context: a third of the Alpaca replies are longer than 300 tokens, so the limit on a reply must be well above that.

Writes benchmarks/results/sft_proof.json and .md. Run from the repository root:

    python benchmarks/sft_proof.py                      # ~60 minutes on 2 CPU cores
    python benchmarks/sft_proof.py --base RUN           # reuse a pretrained base run, SFT and measure only
    python benchmarks/sft_proof.py --pretrain-steps 20 --sft-steps 10 --eval 5 --max-new-tokens 50   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from slmkit.base.config_files import load_config
from slmkit.base.metrics import series
from slmkit.base.tokenizer import END_OF_TURN, EOT
from slmkit.data.chat import load_chat_data, render
from slmkit.engine.train import train
from slmkit.model.generate import generate
from slmkit.runs.checkpoint import load_model
from slmkit.ship.finetune import sft

RESULTS = Path(__file__).parent / "results"
CORPUS = ("tinystories/tinystories_val.txt", "wikitext-2/valid.txt", "wikitext-2/test.txt", "web-sample/c4_demo.jsonl",
          "tinyshakespeare/input.txt")  # fmt: skip
MODEL = ["model.n_layer=4", "model.n_head=4", "model.n_embd=256", "model.block_size=1024", "model.norm=rmsnorm",
         "model.pos_emb=rope", "model.mlp=relu2", "model.mlp_hidden=1024", "model.qk_norm=true", "model.bias=false",
         "tokenizer.kind=bpe:4096", "optim.name=muon", "optim.muon_lr=0.02"]  # fmt: skip


def build_corpus(out: Path) -> Path:
    """tinystories, wikitext-2 (valid, test), the C4 sample and tinyshakespeare, copied into one folder (about 5 MB,
    1.5M tokens)."""
    data = Path(os.environ.get("SLM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    out.mkdir(parents=True, exist_ok=True)
    for rel in CORPUS:
        shutil.copy(data / rel, out / rel.replace("/", "_"))
    return out


@torch.inference_mode()
def end_of_turn_rate(run: Path, convs: list, max_new_tokens: int, checkpoint: str = "best") -> dict:
    """Greedy replies to each conversation's first user message: how many end with end-of-turn in the limit."""
    model, tok, cfg, _ = load_model(run, checkpoint)
    end, eot = tok.token_id(END_OF_TURN), tok.token_id(EOT)
    ended = stopped_eot = 0
    lengths, examples = [], []
    for conv in convs:
        prompt = conv[: next(i for i, m in enumerate(conv) if m["role"] == "user") + 1]  # system?, user
        ids, _ = render(prompt, tok, add_generation_prompt=True)
        ids = ids[-(cfg.model.block_size - max_new_tokens) :]
        out = list(generate(model, ids, max_new_tokens, temperature=0, stop_ids=(end, eot), vocab_limit=tok.vocab_size))
        n = len(out)
        nxt = None if n == max_new_tokens else "stop"
        if nxt:  # generation stopped on a stop id: which one?
            logits, _ = model(torch.tensor([ids + out]), last_only=True)
            last = int(torch.argmax(logits[0, -1, : tok.vocab_size]))
            ended += last == end
            stopped_eot += last == eot
        lengths.append(n)
        if len(examples) < 5:
            examples.append({"instruction": prompt[-1]["content"], "reply": tok.decode(out)})
    return {"prompts": len(convs), "ended_with_end_of_turn": ended, "ended_with_end_of_text": stopped_eot,
            "rate": ended / len(convs), "mean_reply_tokens": sum(lengths) / len(lengths),
            "examples": examples}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-steps", type=int, default=1000)
    ap.add_argument("--sft-steps", type=int, default=900)
    ap.add_argument("--base", default="", help="an existing base run to fine-tune (skips pretraining)")
    ap.add_argument("--eval", type=int, default=50, help="held-out prompts to generate for (0: all)")
    ap.add_argument("--max-new-tokens", type=int, default=600)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", default="", help="folder for data and runs (default: a temp folder)")
    ap.add_argument("sft_overrides", nargs="*", help="extra overrides of the SFT run (key=value)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="sft-proof-"))
    data = Path(os.environ.get("SLM_DATA_DIR", "../shared/data")) / "sft" / "alpaca_en_demo.json"
    t0 = time.time()
    if args.base:
        base, pretrain_cmd = Path(args.base), f"(reused {args.base})"
    else:
        corpus = build_corpus(work / "corpus")
        pre = [*MODEL, f"data.source={corpus}", f"data.dir={work / 'data'}", f"train.max_steps={args.pretrain_steps}",
               "train.batch_size=4", "optim.lr=3e-3", "optim.min_lr=3e-4", "optim.warmup=50",
               f"train.eval_every={max(100, args.pretrain_steps // 4)}", "train.eval_batches=3", "train.log_every=50",
               f"train.out_dir={work / 'runs'}", "train.name=base", f"train.device={args.device}"]  # fmt: skip
        pretrain_cmd = "slm train " + " ".join(pre)
        base = train(load_config(None, pre), overrides=pre, progress=False)
    t1 = time.time()
    every = max(10, args.sft_steps // 6)
    ft = [f"train.max_steps={args.sft_steps}", "train.batch_size=4", "train.eval_batches=7", "data.val_fraction=0.1",
          "optim.lr=1e-3", "optim.min_lr=1e-4", "optim.muon_lr=0.01", f"train.eval_every={every}",
          f"train.ckpt_every={every}", "train.keep_last=10", f"train.device={args.device}",
          *args.sft_overrides]  # fmt: skip
    sft_cmd = f"slm sft {base} --data {data} " + " ".join(ft)
    child = sft(base, data, ft, progress=False)
    t2 = time.time()
    steps, val = series(child, "val/loss")
    best_step = steps[val.index(min(val))]
    cfg = load_config(None, [f"data.source={data}", "data.format=auto", "data.val_fraction=0.1"])
    _, tok, _, _ = load_model(child)
    held_out = load_chat_data(cfg.data, tok).val
    held_out = held_out[: args.eval] if args.eval else held_out
    gen = {
        "max_new_tokens": args.max_new_tokens,
        "sft": end_of_turn_rate(child, held_out, args.max_new_tokens, "latest"),
    }
    if best_step != steps[-1]:
        gen[f"sft_step_{best_step}"] = end_of_turn_rate(child, held_out, args.max_new_tokens, str(best_step))
    at_best = gen.get(f"sft_step_{best_step}")
    gen["base"] = end_of_turn_rate(base, held_out, args.max_new_tokens)
    result = {
        "pretrain": {"run": str(base), "command": pretrain_cmd, "seconds": round(t1 - t0, 1)},
        "sft": {"run": str(child), "command": sft_cmd, "seconds": round(t2 - t1, 1)},
        "masked_val_loss": {
            "steps": steps,
            "values": val,
            "before": val[0],
            "after": val[-1],
            "best": min(val),
            "best_step": best_step,
        },  # fmt: skip
        "greedy_end_of_turn": gen,
        "device": str(torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")),
        "torch_threads": torch.get_num_threads(),
    }
    sft_gen, base_gen = gen["sft"], gen["base"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sft_proof.json").write_text(json.dumps(result, indent=2) + "\n")
    best_txt = (f"; the best-val checkpoint (step {best_step}): {at_best['ended_with_end_of_turn']}/"
                f"{at_best['prompts']} ({100 * at_best['rate']:.0f}%)" if at_best else "")  # fmt: skip
    line = (f"sft_proof: masked held-out loss {val[0]:.3f} -> {val[-1]:.3f} at the last step (best {min(val):.3f} at "
            f"step {best_step}); greedy replies ending with end-of-turn within {args.max_new_tokens} tokens: final SFT "
            f"model {sft_gen['ended_with_end_of_turn']}/{sft_gen['prompts']} ({100 * sft_gen['rate']:.0f}%), base "
            f"{base_gen['ended_with_end_of_turn']}/{base_gen['prompts']} ({100 * base_gen['rate']:.0f}%){best_txt}; "
            f"pretrain {t1 - t0:.0f} s, SFT {t2 - t1:.0f} s on {result['device']}")  # fmt: skip
    (RESULTS / "sft_proof.md").write_text(line + "\n")
    print(line, file=sys.stderr)


if __name__ == "__main__":
    main()
