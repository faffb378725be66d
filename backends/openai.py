"""The OpenAI backend: programs on any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, ``sglang-dsl serve``)
over `backends.http`, for chat models (``/v1/chat/completions``: the program's turns go as messages) and
completion models (``/v1/completions``: the program's text goes as the prompt).

What the backend can do depends on the model kind and on the server's *features*, read from the model's card
(``GET /v1/models/{model}``, key ``"extensions"``) unless given as ``features=...``:

- ``regex`` / ``json_schema`` / ``ebnf``: the server takes those constraint fields in the request body;
- ``response_format``: a chat model takes ``response_format`` with a JSON schema (OpenAI's structured outputs);
- ``sampling``: the server takes ``top_k``, ``min_p``, ``min_tokens``, ``ignore_eos``, ``stop_token_ids``;
- ``logprobs``: generated tokens' logprobs; ``echo_logprobs``: ``/v1/completions`` with ``echo`` and
  ``logprobs`` scores a prompt's own tokens;
- ``continue_final_message``: a chat answer continues a final assistant message (vLLM's flag), so a gen or
  select may follow text in an assistant turn.

``api.openai.com`` has ``response_format``, ``logprobs`` and ``echo_logprobs``; a server that says nothing is
assumed to have ``logprobs`` only. From them follow the backend's `Capabilities`, checked before a program runs
(`sglang_dsl.compiler.capabilities`): a node the server cannot run fails first, naming it.

``select`` on a completion model scores every choice with echoed logprobs (one request, all choices methods); on
a chat model it is a generation constrained to the choices (``regex``, else a JSON-schema enum), which decides by
the model's own pick (so only the default choices method). Chat models answer as the assistant only: a gen or
select must open an assistant turn (or continue one, with ``continue_final_message``), unless
``num_api_spec_tokens`` lets one answer fill several gens (`backends.speculation`). Sampling parameters the
server does not take are errors, not silently dropped."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Hashable

from backends.base import Backend, Capabilities, ChatTemplate, GenerateCall, Generation, Prompt, SelectCall
from backends.http import HttpClient, HttpConfig, HttpError
from backends.limit import ConcurrencyLimit
from backends.openai_wire import (
    BASE_SAMPLING, EXTENDED_SAMPLING, by_index, choice_logprobs, delta_text, echoed_entries, meta_info,
    reply_text, response_format, sampling_fields, texts_or_one,
)
from backends.speculation import SpeculationStore, Speculated
from backends.templates import DEFAULT, answer_messages
from sglang_dsl.lang import loop
from sglang_dsl.lang.choices import ChoicesDecision, decide, token_length_normalized
from sglang_dsl.lang.errors import ProgramError, UnsupportedFeatureError

OPENAI_BASE_URL = "https://api.openai.com/v1"
FEATURES = frozenset({"regex", "json_schema", "ebnf", "response_format", "sampling", "logprobs", "echo_logprobs",
                      "continue_final_message"})
OPENAI_FEATURES = frozenset({"response_format", "logprobs", "echo_logprobs"})
UNADVERTISED_FEATURES = frozenset({"logprobs"})
COMPLETION_MODELS = frozenset({"gpt-3.5-turbo-instruct", "davinci-002", "babbage-002"})


@dataclass
class TokenUsage:
    """Tokens billed so far (SGLang's ``backend.token_usage``) and the generation requests they took;
    ``reset()`` starts again."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, usage: Any) -> None:
        """Count one answered request and its ``usage`` (OpenAI's field names)."""
        with self._lock:
            self.prompt_tokens += int((usage or {}).get("prompt_tokens") or 0)
            self.completion_tokens += int((usage or {}).get("completion_tokens") or 0)
            self.requests += 1

    def reset(self) -> None:
        with self._lock:
            self.prompt_tokens = self.completion_tokens = self.requests = 0


def capabilities_for(features: frozenset[str], chat: bool) -> Capabilities:
    """What a model of this kind can run on a server with ``features``."""
    regex = "regex" in features
    json_schema = "json_schema" in features or (chat and "response_format" in features)
    sampling = {"max_new_tokens", "stop", *BASE_SAMPLING, *(EXTENDED_SAMPLING if "sampling" in features else ())}
    if chat:
        select, methods = regex or json_schema, frozenset({token_length_normalized.name})
    else:
        select, methods = "echo_logprobs" in features, None
    return Capabilities(select=select, streaming=True, images=chat, prefix_cache=False, regex=regex,
                        json_schema=json_schema, grammar="ebnf" in features, logprobs="logprobs" in features,
                        completion=not chat,
                        continue_assistant=chat and "continue_final_message" in features,
                        select_methods=methods, sampling=frozenset(sampling))


class OpenAI(Backend):
    """A model on an OpenAI-compatible server. ``base_url`` defaults to ``$OPENAI_BASE_URL`` or OpenAI's,
    ``api_key`` to ``$OPENAI_API_KEY``; ``is_chat_model`` defaults as in SGLang (chat, except OpenAI's completion
    models). ``features`` (see the module docstring) skips asking the server. ``chat_template`` only renders the
    program's text (the server renders the real prompt); SGLang's ``default`` template otherwise.
    ``max_concurrency``: requests out at once (the rest wait their turn, so ``run_batch`` frees its threads)."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 is_chat_model: bool | None = None, chat_template: ChatTemplate | None = None,
                 features: Any = None, *, timeout: float = 120.0, max_retries: int = 3, verify: bool | str = True,
                 organization: str | None = None, spec_capacity: int = 256, max_concurrency: int = 64):
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
        api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"OpenAI-Organization": organization} if organization else {}
        self.model = model
        self.is_chat_model = model not in COMPLETION_MODELS if is_chat_model is None else bool(is_chat_model)
        self.max_concurrency = max_concurrency
        self._limit = ConcurrencyLimit(max_concurrency)
        self.http = HttpClient(base_url, api_key, headers=headers, config=HttpConfig(
            timeout=timeout, max_retries=max_retries, verify=verify, max_connections=max_concurrency))
        self.name = f"OpenAI({model!r} at {self.http.base_url})"
        self.features = self._features(features)
        self.capabilities = capabilities_for(self.features, self.is_chat_model)
        self._template = chat_template or DEFAULT
        self._path = "chat/completions" if self.is_chat_model else "completions"
        self._max_tokens_field = "max_completion_tokens" if model.startswith(("o1", "o3", "o4")) else "max_tokens"
        self.token_usage = TokenUsage()
        self.speculation = SpeculationStore(spec_capacity)

    def __repr__(self) -> str:
        return self.name

    def _features(self, features: Any) -> frozenset[str]:
        if features is None:
            features = self._discover()
        chosen = frozenset([features] if isinstance(features, str) else features)
        unknown = sorted(chosen - FEATURES)
        if unknown:
            raise ValueError(f"unknown OpenAI server features {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(FEATURES))}")
        return chosen

    def _discover(self) -> frozenset[str]:
        """The features the model's card advertises (``"extensions"``), OpenAI's own, or the bare minimum."""
        if self.http.base_url == OPENAI_BASE_URL:
            return OPENAI_FEATURES
        try:
            card = loop.run(self.http.get_json(f"models/{self.model}"))
        except HttpError as err:
            if err.status is None:
                raise ProgramError(f"{self.name}: cannot reach the server to read its features: {err}") from err
            return UNADVERTISED_FEATURES
        advertised = card.get("extensions") if isinstance(card, dict) else None
        return frozenset(f for f in advertised or () if f in FEATURES) or UNADVERTISED_FEATURES

    # ---- the backend interface --------------------------------------------------------------------------

    def chat_template(self) -> ChatTemplate:
        return self._template

    async def generate(self, call: GenerateCall) -> Generation:
        if call.spec_tokens and _speculable(call):
            return await self._speculative(call)
        reply = await self._post(self._path, self._body(call, call.prompt))
        choices = by_index(reply, call.params.n or 1)
        logprobs = bool(call.params.return_logprob)
        metas = [meta_info(reply, c, self.is_chat_model,
                           choice_logprobs(c, self.is_chat_model) if logprobs else None) for c in choices]
        texts = [reply_text(c, self.is_chat_model) for c in choices]
        return Generation(texts_or_one(texts, call.params.n), metas[0] if len(metas) == 1 else metas)

    async def stream(self, call: GenerateCall) -> AsyncIterator[Generation]:
        body = {**self._body(call, call.prompt), "stream": True, "stream_options": {"include_usage": True}}
        text, entries, tops, usage, reply_id, finish = "", [], [], {}, None, None
        logprobs = bool(call.params.return_logprob)
        async with self._limit.slot():
            async for event in self.http.stream_events(self._path, body):
                usage = event.get("usage") or usage
                reply_id = event.get("id") or reply_id
                piece = ""
                for choice in event.get("choices") or ():
                    piece += delta_text(choice, self.is_chat_model)
                    finish = choice.get("finish_reason") or finish
                    if logprobs:
                        new_entries, new_tops = choice_logprobs(choice, self.is_chat_model)
                        entries.extend(new_entries)
                        tops.extend(new_tops)
                text += piece
                if piece:
                    yield Generation(text, self._stream_meta(reply_id, usage, None, entries, tops, logprobs), False)
        self.token_usage.add(usage)
        yield Generation(text, self._stream_meta(reply_id, usage, finish, entries, tops, logprobs), True)

    async def select(self, call: SelectCall) -> ChoicesDecision:
        if self.is_chat_model:
            return await self._select_by_generation(call)
        conditional = await self._score([call.prompt.text + c for c in call.choices], len(call.prompt.text))
        unconditional = None
        if call.method.requires_unconditional_logprobs:
            unconditional = await self._score(list(call.choices), 0)
        return decide(call.method, call.choices, call.temperature, conditional, unconditional)

    def server_info(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model, "base_url": self.http.base_url,
                "is_chat_model": self.is_chat_model, "features": sorted(self.features)}

    def shutdown(self) -> None:
        self.http.close()

    # ---- requests -----------------------------------------------------------------------------------------

    def _body(self, call: GenerateCall, prompt: Prompt) -> dict[str, Any]:
        body = {"model": self.model, **sampling_fields(call.params, self.features, self.is_chat_model,
                                                       self._max_tokens_field)}
        return {**body, **self._prompt_fields(prompt, call.node)}

    def _prompt_fields(self, prompt: Prompt, node: str) -> dict[str, Any]:
        if not self.is_chat_model:
            return {"prompt": prompt.text}
        messages = answer_messages(prompt, node, self, self._template.image_token)
        if prompt.turn and prompt.turn[1].strip():  # continuing the open assistant turn (its text is the last message)
            return {"messages": messages, "continue_final_message": True, "add_generation_prompt": False}
        return {"messages": messages}

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        async with self._limit.slot():
            reply = await self.http.post_json(path, body)
        if not isinstance(reply, dict) or "choices" not in reply:
            raise ProgramError(f"{self.http.url(path)} answered without choices: {str(reply)[:200]!r}")
        self.token_usage.add(reply.get("usage"))
        return reply

    def _stream_meta(self, reply_id: Any, usage: dict, finish: str | None, entries: list, tops: list,
                     logprobs: bool) -> dict[str, Any]:
        meta = meta_info({"id": reply_id, "usage": usage}, {"finish_reason": finish}, self.is_chat_model,
                         (entries, tops) if logprobs else None)
        if logprobs:
            meta["completion_tokens"] = len(entries)
        return meta

    # ---- speculation ----------------------------------------------------------------------------------------

    async def _speculative(self, call: GenerateCall) -> Generation:
        """Answer from what an earlier request already wrote, or write ``num_api_spec_tokens`` ahead now (once
        from each start: a speculation that missed is not asked for again)."""
        stops = call.params.stop or ()
        context, text = self._spec_context(call)
        answer = self.speculation.take(context, text, stops)
        if answer is not None:
            return Generation(answer, {"speculated": True, "prompt_tokens": 0, "completion_tokens": 0,
                                       "cached_tokens": 0, "finish_reason": {"type": "stop"}})
        base = "" if self.is_chat_model else call.prompt.text
        if self.speculation.written(context, base) is None:
            reply, choice = await self._write_ahead(call, context, base)
            answer = self.speculation.take(context, text, stops)
            if answer is not None:
                return Generation(answer, {**meta_info(reply, choice, self.is_chat_model, None), "speculated": False})
        if self.is_chat_model and text.strip() and not self.capabilities.continue_assistant:
            raise UnsupportedFeatureError("completion", self.name, node=call.node, detail=(
                "with num_api_spec_tokens, the chat model's answer must contain the assistant turn's text before "
                f"this gen ({text[-40:]!r}); it wrote {self.speculation.written(context, base)[:80]!r}"))
        return await self.generate(replace(call, spec_tokens=None))  # the model wrote something else

    async def _write_ahead(self, call: GenerateCall, context: Hashable, base: str) -> tuple[dict, dict]:
        """One request for ``max(max_tokens, num_api_spec_tokens)`` tokens from ``base`` without stop strings
        (for chat: from the start of the assistant turn), kept in the speculation store."""
        start = replace(call.prompt, turn=("assistant", "")) if self.is_chat_model else call.prompt
        ahead = replace(call, params=replace(call.params, stop=None, max_new_tokens=max(
            call.params.max_new_tokens or 0, call.spec_tokens)))
        reply = await self._post(self._path, self._body(ahead, start))
        (choice,) = by_index(reply, 1)
        written = reply_text(choice, self.is_chat_model)
        self.speculation.keep(context, Speculated(base, written, choice.get("finish_reason") == "stop"))
        return reply, choice

    def _spec_context(self, call: GenerateCall) -> tuple[Hashable, str]:
        """What a speculation is keyed by (the sampling parameters but stop and length, and for chat the
        conversation before the turn) and the text it continues."""
        prompt, sampling = call.prompt, replace(call.params, stop=None, max_new_tokens=None)
        if not self.is_chat_model:
            return sampling, prompt.text
        messages = json.dumps(list(prompt.messages), sort_keys=True, default=str)
        return (sampling, messages), (prompt.turn or ("", ""))[1]

    # ---- select -----------------------------------------------------------------------------------------------

    async def _score(self, prompts: list[str], start: int) -> list[list]:
        """Each prompt's token logprobs after character ``start``, from one echoed completion request."""
        body = {"model": self.model, "prompt": prompts, "max_tokens": 0, "echo": True, "logprobs": 0,
                "temperature": 0}
        reply = await self._post("completions", body)
        return [echoed_entries(c, p, start) for c, p in zip(by_index(reply, len(prompts)), prompts)]

    async def _select_by_generation(self, call: SelectCall) -> ChoicesDecision:
        """The choice the chat model writes when its answer is constrained to the choices."""
        from sglang_dsl.compiler.choices import choices_regex

        body: dict[str, Any] = {"model": self.model, "temperature": call.temperature, "n": 1,
                                self._max_tokens_field: max(len(c) for c in call.choices) + 16,
                                **self._prompt_fields(call.prompt, call.node)}
        if self.capabilities.regex:
            body["regex"] = choices_regex(call.choices)
        else:
            schema = {"type": "object", "properties": {"choice": {"enum": list(call.choices)}},
                      "required": ["choice"], "additionalProperties": False}
            field = "json_schema" if "json_schema" in self.features else "response_format"
            body[field] = json.dumps(schema) if field == "json_schema" else response_format(schema)
        reply = await self._post(self._path, body)
        (choice,) = by_index(reply, 1)
        text = reply_text(choice, chat=True)
        picked = text if self.capabilities.regex else _json_choice(text)
        if picked not in call.choices:
            raise ProgramError(f"the server's constrained answer {text[:80]!r} is none of the choices "
                               f"{list(call.choices)!r} (does it enforce constraints?)")
        return ChoicesDecision(picked, {"method": "constrained generation",
                                        **meta_info(reply, choice, chat=True, logprobs=None)})


def _speculable(call: GenerateCall) -> bool:
    """Speculation serves plain text gens: one sample, no constraint, no logprobs."""
    params = call.params
    return (params.n or 1) == 1 and not (params.regex or params.json_schema or params.dtype or params.grammar
                                         or params.return_logprob)


def _json_choice(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value.get("choice") if isinstance(value, dict) else None
