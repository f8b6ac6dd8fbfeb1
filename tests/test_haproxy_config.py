"""The reference HAProxy configuration (deploy/haproxy/haproxy.cfg): valid for the real HAProxy,
rendered for any number of replicas, and holding the settings the service's behaviour needs
(deploy/README.md explains each). Its behaviour under traffic is tested in test_cluster.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sessions_client.wire import CLIENT_KEY_HEADER

from cluster import haproxy

# docs/contract.md#running defaults the timeouts must fit.
BOOKMARK_S = 15.0
MAX_WAIT_S = 300.0
KEEPALIVE_S = 75.0
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def seconds(value: str) -> float:
    """An HAProxy time: milliseconds by default, or with a unit."""
    match = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", value)
    assert match, f"not an HAProxy time: {value!r}"
    return int(match[1]) * _UNITS[match[2] or "ms"]


def sections(text: str) -> dict[str, list[str]]:
    """`global`, `defaults`, `frontend sessions`, `backend by_job`... -> their lines, comments
    and blank lines dropped."""
    found: dict[str, list[str]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.strip().startswith("#") else ""
        if not line:
            continue
        if not raw[0].isspace():
            current = line
            found[current] = []
        else:
            assert current is not None, f"a setting outside any section: {raw}"
            found[current].append(line)
    return found


def reference() -> dict[str, list[str]]:
    return sections(haproxy.CONFIG.read_text(encoding="utf-8"))


def lines_starting(section: list[str], prefix: str) -> list[str]:
    return [line for line in section if line == prefix or line.startswith(prefix + " ")]


def only(section: list[str], prefix: str) -> str:
    found = lines_starting(section, prefix)
    assert len(found) == 1, f"expected one {prefix!r}, found {found}"
    return found[0]


def timeout(section: list[str], name: str) -> float:
    return seconds(only(section, f"timeout {name}").split()[-1])


def set_timeouts(section: list[str]) -> dict[str, float]:
    """`http-request set-timeout server 60s if watch` -> {"watch": 60.0}."""
    found = {}
    for line in lines_starting(section, "http-request set-timeout server"):
        words = line.split()
        assert words[4] == "if", line
        found[words[5]] = seconds(words[3])
    return found


def check_output(config: Path, env: dict[str, str] | None = None) -> str:
    if haproxy.binary() is None:
        pytest.fail(haproxy.INSTALL_HINT)
    result = haproxy.check(config, env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_reference_configuration_is_valid_without_warnings() -> None:
    output = check_output(haproxy.CONFIG)
    assert "WARNING" not in output and "ALERT" not in output, output


@pytest.mark.parametrize("replicas", [1, 2, 3, 5, 12])
def test_rendered_configuration_is_valid_for_any_number_of_replicas(tmp_path: Path, replicas: int) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy.render(replicas), encoding="utf-8")
    addresses = [f"127.0.0.1:{20000 + i}" for i in range(replicas)]
    output = check_output(config, haproxy.variables("127.0.0.1:19998", "127.0.0.1:19999", addresses))
    assert "WARNING" not in output and "ALERT" not in output, output

    rendered = sections(config.read_text(encoding="utf-8"))
    checked = lines_starting(rendered["backend by_job"], "server")
    assert checked == [f'server replica{i} "${{REPLICA_{i}}}" check' for i in range(1, replicas + 1)]
    for backend in ("backend watches", "backend spread"):
        tracking = lines_starting(rendered[backend], "server")
        assert tracking == [
            f'server replica{i} "${{REPLICA_{i}}}" track by_job/replica{i}' for i in range(1, replicas + 1)
        ]
    # Everything but the server lines is the reference, line for line.
    source = reference()
    for name, lines in rendered.items():
        assert [x for x in lines if not x.startswith("server ")] == [
            x for x in source[name] if not x.startswith("server ")
        ]


def test_render_refuses_what_it_cannot_render() -> None:
    with pytest.raises(ValueError):
        haproxy.render(0)
    with pytest.raises(ValueError, match="replica1"):
        haproxy.render(2, 'backend b\n    server replica2 "${REPLICA_2}" check\n')
    with pytest.raises(ValueError, match="REPLICA_1"):
        haproxy.render(2, "backend b\n    server replica1 127.0.0.1:1 check\n")


def test_health_checks_ask_readiness() -> None:
    config = reference()
    defaults = config["defaults"]
    assert "option httpchk" in defaults
    send = only(defaults, "http-check send").split()
    assert send[send.index("meth") + 1] == "GET" and send[send.index("uri") + 1] == "/readyz"
    assert only(defaults, "http-check expect") == "http-check expect status 200"
    for line in lines_starting(config["backend by_job"], "server"):
        assert line.endswith(" check"), line
    for backend in ("backend watches", "backend spread"):
        for line in lines_starting(config[backend], "server"):
            assert " track by_job/" in line, line
    # Down within a few seconds of a replica turning 503 (draining), which the shutdown delay
    # of `make cluster` and of deploy/README.md is sized on.
    server_defaults = " ".join(lines_starting(defaults, "default-server")).split()
    inter = seconds(server_defaults[server_defaults.index("inter") + 1])
    fastinter = seconds(server_defaults[server_defaults.index("fastinter") + 1])
    fall = int(server_defaults[server_defaults.index("fall") + 1])
    assert inter + (fall - 1) * fastinter <= 3.0


def test_a_jobs_path_is_hashed_consistently_and_lists_are_not() -> None:
    config = reference()
    frontend, by_job, spread = config["frontend sessions"], config["backend by_job"], config["backend spread"]
    assert "acl list_path path /api/v2/jobs /api/v2/jobs/" in frontend
    assert "acl job_path path_beg /api/v2/jobs/" in frontend
    assert "use_backend by_job if job_path !list_path" in frontend
    assert "acl watch urlp(watch) -m str true 1" in frontend
    assert "use_backend watches if list_path watch" in frontend
    assert "default_backend spread" in frontend
    # `balance uri` hashes the part before "?" unless told `whole`: a job's GET, its long poll
    # and its watch (?watch=true) meet on one replica.
    balance = only(by_job, "balance").split()
    assert balance[:2] == ["balance", "uri"] and "whole" not in balance
    assert only(by_job, "hash-type").split()[1] == "consistent"
    assert only(spread, "balance").split()[1] in ("leastconn", "roundrobin")
    # A collection watch's resumes meet on one replica: hashed on the key the library sends.
    watches = config["backend watches"]
    assert only(watches, "balance") == f"balance hdr({CLIENT_KEY_HEADER})"
    assert only(watches, "hash-type").split()[1] == "consistent"
    assert "X-Served-By" in only(frontend, "http-response set-header")


def test_timeouts_fit_streams_long_polls_and_keep_alive() -> None:
    config = reference()
    defaults = config["defaults"]
    # A stream is silent at most SESSIONS_BOOKMARK_S: the client side must outlast two of them.
    assert timeout(defaults, "client") > 2 * BOOKMARK_S
    assert timeout(defaults, "http-keep-alive") < KEEPALIVE_S
    plain = timeout(defaults, "server")
    assert 3 <= plain <= 30, "a plain GET answers in milliseconds; this is how long a hung replica costs"
    assert set_timeouts(config["backend by_job"])["watch"] > 2 * BOOKMARK_S
    assert timeout(config["backend watches"], "server") > 2 * BOOKMARK_S
    assert not set_timeouts(config["backend spread"]), "lists are plain requests"
    assert set_timeouts(config["backend by_job"])["long_poll"] > MAX_WAIT_S
    assert "acl watch urlp(watch) -m str true 1" in config["backend by_job"]
    assert "acl long_poll req.hdr(prefer) -m sub -i wait=" in config["backend by_job"]
    assert seconds(only(config["global"], "hard-stop-after").split()[1]) <= 60


def test_idempotent_requests_are_retried_elsewhere() -> None:
    defaults = reference()["defaults"]
    assert int(only(defaults, "retries").split()[1]) >= 2
    retry_on = set(only(defaults, "retry-on").split()[1:])
    assert {"conn-failure", "empty-response", "response-timeout"} <= retry_on
    assert only(defaults, "option redispatch") == "option redispatch 1", "every retry may go to another replica"
