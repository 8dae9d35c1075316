"""Lodge's abuse suite: each attack class of the security issue, run against a live node on
loopback at bounded rates, while a legitimate client keeps using the node.

For every attack it asserts the refusal (HTTP status, close code), that the node stays healthy,
that the legitimate client's REST p99 and gateway heartbeat-ACK p99 stay within generous
bounds, and that the node's RSS growth is bounded; then it writes a report (JSON + Markdown).

Addresses: the attacker connects from 127.0.0.66 (and other 127.0.0.x addresses where an
attack needs several), the legitimate client from 127.0.0.1, and a simulated reverse proxy from
127.0.0.2 (the node trusts only that one for X-Forwarded-For). Every loop is bounded in count
and time. Nothing leaves the loopback interface.

This module holds the harness; `attacks.py` the attack classes; `abuse.py` runs them.
"""

import argparse
import asyncio
import json
import os
import random
import string
import sys
import time

import aiohttp

ATTACKER = "127.0.0.66"
LEGIT = "127.0.0.1"
PROXY = "127.0.0.2"
PASSWORD = "password-123"

# Generous bounds: a debug build on a 2-core machine shared with the attacker's own CPU.
LEGIT_REST_P99_MS = float(os.environ.get("ABUSE_REST_P99_MS", "500"))
LEGIT_HB_P99_MS = float(os.environ.get("ABUSE_HB_P99_MS", "500"))
RSS_GROWTH_MB = float(os.environ.get("ABUSE_RSS_GROWTH_MB", "64"))


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(samples, q):
    if not samples:
        return 0.0
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def session(addr=ATTACKER, limit=100):
    """An HTTP client whose connections come from `addr`."""
    conn = aiohttp.TCPConnector(local_addr=(addr, 0), limit=limit, force_close=False)
    return aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30))


class Node:
    def __init__(self, url, pid):
        self.url = url.rstrip("/")
        self.ws_url = "ws" + self.url[4:]
        self.pid = pid

    def api(self, path):
        return f"{self.url}/api/v10{path}"

    async def req(self, http, method, path, token=None, body=None, xff=None, raw_auth=None):
        """One request; the status, the JSON body and the headers."""
        headers = {}
        if token:
            headers["Authorization"] = token
        if raw_auth is not None:
            headers["Authorization"] = raw_auth
        if xff:
            headers["X-Forwarded-For"] = xff
        async with http.request(method, self.api(path), json=body, headers=headers) as r:
            text = await r.text()
            try:
                data = json.loads(text) if text else None
            except ValueError:
                data = text
            return r.status, data, r.headers

    async def setup_req(self, http, method, path, token=None, body=None, xff=None):
        """A setup request (not part of an attack): waits out 429s as a polite client does."""
        for _ in range(20):
            st, v, h = await self.req(http, method, path, token, body, xff)
            if st != 429:
                return st, v, h
            await asyncio.sleep(float(v.get("retry_after", 1)) if isinstance(v, dict) else 1)
        return st, v, h

    async def register(self, proxy, name, xff, bot=False):
        st, v, _ = await self.setup_req(
            proxy, "POST", "/auth/register",
            body={"username": name, "password": PASSWORD, "bot": bot}, xff=xff)
        check(st == 201, f"register {name}: {st} {v}")
        return v["user"]["id"], v["token"]


class Gateway:
    """A minimal gateway client."""

    def __init__(self, ws):
        self.ws = ws

    @classmethod
    async def connect(cls, http, node, query="?v=10&encoding=json"):
        ws = await http.ws_connect(node.ws_url + "/gateway" + query, max_msg_size=0)
        return cls(ws)

    async def recv(self, timeout=10):
        m = await self.ws.receive(timeout=timeout)
        if m.type == aiohttp.WSMsgType.TEXT:
            return json.loads(m.data)
        if m.type == aiohttp.WSMsgType.CLOSE:
            # The code the server sent (close_code may read 1006 once the TCP side is gone).
            return {"closed": int(m.data), "reason": m.extra}
        if m.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            return {"closed": self.ws.close_code, "reason": m.extra}
        return {"other": str(m.type)}

    async def send(self, v):
        await self.ws.send_str(json.dumps(v))

    async def identify(self, token, intents=513):
        hello = await self.recv()
        check(hello.get("op") == 10, f"hello: {hello}")
        await self.send({"op": 2, "d": {"token": token, "intents": intents, "properties": {}}})
        return await self.recv()

    async def until(self, pred, timeout=10):
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            check(left > 0, "timed out waiting for a frame")
            v = await self.recv(timeout=left)
            if pred(v):
                return v

    async def closed(self, timeout=15):
        v = await self.until(lambda v: "closed" in v, timeout)
        return v["closed"], v.get("reason")

    async def close(self):
        await self.ws.close()


class Legit:
    """The well-behaved user: a REST call every 100 ms and a heartbeat every 600 ms on its own
    gateway session (within the gateway's 120 payloads per minute), each timed."""

    def __init__(self, node, token):
        self.node = node
        self.token = token
        self.rest = []
        self.hb = []
        self.errors = []
        self.stop = asyncio.Event()

    async def run(self):
        async with session(LEGIT) as http:
            gw = await Gateway.connect(http, self.node)
            ready = await gw.identify(self.token)
            check(ready.get("t") == "READY", f"legit identify: {ready}")
            await asyncio.gather(self._rest(http), self._heartbeats(gw))
            await gw.close()

    async def _rest(self, http):
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                st, _, _ = await self.node.req(http, "GET", "/users/@me", self.token)
                if st != 200:
                    self.errors.append(f"REST {st}")
            except Exception as e:  # the node must keep answering
                self.errors.append(f"REST {e!r}")
            self.rest.append((time.monotonic() - t0) * 1000)
            await asyncio.sleep(0.1)

    async def _heartbeats(self, gw):
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                await gw.send({"op": 1, "d": None})
                v = await gw.until(lambda v: v.get("op") == 11 or "closed" in v, timeout=5)
                if "closed" in v:
                    self.errors.append(f"legit gateway closed {v}")
                    return
            except Exception as e:
                self.errors.append(f"heartbeat {e!r}")
                return
            self.hb.append((time.monotonic() - t0) * 1000)
            await asyncio.sleep(0.6)

    def window(self):
        """Take the samples gathered so far (one attack's window)."""
        r, h, e = self.rest, self.hb, self.errors
        self.rest, self.hb, self.errors = [], [], []
        return r, h, e


def rand_name(prefix):
    return prefix + "".join(random.choice(string.ascii_lowercase) for _ in range(8))


class Ctx:
    """What attacks share: the node, the trusted proxy client, accounts made at setup."""

    def __init__(self, node, proxy, args):
        self.node = node
        self.proxy = proxy
        self.args = args
        self.next_ip = 1
        self.sessions = {}
        self.root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def fake_ip(self):
        """A distinct client address, as the trusted proxy reports it (never contacted)."""
        self.next_ip += 1
        return f"198.18.{self.next_ip // 250}.{self.next_ip % 250 + 1}"

    async def user(self, prefix="u", bot=False):
        name = rand_name(prefix)
        uid, tok = await self.node.register(self.proxy, name, self.fake_ip(), bot)
        return name, uid, tok


ATTACKS = []


def attack(name, items):
    def wrap(f):
        ATTACKS.append((name, items, f))
        return f
    return wrap


