from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


@login_required
def chat_page(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "chat/index.html",
        {"models": settings.LLM_MODELS, "simulator": settings.LLM_SIMULATOR},
    )
