"""Static checks of the docker-compose deployment and its image.

No Docker engine runs on our machines, so docker-compose.yml and the Dockerfile are read as data.
The compose file must satisfy the Compose Specification's JSON schema (vendored beside this file,
see README.md), and the assertions below catch what that schema cannot see: start order, the GPU
reservation, auth, secrets without defaults, the shared data volume and commands that exist.
"""

import copy
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_PATH = ROOT / "docker-compose.yml"
WORKER_COMPOSE_PATH = ROOT / "docker-compose.worker.yml"
DOCKERFILE_PATH = ROOT / "Dockerfile"
DOCKERIGNORE_PATH = ROOT / ".dockerignore"
SCHEMA_PATH = Path(__file__).with_name("compose-spec.json")

REQUIRED_SECRETS = (
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "MINIO_ROOT_PASSWORD",
    "LLFC_SECRET_KEY",
    "LLFC_METRICS_TOKEN",
)
SAMPLE_ENV = {
    "POSTGRES_PASSWORD": "pw-0123456789abcdef",
    "REDIS_PASSWORD": "redis-0123456789abcdef",
    "MINIO_ROOT_USER": "llfc-store",
    "MINIO_ROOT_PASSWORD": "minio-0123456789abcdef",
    "LLFC_SECRET_KEY": "k" * 64,
    "LLFC_METRICS_TOKEN": "m" * 48,
}
WORKER_SAMPLE_ENV = {
    **{
        name: SAMPLE_ENV[name]
        for name in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "MINIO_ROOT_PASSWORD")
    },
    "MINIO_ROOT_USER": SAMPLE_ENV["MINIO_ROOT_USER"],
    "LLFC_MAIN_HOST": "10.0.0.5",
}

# Compose interpolation: `$$` is a literal `$`; `${NAME}`, `${NAME:-default}`, `${NAME-default}`,
# `${NAME:?message}`, `${NAME?message}`, `${NAME:+alt}`, `${NAME+alt}` and bare `$NAME`.
_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?+])(?P<argument>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariableError(ValueError):
    """A `${NAME:?message}` (or `${NAME?message}`) reference found its variable unset."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute variables in one string the way `docker compose` does before validating.

    `:-`, `:?` and `:+` treat an empty variable as unset; the forms without the colon only an
    absent one.
    """

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        operator, argument = match["operator"], match["argument"] or ""
        value = env.get(name)
        is_set = value is not None and (value != "" or not (operator or "").startswith(":"))
        if operator and operator.endswith("?") and not is_set:
            raise MissingVariableError(f"{name}: {argument}")
        if operator and operator.endswith("-") and not is_set:
            return argument
        if operator and operator.endswith("+"):
            return argument if is_set else ""
        return value or ""

    return _REFERENCE.sub(substitute, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """Apply `interpolate` to every string of a parsed YAML document, keys excepted."""
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def strings_in(node: Any) -> Iterator[str]:
    """Every string value of a parsed YAML document."""
    if isinstance(node, dict):
        for value in node.values():
            yield from strings_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)
    elif isinstance(node, str):
        yield node


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def shell_steps(script: str) -> list[list[str]]:
    """The simple commands of a shell line, split at `&&`, `||`, `;` and `|` outside quotes."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    steps: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|"}:
            steps.append([])
        else:
            steps[-1].append(token)
    return [step for step in steps if step]


def command_words(command: str | list[str]) -> list[str]:
    """A compose `command` or a Dockerfile CMD (exec form or shell form) as its argv."""
    if isinstance(command, list):
        return command
    if command.startswith("["):
        words: list[str] = json.loads(command)
        return words
    return shlex.split(command)


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_PATH.read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    """The compose file as `docker compose config` would see it with both secrets exported."""
    document: dict[str, Any] = interpolate_tree(yaml.safe_load(compose_text), SAMPLE_ENV)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def llfc_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run the `llfc` command of our image."""
    return {
        name: service
        for name, service in services.items()
        if command_words(service.get("command", []))[:1] == ["llfc"]
    }


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE_PATH.read_text())


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator: jsonschema.protocols.Validator = validator_class(schema)
    return validator


def test_compose_file_satisfies_the_compose_spec_schema(
    compose: dict[str, Any], compose_validator: jsonschema.protocols.Validator
) -> None:
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in compose_validator.iter_errors(compose)
    ]
    assert errors == []


def test_vendored_schema_rejects_an_unknown_dependency_condition(
    compose: dict[str, Any], compose_validator: jsonschema.protocols.Validator
) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["api"]["depends_on"]["migrate"]["condition"] = "service_finished"
    assert not compose_validator.is_valid(broken)


def test_vendored_schema_rejects_a_misspelt_service_key(
    compose: dict[str, Any], compose_validator: jsonschema.protocols.Validator
) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["depend_on"] = broken["services"]["worker"].pop("depends_on")
    assert not compose_validator.is_valid(broken)


def test_compose_file_has_no_obsolete_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose


def test_deployment_runs_postgres_redis_migrate_api_and_worker(
    services: dict[str, dict[str, Any]], llfc_services: dict[str, dict[str, Any]]
) -> None:
    assert set(services) == {"postgres", "redis", "minio", "minio-init", "migrate", "api", "worker"}
    assert set(llfc_services) == {"migrate", "api", "worker"}


def test_every_service_that_uses_the_database_waits_for_migrate_to_complete(
    services: dict[str, dict[str, Any]],
) -> None:
    database_users = {
        name
        for name, service in services.items()
        if "LLFC_DATABASE_URL" in service.get("environment", {}) and name != "migrate"
    }
    assert database_users == {"api", "worker"}
    for name in database_users:
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert command_words(services["migrate"]["command"]) == ["llfc", "migrate"]
    assert services["migrate"]["restart"] == "no"


def test_postgres_and_redis_have_healthchecks_that_dependents_wait_on(
    services: dict[str, dict[str, Any]],
) -> None:
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    redis_check = services["redis"]["healthcheck"]["test"]
    assert "redis-cli" in redis_check and "ping" in redis_check
    for name, service in services.items():
        for dependency in {"postgres", "redis"} & set(service.get("depends_on", {})):
            assert service["depends_on"][dependency]["condition"] == "service_healthy", name
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_worker_reserves_an_nvidia_gpu(services: dict[str, dict[str, Any]]) -> None:
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    gpus = [device for device in devices if device.get("driver") == "nvidia"]
    assert len(gpus) == 1
    assert "gpu" in gpus[0]["capabilities"]
    assert gpus[0].get("count") == 1 or gpus[0].get("device_ids")
    assert services["worker"]["environment"].get("LLFC_DEVICE", "auto") in {"auto", "cuda"}


def test_auth_is_on_for_every_llfc_service(llfc_services: dict[str, dict[str, Any]]) -> None:
    for name, service in llfc_services.items():
        assert service["environment"]["LLFC_AUTH"] == "on", name


def test_llfc_services_share_one_configuration(
    llfc_services: dict[str, dict[str, Any]],
) -> None:
    """migrate must upgrade the very database that api and worker use, with the same secret."""
    shared = (
        "LLFC_DATABASE_URL",
        "LLFC_BROKER_URL",
        "LLFC_SECRET_KEY",
        "LLFC_DATA_DIR",
        "LLFC_BLOB_URL",
        "LLFC_S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    )
    configurations = {
        name: tuple(service["environment"].get(key) for key in shared)
        for name, service in llfc_services.items()
    }
    assert len(set(configurations.values())) == 1, configurations
    assert llfc_services["api"]["environment"]["LLFC_SECRET_KEY"] == SAMPLE_ENV["LLFC_SECRET_KEY"]


def test_secrets_are_required_from_the_environment_without_defaults(compose_text: str) -> None:
    document = yaml.safe_load(compose_text)
    references = [
        match
        for text in strings_in(document)
        for match in _REFERENCE.finditer(text)
        if match["name"] or match["bare"]
    ]
    secret_references = [
        match
        for match in references
        if re.search(r"PASSWORD|SECRET|TOKEN", match["name"] or match["bare"])
    ]
    assert {match["name"] for match in secret_references} == set(REQUIRED_SECRETS)
    for match in secret_references:
        assert match["operator"] == ":?", match.group(0)
    for secret in REQUIRED_SECRETS:
        env_without_it = {name: value for name, value in SAMPLE_ENV.items() if name != secret}
        with pytest.raises(MissingVariableError, match=secret):
            interpolate_tree(document, env_without_it)
        with pytest.raises(MissingVariableError, match=secret):
            interpolate_tree(document, {**env_without_it, secret: ""})


def test_no_environment_entry_holds_a_literal_secret(compose_text: str) -> None:
    document = yaml.safe_load(compose_text)
    for name, service in document["services"].items():
        for key, value in service.get("environment", {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", value), (name, key, value)


def test_database_url_matches_the_postgres_service(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]["environment"]
    url = make_url(services["api"]["environment"]["LLFC_DATABASE_URL"])
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port) == ("postgres", 5432)
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"] == SAMPLE_ENV["POSTGRES_PASSWORD"]
    assert url.database == postgres["POSTGRES_DB"]


def test_redis_requires_the_password_the_broker_url_carries(
    services: dict[str, dict[str, Any]],
) -> None:
    redis = services["redis"]
    command = command_words(redis["command"])
    assert command[command.index("--requirepass") + 1] == SAMPLE_ENV["REDIS_PASSWORD"]
    # redis-cli reads REDISCLI_AUTH, so the healthcheck's ping authenticates.
    assert redis["environment"]["REDISCLI_AUTH"] == SAMPLE_ENV["REDIS_PASSWORD"]
    url = make_url(services["api"]["environment"]["LLFC_BROKER_URL"])
    assert (url.drivername, url.host, url.port) == ("redis", "redis", 6379)
    assert url.password == SAMPLE_ENV["REDIS_PASSWORD"]


def test_api_and_worker_keep_blobs_in_the_bucket_and_share_no_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """Nothing relies on a shared filesystem: the blobs are MinIO's, and the api's and the
    worker's data folders are volumes of their own (as they would be on two machines)."""
    mounts = {}
    for name in ("api", "worker"):
        environment = services[name]["environment"]
        assert environment["LLFC_BLOB_URL"] == "s3://llfc/blobs", name
        assert environment["LLFC_S3_ENDPOINT_URL"] == "http://minio:9000", name
        assert environment["AWS_ACCESS_KEY_ID"] == SAMPLE_ENV["MINIO_ROOT_USER"], name
        assert environment["AWS_SECRET_ACCESS_KEY"] == SAMPLE_ENV["MINIO_ROOT_PASSWORD"], name
        assert services[name]["depends_on"]["minio-init"]["condition"] == (
            "service_completed_successfully"
        )
        data_dir = environment["LLFC_DATA_DIR"]
        sources = [
            volume.split(":")[0]
            for volume in services[name]["volumes"]
            if volume.split(":")[1] == data_dir
        ]
        assert len(sources) == 1, (name, services[name]["volumes"])
        assert sources[0] in compose["volumes"], name
        mounts[name] = sources[0]
    assert mounts["api"] != mounts["worker"]


def test_minio_init_creates_the_bucket_the_services_use(
    services: dict[str, dict[str, Any]],
) -> None:
    minio = services["minio"]
    assert minio["environment"]["MINIO_ROOT_USER"] == SAMPLE_ENV["MINIO_ROOT_USER"]
    assert minio["environment"]["MINIO_ROOT_PASSWORD"] == SAMPLE_ENV["MINIO_ROOT_PASSWORD"]
    assert "ready" in minio["healthcheck"]["test"]
    init = services["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert init["restart"] == "no"
    script = init["entrypoint"][-1]
    steps = shell_steps(script)
    assert steps[0][:3] == ["mc", "alias", "set"] and steps[0][4] == "http://minio:9000"
    assert steps[1][:3] == ["mc", "mb", "--ignore-existing"]
    bucket = make_url_bucket(services["api"]["environment"]["LLFC_BLOB_URL"])
    assert steps[1][3] == "store/$LLFC_BUCKET" and init["environment"]["LLFC_BUCKET"] == bucket


def make_url_bucket(blob_url: str) -> str:
    """The bucket of an ``s3://bucket/prefix`` URL."""
    assert blob_url.startswith("s3://")
    return blob_url[len("s3://") :].split("/", 1)[0]


def test_stores_listen_on_the_private_address_only(compose_text: str) -> None:
    """PostgreSQL, Redis and MinIO are published for worker machines on LLFC_PRIVATE_ADDRESS,
    which defaults to the loopback: a single machine opens nothing to its network."""
    document = yaml.safe_load(compose_text)
    for name, port in (("postgres", 5432), ("redis", 6379), ("minio", 9000)):
        ports = document["services"][name]["ports"]
        assert ports == [f"${{LLFC_PRIVATE_ADDRESS:-127.0.0.1}}:{port}:{port}"], name
        published = interpolate_tree(ports, SAMPLE_ENV)
        assert published == [f"127.0.0.1:{port}:{port}"], name
        opened = interpolate_tree(ports, {**SAMPLE_ENV, "LLFC_PRIVATE_ADDRESS": "10.0.0.5"})
        assert opened == [f"10.0.0.5:{port}:{port}"], name


def test_api_publishes_port_8000_and_is_checked_on_readyz(
    services: dict[str, dict[str, Any]],
) -> None:
    api = services["api"]
    # Published on the host's loopback only: other machines reach it through a TLS proxy.
    assert api["ports"] == ["127.0.0.1:8000:8000"]
    check = " ".join(api["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/readyz" in check
    words = command_words(api["command"])
    assert words[:2] == ["llfc", "api"]
    assert words[words.index("--host") + 1] == "0.0.0.0"
    assert words[words.index("--port") + 1] == "8000"


def test_llfc_services_build_this_repository_into_one_image(
    llfc_services: dict[str, dict[str, Any]],
) -> None:
    for name, service in llfc_services.items():
        assert (ROOT / service["build"]["context"] / "Dockerfile").is_file(), name
    assert len({service["image"] for service in llfc_services.values()}) == 1


def test_dockerfile_pins_a_cuda_torch_of_at_least_2_10_with_its_torchvision(
    dockerfile: list[tuple[str, str]],
) -> None:
    bases = [arguments for keyword, arguments in dockerfile if keyword == "FROM"]
    assert len(bases) == 1 and re.fullmatch(r"python:3\.1[1-9]-slim", bases[0]), bases
    torch_requirements = []
    for keyword, arguments in dockerfile:
        if keyword != "RUN":
            continue
        for words in shell_steps(arguments):
            if any(re.fullmatch(r"(\S*/)?pip3?", word) for word in words) and "install" in words:
                # PyPI's default Linux wheels are the CUDA builds; a CPU index would drop CUDA.
                assert not any("download.pytorch.org" in word for word in words), words
                torch_requirements += [
                    word
                    for word in words
                    if re.match(r"torch(vision|audio)?($|[=<>!~\[;@ ])", word)
                ]
    pins: dict[str, str] = {}
    for word in torch_requirements:
        pinned = re.fullmatch(r"(torch\w*)===?([0-9.]+)", word)
        assert pinned, f"{word} is not pinned to one version"
        pins[pinned[1]] = pinned[2]
    assert set(pins) == {"torch", "torchvision"}, torch_requirements
    assert tuple(int(part) for part in pins["torch"].split(".")[:2]) >= (2, 10)


def test_the_image_pins_the_torch_and_torchvision_that_dev_and_ci_install() -> None:
    pin = r"['\"]?(torch|torchvision)===?([0-9.]+)['\"]?"
    in_image = dict(re.findall(pin, DOCKERFILE_PATH.read_text()))
    in_ci = dict(re.findall(pin, (ROOT / "scripts" / "install").read_text()))
    assert set(in_image) == {"torch", "torchvision"} and in_image == in_ci, (in_image, in_ci)


def test_dockerfile_runs_as_a_non_root_user_and_exposes_8000(
    dockerfile: list[tuple[str, str]],
) -> None:
    users = [arguments for keyword, arguments in dockerfile if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    keywords = [keyword for keyword, _ in dockerfile]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    assert ("EXPOSE", "8000") in dockerfile


def test_dockerfile_starts_the_api_by_default(dockerfile: list[tuple[str, str]]) -> None:
    entrypoints = [arguments for keyword, arguments in dockerfile if keyword == "ENTRYPOINT"]
    commands = [arguments for keyword, arguments in dockerfile if keyword == "CMD"]
    assert entrypoints == []
    assert command_words(commands[-1]) == ["llfc", "api", "--host", "0.0.0.0", "--port", "8000"]


def test_dockerignore_keeps_the_local_venv_data_and_history_out_of_the_image() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE_PATH.read_text().splitlines()}
    assert {".venv", "llfc-data", ".git", ".env"} <= ignored


def test_every_llfc_command_of_the_deployment_is_a_real_subcommand(
    llfc_services: dict[str, dict[str, Any]], dockerfile: list[tuple[str, str]]
) -> None:
    """`llfc SUB --help` must succeed and list each option the deployment passes to SUB."""
    default_command = [arguments for keyword, arguments in dockerfile if keyword == "CMD"][-1]
    commands = [command_words(service["command"]) for service in llfc_services.values()]
    commands.append(command_words(default_command))
    options_by_subcommand: dict[str, set[str]] = {}
    for words in commands:
        options = {word for word in words[2:] if word.startswith("--")}
        options_by_subcommand.setdefault(words[1], set()).update(options)
    assert set(options_by_subcommand) == {"migrate", "api", "worker"}
    for subcommand, options in options_by_subcommand.items():
        completed = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from llfc_client.cli import main; sys.exit(main())",
                subcommand,
                "--help",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert completed.returncode == 0, (subcommand, completed.stderr[-2000:])
        for option in options:
            assert option in completed.stdout, (subcommand, option)


@pytest.fixture(scope="module")
def worker_compose_text() -> str:
    return WORKER_COMPOSE_PATH.read_text()


@pytest.fixture(scope="module")
def extra_workers(worker_compose_text: str) -> dict[str, dict[str, Any]]:
    """The services of docker-compose.worker.yml, its variables exported."""
    document = interpolate_tree(yaml.safe_load(worker_compose_text), WORKER_SAMPLE_ENV)
    assert set(document["services"]) == {"worker", "cpu-worker"}
    services: dict[str, dict[str, Any]] = document["services"]
    return services


@pytest.fixture(scope="module")
def extra_worker(extra_workers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The GPU worker, which a plain `up` starts."""
    return extra_workers["worker"]


def test_a_cpu_machine_starts_the_cpu_worker_by_name_without_reserving_a_gpu(
    extra_workers: dict[str, dict[str, Any]],
) -> None:
    """Docker refuses a container reserving a GPU on a host without the NVIDIA toolkit."""
    gpu, cpu = extra_workers["worker"], extra_workers["cpu-worker"]
    assert "profiles" not in gpu and cpu["profiles"] == ["cpu"]
    assert "deploy" not in cpu
    environment = cpu["environment"]
    assert (environment["LLFC_DEVICE"], environment["LLFC_WORKER_QUEUES"]) == ("cpu", "cpu")
    shared = {key: value for key, value in gpu["environment"].items() if key not in environment}
    assert shared == {}
    for key in ("LLFC_DATABASE_URL", "LLFC_BROKER_URL", "LLFC_BLOB_URL", "AWS_SECRET_ACCESS_KEY"):
        assert environment[key] == gpu["environment"][key], key
    for key in ("command", "image", "volumes", "stop_grace_period"):
        assert cpu[key] == gpu[key], key


def test_worker_compose_file_satisfies_the_compose_spec_schema(
    worker_compose_text: str, compose_validator: jsonschema.protocols.Validator
) -> None:
    document = interpolate_tree(yaml.safe_load(worker_compose_text), WORKER_SAMPLE_ENV)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in compose_validator.iter_errors(document)
    ]
    assert errors == []


def test_extra_worker_reaches_the_main_machines_stores_with_their_credentials(
    extra_worker: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """Same database, broker and bucket as the main file's worker, at LLFC_MAIN_HOST."""
    environment = extra_worker["environment"]
    main = services["worker"]["environment"]
    for key in ("LLFC_DATABASE_URL", "LLFC_BROKER_URL"):
        url, main_url = make_url(environment[key]), make_url(main[key])
        assert url.host == WORKER_SAMPLE_ENV["LLFC_MAIN_HOST"], key
        assert url.set(host=main_url.host) == main_url, key
    assert environment["LLFC_BLOB_URL"] == main["LLFC_BLOB_URL"]
    assert environment["LLFC_S3_ENDPOINT_URL"] == "http://10.0.0.5:9000"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "LLFC_DATA_DIR"):
        assert environment[key] == main[key], key
    # A worker checks no API key: the pepper of the key hashes stays on the main machine.
    assert "LLFC_SECRET_KEY" not in environment and "LLFC_AUTH" not in environment
    assert command_words(extra_worker["command"]) == ["llfc", "worker"]
    assert environment["LLFC_WORKER_QUEUES"] == "gpu"
    devices = extra_worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert [volume.split(":")[1] for volume in extra_worker["volumes"]] == ["/data"]


def test_extra_worker_needs_its_variables_without_defaults(worker_compose_text: str) -> None:
    document = yaml.safe_load(worker_compose_text)
    for name in WORKER_SAMPLE_ENV:
        without_it = {key: value for key, value in WORKER_SAMPLE_ENV.items() if key != name}
        with pytest.raises(MissingVariableError, match=name):
            interpolate_tree(document, without_it)
    for key, value in document["services"]["worker"]["environment"].items():
        if re.search(r"PASSWORD|SECRET|TOKEN", key):
            assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", value), (key, value)
