import signal
import socket

from procutil import Proc


def test_run_without_config_creates_data_dir_and_key_and_stops_on_sigterm(tmp_path):
    with Proc("run", "--listen", "ws://127.0.0.1:0", cwd=tmp_path) as d:
        d.wait_for(r"ready: pool")
        assert (tmp_path / "galaxynode-data" / "node.key").exists()
        assert (tmp_path / "galaxynode-data" / "registry.sqlite").exists()
        assert d.stop(signal.SIGTERM) == 0
        assert "stopped" in d.output
        assert "Traceback" not in d.output


def test_sd_notify_ready_and_stopping(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(20)
    with sock, Proc("run", "--listen", "ws://127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
                    env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"}) as d:
        got = []
        while not any(b"READY=1" in m for m in got):
            got.append(sock.recv(4096))
        ready = next(m for m in got if b"READY=1" in m)
        assert b"STATUS=" in ready
        while not any(b"WATCHDOG=1" in m for m in got):
            got.append(sock.recv(4096))
        assert d.stop(signal.SIGINT) == 0
        while not any(b"STOPPING=1" in m for m in got):
            got.append(sock.recv(4096))


def test_sighup_reloads_log_level(tmp_path):
    cfg = tmp_path / "g.toml"
    cfg.write_text('[logging]\nlevel = "info"\n')
    with Proc("run", "--config", str(cfg), "--listen", "ws://127.0.0.1:0", "--data-dir", str(tmp_path / "d")) as d:
        d.wait_for("ready: pool")
        cfg.write_text('[logging]\nlevel = "debug"\n[network]\nid = "other"\n')
        d.send_signal(signal.SIGHUP)
        d.wait_for(r"reloaded: .*logging\.level")
        assert "network.id" in d.wait_for(r"changes to .* need a restart").group(0)
        cfg.write_text('[logging]\nlevel = 7\n')
        d.send_signal(signal.SIGHUP)
        d.wait_for(r"reload failed.*logging\.level")
        assert d.stop() == 0


def test_invalid_config_exits_2_with_one_line(tmp_path):
    cfg = tmp_path / "g.toml"
    cfg.write_text('[limits]\nhandshake_timeout = -1\n')
    with Proc("run", "--config", str(cfg), "--data-dir", str(tmp_path / "d")) as d:
        assert d.wait() == 2
        assert "limits.handshake_timeout" in d.output
        assert d.output.strip().count("\n") == 0


def test_port_in_use_is_one_line_and_exit_1(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with Proc("run", "--listen", f"ws://127.0.0.1:{port}", "--data-dir", str(tmp_path / "d"),
                  "--log-level", "warning") as d:
            assert d.wait() == 1
            assert "Traceback" not in d.output
            assert d.output.strip().count("\n") == 0
            assert f"failed to start: cannot listen on ws://127.0.0.1:{port}: Address already in use" in d.output


def test_gc_threshold_is_applied_for_the_daemon_and_restored():
    import gc

    from galaxynode.daemon import _gc_threshold

    before = gc.get_threshold()
    with _gc_threshold(12_345):
        assert gc.get_threshold() == (12_345, *before[1:])
    assert gc.get_threshold() == before
    with _gc_threshold(0):  # 0 keeps Python's own
        assert gc.get_threshold() == before
