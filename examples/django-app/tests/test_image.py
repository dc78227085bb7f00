"""The example's own integration test: its real image, built and run through pybuild's
pytest plugin (installed with pybuild; fixtures pybuild_image and pybuild_container).

    sudo python3 -m pytest examples/django-app/tests

The image is built once per session with the store's cache (a rebuild after a code edit
reruns only the steps after `COPY . .`), started on the default bridge with port 8000
published on 127.0.0.1, and removed when the test ends.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

APP = Path(__file__).resolve().parents[1]
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # for pip behind a TLS-inspecting proxy


def test_home_page_lists_the_seeded_note(pybuild_image, pybuild_container) -> None:  # type: ignore[no-untyped-def]
    secrets = {"pip-ca": str(CA_BUNDLE)} if CA_BUNDLE.is_file() else None
    img = pybuild_image(APP, secrets=secrets)
    web = pybuild_container(img, ports=[8000], wait=90)
    with urllib.request.urlopen(web.url(8000, "/healthz"), timeout=10) as resp:
        assert resp.read() == b"ok"
    with urllib.request.urlopen(web.url(8000, "/"), timeout=10) as resp:
        page = resp.read().decode()
    assert "Hello from pybuild" in page
