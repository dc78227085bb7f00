"""The notes app."""
from django.apps import AppConfig


class NotesConfig(AppConfig):
    """Registers the app under its module name."""

    name = "notes"
