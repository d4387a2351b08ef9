"""Fine-tune or retrieve? The experiment behind docs/finetune-or-retrieve.md.

The claim under test (the talk's answer): fine-tuning changes *behaviour* (the form of the answer, when to stop),
retrieval supplies *facts* (what is true about things the model never saw, or saw too rarely to keep).

Facts: held-out Wikipedia articles (`wiki-03.parquet`, which the parent model never trained on). The fact of an
article is its first sentence; the question is "Tell me about <title>.". Of N articles, the first 80% are
"taught" (in the SFT data), the rest are "new" (in no training data at all).

Arms, all from the same Wikipedia-pretrained parent:
  base        the parent, asked in plain text ("Q: ... A:")
  sft         `slm sft` on the taught facts as prompt/completion pairs (a child run), asked in its chat template
  retrieve    the parent with the top passage of a semantic search (`slm index` / `slm search` over all N articles
              and as many distractor articles) put before the question; the same with TF-IDF (scikit-learn) as
              the retriever, and with the right article (an oracle retriever: what reading can add at best)
Measured:
  fact accuracy  multiple choice among the true first sentence and 3 others from the pool, scored by mean log-prob
                 per token (no generation, so a small model's fluency does not blur it); taught and new facts apart
  recall@1/@5    of the search: the question finds its own article's passage
  behaviour      greedy answers (64 tokens max): the share that stop by themselves, and their mean length

    python benchmarks/finetune_or_retrieve.py --parent RUN [--encoder RUN] [--n 300] [--steps 300]

RUN: the Wikipedia model docs/finetune-or-retrieve.md trains (its `slm train` line).

Writes benchmarks/results/finetune_or_retrieve.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from slmkit.base.tokenizer import END_OF_TURN, EOT
from slmkit.data.chat import render
from slmkit.engine.evaluate.scoring import Scorer, encode_pair
from slmkit.model.generate import generate
from slmkit.runs.checkpoint import load_model
from slmkit.ship import search as semantic
from slmkit.ship.finetune import sft

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(os.environ.get("SLM_DATA_DIR", Path(__file__).resolve().parent.parent / "data" / "shared"))
QUESTION = "Tell me about {title}."
SENTENCE = re.compile(r"^(.{30,220}?[.!?])\s")


def facts(n: int, distractors: int) -> tuple[list[dict], list[dict]]:
    """(n fact articles, `distractors` other articles) from the held-out Wikipedia file, in file order."""
    table = pq.read_table(DATA / "wikipedia" / "wiki-03.parquet", columns=["title", "text"])
    out = []
    for title, text in zip(table.column("title").to_pylist(), table.column("text").to_pylist()):
        text = text.strip()
        m = SENTENCE.match(text)
        if m and title.split()[0] in m.group(1) and len(text) > 600 and "(" not in title:
            out.append({"title": title, "fact": m.group(1), "text": text[:3000]})
        if len(out) >= n + distractors:
            break
    return out[:n], out[n:]


def mc_items(items: list[dict], pool: list[str], seed: int = 0) -> list[tuple[dict, list[str], int]]:
    """Each item with 4 candidate facts (the true one at a random place) and the index of the true one."""
    rng = random.Random(seed)
    out = []
    for it in items:
        others = rng.sample([f for f in pool if f != it["fact"]], 3)
        gold = rng.randrange(4)
        out.append((it, others[:gold] + [it["fact"]] + others[gold:], gold))
    return out


def accuracy(model, tok, items, context_of, continuation_of) -> float:
    """Share of items whose true fact has the highest mean log-prob per token."""
    scorer, right = Scorer(model), 0
    for it, cands, gold in items:
        ctx_ids = context_of(it)
        conts = [continuation_of(c) for c in cands]
        scores = scorer.score_choices(ctx_ids, conts)
        per_token = [s[0] / max(1, len(c)) for s, c in zip(scores, conts)]
        right += int(max(range(len(cands)), key=per_token.__getitem__) == gold)
    return right / max(1, len(items))


def plain_context(tok, prefix: str = ""):
    return lambda it: tok.encode(f"{prefix}Q: {QUESTION.format(title=it['title'])}\nA:")


def chat_context(tok):
    return lambda it: render([{"role": "user", "content": QUESTION.format(title=it["title"])}], tok,
                             add_generation_prompt=True)[0]  # fmt: skip


def behaviour(model, tok, items, context_of, stops: list[int]) -> dict:
    """Greedy answers of up to 64 tokens: share that stop by themselves, mean length in tokens."""
    stopped, lengths = 0, []
    for it in items:
        ids = list(generate(model, context_of(it), 64, temperature=0.0, stop_ids=stops, vocab_limit=tok.vocab_size))
        stopped += int(len(ids) < 64)
        lengths.append(len(ids))
    return {"stop_rate": stopped / max(1, len(items)), "mean_tokens": sum(lengths) / max(1, len(lengths))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parent", required=True, help="a run pretrained on wiki-00..02 (not wiki-03)")
    ap.add_argument("--encoder", help="run whose embeddings index the articles (default: --parent)")
    ap.add_argument("--n", type=int, default=100, help="fact articles")
    ap.add_argument("--steps", type=int, default=400, help="SFT steps")
    ap.add_argument("--work", default="", help="folder for the SFT run and the index (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    work = Path(args.work or tempfile.mkdtemp(prefix="ft-or-rag-"))
    work.mkdir(parents=True, exist_ok=True)
    items, distractors = facts(args.n, args.n)
    n_taught = int(0.8 * len(items))
    taught, new = items[:n_taught], items[n_taught:]
    pool = [it["fact"] for it in items]
    mc_taught, mc_new = mc_items(taught, pool, 1), mc_items(new, pool, 2)

    base, tok, _, _ = load_model(args.parent)
    cont_plain = lambda f: encode_pair(tok, "A:", " " + f)[1]  # noqa: E731
    res = {"n_taught": len(taught), "n_new": len(new), "parent": str(args.parent)}
    res["base"] = {"taught": accuracy(base, tok, mc_taught, plain_context(tok), cont_plain),
                   "new": accuracy(base, tok, mc_new, plain_context(tok), cont_plain),
                   **behaviour(base, tok, taught[:20], plain_context(tok), [tok.special_tokens[EOT]])}  # fmt: skip

    # fine-tune: the taught facts as prompt/completion pairs
    data = work / "facts.jsonl"
    data.write_text("".join(json.dumps({"prompt": QUESTION.format(title=it["title"]), "completion": it["fact"]}) + "\n"
                            for it in taught))  # fmt: skip
    child = sft(args.parent, data, [f"train.max_steps={args.steps}", "train.eval_every=0", "data.val_fraction=0.05",
                                   "train.batch_size=8", "optim.lr=1e-3", "optim.min_lr=1e-4",
                                   f"train.out_dir={work}", "train.threads=2"], progress=False)  # fmt: skip
    tuned, ttok, _, _ = load_model(child)
    end = ttok.token_id(END_OF_TURN)
    cont_chat = lambda f: ttok.encode(f) + [end]  # noqa: E731
    res["sft"] = {
        "taught": accuracy(tuned, ttok, mc_taught, chat_context(ttok), cont_chat),
        "new": accuracy(tuned, ttok, mc_new, chat_context(ttok), cont_chat),
        **behaviour(tuned, ttok, taught[:20], chat_context(ttok), [end, ttok.special_tokens[EOT]]),
    }

    # retrieve: index every article (facts and distractors), search with the question, read the top passage
    docs = work / "articles.jsonl"
    articles = items + distractors
    docs.write_text("".join(json.dumps({"text": it["text"], "title": it["title"]}) + "\n" for it in articles))
    index_dir = work / "index"
    semantic.build_index(args.encoder or args.parent, docs, index_dir, overwrite=True, progress=False)
    questions = [QUESTION.format(title=it["title"]) for it in items]
    found = semantic.SearchIndex(index_dir).query(questions, 5)  # per question: its 5 nearest passages
    texts = [[h["text"] for h in hits] for hits in found]
    hits1 = sum(any(it["fact"] in t for t in ts[:1]) for it, ts in zip(items, texts))
    hits5 = sum(any(it["fact"] in t for t in ts[:5]) for it, ts in zip(items, texts))
    passages = {it["title"]: ts[0] if ts else "" for it, ts in zip(items, texts)}

    # the same reading step with TF-IDF as the retriever (scikit-learn over the same articles), and with the
    # article itself (an oracle retriever): what retrieval supplies once the search finds the right text
    vec = TfidfVectorizer(sublinear_tf=True).fit([it["text"] for it in articles])
    sims = (vec.transform(questions) @ vec.transform([it["text"] for it in articles]).T).toarray()
    tfidf_top = [articles[int(row.argmax())]["text"] for row in sims]
    tfidf_hits1 = sum(it["fact"] in t for it, t in zip(items, tfidf_top))
    tfidf_passages = {it["title"]: t for it, t in zip(items, tfidf_top)}
    oracle_passages = {it["title"]: it["text"] for it in items}

    def rag_context(passages):
        def context(it):
            passage = tok.decode(tok.encode(passages[it["title"]])[: base.config.block_size // 2])
            return tok.encode(f"{passage}\n\nQ: {QUESTION.format(title=it['title'])}\nA:")

        return context

    for arm, chosen, recall in (("retrieve", passages, hits1), ("retrieve_tfidf", tfidf_passages, tfidf_hits1),
                                ("retrieve_oracle", oracle_passages, len(items))):  # fmt: skip
        res[arm] = {"recall@1": recall / len(items),
                    "taught": accuracy(base, tok, mc_taught, rag_context(chosen), cont_plain),
                    "new": accuracy(base, tok, mc_new, rag_context(chosen), cont_plain)}  # fmt: skip
    res["retrieve"]["recall@5"] = hits5 / len(items)
    res["seconds"] = round(time.time() - t0, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "finetune_or_retrieve.json").write_text(json.dumps(res, indent=1) + "\n")
    b, s, r, rt, ro = (res[k] for k in ("base", "sft", "retrieve", "retrieve_tfidf", "retrieve_oracle"))
    lines = [
        f"# Fine-tune or retrieve? ({time.strftime('%Y-%m-%d')}, parent {args.parent}, {len(taught)} taught + "
        f"{len(new)} new facts, chance 25%)",
        "",
        "| arm | fact accuracy, taught | fact accuracy, new | answers that stop | mean answer tokens |",
        "| --- | --- | --- | --- | --- |",
        f"| base (plain prompt) | {b['taught']:.0%} | {b['new']:.0%} | {b['stop_rate']:.0%} | {b['mean_tokens']:.0f} |",
        f"| sft on the taught facts | {s['taught']:.0%} | {s['new']:.0%} | {s['stop_rate']:.0%} | "
        f"{s['mean_tokens']:.0f} |",
        f"| retrieve: slm search top passage + question | {r['taught']:.0%} | {r['new']:.0%} | | |",
        f"| retrieve: TF-IDF top article + question | {rt['taught']:.0%} | {rt['new']:.0%} | | |",
        f"| retrieve: the right article + question (oracle) | {ro['taught']:.0%} | {ro['new']:.0%} | | |",
        "",
        f"recall@1 over {len(items) + len(distractors)} articles: slm search {r['recall@1']:.0%} (recall@5 "
        f"{r['recall@5']:.0%}), TF-IDF {rt['recall@1']:.0%}; {res['seconds']:.0f} s in all",
    ]
    (RESULTS / "finetune_or_retrieve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
