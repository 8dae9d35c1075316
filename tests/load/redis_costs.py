"""What a Lodge cluster asks of Redis: commands and bytes per identify, message, voice join and
leave, presence change, and Redis memory per online user. Two nodes, one Redis, PostgreSQL.

Run through tests/load/redis_costs.sh (it starts everything); prints a Markdown table.
"""
import argparse, asyncio, json, random, subprocess, time

import aiohttp


def redis(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=True).stdout


def stats(port):
    out = {}
    for line in redis(port, "info", "stats").splitlines():
        if ":" in line:
            k, v = line.strip().split(":", 1)
            out[k] = v
    return int(out["total_commands_processed"]), int(out["total_net_input_bytes"]), int(out["total_net_output_bytes"])


class Meter:
    """Redis's counters over a step, minus the idle rate (registry renewals) over the same time."""

    def __init__(self, port, idle_per_s):
        self.port, self.idle = port, idle_per_s

    async def measure(self, n, coro):
        c0, i0, o0 = stats(self.port)
        t0 = time.monotonic()
        await coro
        await asyncio.sleep(0.5)  # batched writes (resume log) land
        dt = time.monotonic() - t0
        c1, i1, o1 = stats(self.port)
        ic, ii, io = (x * dt for x in self.idle)
        return ((c1 - c0 - ic) / n, (i1 - i0 - ii) / n, (o1 - o0 - io) / n)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--sessions", type=int, default=100)
    args = ap.parse_args()
    A, B, port = args.a, args.b, args.redis_port
    rows = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as h:
        async def reg(url, name):
            r = await h.post(f"{url}/api/v10/auth/register", json={"username": name, "password": "pw-123456789"})
            j = await r.json()
            assert r.status in (200, 201), j
            return j["token"], int(j["user_id"]) if "user_id" in j else None

        hdr = lambda t: {"Authorization": t}
        n0 = random.randint(0, 10**6)
        owner, _ = await reg(A, f"own{n0}")
        g = await (await h.post(f"{A}/api/v10/guilds", json={"name": "costs"}, headers=hdr(owner))).json()
        chans = await (await h.get(f"{A}/api/v10/guilds/{g['id']}/channels", headers=hdr(owner))).json()
        text = [c for c in chans if c["type"] == 0][0]
        voice = [c for c in chans if c["type"] == 2][0]
        inv = await (await h.post(f"{A}/api/v10/channels/{text['id']}/invites", json={"max_uses": 0}, headers=hdr(owner))).json()
        tokens = []
        for i in range(args.sessions):
            url = A if i % 2 == 0 else B
            t, _ = await reg(url, f"u{n0}x{i}")
            r = await h.post(f"{url}/api/v10/invites/{inv['code']}", headers=hdr(t))
            assert r.status == 200, await r.text()
            tokens.append((url, t))

        # Idle rate: what the nodes ask of Redis with nothing happening.
        c0, i0, o0 = stats(port)
        await asyncio.sleep(3)
        c1, i1, o1 = stats(port)
        idle = ((c1 - c0) / 3, (i1 - i0) / 3, (o1 - o0) / 3)
        m = Meter(port, idle)
        rows.append(("idle (per second, both nodes: registry renewals)", *idle))

        socks = []

        async def identify(url, t):
            ws = await h.ws_connect(url.replace("http", "ws") + "/gateway?v=10&encoding=json")
            await ws.receive_json()
            await ws.send_json({"op": 2, "d": {"token": t, "intents": 513 | (1 << 9) | (1 << 15) | (1 << 7), "properties": {}}})
            while True:
                msg = await ws.receive_json()
                if msg.get("t") == "READY":
                    sid = msg["d"]["session_id"]
                    break
            socks.append((ws, sid))

        async def all_identify():
            for url, t in tokens:
                await identify(url, t)

        rows.append(("identify (a session connects: starts, presence, watches, resume meta)", *await m.measure(len(tokens), all_identify())))

        async def drain():
            async def one(ws):
                while True:
                    try:
                        await asyncio.wait_for(ws.receive(), 0.05)
                    except asyncio.TimeoutError:
                        return
            await asyncio.gather(*(one(ws) for ws, _ in socks))

        drainer = asyncio.create_task(asyncio.sleep(0))

        async def messages(k):
            for i in range(k):
                url, t = tokens[i % 2]
                r = await h.post(f"{url}/api/v10/channels/{text['id']}/messages", json={"content": f"m{i}"}, headers=hdr(t))
                assert r.status == 200, await r.text()
            await drain()

        await drain()
        rows.append((f"message created (guild of {len(tokens)} online sessions on 2 nodes)", *await m.measure(50, messages(50))))

        async def presence(k):
            for i in range(k):
                ws, _ = socks[i]
                await ws.send_json({"op": 3, "d": {"status": "idle", "since": None, "activities": [], "afk": True}})
            await drain()

        rows.append(("presence change (op 3)", *await m.measure(20, presence(20))))

        async def voice_join(k):
            for i in range(k):
                ws, _ = socks[i]
                await ws.send_json({"op": 4, "d": {"guild_id": g["id"], "channel_id": voice["id"], "self_mute": False, "self_deaf": False}})
            await drain()

        rows.append(("voice join (op 4: placement, state, token, VOICE_SERVER_UPDATE)", *await m.measure(10, voice_join(10))))

        async def voice_leave(k):
            for i in range(k):
                ws, _ = socks[i]
                await ws.send_json({"op": 4, "d": {"guild_id": g["id"], "channel_id": None, "self_mute": False, "self_deaf": False}})
            await drain()

        rows.append(("voice leave (op 4, no channel)", *await m.measure(10, voice_leave(10))))

        # Memory per online user: every key of a user and of their session, and the guild's
        # share (its bus stream and voice hash) divided among its members.
        per_user = []
        for (url, t), (ws, sid) in list(zip(tokens, socks))[:20]:
            me = await (await h.get(f"{url}/api/v10/users/@me", headers=hdr(t))).json()
            keys = redis(port, "--scan", "--pattern", f"*{{u:{me['id']}}}*").split() + redis(port, "--scan", "--pattern", f"*{{s:{sid}}}*").split()
            per_user.append(sum(int(redis(port, "memory", "usage", k).strip() or 0) for k in keys))
        gkeys = redis(port, "--scan", "--pattern", f"*{{g:{g['id']}}}*").split()
        gbytes = sum(int(redis(port, "memory", "usage", k).strip() or 0) for k in gkeys)
        # The nodes' delivery logs (every session's resume log, one entry per batch per node).
        dkeys = redis(port, "--scan", "--pattern", "*{n:*}:dlog:*").split()
        dbytes = sum(int(redis(port, "memory", "usage", k, "samples", "0").strip() or 0) for k in dkeys)
        dentries = sum(int(redis(port, "xlen", k).strip() or 0) for k in dkeys)
    print("| operation | Redis commands | bytes to Redis | bytes from Redis |")
    print("|---|---|---|---|")
    for name, c, i, o in rows:
        print(f"| {name} | {c:.1f} | {i:,.0f} | {o:,.0f} |")
    print()
    print(f"Redis memory per online user (their user and session keys, MEMORY USAGE, mean of 20): {sum(per_user) / len(per_user):,.0f} bytes; "
          f"the guild's keys (bus stream of {len(tokens) + 1} members after these steps, voice hash): {gbytes:,} bytes; "
          f"the nodes' delivery logs: {dbytes:,} bytes in {dentries} entries ({dbytes / len(tokens):,.0f} bytes per online session).")
    print(json.dumps({"rows": rows, "user_bytes": per_user, "guild_bytes": gbytes, "delivery_log_bytes": dbytes}), file=open("/dev/stderr", "w"))


asyncio.run(main())
