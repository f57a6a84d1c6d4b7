from django.apps import AppConfig


class StreamingConfig(AppConfig):
    name = "streaming"

    def ready(self) -> None:
        # Imported here: it imports models, which exist only once the registry is ready.
        from streaming import access

        access.connect_signals()
