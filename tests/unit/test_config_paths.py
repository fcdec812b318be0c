"""Paths and the state URL in the configuration.

Relative paths resolve against the config file's folder (not the working directory), every
file problem names the setting and the path, and a state URL that cannot work is a
configuration error (exit 78, one line) that never shows the URL's password.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from watchdogd.app import load_config
from watchdogd.cli import EXIT_CONFIG
from watchdogd.config import ConfigError, redact_url
from watchdogd.model import SourceError
from watchdogd.sources.kube import api_client

REPO = Path(__file__).resolve().parents[2]

KUBECONFIG = """\
apiVersion: v1
kind: Config
current-context: js2
clusters: [{name: js2, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: js2, user: {token: kube-token-never-shown}}]
contexts: [{name: js2, context: {cluster: js2, user: js2}}]
"""

CLOUDS = '{"clouds": {"js2": {"auth_type": "none", "block_storage_endpoint_override": "x"}}}'


@pytest.fixture
def etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config folder with relative references, and a different working directory."""
    for key in list(os.environ):
        if key.startswith("WATCHDOGD_"):
            monkeypatch.delenv(key)
    folder = tmp_path / "etc"
    (folder / "secrets").mkdir(parents=True)
    (folder / "kube.yaml").write_text(KUBECONFIG)
    (folder / "clouds.yaml").write_text(CLOUDS)
    (folder / "secrets" / "token").write_text("hub-token\n")
    (folder / "secrets" / "state-url").write_text("sqlite:///state/watchdogd.db\n")
    (folder / "state").mkdir()
    (folder / "watchdogd.toml").write_text(
        '[state]\nurl_file = "secrets/state-url"\n'
        '[clusters.js2]\nkubeconfig = "kube.yaml"\ncontext = "js2"\n'
        '[hubs.main]\ncluster = "js2"\napi_url = "http://hub:8081/hub/api"\n'
        'api_token_file = "secrets/token"\n'
        '[clouds.js2]\ncloud = "js2"\nclouds_yaml = "clouds.yaml"\n')
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return folder


def run_cli(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOGD_")}
    clean["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "watchdogd", *args], capture_output=True,
                          text=True, timeout=120, env={**clean, **(env or {})},
                          cwd=cwd or REPO, check=False)


def problems(path: Path, *, check_files: bool = True) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, check_files=check_files)
    return info.value.problems


# -- relative paths --------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(etc: Path) -> None:
    config = load_config(etc / "watchdogd.toml", check_files=True)
    assert config.clusters["js2"].kubeconfig == str(etc / "kube.yaml")
    assert config.clouds["js2"].clouds_yaml == str(etc / "clouds.yaml")
    assert config.hubs["main"].api_token_file == str(etc / "secrets" / "token")
    assert config.state.url_file == str(etc / "secrets" / "state-url")
    # A relative SQLite state database is a file of the config folder too.
    assert config.state.resolved_url() == f"sqlite:///{etc}/state/watchdogd.db"


def test_a_relative_config_path_still_resolves_to_its_folder(
        etc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(etc.parent)
    config = load_config(Path("etc") / "watchdogd.toml")
    assert config.clusters["js2"].kubeconfig == str(etc / "kube.yaml")


def test_home_and_absolute_paths_are_kept(etc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(etc))
    text = (etc / "watchdogd.toml").read_text()
    (etc / "watchdogd.toml").write_text(
        text.replace('kubeconfig = "kube.yaml"', 'kubeconfig = "~/kube.yaml"')
        .replace('clouds_yaml = "clouds.yaml"', f'clouds_yaml = "{etc}/clouds.yaml"'))
    config = load_config(etc / "watchdogd.toml", check_files=True)
    assert config.clusters["js2"].kubeconfig == str(etc / "kube.yaml")
    assert config.clouds["js2"].clouds_yaml == str(etc / "clouds.yaml")


def test_missing_files_are_named_with_their_path(etc: Path) -> None:
    (etc / "kube.yaml").unlink()
    (etc / "clouds.yaml").unlink()
    found = problems(etc / "watchdogd.toml")
    assert f"clusters.js2.kubeconfig: {etc / 'kube.yaml'}: no such file" in found
    assert f"clouds.js2.clouds_yaml: {etc / 'clouds.yaml'}: no such file" in found
    # Without check_files (check, run) the load succeeds: the source reports it instead.
    assert load_config(etc / "watchdogd.toml").clusters["js2"].kubeconfig == str(
        etc / "kube.yaml")


def test_bad_file_contents_are_named_without_their_content(etc: Path) -> None:
    (etc / "kube.yaml").write_text("")
    assert problems(etc / "watchdogd.toml") == [
        f"clusters.js2.kubeconfig: {etc / 'kube.yaml'}: empty or not a YAML mapping"]
    (etc / "kube.yaml").write_text("token: kube-token-never-shown\ncontexts: [unclosed\n")
    (found,) = problems(etc / "watchdogd.toml")
    assert found == f"clusters.js2.kubeconfig: {etc / 'kube.yaml'}: not valid YAML"
    assert "kube-token-never-shown" not in found
    (etc / "kube.yaml").write_text(KUBECONFIG.replace("name: js2, context", "name: x, context"))
    assert problems(etc / "watchdogd.toml") == [
        f"clusters.js2.context: {etc / 'kube.yaml'}: no context named 'js2'"]
    (etc / "kube.yaml").write_text(KUBECONFIG)
    (etc / "clouds.yaml").write_text('{"clouds": {"other": {}}}')
    assert problems(etc / "watchdogd.toml") == [
        f"clouds.js2.cloud: {etc / 'clouds.yaml'}: no cloud named 'js2'"]


def test_the_kube_source_names_a_missing_kubeconfig(etc: Path) -> None:
    config = load_config(etc / "watchdogd.toml")
    (etc / "kube.yaml").unlink()
    with pytest.raises(SourceError) as info:
        api_client("js2", config.clusters["js2"])
    assert info.value.cause == ("cannot load the cluster credentials: clusters.js2.kubeconfig: "
                                f"{etc / 'kube.yaml'}: no such file")


def test_config_check_from_another_folder(etc: Path, tmp_path: Path) -> None:
    result = run_cli("config", "check", "--config", str(etc / "watchdogd.toml"),
                     cwd=tmp_path / "cwd")
    assert result.returncode == 0, result.stderr
    (etc / "kube.yaml").unlink()
    result = run_cli("config", "check", "--config", str(etc / "watchdogd.toml"),
                     cwd=tmp_path / "cwd")
    assert result.returncode == EXIT_CONFIG
    assert result.stderr.strip().splitlines() == [
        f"watchdogd: config: clusters.js2.kubeconfig: {etc / 'kube.yaml'}: no such file"]


# -- the state URL ---------------------------------------------------------------------------

BROKEN_URLS = [
    # (url, the start of the problem, the password that must never show)
    ("postgresql://wd:s3cret@db.example:54x32/wd", "state.url: cannot parse", "s3cret"),
    ("postgresql://wd:s3cret@db.example:99999/wd", "state.url: port 99999 out of range",
     "s3cret"),
    ("nosuchdb://wd:s3cret@db.example/wd", "state.url: unknown database driver 'nosuchdb'",
     "s3cret"),
    ("postgresql+nodriver://wd:s3cret@db/wd",
     "state.url: unknown database driver 'postgresql+nodriver'", "s3cret"),
    ("s3cret-without-a-scheme", "state.url: not a database URL", "s3cret"),
    ("sqlite://wd:s3cret@somehost/state.db", "state.url: a SQLite URL has no host",
     "s3cret"),
    # An unescaped @ (and : and /) in the password: the LAST @ ends the user information.
    ("postgresql://wd:p@ss:w/rd@db.example:5x/wd", "state.url: cannot parse", "ss:w/rd"),
]


@pytest.mark.parametrize(("url", "expected", "password"), BROKEN_URLS)
def test_broken_state_urls_are_config_errors(url: str, expected: str, password: str,
                                             tmp_path: Path) -> None:
    (tmp_path / "state-url").write_text(url + "\n")
    config = tmp_path / "watchdogd.toml"
    config.write_text('[state]\nurl_file = "state-url"\n')
    for command in (["config", "check"], ["check"], ["run"]):
        result = run_cli(*command, "--config", str(config))
        assert result.returncode == EXIT_CONFIG, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (command, lines)
        assert lines[0].startswith(f"watchdogd: config: {expected}"), (command, lines)
        assert password not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr


def test_a_broken_state_url_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "watchdogd.toml"
    config.write_text("[state]\n")
    result = run_cli("check", "--config", str(config),
                     env={"WATCHDOGD_STATE__URL": "postgresql://u:hunter2@h:port/db"})
    assert result.returncode == EXIT_CONFIG
    assert "hunter2" not in result.stderr
    assert "state.url" in result.stderr


def test_a_missing_sqlite_directory(tmp_path: Path) -> None:
    (tmp_path / "state-url").write_text(f"sqlite:///{tmp_path}/nowhere/state.db\n")
    config = tmp_path / "watchdogd.toml"
    config.write_text('[state]\nurl_file = "state-url"\n')
    for command in (["config", "check"], ["check"]):
        result = run_cli(*command, "--config", str(config))
        assert result.returncode == EXIT_CONFIG, (command, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert f"{tmp_path}/nowhere" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_a_directory_as_the_sqlite_database(tmp_path: Path) -> None:
    (tmp_path / "state-url").write_text(f"sqlite:///{tmp_path}\n")
    (tmp_path / "watchdogd.toml").write_text('[state]\nurl_file = "state-url"\n')
    assert problems(tmp_path / "watchdogd.toml") == [
        f"state.url: {tmp_path} is a directory, not a database file"]


def test_an_at_in_the_password_reaches_the_driver_intact(tmp_path: Path) -> None:
    """The Store parses the normalized URL: host ``db.example``, not ``ss@db.example``."""
    import sqlalchemy as sa

    (tmp_path / "state-url").write_text("postgresql://wd:p@ss@db.example:5432/wd\n")
    (tmp_path / "watchdogd.toml").write_text('[state]\nurl_file = "state-url"\n')
    url = sa.make_url(load_config(tmp_path / "watchdogd.toml").state.resolved_url())
    assert (url.username, url.password, url.host, url.port) == ("wd", "p@ss", "db.example",
                                                                5432)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://wd:s3cret@db/wd", "postgresql://wd:***@db/wd"),
    ("postgresql://wd:p@ss@db/wd", "postgresql://wd:***@db/wd"),
    ("postgresql://wd:a:b/c?d@db:5432/wd?sslmode=require",
     "postgresql://wd:***@db:5432/wd?sslmode=require"),
    ("postgresql://wd@db/wd", "postgresql://wd@db/wd"),
    ("sqlite:////var/lib/watchdogd/state.db", "sqlite:////var/lib/watchdogd/state.db"),
    ("no-scheme-maybe-a-password", "<not a URL>"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_paths_in_a_checks_section_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "watchdogd.toml").write_text(
        '[checks.certs]\nfiles = ["pki/ca.crt", "/etc/kubernetes/pki"]\n'
        'kubeconfigs = ["admin.conf"]\n')
    config = load_config(tmp_path / "watchdogd.toml")
    certs = config.checks["certs"]
    assert certs["files"] == [str(tmp_path / "pki/ca.crt"), "/etc/kubernetes/pki"]
    assert certs["kubeconfigs"] == [str(tmp_path / "admin.conf")]
