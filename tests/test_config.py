"""Settings: explicit arguments > environment > a running local stack's record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from yadtq.config import Config, local_stack_record_path, resolve_config
from yadtq.errors import ConfigurationError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No YADTQ_* variables from the caller, and an empty YADTQ_HOME."""
    for name in list(os.environ):
        if name.startswith("YADTQ_"):
            monkeypatch.delenv(name)
    home = tmp_path / "yadtq-home"
    monkeypatch.setenv("YADTQ_HOME", str(home))
    return home


def write_record(pid: int, bootstrap: str = "stack:9092",
                 redis_url: str = "redis://stack:6379/0") -> Path:
    path = local_stack_record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "bootstrap": bootstrap, "redis_url": redis_url}))
    return path


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_record_path_lives_under_yadtq_home(clean_environment: Path) -> None:
    assert local_stack_record_path() == clean_environment / "local-stack.json"


def test_explicit_arguments_win_over_environment_and_local_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given all three sources
    write_record(os.getpid())
    monkeypatch.setenv("YADTQ_BOOTSTRAP", "env:9092")
    monkeypatch.setenv("YADTQ_REDIS_URL", "redis://env:6379/0")
    monkeypatch.setenv("YADTQ_QUEUE", "env-queue")

    # When arguments are given
    config = resolve_config(bootstrap="arg:9092", redis_url="redis://arg:6379/0", queue="argq")

    # Then they are used
    assert (config.bootstrap, config.redis_url, config.queue) == (
        "arg:9092", "redis://arg:6379/0", "argq"
    )
    assert config.source == "arguments"


def test_environment_wins_over_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    write_record(os.getpid())
    monkeypatch.setenv("YADTQ_BOOTSTRAP", "env:9092")
    monkeypatch.setenv("YADTQ_REDIS_URL", "redis://env:6379/0")
    monkeypatch.setenv("YADTQ_PARTITIONS", "3")
    monkeypatch.setenv("YADTQ_LEASE_SECONDS", "30")

    config = resolve_config()

    assert config.bootstrap == "env:9092"
    assert config.redis_url == "redis://env:6379/0"
    assert config.partitions == 3
    assert config.lease_seconds == 30.0
    assert config.source == "environment"


def test_one_explicit_address_combines_with_the_other_from_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("YADTQ_BOOTSTRAP", "env:9092")
    monkeypatch.setenv("YADTQ_REDIS_URL", "redis://env:6379/0")

    config = resolve_config(bootstrap="arg:9092")

    assert config.bootstrap == "arg:9092"
    assert config.redis_url == "redis://env:6379/0"


def test_explicit_setting_wins_over_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("YADTQ_PARTITIONS", "3")

    config = resolve_config(bootstrap="a:1", redis_url="redis://b", partitions=5)

    assert config.partitions == 5


def test_running_local_stack_is_used_when_nothing_else_is_configured() -> None:
    # Given a record left by a stack whose process is alive (this one)
    path = write_record(os.getpid())

    config = resolve_config()

    assert config.bootstrap == "stack:9092"
    assert config.redis_url == "redis://stack:6379/0"
    assert str(path) in config.source


def test_no_configuration_at_all_says_how_to_start_servers() -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_config()

    text = str(caught.value)
    assert "bootstrap and redis_url not set" in text
    assert "yadtq local up" in text
    assert "connect('local')" in text


def test_local_stack_record_of_a_dead_process_is_ignored() -> None:
    write_record(dead_pid())

    with pytest.raises(ConfigurationError, match="yadtq local up"):
        resolve_config()


@pytest.mark.parametrize(
    "content", ["not json", "{}", '{"pid": "abc"}', "[1, 2]"],
    ids=["not-json", "no-pid", "bad-pid", "array"],
)
def test_unreadable_local_stack_record_is_ignored(content: str) -> None:
    path = local_stack_record_path()
    path.parent.mkdir(parents=True)
    path.write_text(content)

    with pytest.raises(ConfigurationError, match="yadtq local up"):
        resolve_config()


@pytest.mark.parametrize(
    "variable, value, kind",
    [("YADTQ_PARTITIONS", "abc", "int"), ("YADTQ_RESULT_TTL", "a week", "float")],
)
def test_invalid_environment_value_names_the_variable_and_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, kind: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigurationError) as caught:
        resolve_config(bootstrap="a:1", redis_url="redis://b")

    assert f"{variable}={value!r} is not a valid {kind}" in str(caught.value)
    assert "fix or unset it" in str(caught.value)


def test_empty_environment_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YADTQ_PARTITIONS", "")

    assert resolve_config(bootstrap="a:1", redis_url="redis://b").partitions == 12


@pytest.mark.parametrize("queue", ["has space", "slash/y", "", "x" * 101, "ünï"])
def test_invalid_queue_name_is_rejected(queue: str) -> None:
    with pytest.raises(ConfigurationError, match="queue name .* is not valid"):
        resolve_config(bootstrap="a:1", redis_url="redis://b", queue=queue)


def test_invalid_queue_name_from_environment_is_rejected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("YADTQ_QUEUE", "bad queue")

    with pytest.raises(ConfigurationError, match="'bad queue' is not valid"):
        resolve_config(bootstrap="a:1", redis_url="redis://b")


def test_unknown_setting_is_rejected_listing_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_config(bootstrap="a:1", redis_url="redis://b", partitons=3)

    assert "unknown setting(s) partitons" in str(caught.value)
    assert "partitions" in str(caught.value).split("known:")[1]


def test_lease_must_outlast_the_heartbeat_interval() -> None:
    with pytest.raises(ConfigurationError, match="lease_seconds .* must be longer"):
        Config(bootstrap="a:1", redis_url="redis://b", lease_seconds=2, heartbeat_interval=2)


def test_partitions_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="partitions must be at least 1"):
        resolve_config(bootstrap="a:1", redis_url="redis://b", partitions=0)


def test_topics_and_group_are_named_after_the_queue() -> None:
    config = Config(bootstrap="a:1", redis_url="redis://b", queue="jobs")

    assert config.tasks_topic == "yadtq.jobs.tasks"
    assert config.dead_letter_topic == "yadtq.jobs.dlq"
    assert config.consumer_group == "yadtq.jobs.workers"


def test_config_is_frozen_and_overrides_make_a_copy() -> None:
    config = Config(bootstrap="a:1", redis_url="redis://b")

    changed = config.with_overrides(queue="other", partitions=None)

    assert changed.queue == "other"
    assert changed.partitions == config.partitions
    assert config.queue == "default"
    with pytest.raises(AttributeError):
        config.queue = "x"  # type: ignore[misc]


def _run_without_servers(args: list[str], home: Path) -> subprocess.CompletedProcess:
    """Run a yadtq entry point with no YADTQ_* variables and no local stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("YADTQ_")}
    return subprocess.run([sys.executable, *args], env={**env, "YADTQ_HOME": str(home)},
                          capture_output=True, text=True, timeout=60)


def test_a_cli_user_without_servers_is_told_the_cli_options_not_python_arguments(
    clean_environment: Path,
) -> None:
    # Given no servers configured anywhere
    # When the yadtq command needs them
    run = _run_without_servers(["-m", "yadtq", "status", "some-id"], clean_environment)

    # Then it names its own options, the variables and `yadtq local up`, cleanly
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert "--bootstrap and --redis not set" in run.stderr
    assert "YADTQ_BOOTSTRAP" in run.stderr and "yadtq local up" in run.stderr
    assert "bootstrap=" not in run.stderr and "connect(" not in run.stderr


def test_a_worker_without_servers_is_told_its_options_and_variables(
    clean_environment: Path,
) -> None:
    # Given no servers configured anywhere
    # When a worker node starts
    run = _run_without_servers(["-m", "worker_node"], clean_environment)

    # Then it names its own options and the variables, not connect()
    assert run.returncode == 1
    assert "--bootstrap and --redis not set" in run.stderr
    assert "YADTQ_BOOTSTRAP and YADTQ_REDIS_URL" in run.stderr
    assert "connect(" not in run.stderr and "bootstrap=" not in run.stderr


def test_a_python_caller_without_servers_is_told_connect_arguments_and_connect_local() -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_config()

    assert "connect(bootstrap=..., redis_url=...)" in str(caught.value)
    assert "connect('local')" in str(caught.value)


def test_a_redis_url_without_scheme_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given YADTQ_REDIS_URL written as host:port
    monkeypatch.setenv("YADTQ_REDIS_URL", "localhost:6379")

    # When the settings are resolved
    with pytest.raises(ConfigurationError) as caught:
        resolve_config(bootstrap="a:1")

    # Then the error names the variable, the value and the forms that work
    text = str(caught.value)
    assert "YADTQ_REDIS_URL='localhost:6379' is not a Redis URL" in text
    assert "redis://" in text and "rediss://" in text
    assert "redis+sentinel://" in text


@pytest.mark.parametrize("url", ["localhost:6379", "http://localhost:6379", "redis:/x"])
def test_a_redis_url_argument_without_a_redis_scheme_names_the_argument(url: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"redis_url='{url}' is not a Redis URL"):
        resolve_config(bootstrap="a:1", redis_url=url)


def test_a_bad_redis_url_does_not_show_its_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Config(bootstrap="a:1", redis_url=":hunter2@localhost:6379")

    assert "hunter2" not in str(caught.value)
    assert "redis_url='***@localhost:6379'" in str(caught.value)


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://:pw@h:6380/1",
                                 "unix:///tmp/redis.sock", "redis+sentinel://h1:1,h2:2/m/0"])
def test_redis_urls_that_redis_py_takes_are_accepted(url: str) -> None:
    assert resolve_config(bootstrap="a:1", redis_url=url).redis_url == url
