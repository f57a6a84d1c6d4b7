"""The prompt budget: long conversations send the system prompt and the latest turns that fit the model's
context, the answer records how many earlier messages were left out, and the generation sends the same."""

import uuid

import pytest
from django.contrib.auth import get_user_model

from conversations import budget, selectors, services
from conversations.options import GenerationOptions

pytestmark = pytest.mark.django_db


def turns(count: int, size: int) -> list[dict[str, str]]:
    return [
        {"role": "user" if n % 2 == 0 else "assistant", "content": f"{n:03d}" + "x" * (size - 3)} for n in range(count)
    ]


@pytest.fixture
def small_context(settings):
    settings.LLM_CONTEXT_TOKENS = 1000
    settings.LLM_MODEL_CONTEXT = {"roomy": 100_000}
    settings.CHAT_ANSWER_RESERVE_TOKENS = 200  # so 800 tokens for the prompt


def test_a_short_prompt_is_sent_whole(small_context):
    prompt = [{"role": "system", "content": "Be brief."}, *turns(5, 40)]
    assert budget.fit(prompt, model="dev", max_tokens=None) == budget.Fitted(prompt, 0)


def test_the_oldest_turns_are_left_out_and_what_remains_starts_with_a_user_turn(small_context):
    system = {"role": "system", "content": "Be brief."}
    history = turns(41, 400)  # ~104 tokens each: about 7 fit in 800
    fitted = budget.fit([system, *history], model="dev", max_tokens=None)
    kept = fitted.messages[1:]
    assert fitted.messages[0] == system
    assert kept == history[fitted.left_out :]
    assert kept[-1] == history[-1] and kept[0]["role"] == "user"
    assert 4 <= len(kept) <= 7
    estimate = sum(budget.estimate_tokens(m["content"]) for m in fitted.messages)
    assert estimate <= 800
    # A model with a larger context keeps it all; a larger answer reserve keeps less.
    assert budget.fit([system, *history], model="roomy", max_tokens=None).left_out == 0
    assert budget.fit([system, *history], model="dev", max_tokens=600).left_out > fitted.left_out


def test_the_latest_message_is_always_sent_even_alone(small_context):
    history = [*turns(2, 40), {"role": "user", "content": "y" * 10_000}]
    fitted = budget.fit(history, model="dev", max_tokens=None)
    assert fitted.messages == history[-1:] and fitted.left_out == 2


def test_scripts_with_more_tokens_per_character_count_more():
    assert budget.estimate_tokens("日本語のテキスト") > budget.estimate_tokens("japanese")


def send(user, content, conversation=None):
    return services.message_send(
        user=user,
        client_id=uuid.uuid4().hex,
        conversation_id=str(conversation.pk) if conversation else None,
        content=content,
        options=GenerationOptions(),
    )


def test_a_long_conversation_sends_what_fits_and_the_generation_sends_the_same(small_context, settings):
    settings.CHAT_MAX_MESSAGES_PER_MINUTE = 1000
    user = get_user_model().objects.create_user(username="talker")
    turn = send(user, "first " + "w" * 400)
    for number in range(2, 16):
        services.message_finish(message_id=str(turn.assistant_message.pk), status="complete", content="a" * 400)
        turn = send(user, f"turn {number} " + "w" * 400, conversation=turn.conversation)
    answer = turn.assistant_message
    answer.refresh_from_db()
    assert answer.context_left_out > 0
    assert turn.prompt is not None and turn.prompt[-1]["content"].startswith("turn 15 ")
    assert turn.prompt[0]["role"] == "user"
    # What the generation reads back from the database is exactly what was fitted at the start.
    assert selectors.message_prompt(message=answer) == turn.prompt
    total = 2 * 15 - 1  # every message before the answer
    assert len(turn.prompt) == total - answer.context_left_out
