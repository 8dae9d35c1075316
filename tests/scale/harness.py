"""The scale suite's harness: the cluster's processes (through ctl.sh), REST and gateway clients,
and small statistics. The steps are in scale.py.

Node nN listens on 127.0.0.N (HTTP and UDP media); ports are chosen once by ctl.sh and kept
across restarts, so a URL stays valid when its node comes back. Every client connects from
127.0.0.1; nothing leaves the loopback interface.
"""

import asyncio
import json
import os
import random
import re
import string
import time

import aiohttp

NODES = (2, 3, 4)
PASSWORD = "password-scale-1"
# GUILDS | GUILD_MESSAGES | MESSAGE_CONTENT
INTENTS = 1 | 512 | (1 << 15)
VIEW_CHANNEL = 1 << 10


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


def pct(samples, q):
    """The q-quantile (nearest rank; with few samples p99 is the maximum)."""
    if not samples:
        return None
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def rand_name(prefix):
    return prefix + "".join(random.choice(string.ascii_lowercase) for _ in range(8))


def fmt_ms(v):
    return "–" if v is None else f"{v:.0f} ms"


class Cluster:
    """The three nodes, the suite's redis-server and PostgreSQL, driven through ctl.sh."""

    def __init__(self, ctl, tmp, balancer=None):
        self.ctl_path = ctl
        self.tmp = tmp
        self.balancer = balancer  # http://127.0.0.5:PORT, in front of all nodes
        # Extra `lodge serve` options each node was last started with (a step may restrict roles).
        self.extra = {n: () for n in NODES}
        self.killed = set()
        self.offsets = {}

    async def ctl(self, *args, timeout=90):
        p = await asyncio.create_subprocess_exec(
            self.ctl_path, *[str(a) for a in args],
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(p.communicate(), timeout)
        check(p.returncode == 0, f"ctl.sh {' '.join(map(str, args))}: {out.decode().strip()}")

    def url(self, n):
        with open(os.path.join(self.tmp, f"n{n}.ports")) as f:
            hp = f.read().split()[0]
        return f"http://127.0.0.{n}:{hp}"

    def ws(self, n):
        return "ws" + self.url(n)[4:] + "/gateway"

    def api(self, n, path):
        return f"{self.url(n)}/api/v10{path}"

    def pid(self, n):
        try:
            with open(os.path.join(self.tmp, f"n{n}.pid")) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def alive(self, n):
        p = self.pid(n)
        if p is None:
            return False
        try:
            os.kill(p, 0)
            return True
        except OSError:
            return False

    def node_of_url(self, url):
        """Which node a URL (http, ws) points at: its number, "balancer", or None."""
        hostport = (url or "").split("://", 1)[-1].split("/", 1)[0]
        for n in NODES:
            if hostport == self.url(n).split("://", 1)[1]:
                return n
        if self.balancer and hostport == self.balancer.split("://", 1)[1]:
            return "balancer"
        return None

    async def ensure(self, extra=None):
        """Every node running with the wanted extra options (default: none), and ready."""
        extra = extra or {}
        started = []
        for n in NODES:
            want = tuple(extra.get(n, ()))
            if self.alive(n) and self.extra[n] == want:
                continue
            if self.alive(n):
                await self.ctl("node-kill", n, "TERM")
            await self.ctl("node-start", n, *want)
            self.extra[n] = want
            started.append(n)
        for n in NODES:
            await self.ctl("node-wait", n, 60)
        if started:
            # Let restarted nodes register with the others before a step depends on it (the
            # step itself fails if they never do).
            async def all_seen():
                async with session() as http:
                    for n in NODES:
                        m = await self.metrics(http, n) or {}
                        if m.get("lodge_cluster_nodes") != len(NODES):
                            return False
                return True
            await until(all_seen, 10, 0.2)
        return started

    async def kill(self, n, sig="KILL"):
        self.killed.add(n)
        await self.ctl("node-kill", n, sig)

    def log_path(self, n):
        return os.path.join(self.tmp, f"n{n}.log")

    def mark(self):
        """Start watching a step: which nodes it kills, and what the nodes log meanwhile."""
        self.killed = set()
        self.offsets = {n: (os.path.getsize(self.log_path(n)) if os.path.exists(self.log_path(n)) else 0)
                        for n in NODES}

    def review(self):
        """After a step: nodes that exited without the step killing them (with their last log
        lines), and the distinct ERROR lines and panics the nodes logged during the step."""
        exited, errors = [], {}
        for n in NODES:
            with open(self.log_path(n), errors="replace") as f:
                f.seek(self.offsets.get(n, 0))
                lines = f.read().splitlines()
            for line in lines:
                if " ERROR " in line or "panicked" in line:
                    msg = re.sub(r"\d{6,}", "N", line.split(" ERROR ", 1)[-1].strip())
                    errors.setdefault(msg, []).append(f"n{n}")
            if not self.alive(n) and n not in self.killed:
                exited.append(f"n{n} exited during the step (not killed by it); its log ends: "
                              + " / ".join(line[28:] if line[:2] == "20" else line for line in lines[-3:]))
        return exited, [f"{len(v)}× on {','.join(sorted(set(v)))}: {k}" for k, v in errors.items()]

    async def metrics(self, http, n):
        """The node's /metrics as {series name: sum of its samples}; None if it does not answer."""
        return await self.metrics_at(http, self.url(n))

    async def metrics_at(self, http, base, count=False):
        """/metrics of any process at `base` (http://host:port) as {series name: sum of its
        samples} (count: how many samples); None if it does not answer."""
        try:
            async with http.get(base + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
                if r.status != 200:
                    return None
                text = await r.text()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return None
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name = line.split("{")[0].split(" ")[0]
            try:
                out[name] = out.get(name, 0.0) + (1.0 if count else float(line.rsplit(" ", 1)[1]))
            except ValueError:
                pass
        return out

    async def readyz(self, http, n):
        try:
            async with http.get(self.url(n) + "/readyz", timeout=aiohttp.ClientTimeout(total=3)) as r:
                return r.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return None


def session(limit=200):
    conn = aiohttp.TCPConnector(local_addr=("127.0.0.1", 0), limit=limit)
    return aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30))


class Rest:
    """REST calls to any node of the cluster (one PostgreSQL: every node answers for all)."""

    def __init__(self, cluster, http):
        self.c = cluster
        self.http = http

    async def req(self, n, method, path, token=None, body=None, timeout=30):
        headers = {"Authorization": token} if token else {}
        async with self.http.request(method, self.c.api(n, path), json=body, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            text = await r.text()
            try:
                data = json.loads(text) if text else None
            except ValueError:
                data = text
            return r.status, data

    async def setup(self, n, method, path, token=None, body=None, want=(200, 201, 204)):
        """A setup request: waits out 429s; anything but `want` fails the step."""
        for _ in range(20):
            st, v = await self.req(n, method, path, token, body)
            if st != 429:
                break
            await asyncio.sleep(float(v.get("retry_after", 1)) if isinstance(v, dict) else 1)
        check(st in want, f"{method} {path} on n{n}: {st} {v}")
        return v

    async def user(self, n, prefix="u", bot=False):
        """Register an account through node n: (id, token, name)."""
        name = rand_name(prefix)
        v = await self.setup(n, "POST", "/auth/register",
                             body={"username": name, "password": PASSWORD, "bot": bot}, want=(201,))
        return v["user"]["id"], v["token"], name

    async def guild(self, n, owner_token, members):
        """A guild owned by `owner_token`, joined by `members` [(node, token)] by invite;
        returns the guild object (with its channels)."""
        g = await self.setup(n, "POST", "/guilds", owner_token, {"name": rand_name("scale ")}, want=(201,))
        text = next(c["id"] for c in g["channels"] if c["type"] == 0)
        inv = await self.setup(n, "POST", f"/channels/{text}/invites", owner_token, {})
        for m, tok in members:
            await self.setup(m, "POST", f"/invites/{inv['code']}", tok)
        return g


def text_channel(g):
    return next(c["id"] for c in g["channels"] if c["type"] == 0)


class Gateway:
    """A gateway client that records every frame, heartbeats on its own, and can resume on
    another node. `events` holds (monotonic receive time, frame) for every dispatch and opcode."""

    def __init__(self, cluster, http, token, name=""):
        self.c = cluster
        self.http = http
        self.token = token
        self.name = name
        self.ws = None
        self.node = None
        self.events = []
        self.seq = None
        self.session_id = None
        self.resume_url = None
        self.closed_at = None
        self.close_code = None
        self.told = []  # op 7 / op 9 frames: the server said this session must reconnect
        self._reader = None
        self._hb = None
        self._changed = asyncio.Event()

    async def _open(self, n):
        """Connect to node n, or to a gateway URL (the balancer)."""
        url = self.c.ws(n) if isinstance(n, int) else n.split("?")[0]
        self.ws = await self.http.ws_connect(url + "?v=10&encoding=json", max_msg_size=0,
                                             timeout=aiohttp.ClientWSTimeout(ws_close=2))
        self.node = n
        self.closed_at = None
        self.close_code = None
        m = await self.ws.receive(timeout=10)
        check(m.type == aiohttp.WSMsgType.TEXT, f"{self.name}: no Hello from {n} ({m.type})")
        hello = json.loads(m.data)
        check(hello.get("op") == 10, f"{self.name}: first frame from {n} is not Hello: {hello}")
        interval = hello["d"]["heartbeat_interval"] / 1000.0
        self._reader = asyncio.create_task(self._read())
        self._hb = asyncio.create_task(self._heartbeat(interval))

    async def identify(self, n, intents=INTENTS):
        await self._open(n)
        await self.send({"op": 2, "d": {"token": self.token, "intents": intents, "properties": {}}})
        ready = await self.wait(lambda f: f.get("t") == "READY", 15, f"READY on n{n}")
        self.session_id = ready["d"]["session_id"]
        self.resume_url = ready["d"].get("resume_gateway_url")
        return ready

    async def resume(self, n):
        """Resume (op 6) this session on node n; returns the first answer (RESUMED, op 9, or a
        close)."""
        await self.stop_tasks()
        mark = len(self.events)
        await self._open(n)
        await self.send({"op": 6, "d": {"token": self.token, "session_id": self.session_id,
                                        "seq": self.seq}})

        def answer(f):
            return f.get("t") == "RESUMED" or f.get("op") in (7, 9) or "closed" in f
        return await self.wait(answer, 15, f"an answer to Resume on n{n}", since=mark)

    async def send(self, v):
        await self.ws.send_str(json.dumps(v))

    async def _read(self):
        ws = self.ws
        while True:
            try:
                m = await ws.receive()
            except Exception as e:  # noqa: BLE001 (any transport error ends this connection)
                m = None
                err = repr(e)
            now = time.monotonic()
            if m is not None and m.type == aiohttp.WSMsgType.TEXT:
                f = json.loads(m.data)
                if f.get("s") is not None:
                    self.seq = f["s"]
                if f.get("op") in (7, 9):
                    self.told.append(f)
                self.events.append((now, f))
                self._changed.set()
                continue
            if m is not None and m.type == aiohttp.WSMsgType.CLOSE:
                code = int(m.data)
            elif m is not None:
                code = ws.close_code
            else:
                code = f"error {err}"
            self.closed_at = now
            self.close_code = code
            self.events.append((now, {"closed": code}))
            self._changed.set()
            return

    async def _heartbeat(self, interval):
        try:
            await asyncio.sleep(interval * random.random())
            while not self.ws.closed:
                await self.send({"op": 1, "d": self.seq})
                await asyncio.sleep(interval)
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            return

    async def wait(self, pred, timeout, what, since=0):
        """The first recorded frame from index `since` on that satisfies pred."""
        end = time.monotonic() + timeout
        i = since
        while True:
            while i < len(self.events):
                f = self.events[i][1]
                i += 1
                if pred(f):
                    return f
            left = end - time.monotonic()
            check(left > 0, f"{self.name}: timed out waiting for {what}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    def dispatches(self, t):
        return [(at, f) for at, f in self.events if f.get("t") == t]

    def messages(self, channel=None):
        """MESSAGE_CREATE ids in arrival order (of one channel, or all)."""
        return [f["d"]["id"] for _, f in self.dispatches("MESSAGE_CREATE")
                if channel is None or f["d"]["channel_id"] == channel]

    def seqs(self):
        return [f["s"] for _, f in self.events if f.get("s") is not None]

    async def stop_tasks(self):
        for t in (self._hb, self._reader):
            if t and not t.done():
                t.cancel()
                try:
                    await t
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass

    async def close(self):
        await self.stop_tasks()
        if self.ws and not self.ws.closed:
            try:
                await asyncio.wait_for(self.ws.close(), 3)
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
                pass


async def until(cond, timeout, interval=0.1):
    """Poll an async or plain condition until it holds; its last value."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if asyncio.iscoroutine(v):
            v = await v
        if v or time.monotonic() > end:
            return v
        await asyncio.sleep(interval)


async def psql(db_url, sql):
    """One query through psql; rows as lists of strings."""
    p = await asyncio.create_subprocess_exec(
        "psql", "-qAt", "-F", "\t", db_url, "-c", sql,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 20)
    check(p.returncode == 0, f"psql: {err.decode().strip()}")
    return [line.split("\t") for line in out.decode().splitlines() if line]
