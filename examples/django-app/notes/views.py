"""Views: the page that lists notes and a health probe for HEALTHCHECK and orchestrators."""
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from .models import Note


def index(request: HttpRequest) -> HttpResponse:
    """Render every note; proves the database, templates and static files all work."""
    return render(request, "notes/index.html", {"notes": Note.objects.all()})


def healthz(request: HttpRequest) -> HttpResponse:
    """Answer 200 "ok" without touching the database, so a slow query never kills the container."""
    return HttpResponse("ok", content_type="text/plain")
