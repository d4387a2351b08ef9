"""Shared test set-up: offline, isolated caches, tiny configs. Every test runs on CPU in seconds."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="slmkit-tests-"))
_REPO = Path(__file__).resolve().parent.parent
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    HF_HOME=str(_TMP / "hf"),
    HF_DATASETS_CACHE=str(_TMP / "hf" / "datasets"),
    TORCHINDUCTOR_CACHE_DIR=str(_TMP / "inductor"),
    TRACKIO_DIR=str(_TMP / "trackio"),
    SLM_CACHE_DIR=str(_TMP / "slm-cache"),  # the measured peak FLOP/s (MFU) is cached per machine
    WANDB_MODE="offline",
    WANDB_DIR=str(_TMP / "wandb"),
    TOKENIZERS_PARALLELISM="false",
)


def _load_fetch_script():
    """scripts/fetch_data.py (`make data`) as a module: the one list of the fetchable files and where they go."""
    spec = importlib.util.spec_from_file_location("fetch_data", _REPO / "scripts" / "fetch_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The shared data (TinyShakespeare, eval sets, tiktoken's GPT-2 files, ...) is not in the repository. It is read from
# $SLM_DATA_DIR when that names a folder (CI sets it), else from data/shared, which `make data` fills; a test asks for
# the files it needs with `need_data`, `need_tasks` or `gpt2_files` and is skipped, with one line saying what to set
# or run, when they are in neither (in CI `_ci_strict` turns that skip into a failure).
FETCH = _load_fetch_script()
_GIVEN_DATA_DIR = os.environ.get("SLM_DATA_DIR", "")
if _GIVEN_DATA_DIR and (Path(_GIVEN_DATA_DIR).is_dir() or not FETCH.DEFAULT_OUT.is_dir()):
    DATA_DIR = Path(_GIVEN_DATA_DIR).absolute()  # when missing too, the skip reasons name it; absolute for subprocesses
else:
    DATA_DIR = FETCH.DEFAULT_OUT
os.environ["SLM_DATA_DIR"] = str(DATA_DIR)  # what slmkit itself reads (built-in corpora, eval task files)
_USER_TIKTOKEN_CACHE = "TIKTOKEN_CACHE_DIR" in os.environ
if not _USER_TIKTOKEN_CACHE and (DATA_DIR / "tiktoken_cache").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(DATA_DIR / "tiktoken_cache")

STDLIB_DIR = Path(os.__file__).parent
_HOW = "set SLM_DATA_DIR to the shared data folder or run `make data`"


def _skip_unless_present(root: Path, parts: tuple[str, ...], what: str = "", how: str = _HOW) -> None:
    """Skip the running test with one line when a file of `parts` (relative to `root`) is missing: what is
    needed (`what`, else the missing files), where it was looked for, and how to supply it."""
    missing = [p for p in parts if not (root / p).is_file()]
    if not missing:
        return
    hand_made = [p for p in missing if p in FETCH.NOT_FETCHABLE]
    if hand_made:
        how = f"set SLM_DATA_DIR to a copy of the shared data ({hand_made[0]} cannot be downloaded: "
        how += f"{FETCH.NOT_FETCHABLE[hand_made[0]]})"
    pytest.skip(f"needs {what or ', '.join(missing)}, not in {root}: {how}")


def need_data(*parts: str) -> Path:
    """The shared-data folder, when it holds every file of `parts` (e.g. "tinyshakespeare/input.txt"); otherwise
    the test is skipped, naming the missing files and how to supply them. Tests get it as the `need_data` fixture."""
    _skip_unless_present(DATA_DIR, parts)
    return DATA_DIR


def need_tasks(*tasks: str) -> Path:
    """`need_data` for the files of the zero-shot benchmark `tasks` (eval/<task>/...)."""
    from slmkit.engine.evaluate.tasks import TASKS

    need_data(*(f"eval/{task}/{name}" for task in tasks for name in TASKS[task].files))
    return DATA_DIR


@pytest.fixture(name="need_data", scope="session")
def need_data_fixture():
    return need_data


@pytest.fixture(name="need_tasks", scope="session")
def need_tasks_fixture():
    return need_tasks


@pytest.fixture
def gpt2_files() -> None:
    """Skips the test unless tiktoken's GPT-2 files are where the `gpt2` tokenizer will look offline:
    $TIKTOKEN_CACHE_DIR, which is <shared data>/tiktoken_cache unless the user chose another folder."""
    cache = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or DATA_DIR / "tiktoken_cache")
    how = "put them there or unset TIKTOKEN_CACHE_DIR and run `make data`" if _USER_TIKTOKEN_CACHE else _HOW
    _skip_unless_present(cache, tuple(Path(p).name for p in FETCH.GPT2_FILES), "tiktoken's GPT-2 BPE files", how)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The whole shared-data folder; skips when there is none. Prefer `need_data(...)`, which names the files."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"needs the shared data, not in {DATA_DIR}: {_HOW}")
    return DATA_DIR


@pytest.fixture(scope="session")
def stdlib_dir() -> Path:
    return STDLIB_DIR


@pytest.fixture
def run_cli(capsys):
    """Call `slm ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from slmkit.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    """A small multi-document text corpus (a folder of .py files copied from the stdlib)."""
    out = tmp_path / "corpus"
    out.mkdir()
    for name in ("textwrap.py", "shlex.py", "fnmatch.py", "bisect.py", "colorsys.py", "keyword.py", "glob.py",
                 "heapq.py", "sched.py", "queue.py", "string.py", "numbers.py"):  # fmt: skip
        src = STDLIB_DIR / name
        if src.exists():
            (out / name).write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Run a test module on one torch thread (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny matmuls
    and batch-1 decoding are dominated by thread hand-offs, 10x slower with 2 threads on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, stdlib_dir):
    """Factory of a char-level dataset of 7 small stdlib modules, prepared once per val_fraction per session."""
    from slmkit.data.prepare import prepare

    made: dict[float, Path] = {}

    def make(val_fraction: float = 0.3) -> Path:
        if val_fraction not in made:
            src = tmp_path_factory.mktemp("corpus")
            for name in ("textwrap.py", "shlex.py", "fnmatch.py", "bisect.py", "colorsys.py", "heapq.py", "glob.py"):
                (src / name).write_text((stdlib_dir / name).read_text(encoding="utf-8"), encoding="utf-8")
            out = tmp_path_factory.mktemp("data") / "tiny-char"
            made[val_fraction] = prepare(str(src), tokenizer="char", out=out, val_fraction=val_fraction, progress=False)
        return made[val_fraction]

    return make


sys.dont_write_bytecode = True


# ---------------------------------------------------------------------------------------------------------
# Faults injected into training: something happens at the trainer's Nth optimizer step.


def at_train_step(monkeypatch, n: int, effect):
    """Patch the trainer's train_step so that its `n`th call first runs `effect()`: an exception it raises
    propagates; a value it returns replaces that step's (loss, grad norm); None lets the real step run."""
    import slmkit.engine.trainer as trainer

    real, calls = trainer.train_step, []

    def patched(*a, **k):
        calls.append(1)
        if len(calls) == n and (result := effect()) is not None:
            return result
        return real(*a, **k)

    monkeypatch.setattr(trainer, "train_step", patched)


def raising(exc: BaseException):
    """An `at_train_step` effect that raises `exc`."""

    def effect():
        raise exc

    return effect


# ---------------------------------------------------------------------------------------------------------
# A real browser: Debian's headless chromium driven by selenium (the report, the chat page, the inspect page).

CHROMIUM_MISSING = (
    "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)"
)


def headless_chromium(*extra_args: str):
    """A selenium driver of headless chromium (the caller quits it); skips the test with one line where chromium,
    chromedriver or selenium is missing (in CI that skip fails: .ci/run installs them)."""
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for drivers online
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip(CHROMIUM_MISSING)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-proxy-server",
                *extra_args):  # fmt: skip
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


# ---------------------------------------------------------------------------------------------------------
# The one tiny run config. Tests and helpers import it (`from conftest import TINY, tiny_overrides`) and state their
# own changes explicitly: `[*TINY, "model.norm=rmsnorm"]`, or `tiny_overrides("model.n_embd=64")` to change a value.

TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "train.batch_size=4",
        "train.eval_every=5", "train.eval_batches=2", "train.log_every=5", "optim.warmup=2", "train.max_steps=10",
        "tokenizer.kind=char"]  # fmt: skip
"""A 2-layer, 32-wide char model: 10 steps of 4 x 32 tokens, evaluated every 5 steps. Add data.dir and out_dir."""


def tiny_overrides(*changes: str, drop: tuple[str, ...] = ()) -> list[str]:
    """TINY with each `section.field=value` in `changes` replacing that key in place (or appended when TINY does not
    set it), and the keys in `drop` left out (back to their defaults). No key appears twice."""
    new = {c.split("=", 1)[0]: c for c in changes}
    unknown = [k for k in drop if not any(o.startswith(f"{k}=") for o in TINY)]
    assert not unknown, f"tiny_overrides: TINY does not set {unknown}"
    kept = [new.pop(o.split("=", 1)[0], o) for o in TINY if o.split("=", 1)[0] not in drop]
    return [*kept, *new.values()]


# In CI a skipped test is a hole: every dependency is installed there, so a skip means something is missing.
# Allowed: llama-cpp-python, which does not install from the registry on this machine kind, and a kernel the CPU
# itself lacks (fbgemm's AVX512-VNNI int8 kernel on a CPU without AVX-512), which no install can add.
_ALLOWED_CI_SKIPS = ("llama_cpp", "this CPU has no AVX512-VNNI")


def _ci_strict(report) -> None:
    if os.environ.get("CI", "").lower() in ("", "0", "false") or not report.skipped:
        return
    if any(name in str(report.longrepr) for name in _ALLOWED_CI_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped in CI, where nothing may be skipped: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _ci_strict(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _ci_strict(outcome.get_result())
