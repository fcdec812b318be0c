"""The Nublado controller simulator answers as lsst-sqre/nublado does, and the source reads it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from watchdogd.config import HubConfig
from watchdogd.model import PreconditionFailed, SourceError
from watchdogd.sim.kube import KubeSim
from watchdogd.sim.nublado import NubladoSim
from watchdogd.sim.world import SimClock
from watchdogd.sources.nublado import NubladoSource


@pytest.fixture
def world() -> Iterator[tuple[KubeSim, NubladoSim, SimClock]]:
    clock = SimClock(datetime(2026, 12, 1, tzinfo=UTC))
    kube = KubeSim()
    ctl = NubladoSim(kube, clock=clock).start()
    try:
        yield kube, ctl, clock
    finally:
        ctl.stop()


def _get(ctl: NubladoSim, path: str, token: str | None = None,
         method: str = "GET") -> requests.Response:
    headers = {"Authorization": f"Bearer {token or ctl.token}"}
    return requests.request(method, f"{ctl.url}/spawner/v1/labs{path}", headers=headers,
                            timeout=5)


def _source(ctl: NubladoSim, token: str | None = None) -> NubladoSource:
    config = HubConfig.model_validate({
        "cluster": "sim", "layout": "nublado", "api_url": "http://127.0.0.1:1/hub/api",
        "nublado_url": ctl.url, "nublado_token": token or ctl.token, "timeout": "5s"})
    return NubladoSource("rsp", config)


def test_routes_statuses_and_error_bodies(world: tuple[KubeSim, NubladoSim, SimClock]) -> None:
    kube, ctl, _ = world
    ctl.add_lab("rachel")
    ctl.add_lab("pending-pat", phase="Pending")
    assert _get(ctl, "").json() == ["rachel"]  # only running labs are listed
    state = _get(ctl, "/rachel").json()
    assert state["status"] == "running" and state["pod"] == "present"
    assert state["internal_url"] == "http://rachel-nb.nublado-rachel:8888"
    assert {"user", "options", "env", "resources", "quota"} <= set(state)
    assert _get(ctl, "/pending-pat").json()["status"] == "pending"
    missing = _get(ctl, "/nobody")
    assert missing.status_code == 404
    assert missing.json() == {"detail": [{"msg": "Unknown user nobody", "type": "unknown_user",
                                          "loc": ["path", "username"]}]}
    assert _get(ctl, "/nobody", method="DELETE").status_code == 404
    assert _get(ctl, "", method="DELETE").status_code == 405
    assert requests.get(f"{ctl.base_url}/nublado/other", timeout=5).status_code == 404
    unauth = requests.get(f"{ctl.url}/spawner/v1/labs", timeout=5)
    assert unauth.status_code == 401 and "Bearer" in unauth.headers["WWW-Authenticate"]
    user_token = ctl.add_token("user-token", {"exec:notebook"})
    assert _get(ctl, "", token=user_token).status_code == 403
    deleted = _get(ctl, "/rachel", method="DELETE")
    assert deleted.status_code == 204
    assert kube.get("Namespace", "nublado-rachel") is None
    assert kube.get("Pod", "rachel-nb", "nublado-rachel") is None
    assert _get(ctl, "/rachel").status_code == 404


def test_a_delete_in_progress_is_terminating_and_a_second_delete_is_409(
        world: tuple[KubeSim, NubladoSim, SimClock]) -> None:
    _, ctl, _ = world
    ctl.add_lab("rachel")
    release = ctl.hold_delete("rachel")
    first: list[int] = []
    thread = threading.Thread(target=lambda: first.append(
        _get(ctl, "/rachel", method="DELETE").status_code))
    thread.start()
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while (ctl.state("rachel") or {}).get("status") != "terminating":
            assert datetime.now(UTC) < deadline, "the delete never began"
            threading.Event().wait(0.01)
        state = _get(ctl, "/rachel").json()
        assert state["status"] == "terminating" and state["internal_url"] is None
        second = _get(ctl, "/rachel", method="DELETE")
        assert second.status_code == 409
        assert second.json()["detail"][0]["type"] == "operation_in_progress"
        with pytest.raises(PreconditionFailed, match="409"):
            _source(ctl).delete_lab("rachel")
    finally:
        release.set()
        thread.join(10)
    assert first == [204]


def test_memory_lags_kubernetes_until_the_reconcile(
        world: tuple[KubeSim, NubladoSim, SimClock]) -> None:
    kube, ctl, clock = world
    ctl.add_lab("rachel")
    ctl.add_lab("sam")
    kube.delete("Pod", "rachel-nb", "nublado-rachel")  # a node drain, behind its back
    clock.advance(minutes=59)
    assert _get(ctl, "").json() == ["rachel", "sam"]  # memory still says running
    clock.advance(minutes=1)
    assert _get(ctl, "").json() == ["sam"]  # the hourly reconcile ran before answering
    assert ctl.reconciles == 1
    assert _get(ctl, "/rachel").status_code == 404  # failed, then deleted as completed
    assert kube.get("Namespace", "nublado-rachel") is None
    # A lab found in Kubernetes that memory lacks (a controller restart) is adopted.
    ctl.forget("sam")
    assert _get(ctl, "").json() == []
    ctl.reconcile()
    assert _get(ctl, "").json() == ["sam"]


def test_a_failed_delete_is_a_500_and_leaves_the_lab_failed(
        world: tuple[KubeSim, NubladoSim, SimClock]) -> None:
    _, ctl, _ = world
    ctl.add_lab("rachel")
    ctl.fail_deletes()
    response = _get(ctl, "/rachel", method="DELETE")
    assert response.status_code == 500
    assert response.json()["detail"][0]["type"] == "delete_failed"
    assert (ctl.state("rachel") or {})["status"] == "failed"
    with pytest.raises(SourceError, match="500"):
        _source(ctl).delete_lab("rachel")


def test_the_source_reads_without_env_and_names_the_token_file(
        world: tuple[KubeSim, NubladoSim, SimClock]) -> None:
    _, ctl, _ = world
    ctl.add_lab("rachel")
    token = str(ctl.state("rachel")["env"]["JUPYTERHUB_API_TOKEN"])  # type: ignore[index]
    source = _source(ctl)
    assert source.running_labs() == ["rachel"]
    lab = source.lab("rachel")
    assert lab is not None and lab["status"] == "running" and lab["user"] == "rachel"
    assert "env" not in lab and token not in repr(lab)
    assert lab["options"] == {"image_list": "ghcr.io/lsst-sqre/sciplat-lab:w_2026_47",
                              "size": "medium"}
    assert source.lab("nobody") is None
    with pytest.raises(PreconditionFailed, match="404"):
        source.delete_lab("nobody")
    assert source.delete_lab("rachel") == "lab deleted (204)"
    bad = _source(ctl, token="wrong-token-value")
    with pytest.raises(SourceError) as failed:
        bad.running_labs()
    assert "nublado_token_file" in str(failed.value)
    assert "wrong-token-value" not in str(failed.value)


class _Garbage(NubladoSim):
    """A controller (or something in front of it) that answers nonsense."""

    answer: object = None

    def handle(self, req: Any) -> Any:
        from watchdogd.sim._http import Response

        return Response.json(200, self.answer)


@pytest.mark.parametrize(("call", "answer", "cause"), [
    ("running_labs", {"labs": ["a"]}, "not a list of usernames"),
    ("running_labs", ["a", 7], "not a list of usernames"),
    ("lab", {"status": "sleeping", "user": {"username": "rachel"}}, "no known status"),
    ("lab", {"status": "running", "user": {"username": "mallory"}}, "another user's"),
])
def test_answers_that_are_no_lab_state_are_source_errors(
        call: str, answer: object, cause: str) -> None:
    ctl = _Garbage(KubeSim())
    ctl.answer = answer
    with ctl:
        source = _source(ctl)
        with pytest.raises(SourceError, match=cause):
            if call == "lab":
                source.lab("rachel")
            else:
                source.running_labs()
