"""Runtime plugins: what they are told and what survives lmcd (issue 11, items 15, 16).

Real lmcd, real plugin processes; every wait is a bounded poll.
"""
import json
import os

from conftest import wait_for
from test_plugins import ENV, read_json_file, write


def test_no_http_plugins_get_no_http_config(lmcd_factory, tmp_path):
    out = tmp_path / "cfg.json"
    path = write(tmp_path / "cfg.py",
                 "import os\n"
                 f"open({str(out)!r} + '.tmp', 'w').write(os.environ['LMCACHE_RUNTIME_PLUGIN_CONFIG'])\n"
                 f"os.rename({str(out)!r} + '.tmp', {str(out)!r})\n")
    srv = lmcd_factory(["--no-http", "--runtime-plugin-locations", path], env=ENV)
    cfg = read_json_file(str(out))
    assert "http_config" not in cfg, cfg.get("http_config")
    assert list(cfg)[:3] == ["mp_config", "storage_manager_config", "obs_config"]
    assert srv.stop() == 0


def test_worker_id_in_a_file_name_does_not_skip_it_in_mp_mode(lmcd_factory, tmp_path):
    """LMCache's newest RuntimePluginLauncher skips no file when role is None (MP mode):
    `ROLE_WORKERID_NAME` names such as foo_1_bar.py run like any other."""
    names = ["foo_1_bar.py", "worker_1_test.sh", "x_007_y.py", "worker_0_test.sh", "plain.py"]
    for n in names:
        marker = tmp_path / (n + ".ran")
        if n.endswith(".py"):
            write(tmp_path / n, f"open({str(marker)!r}, 'w').write('1')\n")
        else:
            write(tmp_path / n, f"echo 1 > {marker}\n")
    srv = lmcd_factory(["--runtime-plugin-locations", str(tmp_path)], env=ENV)
    for n in names:
        wait_for(lambda n=n: (tmp_path / (n + ".ran")).exists(), 10, what=f"{n} ran")
    assert "is skipping plugin" not in srv.log()
    srv.stop()
