"""The language's program suite (`tests/test_lang_programs.py`), unchanged, on a `RuntimeEndpoint` against our
server on a loopback port; greedy outputs equal the local runtime's; ``sglang-dsl serve`` as a subprocess.

The suite's tests take a ``runtime`` fixture: here it is the endpoint, with the server's engine and tokenizer
beside it for the few tests that look inside (``runtime.engine.stats()``, ``runtime.tokenizer``). Two tests of
the suite check the local runtime's own wording of an error and are replaced below by their HTTP versions."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

import sglang_dsl as sgl
from test_lang_programs import *  # noqa: F401,F403 - the suite, collected again here with this module's runtime
from test_lang_programs import FEW_SHOT

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


class ServedRuntime:
    """The suite's ``runtime``: the endpoint's attributes, plus the serving engine's ``engine`` and ``tokenizer``."""

    def __init__(self, endpoint, engine):
        self.endpoint, self.engine, self.tokenizer = endpoint, engine, engine.tokenizer

    def __getattr__(self, name):
        return getattr(self.endpoint, name)


@pytest.fixture(scope="module")
def runtime(smollm2_source):
    from runtime.args import RuntimeArgs
    from runtime.engine import Engine
    from runtime.server import BackgroundServer, create_app

    engine = Engine(replace(RuntimeArgs(), model=str(smollm2_source.path), device="cpu", max_total_tokens=16384))
    server = BackgroundServer(create_app(engine)).start()
    endpoint = sgl.RuntimeEndpoint(server.url)
    previous = sgl.global_config.default_backend
    sgl.set_default_backend(endpoint)
    yield ServedRuntime(endpoint, engine)
    sgl.set_default_backend(previous)
    endpoint.shutdown()
    server.stop()
    engine.shutdown()


def test_a_bad_argument_fails_fast_and_leaves_no_thread(runtime):
    """Over HTTP the server's 400 names the parameter; no thread is left behind."""
    before = {t.ident for t in threading.enumerate()}

    @sgl.function
    def bad(s):
        s += "Hello" + sgl.gen("x", top_p=5.0, max_tokens=4)

    start = time.perf_counter()
    with pytest.raises(sgl.ProgramError, match=r"program 'bad', node gen\('x'\): InvalidRequestError: top_p.*"
                                               r"/generate answered 400"):
        bad.run()
    assert time.perf_counter() - start < 2.0
    time.sleep(0.1)
    assert {t.ident for t in threading.enumerate()} <= before


def test_zz_a_shut_down_runtime_fails_fast(runtime):
    """A closed endpoint fails at once (a second endpoint to the same server: the shared one stays open for the
    tests below, which pytest runs after the suite's)."""
    endpoint = sgl.RuntimeEndpoint(runtime.base_url)
    endpoint.shutdown()

    @sgl.function
    def after(s):
        s += "Hello" + sgl.gen("x", max_tokens=4)

    start = time.perf_counter()
    with pytest.raises(sgl.ProgramError, match=r"program 'after', node gen\('x'\): the endpoint http://127.0.0.1:"
                                               r"\d+ has been shut down"):
        after.run(backend=endpoint)
    assert time.perf_counter() - start < 1.0


# ------------------------------------------------------------------------------ the same outputs as the local runtime

def _greedy_programs():
    @sgl.function
    def chat(s, question):
        s += sgl.system("You are a helpful assistant.")
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=16))
        s += sgl.user("Is that right? Answer yes or no.")
        s += sgl.assistant(sgl.select("verdict", ["yes", "no"]))

    @sgl.function
    def completion(s, a, b):
        s += FEW_SHOT[:200] + f"Q: What is {a} plus {b}?\nA:" + sgl.gen("sum", max_tokens=4, stop="\n")
        s += "\nAnd as a word:" + sgl.gen("word", max_tokens=6, regex=r" [a-z]+")
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += f"\nFact {i}:" + sgl.gen("fact", max_tokens=6, stop="\n")
        s += "\nOdd or even?" + sgl.select("parity", [" odd", " even"], choices_method=sgl.greedy_token_selection)

    return [(chat, [{"question": "What is the capital of France?"}, {"question": "Name a large ocean."}]),
            (completion, [{"a": 3, "b": 4}, {"a": 10, "b": 7}])]


def _outputs(states):
    return [(s.text(), {k: v for k, v in s.variables().items()}) for s in states]


def test_greedy_outputs_match_the_local_runtime(runtime, smollm2_source):
    remote = {prog.name: _outputs(prog.run_batch(args, temperature=0)) for prog, args in _greedy_programs()}
    with sgl.Runtime(model=str(smollm2_source.path), device="cpu", max_total_tokens=8192) as local:
        here = {prog.name: _outputs(prog.run_batch(args, temperature=0, backend=local))
                for prog, args in _greedy_programs()}
    assert remote == here


# ------------------------------------------------------------------------------ `sglang-dsl serve` as a subprocess

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_cli_server_runs_programs(smollm2_source):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-m", "sglang_dsl.cli", "serve", "--model", str(smollm2_source.path), "--port", str(port),
         "--device", "cpu", "--max-total-tokens", "4096", "--api-key", "sekrit", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "sglang-dsl serve did not come up within 120 s"
            time.sleep(0.5)
        with pytest.raises(Exception, match="401"):
            sgl.RuntimeEndpoint(url, api_key="wrong")
        with sgl.RuntimeEndpoint(url, api_key="sekrit") as endpoint:
            @sgl.function
            def capital(s):
                s += "The capital of France is" + sgl.select("city", [" Paris", " London"])
                s += "." + sgl.gen("more", max_tokens=6, temperature=0)

            state = capital.run(backend=endpoint)
            assert state["city"] == " Paris" and state["more"]
            assert endpoint.flush_cache() and endpoint.server_info()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stderr.close()
