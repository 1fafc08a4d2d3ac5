"""A network of hosts on one machine, for the partition tests (issue 21).

Each host is a network namespace of its own (chpt-<host>) with one veth into
a bridge that lives in a namespace too (chpt-br): nothing is added to the
machine's own namespace but the veths in transit, and every address is in
SUBNET, which the machine does not route. Processes run in their host with
`ip netns exec` (it execs, so the pid is the server's); the test process
itself enters the client host (setns on its main thread), so its clients,
kcat and Kafka's CLI reach the services over the network too, never over a
shared loopback.

Faults are iptables rules in the hosts' namespaces, in chains of their own
(PT: jumped from INPUT and OUTPUT; PTIN: from INPUT only, for loss), so heal()
is a flush: drop or reject a link, one direction only, random loss
(`statistic` match). Delay and jitter need the netem qdisc; where the kernel
has none (sch_netem is not built into this machine's kernel), delay() raises
NotSupported.

Topology.create() first removes every namespace left with PREFIX by an earlier
run that died; destroy() removes everything create() made.
"""
import ctypes
import os
import subprocess

# CHATD_NETNS_PREFIX (4 characters + "-" at most: veth names are PREFIX +
# octet + 1 and Linux allows 15) lets two runs share a machine: each removes
# only its own prefix's leftovers.
PREFIX = os.environ.get("CHATD_NETNS_PREFIX", "chpt-")
SUBNET = "10.221.0"
CLONE_NEWNET = 0x40000000

# host -> last octet
HOSTS = {
    "gw0": 11, "gw1": 12,
    "cl0": 21, "cl1": 22,
    "k1": 31, "k2": 32, "k3": 33,
    "redis": 41, "pg": 42,
    "client": 51, "client2": 52,
}


class NotSupported(Exception):
    pass


def sh(*argv, check=True, timeout=30):
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: rc {r.returncode}: {r.stderr.strip()}")
    return r


def netns_list():
    out = sh("ip", "netns", "list").stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.strip()]


def remove_stale():
    """Deletes every namespace named with PREFIX (a run that was killed);
    the veths inside go with them."""
    gone = []
    for ns in netns_list():
        if ns.startswith(PREFIX):
            sh("ip", "netns", "del", ns, check=False)
            gone.append(ns)
    return gone


def _setns(path):
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns {path}: {os.strerror(e)}")
    finally:
        os.close(fd)


class Topology:
    def __init__(self, hosts=None):
        self.hosts = dict(hosts or HOSTS)
        self.entered = None      # fd of the namespace the test process came from
        self.netem = None

    @staticmethod
    def ns(host):
        return PREFIX + host

    def addr(self, host):
        return f"{SUBNET}.{self.hosts[host]}"

    def host_of(self, addr):
        for h in self.hosts:
            if self.addr(h) == addr:
                return h
        raise KeyError(addr)

    def exec_argv(self, host, argv):
        return ["ip", "netns", "exec", self.ns(host)] + list(argv)

    def run(self, host, *argv, check=True):
        return sh(*self.exec_argv(host, argv), check=check)

    # -- build / tear down

    def check_free(self):
        """SUBNET must not be routed by the machine (we would shadow it)."""
        routes = sh("ip", "route", "show").stdout
        if f"{SUBNET}." in routes:
            raise RuntimeError(f"{SUBNET}.0/24 clashes with a route of this machine:\n{routes}")

    def create(self):
        remove_stale()
        self.check_free()
        try:
            br = self.ns("br")
            sh("ip", "netns", "add", br)
            self.run("br", "ip", "link", "add", "br0", "type", "bridge")
            self.run("br", "ip", "link", "set", "br0", "up")
            self.run("br", "ip", "link", "set", "lo", "up")
            for h, octet in self.hosts.items():
                ns = self.ns(h)
                sh("ip", "netns", "add", ns)
                a, b = f"{PREFIX}{octet}h", f"{PREFIX}{octet}b"
                sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
                sh("ip", "link", "set", a, "netns", ns)
                sh("ip", "link", "set", b, "netns", br)
                self.run(h, "ip", "link", "set", a, "name", "eth0")
                self.run(h, "ip", "addr", "add", f"{self.addr(h)}/24", "dev", "eth0")
                self.run(h, "ip", "link", "set", "eth0", "up")
                self.run(h, "ip", "link", "set", "lo", "up")
                self.run("br", "ip", "link", "set", b, "master", "br0")
                self.run("br", "ip", "link", "set", b, "up")
                for chain, hooks in (("PT", ("INPUT", "OUTPUT")), ("PTIN", ("INPUT",))):
                    self.run(h, "iptables", "-N", chain)
                    for hook in hooks:
                        self.run(h, "iptables", "-A", hook, "-j", chain)
            # the bridge must not run the hosts' packets through iptables
            self.run("br", "sh", "-c",
                     "echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null; true")
        except BaseException:
            self.destroy()
            raise
        return self

    def enter(self, host="client"):
        """The calling thread (the test's main thread) moves into host's
        namespace; threads it starts later inherit it."""
        if self.entered is None:
            self.entered = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        _setns(f"/run/netns/{self.ns(host)}")

    def leave(self):
        if self.entered is not None:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.setns(self.entered, CLONE_NEWNET)
            os.close(self.entered)
            self.entered = None

    def destroy(self):
        self.leave()
        return remove_stale()

    # -- faults

    def _rule(self, host, chain, *rule):
        self.run(host, "iptables", "-A", chain, *rule)

    def _block(self, host, peer_addr, direction, mode):
        """direction 'out': host's packets to peer; 'in': peer's packets to host."""
        match = ["-d", peer_addr] if direction == "out" else ["-s", peer_addr]
        if mode == "drop":
            self._rule(host, "PT", *match, "-j", "DROP")
        elif mode == "reject":
            self._rule(host, "PT", *match, "-p", "tcp", "-j", "REJECT", "--reject-with",
                       "tcp-reset")
            self._rule(host, "PT", *match, "-j", "REJECT")
        else:
            raise ValueError(mode)

    def cut(self, a, b, mode="drop", oneway=False):
        """No packet from a to b (and, unless oneway, none from b to a)."""
        self._block(a, self.addr(b), "out", mode)
        if not oneway:
            self._block(b, self.addr(a), "out", mode)

    def isolate(self, host, mode="drop", keep=()):
        """host reaches nobody and nobody reaches it (but the hosts in keep)."""
        for other in self.hosts:
            if other != host and other not in keep:
                self.cut(host, other, mode)

    def partition(self, side_a, side_b, mode="drop"):
        for a in side_a:
            for b in side_b:
                self.cut(a, b, mode)

    def loss(self, fraction, hosts=None):
        """Each host drops `fraction` of the packets it receives."""
        for h in hosts or self.hosts:
            self._rule(h, "PTIN", "-m", "statistic", "--mode", "random", "--probability",
                       f"{fraction:.4f}", "-j", "DROP")

    def netem_ok(self):
        if self.netem is None:
            h = next(iter(self.hosts))
            r = self.run(h, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
                         check=False)
            self.netem = r.returncode == 0
            if self.netem:
                self.run(h, "tc", "qdisc", "del", "dev", "lo", "root", check=False)
        return self.netem

    def delay(self, ms, jitter_ms, hosts=None):
        if not self.netem_ok():
            raise NotSupported("tc netem: 'Specified qdisc kind is unknown' (no sch_netem in "
                               "this kernel): delay and jitter cannot be injected here")
        for h in hosts or self.hosts:
            self.run(h, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay",
                     f"{ms}ms", f"{jitter_ms}ms")

    def heal(self):
        for h in self.hosts:
            self.run(h, "iptables", "-F", "PT")
            self.run(h, "iptables", "-F", "PTIN")
            if self.netem:
                self.run(h, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)

    def rules(self):
        """Every fault rule in place (host -> lines), for diagnostics."""
        out = {}
        for h in self.hosts:
            lines = [ln for c in ("PT", "PTIN")
                     for ln in self.run(h, "iptables", "-S", c).stdout.splitlines()
                     if ln.startswith("-A")]
            if lines:
                out[h] = lines
        return out
