"""The one model of the demo."""
from django.db import models


class Note(models.Model):
    """A titled line of text, newest first."""

    title = models.CharField(max_length=200)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return self.title
