"""What of a conversation fits the model's context: the prompt budget.

Every turn resends the history, so without a budget a long conversation costs more each turn and at last
exceeds the model's context (a hard failure). The prompt sent upstream keeps the system prompt and the latest
turns that fit in the model's context less what the answer may use; older turns are left out, and the answer
records how many (clients show it). Tokens are estimated, not counted (no tokenizer is shared by every
OpenAI-compatible model): a quarter token per ASCII character, one per other character, four per message;
generous for English and for scripts with several tokens per character alike.
"""

from dataclasses import dataclass
from typing import Any

from django.conf import settings

MESSAGE_OVERHEAD = 4  # the role and the separators around each message


def context_tokens(model: str) -> int:
    """The context size of a model (LLM_MODEL_CONTEXT, else LLM_CONTEXT_TOKENS)."""
    return int(settings.LLM_MODEL_CONTEXT.get(model, settings.LLM_CONTEXT_TOKENS))


def answer_reserve(model: str, max_tokens: int | None) -> int:
    """How much of the context is kept for the answer: its max_tokens, or CHAT_ANSWER_RESERVE_TOKENS (at most a
    quarter of the context)."""
    if max_tokens is not None:
        return max_tokens
    return min(settings.CHAT_ANSWER_RESERVE_TOKENS, context_tokens(model) // 4)


def estimate_tokens(text: str) -> int:
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    return (len(text) - non_ascii + 3) // 4 + non_ascii + MESSAGE_OVERHEAD


@dataclass(frozen=True)
class Fitted:
    messages: list[dict[str, Any]]
    left_out: int  # how many earlier messages of the history were left out


def fit(prompt: list[dict[str, Any]], *, model: str, max_tokens: int | None) -> Fitted:
    """The prompt within the model's budget: the system prompt (if first) and the last message always, then as
    many of the latest turns as fit, whole. A history cut just before an answer also leaves that answer out, so
    that what the model sees starts with a user turn."""
    system = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
    history = prompt[len(system) :]
    if len(history) <= 1:
        return Fitted(prompt, 0)
    budget = context_tokens(model) - answer_reserve(model, max_tokens)
    used = sum(estimate_tokens(str(message["content"] or "")) for message in [*system, history[-1]])
    start = len(history) - 1
    while start > 0:
        cost = estimate_tokens(str(history[start - 1]["content"] or ""))
        if used + cost > budget:
            break
        used += cost
        start -= 1
    while 0 < start < len(history) - 1 and history[start]["role"] == "assistant":
        start += 1
    return Fitted([*system, *history[start:]], start)


def without_left_out(prompt: list[dict[str, Any]], left_out: int) -> list[dict[str, Any]]:
    """The prompt of an answer as it was first sent: the same `left_out` earliest history messages dropped."""
    if not left_out:
        return prompt
    system = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
    return [*system, *prompt[len(system) + left_out :]]
