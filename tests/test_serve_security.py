"""`slm serve` protection against DNS rebinding and cross-site requests (Host and Origin checks, --allow-host,
--allow-origin), its serving threads (`--threads`, set through the runtime), and its start-up line. The checks run
against a real uvicorn server on 127.0.0.1, so the bound port is the one the request arrived on."""

import socket
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from conftest import headless_chromium  # noqa: E402
from test_serve import CAP, MODEL, start_server, tiny_model  # noqa: E402

from slmkit.base.errors import SlmError  # noqa: E402
from slmkit.base.tokenizer import CharTokenizer  # noqa: E402
from slmkit.ship.serve import app as serve_app  # noqa: E402
from slmkit.ship.serve.access import Access  # noqa: E402
from slmkit.ship.serve.app import create_app  # noqa: E402
from slmkit.ship.serve.engine import Engine, default_threads  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ :\n"
SERVE_DIR = Path(serve_app.__file__).parent


@pytest.fixture(scope="module")
def engine():
    tok = CharTokenizer(CHARS)
    eng = Engine(tiny_model(tok.vocab_size), tok, slots=2).start()
    yield eng
    eng.stop()


def _serve(engine, access: Access | None):
    srv, thread, port = start_server(create_app(engine, MODEL, max_tokens_cap=CAP, access=access))
    return srv, thread, port


@pytest.fixture(scope="module")
def default_server(engine):
    srv, thread, port = _serve(engine, None)
    yield port
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def allowing_server(engine):
    access = Access("127.0.0.1", ("llm.example", "proxy.example:8443"), ("http://localhost:3000",))
    srv, thread, port = _serve(engine, access)
    yield port
    srv.should_exit = True
    thread.join(10)


def _get(port: int, path: str = "/v1/models", **headers) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=30)


def _chat(port: int, **headers) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "seed": 1}
    return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers, timeout=60)


def _refused(resp: httpx.Response, code: str) -> str:
    """The message of a 403 with OpenAI's error body and `code`."""
    assert resp.status_code == 403, (resp.status_code, resp.text[:300])
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code and err["param"] is None
    return err["message"]


def test_loopback_names_at_the_bound_port_are_served(default_server):
    port = default_server
    for host in ("127.0.0.1", "localhost", "[::1]", "LOCALHOST"):
        assert _get(port, Host=f"{host}:{port}").status_code == 200, host
    assert _get(port, "/", Host=f"localhost:{port}").status_code == 200  # the chat page
    assert _chat(port, Host=f"localhost:{port}").json()["object"] == "chat.completion"


def test_other_hosts_are_refused_with_an_openai_error(default_server):
    port = default_server
    for host in (f"evil.example:{port}", "evil.example", f"localhost:{port + 1}", "localhost", f"127.0.0.2:{port}",
                 f"localhost.evil.example:{port}", f"localhost@evil.example:{port}"):  # fmt: skip
        msg = _refused(_get(port, Host=host), "host_not_allowed")
        assert "--allow-host" in msg and "DNS rebinding" in msg, msg
    msg = _refused(_get(port, "/", Host=f"rebound.example:{port}"), "host_not_allowed")
    assert "--allow-host rebound.example" in msg
    assert _refused(_chat(port, Host=f"evil.example:{port}"), "host_not_allowed")  # before any route or body check
    assert _refused(_get(port, "/no/such/route", Host="evil.example"), "host_not_allowed")


def test_a_request_without_a_host_header_is_refused(default_server):
    with socket.create_connection(("127.0.0.1", default_server), timeout=30) as s:
        s.sendall(b"GET /v1/models HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 403") and b"no Host header" in reply


def test_cross_site_pages_are_refused_same_origin_pages_served(default_server):
    port = default_server
    # the chat page's own fetches, whichever loopback name it was opened under
    for host in ("127.0.0.1", "localhost"):
        assert _chat(port, Host=f"{host}:{port}", Origin=f"http://{host}:{port}").status_code == 200
    assert _get(port, Host=f"localhost:{port}", Origin=f"http://localhost:{port}").status_code == 200
    for origin in ("https://evil.example", f"http://evil.example:{port}", "http://localhost:3000", "null",
                   f"http://127.0.0.1:{port + 1}", f"http://localhost:{port}", "not an origin"):  # fmt: skip
        msg = _refused(_chat(port, Host=f"127.0.0.1:{port}", Origin=origin), "origin_not_allowed")
        assert "--allow-origin" in msg and "cross-site" in msg, (origin, msg)
    msg = _refused(_get(port, Host=f"127.0.0.1:{port}", Origin="https://Evil.example:443"), "origin_not_allowed")
    assert "--allow-origin https://evil.example" in msg


def test_json_content_type_is_still_required(default_server):
    port = default_server
    r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=b'{"model": "tiny-test"}',
                   headers={"Content-Type": "text/plain"}, timeout=30)  # fmt: skip
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_allowed_hosts_and_origins(allowing_server):
    port = allowing_server
    assert _get(port, Host=f"llm.example:{port}").status_code == 200
    assert _get(port, Host="llm.example").status_code == 200  # a name without a port: any port
    assert _get(port, Host="proxy.example:8443").status_code == 200
    _refused(_get(port, Host="proxy.example:9000"), "host_not_allowed")  # name:port: that port only
    _refused(_get(port, Host=f"other.example:{port}"), "host_not_allowed")
    assert _chat(port, Host="llm.example", Origin="http://llm.example").status_code == 200  # its own page
    # an allowed site's page: served, with CORS headers, and its preflight answered
    r = _chat(port, Host=f"localhost:{port}", Origin="http://localhost:3000")
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
    pre = httpx.options(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
                        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
                                 "Access-Control-Request-Headers": "content-type, authorization"})  # fmt: skip
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in pre.headers["access-control-allow-methods"]
    other = {"Origin": "http://localhost:3001", "Access-Control-Request-Method": "POST"}
    pre = httpx.options(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30, headers=other)
    _refused(pre, "origin_not_allowed")
    assert "access-control-allow-origin" not in _get(port).headers  # same-origin and non-browser: no CORS header


def test_access_rules_without_a_server():
    scope = {"type": "http", "server": ("0.0.0.0", 8000)}

    def refused(access: Access, host: str | None, origin: str | None = None) -> str | None:
        headers = ([(b"host", host.encode())] if host else []) + ([(b"origin", origin.encode())] if origin else [])
        err = access.refusal(scope | {"headers": headers})
        return err and err.code

    wide = Access("0.0.0.0")  # bound to every interface: Host is not checked, Origin still is
    assert refused(wide, "192.168.1.5:8000") is None and refused(wide, "anything.example") is None
    assert refused(wide, "192.168.1.5:8000", "http://192.168.1.5:8000") is None
    assert refused(wide, "192.168.1.5:8000", "http://evil.example") == "origin_not_allowed"
    listed = Access("0.0.0.0", ("box.lan",))
    assert refused(listed, "box.lan:8000") is None and refused(listed, "localhost:8000") is None
    assert refused(listed, "192.168.1.5:8000") == "host_not_allowed"
    assert refused(Access("192.168.1.5", ("box.lan",)), "192.168.1.5:8000") is None  # the bound address counts
    assert refused(Access("::1"), "[::1]:8000") is None and refused(Access("::1"), "evil.example") == "host_not_allowed"
    assert refused(Access("127.0.0.1", ("*",)), "evil.example") is None
    assert refused(Access("127.0.0.1", (), ("*",)), "localhost:8000", "https://evil.example") is None
    assert refused(Access("127.0.0.1", (), ("https://app.example:443/",)), "localhost:8000", "https://app.example") \
        is None  # fmt: skip
    for bad in ("http://example.com", "example.com:port", "example.com:0", "exa mple.com", "[::1", ""):
        with pytest.raises(SlmError, match="--allow-host"):
            Access(hosts=(bad,))
    for bad in ("localhost:3000", "http://", "http://x.example:99999", "://x"):
        with pytest.raises(SlmError, match="--allow-origin"):
            Access(origins=(bad,))
    describe = Access().describe(8000)
    assert "localhost:8000, 127.0.0.1:8000, [::1]:8000" in describe and "same-origin" in describe


def test_cli_arguments():
    from slmkit.cli import build_parser

    args = build_parser().parse_args(["serve", "runs/x"])
    assert (args.allow_host, args.allow_origin, args.threads) == ([], [], None)
    args = build_parser().parse_args(["serve", "runs/x", "--allow-host", "a.example", "--allow-host", "b.example:9",
                                      "--allow-origin", "http://localhost:3000", "--threads", "2"])  # fmt: skip
    assert args.allow_host == ["a.example", "b.example:9"] and args.allow_origin == ["http://localhost:3000"]
    assert args.threads == 2


def test_default_threads_hold_up_on_few_cores():
    assert [default_threads(c) for c in (1, 2, 4, 6, 8, 16, 64)] == [1, 1, 1, 3, 4, 4, 4]


def test_serve_sets_threads_through_the_runtime_and_logs_one_line(monkeypatch, capsys, engine):
    """serve() with no --threads uses default_threads(), applied by engine/runtime's resolve_runtime (torch's thread
    count is set in one place); its start-up line names host, port, the allowed hosts and origins, and threads."""
    calls = {}
    monkeypatch.setattr(serve_app, "load_engine", lambda run, checkpoint, slots: (engine, "m"))
    monkeypatch.setattr(engine, "stop", lambda: None)  # the module's engine outlives this test
    monkeypatch.setattr(serve_app, "base_model_note", lambda run: None)
    monkeypatch.setattr(serve_app, "trained_fim", lambda run, checkpoint: (0.0, 0.0))  # no run dir behind the stub
    monkeypatch.setattr(serve_app, "default_threads", lambda: 1)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app, **kw))
    applied = []
    real = serve_app.resolve_runtime
    monkeypatch.setattr(serve_app, "resolve_runtime", lambda cfg: applied.append(cfg.threads) or real(cfg))
    torch.set_num_threads(2)
    serve_app.serve("runs/x", port=8123, allow_hosts=["llm.example"], allow_origins=["http://localhost:3000"])
    assert applied == [1] and torch.get_num_threads() == 1
    assert (calls["host"], calls["port"]) == ("127.0.0.1", 8123)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    for part in ("host 127.0.0.1", "port 8123", "localhost:8123", "llm.example", "http://localhost:3000", "threads 1"):
        assert part in line, (part, line)
    serve_app.serve("runs/x", port=8123, threads=2)
    assert applied == [1, 2] and torch.get_num_threads() == 2
    with pytest.raises(SlmError, match="--allow-host"):
        serve_app.serve("runs/x", allow_hosts=["http://x"])
    with pytest.raises(SlmError, match="--threads"):
        serve_app.serve("runs/x", threads=-1)
    for name in ("app.py", "engine.py"):  # the runtime sets torch's threads; the server never does it itself
        assert "set_num_threads" not in (SERVE_DIR / name).read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_chat_page_works_in_a_browser_under_both_loopback_names(default_server):
    """Real headless Chromium (skipped without Debian's chromium, chromedriver and selenium): the page's same-origin
    fetches pass the Host and Origin checks whether it was opened as 127.0.0.1 or localhost."""
    import os

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for drivers online
    browser = headless_chromium()  # skips with one line where chromium or selenium is missing
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        for name in ("127.0.0.1", "localhost"):
            browser.get(f"http://{name}:{default_server}/")
            wait = WebDriverWait(browser, 60)
            wait.until(lambda d: d.find_element(By.ID, "model").text == MODEL)  # GET /v1/models
            box = browser.find_element(By.ID, "input")
            box.send_keys("hello")
            box.send_keys(Keys.ENTER)  # POST /v1/chat/completions, streamed
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 1)
            reply = browser.find_element(By.CSS_SELECTOR, ".msg.assistant")
            wait.until(lambda d, reply=reply: reply.get_attribute("data-state") == "done")
            assert browser.find_elements(By.CSS_SELECTOR, ".msg.error") == [], name
    finally:
        browser.quit()
