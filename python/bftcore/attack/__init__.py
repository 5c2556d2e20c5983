"""The attack suite (docs/method.md §3): every attack written against the generator interface, so the
same code attacks a PyTorch model, an ONNX graph or a GGUF file.

    direct            the request through the chat template, greedy
    prefill           the first k tokens of a harmful response forced as the start of the answer
    prefill-sampled   the same, sampled (T = 0.9, top-p 0.6 by default), several samples per prompt
    rank-prefill      adaptive, no reference: at each of the first k steps the attacker forces the
                      most likely token of the model's top-20 that is not a refusal opener (ours:
                      at the first step no token of a refusal phrase, later no first token of
                      one); then greedy
    rap               Rank-Assisted Prefilling (arXiv 2512.05518): the first k tokens of a harmful
                      response forced, then at every step the model's top-1 unless it opens a
                      refusal, else the best of its top-20 that does not (greedy where all do)
    rap-oracle        rap with the record's own harmful continuation: its next token is forced
                      whenever the model ranks it within the top 20; also the mean rank of that
                      token per position bucket (teacher-forced), a measure that does not saturate
    deep-prefill      prefill at depths of dozens to hundreds of tokens (64, 128, 256 by default), and
                      the whole harmful response but its last 16 tokens (`prefill-all-but-16`)
    restart           k harmful tokens, then a refusal, then the record's next step marker
                      ("Step m:"): does the model pick the harmful answer up again?
    many-shot         n earlier turns of compliant harmful exchanges (n = 1, 2, 4), then the
                      request; direct and with k tokens prefilled
    refusal-margin    not an attack: after k harmful tokens, the mean log-prob per token of a
                      refusal minus that of the record's own harmful continuation (PyTorch
                      models), a continuous view beside the rates
    over-refusal      not an attack: the refusal rate per record label, e.g. XSTest's safe prompts
                      against its unsafe contrasts (rows `over-refusal:LABEL`, metric refusal)
    completion        a declarative harmful opening ("... Step 1:") as raw text, no chat template
    decoding-exploit  the worst case over a grid of temperature x top-k x top-p

Each attack gives one rate row per k (the row format of `bftcore.stats`), x successes of n with a
95% Wilson interval, and one `Sample` per generation for auditing. The prefilled or forced text is
the attacker's and is never judged as the model's output.
"""

from bftcore.attack.measures import kl_to_reference, lm_eval, lm_eval_tasks, perplexity
from bftcore.attack.output import (
           CONTINUOUS,
           asr_figure,
           continuous_figure,
           markdown_table,
           plot_asr_vs_k,
           write_results,
)
from bftcore.attack.suite import ATTACKS, STEP_MARKER, AttackConfig, AttackResult, Sample, Suite, refusal_tokens
from bftcore.judge import REFUSAL_OPENINGS

__all__ = ["ATTACKS", "CONTINUOUS", "REFUSAL_OPENINGS", "STEP_MARKER", "AttackConfig", "AttackResult", "Sample", "Suite",
           "asr_figure", "continuous_figure", "kl_to_reference", "lm_eval", "lm_eval_tasks", "markdown_table", "perplexity", "plot_asr_vs_k",
           "refusal_tokens", "write_results"]
