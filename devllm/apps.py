from django.apps import AppConfig


class DevLLMConfig(AppConfig):
    name = "devllm"
    verbose_name = "Dev upstream (simulator)"
