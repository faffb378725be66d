"""run_batch executing its plan on a recording backend: prefills before their groups, constraints prepared, the
same results as an unplanned run, and eager fallback for programs that do not trace."""

from __future__ import annotations

import threading

import sglang_dsl as sgl
from backends.base import Backend, Capabilities, Generation
from sglang_dsl.lang.config import global_config


class Recorder(Backend):
    """Answers every gen with the prompt's length; records prefills, generations and constraint hints."""

    name = "recorder"
    capabilities = Capabilities(prefix_cache=True)

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.prepared: list = []
        self.lock = threading.Lock()

    def chat_template(self):
        return None

    async def generate(self, call):
        with self.lock:
            self.events.append(("generate", call.prompt.text))
        return Generation(str(len(call.prompt.text)), {"prompt_tokens": 0, "cached_tokens": 0})

    async def cache_prefix(self, prompt):
        with self.lock:
            self.events.append(("prefill", prompt.text))

    def prepare_constraints(self, specs):
        self.prepared.extend(specs)


HEADERS = ["First header, long enough to share. ", "Second header, also long enough. "]


@sgl.function
def qa(s, header, question):
    s += header + "Q: " + question + "\nA:"
    s += sgl.gen("answer", regex="[0-9]+")


@sgl.function
def branching(s, header, question):
    s += header
    if question.startswith("x"):  # inspects an argument: the trace ends here
        s += "X"
    s += question + sgl.gen("answer")


def entries():
    return [{"header": HEADERS[i % 2], "question": f"q{i}"} for i in range(6)]


def test_prefills_precede_their_groups_and_constraints_are_prepared():
    backend = Recorder()
    states = qa.run_batch(entries(), backend=backend)
    prefills = [text for kind, text in backend.events if kind == "prefill"]
    assert sorted(prefills) == sorted(h + "Q: q" for h in HEADERS)
    for k, (kind, text) in enumerate(backend.events):
        if kind == "generate":
            prefix = next(p for p in prefills if text.startswith(p))
            assert ("prefill", prefix) in backend.events[:k]
    assert [spec.source for spec in backend.prepared] == ["[0-9]+"]
    assert [s["answer"] for s in states] == [str(len(HEADERS[i % 2] + f"Q: q{i}\nA:")) for i in range(6)]


def test_unplanned_run_gives_the_same_states():
    planned = [s["answer"] for s in qa.run_batch(entries(), backend=Recorder())]
    global_config.enable_batch_planning = False
    try:
        backend = Recorder()
        unplanned = [s["answer"] for s in qa.run_batch(entries(), backend=backend)]
    finally:
        global_config.enable_batch_planning = True
    assert planned == unplanned
    assert [kind for kind, _ in backend.events].count("prefill") == 1  # the first program's prompt only


def test_a_trace_ending_early_still_plans_the_header():
    backend = Recorder()
    states = branching.run_batch(entries(), backend=backend)
    assert len(states) == 6 and all(s["answer"] for s in states)
    prefills = [text for kind, text in backend.events if kind == "prefill"]
    # the prompt goes on after the boundary, so its last "token" (character) may merge and is not shared
    assert sorted(prefills) == sorted(h[:-1] for h in HEADERS)


def test_kv_window_holds_back_unrelated_groups_but_not_descendants():
    from sglang_dsl.compiler.batch_plan import plan_batch
    from sglang_dsl.lang.planned_batch import KvWindow

    headers = ["A header that is long enough. ", "Another header, also long. "]
    batch = [{"header": headers[0], "question": q} for q in ("xxxxx one", "xxxxx two", "zz")] + \
            [{"header": headers[1], "question": q} for q in ("three", "four")]
    plan = plan_batch(qa.trace(), batch)
    top = [p.id for p in plan.prefixes if p.parent is None]
    (child,) = [p.id for p in plan.prefixes if p.parent is not None]
    window = KvWindow(plan, budget=window_size(plan, top[0]) + 1)
    window.enter(("prefix", top[0]))
    window.enter(("prefix", child))  # a descendant reuses its ancestor's KV: it enters at once
    entered = threading.Event()
    other = threading.Thread(target=lambda: (window.enter(("prefix", top[1])), entered.set()))
    other.start()
    assert not entered.wait(0.2)  # the unrelated group waits for room
    for index in plan.prefixes[top[0]].instances:
        window.finished(index)
    assert entered.wait(5)
    other.join()


def window_size(plan, prefix_id):
    return plan.prefixes[prefix_id].new_tokens + sum(i.new_tokens for i in plan.instances if i.prefix == prefix_id)
