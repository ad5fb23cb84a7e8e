"""roost.config: the TOML file becomes typed settings, or one ConfigError naming every problem."""

from dataclasses import FrozenInstanceError, dataclass, field
from pathlib import Path
from textwrap import dedent

import pytest

from roost import config
from roost.config import HubSettings, RetentionRule, Secret, Settings, StoreSettings, load_config
from roost.errors import ConfigError

FULL = """\
[hub]
data = "/var/lib/roost"
listen = "0.0.0.0:9090"
log_level = "debug"
site = "cabin"

[store]
max_series = 500
compact_interval = "5m"
fsync = false
max_buffered = 0

[[store.retention]]
match = 'power_watts{meter="m1"}'
keep = "2y"
raw = "90d"

[[store.retention]]
match = '{room=~"lounge|hall"}'
raw = "1h30m"
"""


def write(text: str, path: Path = Path("roost.toml")) -> Path:
    """Write a config file, by default `roost.toml` in the working directory, as users run roost."""
    path.write_text(dedent(text))
    return path


def problems(path: Path, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, **kwargs)
    return caught.value.problems


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in tmp_path so error messages name a plain `roost.toml`, as users see them."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_no_file_gives_all_defaults():
    settings = load_config(None)

    assert settings.source_file is None
    assert settings.hub == HubSettings(data=Path("roost-data"), listen="127.0.0.1:8080", log_level="info", site="")
    assert (settings.hub.listen_host, settings.hub.listen_port) == ("127.0.0.1", 8080)
    assert settings.store == StoreSettings(
        max_series=10_000, compact_interval_ms=15 * 60_000, fsync=True, max_buffered=100_000, retention=[]
    )


def test_an_empty_file_gives_the_same_defaults_as_no_file(in_tmp):
    assert load_config(write("")) == Settings(source_file=Path("roost.toml"))


def test_a_full_file_becomes_typed_settings(in_tmp):
    settings = load_config(write(FULL))

    assert settings.source_file == Path("roost.toml")
    assert settings.hub.data == Path("/var/lib/roost")
    assert (settings.hub.listen_host, settings.hub.listen_port) == ("0.0.0.0", 9090)
    assert settings.hub.log_level == "debug"
    assert settings.hub.site == "cabin"
    assert settings.store.max_series == 500
    assert settings.store.compact_interval_ms == 300_000
    assert settings.store.fsync is False
    assert settings.store.max_buffered == 0
    assert settings.store.retention == [
        RetentionRule(match='power_watts{meter="m1"}', keep_ms=2 * 365 * 86_400_000, raw_ms=90 * 86_400_000),
        RetentionRule(match='{room=~"lounge|hall"}', keep_ms=None, raw_ms=5_400_000),
    ]


def test_settings_are_frozen():
    settings = load_config(None)
    with pytest.raises(FrozenInstanceError):
        settings.hub.site = "x"  # type: ignore[misc]


def test_ipv6_listen_address_is_split_without_brackets(in_tmp):
    settings = load_config(write('[hub]\nlisten = "[::1]:8443"\n'))
    assert (settings.hub.listen_host, settings.hub.listen_port) == ("::1", 8443)


@pytest.mark.parametrize("listen", ["8080", "localhost:", "localhost:65536", "[not-v6]:80", "a b:80"])
def test_listen_must_be_host_colon_port(in_tmp, listen):
    assert problems(write(f'[hub]\nlisten = "{listen}"\n')) == [
        f'roost.toml:2: hub.listen: expected host:port like "127.0.0.1:8080" (port 0-65535), got "{listen}"'
    ]


# ---------------------------------------------------------------- data directory


def test_relative_data_in_the_file_is_relative_to_the_file(in_tmp):
    (in_tmp / "etc").mkdir()
    write('[hub]\ndata = "db"\n', Path("etc/roost.toml"))
    assert load_config(Path("etc/roost.toml")).hub.data == in_tmp / "etc" / "db"


def test_cli_data_dir_overrides_the_file_and_is_relative_to_the_working_directory(in_tmp):
    path = write('[hub]\ndata = "/var/lib/roost"\n')
    assert load_config(path, data_dir="elsewhere").hub.data == Path("elsewhere")
    assert load_config(None, data_dir="/srv/roost").hub.data == Path("/srv/roost")


def test_empty_cli_data_dir_is_an_error():
    with pytest.raises(ConfigError, match="--data: expected a directory path"):
        load_config(None, data_dir="")


# ---------------------------------------------------------------- errors


def test_bad_duration_names_file_line_key_and_the_expected_form(in_tmp):
    path = write("""\
        # roost settings

        [store]
        max_series = 10
        compact_interval = "fast"
        """)
    assert problems(path) == [
        'roost.toml:5: store.compact_interval: expected a duration like "15s" or "500ms", got "fast"'
    ]


def test_durations_must_be_strings_with_a_unit(in_tmp):
    assert problems(write("[store]\ncompact_interval = 60\n")) == [
        'roost.toml:2: store.compact_interval: expected a duration like "15s" or "500ms", got 60 '
        "(write it as a quoted string with a unit)"
    ]


def test_unknown_key_suggests_the_closest_known_key(in_tmp):
    assert problems(write("[store]\nmax_serie = 5\n")) == [
        'roost.toml:2: store.max_serie: unknown key (did you mean "max_series"?)'
    ]


def test_unknown_key_without_a_close_match_lists_the_known_keys(in_tmp):
    assert problems(write('[hub]\ncolour = "red"\n')) == [
        "roost.toml:2: hub.colour: unknown key (known keys: data, listen, log_level, site, tls_cert_file, tls_key_file, query_cache_mb)"
    ]


def test_unknown_section_is_reported_at_its_header(in_tmp):
    assert problems(write('[hubb]\nsite = "x"\n')) == [
        'roost.toml:1: hubb: unknown key (did you mean "hub"?)'
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('max_series = "ten"', 'store.max_series: expected an integer, got "ten"'),
        ("max_series = 1.5", "store.max_series: expected an integer, got 1.5"),
        ("max_series = true", "store.max_series: expected an integer, got true"),
        ('fsync = "yes"', 'store.fsync: expected true or false, got "yes"'),
        ("fsync = 1", "store.fsync: expected true or false, got 1"),
        ("retention = 3", "store.retention: expected an array, got 3"),
        ("max_series = 0", "store.max_series: expected at least 1, got 0"),
        ("max_buffered = -1", "store.max_buffered: expected at least 0, got -1"),
        ('compact_interval = "500ms"', 'store.compact_interval: expected at least "1s", got "500ms"'),
    ],
)
def test_wrong_types_and_out_of_range_values_say_what_was_expected(in_tmp, line, message):
    assert problems(write(f"[store]\n{line}\n")) == [f"roost.toml:2: {message}"]


def test_a_section_that_is_not_a_table(in_tmp):
    assert problems(write('hub = "x"\n')) == ['roost.toml:1: hub: expected a table, got "x"']


def test_bad_enum_lists_the_choices(in_tmp):
    assert problems(write('[hub]\nlog_level = "verbose"\n')) == [
        'roost.toml:2: hub.log_level: expected one of "debug", "info", "warning", "error", got "verbose"'
    ]


def test_missing_file_is_named():
    assert problems(Path("/nonexistent/roost.toml")) == [
        "/nonexistent/roost.toml: cannot read the config file (No such file or directory)"
    ]


def test_toml_syntax_error_names_the_line(in_tmp):
    (problem,) = problems(write('[hub]\nsite = "a"\nlisten = \n'))
    assert problem.startswith("roost.toml:3: invalid TOML at column ")


def test_list_of_tables_index_is_in_the_key_path(in_tmp):
    path = write("""\
        [store]
        fsync = true

        [[store.retention]]
        match = "a"
        keep = "1d"

        [[store.retention]]
        match = "b"
        keep = "forever"
        """)
    assert problems(path) == [
        'roost.toml:10: store.retention[1].keep: expected a duration like "15s" or "500ms", got "forever"'
    ]


def test_missing_required_key_points_at_its_table(in_tmp):
    path = write('[[store.retention]]\nmatch = "a"\n\n[[store.retention]]\nkeep = "1d"\n')
    assert problems(path) == ["roost.toml:4: store.retention[1].match: missing required key"]


def test_retention_match_must_be_a_plain_series_selector(in_tmp):
    path = write("""\
        [[store.retention]]
        match = 'rate(power_watts[5m])'

        [[store.retention]]
        match = 'power_watts{'
        """)
    assert problems(path) == [
        'roost.toml:2: store.retention[0].match: expected a series selector like power_watts{meter="m1"}, '
        'got "rate(power_watts[5m])" (no functions, operators, ranges, offsets or @)',
        'roost.toml:5: store.retention[1].match: expected a series selector like power_watts{meter="m1"}, '
        'got "power_watts{" (unexpected end of input inside braces)',
    ]


def test_retention_raw_must_not_outlive_keep(in_tmp):
    path = write('[[store.retention]]\nmatch = "x"\nkeep = "30d"\nraw = "90d"\n')
    assert problems(path) == ["roost.toml:4: store.retention[0].raw: must not be longer than keep (90d > 30d)"]


def test_retention_in_inline_tables_reports_the_line_of_the_array(in_tmp):
    path = write('[store]\nretention = [{ match = "x", keep = "soon" }]\n')
    assert problems(path) == [
        'roost.toml:2: store.retention[0].keep: expected a duration like "15s" or "500ms", got "soon"'
    ]


def test_every_problem_is_reported_at_once_in_file_order(in_tmp):
    path = write("""\
        store.max_series = "many"
        store . "fsync" = "no"

        [hub]
        log_level = "loud"
        listen = "nowhere"
        extra = 1

        [[store.retention]]
        keep = "1x"
        """)
    assert problems(path) == [
        'roost.toml:1: store.max_series: expected an integer, got "many"',
        'roost.toml:2: store.fsync: expected true or false, got "no"',
        'roost.toml:5: hub.log_level: expected one of "debug", "info", "warning", "error", got "loud"',
        'roost.toml:6: hub.listen: expected host:port like "127.0.0.1:8080" (port 0-65535), got "nowhere"',
        "roost.toml:7: hub.extra: unknown key (known keys: data, listen, log_level, site, tls_cert_file, tls_key_file, query_cache_mb)",
        "roost.toml:9: store.retention[0].match: missing required key",
        'roost.toml:10: store.retention[0].keep: expected a duration like "15s" or "500ms", got "1x"',
    ]


def test_config_error_message_is_every_problem_one_per_line(in_tmp):
    with pytest.raises(ConfigError) as caught:
        load_config(write("[store]\nmax_series = 0\nfsync = 2\n"))
    assert str(caught.value) == (
        "roost.toml:2: store.max_series: expected at least 1, got 0\n"
        "roost.toml:3: store.fsync: expected true or false, got 2"
    )


# ---------------------------------------------------------------- secrets and the generic schema
# The real sections with secrets (mqtt, backup) come later; a small schema exercises the machinery.


@dataclass(frozen=True, slots=True)
class _Broker:
    url: str
    password: Secret | None = None
    labels: dict[str, str] = field(default_factory=dict)
    timeout_ms: config.Duration = config.Duration(5000)
    weight: float = field(default=1.0, metadata={"max": 10})


@dataclass(frozen=True, slots=True)
class _Sources:
    mqtt: list[_Broker] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _WithSources(Settings):
    source: _Sources = field(default_factory=_Sources)


@pytest.fixture
def with_sources(monkeypatch):
    """Settings grown by one section, exactly as a later feature would add it."""
    monkeypatch.setattr(config, "Settings", _WithSources)


def broker(path: Path) -> _Broker:
    (first,) = load_config(path).source.mqtt
    return first


def test_a_new_section_is_a_dataclass_and_a_field(in_tmp, with_sources):
    path = write("""\
        [[source.mqtt]]
        url = "mqtt://127.0.0.1:1883"
        labels = { site = "cabin", "a.b" = "c" }
        timeout = "2s"
        weight = 3
        """)
    assert broker(path) == _Broker(
        url="mqtt://127.0.0.1:1883", labels={"site": "cabin", "a.b": "c"}, timeout_ms=2000, weight=3.0
    )
    assert isinstance(broker(path).weight, float)


def test_new_sections_get_the_same_error_reporting(in_tmp, with_sources):
    path = write("""\
        [[source.mqtt]]
        url = 1
        labels = { "a.b" = 2 }
        weight = 11
        """)
    assert problems(path) == [
        "roost.toml:2: source.mqtt[0].url: expected a string, got 1",
        'roost.toml:3: source.mqtt[0].labels."a.b": expected a string, got 2',
        "roost.toml:4: source.mqtt[0].weight: expected at most 10, got 11",
    ]


def test_secret_given_literally(in_tmp, with_sources):
    secret = broker(write('[[source.mqtt]]\nurl = "u"\npassword = "hunter2"\n')).password
    assert secret.reveal() == "hunter2"


def test_secret_never_shows_its_value(in_tmp, with_sources):
    settings = load_config(write('[[source.mqtt]]\nurl = "u"\npassword = "hunter2"\n'))
    for text in (repr(settings), str(settings.source.mqtt[0].password), f"{settings.source.mqtt[0].password}"):
        assert "hunter2" not in text
    assert repr(Secret("hunter2")) == str(Secret("hunter2")) == "Secret('***')"


def test_secret_from_a_file_relative_to_the_config_file(tmp_path, with_sources):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mqtt.pw").write_text("s3cret\n")
    path = write('[[source.mqtt]]\nurl = "u"\npassword_file = "mqtt.pw"\n', tmp_path / "conf" / "roost.toml")
    assert broker(path).password.reveal() == "s3cret"


def test_secret_from_the_environment(in_tmp, with_sources, monkeypatch):
    monkeypatch.setenv("ROOST_TEST_MQTT_PW", "from-env")
    path = write('[[source.mqtt]]\nurl = "u"\npassword_env = "ROOST_TEST_MQTT_PW"\n')
    assert broker(path).password.reveal() == "from-env"


def test_secret_problems_name_the_file_or_variable_and_never_the_value(in_tmp, with_sources, monkeypatch):
    monkeypatch.delenv("ROOST_TEST_UNSET", raising=False)
    path = write("""\
        [[source.mqtt]]
        url = "a"
        password_file = "missing.pw"

        [[source.mqtt]]
        url = "b"
        password_env = "ROOST_TEST_UNSET"

        [[source.mqtt]]
        url = "c"
        password = "x"
        password_env = "ROOST_TEST_UNSET"

        [[source.mqtt]]
        url = "d"
        password = 12345
        """)
    assert problems(path) == [
        f"roost.toml:3: source.mqtt[0].password_file: cannot read the secret file {in_tmp / 'missing.pw'} "
        "(No such file or directory)",
        "roost.toml:7: source.mqtt[1].password_env: the environment variable ROOST_TEST_UNSET is not set",
        "roost.toml:12: source.mqtt[2].password_env: give only one of password, password_file or password_env",
        "roost.toml:16: source.mqtt[3].password: expected a string, got an integer",
    ]


def test_a_required_secret_can_come_from_any_of_its_keys(in_tmp, monkeypatch):
    @dataclass(frozen=True, slots=True)
    class Backup:
        password: Secret

    @dataclass(frozen=True, slots=True)
    class WithBackup(Settings):
        backup: Backup | None = None

    monkeypatch.setattr(config, "Settings", WithBackup)
    assert problems(write("[backup]\n")) == [
        "roost.toml:1: backup.password: missing required key (or password_file / password_env)"
    ]
    monkeypatch.setenv("ROOST_TEST_BACKUP_PW", "pw")
    settings = load_config(write('[backup]\npassword_env = "ROOST_TEST_BACKUP_PW"\n'))
    assert settings.backup.password == Secret("pw")


def test_lines_inside_multiline_strings_are_not_mistaken_for_keys(in_tmp):
    path = write('''\
        [hub]
        site = """
        [store]
        max_series = 1
        """

        [store]
        max_series = 0
        ''')
    assert problems(path) == ["roost.toml:8: store.max_series: expected at least 1, got 0"]
