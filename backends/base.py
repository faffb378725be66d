"""What a backend must do to run programs: the interface between the interpreter and a model.

The interpreter (`sglang_dsl.lang.executor`) hands a backend one call per node that needs the model:

- `Backend.generate` / `Backend.stream`: continue a prompt with the sampling parameters the program set (and only
  those: unset ones are left to the backend) and any constraint (``regex``, ``json_schema``, ``dtype``, ``grammar``).
- `Backend.select`: score every choice after a prompt and decide with the node's choices method.
- `Backend.cache_prefix`: a hint that several requests will share this prompt (before a ``fork``, before a
  batch); a backend with a prefix cache computes it once. `Backend.prompt_codec` (its tokenization, for batch
  plans at token granularity) and `Backend.prepare_constraints` (compile ahead of time) are planning hints.
- `Backend.chat_template`: how the model renders chat turns (roles render through the model's own template).
- `Backend.run_segment` (when ``capabilities.segments``): a straight-line run of text / gen / select steps as
  ONE runtime request that the backend executes step by step (appending fixed text, enforcing each gen's
  constraint, deciding each select) without returning to the interpreter; one `StepOutput` per gen/select comes
  back, stored exactly as the per-node calls' results would be. See /work/notes/segments_interface.md.

`Capabilities` says what a backend can do; the interpreter raises `UnsupportedFeatureError` naming the node
before calling a backend for something it lacks. Backend methods are coroutines run on the interpreter's event
loop; they raise exceptions with plain messages and the interpreter adds the program and node.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Mapping, Protocol, Sequence

from sglang_dsl.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from sglang_dsl.lang.errors import ProgramError, UnsupportedFeatureError
from sglang_dsl.lang.exprs import Image
from sglang_dsl.lang.params import SamplingParams

if TYPE_CHECKING:
    from sglang_dsl.compiler.codec import PromptCodec
    from sglang_dsl.compiler.constraint import ConstraintSpec


@dataclass(frozen=True)
class Capabilities:
    """What a backend can run. ``images``: image inputs; ``select``: likelihood scoring of choices;
    ``streaming``: incremental output; ``prefix_cache``: `Backend.cache_prefix` does something; ``segments``:
    `Backend.run_segment` runs several text/gen/select steps as one request; ``regex`` / ``json_schema`` /
    ``grammar``: those gen constraints (``regex`` covers ``dtype``); ``logprobs``: a gen's ``return_logprob``
    and friends; ``completion``: continuing raw text (False for chat-only APIs: a gen or select must open an
    assistant turn, or with ``continue_assistant`` may also continue one that already has text);
    ``select_methods``: the names of the choices methods select honours (None: any); ``sampling``: the
    `SamplingParams` fields a gen may set (None: all). `sglang_dsl.compiler.capabilities` checks a program against
    them before it runs."""

    select: bool = True
    streaming: bool = True
    images: bool = False
    prefix_cache: bool = False
    segments: bool = False
    regex: bool = True
    json_schema: bool = True
    grammar: bool = True
    logprobs: bool = True
    completion: bool = True
    continue_assistant: bool = False
    select_methods: frozenset[str] | None = None
    sampling: frozenset[str] | None = None

    def restricted(self) -> bool:
        """Whether a gen or select could need something this backend lacks: only then is a program checked as a
        whole before it runs (images and streaming are also checked node by node as they run)."""
        return not (self.select and self.regex and self.json_schema and self.grammar and self.logprobs
                    and self.completion and self.select_methods is None and self.sampling is None)


@dataclass(frozen=True)
class Prompt:
    """The program's text so far (chat turns already rendered) and the images attached to it; for chat APIs also
    the completed turns (``messages``, OpenAI format) and the open turn's ``(role, content so far)``."""

    text: str
    images: tuple[Image, ...] = ()
    messages: tuple[Mapping[str, Any], ...] = ()
    turn: tuple[str, str] | None = None


class _NativeSampling:
    """How a generation's ``params`` and ``extra_sampling`` are spelled in the native API."""

    params: SamplingParams
    extra_sampling: Mapping[str, Any]

    def sampling_params(self) -> dict[str, Any]:
        """The native ``sampling_params`` to send: only the keys that were set."""
        return {**self.params.native_sampling(), **self.extra_sampling}

    def logprob_options(self) -> dict[str, Any]:
        """The request-level logprob options that were set."""
        return self.params.native_logprobs()


@dataclass(frozen=True)
class GenerateCall(_NativeSampling):
    """One generation: ``params`` are the program's defaults with the node's settings over them; fields still
    ``None`` are not sent. ``extra_sampling`` holds native sampling keys set globally (``global_config``)."""

    node: str
    prompt: Prompt
    params: SamplingParams
    extra_sampling: Mapping[str, Any] = field(default_factory=dict)
    spec_tokens: int | None = None  # the program's ``num_api_spec_tokens`` (speculation for black-box APIs)


@dataclass(frozen=True)
class Generation:
    """A generation (cumulative while streaming): ``text`` is a list when ``n > 1``; ``meta_info`` follows the
    native API's (``prompt_tokens``, ``completion_tokens``, ``cached_tokens``, ``finish_reason``, logprobs)."""

    text: str | list[str]
    meta_info: dict[str, Any] | list[dict[str, Any]]
    finished: bool = True


@dataclass(frozen=True)
class SelectCall:
    node: str
    prompt: Prompt
    choices: tuple[str, ...]
    temperature: float
    method: ChoicesSamplingMethod


@dataclass(frozen=True)
class TextStep:
    """Fixed text appended to the segment's request."""

    text: str

    def native(self) -> dict[str, Any]:
        """The step as ``POST /generate_program`` and `runtime.program.parse_steps` take it."""
        return {"type": "text", "text": self.text}


@dataclass(frozen=True)
class GenStep(_NativeSampling):
    """A generation inside a segment (one sample: ``params.n`` is unset or 1); its output is appended. ``node``
    names it in errors; ``name`` is the variable it sets (None: none)."""

    node: str
    name: str | None
    params: SamplingParams
    extra_sampling: Mapping[str, Any] = field(default_factory=dict)

    def native(self) -> dict[str, Any]:
        """The step as ``POST /generate_program`` and `runtime.program.parse_steps` take it."""
        return {"type": "gen", "node": self.node, "name": self.name, "sampling_params": self.sampling_params(),
                **self.logprob_options()}


@dataclass(frozen=True)
class SelectStep:
    """A select inside a segment: the chosen choice is appended (same semantics as `SelectCall`)."""

    node: str
    name: str | None
    choices: tuple[str, ...]
    temperature: float
    method: ChoicesSamplingMethod


SegmentStep = TextStep | GenStep | SelectStep


@dataclass(frozen=True)
class SegmentCall:
    """Run ``steps`` in order after ``prompt``, as one request. ``node`` is the first step's node (for errors)."""

    node: str
    prompt: Prompt
    steps: tuple[SegmentStep, ...]

    def failed_node(self, completed: int) -> str:
        """The node of the first gen/select step after the ``completed`` ones (where a failure happened)."""
        calls = [step.node for step in self.steps if not isinstance(step, TextStep)]
        return calls[min(completed, len(calls) - 1)] if calls else self.node


@dataclass(frozen=True)
class StepOutput:
    """What one gen/select step produced: ``value`` is the generated text or the chosen choice; ``meta_info`` is
    the native meta (``prompt_tokens``, ``completion_tokens``, ``cached_tokens``, ``finish_reason``...; for a
    select also the choices method's meta), as the per-node call would have returned it."""

    node: str
    name: str | None
    value: str
    meta_info: dict[str, Any]


@dataclass(frozen=True)
class SegmentResult:
    """One `StepOutput` per `GenStep`/`SelectStep` of the call, in order."""

    outputs: tuple[StepOutput, ...]


class SegmentError(ProgramError):
    """A segment failed at step ``node``; ``completed`` are the outputs of the gen/select steps that ran before it,
    which the interpreter stores as the per-node calls would have stored them before the failure."""

    def __init__(self, message: str, *, node: str, completed: tuple[StepOutput, ...] = ()):
        super().__init__(message, node=node)
        self.completed = completed


class ChatTemplate(Protocol):
    """A model's chat format: render OpenAI-style messages (string contents) as the model expects them."""

    image_token: str | None

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> str: ...


class Backend(ABC):
    """Base of all backends; see the module docstring for the contract."""

    name: str = "backend"
    capabilities: Capabilities = Capabilities()
    # Requests the backend keeps in flight itself (a remote client's limit). When set, ``run_batch`` does not hold a
    # thread per program: bodies return at once and the backend queues what is over its limit.
    max_concurrency: int | None = None

    @abstractmethod
    def chat_template(self) -> ChatTemplate | None:
        """The model's chat template, or None when it has none (chat roles then fail, naming the node)."""

    @abstractmethod
    async def generate(self, call: GenerateCall) -> Generation:
        """Continue ``call.prompt``; raise with a message saying what went wrong."""

    def stream(self, call: GenerateCall) -> AsyncIterator[Generation]:
        """Cumulative generations until one with ``finished`` set (implement as an async generator)."""
        raise UnsupportedFeatureError("streaming", self.name, node=call.node)

    async def select(self, call: SelectCall) -> ChoicesDecision:
        raise UnsupportedFeatureError("select", self.name, node=call.node)

    async def run_segment(self, call: SegmentCall) -> SegmentResult:
        """Run all of ``call.steps`` as one request (only when ``capabilities.segments``); a step that fails raises
        `SegmentError` with the outputs of the steps before it."""
        raise UnsupportedFeatureError("segments", self.name, node=call.node)

    async def cache_prefix(self, prompt: Prompt) -> None:
        """Compute and keep the KV of ``prompt`` for requests that will share it (a no-op without a cache)."""

    def prompt_codec(self) -> PromptCodec | None:
        """How this backend tokenizes prompt text, so plans share prefixes at token granularity (None: unknown;
        plans then work on characters)."""
        return None

    def prepare_constraints(self, specs: Sequence[ConstraintSpec]) -> None:
        """A hint that requests with these constraints will come: a backend that compiles constraints may start
        now, in the background (a no-op by default; never raises for a bad spec, the request will)."""

    def flush_cache(self) -> bool:
        """Drop cached prefixes; False when the backend cannot (or has nothing to flush)."""
        return False

    def server_info(self) -> dict[str, Any]:
        return {}

    def shutdown(self) -> None:
        """Release what the backend holds (processes, connections)."""
