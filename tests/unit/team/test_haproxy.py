"""pipelines/team/haproxy.py: the fleet's HAProxy configuration and runtime commands, as text.

The rendered configuration is also checked by HAProxy itself (`haproxy -c`), the real parser."""

import subprocess
from pathlib import Path

import pytest

from pipelines.team import haproxy
from pipelines.team.haproxy import Server

HAPROXY = "/usr/sbin/haproxy"

SERVERS = [Server("blue-0", 40001), Server("blue-1", 40002, "drain"), Server("green-0", 1, "maint")]


def test_render_binds_loopback_with_an_admin_socket_and_checks_readyz():
    text = haproxy.render(8080, "/tmp/x/haproxy.sock", SERVERS)
    lines = [line.strip() for line in text.splitlines()]
    assert "bind 127.0.0.1:8080" in lines
    assert "stats socket /tmp/x/haproxy.sock mode 600 level admin" in lines
    assert "option httpchk GET /readyz" in lines and "http-check expect status 200" in lines
    assert "balance roundrobin" in lines
    assert "server blue-0 127.0.0.1:40001" in lines
    assert "server blue-1 127.0.0.1:40002 weight 0" in lines
    assert "server green-0 127.0.0.1:1 disabled" in lines


@pytest.mark.skipif(not Path(HAPROXY).exists(), reason="Debian haproxy is not installed")
def test_haproxy_accepts_the_rendered_configuration(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy.render(8080, str(tmp_path / "s.sock"), SERVERS))
    done = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_unknown_state_is_refused():
    with pytest.raises(ValueError, match="unknown server state"):
        haproxy.render(8080, "/s", [Server("blue-0", 1, "off")])
    with pytest.raises(ValueError, match="unknown server state"):
        haproxy.state_commands(["blue-0"], "up")


def test_runtime_commands():
    assert haproxy.point_commands([Server("green-0", 40003)]) == [
        "set server replicas/green-0 addr 127.0.0.1 port 40003",
        "set server replicas/green-0 state ready",
    ]
    assert haproxy.state_commands(["blue-0", "blue-1"], "drain") == [
        "set server replicas/blue-0 state drain",
        "set server replicas/blue-1 state drain",
    ]
    assert haproxy.slot_names("green", 3) == ["green-0", "green-1", "green-2"]


def test_parse_stat_reads_server_statuses_of_the_backend_only():
    text = (
        "# pxname,svname,qcur,status,weight\n"
        "fleet,FRONTEND,,OPEN,\n"
        "replicas,blue-0,0,UP,1\n"
        "replicas,green-0,0,MAINT,1\n"
        "replicas,green-1,0,UP 1/2,1\n"
        "replicas,BACKEND,0,UP,2\n"
    )
    found = haproxy.parse_stat(text)
    assert found == {"blue-0": "UP", "green-0": "MAINT", "green-1": "UP 1/2"}
    assert haproxy.all_up(found, ["blue-0"])
    assert not haproxy.all_up(found, ["blue-0", "green-1"])  # still rising: not yet in rotation
    assert not haproxy.all_up(found, ["blue-9"])
