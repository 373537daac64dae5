"""The deployment description, checked without Docker.

``docker-compose.yaml`` is interpolated from ``.env.example`` the way Compose does it
(``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``,
``${VAR?error}``, ``${VAR:+alt}``, ``${VAR+alt}``, nested in defaults), validated against the
Compose Specification's JSON schema (vendored: tests/unit/data/compose-spec.json, see the
README there), and then held to what the deployment must be: Airflow with the CeleryExecutor
and all its components, the platform's stores at the right versions and settings, a
healthcheck everywhere, no secret written in the file, the eight dbops connections as valid
JSON, and an Airflow image that carries the client tools.

The checkers themselves are tested on broken inputs at the end of this file, so a check that
silently stopped looking would fail here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "docker" / "airflow" / "Dockerfile"
SCRIPTS = REPO / "include" / "scripts"
POOLS_FILE = REPO / "include" / "airflow" / "pools.json"
REQUIREMENTS = REPO / "requirements.txt"
SCHEMA_FILE = Path(__file__).parent / "data" / "compose-spec.json"
SCHEMA_SHA256 = "46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496"

AIRFLOW_VERSION = "3.3.2"
AIRFLOW_SERVICES = {
    "airflow-apiserver": ["api-server"],
    "airflow-scheduler": ["scheduler"],
    "airflow-dag-processor": ["dag-processor"],
    "airflow-triggerer": ["triggerer"],
    "airflow-worker": ["celery", "worker"],
}
CONNECTIONS = {
    "AIRFLOW_CONN_DBOPS_POSTGRES": "postgres",
    "AIRFLOW_CONN_DBOPS_POSTGRES_REPLICATION": "postgres",
    "AIRFLOW_CONN_DBOPS_MONGO": "mongo",
    "AIRFLOW_CONN_DBOPS_REDIS": "redis",
    "AIRFLOW_CONN_DBOPS_KAFKA": "kafka",
    "AIRFLOW_CONN_DBOPS_WEAVIATE": "http",
    "AIRFLOW_CONN_DBOPS_S3": "aws",
    "AIRFLOW_CONN_DBOPS_OFFSITE_SSH": "ssh",
}
DBOPS_POOLS = {"dbops_postgres", "dbops_mongo", "dbops_redis", "dbops_kafka", "dbops_weaviate", "dbops_offsite_wal"}
BACKUP_ROOT = "/opt/dbops/backups"

# Names of settings and connection fields whose value is a secret.
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE_KEY|FERNET|JWT|REDISCLI_AUTH|API_KEY", re.I)
# ...except names of a path to a secret, or of a switch (PASSWORD_ACCESS: "false").
NOT_A_SECRET_NAME = re.compile(r"_(FILE|PATH|DIR|CMD|ACCESS)$", re.I)


# ----------------------------------------------------------------------------- .env files


def parse_dotenv(text: str) -> dict[str, str]:
    """A .env file as Compose reads it: NAME=value lines, # comments, optional ``export``.

    Unquoted values end at `` #``; single quotes keep everything literally (so a private
    key written with literal ``\\n`` stays one line); double quotes expand \\n \\t \\\\ \\".
    """
    env: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f".env line {lineno} is not NAME=value: {raw!r}")
        value = value.strip()
        if value[:1] in ("'", '"'):
            quote = value[0]
            end = value.find(quote, 1)
            while quote == '"' and end > 0 and value[end - 1] == "\\":
                end = value.find(quote, end + 1)
            if end < 0:
                raise ValueError(f".env line {lineno}: unterminated {quote} quote")
            value = value[1:end]
            if quote == '"':
                value = re.sub(
                    r"\\([nt\\\"])",
                    lambda m: {"n": "\n", "t": "\t", "\\": "\\", '"': '"'}[m.group(1)],
                    value,
                )
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].rstrip()
        env[name] = value
    return env


# ----------------------------------------------------------------------------- interpolation


class InterpolationError(ValueError):
    pass


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class Ref:
    """One ``${NAME<op><arg>}`` or ``$NAME`` in a string."""

    def __init__(self, name: str, op: str = "", arg: str = "") -> None:
        self.name, self.op, self.arg = name, op, arg

    @property
    def required(self) -> bool:
        return self.op in (":?", "?")

    @property
    def has_default(self) -> bool:
        return self.op in (":-", "-")

    def __repr__(self) -> str:
        return f"${{{self.name}{self.op}{self.arg}}}"


def _closing_brace(text: str, start: int) -> int:
    """Index of the ``}`` closing a ``${`` whose body starts at ``start`` (nesting allowed)."""
    depth, i = 1, start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
        elif text.startswith("${", i):
            depth += 1
            i += 2
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
            i += 1
        else:
            i += 1
    raise InterpolationError(f"unclosed '${{' in {text!r}")


def tokens(text: str) -> Iterator[str | Ref]:
    """Split a Compose string into literal text and references."""
    literal: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "$":
            literal.append(text[i])
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "$":
            literal.append("$")
            i += 2
            continue
        if literal:
            yield "".join(literal)
            literal = []
        if nxt == "{":
            end = _closing_brace(text, i + 2)
            body = text[i + 2 : end]
            match = _NAME.match(body)
            if not match:
                raise InterpolationError(f"invalid interpolation format: {text[i : end + 1]!r}")
            rest = body[match.end() :]
            op = next((o for o in _OPERATORS if rest.startswith(o)), "")
            if rest and not op:
                raise InterpolationError(f"invalid interpolation format: {text[i : end + 1]!r}")
            yield Ref(match.group(), op, rest[len(op) :])
            i = end + 1
            continue
        match = _NAME.match(text, i + 1)
        if not match:
            raise InterpolationError(f"invalid interpolation format at {text[i : i + 10]!r}: write $$ for a '$'")
        yield Ref(match.group())
        i = match.end()
    if literal:
        yield "".join(literal)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    out = []
    for tok in tokens(text):
        if isinstance(tok, str):
            out.append(tok)
            continue
        value = env.get(tok.name)
        if tok.op == "":
            out.append(value or "")
        elif tok.op == ":-":
            out.append(value if value else interpolate(tok.arg, env))
        elif tok.op == "-":
            out.append(value if value is not None else interpolate(tok.arg, env))
        elif tok.op in (":?", "?"):
            if value is None or (tok.op == ":?" and value == ""):
                raise InterpolationError(f"required variable {tok.name} is missing a value: {tok.arg}")
            out.append(value)
        elif tok.op == ":+":
            out.append(interpolate(tok.arg, env) if value else "")
        else:  # "+"
            out.append(interpolate(tok.arg, env) if value is not None else "")
    return "".join(out)


def references(text: str) -> Iterator[Ref]:
    """Every reference in ``text``, including those nested in defaults and messages."""
    for tok in tokens(text):
        if isinstance(tok, Ref):
            yield tok
            if tok.op not in (":?", "?"):
                yield from references(tok.arg)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """Compose interpolates string values (not keys) everywhere in the file."""
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env) for value in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str | None, str]]:
    """(path, name, value) of every string value; ``name`` is its mapping key or env name."""
    if isinstance(node, dict):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(value, str):
                yield sub, str(key), value
            else:
                yield from strings(value, sub)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            sub = f"{path}[{index}]"
            if isinstance(value, str):
                # environment / args in list form: NAME=value
                name, sep, rest = value.partition("=")
                if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name):
                    yield sub, name, rest
                else:
                    yield sub, None, value
            else:
                yield from strings(value, sub)


# ----------------------------------------------------------------------------- checkers


def schema_errors(document: Any) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _masked(value: str) -> tuple[str, list[Ref]]:
    """``value`` with each reference replaced by ``\\x00<n>\\x00`` (n indexes the list)."""
    refs: list[Ref] = []
    parts = []
    for tok in tokens(value):
        if isinstance(tok, str):
            parts.append(tok)
        else:
            parts.append(f"\x00{len(refs)}\x00")
            refs.append(tok)
    return "".join(parts), refs


def _is_required_ref(masked: str, refs: list[Ref]) -> bool:
    match = re.fullmatch(r"\x00(\d+)\x00", masked)
    return bool(match) and refs[int(match.group(1))].required


def _secret_fields(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                yield from _secret_fields(value, f"{path}.{key}")
            elif isinstance(value, str) and SECRET_NAME.search(key) and not NOT_A_SECRET_NAME.search(key):
                yield f"{path}.{key}", value
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _secret_fields(value, f"{path}[{index}]")


def literal_secrets(raw: Any) -> list[str]:
    """Where the uninterpolated compose tree holds a secret instead of a ``${VAR:?...}``."""
    problems = []
    for path, name, value in strings(raw):
        masked, refs = _masked(value)

        def required(text: str, refs: list[Ref] = refs) -> bool:  # this iteration's refs
            return _is_required_ref(text, refs)

        for ref in refs:
            if SECRET_NAME.search(ref.name) and not ref.required:
                problems.append(f"{path}: secret {ref!r} must be required (${{{ref.name}:?...}}), never defaulted")
        if name and SECRET_NAME.search(name) and not NOT_A_SECRET_NAME.search(name) and not required(masked):
            problems.append(f"{path}: {name} is not a ${{VAR:?...}} reference")
        for match in re.finditer(r"[A-Za-z][A-Za-z0-9+.-]*://([^/\s@]*)@", masked):
            userinfo = match.group(1)
            if ":" in userinfo and not required(userinfo.split(":", 1)[1]):
                problems.append(f"{path}: URL password is not a ${{VAR:?...}} reference")
        for match in re.finditer(r"(?:--requirepass|--password|--pass)[= ]+(\S+)", masked):
            arg = match.group(1).strip("\"'")
            if not (required(arg) or re.fullmatch(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", arg)):
                problems.append(f"{path}: command-line secret {arg!r} is neither ${{VAR:?...}} nor a container $VAR")
        if masked.lstrip().startswith("{"):
            try:
                document = json.loads(masked)
            except json.JSONDecodeError:
                continue
            for field, inner in _secret_fields(document, path):
                if not required(inner):
                    problems.append(f"{field}: is not a ${{VAR:?...}} reference")
    return problems


def healthcheck_enabled(service: Mapping[str, Any]) -> bool:
    check = service.get("healthcheck") or {}
    test = check.get("test")
    return not check.get("disable") and bool(test) and test != ["NONE"]


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def command_words(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else list(command)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comment lines dropped."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    if current.strip():
        logical.append(current.strip())
    result = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        result.append((instruction.upper(), " ".join(args.split())))
    return result


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """docker-compose.yaml as written (anchors and merge keys resolved, nothing interpolated)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return parse_dotenv(ENV_EXAMPLE.read_text())


@pytest.fixture(scope="module")
def compose(raw, env) -> dict[str, Any]:
    """docker-compose.yaml as Compose sees it with .env.example as .env."""
    return interpolate_tree(raw, env)


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _env_of(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


# ----------------------------------------------------------------------------- the schema


def test_vendored_schema_is_the_documented_file():
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256, (
        "tests/unit/data/compose-spec.json changed: update its README (source, version) and SCHEMA_SHA256"
    )


def test_compose_file_is_valid_against_the_compose_spec(compose):
    assert schema_errors(compose) == []


def test_env_example_defines_exactly_the_variables_the_compose_file_uses(raw, env):
    used = {ref.name for _, _, value in strings(raw) for ref in references(value)}
    assert sorted(used - env.keys()) == [], "referenced in docker-compose.yaml, missing from .env.example"
    assert sorted(env.keys() - used) == [], "set in .env.example, used nowhere in docker-compose.yaml"


def test_env_example_holds_no_real_secret(env):
    for name, value in env.items():
        if SECRET_NAME.search(name):
            assert value.startswith("change-me"), f"{name} in .env.example must be a change-me placeholder"


def test_every_secret_is_required(raw, env):
    """Compose refuses to start when any secret is unset or empty (``${VAR:?...}``)."""
    secrets = [name for name in env if SECRET_NAME.search(name)]
    assert len(secrets) >= 12
    for name in secrets:
        for missing in ({k: v for k, v in env.items() if k != name}, {**env, name: ""}):
            with pytest.raises(InterpolationError, match=name):
                interpolate_tree(raw, missing)


def test_dotenv_file_is_gitignored():
    ignored = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    assert ".env" in ignored


# ----------------------------------------------------------------------------- Airflow


def test_airflow_runs_the_celery_executor_everywhere(services):
    for name in [*AIRFLOW_SERVICES, "airflow-init"]:
        environment = _env_of(services[name])
        assert environment["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert environment["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://"), name
        assert "@redis:6379/" in environment["AIRFLOW__CELERY__BROKER_URL"], name
        assert re.match(
            r"postgresql(\+psycopg2?)?://airflow:.+@postgres(:5432)?/airflow$",
            environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        ), name
        assert environment["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://"), name
        assert environment["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false", name
        assert environment["AIRFLOW__CORE__FERNET_KEY"] == "change-me", name
        assert environment["AIRFLOW__API_AUTH__JWT_SECRET"] == "change-me", name
        assert environment["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/", (
            name
        )


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_component(services, name):
    service = services[name]
    assert command_words(service) == AIRFLOW_SERVICES[name]
    assert service["image"] == services["airflow-init"]["image"]
    assert service["build"]["dockerfile"] == "docker/airflow/Dockerfile"
    assert (REPO / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    deps = depends_on(service)
    assert deps["postgres"] == deps["redis"] == "service_healthy"
    assert deps["airflow-init"] == "service_completed_successfully"
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}
    for folder in ("dags", "plugins", "include"):
        assert mounts[f"/opt/airflow/{folder}"] == f"./{folder}"


def test_airflow_metadata_db_and_broker(services):
    assert services["postgres"]["image"] == "postgres:16"
    assert re.fullmatch(r"redis:7\.0(\.\d+)?", services["redis"]["image"])


def test_airflow_init_migrates_creates_admin_and_pools(services):
    init = services["airflow-init"]
    script = " ".join(command_words(init))
    environment = _env_of(init)
    assert environment["_AIRFLOW_DB_MIGRATE"] == "true"
    assert environment["_AIRFLOW_WWW_USER_CREATE"] == "true"
    assert environment["_AIRFLOW_WWW_USER_PASSWORD"] == "change-me"
    assert "/entrypoint airflow version" in script
    assert "airflow pools import /opt/airflow/include/airflow/pools.json" in script
    pools = json.loads(POOLS_FILE.read_text())
    assert set(pools) == DBOPS_POOLS
    assert all(pool["slots"] == 1 for pool in pools.values())


def test_worker_holds_the_backup_repository(services):
    worker = services["airflow-worker"]
    assert f"dbops-backups:{BACKUP_ROOT}" in worker["volumes"]
    assert _env_of(worker)["DBOPS_BACKUP__ROOT"] == BACKUP_ROOT
    assert f"dbops-backups:{BACKUP_ROOT}" in services["airflow-init"]["volumes"]
    assert f'chown "50000:0" {BACKUP_ROOT}' in " ".join(command_words(services["airflow-init"]))


def test_dbops_settings_in_the_compose_file_are_accepted_by_dbops(services):
    from dbops.config import load_config

    dbops_env = {k: v for k, v in _env_of(services["airflow-worker"]).items() if k.startswith("DBOPS_")}
    config = load_config(environ=dbops_env)
    assert str(config.backup.root) == BACKUP_ROOT
    assert config.kafka.replication_factor == 1  # a single-node Kafka


# ----------------------------------------------------------------------------- the stores


def test_platform_postgres_has_pgvector(services):
    service = services["platform-postgres"]
    assert re.fullmatch(r"pgvector/pgvector:(\d+\.\d+\.\d+-)?pg16", service["image"])
    assert _env_of(service)["POSTGRES_DB"] == "ai_platform"


def test_mongo_is_6_0(services):
    assert re.fullmatch(r"mongo:6\.0(\.\d+)?", services["mongo"]["image"])


def test_weaviate_is_current_with_filesystem_backups(raw, services):
    service = services["weaviate"]
    match = re.fullmatch(r"cr\.weaviate\.io/semitechnologies/weaviate:(\d+)\.(\d+)\.(\d+)", service["image"])
    assert match, service["image"]
    version = tuple(int(part) for part in match.groups())
    assert version[:1] == (1,) and version[1] >= 30, "a current 1.3x server"
    assert version >= (1, 23, 13), "servers <= 1.23.12 corrupt data on restore"
    environment = _env_of(service)
    assert "backup-filesystem" in environment["ENABLE_MODULES"].split(",")
    backup_path = environment["BACKUP_FILESYSTEM_PATH"]
    assert any(volume.split(":")[1] == backup_path for volume in service["volumes"])
    assert "1.23.13" in COMPOSE_FILE.read_text(), "the restore caveat is written by the weaviate service"


def test_platform_redis_has_the_platform_settings(services):
    service = services["platform-redis"]
    assert re.fullmatch(r"redis:7\.0(\.\d+)?", service["image"])
    words = " ".join(" ".join(command_words(service)).split())
    for setting in (
        "--maxmemory 1gb",
        "--maxmemory-policy allkeys-lru",
        "--appendonly yes",
        "--appendfsync everysec",
    ):
        assert setting in words
    assert '--requirepass "$REDIS_PASSWORD"' in words
    assert _env_of(service)["REDIS_PASSWORD"] == "change-me"


def test_kafka_is_3x_in_kraft_mode(services):
    service = services["kafka"]
    assert re.fullmatch(r"(apache|bitnami)/kafka:3\.\d+(\.\d+)?", service["image"])
    environment = _env_of(service)
    roles = next(value for key, value in environment.items() if key.endswith("PROCESS_ROLES"))
    assert set(roles.split(",")) == {"broker", "controller"}
    assert any(key.endswith("CONTROLLER_QUORUM_VOTERS") for key in environment)
    assert not any("ZOOKEEPER" in key for key in environment)
    assert not any("zookeeper" in str(s.get("image", "")) for s in services.values())


def test_offsite_targets(services):
    assert re.fullmatch(r"(quay\.io/)?minio/minio:RELEASE\.[0-9T:-]+Z", services["minio"]["image"])
    ssh = services["offsite-ssh"]
    assert ssh["image"].startswith("lscr.io/linuxserver/openssh-server:")
    environment = _env_of(ssh)
    assert environment["PASSWORD_ACCESS"] == "false"
    assert environment["PUBLIC_KEY"] == "change-me"
    assert "openssh-server-rsync" in environment["DOCKER_MODS"]


def test_platform_postgres_is_ready_for_wal_streaming(raw, services):
    service = services["platform-postgres"]
    words = command_words(service)
    assert words[0] == "postgres"
    settings = dict(words[i + 1].split("=", 1) for i, word in enumerate(words) if word == "-c")
    assert settings["wal_level"] in ("replica", "logical")
    assert int(settings["max_wal_senders"]) > 0 and int(settings["max_replication_slots"]) > 0
    # the replication role and its pg_hba.conf entry: an init script, given as a config
    (init,) = [c for c in service["configs"] if c["target"].startswith("/docker-entrypoint-initdb.d/")]
    assert init["target"].endswith(".sh")
    script = REPO / raw["configs"][init["source"]]["file"]
    text = script.read_text()
    assert "CREATE ROLE dbops_replication LOGIN REPLICATION" in text
    assert "host replication dbops_replication all scram-sha-256" in text
    assert _env_of(service)["DBOPS_REPLICATION_PASSWORD_FILE"] == "/run/secrets/platform_replication_password"
    assert service["secrets"] == ["platform_replication_password"]


def test_wal_receiver_streams_into_the_backup_repository(raw, services, env):
    service = services["wal-receiver"]
    worker = services["airflow-worker"]
    assert service["image"] == worker["image"] and service["user"] == worker["user"]
    assert service["restart"] == "unless-stopped"
    assert depends_on(service)["platform-postgres"] == "service_healthy"
    assert f"dbops-backups:{BACKUP_ROOT}" in service["volumes"]
    assert "./plugins:/opt/airflow/plugins:ro" in service["volumes"]
    environment = _env_of(service)
    assert environment["PYTHONPATH"] == "/opt/airflow/plugins"
    assert environment["PGHOST"] == "platform-postgres" and environment["PGUSER"] == "dbops_replication"
    # the password only as a secret file, turned into a 0600 passfile by the script
    assert not any(key in environment for key in ("PGPASSWORD", "PGPASSFILE"))
    assert service["secrets"] == ["platform_replication_password"]
    assert raw["secrets"]["platform_replication_password"] == {"environment": "PLATFORM_REPLICATION_PASSWORD"}
    assert "PLATFORM_REPLICATION_PASSWORD" in env
    assert command_words(service) == ["bash", "/opt/airflow/include/scripts/wal_receiver.sh"]
    script = (SCRIPTS / "wal_receiver.sh").read_text()
    assert "umask 077" in script and 'export PGPASSFILE="$passfile"' in script
    assert "exec python -m dbops.pitr.receiver" in script
    assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "dbops.pitr.receiver", "--check"]
    # the role the receiver streams as is the one base backups connect as
    replication = json.loads(_env_of(worker)["AIRFLOW_CONN_DBOPS_POSTGRES_REPLICATION"])
    assert (replication["host"], replication["login"]) == ("platform-postgres", "dbops_replication")


def test_wal_receiver_settings_are_accepted_by_dbops(services):
    from dbops.config import load_config

    dbops_env = {k: v for k, v in _env_of(services["wal-receiver"]).items() if k.startswith("DBOPS_")}
    config = load_config(environ=dbops_env)
    assert str(config.backup.root) == BACKUP_ROOT


def test_wal_receiver_script_writes_a_private_passfile(tmp_path):
    """The script's passfile, run for real with a stand-in for python: 0600, escaped, no argv."""
    import os
    import subprocess

    secret = tmp_path / "password"
    secret.write_text("p:w\\d")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python").write_text('#!/bin/sh\ncat "$PGPASSFILE"; stat -c %a "$PGPASSFILE"; echo "$@"\n')
    (fake_bin / "python").chmod(0o755)
    result = subprocess.run(
        ["bash", str(SCRIPTS / "wal_receiver.sh"), "--check"],
        env={
            "PATH": f"{fake_bin}:{os.environ['PATH']}",
            "PGHOST": "platform-postgres",
            "PGPORT": "5432",
            "PGUSER": "dbops_replication",
            "DBOPS_REPLICATION_PASSWORD_FILE": str(secret),
            "TMPDIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        check=True,
    )
    line, mode, args = result.stdout.splitlines()
    assert line == "platform-postgres:5432:*:dbops_replication:p\\:w\\\\d"
    assert mode == "600" and args == "-m dbops.pitr.receiver --check"
    secret.write_text("")
    empty = subprocess.run(
        ["bash", str(SCRIPTS / "wal_receiver.sh")],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "PGHOST": "h", "PGUSER": "u", "DBOPS_REPLICATION_PASSWORD_FILE": str(secret)},
    )
    assert empty.returncode == 1 and "is empty" in empty.stderr


# ----------------------------------------------------------------------------- health, volumes


def test_every_service_has_a_healthcheck(services):
    completed = {
        target
        for service in services.values()
        for target, condition in depends_on(service).items()
        if condition == "service_completed_successfully"
    }
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
        if healthcheck_enabled(service):
            assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
            assert service["healthcheck"].get("interval") and service["healthcheck"].get("timeout"), name
        else:
            # Only one-shot jobs may disable it: they are waited for to complete, not to be healthy.
            assert name in completed and service.get("restart") == "no", f"{name} disables its healthcheck"


def test_depends_on_conditions_can_be_met(services):
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            assert target in services, f"{name} depends on unknown {target}"
            if condition == "service_healthy":
                assert healthcheck_enabled(services[target]), f"{name} waits for {target} to be healthy"


def test_volumes_are_named_except_the_dag_package(compose, services):
    declared = set(compose["volumes"])
    used = set()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert source in ("./dags", "./plugins", "./include"), f"{name}: bind mount {source}"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared


# ----------------------------------------------------------------------------- connections, secrets


def test_no_literal_secret_in_the_compose_file(raw):
    assert literal_secrets(raw) == []


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_all_dbops_connections_are_valid_json(services, name):
    environment = _env_of(services[name])
    for variable, conn_type in CONNECTIONS.items():
        conn = json.loads(environment[variable])
        assert conn["conn_type"] == conn_type, variable
        host = conn.get("host")
        if host:
            assert host in services, f"{variable}: host {host} is no service"
    assert json.loads(environment["AIRFLOW_CONN_DBOPS_KAFKA"])["extra"]["bootstrap.servers"] == "kafka:9092"
    s3 = json.loads(environment["AIRFLOW_CONN_DBOPS_S3"])
    assert s3["extra"]["endpoint_url"] == "http://minio:9000"
    ssh = json.loads(environment["AIRFLOW_CONN_DBOPS_OFFSITE_SSH"])
    assert {"private_key", "host_key"} <= set(ssh["extra"])
    assert json.loads(environment["AIRFLOW_CONN_DBOPS_POSTGRES"])["schema"] == "ai_platform"


def test_real_keys_survive_env_file_and_json(raw, env, tmp_path):
    """An SSH key pair written into .env as .env.example says ends up loadable by paramiko."""
    import io

    import paramiko
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    def keypair() -> tuple[str, str]:
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ).decode()
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        return private, public.decode()

    def one_line(pem: str) -> str:  # awk '{printf "%s\\n", $0}' FILE, in single quotes
        return "'" + "".join(f"{line}\\n" for line in pem.splitlines()) + "'"

    login, login_pub = keypair()
    host, host_pub = keypair()
    lines = [
        f"{k}={v}"
        for k, v in env.items()
        if k not in ("OFFSITE_SSH_PRIVATE_KEY", "OFFSITE_SSH_HOST_PRIVATE_KEY", "OFFSITE_SSH_HOST_KEY")
    ]
    lines += [
        f"OFFSITE_SSH_PRIVATE_KEY={one_line(login)}",
        f"OFFSITE_SSH_HOST_PRIVATE_KEY={one_line(host)}",
        f"OFFSITE_SSH_HOST_KEY={host_pub} offsite-ssh",
        "AIRFLOW_DB_PASSWORD=" + "0123456789abcdef" * 4,
    ]
    real_env = parse_dotenv("\n".join(lines))
    services = interpolate_tree(raw, real_env)["services"]
    conn = json.loads(_env_of(services["airflow-worker"])["AIRFLOW_CONN_DBOPS_OFFSITE_SSH"])
    loaded = paramiko.Ed25519Key.from_private_key(io.StringIO(conn["extra"]["private_key"]))
    assert loaded.get_base64() == login_pub.split()[1]
    assert conn["extra"]["host_key"].split()[:2] == host_pub.split()
    # the server side gets the host key with literal \n, which its init expands (printf %b)
    assert "\\n" in _env_of(services["offsite-ssh-init"])["OFFSITE_SSH_HOST_PRIVATE_KEY"]
    assert "printf '%b'" in " ".join(command_words(services["offsite-ssh-init"]))


# ----------------------------------------------------------------------------- the image


def test_dockerfile_extends_the_official_image_with_the_tools_and_the_lock():
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    args = {}
    for instruction, value in instructions:
        if instruction == "ARG" and "=" in value:
            key, _, default = value.partition("=")
            args[key] = default
    text = " ".join(f"{i} {v}" for i, v in instructions)
    for key, default in args.items():
        text = text.replace(f"${{{key}}}", default)

    assert instructions[0] == ("FROM", f"apache/airflow:{AIRFLOW_VERSION}-python3.11")
    assert f"apache-airflow=={AIRFLOW_VERSION}\n" in REQUIREMENTS.read_text()
    assert "--python-version 3.11" in REQUIREMENTS.read_text()

    installs = " ".join(v for i, v in instructions if i == "RUN" for v in re.findall(r"apt-get install[^;&]*", v))
    installs = " ".join(installs.replace('"', "").split())
    for key, default in args.items():
        installs = installs.replace(f"${{{key}}}", default)
    for package in ("postgresql-client-16", "mongodb-database-tools", "redis-tools", "rsync", "openssh-client"):
        assert re.search(rf"(?<![\w-]){re.escape(package)}(?![\w-])", installs), f"{package} is not installed"
    assert "apt.postgresql.org/pub/repos/apt" in text and "-pgdg main" in text, "PGDG repository"
    assert "repo.mongodb.org/apt/debian" in text, "MongoDB repository"
    assert "rm -rf /var/lib/apt/lists/*" in text

    users = [(index, v) for index, (i, v) in enumerate(instructions) if i == "USER"]
    assert users[0][1] == "root" and users[-1][1] == "airflow"
    pip = [index for index, (i, v) in enumerate(instructions) if i == "RUN" and "uv pip install" in v]
    assert pip and all(index > users[-1][0] for index in pip), "packages are installed as the airflow user"
    install = instructions[pip[0]][1]
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in install
    assert re.search(r"-r \S*requirements\.txt", install)
    assert any(i == "COPY" and v.split()[-2] == "requirements.txt" for i, v in instructions)


# ----------------------------------------------------------------------------- the checkers catch breakage


def test_interpolation_follows_compose():
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("a$$b ${SET} $SET", env) == "a$b v v"
    assert interpolate("${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d}", env) == "d d  d"
    assert interpolate("${UNSET:-${SET}x}", env) == "vx"
    assert interpolate("${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}", env) == "alt||alt"
    assert interpolate("${EMPTY?no}", env) == ""
    with pytest.raises(InterpolationError, match="EMPTY"):
        interpolate("${EMPTY:?must be set}", env)
    with pytest.raises(InterpolationError, match="UNSET"):
        interpolate("${UNSET?must be set}", env)
    for bad in ("${SET", "${}", "${SET!x}", "$ alone"):
        with pytest.raises(InterpolationError):
            interpolate(bad, env)


def test_dotenv_parsing():
    env = parse_dotenv("# c\nA=1 # note\nexport B='x\\ny # z'\nC=\"p\\nq\"\nD=\n")
    assert env == {"A": "1", "B": "x\\ny # z", "C": "p\nq", "D": ""}
    with pytest.raises(ValueError):
        parse_dotenv("not a line\n")


def test_schema_check_rejects_a_broken_file(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["kafka"]["healthchek"] = broken["services"]["kafka"].pop("healthcheck")
    broken["services"]["mongo"]["ports"] = "27017:27017"
    broken["volumes"]["mongo-data"] = ["not", "a", "mapping"]
    errors = schema_errors(broken)
    assert any("healthchek" in error for error in errors)
    assert any(error.startswith("services/mongo/ports") for error in errors)
    assert any(error.startswith("volumes/mongo-data") for error in errors)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["services"]["mongo"]["environment"].update(MONGO_INITDB_ROOT_PASSWORD="hunter2"),
        lambda c: c["services"]["mongo"]["environment"].update(
            MONGO_INITDB_ROOT_PASSWORD="${MONGO_ROOT_PASSWORD:-hunter2}"
        ),
        lambda c: c["services"]["mongo"]["environment"].update(MONGO_INITDB_ROOT_PASSWORD="${MONGO_ROOT_PASSWORD}"),
        lambda c: c["services"]["redis"].update(command="redis-server --requirepass hunter2"),
        lambda c: c["services"]["airflow-worker"]["environment"].update(
            AIRFLOW__CELERY__BROKER_URL="redis://:hunter2@redis:6379/0"
        ),
        lambda c: c["services"]["airflow-worker"]["environment"].update(
            AIRFLOW_CONN_DBOPS_REDIS='{"conn_type":"redis","host":"platform-redis","password":"hunter2"}'
        ),
        lambda c: c["services"]["airflow-worker"]["environment"].update(
            AIRFLOW_CONN_DBOPS_OFFSITE_SSH='{"conn_type":"ssh","extra":{"private_key":"-----BEGIN..."}}'
        ),
        lambda c: c["services"]["minio"].update(environment=["MINIO_ROOT_PASSWORD=hunter2"]),
    ],
    ids=["env", "defaulted", "not-required", "argv", "url", "conn-json", "conn-extra", "env-list"],
)
def test_secret_check_finds_a_literal_secret(raw, mutate):
    broken = copy.deepcopy(raw)
    mutate(broken)
    assert literal_secrets(broken), "a literal secret went unnoticed"


def test_healthcheck_check_finds_a_missing_one(services):
    broken = copy.deepcopy(services)
    del broken["weaviate"]["healthcheck"]
    with pytest.raises(AssertionError, match="weaviate has no healthcheck"):
        test_every_service_has_a_healthcheck(broken)
    broken = copy.deepcopy(services)
    broken["kafka"]["healthcheck"] = {"disable": True}
    with pytest.raises(AssertionError, match="kafka disables its healthcheck"):
        test_every_service_has_a_healthcheck(broken)
