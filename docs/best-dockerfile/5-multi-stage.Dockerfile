# Step 5: build wheels in one stage (compilers would live there), install them in a clean one.
FROM localhost/debian-python:bookworm AS wheels
RUN apt-get update && apt-get install -y --no-install-recommends gcc \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/build
WORKDIR /src
COPY requirements.txt .
RUN --mount=type=secret,id=pip-ca,required=false \
    --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    /opt/build/bin/pip wheel --wheel-dir /wheels -r requirements.txt

FROM localhost/debian-python:bookworm AS runtime
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    python3 -m venv /opt/venv \
    && pip install --no-cache-dir --no-index /wheels/*.whl
WORKDIR /app
COPY . .
RUN python manage.py collectstatic --noinput
CMD gunicorn --bind 0.0.0.0:8000 mysite.wsgi
