"""Pair readers (jsonl, tsv, STS-B, SICK, SimCSE; scored pairs for CoSENT), malformed lines, and the pair loader's
batches and exact resume."""

import pytest
import torch
from embed_helpers import write_pairs

from slmkit.base.config import DataConfig, EmbedConfig
from slmkit.base.tokenizer import CharTokenizer
from slmkit.data.pairs import (
    Pair,
    PairLoader,
    detect_kind,
    load_pair_data,
    read_pairs,
    read_senteval_sts,
    read_sick,
    read_sts_benchmark,
    split_sentences,
)
from slmkit.data.sources import DataError

SICK_HEAD = "\t".join(["pair_ID", "sentence_A", "sentence_B", "entailment_label", "relatedness_score",
                       "entailment_AB", "entailment_BA", "sentence_A_original", "sentence_B_original",
                       "sentence_A_dataset", "sentence_B_dataset", "SemEval_set"])  # fmt: skip


def sick_row(i, a, b, label, score, split):
    return f"{i}\t{a}\t{b}\t{label}\t{score}\tx\tx\tx\tx\tx\tx\t{split}"


@pytest.mark.parametrize("suffix", [".jsonl", ".tsv"])
def test_pairs_files_with_hard_negatives(tmp_path, suffix):
    path = write_pairs(tmp_path / f"p{suffix}", 5)
    pairs = read_pairs(path)
    assert len(pairs) == 5 and pairs[0] == Pair("the apple number 0", "a apple was seen 0", ("no river",))
    assert detect_kind(path) == "pairs"
    assert read_pairs(path, max_pairs=2) == pairs[:2]


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("p.jsonl", '{"anchor": "a", "positive": "b"}\n{"anchor": "a"}\n', 2),
        ("p.jsonl", '{"anchor": "a", "positive": "b"}\n\nnot json\n', 3),
        ("p.jsonl", '{"anchor": "a", "positive": "b", "negatives": ["c", ""]}\n', 1),
        ("p.tsv", "a\tb\nonly one field\n", 2),
        ("p.tsv", "a\t\n", 1),
    ],
)
def test_a_malformed_line_is_named(tmp_path, name, text, line):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=rf"{name}:{line}:"):
        read_pairs(path)


def test_sts_benchmark_keeps_high_scores_and_sick_takes_contradictions_as_negatives(tmp_path):
    sts = tmp_path / "sts-train.csv"
    sts.write_text("g\tf\t2012\t1\t4.5\tA cat sits.\tA cat is sitting.\n"
                   "g\tf\t2012\t2\t1.0\tA dog runs.\tThe sky is blue.\textra\tcols\n")  # fmt: skip
    assert detect_kind(sts) == "sts-b"
    assert read_pairs(sts) == [Pair("A cat sits.", "A cat is sitting.")]
    assert len(read_pairs(sts, "sts-b", min_score=0.5)) == 2
    assert read_sts_benchmark(sts)[1] == ("A dog runs.", "The sky is blue.", 1.0)
    sick = tmp_path / "SICK.txt"
    sick.write_text("\n".join([SICK_HEAD, sick_row(1, "A man sings", "A person sings", "ENTAILMENT", 4.8, "TRAIN"),
                               sick_row(2, "A man sings", "Nobody sings", "CONTRADICTION", 3.1, "TRAIN"),
                               sick_row(3, "A boy eats", "A kid eats", "ENTAILMENT", 4.5, "TEST")]) + "\n")  # fmt: skip
    assert detect_kind(sick) == "sick"
    assert read_pairs(sick) == [Pair("A man sings", "A person sings", ("Nobody sings",))]
    assert read_sick(sick, "TEST") == [("A boy eats", "A kid eats", "ENTAILMENT", 4.5)]
    bad = tmp_path / "bad.csv"
    bad.write_text("g\tf\t2012\t1\t4.5\tA\tB\ng\tf\t2012\t1\tnot a score\tA\tB\n")
    with pytest.raises(DataError, match="bad.csv:2: not an STS Benchmark line"):
        read_sts_benchmark(bad)
    with pytest.raises(DataError, match="gave no training pairs"):
        read_pairs(sts, "sts-b", min_score=5.0)
    plain = tmp_path / "notes.txt"
    plain.write_text("hello\n")
    with pytest.raises(DataError, match="cannot tell what pairs"):
        read_pairs(plain)


def test_scored_pairs_for_cosent(tmp_path):
    """jsonl pairs may carry a gold score; with scored=True sts-b and sick add every pair with its score after their
    positives; load_pair_data refuses scores without embed.cosent_weight and the weight without scores."""
    js = tmp_path / "p.jsonl"
    js.write_text('{"anchor": "a b", "positive": "a c", "score": 4.5}\n'
                  '{"anchor": "x y", "positive": "z w", "score": 1}\n'
                  '{"anchor": "p q", "positive": "p r"}\n')  # fmt: skip
    assert [p.score for p in read_pairs(js)] == [4.5, 1, None]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"anchor": "a", "positive": "b", "score": "high"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1: score must be a number"):
        read_pairs(bad)
    sts = tmp_path / "sts-train.csv"
    sts.write_text("g\tf\t2012\t1\t4.5\tA cat sits.\tA cat is sitting.\ng\tf\t2012\t2\t1.0\tA dog runs.\tThe sky.\n")
    assert read_pairs(sts, scored=True) == [Pair("A cat sits.", "A cat is sitting."),
                                            Pair("A cat sits.", "A cat is sitting.", (), 4.5),
                                            Pair("A dog runs.", "The sky.", (), 1.0)]  # fmt: skip
    sick = tmp_path / "SICK.txt"
    rows = [sick_row(1, "A man sings", "A person sings", "ENTAILMENT", 4.8, "TRAIN"),
            sick_row(2, "A man sings", "Nobody sings", "CONTRADICTION", 3.1, "TRAIN")]  # fmt: skip
    sick.write_text("\n".join([SICK_HEAD, *rows]) + "\n")
    assert [p.score for p in read_pairs(sick, scored=True)] == [None, 4.8, 3.1]
    tok = CharTokenizer.from_texts(["abcdefghijklmnopqrstuvwxyzACDST ."])
    data = load_pair_data(DataConfig(source=str(js), val_fraction=0), EmbedConfig(cosent_weight=1.0), tok, 16)
    assert [s for *_, s in data.train][:2] == [4.5, 1.0] and "2 scored (CoSENT)" in data.describe()
    with pytest.raises(DataError, match="only the CoSENT loss reads; set embed.cosent_weight"):
        load_pair_data(DataConfig(source=str(js), val_fraction=0), EmbedConfig(), tok, 16)
    plain = write_pairs(tmp_path / "plain.jsonl", 5)
    with pytest.raises(DataError, match="embed.cosent_weight needs pairs with gold scores"):
        load_pair_data(DataConfig(source=str(plain), val_fraction=0), EmbedConfig(cosent_weight=1.0), tok, 16)


def test_simcse_reads_lines_or_sentences(tmp_path):
    txt = tmp_path / "s.txt"
    txt.write_text("one sentence here\n\nanother one\n")
    assert read_pairs(txt, "simcse") == [Pair("one sentence here", "one sentence here"),
                                         Pair("another one", "another one")]  # fmt: skip
    assert split_sentences("Paris is the capital of France. It has 2 million people. Dr. Who? Yes!") == [
        "Paris is the capital of France.", "It has 2 million people.", "Dr.", "Who?", "Yes!"]  # fmt: skip


def test_senteval_folder_skips_unscored_pairs(tmp_path):
    (tmp_path / "STS.input.a.txt").write_text("x y\tx z\nu v\tu w\np q\tp r\n")
    (tmp_path / "STS.gs.a.txt").write_text("4.0\n\n1.5\n")
    assert read_senteval_sts(tmp_path) == [("x y", "x z", 4.0), ("p q", "p r", 1.5)]


def test_loader_lays_out_anchors_positives_negatives_and_resumes_exactly():
    examples = [([i, 1], [i, 2, 2], [[i, 3]] if i % 2 else [], i / 2 if i % 3 else float("nan")) for i in range(10)]
    loader = PairLoader(examples, 4, negatives=1, seed=3)
    ids, lengths, n, scores = loader.next_batch()
    assert int(n) == 4 and ids.shape[0] == 4 + 4 + sum(1 for i in ids[:4, 0].tolist() if i % 2)
    assert lengths[:4].tolist() == [2] * 4 and lengths[4:8].tolist() == [3] * 4
    assert torch.equal(ids[:4, 0], ids[4:8, 0])  # positive i belongs to anchor i
    for i, s in zip(ids[:4, 0].tolist(), scores.tolist()):  # each pair's score (NaN: none) in anchor order
        assert (s != s) if i % 3 == 0 else s == i / 2
    state = loader.state_dict()
    expected = [loader.next_batch() for _ in range(4)]  # crosses an epoch boundary
    again = PairLoader(examples, 4, negatives=1, seed=3)
    again.load_state_dict(state)
    for a, b in zip(expected, [again.next_batch() for _ in range(4)]):
        assert all(torch.equal(x.nan_to_num(-1), y.nan_to_num(-1)) for x, y in zip(a, b))
    with pytest.raises(DataError, match="does not fit"):
        PairLoader(examples, 5, seed=3).load_state_dict(state)
    no_neg = PairLoader(examples, 4, negatives=0, seed=3).next_batch()
    assert no_neg[0].shape[0] == 8


def test_the_shared_sts_files_read_as_mteb_counts_them(need_data):
    root = need_data(
        "embed/stsbenchmark/sts-train.csv", "embed/sick/SICK.txt", "embed/sts12-16/STS12-en-test/STS.input.MSRpar.txt"
    )
    assert len(read_sts_benchmark(root / "embed/stsbenchmark/sts-test.csv")) == 1379
    assert len(read_sick(root / "embed/sick/SICK.txt", "TEST")) == 4906  # this copy of SICK (9,840 rows)
    counts = {y: len(read_senteval_sts(root / f"embed/sts12-16/STS{y}-en-test")) for y in range(12, 17)}
    assert counts == {12: 3108, 13: 1500, 14: 3750, 15: 3000, 16: 1186}
    positives = read_pairs(root / "embed/stsbenchmark/sts-train.csv")
    assert 1000 < len(positives) < 2500
    sick = read_pairs(root / "embed/sick/SICK.txt")
    assert len(sick) > 1000 and any(p.negatives for p in sick)
