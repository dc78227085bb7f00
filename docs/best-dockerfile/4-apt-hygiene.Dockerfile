# Step 4: no recommended packages; the apt lists and the downloaded .deb files deleted in the
# RUN that fetched them.
FROM localhost/debian-python:bookworm
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends gcc \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY requirements.txt .
RUN --mount=type=secret,id=pip-ca,required=false \
    --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    python3 -m venv /opt/venv && /opt/venv/bin/pip install -r requirements.txt
COPY . .
RUN /opt/venv/bin/python manage.py collectstatic --noinput
CMD /opt/venv/bin/gunicorn --bind 0.0.0.0:8000 mysite.wsgi
