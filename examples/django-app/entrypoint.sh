#!/bin/sh
# Container entry: bring the database schema (and the seed note) up to date, then replace
# this shell with the real server so it is PID 1 and receives SIGTERM from `docker stop`.
set -eu
python manage.py migrate --noinput
exec "$@"
