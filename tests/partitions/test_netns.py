"""The topology itself (netns.py), without chatd: faults do what they say,
heal undoes them, and a run's leftovers are removed by the next one."""
import os
import subprocess
import time

import pytest

import netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def connect(topo, src, dst, port=9, timeout=2):
    """'refused' (reached: nothing listens), 'timeout' (dropped) or 'reset'.
    Where a drop is expected, 1 s is enough (a reachable peer refuses at
    once); where a refusal is, 2 s, so a loaded machine is no false drop."""
    r = topo.run(src, "timeout", str(timeout), "bash", "-c",
                 f"exec 3<>/dev/tcp/{topo.addr(dst)}/{port}", check=False)
    if r.returncode == 124:
        return "timeout"
    return "refused" if "refused" in r.stderr else r.stderr.strip() or "ok"


def test_faults_and_heal():
    # a namespace a killed run left behind is removed by the next create()
    subprocess.run(["ip", "netns", "add", netns.PREFIX + "stale"], check=True)
    topo = netns.Topology({"a": 61, "b": 62, "c": 63})
    try:
        topo.create()
        assert netns.PREFIX + "stale" not in netns.netns_list()
        assert connect(topo, "a", "b") == "refused"
        topo.cut("a", "b")
        assert connect(topo, "a", "b", timeout=1) == "timeout"
        assert connect(topo, "b", "a", timeout=1) == "timeout"
        assert connect(topo, "a", "c") == "refused"
        topo.heal()
        assert connect(topo, "a", "b") == "refused"
        topo.cut("a", "b", oneway=True)       # a's packets to b lost, b's to a not
        assert connect(topo, "a", "b", timeout=1) == "timeout"
        topo.heal()
        topo.cut("b", "a", mode="reject")
        t = time.monotonic()
        assert connect(topo, "a", "b") == "refused"   # a TCP reset, at once
        assert time.monotonic() - t < 1.5
        topo.heal()
        topo.loss(1.0, hosts=["b"])
        assert connect(topo, "a", "b", timeout=1) == "timeout"
        topo.heal()
        assert not topo.rules()
        if not topo.netem_ok():
            with pytest.raises(netns.NotSupported):
                topo.delay(100, 50)
    finally:
        topo.destroy()
    assert not [n for n in netns.netns_list() if n.startswith(netns.PREFIX)]
