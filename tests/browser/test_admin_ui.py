"""The admin as a reviewer sees it in Chromium: the conversation list's order and its columns at 1280 px."""

from datetime import timedelta

import pytest
from django.utils import timezone

from conversations.models import Conversation

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_conversation_list_is_newest_first_and_fits_1280_pixels(daphne, login, make_user):
    reviewer, session = make_user()
    reviewer.is_staff = reviewer.is_superuser = True
    reviewer.save()
    owner, _ = make_user("a-user-with-a-rather-long-name")
    now = timezone.now()
    titles = [f"conversation {number} " + "with a long title " * 4 for number in range(5)]
    for age, title in enumerate(titles):
        conversation = Conversation.objects.create(owner=owner, title=title, model="dev")
        # updated_at is set on save: back-date it afterwards, the oldest last.
        Conversation.objects.filter(pk=conversation.pk).update(updated_at=now - timedelta(hours=age))
    Conversation.objects.filter(title=titles[2]).update(updated_at=now + timedelta(minutes=1))
    _, context = login(daphne, session=(reviewer, session), viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(daphne.origin + "/admin/conversations/conversation/")
    shown = page.locator("#result_list tbody tr th a").all_inner_texts()
    expected = [titles[2], titles[0], titles[1], titles[3], titles[4]]
    assert [text.split(" with")[0] for text in shown] == [title.split(" with")[0] for title in expected]
    # Every column, the last ones included, is inside the list's box: nothing hidden to scroll sideways to.
    results = page.locator("#changelist .results")
    assert results.evaluate("box => box.scrollWidth <= box.clientWidth"), results.evaluate(
        "box => [box.scrollWidth, box.clientWidth]"
    )
    right = results.evaluate("box => box.getBoundingClientRect().right")
    for column in ("flagged", "updated"):
        box = page.locator(f"#result_list thead th.column-{column}").bounding_box()
        assert box is not None and box["x"] + box["width"] <= right + 1, (column, box, right)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
