"""The Django example (examples/django-app): built by pybuild, checked against real Docker.

`make demo` promises a fresh machine a running Django site built by pybuild, so these tests
build the example's real Dockerfile (Debian base from the mirror, wheels from PyPI) and check
what users see: the page with its seeded row, static files, /healthz, the image config and
filesystem next to what `docker build` makes of the same Dockerfile, and the cache layout
that keeps code edits cheap. Everything heavy is module-scoped and built once.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from container_fixtures import Netns
from conftest import REPO, Pybuild, require_build_tools
from engines import Docker, docker_engine, free_port

EXAMPLE = REPO / "examples" / "django-app"
BASE_REF = "localhost/debian-python:bookworm"
# Shared with demo.sh, so the ~40 s mmdebstrap run happens once per machine.
BASE_CACHE = Path(os.environ.get("PYBUILD_DEMO_CACHE", "/var/cache/pybuild-demo"))
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
SEED = "Hello from pybuild"


def secret_args() -> list[str]:
    """The host's CA bundle as the optional pip-ca secret, as demo.sh passes it."""
    return ["--secret", f"id=pip-ca,src={CA_BUNDLE}"] if CA_BUNDLE.is_file() else []


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str, str]:
    """(status, content type, body) of a GET; HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode(errors="replace")


def wait_for_http(url: str, timeout: float = 90.0) -> None:
    """Poll until `url` answers at all (migrations run before gunicorn listens)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            http_get(url, timeout=2)
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout:.0f}s")


def port_is_free(port: int) -> bool:
    """True when nothing accepts connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def check_site(base_url: str) -> None:
    """The page lists the seeded note and links a hashed stylesheet that is served."""
    status, ctype, body = http_get(base_url + "/healthz")
    assert (status, body) == (200, "ok") and ctype.startswith("text/plain")
    status, ctype, body = http_get(base_url + "/")
    assert status == 200 and ctype.startswith("text/html"), body[:500]
    assert body.count(SEED) == 1, body
    css = re.search(r'href="(/static/notes/style\.[0-9a-f]{12}\.css)"', body)
    assert css, f"no hashed stylesheet link (collectstatic/whitenoise not wired): {body}"
    status, ctype, text = http_get(base_url + css.group(1))
    assert status == 200 and ctype.startswith("text/css") and "font-family" in text
    assert http_get(base_url + "/no-such-page")[0] == 404


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example plus the junk a developer's checkout has, for .dockerignore."""
    ctx = tmp_path_factory.mktemp("django") / "ctx"
    shutil.copytree(EXAMPLE, ctx, ignore=shutil.ignore_patterns("__pycache__"))
    (ctx / ".git").mkdir()
    (ctx / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (ctx / "db.sqlite3").write_bytes(b"SQLite format 3\x00 local dev data")
    (ctx / "notes" / "__pycache__").mkdir()
    (ctx / "notes" / "__pycache__" / "views.cpython-311.pyc").write_bytes(b"\x00" * 16)
    return ctx


@pytest.fixture(scope="module")
def base_tar() -> Path:
    """The Debian+Python rootfs tarball, made by the example's own base-image.sh if missing."""
    require_build_tools()
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (apt-get install mmdebstrap)")
    tar = BASE_CACHE / "debian-python-bookworm.tar"
    if not tar.is_file():
        BASE_CACHE.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([str(EXAMPLE / "base-image.sh"), str(tar)], capture_output=True,
                              text=True, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"cannot make the Debian base (mirror unreachable?): {proc.stderr[-800:]}")
    return tar


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, base_tar: Path, context: Path) -> Pybuild:
    """A store with the base imported and the example built as `django-test`."""
    pb = Pybuild(tmp_path_factory.mktemp("djstore") / "store")
    pb("import", str(base_tar), BASE_REF)
    pb("build", "-t", "django-test", *secret_args(), str(context), timeout=900)
    return pb


@pytest.fixture(scope="module")
def docker(built: Pybuild, base_tar: Path, context: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docker]:
    """A private Docker engine holding pybuild's image (`pb-django`) and its own build of
    the same Dockerfile and context (`ref-django`)."""
    with docker_engine() as d:
        archive = tmp_path_factory.mktemp("djsave") / "django.tar"
        built("save", "-o", str(archive), "django-test")
        d("load", "-i", str(archive))
        d("tag", "django-test:latest", "pb-django")
        d("import", str(base_tar), BASE_REF)
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        proc = subprocess.run(["/usr/bin/docker", "-H", d.host, "build", "--network=host",
                               "-q", "-t", "ref-django", *secret_args(), str(context)],
                              capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, f"docker build failed:\n{proc.stdout}\n{proc.stderr}"
        yield d


def test_plan_has_wheels_and_runtime_stages(tmp_path: Path) -> None:
    """The frontend reads the Dockerfile without a daemon or root: two stages, in order."""
    out = Pybuild(tmp_path / "store")("build", "--call", "outline", str(EXAMPLE)).stdout
    assert "stages needed: wheels, runtime" in out
    assert "RUN --mount=type=secret,id=pip-ca,required=false" in out
    assert "RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels" in out


def test_image_config_matches_docker(docker: Docker) -> None:
    """Same Dockerfile, same runtime config as BuildKit's, and the values the example promises."""
    keys = ("User", "Env", "Cmd", "Entrypoint", "ExposedPorts", "Healthcheck", "Labels",
            "WorkingDir", "Volumes", "StopSignal")
    configs = {}
    for name in ("pb-django", "ref-django"):
        cfg = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", name).stdout)
        configs[name] = {k: cfg.get(k) for k in keys}
    assert configs["pb-django"] == configs["ref-django"]
    cfg = configs["pb-django"]
    assert cfg["User"] == "10001:10001"
    assert cfg["ExposedPorts"] == {"8000/tcp": {}}
    assert cfg["Entrypoint"] == ["/app/entrypoint.sh"]
    assert cfg["Cmd"][0] == "gunicorn" and "0.0.0.0:8000" in cfg["Cmd"]
    assert cfg["Healthcheck"]["Test"][:2] == ["CMD", "python"]
    assert set(cfg["Labels"]) == {f"org.opencontainers.image.{k}"
                                  for k in ("title", "description", "source", "licenses")}


def _tree(docker: Docker, image: str) -> list[str]:
    """Every path of the image's root filesystem with type, mode, owner and file size."""
    script = ("find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /etc/hostname"
              " -o -path /etc/hosts -o -path /etc/resolv.conf -o -path /.dockerenv \\) -prune"
              " -o -type f -printf '%p f %m %U:%G %s\\n'"
              " -o -printf '%p %y %m %U:%G %l\\n'")
    out = docker("run", "--rm", "--network=host", "--user", "0", "--entrypoint", "sh", image,
                 "-c", script).stdout
    return sorted(out.splitlines())


def test_filesystem_matches_docker(docker: Docker) -> None:
    """Every file, directory and link, with modes and owners, as `docker build` makes them."""
    pb, ref = _tree(docker, "pb-django"), _tree(docker, "ref-django")
    only_pb, only_ref = sorted(set(pb) - set(ref)), sorted(set(ref) - set(pb))
    assert (only_pb[:40], only_ref[:40]) == ([], [])
    paths = {line.split(" ", 1)[0] for line in pb}
    assert {"/app/manage.py", "/app/staticfiles/staticfiles.json", "/opt/venv/bin/gunicorn",
            "/app/data"} <= paths


def test_dockerignore_and_build_mounts_leave_no_trace(built: Pybuild, tmp_path: Path) -> None:
    """No checkout junk in /app; the secret, the pip cache and the wheels mount never reach
    a layer (they are mounts of the RUN step, not files of the image)."""
    archive = tmp_path / "django.tar"
    built("save", "-o", str(archive), "django-test")
    names: list[str] = []
    secret_bytes = CA_BUNDLE.read_bytes() if CA_BUNDLE.is_file() else None
    with tarfile.open(archive) as outer:
        for member in outer.getmembers():
            if not member.name.endswith("layer.tar"):
                continue
            blob = outer.extractfile(member)
            assert blob is not None
            with tarfile.open(fileobj=io.BytesIO(blob.read())) as layer:
                for entry in layer.getmembers():
                    names.append(entry.name)
                    if secret_bytes and entry.isfile() and entry.size == len(secret_bytes):
                        data = layer.extractfile(entry)
                        assert data is None or data.read() != secret_bytes, entry.name
    app = [n for n in names if n.startswith("app/")]
    assert "app/manage.py" in app and "app/notes/migrations/0002_seed_hello.py" in app
    for junk in ("app/.git", "app/db.sqlite3", "app/Dockerfile", "app/demo.sh", "app/README.md"):
        assert not any(n == junk or n.startswith(junk + "/") for n in app), junk
    assert not [n for n in app if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("run/secrets/", "root/.cache/pip/"))]
    assert not [n for n in names if n.startswith("wheels/")]


def test_site_serves_under_docker(docker: Docker) -> None:
    """pybuild's image in Docker: migrations + seed on start, page, static files, /healthz;
    a restart migrates again without seeding twice."""
    port = free_port()
    cid = docker("run", "-d", "--network=host", "pb-django", "gunicorn", "--bind",
                 f"127.0.0.1:{port}", "--workers", "1", "mysite.wsgi").stdout.strip()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(base + "/healthz")
        check_site(base)
        docker("restart", "-t", "5", cid)
        wait_for_http(base + "/healthz")
        check_site(base)
        assert docker("exec", cid, "id", "-u").stdout.strip() == "10001"
        denied = docker("exec", cid, "touch", "/app/manage.py", check=False)
        assert denied.returncode != 0, "the app user can modify its own code"
    finally:
        docker("rm", "-f", cid, check=False)


def test_healthcheck_turns_healthy(docker: Docker) -> None:
    """The image's HEALTHCHECK (Python urllib, no curl) probes :8000 and reports healthy."""
    if not port_is_free(8000):
        pytest.skip("127.0.0.1:8000 is in use (the demo?); the HEALTHCHECK probes that port")
    cid = docker("run", "-d", "--network=host", "pb-django").stdout.strip()
    try:
        deadline = time.monotonic() + 90
        status = ""
        while time.monotonic() < deadline:
            status = docker("inspect", "-f", "{{.State.Health.Status}}", cid).stdout.strip()
            if status in ("healthy", "unhealthy"):
                break
            time.sleep(1)
        assert status == "healthy", docker("logs", cid, check=False).stderr[-2000:]
    finally:
        docker("rm", "-f", cid, check=False)


def _has_run_command(pb: Pybuild) -> bool:
    """`pybuild run` is written in parallel with this example; skip until it exists."""
    listing = pb("--help").stdout
    return re.search(r"^\s+run\s", listing, re.M) is not None


def test_site_serves_under_pybuild_run(built: Pybuild) -> None:
    """What demo.sh does, on a free port: `pybuild run -d`, then the site answers."""
    if not _has_run_command(built):
        pytest.skip("this pybuild has no `run` command yet")
    port = free_port()
    name = f"django-test-{port}"
    built("run", "-d", "--name", name, "--network", "host", "django-test", "gunicorn",
          "--bind", f"127.0.0.1:{port}", "--workers", "1", "mysite.wsgi")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz")
        check_site(f"http://127.0.0.1:{port}")
        built("stop", name)
        assert "Exited" in built("ps", "-a").stdout
        built("rm", name)
        assert name not in built("ps", "-a").stdout
    finally:
        built("rm", "-f", name, check=False)


def test_site_on_the_bridge_with_a_published_port(built: Pybuild, netns: Netns) -> None:
    """What `make demo` runs: the default bridge, -p 127.0.0.1:8000:8000, the image's own
    HEALTHCHECK probed; inside a namespace of the test's, as every network test."""
    def pb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*netns.prefix, sys.executable, "-m", "pybuild", "--root",
                               str(built.root), *args], capture_output=True, text=True,
                              check=True, cwd=REPO, timeout=120)

    pb("run", "-d", "--name", "demo", "-p", "127.0.0.1:8000:8000", "django-test")
    try:
        deadline = time.monotonic() + 60
        while netns.fetch("http://127.0.0.1:8000/healthz") != "ok":
            assert time.monotonic() < deadline, "the published port did not answer"
            time.sleep(0.5)
        assert "Hello from pybuild" in (netns.fetch("http://127.0.0.1:8000/") or "")
        assert "127.0.0.1:8000->8000/tcp" in pb("ps").stdout
        assert "--dport 8000 -j DNAT --to-destination 10.88.0.2:8000" in netns.iptables()
        # HEALTHCHECK --interval=15s --start-period=20s: healthy after the first probe
        while "(healthy)" not in pb("ps").stdout:
            assert time.monotonic() < deadline + 30, pb("inspect", "demo").stdout
            time.sleep(1)
    finally:
        pb("rm", "-f", "demo")
    assert netns.link_names() == ["lo"]


def _steps(plain_output: str) -> dict[str, bool]:
    """Step title -> whether it was a cache hit, from `--progress=plain` output."""
    titles: dict[str, str] = {}
    cached: set[str] = set()
    for line in plain_output.splitlines():
        m = re.match(r"#(\d+) (\[.*)", line)
        if m:
            titles.setdefault(m.group(1), m.group(2))
        m = re.match(r"#(\d+) CACHED", line)
        if m:
            cached.add(m.group(1))
    return {title: num in cached for num, title in titles.items()}


def test_template_edit_keeps_dependency_layers_cached(built: Pybuild, context: Path,
                                                      tmp_path: Path) -> None:
    """requirements.txt is copied before the source: a template edit rebuilds only the
    source COPY and collectstatic, never the wheels or the venv. (BuildKit lists the wheels
    steps as CACHED; a builder may also skip them, as the venv step's hit does not need them.)"""
    edited = tmp_path / "ctx"
    shutil.copytree(context, edited)
    template = edited / "notes" / "templates" / "notes" / "index.html"
    template.write_text(template.read_text().replace("<h1>Notes</h1>", "<h1>Notes!</h1>"))
    proc = built("build", "--progress=plain", "-t", "django-edit", *secret_args(), str(edited))
    steps = _steps(proc.stdout + proc.stderr)
    hits = {title for title, hit in steps.items() if hit}
    misses = {title for title, hit in steps.items() if not hit and "FROM" not in title}
    assert any("pip install" in t for t in hits), steps
    assert any("useradd" in t for t in hits), steps
    assert {" ".join(t.split("] ", 1)[1].split()) for t in misses} == {
        "COPY . .",
        "RUN python manage.py collectstatic --noinput && mkdir -p /app/data "
        "&& chown app:app /app/data"}, steps


def test_unchanged_rebuild_gives_the_same_image(built: Pybuild, context: Path) -> None:
    """Like `docker build`, rebuilding an unchanged context is all cache hits and yields the
    very same image ID, so `make demo` run twice does not mint a new image."""
    first = built("build", "-q", "-t", "django-test", *secret_args(), str(context)).stdout.strip()
    second = built("build", "-q", "-t", "django-test", *secret_args(), str(context)).stdout.strip()
    assert first.startswith("sha256:") and first == second


def test_demo_script_runs_twice(tmp_path: Path, base_tar: Path, netns: Netns) -> None:
    """`make demo` end to end, against a private store: serves on 127.0.0.1:8000 through the
    default bridge, and a second run rebuilds from cache and replaces the container.

    The script runs inside the test's network namespace (its bridge and rules live and
    die there). That namespace has no way out, so the image is built here first, where
    pip can reach its index: the script's own build is then all cache hits.
    """
    pb = Pybuild(tmp_path / "store")
    if not _has_run_command(pb):
        pytest.skip("this pybuild has no `run` command yet")
    pb("import", str(base_tar), BASE_REF)
    pb("build", "-q", "-t", "django-app", *secret_args(), str(EXAMPLE))
    env = {**os.environ, "PYBUILD_ROOT": str(pb.root), "PYBUILD_DEMO_CACHE": str(base_tar.parent),
           "PYBUILD_PROGRESS": "plain", "PYBUILD_DEMO_CHECKOUT": "1"}
    try:
        for _ in range(2):
            proc = subprocess.run([*netns.prefix, "bash", str(EXAMPLE / "demo.sh")], cwd=REPO,
                                  env=env, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            assert SEED in proc.stdout
            assert "127.0.0.1:8000->8000/tcp" in proc.stdout  # its `pybuild ps`
        assert "already imported" in proc.stdout
        assert "0 cached" not in proc.stdout
        page = netns.fetch("http://127.0.0.1:8000/") or ""
        assert page.count(SEED) == 1 and re.search(r'/static/notes/style\.[0-9a-f]{12}\.css', page)
        assert "--to-destination 10.88.0." in netns.iptables()
    finally:
        subprocess.run([*netns.prefix, sys.executable, "-m", "pybuild", "--root", str(pb.root),
                        "rm", "-f", "django-app"], cwd=REPO, capture_output=True, check=False)
    assert netns.link_names() == ["lo"]


def test_pushed_to_a_registry_and_run_by_docker(built: Pybuild, docker: Docker) -> None:
    """`pybuild push` to a local registry; Docker pulls that reference and runs the site."""
    from engines import registry_server

    with registry_server() as addr:
        built("push", "django-test", f"{addr}/examples/django:1")
        docker("pull", f"{addr}/examples/django:1")
        port = free_port()
        cid = docker("run", "-d", "--network=host", f"{addr}/examples/django:1", "gunicorn",
                     "--bind", f"127.0.0.1:{port}", "--workers", "1",
                     "mysite.wsgi").stdout.strip()
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz")
            check_site(f"http://127.0.0.1:{port}")
        finally:
            docker("rm", "-f", cid, check=False)


def test_sbom_lists_django_gunicorn_and_debian_python(built: Pybuild, context: Path) -> None:
    """The SBOM of the real example image: Django and gunicorn from the venv's dist-info,
    the Debian python3 packages from dpkg's status, each with its version and purl. The
    build is the module's (every step a cache hit, the same image ID); only the
    attestation is new. Validated with spdx-tools."""
    from test_attest import spdx_validate

    plain = json.loads(built("inspect", "django-test").stdout)[0]["Id"]
    attested = built("build", "-q", "--sbom", "--provenance", "-t", "django-attested",
                     *secret_args(), str(context)).stdout.strip()
    assert attested == plain  # the image did not change, it gained an attestation
    doc = json.loads(built("sbom", "--require-attestation", "--format", "spdx-json",
                           "django-attested").stdout)
    assert spdx_validate(doc) == []
    found = {}
    for p in doc["packages"][1:]:
        purls = [r["referenceLocator"] for r in p["externalRefs"] if r["referenceType"] == "purl"]
        found[p["name"]] = (p["versionInfo"], purls[0])
    assert found["Django"] == ("5.2.19", "pkg:pypi/django@5.2.19")
    assert found["gunicorn"] == ("23.0.0", "pkg:pypi/gunicorn@23.0.0")
    assert found["whitenoise"] == ("6.9.0", "pkg:pypi/whitenoise@6.9.0")
    for deb in ("python3", "python3-minimal", "libpython3.11-stdlib"):
        version, purl = found[deb]
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+~:-]*", version), (deb, version)
        assert purl.startswith(f"pkg:deb/debian/{deb}@") and "distro=debian-12" in purl, purl
    # the table the command prints by default says the same
    table = built("sbom", "django-attested").stdout
    assert re.search(r"^Django\s+5\.2\.19\s+pypi\s+pkg:pypi/django@5\.2\.19$", table, re.M)


def test_same_image_with_any_jobs(built: Pybuild, context: Path, tmp_path: Path) -> None:
    """Both stages scheduled one after the other or at once: the same image, byte for
    byte, every time. (The steps hit the cache here: pip's output is not reproducible;
    tests/test_scheduling.py builds a six-stage diamond cold with --jobs 1 and 4.)"""
    digests = []
    for i, jobs in enumerate(("1", "4", "1", "4")):
        meta = tmp_path / f"meta-{i}.json"
        built("build", "--jobs", jobs, "--metadata-file", str(meta), "-t", "django-test",
              *secret_args(), str(context), timeout=900)
        digests.append(json.loads(meta.read_text())["containerimage.digest"])
    assert len(set(digests)) == 1, digests


def test_the_examples_own_tests_pass_through_the_pytest_plugin(built: Pybuild, netns: Netns) -> None:
    """examples/django-app/tests uses pybuild's pytest plugin (pybuild_image,
    pybuild_container): run it as a user would, on the store `built` made (so the image
    comes from its cache), inside the test's network namespace."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([*netns.prefix, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(EXAMPLE), "--pybuild-root", str(built.root),
                           str(EXAMPLE / "tests")], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout
    assert netns.link_names() == ["lo"]  # the fixture removed its container
