"""`slm inspect`: the explicit attention path against SDPA for every architecture, the numbers `inspect_prompt`
returns, bad input, the page (and, where Chromium is installed, the page rendered in headless Chromium)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import TINY, headless_chromium

from slmkit.base.config import ModelConfig
from slmkit.base.config_files import load_config
from slmkit.base.tokenizer import CharTokenizer
from slmkit.model.gpt import GPT, explicit_attention, record_attention
from slmkit.runs.checkpoint import load_model
from slmkit.study.expectations import entropy_hint
from slmkit.study.inspect import InspectError, inspect_prompt, visible, write_inspect_page

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = {
    "gpt2": {},  # learned positions, layernorm, pre-norm, gelu, tied, biases
    "rope": dict(pos_emb="rope"),
    "gqa": dict(n_kv_head=2),
    "mqa-rope": dict(n_kv_head=1, pos_emb="rope"),
    "qk-norm": dict(qk_norm=True),
    "rmsnorm": dict(norm="rmsnorm"),
    "post-norm": dict(norm_position="post"),
    "llama": dict(norm="rmsnorm", pos_emb="rope", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=2),
    "post-rms-qk-relu2": dict(norm="rmsnorm", norm_position="post", qk_norm=True, mlp="relu2", pos_emb="rope"),
}


def model_of(**kw) -> GPT:
    """A random model whose attention is far from uniform (init_std 0.1): the comparison then means something."""
    torch.manual_seed(0)
    base = dict(n_layer=3, n_head=4, n_embd=64, block_size=24, vocab_size=70, init_std=0.1)
    return GPT(ModelConfig(**{**base, **kw})).eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_explicit_attention_equals_sdpa(name):
    model = model_of(**VARIANTS[name])
    x = torch.randint(0, 70, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, _ = model(x)
        with record_attention(model) as weights:
            got, _ = model(x)
    assert (got - ref).abs().max().item() < 1e-5
    assert len(weights) == 3 and all(w.shape == (2, 4, 24, 24) for w in weights)
    assert all(a.record is None for a in (b.attn for b in model.blocks))  # the default path is back
    for w in weights:
        assert torch.allclose(w.sum(-1), torch.ones(2, 4, 24), atol=1e-5)  # each row is a distribution
        assert w.triu(diagonal=1).abs().max().item() == 0.0  # causal: nothing from later tokens
    assert max(w[:, :, 4:].amax().item() for w in weights) > 0.5  # some heads do focus: not a trivial check


@pytest.mark.parametrize("name", ["gpt2", "llama", "post-rms-qk-relu2"])
def test_explicit_attention_with_a_kv_cache(name):
    """Decoding reaches attention with a cached prefix: a chunk (explicit mask) and single tokens (no mask)."""
    model = model_of(**VARIANTS[name])
    x = torch.randint(0, 70, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = model(x)
        cache = model.new_kv_cache(1)
        with record_attention(model) as weights:
            parts = [model(x[:, :5], kv_cache=cache)[0], model(x[:, 5:11], kv_cache=cache)[0],
                     model(x[:, 11:], kv_cache=cache)[0]]  # fmt: skip
    assert (torch.cat(parts, dim=1) - full).abs().max().item() < 1e-5
    assert [tuple(w.shape[-2:]) for w in weights[::3]] == [(5, 5), (6, 11), (1, 12)]
    chunk = weights[3][0, 0]  # layer 0 of the second call: queries at positions 5..10 over keys 0..10
    assert chunk[0, 6:].abs().max().item() == 0.0 and chunk[0, :6].sum().item() == pytest.approx(1.0, abs=1e-6)


def test_explicit_attention_by_hand():
    """One head, two positions: query i's weights are softmax(q_i . k_j / sqrt(d)) over the keys j <= i."""
    q = torch.tensor([[[[1.0, 0.0], [2.0, 0.0]]]])  # (B=1, heads=1, T=2, d=2)
    k = torch.tensor([[[[1.0, 1.0], [0.0, 1.0]]]])
    v = torch.tensor([[[[10.0, 0.0], [0.0, 10.0]]]])
    y, w = explicit_attention(q, k, v, start=0)
    p = 1 / (1 + math.exp(-2 / math.sqrt(2)))  # query 1 scores key 0 at 2, key 1 at 0
    assert w[0, 0].tolist() == [[1.0, 0.0], [pytest.approx(p), pytest.approx(1 - p)]]
    assert y[0, 0].tolist() == [[10.0, 0.0], [pytest.approx(10 * p), pytest.approx(10 * (1 - p))]]


# ---------------------------------------------------------------------------------------------------------
# inspect_prompt: the numbers


@pytest.fixture(scope="module")
def char_model():
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz ,.\n")
    model = model_of(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=tok.vocab_size, n_kv_head=2,
                     pos_emb="rope", norm="rmsnorm")  # fmt: skip
    return model, tok


def test_inspect_numbers_match_the_model(char_model):
    model, tok = char_model
    r = inspect_prompt(model, tok, "the cat sat.\n", top_k=3)
    ids = tok.encode("the cat sat.\n")
    assert [t.id for t in r.tokens] == ids and r.cut == 0 and [t.text for t in r.tokens][3] == "␣"
    assert r.tokens[-1].text == "↵" and r.tokens[-1].bytes == b"\n"
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0][0, :, : tok.vocab_size]
    probs = logits.softmax(-1)
    for p in range(len(ids)):
        best = probs[p].topk(3)
        assert [c.id for c, _ in r.top[p]] == best.indices.tolist()
        assert [q for _, q in r.top[p]] == pytest.approx(best.values.tolist(), abs=1e-6)
        h = -(probs[p] * probs[p].log()).sum().item()
        assert r.entropy[p] == pytest.approx(h, abs=1e-5) and r.entropy_bits[p] == pytest.approx(h / math.log(2))
        assert 0 <= r.entropy[p] <= math.log(tok.vocab_size) + 1e-6
    assert r.next_prob[:-1] == pytest.approx([probs[p, ids[p + 1]].item() for p in range(len(ids) - 1)], abs=1e-6)
    assert r.next_prob[-1] is None
    # attention: every layer and head, rows sum to 1, causal
    assert r.layers == [0, 1] and r.heads == [0, 1, 2, 3]
    for layer in r.layers:
        a = r.attention[layer]
        assert a.shape == (4, len(ids), len(ids))
        assert abs(a.sum(-1) - 1).max() < 1e-5 and abs(a[:, 0, 1:]).max() == 0
    # logit lens: embedding + one row per layer; the last row is the model's own prediction
    assert r.lens_rows == ["embedding", "after layer 0", "after layer 1"] and len(r.lens) == 3
    assert [c.id for c, _ in r.lens[-1]] == probs.argmax(-1).tolist()
    assert [q for _, q in r.lens[-1]] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-6)


def test_inspect_selects_layers_and_heads_and_refuses_bad_ones(char_model):
    model, tok = char_model
    r = inspect_prompt(model, tok, "abc", layers=[1], heads=[3, 0])
    assert r.layers == [1] and r.heads == [0, 3] and list(r.attention) == [1] and r.attention[1].shape == (2, 3, 3)
    with pytest.raises(InspectError, match=r"no layer 2: this model has 2 layers, numbered 0\.\.1"):
        inspect_prompt(model, tok, "abc", layers=[2])
    with pytest.raises(InspectError, match=r"no head -1: this model has 4 heads, numbered 0\.\.3"):
        inspect_prompt(model, tok, "abc", heads=[-1])
    with pytest.raises(InspectError, match="empty prompt"):
        inspect_prompt(model, tok, "")


def test_a_long_prompt_is_cut_from_the_left(char_model, tmp_path):
    model, tok = char_model
    text = "abcdefghijklmnopqrstuvwxyz"  # 26 tokens, context 16
    r = inspect_prompt(model, tok, text)
    assert r.cut == 10 and r.n_prompt_tokens == 26 and "".join(t.text for t in r.tokens) == text[10:]
    page = write_inspect_page(r, tmp_path).read_text()
    assert "id='cut'" in page and "the first 10 were cut" in page
    assert "id='cut'" not in write_inspect_page(inspect_prompt(model, tok, "abc"), tmp_path / "short").read_text()


def test_visible_whitespace_and_partial_characters():
    assert visible(b" a\tb\n") == "␣a⇥b↵" and visible("€".encode()) == "€"
    assert visible("€".encode()[:2]) == "⟨e2 82⟩" and visible(b"\x00") == "\\x00"


def test_entropy_hint_compares_with_ln_v():
    h = entropy_hint(5.0, 50257)
    assert "ln(50,257) = 10.82" in h and "7.21 bits" in h and "148.4 tokens" in h and "46%" in h
    assert "uniform guess: an untrained" in entropy_hint(4.9, 159) and "nearly certain" in entropy_hint(0.1, 159)


# ---------------------------------------------------------------------------------------------------------
# A real run through the CLI


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
    from slmkit.engine.train import train

    ov = [*TINY, f"data.dir={tiny_dataset()}", f"train.out_dir={tmp_path_factory.mktemp('runs')}", "train.name=insp"]
    return train(load_config(None, ov), overrides=ov, progress=False)


def test_cli_inspect_writes_a_self_contained_page(run, run_cli):
    code, out, err = run_cli("inspect", run, "--prompt", "def f(x):\n    return x", "--top-k", "3")
    page = run / "inspect" / "inspect.html"
    assert code == 0 and out.strip() == str(page) and err == ""
    for png in ("entropy.png", "attention-layer0.png", "attention-layer1.png"):
        assert (run / "inspect" / png).stat().st_size > 5000
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 3 and not re.search(r"(src|href)=['\"](?!data:)", html)
    for part in ("id='tokens-table'", "id='next-table'", "id='entropy-hint'", "class='attn'", "id='lens-table'",
                 "ln(V) = ln(", "after layer 1", "␣", "↵"):  # fmt: skip
        assert part in html, part
    assert html.count("<tr><th>after layer") == 2


def test_cli_inspect_refuses_bad_input_in_one_line(run, run_cli, tmp_path):
    bad = {("--layers", "2"): "error: no layer 2: this model has 2 layers, numbered 0..1",
           ("--heads", "0", "5"): "error: no head 5: this model has 2 heads, numbered 0..1"}  # fmt: skip
    for args, message in bad.items():
        code, _, err = run_cli("inspect", run, "--prompt", "abc", "--out", tmp_path, *args)
        assert code == 2 and err.strip() == message
    code, _, err = run_cli("inspect", run, "--prompt", "")
    assert code == 2 and err.startswith("error: empty prompt") and err.count("\n") == 1
    code, _, err = run_cli("inspect", run, "--prompt", "x" * 40, "--out", tmp_path / "long")
    assert code == 0 and "the prompt is 40 tokens, longer than the context of 32; the first 8 were cut" in err
    assert "the first 8 were cut" in (tmp_path / "long" / "inspect.html").read_text()


def test_cli_inspect_a_quantized_model(run, run_cli, tmp_path):
    from slmkit.ship.quantize import quantize

    quant = quantize(run, "int8-dynamic", out=tmp_path / "q", report=False)
    code, out, _ = run_cli("inspect", quant, "--prompt", "import os", "--layers", "1", "--heads", "1")
    assert code == 0 and (quant / "inspect" / "attention-layer1.png").is_file()
    assert not (quant / "inspect" / "attention-layer0.png").exists()
    model, tok, _, _ = load_model(quant)  # int8-dynamic: q|k|v fused into one int8 matmul, the same attention path
    assert model.blocks[0].attn.qkv is not None
    x = torch.tensor([tok.encode("import os")])
    with torch.no_grad():
        ref, _ = model(x)
        with record_attention(model) as weights:
            got, _ = model(x)
    assert len(weights) == 2 and (got - ref).abs().max().item() < 1e-5
    r = inspect_prompt(model, tok, "import os")
    assert abs(r.attention[0].sum(-1) - 1).max() < 1e-5


# ---------------------------------------------------------------------------------------------------------
# The page in a real browser. CI installs chromium and chromium-driver (.ci/run); elsewhere it is skipped.


@pytest.mark.slow
def test_inspect_page_renders_in_headless_chromium(run, tmp_path):
    driver = headless_chromium("--window-size=1200,900")  # skips with one line where chromium is missing
    import matplotlib.image
    from selenium.webdriver.common.by import By

    model, tok, _, _ = load_model(run)
    prompt = "def f(x):\n    return x"
    page = write_inspect_page(inspect_prompt(model, tok, prompt, name="insp"), tmp_path)
    try:
        driver.get(page.as_uri())
        T = len(tok.encode(prompt))
        assert driver.find_element(By.TAG_NAME, "h1").text == "Inside insp"
        assert len(driver.find_elements(By.CSS_SELECTOR, "#tokens-table tr")) == T + 1
        assert len(driver.find_elements(By.CSS_SELECTOR, ".toks .tok")) == T
        assert "nats" in driver.find_element(By.ID, "entropy-hint").text
        rows = driver.find_elements(By.CSS_SELECTOR, "#next-table tr")
        assert len(rows) == T + 1 and "entropy (nats)" in rows[0].text
        assert re.fullmatch(r"\d+\.\d\d", rows[1].find_elements(By.TAG_NAME, "td")[3].text)
        images = driver.find_elements(By.CSS_SELECTOR, "img.attn")
        assert len(images) == 2  # one grid of heads per layer
        for img in [*images, driver.find_element(By.CSS_SELECTOR, "img.entropy")]:  # decoded, drawn, not broken
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 300
            assert img.size["width"] > 300
        lens = driver.find_elements(By.CSS_SELECTOR, "#lens-table tr")
        assert [r.find_element(By.TAG_NAME, "th").text for r in lens[1:]] == ["embedding", "after layer 0",
                                                                              "after layer 1"]  # fmt: skip
        assert len(lens[1].find_elements(By.TAG_NAME, "td")) == T
        driver.set_window_size(1200, driver.execute_script("return document.body.scrollHeight") + 100)
        shot = tmp_path / "shot.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    img = matplotlib.image.imread(str(shot))[..., :3]  # (H, W, 3) in [0, 1]
    saturated = float(((img.max(axis=2) - img.min(axis=2)) > 0.25).mean())  # the page's own styling is pale:
    assert img.shape[0] > 2000 and saturated > 0.02, (img.shape, saturated)  # these are the heatmaps and charts
