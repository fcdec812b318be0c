"""``watchdogd digest --send`` to a real local SMTP server: the mail, once a week, retries."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.peers.receivers import SmtpReceiver
from tests.unit.test_digest import fill
from watchdogd.cli import main
from watchdogd.digest import week_of
from watchdogd.store import Store
from watchdogd.times import utcnow

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """A store with a week in it; returns a writer of the config whose digest goes to a URL."""
    monkeypatch.delenv("WATCHDOGD_CONFIG", raising=False)
    (tmp_path / "state-url").write_text(f"sqlite:///{tmp_path}/state.db\n")
    fill(Store(f"sqlite:///{tmp_path}/state.db"), utcnow())

    def write(url: str) -> Path:
        (tmp_path / "digest-urls.txt").write_text(url + "\n")
        path = tmp_path / "watchdogd.toml"
        path.write_text('[state]\nurl_file = "state-url"\n[notify]\nretry_after = "1s"\n'
                        '[digest]\nurls_file = "digest-urls.txt"\n')
        return path

    return write


def code(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_the_mail_arrives_once_a_week(setup: Callable[[str], Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with SmtpReceiver() as smtp:
        config = setup(smtp.url)
        assert code(["digest", "--send", "--config", str(config)]) == 0
        out = capsys.readouterr()
        title = out.out.splitlines()[0]
        assert title.startswith("watchdogd weekly digest ")
        assert title.endswith(": 5 opened, 3 resolved, 4 actions")
        assert smtp.subjects == [title]
        mail = smtp.handler.messages[0]
        # Plain text, one line per line: not HTML that a mail client runs together.
        assert mail.get_content_type() == "text/plain"
        text = mail.get_payload(decode=True).decode().replace("\r\n", "\n")
        printed = out.out.split("\n\n", 1)[1]
        assert text.strip() == printed.strip()
        for line in ("- reclaimed: 1 volume(s) deleted, 20 GiB", "- stop-server: 1 done",
                     "- quarantine: 1 done, 1 failed"):
            assert line in text.splitlines()
        assert "s3cr3t" not in text
        assert "sent to 1 destination(s)" in out.err
        # A second replica (another process) in the same week: nothing queued, nothing sent.
        other = subprocess.run([sys.executable, "-m", "watchdogd", "digest", "--send",
                                "--config", str(config)], capture_output=True, text=True,
                               timeout=120, check=False)
        assert other.returncode == 0, other.stderr
        assert f"digest {week_of(utcnow())} was already queued at" in other.stderr
        assert len(smtp.subjects) == 1


def test_an_unreachable_server_gets_it_on_a_retry(setup: Callable[[str], Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    smtp = SmtpReceiver()  # not started yet: its port refuses
    config = setup(smtp.url)
    assert code(["digest", "--send", "--config", str(config)]) == 2
    assert "1 destination(s) not reached yet" in capsys.readouterr().err
    with smtp:
        deadline = time.monotonic() + 60
        while not smtp.subjects and time.monotonic() < deadline:
            status = code(["digest", "--send", "--config", str(config)])
            assert status in (0, 2)
            time.sleep(0.5)
        assert len(smtp.subjects) == 1
        assert code(["digest", "--send", "--config", str(config)]) == 0
        assert len(smtp.subjects) == 1


@pytest.mark.parametrize(("args", "toml", "status", "message"), [
    (["--since", "last tuesday"], "", 64, "--since: neither an ISO time nor a duration"),
    (["--since", "2999-01-01T00:00:00Z"], "", 64, "is not in the past"),
    (["--send"], "", 78, "digest.urls_file: not set"),
    (["--send"], '[digest]\nurls_file = "nowhere.txt"\n', 78,
     "digest.urls_file: "),
    ([], '[digest]\nenabled = true\n', 78, "digest.urls_file: required"),
    ([], '[digest]\nschedule = "someday"\n', 78, "digest.schedule"),
])
def test_bad_input_has_its_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str], args: list[str],
                                     toml: str, status: int, message: str) -> None:
    monkeypatch.delenv("WATCHDOGD_CONFIG", raising=False)
    (tmp_path / "state-url").write_text(f"sqlite:///{tmp_path}/state.db\n")
    config = tmp_path / "w.toml"
    config.write_text('[state]\nurl_file = "state-url"\n' + toml)
    assert code(["digest", "--config", str(config), *args]) == status
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_without_send_it_only_prints(setup: Callable[[str], Path],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = setup("mailto://127.0.0.1:1?from=a@example.org&to=b@example.org")
    assert code(["digest", "--since", "36h", "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(
        ": 0 opened, 1 resolved, 0 actions")  # bob's end; the rest came before
    assert Store(f"sqlite:///{config.parent}/state.db").outbox() == []


def test_config_check_wants_the_digest_destinations_file(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    monkeypatch.delenv("WATCHDOGD_CONFIG", raising=False)
    (tmp_path / "state-url").write_text(f"sqlite:///{tmp_path}/state.db\n")
    config = tmp_path / "w.toml"
    config.write_text('[state]\nurl_file = "state-url"\n'
                      '[digest]\nenabled = true\nurls_file = "mail.txt"\n')
    assert code(["config", "check", "--config", str(config)]) == 78
    assert f"digest.urls_file: {tmp_path}/mail.txt does not exist" in capsys.readouterr().err
    (tmp_path / "mail.txt").write_text("mailto://127.0.0.1:1?to=ops@example.org\n")
    assert code(["config", "check", "--config", str(config)]) == 0


def test_beside_a_daemon_holding_the_lock_it_only_queues(setup: Callable[[str], Path],
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    with SmtpReceiver() as smtp:
        config = setup(smtp.url)
        daemon = Store(f"sqlite:///{config.parent}/state.db")
        with daemon.pass_lock() as hold:
            assert hold.held
            # The outbox has one sender: the lock's holder delivers, this run queues.
            assert code(["digest", "--send", "--config", str(config)]) == 2
            assert smtp.subjects == []
        assert "1 destination(s) not reached yet" in capsys.readouterr().err
        assert [r["event"] for r in daemon.outbox()] == ["digest"]
        assert code(["digest", "--send", "--config", str(config)]) == 0
        assert len(smtp.subjects) == 1
