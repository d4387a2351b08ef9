"""Run config: presets load, overrides are typed, unknown keys name close matches, TOML round-trips."""

import pytest
import tomllib

from slmkit.base.config import (
    ConfigError,
    RunConfig,
    describe,
    diff_configs,
    field_docs,
    from_dict,
    override_value,
)
from slmkit.base.config_files import PRESETS_DIR, load_config, preset_names, to_toml


@pytest.mark.parametrize("path", sorted(PRESETS_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_preset_loads_and_round_trips(path):
    cfg = load_config(str(path))
    assert cfg == from_dict(tomllib.loads(to_toml(cfg)))
    assert cfg.description, f"{path.name} needs a description line"


def test_configs_dir_is_the_presets():
    from pathlib import Path

    repo_configs = Path(__file__).parent.parent / "configs"
    assert sorted(p.name for p in repo_configs.glob("*.toml")) == sorted(f"{n}.toml" for n in preset_names())


def test_default_config_round_trips_through_toml():
    cfg = RunConfig()
    assert from_dict(tomllib.loads(to_toml(cfg))) == cfg


def test_overrides_are_typed():
    cfg = load_config("shakespeare-char", ["optim.lr=3e-4", "train.max_steps=200", "model.bias=false",
                                           "data.include=*.py,*.md", "log.backends=tensorboard"])  # fmt: skip
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps == 200 and isinstance(cfg.train.max_steps, int)
    assert cfg.model.bias is False
    assert cfg.data.include == ["*.py", "*.md"]
    assert cfg.log.backends == ["tensorboard"]
    assert cfg.preset == "shakespeare-char"


def test_override_value_is_the_last_given():
    ov = ["optim.lr=1e-3", "--train.name= a ", "optim.lr=3e-4", "train.out_dir"]
    assert override_value(ov, "optim.lr") == "3e-4" and override_value(ov, "train.name") == "a"
    assert override_value(ov, "optim.min_lr") is None and override_value(ov, "train.out_dir") is None
    assert override_value(["train.name="], "train.name") == ""


def test_an_lr_override_scales_min_lr_unless_min_lr_is_given():
    base = load_config()  # the default preset: lr 4e-3, min_lr 4e-4
    lower = load_config(None, ["optim.lr=3e-4"])  # below the preset's min_lr: was an error
    assert lower.optim.min_lr == pytest.approx(3e-4 * base.optim.min_lr / base.optim.lr)
    assert load_config(None, ["optim.min_lr=0", "optim.lr=3e-4"]).optim.min_lr == 0.0
    assert load_config(None, ["optim.lr=3e-4", "optim.min_lr=1e-5"]).optim.min_lr == 1e-5
    with pytest.raises(ConfigError, match="optim.min_lr"):  # contradictory values given together still fail
        load_config(None, ["optim.lr=3e-4", "optim.min_lr=1e-3"])


@pytest.mark.parametrize(
    "override, expect",
    [
        ("optim.lrr=1e-3", "optim.lr"),
        ("lr=1e-3", "optim.lr"),
        ("model.n_layers=4", "model.n_layer"),
        ("optim.lr=fast", "optim.lr expects float"),
        ("train.max_steps=1.5", "train.max_steps expects int"),
        ("model.bias=maybe", "model.bias expects bool"),
        ("optim.lr", "must look like section.field=value"),
    ],
)
def test_bad_overrides_name_the_field(override, expect):
    with pytest.raises(ConfigError, match=expect.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_toml_file(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("[optim]\nlearning_rate = 1e-3\n")
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        load_config(str(p))


def test_wrong_type_in_toml_file(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('[train]\nmax_steps = "many"\n')
    with pytest.raises(ConfigError, match="train.max_steps expects int"):
        load_config(str(p))


def test_validation_names_the_field():
    with pytest.raises(ConfigError, match="model.n_embd .* divisible by model.n_head"):
        load_config(None, ["model.n_embd=100", "model.n_head=3"])
    with pytest.raises(ConfigError, match="model.norm"):
        load_config(None, ["model.norm=batchnorm"])
    with pytest.raises(ConfigError, match="tokenizer.kind"):
        load_config(None, ["tokenizer.kind=sentencepiece"])
    with pytest.raises(ConfigError, match="train.eval_every must be >= 0"):
        load_config(None, ["train.eval_every=-1"])


def test_missing_config_file_and_unknown_preset():
    with pytest.raises(ConfigError, match="not found"):
        load_config("nope/missing.toml")
    with pytest.raises(ConfigError, match="did you mean shakespeare-char"):
        load_config("shakespeare-chr")


def test_every_field_has_help():
    rows = describe(RunConfig())
    missing = [k for k, _, _, h in rows if not h]
    assert not missing, f"fields without a docstring: {missing}"
    assert "Peak learning rate" in field_docs(type(RunConfig().optim))["lr"]


def test_diff_configs():
    a = load_config("shakespeare-char")
    b = load_config("shakespeare-char", ["optim.lr=3e-4"])
    assert diff_configs(a, b) == {"optim.lr": (1e-3, 3e-4), "optim.min_lr": (1e-4, pytest.approx(3e-5))}


def test_config_show_cli(run_cli):
    code, out, _ = run_cli("config", "show", "shakespeare-char", "optim.lr=3e-4")
    assert code == 0
    line = next(line for line in out.splitlines() if "optim.lr " in line)
    assert line.startswith("*") and "0.0003" in line and "default 0.001" in line and "Peak learning rate" in line


def test_config_show_bad_key_exits_2(run_cli):
    code, _, err = run_cli("config", "show", "default", "optim.lrr=1")
    assert code == 2
    assert err.startswith("error: unknown config key") and err.count("\n") == 1


@pytest.mark.parametrize(
    "value, expect",
    [
        ('["*.py"]', ["*.py"]),
        ("['*.py', '*.md']", ["*.py", "*.md"]),
        ('["*.py","*.md"]', ["*.py", "*.md"]),
        ("[*.py, *.md]", ["*.py", "*.md"]),
        ("*.py,*.md", ["*.py", "*.md"]),
        ("*.py", ["*.py"]),
        ("[]", []),
        ("", []),
    ],
)
def test_list_overrides_take_toml_json_and_comma_forms(value, expect):
    cfg = load_config(None, [f"data.include={value}", f"data.exclude={value}"])
    assert cfg.data.include == expect and cfg.data.exclude == expect


def test_list_overrides_round_trip_what_config_show_prints():
    cfg = load_config(None, ['log.backends=["tensorboard"]', "lora.targets=['q', 'v']"])
    assert cfg.log.backends == ["tensorboard"] and cfg.lora.targets == ["q", "v"]
    again = load_config(None, [f"log.backends={cfg.log.backends!r}", f"lora.targets={cfg.lora.targets!r}"])
    assert again == cfg
    with pytest.raises(ConfigError, match="log.backends"):
        load_config(None, ['log.backends=["tensorbored"]'])
    # strings that merely look like lists stay strings
    assert load_config(None, ["data.source=[x].txt"]).data.source == "[x].txt"


def test_config_show_accepts_list_overrides(run_cli):
    code, out, err = run_cli("config", "show", "default", 'data.include=["*.py", "*.md"]')
    assert code == 0, err
    line = next(line for line in out.splitlines() if "data.include " in line)
    assert "['*.py', '*.md']" in line


@pytest.mark.parametrize(
    "key, expect",
    [
        ("optim.learning_rate", "optim.lr"),
        ("train.learning_rate", "optim.lr"),
        ("train.batch", "train.batch_size"),
        ("train.steps", "train.max_steps"),
        ("model.layers", "model.n_layer"),
        ("model.heads", "model.n_head"),
        ("model.dim", "model.n_embd"),
        ("model.width", "model.n_embd"),
        ("optim.lrr", "optim.lr"),
        ("optm.lr", "optim.lr"),
        ("steps", "train.max_steps"),
    ],
)
def test_unknown_keys_suggest_the_field_meant(key, expect):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}=1"])
    hint = str(e.value).split("did you mean ", 1)[1].rstrip("?")
    assert hint.split(" or ")[0] == expect, str(e.value)
