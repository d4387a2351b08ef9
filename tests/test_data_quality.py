"""Data quality (data/quality/, engine/contamination.py): n-gram hashing, filters, dedup, decontamination, the
cleaner, `slm data clean`, the overlap check of `slm prepare` and of preparing a run's data, and cleaning on the fly
in stream mode."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from slmkit.base.config import ConfigError, DataConfig
from slmkit.base.metrics import read_metrics
from slmkit.base.tokenizer import CharTokenizer
from slmkit.data.dataset import read_meta
from slmkit.data.prepare import ensure_prepared
from slmkit.data.quality.clean import Cleaner, CleanSpec, clean
from slmkit.data.quality.decontam import Contamination, EvalNGrams
from slmkit.data.quality.dedup import ExactDedup, NearIndex, signatures
from slmkit.data.quality.filters import Boilerplate, apply_filters, check_filters, stateless_filters
from slmkit.data.quality.ngrams import Words, ngram_hashes
from slmkit.data.sources import DataError, Document
from slmkit.data.stream_reader import Reader, plan_units, unit_tasks
from slmkit.engine.contamination import (
    DECONTAM_TASKS,
    eval_index,
    eval_index_file,
    eval_index_for,
    resolve_tasks,
    task_texts,
)
from slmkit.engine.evaluate.tasks import TaskError

PROSE = (
    "The river flows through the old town and past the mill, where the farmers bring their grain in the autumn. "
    "It was built in the twelfth century by monks who wanted a reliable source of flour for the abbey and the "
    "villages around it. Over the years the mill has been repaired many times, and today it is a museum that is "
    "open to visitors on most days of the week, except in the winter when the water is too high. "
)
MORE = (
    "In the spring the valley fills with walkers who follow the path along the water to the ruined castle on the "
    "hill. A small café near the bridge sells bread, cheese and local apples, and the owner is happy to tell anyone "
    "who asks about the floods of 1953, when the whole lower street was under a metre of mud for two weeks."
)
STORY = ("she looked at the empty chair beside the window and remembered how her grandfather used to sit there every "
         "evening reading the paper until the light was gone and the tea had gone cold")  # fmt: skip


def article(seed: int, n: int = 3) -> str:
    rng = random.Random(seed)
    words = PROSE.split()
    return " ".join(rng.choice(words) for _ in range(60 * n)) + ". " + PROSE


@pytest.fixture
def eval_root(tmp_path, monkeypatch):
    """A data dir whose eval folder holds only a tiny LAMBADA (two passages); SLM_DATA_DIR points at it."""
    root = tmp_path / "sdata"
    (root / "eval" / "lambada").mkdir(parents=True)
    lines = [json.dumps({"text": STORY}), json.dumps({"text": "a completely different passage " * 5 + "word"})]
    (root / "eval" / "lambada" / "lambada_test.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("SLM_DATA_DIR", str(root))
    return root


# ---------------------------------------------------------------------------------------------------------
# n-grams


def test_words_are_normalised_and_ngrams_stay_within_a_text():
    w = Words(["Hello, World!  hello-world", "a b"])
    assert [w.word(i) for i in range(len(w))] == ["hello", "world", "hello", "world", "a", "b"]
    assert w.hashes[0] == w.hashes[2] and w.hashes[1] == w.hashes[3]
    h, doc = ngram_hashes(["one two three", "four five"], 2)
    assert len(h) == 3 and doc.tolist() == [0, 0, 1]  # no 2-gram spans the two texts
    h2, _ = ngram_hashes(["ONE two, three!"], 2)
    assert h2.tolist() == h[:2].tolist()  # case and punctuation do not matter; hashes are stable


# ---------------------------------------------------------------------------------------------------------
# filters


def test_unknown_filter_lists_the_valid_ones():
    with pytest.raises(DataError, match="unknown filter 'gopherr'; valid filters: boilerplate, short"):
        check_filters(["gopherr"])
    with pytest.raises(ConfigError, match="data.filters"):
        DataConfig(filters=["nope"])
    with pytest.raises(ConfigError, match="data.near_threshold"):
        DataConfig(near_threshold=0)


def test_boilerplate_lines_go_after_two_documents():
    b = Boilerplate()
    nav = "Home | News | Sport | Contact us"
    texts = [f"{nav}\nbody number {i} is different" for i in range(4)]
    out = [b(t) for t in texts]
    assert [o[2] for o in out[:2]] == [None, None]  # seen in fewer than 2 earlier documents: kept
    assert out[2][2] == "body number 2 is different" and out[3][0]
    assert b.lines_removed == 2
    assert b(nav) == (False, "boilerplate", "")  # a page of nothing else is dropped


def test_filters_keep_prose_and_drop_junk():
    flt = stateless_filters(["short", "encoding", "gopher", "gopher-repetition"])
    assert apply_filters(flt, PROSE + MORE)[0]
    assert apply_filters(flt, "Click here")[1] == "short"
    assert apply_filters(flt, ("caf\u00c3\u00a9 " * 30 + PROSE))[1] == "encoding"
    spam = " ".join(["cheap flights best deals"] * 60)
    assert not apply_filters(flt, spam)[0]
    gibberish = " ".join("".join(random.Random(i).choice("qwrtzpsdfg") for _ in range(7)) for i in range(200))
    keep, rule, _ = apply_filters(flt, gibberish)
    assert not keep and rule.startswith("gopher")


# ---------------------------------------------------------------------------------------------------------
# dedup


def test_exact_dedup_ignores_whitespace():
    d = ExactDedup()
    assert not d.seen("a  b\nc") and d.seen("a b c ") and not d.seen("a b d")


def test_near_duplicates_are_found_and_others_are_not():
    a, b = article(1), article(2)
    words = a.split()
    words[5], words[40] = "edited", "changed"
    sig_a, sig_edit, sig_b, sig_empty = signatures([a, " ".join(words), b, "..."])
    assert sig_empty is None
    index = NearIndex(0.8)
    assert index.duplicate_of(sig_a) is None
    assert index.duplicate_of(sig_edit) == 0
    assert index.duplicate_of(sig_b) is None and index.kept == 2


# ---------------------------------------------------------------------------------------------------------
# decontamination


def test_eval_ngrams_match_a_passage_inside_a_document(tmp_path):
    index = EvalNGrams.build(["lambada", "other"], [(0, 0, STORY), (0, 1, "too short to check"), (1, 0, PROSE)])
    assert index.items == [2, 1] and index.short_items == [1, 0]
    hits = index.matches([f"Prefix words. {STORY.upper()}! And more.", "unrelated text " * 20, PROSE[:120]])
    assert hits[0] == {0: {0}} and hits[1] == {} and hits[2] == {1: {0}}
    index.save(tmp_path / "i.npz")
    again = EvalNGrams.load(tmp_path / "i.npz")
    assert again.tasks == index.tasks and np.array_equal(again.hashes, index.hashes)
    c = Contamination(index)
    assert c.record("x", hits[0]) and not c.record("y", hits[1])
    assert c.summary()["overlap"]["lambada"]["documents"] == 1
    assert "lambada: 1 training documents share 13-grams with 1 of its 2 items" in c.lines()[0]


def test_tasks_resolve_and_unknown_or_absent_ones_are_handled(eval_root):
    with pytest.raises(TaskError, match="unknown task 'lambda'.*valid: all, hellaswag"):
        resolve_tasks(["lambda"])
    present, notes = resolve_tasks(["all"])
    assert present == ["lambada"] and notes == [
        f"{', '.join(n for n in DECONTAM_TASKS if n != 'lambada')}: task files not found, not checked"
    ]  # one line for all
    assert [t for _, t in task_texts("lambada")][0] == STORY
    index, _ = eval_index()
    assert index.tasks == ["lambada"] and index.items == [2]
    assert eval_index()[0].hashes.tolist() == index.hashes.tolist()  # from the cache


# ---------------------------------------------------------------------------------------------------------
# the cleaner and `clean`


def test_a_dropped_first_piece_hands_the_document_start_on():
    docs = [Document("Click", "f", None, True), Document(PROSE, "f", None, False), Document(PROSE + "x", "g")]
    out = list(Cleaner(CleanSpec(filters=("short",))).run(docs))
    assert [d.first for d in out] == [True, True]


def write_corpus(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_clean_writes_corpus_and_report(tmp_path, eval_root):
    texts = [article(i) for i in range(6)] + [article(0), "Click here", f"Quoting a book: {STORY}. {PROSE}"]
    src = write_corpus(tmp_path / "in.jsonl", texts)
    index, _ = eval_index()
    spec = CleanSpec(("exact", "near"), ("short",), contamination="remove")
    report = clean(str(src), tmp_path / "out", spec, index=index, progress=False)
    kept = [json.loads(line)["text"] for line in open(tmp_path / "out" / "corpus.jsonl")]
    assert kept == texts[:6]
    assert {k: v["documents"] for k, v in report["removed"].items()} == {
        "exact-duplicate": 1, "short": 1, "contamination": 1}  # fmt: skip
    assert report["contamination"]["overlap"]["lambada"]["items"] == 1
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| short | 1 |" in md and "lambada: 1 documents overlap 1 of 2 items" in md
    with pytest.raises(DataError, match="exists; pick another --out or pass --overwrite"):
        clean(str(src), tmp_path / "out", spec, progress=False)
    pq = pytest.importorskip("pyarrow.parquet")
    clean(str(src), tmp_path / "out", CleanSpec(), fmt="parquet", overwrite=True, progress=False)
    assert pq.read_table(tmp_path / "out" / "corpus.parquet").num_rows == len(texts)
    assert not (tmp_path / "out" / "corpus.jsonl").exists()


def test_clean_refuses_an_empty_result_and_writes_nothing(tmp_path):
    src = write_corpus(tmp_path / "in.jsonl", ["tiny", "also tiny"])
    with pytest.raises(DataError, match="nothing left of .* 2 short.*nothing was written"):
        clean(str(src), tmp_path / "out", CleanSpec(filters=("short",)), progress=False)
    assert not (tmp_path / "out").exists()


def test_clean_names_an_unreadable_file(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text(PROSE)
    (folder / "b.txt").symlink_to(tmp_path / "gone.txt")  # listed, but cannot be read
    with pytest.raises(DataError, match="cannot read .*b.txt: No such file"):
        clean(str(folder), tmp_path / "out", CleanSpec(), progress=False)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------
# prepare and the run's data


def test_prepare_warns_by_default_and_decontaminate_removes(tmp_path, eval_root, run_cli):
    src = write_corpus(tmp_path / "in.jsonl", [article(i) for i in range(8)] + [f"{PROSE} {STORY} {PROSE}"])
    code, _, err = run_cli("prepare", src, "--tokenizer", "char", "--out", tmp_path / "d1")
    assert code == 0 and "prepare: warning: lambada: 1 training documents share 13-grams with 1 of its 2" in err
    assert "hellaswag, arc_easy" in err and "task files not found" in err
    assert read_meta(tmp_path / "d1")["documents"] == 9
    code, _, err = run_cli("prepare", src, "--tokenizer", "char", "--out", tmp_path / "d2", "--decontaminate")
    assert code == 0 and "prepare: removed: lambada" in err
    meta = read_meta(tmp_path / "d2")
    assert meta["documents"] == 8 and meta["cleaning"]["removed"]["contamination"]["documents"] == 1
    code, _, err = run_cli("prepare", src, "--tokenizer", "char", "--out", tmp_path / "d3",
                           "--no-contamination-check")  # fmt: skip
    assert code == 0 and "lambada" not in err and "cleaning" not in read_meta(tmp_path / "d3")


def test_a_runs_data_config_cleans_into_its_own_dataset(tmp_path, eval_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    texts = [article(i) for i in range(8)] + [article(3), "Click", f"{PROSE} {STORY}"]
    src = write_corpus(tmp_path / "in.jsonl", texts)
    cfg = DataConfig(source=str(src), dedup=["exact"], filters=["short"], contamination="remove", val_fraction=0.2)
    out = ensure_prepared(cfg, "char", eval_index_for(cfg))
    assert out.parent.name == "data" and out.name.startswith("in-char-clean-")
    meta = read_meta(out)
    assert meta["documents"] == 8 and meta["settings"]["clean"]["filters"] == ["short"]
    assert set(meta["cleaning"]["removed"]) == {"exact-duplicate", "short", "contamination"}
    plain = ensure_prepared(DataConfig(source=str(src), contamination="off"), "char")
    assert plain.name == "in-char" and read_meta(plain)["documents"] == len(texts)


def test_the_sts_test_sets_are_decontamination_tasks(need_data):
    root = need_data("embed/stsbenchmark/sts-test.csv")
    first = [t for _, t in task_texts("sts-b", root)][:2]
    assert first[0] and first[1] and "sts-b" in resolve_tasks(["all"], root)[0] and "sts-b-dev" not in DECONTAM_TASKS
    long = next(t for _, t in task_texts("sts-b", root) if len(t.split()) >= 20)
    index, _ = eval_index(["sts-b"], root)
    hits = index.matches([f"{PROSE} {long} {MORE}", PROSE])  # a document quoting a test sentence, and one not
    assert index.tasks == ["sts-b"] and list(hits[0]) == [0] and hits[1] == {}


# ---------------------------------------------------------------------------------------------------------
# stream mode: cleaning on the fly


def _stream_reader(tmp_path, texts, **cleaning):
    src = write_corpus(tmp_path / "s.jsonl", texts)
    tok_dir = CharTokenizer.from_texts(texts).save(tmp_path / "tok")
    reader = Reader(str(tok_dir), "text", 0.0, 0, "<u2", **cleaning).bind()
    (task,) = [t for u in plan_units(str(src), "text") for t in unit_tasks(u, 0, 1, 0)]
    return reader.run(task)


def test_a_stream_reader_filters_and_decontaminates_each_document(tmp_path, eval_root):
    texts = [article(1), "Click here", f"Quoting a book: {STORY}. {PROSE}", article(2)]
    index = eval_index_file(DataConfig(contamination="warn"))
    assert index.endswith(".npz") and eval_index_file(DataConfig(contamination="off")) == ""
    res = _stream_reader(tmp_path, texts, filters=("short",), eval_index=index, contamination="warn")
    assert [d for d, _, _ in res.docs] == [0, 2, 3]  # the short page dropped, the overlapping one counted
    assert res.removed == {"short": 1} and res.overlap == {"lambada": 1}
    res = _stream_reader(tmp_path, texts, filters=("short",), eval_index=index, contamination="remove")
    assert [d for d, _, _ in res.docs] == [0, 3] and res.removed == {"short": 1, "contamination": 1}
    assert Reader("t", "text", 0, 0, filters=("short",)).cleaning() == {"filters": ["short"]}  # the val cache key
    assert Reader("t", "text", 0, 0, eval_index=index, contamination="warn").cleaning() == {}  # warn removes nothing


def test_stream_mode_refuses_what_needs_the_corpus_in_order():
    for bad in ({"dedup": ["exact"]}, {"filters": ["short", "boilerplate"]}):
        with pytest.raises(ConfigError, match="needs the corpus in order.*slm data clean SOURCE --out DIR"):
            DataConfig(source="x.jsonl", stream=True, **bad)
    DataConfig(source="x.jsonl", stream=True, filters=["short", "gopher"], contamination="remove")  # on the fly


def test_a_stream_run_cleans_on_the_fly_and_records_it(tmp_path, eval_root, run_cli):
    from conftest import tiny_overrides

    texts = [article(i, n=6) for i in range(12)] + [f"Click here {i}" for i in range(5)]
    texts += [f"{article(20 + i)} {STORY} {PROSE}" for i in range(3)]
    src = write_corpus(tmp_path / "s.jsonl", texts)
    args = [*tiny_overrides("train.max_steps=4", "train.eval_every=4"), "data.stream=true", f"data.source={src}",
            "data.stream_workers=0", "data.val_fraction=0.1", "data.val_tokens=200", "data.filters=[short]",
            f"train.out_dir={tmp_path / 'runs'}"]  # fmt: skip
    code, _, err = run_cli("train", *args, "--name", "warn", "--no-progress")
    assert code == 0, err
    assert "cleaning on the fly: filters short; documents overlapping an eval task counted" in err
    assert "a training document shares 13-grams with lambada" in err
    last = {k: v for e in read_metrics(tmp_path / "runs" / "warn") for k, v in e.items() if k.startswith("data/")}
    assert last["data/removed/short"] >= 1 and last["data/overlap/lambada"] >= 1
    assert 'filters = ["short"]' in (tmp_path / "runs" / "warn" / "config.toml").read_text()
    code, _, err = run_cli("train", *args, "data.contamination=remove", "--name", "remove", "--no-progress")
    assert code == 0, err
    last = {k: v for e in read_metrics(tmp_path / "runs" / "remove") for k, v in e.items() if k.startswith("data/")}
    assert last["data/removed/contamination"] >= 1 and "documents overlapping an eval task dropped" in err


# ---------------------------------------------------------------------------------------------------------
# the CLI


def test_cli_clean_bad_input_is_one_line(tmp_path, run_cli):
    src = write_corpus(tmp_path / "in.jsonl", [article(i) for i in range(3)])
    code, _, err = run_cli("data", "clean", src, "--out", tmp_path / "o", "--filters", "gopher,nope")
    assert code == 2 and "unknown filter 'nope'; valid filters:" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("data", "clean", src, "--out", tmp_path / "o", "--dedup", "fuzzy")
    assert code == 2 and "unknown dedup method 'fuzzy'; valid: exact, near" in err
    code, _, err = run_cli("data", "clean", src, "--out", tmp_path / "o", "--decontaminate", "mmlu2")
    assert code == 2 and "unknown task 'mmlu2'" in err
    (tmp_path / "o").mkdir()
    code, _, err = run_cli("data", "clean", src, "--out", tmp_path / "o", "--no-contamination-check")
    assert code == 2 and "exists; pick another --out or pass --overwrite" in err


def test_cli_stats_of_a_mixture_and_a_dataset(tmp_path, run_cli, tiny_dataset):
    a = write_corpus(tmp_path / "a.jsonl", [article(i) for i in range(5)] + [article(0)])
    b = write_corpus(tmp_path / "b.jsonl", ["Home | News\n" + article(i + 10) for i in range(4)])
    code, out, _ = run_cli("data", "stats", a, b, "--tokenizer", "none", "--out", tmp_path / "st", "--no-progress")
    assert code == 0 and "| **all** | 10 |" in out
    stats = json.loads((tmp_path / "st" / "stats.json").read_text())
    sa, sb = stats["sources"][str(a)], stats["sources"][str(b)]
    assert sa["documents"] == 6 and sa["exact_duplicate_rate"] == pytest.approx(1 / 6, abs=1e-3)
    assert sb["repeated_line_share"] > 0.3 and sa["languages"]["en"] == 1.0
    assert {p.name for p in (tmp_path / "st").iterdir()} >= {"stats.md", "stats.html", "lengths.png", "top.png"}
    code, out, _ = run_cli("data", "stats", tiny_dataset(), "--no-progress")  # tokens of the dataset's own tokenizer
    assert code == 0 and "top tokens:" in out and "| 7 |" in out
    code, _, err = run_cli("data", "stats", a, "--out", tmp_path / "st")
    assert code == 2 and "exists" in err
