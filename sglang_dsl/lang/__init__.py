"""The language: primitives, program states, the interpreter, and process-wide settings.

Modules: `exprs` (what primitives build), `params` (sampling parameters), `primitives` (``gen``, ``select``,
roles, ``image``), `choices` (how ``select`` decides), `function` (``@function``, ``run``), `state` (``s``),
`executor` (running a state's expressions), `stream_meta` (a streamed gen's meta, chunk by chunk), `batch`
(``run_batch``), `roles` (chat turns through the model's template), `loop` (the interpreter's event loop),
`config` (``global_config``, default backend), `errors`."""
