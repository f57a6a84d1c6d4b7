"""Sharing a conversation: a read-only snapshot at an unguessable link, for anyone, until its owner stops it;
and the owner's own export of a conversation."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from conversations import services
from conversations.errors import InvalidState, NotFound
from conversations.models import Message, SharedConversation
from conversations.options import GenerationOptions

pytestmark = pytest.mark.django_db


def conversation_with_versions(user):
    """A conversation whose answer was regenerated once: the old version must not be shared or exported."""
    turn = services.message_send(
        user=user, client_id="q1", conversation_id=None, content="What is **2+2**?", options=GenerationOptions()
    )
    services.message_finish(message_id=str(turn.assistant_message.pk), status="complete", content="Five, surely.")
    again = services.message_regenerate(
        user=user, message_id=str(turn.assistant_message.pk), client_id="q2", options=GenerationOptions()
    )
    services.message_finish(
        message_id=str(again.assistant_message.pk), status="complete", content="**4**, and $x^2$ is math."
    )
    conversation = again.conversation
    conversation.title = "Sums"
    conversation.reviewer_notes = "a note only reviewers see"
    conversation.save()
    return conversation


@pytest.fixture
def owner():
    return get_user_model().objects.create_user(username="sharer")


def test_a_shared_link_shows_the_transcript_as_it_was_to_anyone_and_stops_when_revoked(owner, client):
    conversation = conversation_with_versions(owner)
    share = services.share_create(user=owner, conversation_id=str(conversation.pk))
    assert len(share.token) >= 32
    # What is said after sharing is not part of it.
    services.message_send(
        user=owner,
        client_id="q3",
        conversation_id=str(conversation.pk),
        content="a later question",
        options=GenerationOptions(),
    )
    response = Client().get(f"/s/{share.token}/")  # nobody logged in
    assert response.status_code == 200
    page = response.content.decode()
    assert "<strong>4</strong>, and <math" in page
    assert "What is **2+2**?" in page, "the user's text is shown as text"
    assert "Five, surely." not in page, "an earlier version is not shared"
    assert "a later question" not in page and "a note only reviewers see" not in page
    assert '<meta name="robots" content="noindex, nofollow">' in page
    assert response["X-Robots-Tag"] == "noindex, nofollow" and response["Referrer-Policy"] == "no-referrer"
    assert 'aria-label="You"' in page and 'aria-label="Assistant"' in page

    services.share_revoke(user=owner, share_id=str(share.pk))
    assert Client().get(f"/s/{share.token}/").status_code == 404
    assert Client().get("/s/not-a-token/").status_code == 404


def test_only_the_owner_shares_or_stops_sharing_and_not_while_an_answer_is_written(owner):
    other = get_user_model().objects.create_user(username="other")
    conversation = conversation_with_versions(owner)
    with pytest.raises(NotFound):
        services.share_create(user=other, conversation_id=str(conversation.pk))
    share = services.share_create(user=owner, conversation_id=str(conversation.pk))
    with pytest.raises(NotFound):
        services.share_revoke(user=other, share_id=str(share.pk))
    assert SharedConversation.objects.filter(pk=share.pk).exists()
    services.message_send(
        user=owner, client_id="q4", conversation_id=str(conversation.pk), content="more", options=GenerationOptions()
    )
    with pytest.raises(InvalidState):
        services.share_create(user=owner, conversation_id=str(conversation.pk))


def test_the_owner_exports_what_they_see_and_nothing_of_the_review(owner):
    conversation = conversation_with_versions(owner)
    client = Client()
    client.force_login(owner)
    markdown = client.get(f"/c/{conversation.pk}/export.md")
    assert markdown.status_code == 200
    assert markdown["Content-Disposition"] == 'attachment; filename="sums.md"'
    text = markdown.content.decode()
    assert "**4**, and $x^2$ is math." in text and "Five, surely." not in text
    assert "reviewer" not in text.lower() and "Flagged" not in text
    exported = json.loads(client.get(f"/c/{conversation.pk}/export.json").content)
    [record] = exported["conversations"]
    assert "reviewer_notes" not in record and "flagged" not in record
    assert [message["role"] for message in record["messages"]] == ["user", "assistant"]
    assert client.get(f"/c/{conversation.pk}/export.exe").status_code == 404
    stranger = Client()
    stranger.force_login(get_user_model().objects.create_user(username="stranger"))
    assert stranger.get(f"/c/{conversation.pk}/export.md").status_code == 404
    assert Message.objects.filter(conversation=conversation).count() == 3
