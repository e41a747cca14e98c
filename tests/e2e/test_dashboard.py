"""The live dashboard: served from the binary at /dashboard (and at / for a
browser), self-contained, and rendering the numbers /status has. A bounded
load runs first; headless Chromium then opens the page, lets it refresh,
and we compare what it shows with /status and save a screenshot under the
test's output directory (tmp_path/dashboard.png)."""
import os
import re
import shutil
import subprocess
import urllib.request
from html.parser import HTMLParser

import pytest

from conftest import wait_for
from lmcd_client import Client, ed_payload, http_json
from obs_load import run_load, server_args


def get(url, accept=None, headers=None):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=5) as r:
        if headers is not None:
            headers.update(r.headers)
        return r.status, r.headers.get("Content-Type"), r.read().decode()


def test_dashboard_is_served_self_contained(lmcd):
    hdrs = {}
    code, ctype, page = get(lmcd.http + "/dashboard", headers=hdrs)
    assert code == 200 and ctype.startswith("text/html")
    # the browser enforces it in the Chromium test below: the page works under it
    assert "default-src 'none'" in hdrs["Content-Security-Policy"] and "connect-src 'self'" in hdrs[
        "Content-Security-Policy"]
    assert "<canvas" in page and "fetch(\"/status\"" in page
    # nothing from another origin: no CDN, no external font or script
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page), "external resource"
    assert "@import" not in page and "url(" not in page
    # / is JSON for probes and scripts, the page for a browser
    _, ctype, body = get(lmcd.http + "/")
    assert ctype == "application/json" and '"LMCache HTTP API"' in body
    _, ctype, body = get(lmcd.http + "/", accept="text/html,application/xhtml+xml,*/*;q=0.8")
    assert ctype.startswith("text/html") and body == page
    _, ctype, _ = get(lmcd.http + "/", accept="application/json, text/html")
    assert ctype == "application/json"


class Values(HTMLParser):
    """data-k="name" -> text, and the body's data-ready counter."""

    def __init__(self):
        super().__init__()
        self.values, self.ready, self._open = {}, 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.ready = int(a.get("data-ready") or 0)
        self._open.append(a.get("data-k"))
        if a.get("data-k"):
            self.values.setdefault(a["data-k"], "")

    def handle_endtag(self, tag):
        if self._open:
            self._open.pop()

    def handle_data(self, data):
        for k in self._open:
            if k:
                self.values[k] = self.values.get(k, "") + data


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium (Debian package chromium; mk/deps.sh installs it)")


def run_chromium(args, tmp_path, timeout=90):
    exe = chromium()
    # --no-sandbox: CI runs tests as root, where Chromium's sandbox refuses to start
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium-profile'}"] + args
    env = dict(os.environ, HOME=str(tmp_path))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within {timeout}s")
    if r.returncode != 0 and not r.stdout:
        pytest.skip(f"chromium cannot run here (exit {r.returncode}): {r.stderr.strip()[-400:]}")
    return r


def test_dashboard_in_headless_chromium_matches_status(lmcd_factory, tmp_path):
    plugdir = tmp_path / "plugins"
    plugdir.mkdir()
    (plugdir / "hello.sh").write_text("#!/bin/sh\necho hello from a plugin\necho second line\nexec sleep 60\n")
    (plugdir / "hello.sh").chmod(0o755)
    srv = lmcd_factory(server_args(["--runtime-plugin-locations", str(plugdir)]))
    done = run_load(srv.url, rounds=30)
    with Client(srv.url, timeout=10.0) as c:
        assert c.register_ed(ed_payload(7, model="obs/model-a", chunk_size=16))["shm_name"]
    wait_for(lambda: "second line" in str(http_json(srv.http, "/plugins")), 10, what="plugin output")
    st = http_json(srv.http)
    url = srv.http + "/dashboard"
    # virtual time lets the page's 1 s refresh run a few times without waiting for real
    r = run_chromium(["--virtual-time-budget=4000", "--dump-dom", url], tmp_path)
    v = Values()
    v.feed(r.stdout)
    assert v.ready >= 2, f"the page refreshed from /status at least twice:\n{r.stdout[:2000]}"
    l1 = st["storage_manager"]["l1_manager"]
    # the load is over: these numbers are stable between our /status and the page's
    assert v.values["l1.objects"] == str(l1["total_object_count"]) != "0"
    assert v.values["l1.used"] == str(l1["memory_used_bytes"])
    assert v.values["l1.total"] == str(l1["memory_total_bytes"])
    assert v.values["sessions"] == str(st["active_sessions"])
    assert v.values["workers"] == str(len(st["engine_driven_instances"]))
    assert v.values["lookup_chunks"] == str(st["counters"]["lookup_chunks"]) == str(done["requested_chunks"])
    assert v.values["hit_chunks"] == str(st["counters"]["lookup_hit_chunks"]) == str(done["hit_chunks"])
    assert v.values["version"] == st["server"]["version"]
    assert v.values["op.lookup"] == str(st["server"]["requests"]["lookup"]) == "30"
    assert v.values["op.lmcd.store_inline"] == "30"
    assert v.values["bad_total"] == "1"
    assert v.values["workers"] == "1"
    assert "hello.sh" in r.stdout and "second line" in r.stdout and ">running<" in r.stdout

    shot = tmp_path / "dashboard.png"
    run_chromium(["--virtual-time-budget=4000", "--window-size=1400,1300", f"--screenshot={shot}", url], tmp_path)
    assert shot.exists() and shot.stat().st_size > 10000, "a screenshot with content"
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("LMCD_TEST_ARTIFACTS")
    if keep:  # CI or a person may want to look at it
        os.makedirs(keep, exist_ok=True)
        shutil.copy(shot, os.path.join(keep, "dashboard.png"))
    srv.stop()
