"""Services and selectors against the real database: turns, idempotency, limits, ownership, prompts."""

import functools
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations import selectors, services
from conversations.errors import ConversationBusy, InvalidState, NotFound, TooManyGenerations, TooManyRequests
from conversations.models import Conversation, Message
from conversations.options import GenerationOptions, Rating
from conversations.payloads import conversation_payload

pytestmark = pytest.mark.django_db


@pytest.fixture
def user():
    return get_user_model().objects.create_user(username="alice")


@pytest.fixture
def other():
    return get_user_model().objects.create_user(username="mallory")


def send(user, content="hello", conversation=None, client_id=None, **options):
    return services.message_send(
        user=user,
        client_id=client_id or uuid.uuid4().hex,
        conversation_id=str(conversation.pk) if conversation else None,
        content=content,
        options=GenerationOptions(**options),
    )


def finish(message):
    services.message_finish(message_id=str(message.pk), status="complete", content="answer")


def test_title_is_derived_from_the_first_message():
    assert services.title_from_content("  Short   question ") == "Short question"
    long = services.title_from_content("word " * 40)
    assert len(long) <= services.TITLE_LENGTH + 1
    assert long.endswith("…")
    assert not long[:-1].endswith(" ")


def test_send_creates_conversation_user_message_and_streaming_answer(user):
    turn = send(user, "What is WAL?", model="dev", temperature=0.3, system="Be brief.")
    assert turn.created
    conversation = turn.conversation
    assert (conversation.title, conversation.model, conversation.temperature) == ("What is WAL?", "dev", 0.3)
    assert [(m.seq, m.role, m.status) for m in selectors.conversation_messages(conversation=conversation)] == [
        (1, "user", "complete"),
        (2, "assistant", "streaming"),
    ]
    answer = turn.assistant_message
    assert answer.lease_expires_at is not None
    assert selectors.message_prompt(message=answer) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is WAL?"},
    ]


def test_the_same_client_id_returns_the_first_attempts_rows(user):
    first = send(user, client_id="same")
    again = send(user, client_id="same", content="a different body is ignored")
    assert not again.created
    assert again.user_message is not None
    assert (again.user_message.pk, again.assistant_message.pk) == (first.user_message.pk, first.assistant_message.pk)
    assert Message.objects.count() == 2


def test_client_ids_are_per_user(user, other):
    send(user, client_id="shared")
    assert send(other, client_id="shared").created


def test_busy_conversation_and_concurrency_limit(user, settings):
    settings.CHAT_MAX_CONCURRENT_PER_USER = 2
    first = send(user)
    with pytest.raises(ConversationBusy):
        send(user, conversation=first.conversation)
    send(user)
    with pytest.raises(TooManyGenerations):
        send(user)
    assert Message.objects.filter(status="streaming").count() == 2
    finish(first.assistant_message)
    assert send(user, conversation=first.conversation).created


def test_foreign_ids_are_not_found(user, other):
    turn = send(user)
    finish(turn.assistant_message)
    with pytest.raises(NotFound):
        send(other, conversation=turn.conversation)
    for message_id in (str(turn.assistant_message.pk), str(uuid.uuid4()), "garbage"):
        with pytest.raises(NotFound):
            selectors.message_get_for_user(user=other, message_id=message_id)
        with pytest.raises(NotFound):
            services.message_regenerate(user=other, message_id=message_id, client_id="", options=GenerationOptions())


def test_regenerate_supersedes_only_the_latest_answer(user):
    turn = send(user, "q1")
    finish(turn.assistant_message)
    with pytest.raises(InvalidState):
        services.message_regenerate(
            user=user, message_id=str(turn.user_message.pk), client_id="", options=GenerationOptions()
        )
    regenerated = services.message_regenerate(
        user=user, message_id=str(turn.assistant_message.pk), client_id="r1", options=GenerationOptions()
    )
    old = Message.objects.get(pk=turn.assistant_message.pk)
    assert old.superseded_at is not None
    live = selectors.conversation_messages(conversation=turn.conversation)
    assert [m.pk for m in live] == [turn.user_message.pk, regenerated.assistant_message.pk]
    # The prompt for the new answer leaves the superseded one out.
    assert selectors.message_prompt(message=regenerated.assistant_message) == [{"role": "user", "content": "q1"}]


def test_edit_supersedes_the_message_and_everything_after(user):
    turn = send(user, "q1")
    finish(turn.assistant_message)
    second = send(user, "q2", conversation=turn.conversation)
    finish(second.assistant_message)
    edited = services.message_edit(
        user=user, message_id=str(turn.user_message.pk), content="q1 again", client_id="e1", options=GenerationOptions()
    )
    live = selectors.conversation_messages(conversation=turn.conversation)
    assert [(m.role, m.content) for m in live] == [("user", "q1 again"), ("assistant", "")]
    assert Message.objects.filter(superseded_at__isnull=False).count() == 4
    assert edited.assistant_message.status == "streaming"


def test_checkpoints_save_many_answers_at_once_and_name_those_that_must_stop(user, other, settings):
    settings.CHAT_MAX_CONCURRENT_PER_USER = 10
    running, cancelled, swept = (send(user).assistant_message for _ in range(3))
    deleted = send(other).assistant_message
    services.message_request_cancel(user=user, message_id=str(cancelled.pk))
    Message.objects.filter(pk=swept.pk).update(status="interrupted", content="as swept")
    deleted.conversation.delete()
    texts = {str(message.pk): f"text of {message.pk}" for message in (running, cancelled, swept, deleted)}
    stopped = services.messages_checkpoint(contents=texts)
    assert stopped == {str(cancelled.pk): True, str(swept.pk): False, str(deleted.pk): False}
    running.refresh_from_db()
    assert running.content == texts[str(running.pk)] and running.lease_expires_at > timezone.now()
    assert Message.objects.get(pk=cancelled.pk).content == ""
    assert Message.objects.get(pk=swept.pk).content == "as swept"


def test_checkpoints_of_hundreds_of_answers_are_batched(user, settings):
    settings.CHAT_MAX_CONCURRENT_PER_USER = settings.CHAT_MAX_MESSAGES_PER_MINUTE = 500
    answers = [send(user).assistant_message for _ in range(450)]
    texts = {str(answer.pk): f"answer {number} ✓" for number, answer in enumerate(answers)}
    assert services.messages_checkpoint(contents=texts) == {}
    assert {
        str(pk): content for pk, content in Message.objects.filter(role="assistant").values_list("pk", "content")
    } == texts


@pytest.mark.django_db(transaction=True)
def test_a_retry_racing_its_first_attempt_gets_the_same_rows_not_an_error():
    user = get_user_model().objects.create_user(username="racer")
    first = send(user, "start")
    finish(first.assistant_message)
    start = threading.Barrier(2)

    def attempt():
        start.wait()
        try:
            return send(user, "the same request twice", conversation=first.conversation, client_id="twin")
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        turns = list(pool.map(lambda _: attempt(), range(2)))
    assert sorted(turn.created for turn in turns) == [False, True]
    assert turns[0].assistant_message.pk == turns[1].assistant_message.pk
    assert Message.objects.filter(owner=user, client_id="twin").count() == 1


def test_finish_leaves_a_swept_answer_as_the_sweeper_saved_it(user):
    answer = send(user).assistant_message
    Message.objects.filter(pk=answer.pk).update(status="interrupted", content="checkpoint")
    assert not services.message_finish(message_id=str(answer.pk), status="complete", content="the whole answer")
    answer.refresh_from_db()
    assert (answer.status, answer.content) == ("interrupted", "checkpoint")


def test_rename_delete_and_feedback_are_scoped_to_the_owner(user, other):
    turn = send(user)
    conversation_id = str(turn.conversation.pk)
    with pytest.raises(NotFound):
        services.conversation_rename(user=other, conversation_id=conversation_id, title="mine")
    with pytest.raises(NotFound):
        services.conversation_delete(user=other, conversation_id=conversation_id)
    with pytest.raises(NotFound):
        services.message_set_feedback(user=other, message_id=str(turn.assistant_message.pk), rating=Rating("up"))
    with pytest.raises(InvalidState):
        services.message_set_feedback(user=user, message_id=str(turn.user_message.pk), rating=Rating("up"))
    down = Rating("down")
    assert services.message_set_feedback(user=user, message_id=str(turn.assistant_message.pk), rating=down).feedback
    assert services.conversation_rename(user=user, conversation_id=conversation_id, title="T").title == "T"
    deleted, streaming = services.conversation_delete(user=user, conversation_id=conversation_id)
    assert (deleted, streaming) == (conversation_id, [str(turn.assistant_message.pk)])
    assert not Message.objects.filter(conversation_id=conversation_id).exists()


def test_a_thumbs_down_keeps_its_reason_and_comment_until_the_rating_changes(user):
    answer = str(send(user).assistant_message.pk)
    rated = services.message_set_feedback(
        user=user, message_id=answer, rating=Rating("down", "incorrect", "The date is wrong.")
    )
    assert (rated.feedback, rated.feedback_reason, rated.feedback_comment) == (
        "down",
        "incorrect",
        "The date is wrong.",
    )
    # A thumbs up (or clearing) replaces the whole rating: no stale reason is left behind.
    services.message_set_feedback(user=user, message_id=answer, rating=Rating("up"))
    rated = Message.objects.get(pk=answer)
    assert (rated.feedback, rated.feedback_reason, rated.feedback_comment) == ("up", "", "")


def test_starting_answers_is_limited_per_minute(user, settings):
    settings.CHAT_MAX_MESSAGES_PER_MINUTE = 2
    settings.CHAT_MAX_CONCURRENT_PER_USER = 10
    send(user)
    send(user)
    with pytest.raises(TooManyRequests):
        send(user)
    Message.objects.filter(owner=user).update(created_at=timezone.now() - timedelta(minutes=2))
    assert send(user).created


def statements(action):
    """The SQL statements an action runs, as the database sees them (transaction control included)."""
    with CaptureQueriesContext(connection) as queries:
        result = action()
    return result, [query["sql"] for query in queries.captured_queries]


@pytest.mark.django_db(transaction=True)
def test_a_new_conversation_opens_in_at_most_five_statements():
    user = get_user_model().objects.create_user(username="opener")
    _, sql = statements(lambda: send(user))
    assert len(sql) <= 5, sql


@pytest.mark.django_db(transaction=True)
def test_a_follow_up_turn_costs_the_same_statements_at_any_history_length(settings):
    settings.CHAT_MAX_MESSAGES_PER_MINUTE = 100
    user = get_user_model().objects.create_user(username="talker")
    turn = send(user, "turn 1")
    counts = {}
    for number in range(2, 31):
        finish(turn.assistant_message)
        turn, sql = statements(functools.partial(send, user, f"turn {number}", conversation=turn.conversation))
        counts[number] = len(sql)
    assert len(set(counts.values())) == 1, counts
    assert counts[30] <= 7, counts
    prompt = turn.prompt or []
    asked = [message["content"] for message in prompt if message["role"] == "user"]
    assert asked == [f"turn {number}" for number in range(1, 31)]


def test_pinned_conversations_come_first_latest_pinned_first_and_pinning_is_not_activity(user, other, settings):
    settings.CHAT_MAX_CONCURRENT_PER_USER = 10
    older, middle, _ = (send(user, content=name).conversation for name in ("older", "middle", "newest"))
    before = Conversation.objects.get(pk=older.pk).updated_at
    services.conversation_pin(user=user, conversation_id=str(older.pk), pinned=True)
    services.conversation_pin(user=user, conversation_id=str(middle.pk), pinned=True)
    page, _ = selectors.conversation_list_for_user(user=user)
    assert [conversation.title for conversation, _ in page] == ["middle", "older", "newest"]
    assert Conversation.objects.get(pk=older.pk).updated_at == before
    assert conversation_payload(Conversation.objects.get(pk=older.pk))["pinned"] is True
    services.conversation_pin(user=user, conversation_id=str(middle.pk), pinned=False)
    page, _ = selectors.conversation_list_for_user(user=user)
    assert [conversation.title for conversation, _ in page] == ["older", "newest", "middle"]
    with pytest.raises(NotFound):
        services.conversation_pin(user=other, conversation_id=str(older.pk), pinned=False)
    # The REST update with only `pinned` is no more activity than the socket's pin.
    services.conversation_update(
        user=user, conversation_id=str(middle.pk), title=None, options=GenerationOptions(), pinned=True
    )
    pinned = Conversation.objects.get(pk=middle.pk)
    assert pinned.pinned_at is not None and pinned.updated_at == middle.updated_at
