"""`slm quantize`: int8 rows, the three methods end to end on a tiny trained run, loading through load_model."""

import copy
import json

import pytest
import torch
from conftest import tiny_overrides

from slmkit.base.config_files import load_config
from slmkit.model.generate import sample_text
from slmkit.model.qweights import METHODS, DynamicInt8Linear, QuantizeError, dequantize_rows, quantize_rows
from slmkit.runs.checkpoint import load_model
from slmkit.ship.quantize import format_report, quantize

# LLaMA-style (swiglu, rmsnorm, rope, no biases), 64 wide, evaluated at steps 0 and 10
RUN = tiny_overrides("model.n_embd=64", "train.eval_every=10", "train.log_every=10", "model.norm=rmsnorm",
                     "model.pos_emb=rope", "model.mlp=swiglu", "model.bias=false", "train.name=q")  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory, stdlib_dir):
    from slmkit.data.prepare import prepare
    from slmkit.engine.train import train

    src = tmp_path_factory.mktemp("corpus")
    for name in ("textwrap.py", "shlex.py", "fnmatch.py", "bisect.py", "heapq.py"):
        (src / name).write_text((stdlib_dir / name).read_text(encoding="utf-8"), encoding="utf-8")
    data = tmp_path_factory.mktemp("data") / "tiny-char"
    prepare(str(src), tokenizer="char", out=data, val_fraction=0.2, progress=False)
    runs = tmp_path_factory.mktemp("runs")
    overrides = [*RUN, f"data.dir={data}", f"train.out_dir={runs}"]
    return train(load_config(None, overrides), overrides=overrides, progress=False)


def test_int8_rows_round_trip_within_half_a_step():
    w = torch.randn(48, 80) * torch.linspace(0.01, 3, 48)[:, None]  # rows of very different scales
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (48,) and q.abs().max() <= 127
    err = (dequantize_rows(q, scale) - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all()), float((err / scale[:, None]).max())


def test_dynamic_int8_linear_matches_a_float_linear():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    q, scale = quantize_rows(lin.weight)
    dyn = DynamicInt8Linear(q, scale, lin.bias)
    x = torch.randn(3, 5, 64)
    lin.requires_grad_(False)
    ref = torch.nn.functional.linear(x, dequantize_rows(q, scale), lin.bias)
    out = dyn(x)
    assert out.shape == (3, 5, 96)
    assert float((out - ref).abs().max()) < 0.05 * float(ref.abs().max()), float((out - ref).abs().max())
    assert torch.equal(dyn.weight, dequantize_rows(q, scale))


def test_an_outlier_row_does_not_cost_the_other_rows_their_precision():
    """SmolLM2's down projections see one token hundreds of times larger than the rest: with one activation scale
    per call the other rows lost their precision (WikiText-2 loss +12.5%); each row has its own scale."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32, bias=False).requires_grad_(False)
    dyn = DynamicInt8Linear(*quantize_rows(lin.weight), None)
    x = torch.randn(8, 64)
    x[0] *= 500.0  # the outlier token
    ref = torch.nn.functional.linear(x, dyn.weight)
    out = dyn(x)
    err = (out[1:] - ref[1:]).norm(dim=1) / ref[1:].norm(dim=1)
    assert float(err.max()) < 0.02, err
    assert torch.equal(dyn(x[1:5]), out[1:5])  # a row's result does not depend on the other rows of its call


@pytest.mark.parametrize("fast", [True, False], ids=["fbgemm-vnni", "linear_dynamic"])
def test_both_int8_kernels_and_fused_projections_match(fast):
    if fast and not DynamicInt8Linear.FAST:
        pytest.skip("this CPU has no AVX512-VNNI fbgemm kernel")
    torch.manual_seed(0)
    lins = [torch.nn.Linear(64, n) for n in (48, 16, 16)]
    parts = [DynamicInt8Linear(*quantize_rows(lin.weight), lin.bias) for lin in lins]
    x = torch.randn(1, 1, 64)  # one row: the fbgemm kernels (several rows take int8_rows)
    for m in parts:
        m.FAST = fast
    separate = torch.cat([m(x) for m in parts], dim=-1)  # (1, 1, 80)
    ref = torch.cat([torch.nn.functional.linear(x, m.weight, m.bias) for m in parts], dim=-1)
    assert float((separate - ref).abs().max()) < 0.02 * float(ref.abs().max()), float((separate - ref).abs().max())
    fused = DynamicInt8Linear.fused(parts)
    fused.FAST = fast
    assert torch.allclose(fused(x), separate, atol=1e-5)  # same activation quantization, same integer products
    assert torch.equal(parts[1].weight, dequantize_rows(*quantize_rows(lins[1].weight)))  # parts are views
    assert torch.equal(copy.deepcopy(fused)(x), fused(x))  # a copy packs its own weight


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_quantize_writes_a_loadable_artifact_and_a_report(run, method, tmp_path):
    out = quantize(run, method, tmp_path / method, eval_tokens=2048, speed_tokens=8, speed_repeats=1)
    for f in ("quantization.json", "model.safetensors", "config.toml", "tokenizer", "quantization_report.json",
              "quantization_report.md"):  # fmt: skip
        assert (out / f).exists(), f
    r = json.loads((out / "quantization_report.json").read_text())
    assert r["size"]["ratio"] < (0.55 if method == "bf16" else 0.5), r["size"]
    assert r["speed"][method]["decode_tok_s"] > 0 and r["speed"]["fp32"]["prefill_tok_s"] > 0
    assert abs(r["quality"]["loss_delta_pct"]) < 2.0, r["quality"]  # a tiny barely-trained model: generous
    assert r["agreement"]["prompts"] > 0
    assert "decode tok/s" in format_report(r)
    slow = {**r, "speed": {**r["speed"], "decode_speedup": 0.25}}  # as int8 on a CPU without VNNI
    assert "decodes 4.0x slower than fp32" in format_report(slow)
    assert "slower than fp32" not in format_report({**r, "speed": {**r["speed"], "decode_speedup": 1.5}})

    model, tok, cfg, path = load_model(out)  # every consumer loads through load_model
    fp32, *_ = load_model(run)
    x = torch.tensor([tok.encode("def f(x):\n    return")])
    with torch.no_grad():
        a, b = fp32(x)[0].float(), model(x)[0].float()
    assert float((a - b).abs().max()) < 0.1 * float(a.abs().max()), float((a - b).abs().max())
    if method == "int8-dynamic":
        assert isinstance(model.lm_head, DynamicInt8Linear) and isinstance(model.blocks[0].attn.q, DynamicInt8Linear)
    text = sample_text(model, tok, "def ", max_new_tokens=8, temperature=0)
    assert isinstance(text, str) and len(text) > 0


def test_quantize_refuses_bad_requests(run, tmp_path, run_cli):
    with pytest.raises(QuantizeError, match="unknown quantization method"):
        quantize(run, "int4", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(QuantizeError, match="not empty"):
        quantize(run, "int8-weight", tmp_path / "full")
    code, _, err = run_cli("quantize", run, "--method", "int8-weight", "--out", tmp_path / "full")
    assert code == 2 and "not empty" in err


def test_cli_quantize_then_sample(run, tmp_path, run_cli):
    code, out, err = run_cli("quantize", run, "--method", "int8-dynamic", "--out", tmp_path / "q", "--no-report")
    assert code == 0, err
    assert (tmp_path / "q" / "quantization.json").is_file()
    assert not (tmp_path / "q" / "quantization_report.json").exists()
    model, tok, *_ = load_model(tmp_path / "q")
    assert isinstance(model.lm_head, DynamicInt8Linear)
