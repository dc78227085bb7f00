# Step 1: the Dockerfile everyone writes first.
FROM localhost/debian-python:bookworm
WORKDIR /app
COPY . .
RUN apt-get update && apt-get install -y gcc
RUN --mount=type=secret,id=pip-ca,required=false \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    python3 -m venv /opt/venv && /opt/venv/bin/pip install -r requirements.txt
RUN /opt/venv/bin/python manage.py collectstatic --noinput
CMD /opt/venv/bin/gunicorn --bind 0.0.0.0:8000 mysite.wsgi
