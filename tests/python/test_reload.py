"""Client.reload (ec_daemon_reload): the daemon reads its configuration file again and
answers once what changed is applied, with the line it logs; an invalid file raises
InvalidArgumentError naming its first error and changes nothing."""

import pytest

import embcache


def test_reload_applies_and_refuses(make_daemon, tmp_path):
    conf = tmp_path / "embcached.conf"
    conf.write_text("budget = 32M\n")
    d = make_daemon(extra=["--config", str(conf)]).start()
    with embcache.connect(d.socket) as c:
        assert c.stats()["budget_bytes"] == 32 << 20
        conf.write_text("budget = 16M\n")
        assert c.reload() == f"config reloaded from {conf}: budget 32M -> 16M"
        assert c.stats()["budget_bytes"] == 16 << 20          # applied when answered
        conf.write_text("budget = 12X\n")
        with pytest.raises(embcache.InvalidArgumentError, match="'12X' is not a size"):
            c.reload()
        st = c.stats()
        assert st["budget_bytes"] == 16 << 20 and st["config_last_reload_ok"] == 0
