"""The choices methods of ``select``, as the language names them (SGLang's ``sglang.lang.choices``); they are
defined in `sglang_dsl.compiler.choice_methods`, where the runtime can use them too."""

from sglang_dsl.compiler.choice_methods import (  # noqa: F401  (re-exported)
    METHODS_BY_NAME, ChoicesDecision, ChoicesSamplingMethod, GreedyTokenSelection, LogprobEntry,
    TokenLengthNormalized, UnconditionalLikelihoodNormalized, decide, greedy_logprob_matrix,
    greedy_token_selection, mean_logprob, token_length_normalized, unconditional_likelihood_normalized,
)
