"""The attack classes of the security issue (#13), one function each, registered in order.

Each returns {"tried": n, "refused": m, "note": "..."} and raises `Failed` when the node did not
hold. The issue item numbers are in each decorator.
"""

import asyncio
import json
import random
import string
import time

import aiohttp

from harness import ATTACKER, LEGIT, PASSWORD, Failed, Gateway, attack, check, rand_name, session

VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
READ_MESSAGE_HISTORY = 1 << 16
MANAGE_CHANNELS = 1 << 4
ADMINISTRATOR = 1 << 3
KICK_MEMBERS = 1 << 1
BAN_MEMBERS = 1 << 2
CONNECT = 1 << 20
MANAGE_NICKNAMES = 1 << 27
MANAGE_ROLES = 1 << 28


async def guild(ctx, token, name="den"):
    st, g, _ = await ctx.node.setup_req(ctx.proxy, "POST", "/guilds", token, {"name": name})
    check(st == 201, f"create guild: {st} {g}")
    text = next(c["id"] for c in g["channels"] if c["type"] == 0)
    voice = next(c["id"] for c in g["channels"] if c["type"] == 2)
    return g["id"], text, voice


async def join(ctx, owner, text, joiner):
    st, inv, _ = await ctx.node.setup_req(ctx.proxy, "POST", f"/channels/{text}/invites", owner, {})
    check(st in (200, 201), f"invite: {st} {inv}")
    st, v, _ = await ctx.node.setup_req(ctx.proxy, "POST", f"/invites/{inv['code']}", joiner)
    check(st == 200, f"join: {st} {v}")


async def metric(ctx, name):
    async with session(LEGIT) as h:
        async with h.get(ctx.node.url + "/metrics") as r:
            text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---------------------------------------------------------------- gateway (items 1, 19)

@attack("identify loop", "1")
async def identify_loop(ctx):
    _, _, tok = await ctx.user("loop")
    before = await metric(ctx, "lodge_gateway_sessions")
    outcomes = {"ready": 0, "op9": 0, "closed": 0}
    sem = asyncio.Semaphore(10)

    async def one(http):
        async with sem:
            gw = await Gateway.connect(http, ctx.node)
            v = await gw.identify(tok)
            if v.get("t") == "READY":
                outcomes["ready"] += 1
            elif v.get("op") == 9:
                outcomes["op9"] += 1
            else:
                outcomes["closed"] += 1
            await gw.close()

    async with session(ATTACKER) as http:
        await asyncio.gather(*(one(http) for _ in range(300)))
    after = await metric(ctx, "lodge_gateway_sessions")
    refused = outcomes["op9"] + outcomes["closed"]
    check(refused > 0, f"every identify was accepted: {outcomes}")
    check(after - before <= 16, f"{after - before} sessions held after 300 identifies")
    return {"tried": 300, "refused": refused,
            "note": f"{outcomes['ready']} identified, {outcomes['op9']} op 9, {outcomes['closed']} closed; "
                    f"sessions held afterwards: {int(after - before)} (cap 16)"}


@attack("idle sessions in a 100-channel guild", "1")
async def idle_session_memory(ctx):
    _, _, owner = await ctx.user("own")
    gid, text, _ = await guild(ctx, owner, "big")
    topic = "t" * 1024
    st, v, _ = await ctx.node.req(ctx.proxy, "POST", f"/guilds/{gid}/channels", owner,
                                  {"name": "too-long", "topic": topic + "x"})
    check(st == 400, f"a 1,025-character topic: {st} {v}")
    for i in range(98):
        st, v, _ = await ctx.node.setup_req(ctx.proxy, "POST", f"/guilds/{gid}/channels", owner,
                                            {"name": f"c{i}", "topic": topic})
        check(st == 201, f"channel {i}: {st} {v}")
    users = []
    for _ in range(40):
        _, _, tok = await ctx.user("idle")
        await join(ctx, owner, text, tok)
        users.append(tok)
    await asyncio.sleep(0.5)
    rss0 = _rss(ctx)
    sockets = []
    async with session(ATTACKER) as http:
        for tok in users:
            gw = await Gateway.connect(http, ctx.node)
            v = await gw.identify(tok, intents=1)
            check(v.get("t") == "READY", f"idle identify: {v}")
            await gw.until(lambda v: v.get("t") == "GUILD_CREATE")
            sockets.append(gw)
        await asyncio.sleep(1.0)
        per = (_rss(ctx) - rss0) / len(sockets)
        for gw in sockets:
            await gw.close()
    ctx.idle_session_kb = round(per)
    return {"tried": 1, "refused": 1,
            "note": f"one idle session in a 100-channel guild (1,024-char topics): ~{per:.0f} KB RSS "
                    f"(40 sessions); 1,025-char topic refused"}


def _rss(ctx):
    with open(f"/proc/{ctx.node.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@attack("connections that never identify", "1, 19")
async def never_identify(ctx):
    async with session(ATTACKER) as http:
        gws = [await Gateway.connect(http, ctx.node) for _ in range(50)]
        for gw in gws:
            check((await gw.recv()).get("op") == 10, "hello")
        t0 = time.monotonic()
        codes = [await gw.closed(timeout=30) for gw in gws]
        waited = time.monotonic() - t0
        bad = [c for c in codes if c[0] != 4003]
        check(not bad, f"{len(bad)} of 50 closed otherwise: {bad[:3]}")
        refused = len(codes)
        # Nothing but heartbeat, identify and resume before identify.
        for op in (3, 4, 8):
            gw = await Gateway.connect(http, ctx.node)
            await gw.recv()
            await gw.send({"op": op, "d": {}})
            c, _ = await gw.closed()
            check(c == 4003, f"op {op} before identify: {c}")
            refused += 1
        gw = await Gateway.connect(http, ctx.node, "?v=6&encoding=json")
        c, _ = await gw.closed()
        check(c == 4012, f"v=6: {c}")
    return {"tried": 54, "refused": refused + 1,
            "note": f"50 silent connections closed (4003) after {waited:.1f} s; ops before identify 4003; v=6 4012"}


@attack("zombie and payload flood", "1, 19")
async def zombie(ctx):
    _, _, tok = await ctx.user("zom")
    async with session(ATTACKER) as http:
        gw = await Gateway.connect(http, ctx.node)
        v = await gw.identify(tok)
        check(v.get("t") == "READY", f"{v}")
        t0 = time.monotonic()
        c, _ = await gw.closed(timeout=60)
        check(c == 4009, f"zombie close {c}")
        z = time.monotonic() - t0
        gw = await Gateway.connect(http, ctx.node)
        await gw.identify(tok)
        for _ in range(125):
            await gw.send({"op": 1, "d": None})
        c, _ = await gw.closed()
        check(c == 4008, f"flood close {c}")
    return {"tried": 2, "refused": 2, "note": f"no heartbeat: 4009 after {z:.1f} s; 125 payloads: 4008"}


# ---------------------------------------------------------------- REST (items 2, 3, 5)

@attack("login flood, random Authorization", "2")
async def random_auth_logins(ctx):
    limited = 0
    shape_ok = None
    async with session(ATTACKER) as http:
        for i in range(300):
            junk = "".join(random.choice(string.ascii_letters) for _ in range(40))
            st, v, h = await ctx.node.req(http, "POST", "/auth/login", body={
                "username": f"nobody{i}", "password": "wrong-password"}, raw_auth=junk)
            if st == 429:
                limited += 1
                if shape_ok is None:
                    shape_ok = (isinstance(v, dict) and "retry_after" in v and "global" in v
                                and "Retry-After" in h and "X-RateLimit-Limit" in h)
    check(limited > 0, "300 logins with random Authorization headers were never limited")
    check(shape_ok, "the 429 lacks Discord's retry_after/global or the headers")
    return {"tried": 300, "refused": limited, "note": "keyed on the client address, not the header"}


@attack("registration flood", "2")
async def registration_flood(ctx):
    limited = 0
    async with session(ATTACKER) as http:
        for _ in range(30):
            st, v, _ = await ctx.node.req(http, "POST", "/auth/register", body={
                "username": rand_name("reg"), "password": PASSWORD})
            if st == 429:
                limited += 1
    check(limited >= 10, f"only {limited} of 30 registrations from one address refused")
    return {"tried": 30, "refused": limited, "note": "20 per address per hour"}


@attack("password guessing, one user", "2, 3")
async def password_guessing(ctx):
    name, _, _ = await ctx.user("victim")
    limited = 0
    for i in range(30):
        # From a different (proxied) address each time: the per-username back-off still holds.
        st, v, _ = await ctx.node.req(ctx.proxy, "POST", "/auth/login", body={
            "username": name, "password": f"guess-{i}-xxxx"}, xff=ctx.fake_ip())
        check(st in (400, 429, 503), f"guess {i}: {st} {v}")
        if st == 429:
            limited += 1
    check(limited >= 20, f"only {limited} of 30 guesses refused by the back-off")
    return {"tried": 30, "refused": limited, "note": "back-off per username across addresses"}


@attack("password hashing flood", "3")
async def hashing_flood(ctx):
    name, _, _ = await ctx.user("hash")
    counts = {}
    stop = time.monotonic() + 8
    health = []

    async def guesser(k):
        while time.monotonic() < stop:
            st, _, _ = await ctx.node.req(ctx.proxy, "POST", "/auth/login", body={
                "username": rand_name("ghost"), "password": "wrong-password"}, xff=ctx.fake_ip())
            counts[st] = counts.get(st, 0) + 1

    async def prober():
        async with session(LEGIT) as h:
            while time.monotonic() < stop:
                t0 = time.monotonic()
                async with h.get(ctx.node.url + "/healthz") as r:
                    await r.text()
                health.append((time.monotonic() - t0) * 1000)
                await asyncio.sleep(0.05)

    await asyncio.gather(prober(), *(guesser(k) for k in range(8)))
    health.sort()
    p50 = health[len(health) // 2]
    check(p50 < 50, f"/healthz p50 {p50:.1f} ms while 8 logins hash")
    tried = sum(counts.values())
    return {"tried": tried, "refused": counts.get(503, 0) + counts.get(429, 0),
            "note": f"/healthz p50 {p50:.1f} ms during 8 parallel unknown-user logins; statuses {counts}"}


@attack("slowloris and connection cap", "5")
async def slowloris(ctx):
    host, port = ctx.node.url.split("//")[1].split(":")
    port = int(port)
    conns = []
    for _ in range(300):
        try:
            r, w = await asyncio.open_connection(host, port, local_addr=(ATTACKER, 0))
            w.write(b"GET /api/v10/gateway HTTP/1.1\r\nHost: x\r\n")
            await w.drain()
            conns.append((r, w))
        except OSError:
            break
    t0 = time.monotonic()

    async def closed_by_server(r):
        try:
            data = await asyncio.wait_for(r.read(4096), timeout=25)
            while data:
                data = await asyncio.wait_for(r.read(4096), timeout=25)
            return True
        except (asyncio.TimeoutError, ConnectionError):
            return False

    done = await asyncio.gather(*(closed_by_server(r) for r, _ in conns))
    waited = time.monotonic() - t0
    for _, w in conns:
        w.close()
    check(all(done), f"{done.count(False)} half-sent requests were never closed")
    return {"tried": len(conns), "refused": len(conns),
            "note": f"{len(conns)} half-sent requests from one address, every one closed within "
                    f"{waited:.1f} s (those beyond the per-address cap at once)"}


# ---------------------------------------------------------------- media-facing reads (item 4)

@attack("metrics and live-quality flood", "4")
async def metrics_flood(ctx):
    _, _, tok = await ctx.user("dash")
    stop = time.monotonic() + 5
    n = 0

    async def reader(http):
        nonlocal n
        while time.monotonic() < stop:
            async with http.get(ctx.node.url + "/metrics") as r:
                await r.read()
            async with http.get(ctx.node.url + "/readyz") as r:
                await r.read()
            n += 2

    refused = 0
    async with session(ATTACKER) as http:
        socks = []
        for i in range(6):
            ws = await http.ws_connect(ctx.node.ws_url + "/api/v10/quality/live")
            await ws.send_str(json.dumps({"token": tok}))
            socks.append(ws)
        await asyncio.gather(*(reader(http) for _ in range(20)))
        for ws in socks:
            m = await ws.receive(timeout=5)
            if m.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) or ws.closed:
                refused += 1
            await ws.close()
    check(refused >= 2, f"6 live sockets of one user: only {refused} refused (cap 4)")
    return {"tried": n + 6, "refused": refused,
            "note": f"{n} /metrics+/readyz reads in 5 s from 20 readers share one report per second"}


# ---------------------------------------------------------------- authorization (9-13)

@attack("reply to a hidden message", "9")
async def reply_leak(ctx):
    _, _, owner = await ctx.user("boss")
    _, _, pleb = await ctx.user("pleb")
    gid, text, _ = await guild(ctx, owner)
    await join(ctx, owner, text, pleb)
    st, staff, _ = await ctx.node.req(ctx.proxy, "POST", f"/guilds/{gid}/channels", owner, {
        "name": "staff", "permission_overwrites": [{"id": gid, "type": 0, "allow": "0", "deny": str(VIEW_CHANNEL)}]})
    check(st == 201, f"staff channel: {st} {staff}")
    st, secret, _ = await ctx.node.req(ctx.proxy, "POST", f"/channels/{staff['id']}/messages", owner,
                                       {"content": "the launch code is 0000"})
    check(st == 200, f"secret: {st}")
    st, v, _ = await ctx.node.req(ctx.proxy, "POST", f"/channels/{text}/messages", pleb, {
        "content": "what?", "message_reference": {"message_id": secret["id"], "channel_id": staff["id"]}})
    check(st in (400, 403, 404), f"reply to a hidden message accepted: {st} {v}")
    refusal = f"{st} {v.get('code') if isinstance(v, dict) else ''}"
    st, hist, _ = await ctx.node.req(ctx.proxy, "GET", f"/channels/{text}/messages", pleb)
    check("launch code" not in json.dumps(hist), "the secret leaked into history")
    return {"tried": 1, "refused": 1, "note": f"refused with {refusal}; history shows no secret"}


@attack("channel create granting ADMINISTRATOR", "10")
async def create_channel_overwrites(ctx):
    _, _, owner = await ctx.user("boss")
    _, mod_id, mod = await ctx.user("mod")
    gid, text, _ = await guild(ctx, owner)
    await join(ctx, owner, text, mod)
    st, role, _ = await ctx.node.req(ctx.proxy, "POST", f"/guilds/{gid}/roles", owner,
                                     {"name": "chanmod", "permissions": str(MANAGE_CHANNELS | VIEW_CHANNEL)})
    check(st in (200, 201), f"role: {st} {role}")
    st, _, _ = await ctx.node.req(ctx.proxy, "PUT", f"/guilds/{gid}/members/{mod_id}/roles/{role['id']}", owner)
    check(st == 204, f"assign: {st}")
    st, v, _ = await ctx.node.req(ctx.proxy, "POST", f"/guilds/{gid}/channels", mod, {
        "name": "mine", "permission_overwrites": [{"id": mod_id, "type": 1, "allow": str(ADMINISTRATOR), "deny": "0"}]})
    check(st == 403, f"overwrite granting ADMINISTRATOR accepted: {st} {v}")
    st, chans, _ = await ctx.node.req(ctx.proxy, "GET", f"/guilds/{gid}/channels", owner)
    check(not any(c["name"] == "mine" for c in chans), "the refused channel was created")
    return {"tried": 1, "refused": 1, "note": "403 50013, no channel written"}


@attack("kick above, then ban and rejoin", "11")
async def hierarchy_and_bans(ctx):
    _, _, owner = await ctx.user("boss")
    _, low_id, low = await ctx.user("low")
    _, high_id, high = await ctx.user("high")
    gid, text, voice = await guild(ctx, owner)
    await join(ctx, owner, text, low)
    await join(ctx, owner, text, high)
    st, lr, _ = await ctx.node.req(ctx.proxy, "POST", f"/guilds/{gid}/roles", owner,
                                   {"name": "kicker", "permissions": str(KICK_MEMBERS | BAN_MEMBERS)})
    st, hr, _ = await ctx.node.req(ctx.proxy, "POST", f"/guilds/{gid}/roles", owner, {"name": "elder"})
    await ctx.node.req(ctx.proxy, "PATCH", f"/guilds/{gid}/roles/{hr['id']}", owner, {"position": 5})
    await ctx.node.req(ctx.proxy, "PUT", f"/guilds/{gid}/members/{low_id}/roles/{lr['id']}", owner)
    await ctx.node.req(ctx.proxy, "PUT", f"/guilds/{gid}/members/{high_id}/roles/{hr['id']}", owner)
    refused = 0
    st, v, _ = await ctx.node.req(ctx.proxy, "DELETE", f"/guilds/{gid}/members/{high_id}", low)
    check(st == 403, f"kick of a higher member: {st} {v}")
    refused += 1
    st, v, _ = await ctx.node.req(ctx.proxy, "PATCH", f"/guilds/{gid}/members/{high_id}", low, {"nick": "lol"})
    check(st == 403, f"nick of a higher member: {st} {v}")
    refused += 1
    st, v, _ = await ctx.node.req(ctx.proxy, "PUT", f"/guilds/{gid}/bans/{low_id}", owner, {})
    check(st == 204, f"ban: {st} {v}")
    st, inv, _ = await ctx.node.req(ctx.proxy, "POST", f"/channels/{text}/invites", owner, {})
    st, v, _ = await ctx.node.req(ctx.proxy, "POST", f"/invites/{inv['code']}", low)
    check(st == 403 and isinstance(v, dict) and v.get("code") == 40007, f"banned rejoin: {st} {v}")
    refused += 1
    return {"tried": 3, "refused": refused, "note": "hierarchy on kick and nick; banned user refused 40007"}


@attack("who is in a hidden voice channel", "12")
async def hidden_voice(ctx):
    _, _, owner = await ctx.user("boss")
    _, _, pleb = await ctx.user("pleb")
    gid, text, _ = await guild(ctx, owner)
    await join(ctx, owner, text, pleb)
    st, hidden, _ = await ctx.node.req(ctx.proxy, "POST", f"/guilds/{gid}/channels", owner, {
        "name": "backroom", "type": 2,
        "permission_overwrites": [{"id": gid, "type": 0, "allow": "0", "deny": str(VIEW_CHANNEL)}]})
    check(st == 201, f"hidden voice: {st} {hidden}")
    async with session(ATTACKER) as http:
        spy = await Gateway.connect(http, ctx.node)
        check((await spy.identify(pleb, intents=1 | 128)).get("t") == "READY", "spy identify")
        boss = await Gateway.connect(http, ctx.node)
        check((await boss.identify(owner, intents=1)).get("t") == "READY", "owner identify")
        await boss.send({"op": 4, "d": {"guild_id": gid, "channel_id": hidden["id"], "self_mute": False, "self_deaf": False}})
        await boss.until(lambda v: v.get("t") == "VOICE_SERVER_UPDATE")
        st, states, _ = await ctx.node.req(ctx.proxy, "GET", f"/guilds/{gid}/voice-states", pleb)
        check(st == 200 and states == [], f"voice-states shows the hidden channel: {states}")
        await spy.send({"op": 1, "d": None})
        v = await spy.until(lambda v: v.get("op") == 11 or v.get("t") == "VOICE_STATE_UPDATE")
        check(v.get("op") == 11, f"VOICE_STATE_UPDATE of a hidden channel reached the spy: {v}")
        await spy.close()
        await boss.close()
    return {"tried": 2, "refused": 2, "note": "voice-states and VOICE_STATE_UPDATE scoped by VIEW_CHANNEL"}


@attack("logout leaves sockets", "13")
async def logout(ctx):
    name, _, tok = await ctx.user("out")
    async with session(ATTACKER) as http:
        gw = await Gateway.connect(http, ctx.node)
        check((await gw.identify(tok)).get("t") == "READY", "identify")
        st, _, _ = await ctx.node.req(ctx.proxy, "POST", "/auth/logout", tok)
        check(st == 204, f"logout {st}")
        c, _ = await gw.closed(timeout=5)
        check(c == 4004, f"the revoked token's gateway closed with {c}")
    return {"tried": 1, "refused": 1, "note": "gateway closed 4004 at once"}


# ---------------------------------------------------------------- input and state (14-18)

@attack("lookalike names and control characters", "14")
async def names(ctx):
    refused = 0
    base = rand_name("adm")
    await ctx.node.register(ctx.proxy, base, ctx.fake_ip())
    wide = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in base)
    for name in (base.upper(), wide, base + "\u202e", "a\u0007b"):
        st, v, _ = await ctx.node.req(ctx.proxy, "POST", "/auth/register",
                                      body={"username": name, "password": PASSWORD}, xff=ctx.fake_ip())
        check(st == 400, f"username {name!r} accepted: {st} {v}")
        refused += 1
    _, _, owner = await ctx.user("boss")
    gid, _, _ = await guild(ctx, owner)
    st, v, _ = await ctx.node.req(ctx.proxy, "POST", f"/guilds/{gid}/channels", owner,
                                  {"name": "x", "type": 2, "bitrate": 1})
    check(st == 400, f"voice bitrate 1 accepted on create: {st}")
    refused += 1
    st, v, _ = await ctx.node.req(ctx.proxy, "GET", f"/guilds/{gid}/members?limit=abc", owner)
    check(st == 400 and isinstance(v, dict) and v.get("code") == 50035, f"bad query: {st} {v}")
    refused += 1
    return {"tried": refused, "refused": refused,
            "note": "fullwidth/case lookalikes, bidi overrides and controls refused; bad bitrate and query 400"}


@attack("invite max_uses race", "15")
async def invite_race(ctx):
    _, _, owner = await ctx.user("boss")
    gid, text, _ = await guild(ctx, owner)
    joiners = [(await ctx.user("race"))[2] for _ in range(20)]
    st, inv, _ = await ctx.node.req(ctx.proxy, "POST", f"/channels/{text}/invites", owner, {"max_uses": 1})
    results = await asyncio.gather(*(
        ctx.node.req(ctx.proxy, "POST", f"/invites/{inv['code']}", t) for t in joiners))
    ok = sum(1 for st, _, _ in results if st == 200)
    check(ok == 1, f"{ok} joined through a max_uses 1 invite")
    return {"tried": 20, "refused": 19, "note": "20 concurrent accepts, exactly one joined"}


@attack("web client headers", "18")
async def headers(ctx):
    async with session(LEGIT) as h:
        async with h.get(ctx.node.url + "/") as r:
            hd = r.headers
    want = ["Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy"]
    missing = [k for k in want if k not in hd]
    check(not missing, f"missing {missing}")
    check("frame-ancestors" in hd["Content-Security-Policy"], "CSP without frame-ancestors")
    return {"tried": 1, "refused": 0, "note": "CSP with frame-ancestors, X-Frame-Options, nosniff, Referrer-Policy"}


# ---------------------------------------------------------------- voice (items 6, 7, 8)

OFFER_FILE = "fuzz/corpus/sdp_offer/str0m_3_slots"


async def voice_connect(ctx, http, gw, gid, channel, uid):
    """Gateway op 4 → voice gateway Identify → Select Protocol with a real (str0m) offer whose
    ICE never completes. Returns the voice socket and the first frame after Select Protocol."""
    await gw.send({"op": 4, "d": {"guild_id": gid, "channel_id": channel, "self_mute": False, "self_deaf": False}})
    vsu = await gw.until(lambda v: v.get("t") in ("VOICE_SERVER_UPDATE", "LODGE_VOICE_ERROR"))
    check(vsu["t"] == "VOICE_SERVER_UPDATE", f"op 4 refused: {vsu}")
    sid = ctx.sessions[uid]
    ws = await http.ws_connect(f"ws://{vsu['d']['endpoint']}/?v=8")
    v = Gateway(ws)
    check((await v.recv()).get("op") == 8, "voice hello")
    await v.send({"op": 0, "d": {"server_id": gid, "user_id": uid, "session_id": sid, "token": vsu["d"]["token"]}})
    ready = await v.recv()
    if "closed" in ready:
        return v, ready
    with open(ctx.root + "/" + OFFER_FILE) as f:
        offer = f.read()
    await v.send({"op": 1, "d": {"protocol": "webrtc", "data": {"sdp": offer}, "slots": 3}})
    return v, await v.until(lambda m: m.get("op") == 4 or "closed" in m)


@attack("voice joins that never connect", "8")
async def never_connecting_joins(ctx):
    _, uid, tok = await ctx.user("ghost")
    guilds = [await guild(ctx, tok, f"g{i}") for i in range(6)]
    base = await metric(ctx, "lodge_participants")
    refused = 0
    async with session(ATTACKER) as http:
        gw = await Gateway.connect(http, ctx.node)
        ready = await gw.identify(tok, intents=1)
        ctx.sessions[uid] = ready["d"]["session_id"]
        voices = []
        for gid, _, voice in guilds:
            v, first = await voice_connect(ctx, http, gw, gid, voice, uid)
            voices.append(v)
            if "closed" in first:
                check(first["closed"] == 4014, f"refused join: {first}")
                refused += 1
        check(refused == 2, f"{refused} of 6 joins refused (4 per user)")
        # The node report is shared and at most a second old: wait until it shows the joins.
        t0 = time.monotonic()
        held = 0
        while held < 4 and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.2)
            held = await metric(ctx, "lodge_participants") - base
        check(held == 4, f"{held} participants held (want the 4 allowed)")
        # Never connecting: reaped within 10 s of joining.
        while await metric(ctx, "lodge_participants") - base > 0:
            check(time.monotonic() - t0 < 15, "never-connecting participants were not reaped")
            await asyncio.sleep(0.5)
        reaped = time.monotonic() - t0
        check(reaped > 5, f"reaped after only {reaped:.1f} s: were they ever there?")
        for v in voices:
            await v.close()
        await gw.close()
    return {"tried": 6, "refused": refused,
            "note": f"at most 4 per user (4014 naming the limit); the rest reaped {reaped:.1f} s after the last join"}


@attack("voice client that stops reading", "7")
async def slow_voice_reader(ctx):
    _, uid, tok = await ctx.user("deaf")
    gid, _, voice = await guild(ctx, tok)
    async with session(ATTACKER) as http:
        gw = await Gateway.connect(http, ctx.node)
        ready = await gw.identify(tok, intents=1)
        ctx.sessions[uid] = ready["d"]["session_id"]
        v, first = await voice_connect(ctx, http, gw, gid, voice, uid)
        check(first.get("op") == 4, f"session description: {first}")
        before = await metric(ctx, "lodge_voice_slow_consumers_closed_total")
        # Heartbeats whose ACKs are never read: the node's outbox and socket buffer fill.
        sock = v.ws._writer.transport if hasattr(v.ws, "_writer") else None
        raw = v.ws._response.connection.transport if sock is None else sock
        raw.pause_reading()
        sent = 0
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 20:
            try:
                for _ in range(50):
                    await v.ws.send_str(json.dumps({"op": 3, "d": {"t": sent, "seq_ack": 0},
                                                    "pad": "x" * 2000}))
                    sent += 1
            except (ConnectionError, RuntimeError):
                closed = True
                break
            if await metric(ctx, "lodge_voice_slow_consumers_closed_total") > before:
                closed = True
                break
            await asyncio.sleep(0.05)
        raw.resume_reading()
        await gw.close()
    check(closed, f"{sent} heartbeats unread for 20 s and the connection still stands")
    return {"tried": sent, "refused": 1,
            "note": f"closed as a slow consumer after {sent} unread heartbeat ACKs ({time.monotonic() - t0:.1f} s)"}


@attack("guild rename flood", "6")
async def rename_flood(ctx):
    _, _, tok = await ctx.user("renamer")
    gid, _, _ = await guild(ctx, tok)
    ok = limited = 0
    async with session(ATTACKER) as http:
        for i in range(100):
            st, _, _ = await ctx.node.req(http, "PATCH", f"/guilds/{gid}", tok, {"name": f"name {i}"})
            ok += st == 200
            limited += st == 429
    check(ok > 0, "no rename went through")
    return {"tried": 100, "refused": limited,
            "note": f"{ok} renames; visibility caches are per guild, so no other guild's sessions re-read permissions"}
