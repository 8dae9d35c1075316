"""Lodge's scale suite (issue #14): a cluster of three equal nodes (n2, n3, n4 on 127.0.0.2–4)
on one redis-server and one PostgreSQL database, checked step by step. Each step measures, prints
its figures and fails with what it saw; a server feature that is not there yet fails its step,
it is never skipped. Before each step every node is running again (a step kills nodes).

Usage (run.sh sets this up): scale.py --ctl ctl.sh --tmp DIR --load lodge-load --db-url URL
    --out DIR [--only "fanout;3"]
"""

import argparse
import asyncio
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (  # noqa: E402
    NODES, PASSWORD, VIEW_CHANNEL, Cluster, Failed, Gateway, Rest, check, fmt_ms, pct, psql,
    rand_name, session, text_channel, until)

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = []
STEP_TIMEOUT = 150
LOAD_PASSWORD = "load-test-password"  # lodge-load's accounts


def step(number, name, what):
    def wrap(f):
        STEPS.append((number, name, what, f))
        return f
    return wrap


class Ctx:
    def __init__(self, args, cluster, http):
        self.args = args
        self.c = cluster
        self.http = http
        self.rest = Rest(cluster, http)
        self.loads = []  # every Load a step started: stopped after the step whatever happened


class Load:
    """One `lodge-load voice` run in the background: its report and its stderr."""

    def __init__(self, ctx, tag, urls, extra):
        self.ctx = ctx
        self.report_path = os.path.join(ctx.args.tmp, f"load-{tag}.json")
        self.err_path = os.path.join(ctx.args.tmp, f"load-{tag}.err")
        self.cmd = [ctx.args.load, "voice"]
        for u in urls:
            self.cmd += ["--url", u]
        self.cmd += ["--source-ip", "127.0.0.10", "--probes", "0", "--strict",
                     "--report", self.report_path] + [str(a) for a in extra]
        self.proc = None

    async def start(self):
        self.ctx.loads.append(self)
        self.err = open(self.err_path, "w")
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd, stdout=asyncio.subprocess.DEVNULL, stderr=self.err)

    def stderr(self):
        with open(self.err_path, errors="replace") as f:
            return f.read()

    def tail(self, n=6):
        lines = [line for line in re.split(r"[\r\n]", self.stderr()) if line.strip()]
        out = " | ".join(lines[-n:])
        if "Username is already taken" in out:
            # lodge-load's names are unique per run, and the store reports any unique violation
            # of the users table as a taken name: the user id (a snowflake) is the suspect.
            out += (" [lodge-load's user names are unique per run: the users insert most likely collided on "
                    "its id, i.e. two nodes minted the same snowflake]")
        return out

    async def guild(self):
        m = await until(lambda: re.search(r"in guild (\d+)", self.stderr()) or self.proc.returncode is not None, 60)
        check(m and not isinstance(m, bool), f"lodge-load set nothing up: {self.tail()}")
        return m.group(1)

    async def finish(self, timeout):
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            raise Failed(f"lodge-load did not finish within {timeout} s: {self.tail()}")
        self.err.close()
        rep = None
        if os.path.exists(self.report_path):
            with open(self.report_path) as f:
                rep = json.load(f)
        check(rep is not None, f"lodge-load wrote no report (exit {rc}): {self.tail()}")
        return rc, rep

    async def stop(self):
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def voice_conns(ctx):
    """lodge_voice_connections per node (None: the node does not answer)."""
    out = {}
    for n in NODES:
        m = await ctx.c.metrics(ctx.http, n)
        out[n] = None if m is None else int(m.get("lodge_voice_connections", 0))
    return out


async def load_owner_token(ctx, node, guild_id):
    """A token of the guild's owner (lodge-load's caller 0), found through the database and a
    login, to read the guild's voice states like any member."""
    rows = await psql(ctx.args.db_url,
                      f"SELECT u.username FROM guilds g JOIN users u ON u.id = g.owner_id WHERE g.id = {int(guild_id)}")
    check(rows, f"guild {guild_id} is not in the database")
    st, v = await ctx.rest.req(node, "POST", "/auth/login", body={"username": rows[0][0], "password": LOAD_PASSWORD})
    check(st == 200, f"login as lodge-load's owner: {st} {v}")
    return v["token"]


def strict_report(rep, callers):
    """Common checks of a lodge-load report; returns problems."""
    problems = []
    if rep.get("strict_failures"):
        problems.append("lodge-load strict: " + "; ".join(rep["strict_failures"][:3]))
    if rep.get("connected", 0) < callers:
        problems.append(f"{rep.get('connected')} of {callers} callers connected media")
    if rep.get("errors"):
        problems.append(f"{len(rep['errors'])} caller errors, first: {rep['errors'][0]}")
    return problems


def hearing(rep, callers):
    """Share of the packets that should have arrived that did: every speaker's packet is owed to
    each of the other callers (listeners and the other speakers, all within the 3 slots)."""
    owed = rep.get("rtp_sent", 0) * (callers - 1)
    return rep.get("rtp_received", 0) / owed if owed else 0.0


# ---------------------------------------------------------------------------------------------
@step(1, "fanout", "cross-node chat fan-out in order, VIEW_CHANNEL filtering intact")
async def fanout(ctx, fig):
    c, rest = ctx.c, ctx.rest
    await c.ensure()
    PER = 50  # per sender, alternating the public and the hidden channel
    # Registrations on all nodes at once: every one must succeed (the nodes share one users
    # table, so their ids must never collide).
    names = [rand_name("reg") for _ in range(30)]

    async def register(n, nm):
        for _ in range(30):  # a polite client waits out 429 and 503 (password hashing at capacity)
            st, v = await rest.req(n, "POST", "/auth/register", body={"username": nm, "password": PASSWORD})
            if st not in (429, 503):
                return st, v
            await asyncio.sleep(float(v.get("retry_after", 1)) if isinstance(v, dict) else 1)
        return st, v
    regs = await asyncio.gather(*(register(NODES[i % 3], nm) for i, nm in enumerate(names)))
    bad_regs = [f"{st} {v}" for st, v in regs if st != 201]
    fig["concurrent_registrations_refused"] = f"{len(bad_regs)} of {len(names)}"
    reg_problem = (f"{len(bad_regs)} of {len(names)} concurrent registrations on the three nodes refused, "
                   f"first: {bad_regs[0][:160]}") if bad_regs else None
    _, owner, _ = await rest.user(2, "own")
    senders = [(2, *(await rest.user(2, "sa"))), (3, *(await rest.user(3, "sb")))]
    observers = []  # (node, insider, uid, token)
    for n in NODES:
        for inside in (True, False):
            uid, tok, _ = await rest.user(n, "in" if inside else "out")
            observers.append((n, inside, uid, tok))
    g = await rest.guild(2, owner, [(n, tok) for n, _, tok, _ in senders] + [(n, tok) for n, _, _, tok in observers])
    gid, general = g["id"], text_channel(g)
    role = await rest.setup(3, "POST", f"/guilds/{gid}/roles", owner, {"name": "insiders"})
    for uid in [uid for _, uid, _, _ in senders] + [uid for _, inside, uid, _ in observers if inside]:
        await rest.setup(4, "PUT", f"/guilds/{gid}/members/{uid}/roles/{role['id']}", owner)
    hidden = (await rest.setup(4, "POST", f"/guilds/{gid}/channels", owner, {
        "name": "hidden", "type": 0, "permission_overwrites": [
            {"id": gid, "type": 0, "allow": "0", "deny": str(VIEW_CHANNEL)},
            {"id": role["id"], "type": 0, "allow": str(VIEW_CHANNEL), "deny": "0"}]}, want=(201,)))["id"]
    gws = []
    for n, inside, uid, tok in observers:
        gw = Gateway(c, ctx.http, tok, f"{'insider' if inside else 'outsider'}@n{n}")
        await gw.identify(n)
        gws.append((n, inside, gw))
    await asyncio.sleep(0.5)

    sent = {}  # sender node -> [(id, channel, t0)] in acknowledgement order
    refused = []

    async def send(n, tok, tag):
        out = sent.setdefault(n, [])
        for i in range(PER):
            ch = general if i % 2 == 0 else hidden
            t0 = time.monotonic()
            st, v = await rest.req(n, "POST", f"/channels/{ch}/messages", tok, {"content": f"{tag} {i}"})
            if st == 200:
                out.append((v["id"], ch, t0))
            else:
                refused.append(f"n{n} message {i}: {st} {v}")
    t0 = time.monotonic()
    await asyncio.gather(*(send(n, tok, f"from n{n}") for n, _, tok, _ in senders))
    fig["messages"] = 2 * PER
    fig["create_rate_per_s"] = round(2 * PER / (time.monotonic() - t0))

    all_sent = [m for n in sent for m in sent[n]]
    public = {m[0] for m in all_sent if m[1] == general}
    secret = {m[0] for m in all_sent if m[1] == hidden}

    def complete():
        return all(set(gw.messages(general)) >= public and (not inside or set(gw.messages(hidden)) >= secret)
                   for _, inside, gw in gws)
    await until(complete, 10)
    await asyncio.sleep(0.5)  # late duplicates or leaks would arrive now

    problems = [reg_problem] if reg_problem else []
    if refused:
        problems.append(f"{len(refused)} of {2 * PER} POSTs refused, first: {refused[0]}")
    fig["acknowledged"] = len(all_sent)
    sent_at = {m[0]: (n, m[2]) for n in sent for m in sent[n]}
    cross, local = [], []
    for n, inside, gw in gws:
        for at, f in gw.dispatches("MESSAGE_CREATE"):
            src = sent_at.get(f["d"]["id"])
            if src:
                (cross if src[0] != n else local).append((at - src[1]) * 1000)
        for ch, want in ((general, public), (hidden, secret if inside else set())):
            got = gw.messages(ch)
            name = "hidden" if ch == hidden else "public"
            if not inside and ch == hidden and got:
                problems.append(f"{gw.name} (no VIEW_CHANNEL) received {len(got)} hidden-channel messages")
                continue
            missing = want - set(got)
            if missing:
                by_node = {sn: sum(1 for m in sent[sn] if m[0] in missing) for sn in sent}
                problems.append(f"{gw.name} missed {len(missing)} of {len(want)} {name} messages "
                                + ", ".join(f"{k} created through n{sn}" for sn, k in by_node.items() if k))
            if len(got) != len(set(got)):
                problems.append(f"{gw.name} received {len(got) - len(set(got))} {name} messages twice")
            for sn in sent:
                order = [m[0] for m in sent[sn] if m[1] == ch and m[0] in set(got)]
                seen = [i for i in got if sent_at.get(i, (None,))[0] == sn]
                if seen != order:
                    problems.append(f"{gw.name}: {name} messages from the sender on n{sn} out of order")
    for ch, name, group in ((general, "public", [gw for _, _, gw in gws]),
                            (hidden, "hidden", [gw for _, inside, gw in gws if inside])):
        orders = {tuple(gw.messages(ch)) for gw in group}
        if len(orders) > 1:
            problems.append(f"the sessions saw {len(orders)} different orders of the {name} channel")
    fig["sessions"] = f"{len(gws)} on {len(NODES)} nodes ({sum(1 for g in gws if g[1])} with the role)"
    fig["cross_node_delivery_p50/p99"] = f"{fmt_ms(pct(cross, .5))} / {fmt_ms(pct(cross, .99))} ({len(cross)} deliveries)"
    fig["same_node_delivery_p50/p99"] = f"{fmt_ms(pct(local, .5))} / {fmt_ms(pct(local, .99))} ({len(local)} deliveries)"
    for _, _, gw in gws:
        await gw.close()
    check(not problems, "; ".join(problems[:6]) + (f" (+{len(problems) - 6} more)" if len(problems) > 6 else ""))


# ---------------------------------------------------------------------------------------------
@step(2, "voice-room", "callers joining through different nodes share one room and hear each other")
async def voice_room(ctx, fig):
    c = ctx.c
    await c.ensure()
    N, S = 6, 3
    load = Load(ctx, "room", [c.url(n) for n in NODES], ["-n", N, "-c", 1, "-s", S, "-d", 15])
    await load.start()
    try:
        gid = await load.guild()
        conns = await joined(ctx, load, N)
        check(conns, f"the nodes never held {N} voice connections together: {await voice_conns(ctx)}; lodge-load: {load.tail()}")
        await asyncio.sleep(2)
        conns = await voice_conns(ctx)
        fig["voice_connections_per_node"] = " ".join(f"n{n}={v}" for n, v in conns.items())
        hosts = [n for n, v in conns.items() if v]
        problems = []
        if len(hosts) != 1:
            problems.append(f"the callers are on {len(hosts)} nodes ({fig['voice_connections_per_node']}), "
                            "not in one room on one home node")
        token = await load_owner_token(ctx, 3, gid)
        chans = {}
        for n in NODES:
            st, v = await ctx.rest.req(n, "GET", f"/guilds/{gid}/voice-states", token)
            if st != 200:
                problems.append(f"GET voice-states on n{n}: {st} {v}")
                continue
            chans[n] = (len(v), {s["channel_id"] for s in v})
        fig["voice_states_per_node"] = " ".join(f"n{n}={k}" for n, (k, _) in chans.items())
        for n, (k, ch) in chans.items():
            if k != N or len(ch) != 1:
                problems.append(f"n{n}'s REST lists {k} voice states in {len(ch)} channels (want {N} in 1)")
        rc, rep = await load.finish(90)
        problems += strict_report(rep, N)
        h = hearing(rep, N)
        fig["heard"] = f"{h * 100:.1f}% of owed packets ({rep.get('rtp_received')} of {rep.get('rtp_sent')} × {N - 1})"
        fig["loss_pct"] = round(rep.get("loss_pct", 0), 2)
        m2e = rep.get("mouth_to_ear_ms") or {}
        fig["mouth_to_ear_p50/p99"] = f"{m2e.get('p50')} / {m2e.get('p99')} ms"
        # A healthy run receives about 97% (the window's edges); one listener missing one of the
        # three speakers alone takes 6.7% away.
        if h < 0.95:
            problems.append(f"the callers received {h * 100:.1f}% of what the speakers sent them (want ≥ 95%)")
        check(not problems, "; ".join(problems))
    finally:
        await load.stop()


async def _sum_is(ctx, k, nodes=NODES):
    v = await voice_conns(ctx)
    return v if sum(v[n] or 0 for n in nodes) == k else None


async def joined(ctx, load, k, nodes=NODES, timeout=60):
    """lodge_voice_connections per node once `nodes` hold k together; None on timeout or when
    lodge-load ends first."""
    async def cond():
        if load.proc.returncode is not None:
            return "ended"
        return await _sum_is(ctx, k, nodes)
    v = await until(cond, timeout, 0.3)
    return None if v == "ended" else v


# ---------------------------------------------------------------------------------------------
@step(3, "kill-media", "the room's node is killed (kill -9): every caller is moved and hears again")
async def kill_media(ctx, fig):
    c = ctx.c
    # n2 serves the API only, n3 and n4 media only: every caller's gateway is on n2 (directly
    # or through the balancer), so it survives the kill; the room lands on n3 or n4 and must
    # move to the other.
    await c.ensure({2: ("--roles", "api"), 3: ("--roles", "media"), 4: ("--roles", "media")})
    N = 6
    load = Load(ctx, "kill", [c.url(2)], ["-n", N, "-c", 1, "-s", 2, "-d", 22])
    await load.start()
    try:
        conns = await joined(ctx, load, N, (3, 4))
        check(conns, f"{N} callers never reached the media nodes: {await voice_conns(ctx)}; lodge-load: {load.tail()}")
        hosts = [n for n in (3, 4) if conns[n]]
        check(len(hosts) == 1, f"one room on two nodes before the kill: {conns}")
        host = hosts[0]
        other = 7 - host
        fig["room_home"] = f"n{host}"
        await asyncio.sleep(4)
        t_kill = time.monotonic()
        await c.kill(host)
        moved = await until(lambda: _sum_is(ctx, N, (other,)), 20, 0.2)
        fig["all_callers_on_new_home_after"] = fmt_ms((time.monotonic() - t_kill) * 1000) if moved else "never (20 s)"
        rc, rep = await load.finish(90)
        problems = strict_report(rep, N)
        rj = rep.get("rejoin_ms") or {}
        fig["calls_moved"] = rep.get("rejoins")
        # lodge-load reports the gap per caller as p50 and max; over 6 callers p99 is the max.
        fig["gap_p50/p99"] = f"{fmt_ms(rj.get('p50'))} / {fmt_ms(rj.get('max'))}"
        if not moved:
            problems.insert(0, f"the callers did not all reach n{other} within 20 s: {await voice_conns(ctx)}")
        if rep.get("rejoins") != N:
            problems.append(f"{rep.get('rejoins')} of {N} callers got a new VOICE_SERVER_UPDATE and rejoined")
        if rj.get("max") is not None and rj["max"] >= 5000:
            problems.append(f"gap p99 {rj['max']:.0f} ms ≥ 5 s")
        check(not problems, "; ".join(problems))
    finally:
        await load.stop()


# ---------------------------------------------------------------------------------------------
@step(4, "kill-gateway", "a gateway node is killed: its clients resume on another, no dispatch missed")
async def kill_gateway(ctx, fig):
    c, rest = ctx.c, ctx.rest
    await c.ensure()
    A, B, C, K = 2, 3, 4, 4
    _, owner, _ = await rest.user(A, "own")
    clients = [await rest.user(B, "cl") for _ in range(K)]
    g = await rest.guild(A, owner, [(B, tok) for _, tok, _ in clients])
    ch = text_channel(g)
    gws = []
    for i, (_, tok, _) in enumerate(clients):
        gw = Gateway(c, ctx.http, tok, f"client{i}@n{B}")
        await gw.identify(B)
        gws.append(gw)
    where = c.node_of_url(gws[0].resume_url)
    fig["resume_gateway_url"] = (f"n{where}" if isinstance(where, int) else where or str(gws[0].resume_url))
    acked, refused, stop = [], [], asyncio.Event()

    async def sender():
        i = 0
        while not stop.is_set():
            st, v = await rest.req(A, "POST", f"/channels/{ch}/messages", owner, {"content": f"seq {i}"})
            (acked.append(v["id"]) if st == 200 else refused.append(st))
            i += 1
            await asyncio.sleep(0.04)
    task = asyncio.create_task(sender())
    problems = []
    try:
        await asyncio.sleep(1.0)
        t_kill = time.monotonic()
        await c.kill(B)

        async def resume(gw):
            await until(lambda: gw.closed_at is not None, 10, 0.02)
            check(gw.closed_at is not None, f"{gw.name}: the connection to the killed node never closed")
            # Where READY told it to resume, when that is alive (another node, the balancer);
            # otherwise straight to C (a client following resume_gateway_url could not: the
            # discord.py step shows that).
            target = c.node_of_url(gw.resume_url)
            if target in (A, C):
                at, label = target, f"n{target}"
            elif target == "balancer":
                at, label = gw.resume_url, "the balancer"
            else:
                at, label = C, f"n{C}"
            ans = await gw.resume(at)
            if ans.get("t") != "RESUMED":
                what = ("Invalid Session (op 9): the session is not resumable away from its dead node"
                        if ans.get("op") == 9 else f"{ans}")
                raise Failed(f"{gw.name} resuming on {label}: {what}")
            return (time.monotonic() - t_kill) * 1000, label
        res = await asyncio.gather(*(resume(gw) for gw in gws), return_exceptions=True)
        for r in res:
            if isinstance(r, BaseException):
                problems.append(str(r))
        ok = [r for r in res if not isinstance(r, BaseException)]
        fig["resumed"] = f"{len(ok)} of {K}" + (f" through {ok[0][1]}" if ok else "")
        fig["kill_to_RESUMED_p50/max"] = f"{fmt_ms(pct([r[0] for r in ok], .5))} / {fmt_ms(max([r[0] for r in ok], default=None))}"
        await asyncio.sleep(2.0)
    finally:
        stop.set()
        await task
    await until(lambda: all(set(gw.messages(ch)) >= set(acked) for gw in gws if gw.closed_at is None), 5)
    await asyncio.sleep(0.3)
    fig["messages_acknowledged"] = len(acked)
    if refused:
        problems.append(f"the sender on n{A} was refused {len(refused)} times ({sorted(set(refused))})")
    for gw in gws:
        got = gw.messages(ch)
        if got != acked:
            missing = [i for i in acked if i not in set(got)]
            dup = len(got) - len(set(got))
            problems.append(f"{gw.name}: {len(missing)} of {len(acked)} messages missing, {dup} twice"
                            + ("" if missing or dup else ", out of order"))
        # Nothing else may be missed either: the session's sequence numbers run on without a jump.
        seqs = gw.seqs()
        jumps = sum(1 for a, b in zip(seqs, seqs[1:]) if b != a + 1)
        if jumps:
            problems.append(f"{gw.name}: {jumps} jumps in its sequence numbers")
    for gw in gws:
        await gw.close()
    check(not problems, "; ".join(problems[:6]))


# ---------------------------------------------------------------------------------------------
@step(5, "redis-restart", "Redis restarts: nodes come back; no acknowledged message lost; no session silently behind")
async def redis_restart(ctx, fig):
    c, rest = ctx.c, ctx.rest
    await c.ensure()
    _, owner, _ = await rest.user(2, "own")
    members = [(n, await rest.user(n, "cl")) for n in NODES for _ in range(2)]
    g = await rest.guild(2, owner, [(n, u[1]) for n, u in members])
    ch = text_channel(g)
    gws = []
    for n, (_, tok, _) in members:
        gw = Gateway(c, ctx.http, tok, f"client@n{n}")
        await gw.identify(n)
        gws.append(gw)
    # A call runs across the restart: N-1 callers before it, the last one joins after it (the
    # go file) and must land in the same room and hear the others.
    N = 5
    go = os.path.join(ctx.args.tmp, "redis-restart.go")
    load = Load(ctx, "redis", [c.url(n) for n in NODES],
                ["-n", N, "-c", 1, "-s", 2, "-d", 8, "--late", 1, "--go-file", go])
    await load.start()
    vgid = await load.guild()
    conns = await joined(ctx, load, N - 1)
    check(conns, f"{N - 1} callers never connected: {await voice_conns(ctx)}; lodge-load: {load.tail()}")
    room = next(n for n, v in conns.items() if v)
    fig["voice_room_home"] = f"n{room}"
    up0 = {n: (await c.metrics(ctx.http, n) or {}).get("lodge_redis_up") for n in NODES}
    acked, refused, stop = [], {}, asyncio.Event()

    async def sender(n):
        i = 0
        while not stop.is_set():
            try:
                st, v = await rest.req(n, "POST", f"/channels/{ch}/messages", owner, {"content": f"n{n} {i}"}, timeout=10)
            except (asyncio.TimeoutError, OSError) as e:
                st, v = type(e).__name__, None
            if st == 200:
                acked.append(v["id"])
            else:
                refused[st] = refused.get(st, 0) + 1
            i += 1
            await asyncio.sleep(0.05)
    tasks = [asyncio.create_task(sender(n)) for n in (2, 4)]
    problems = []
    try:
        await asyncio.sleep(1.5)
        mark = {id(gw): len(gw.events) for gw in gws}
        t_kill = time.monotonic()
        await c.ctl("redis-kill")
        saw_down = {}
        while time.monotonic() - t_kill < 3:
            for n in NODES:
                m = await c.metrics(ctx.http, n) or {}
                if m.get("lodge_redis_up") == 0:
                    saw_down.setdefault(n, (time.monotonic() - t_kill) * 1000)
            await asyncio.sleep(0.2)
        await c.ctl("redis-start")
        t_up = time.monotonic()
        back = {}
        while time.monotonic() - t_up < 20 and len(back) < len(NODES):
            for n in NODES:
                if n in back:
                    continue
                m = await c.metrics(ctx.http, n)
                ready = await c.readyz(ctx.http, n)
                # Connected again, registered again, and seeing all three nodes in the registry.
                if (m is not None and m.get("lodge_redis_up") == 1 and m.get("lodge_cluster_registered") == 1
                        and m.get("lodge_cluster_nodes") == len(NODES) and ready == 200):
                    back[n] = (time.monotonic() - t_up) * 1000
            await asyncio.sleep(0.2)
        fig["lodge_redis_up_before"] = " ".join(f"n{n}={v}" for n, v in up0.items())
        fig["noticed_down_after"] = " ".join(f"n{n}={fmt_ms(saw_down.get(n))}" for n in NODES)
        fig["reconnected_and_registered_after"] = " ".join(f"n{n}={fmt_ms(back.get(n))}" for n in NODES)
        if any(v is None for v in up0.values()):
            problems.append("no lodge_redis_up metric on " + ", ".join(f"n{n}" for n, v in up0.items() if v is None))
        if len(saw_down) < len(NODES):
            problems.append("lodge_redis_up never read 0 while Redis was down on "
                            + ", ".join(f"n{n}" for n in NODES if n not in saw_down))
        if len(back) < len(NODES):
            late = []
            for n in NODES:
                if n not in back:
                    m = await c.metrics(ctx.http, n) or {}
                    late.append(f"n{n} (lodge_redis_up {m.get('lodge_redis_up')}, lodge_cluster_registered "
                                f"{m.get('lodge_cluster_registered')}, lodge_cluster_nodes {m.get('lodge_cluster_nodes')}, "
                                f"/readyz {await c.readyz(ctx.http, n)})")
            problems.append("not connected, registered and seeing all nodes 20 s after Redis returned: " + ", ".join(late))
        problems += await voice_after_restart(ctx, fig, load, vgid, N, room, go)
        await asyncio.sleep(1)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    fig["acknowledged/refused"] = f"{len(acked)} / {sum(refused.values())} {refused if refused else ''}".strip()
    await asyncio.sleep(2)
    # Every acknowledged message is in the history.
    stored, before = set(), None
    for _ in range(50):
        q = f"/channels/{ch}/messages?limit=100" + (f"&before={before}" if before else "")
        st, v = await rest.req(3, "GET", q, owner)
        check(st == 200, f"GET history after the restart: {st} {v}")
        if not v:
            break
        stored |= {m["id"] for m in v}
        before = min(v, key=lambda m: int(m["id"]))["id"]
    lost = [i for i in acked if i not in stored]
    fig["acknowledged_but_lost"] = len(lost)
    if lost:
        problems.append(f"{len(lost)} of {len(acked)} acknowledged messages are not in the history")
    told = complete = 0
    for gw in gws:
        got = set(gw.messages(ch))
        if any(f.get("op") in (7, 9) for _, f in gw.events[mark[id(gw)]:]):
            told += 1
        elif got >= set(acked):
            complete += 1
        else:
            problems.append(f"{gw.name} missed {len(set(acked) - got)} messages and was never told (no op 7 or 9)")
    fig["sessions_complete/told"] = f"{complete} / {told} of {len(gws)}"
    for gw in gws:
        await gw.close()
    # The bus works again: a fresh session on each node hears a message created on n2.
    fresh = []
    for n in NODES:
        gw = Gateway(c, ctx.http, members[NODES.index(n) * 2][1][1], f"fresh@n{n}")
        try:
            await gw.identify(n)
            fresh.append(gw)
        except Failed as e:
            problems.append(f"a new session on n{n} after the restart: {e}")
    st, v = await rest.req(2, "POST", f"/channels/{ch}/messages", owner, {"content": "after the restart"})
    if st == 200:
        await until(lambda: all(v["id"] in gw.messages(ch) for gw in fresh), 5)
        deaf = [gw.name for gw in fresh if v["id"] not in gw.messages(ch)]
        if deaf:
            problems.append(f"after the restart a message created on n2 did not reach {', '.join(deaf)}")
    else:
        problems.append(f"POST after the restart: {st} {v}")
    for gw in fresh:
        await gw.close()
    rc, rep = await load.finish(60)
    problems += strict_report(rep, N)
    fig["call_loss_pct"] = round(rep.get("loss_pct", 0), 2)
    # Sequence gaps by size in packets of 20 ms (1 / 2 / 3–5 / 6–20 / more): what callers heard
    # of the restart.
    fig["call_gaps_by_size"] = " / ".join(str(x) for x in rep.get("gap_sizes", []))
    fig["call_rejoins"] = rep.get("rejoins")
    res = rep.get("gateway_resumes") or {}
    fig["callers_gateway_resumed/identified_again/failed"] = (
        f"{res.get('resumed')} / {res.get('identified_again')} / {res.get('failed')}")
    if rep.get("loss_pct", 0) > 1.0:
        problems.append(f"the call lost {rep['loss_pct']:.2f}% across the Redis restart (want ≤ 1%)")
    check(not problems, "; ".join(problems[:6]))


async def voice_after_restart(ctx, fig, load, gid, n_callers, room, go):
    """After Redis came back empty: every node lists the call's voice states again (the home
    node re-asserted them), and a caller joining now lands in the same room. Returns problems."""
    problems = []
    token = await load_owner_token(ctx, 2, gid)

    async def states_ok(want):
        out = {}
        for n in NODES:
            st, v = await ctx.rest.req(n, "GET", f"/guilds/{gid}/voice-states", token)
            out[n] = (len(v), len({s["channel_id"] for s in v})) if st == 200 else (st, None)
        return out if all(x == (want, 1) for x in out.values()) else None
    t0 = time.monotonic()
    ok = await until(lambda: states_ok(n_callers - 1), 10, 0.2)
    fig["voice_states_back_after"] = fmt_ms((time.monotonic() - t0) * 1000) if ok else "never (10 s)"
    if not ok:
        problems.append(f"10 s after Redis returned the nodes do not list the call's {n_callers - 1} voice states "
                        f"in one channel (node: (states, channels)): {await states_now(ctx, gid, token)}")
    with open(go, "w"):
        pass
    conns = await joined(ctx, load, n_callers)
    if not conns:
        problems.append(f"the caller joining after the restart never connected: {await voice_conns(ctx)}; lodge-load: {load.tail()}")
    elif conns[room] != n_callers:
        problems.append(f"the caller joining after the restart is not in the room on n{room}: {conns}")
    return problems


async def states_now(ctx, gid, token):
    out = {}
    for n in NODES:
        st, v = await ctx.rest.req(n, "GET", f"/guilds/{gid}/voice-states", token)
        out[f"n{n}"] = (len(v), len({s["channel_id"] for s in v})) if st == 200 else st
    return out


# ---------------------------------------------------------------------------------------------
@step(6, "postgres-down", "PostgreSQL unreachable: REST 503 with Discord-shaped JSON; a call goes on")
async def postgres_down(ctx, fig):
    c, rest = ctx.c, ctx.rest
    await c.ensure()
    _, owner, _ = await rest.user(2, "own")
    g = await rest.guild(2, owner, [])
    ch = text_channel(g)
    N = 4
    load = Load(ctx, "pg", [c.url(n) for n in NODES], ["-n", N, "-c", 1, "-s", 2, "-d", 20])
    await load.start()
    problems = []
    stopped = False
    try:
        conns = await joined(ctx, load, N)
        check(conns, f"{N} callers never connected: {await voice_conns(ctx)}; lodge-load: {load.tail()}")
        await asyncio.sleep(3)

        async def forwarded():
            tot = 0
            for n in NODES:
                m = await c.metrics(ctx.http, n) or {}
                tot += m.get("lodge_rtp_forwarded_total", 0)
            return tot
        f0, t0 = await forwarded(), time.monotonic()
        await asyncio.sleep(3)
        base_rate = (await forwarded() - f0) / (time.monotonic() - t0)
        await c.ctl("pg-stop")
        stopped = True
        t_stop = time.monotonic()
        f1 = await forwarded()
        answers, slow = [], []

        async def probe(n, method, path, body, wait):
            t = time.monotonic()
            try:
                st, v = await rest.req(n, method, path, owner, body, timeout=wait)
            except asyncio.TimeoutError:
                st, v = f"no answer in {wait} s", None
            ms = (time.monotonic() - t) * 1000
            slow.append(ms)
            answers.append((n, method, st if ms <= 5000 or not isinstance(st, int) else f"{st} after {ms / 1000:.1f} s", v))
        # Two rounds, 2 s apart: every node, a read and a write, all at once. The first waits
        # long enough to see what a slow node finally answers; the second 5 s.
        for wait in (12, 5):
            await asyncio.gather(*(probe(n, method, path, body, wait) for n in NODES for method, path, body in (
                ("GET", f"/channels/{ch}/messages?limit=5", None),
                ("POST", f"/channels/{ch}/messages", {"content": "while down"}))))
            await asyncio.sleep(2)
        down_rate = (await forwarded() - f1) / (time.monotonic() - t_stop)
        kinds = {}
        for _, _, st, _ in answers:
            kinds[st] = kinds.get(st, 0) + 1
        fig["rest_answers_while_down"] = ", ".join(f"{k}×{v}" for k, v in kinds.items())
        fig["answer_time_p50/max"] = f"{fmt_ms(pct(slow, .5))} / {fmt_ms(max(slow))}"
        fig["forwarded_pps_before/while_down"] = f"{base_rate:.0f} / {down_rate:.0f}"
        bad = [a for a in answers if not (a[2] == 503 and isinstance(a[3], dict)
                                          and isinstance(a[3].get("code"), int) and isinstance(a[3].get("message"), str))]
        if bad:
            n, method, st, v = bad[0]
            problems.append(f"{len(bad)} of {len(answers)} REST answers while PostgreSQL was down were not "
                            f"503 {{code, message}} within 5 s (answers: {fig['rest_answers_while_down']}; "
                            f"time p50/max {fig['answer_time_p50/max']}); first: {method} on n{n}: {st} {str(v)[:120]}")
        # Talk spurts make the rate vary by a third between windows; an interrupted call drops
        # far below half.
        if down_rate < 0.5 * base_rate:
            problems.append(f"media forwarding fell from {base_rate:.0f} to {down_rate:.0f} packets/s while PostgreSQL was down")
        await c.ctl("pg-start")
        stopped = False
        t_start = time.monotonic()

        async def healthy():
            for n in NODES:
                try:
                    st, _ = await rest.req(n, "GET", f"/channels/{ch}/messages?limit=1", owner, timeout=3)
                except asyncio.TimeoutError:
                    return False
                if st != 200:
                    return False
            return True
        rec = await until(healthy, 30, 0.2)
        fig["rest_recovered_after"] = fmt_ms((time.monotonic() - t_start) * 1000) if rec else "never (30 s)"
        if not rec:
            problems.append("REST did not recover within 30 s of PostgreSQL's return")
        else:
            st, v = await rest.req(3, "POST", f"/channels/{ch}/messages", owner, {"content": "after"})
            if st != 200:
                problems.append(f"POST after PostgreSQL returned: {st} {v}")
        rc, rep = await load.finish(90)
        problems += strict_report(rep, N)
        fig["call_loss_pct"] = round(rep.get("loss_pct", 0), 2)
        fig["sequence_gaps"] = rep.get("sequence_gaps")
        if rep.get("loss_pct", 0) > 1.0:
            problems.append(f"the call lost {rep['loss_pct']:.2f}% while PostgreSQL was down (want ≤ 1%)")
        check(not problems, "; ".join(problems[:6]))
    finally:
        if stopped:
            await c.ctl("pg-start")
        await load.stop()


# ---------------------------------------------------------------------------------------------
@step(7, "discordpy", "the unmodified discord.py bot resumes on another node after its node is killed")
async def discordpy(ctx, fig):
    c = ctx.c
    await c.ensure()
    bot_node = 4
    cmd = [sys.executable, os.path.join(HERE, "bot_resume.py"),
           "--rest", c.url(2), "--gateway", c.url(bot_node),
           "--kill", f"{ctx.args.ctl} node-kill {bot_node}",
           "--live", ",".join([c.url(n) for n in NODES if n != bot_node] + [c.balancer])]
    c.killed.add(bot_node)  # the bot's script kills it (ctl.sh) at the right moment
    p = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(p.communicate(), 100)
    except asyncio.TimeoutError:
        p.kill()
        out, _ = await p.communicate()
        out += b"\nFAIL: the bot test did not finish in 100 s"
    lines = out.decode(errors="replace").splitlines()
    for line in lines:
        if line.startswith("figure: "):
            k, _, v = line[8:].partition("=")
            fig[k] = v
    fails = [line[6:] for line in lines if line.startswith("FAIL: ")]
    oks = [line[4:] for line in lines if line.startswith("ok: ")]
    check(p.returncode == 0 and not fails,
          (fails[0] if fails else f"exit {p.returncode}: " + " | ".join(lines[-4:]))
          + (f" (last passed check: {oks[-1]})" if oks else ""))


# ---------------------------------------------------------------------------------------------
@step(8, "presence", "presence crosses nodes: op 3 on one node reaches a member on another; offline only after the last session")
async def presence(ctx, fig):
    c, rest = ctx.c, ctx.rest
    await c.ensure()
    A, A2, B = 2, 4, 3
    intents = 1 | (1 << 8)  # GUILDS | GUILD_PRESENCES (not privileged for a user account)
    uid, utok, _ = await rest.user(A, "pr")
    _, otok, _ = await rest.user(B, "ob")
    _, owner, _ = await rest.user(A, "own")
    await rest.guild(A, owner, [(A, utok), (B, otok)])
    obs = Gateway(c, ctx.http, otok, f"observer@n{B}")
    await obs.identify(B, intents)
    user_a = Gateway(c, ctx.http, utok, f"user@n{A}")
    user_a2 = Gateway(c, ctx.http, utok, f"user@n{A2}")
    problems = []

    def about(status, since):
        def pred(f):
            return (f.get("t") == "PRESENCE_UPDATE" and f["d"]["user"]["id"] == uid
                    and f["d"]["status"] == status)
        return lambda: obs.wait(pred, 5, f"PRESENCE_UPDATE {status} of the user", since=since)
    try:
        mark = len(obs.events)
        await user_a.identify(A, intents)
        await user_a2.identify(A2, intents)
        await about("online", mark)()
        # op 3 on n2 (the user's session there): the observer on n3 hears it.
        mark, t0 = len(obs.events), time.monotonic()
        await user_a.send({"op": 3, "d": {"status": "dnd", "activities": [], "since": None, "afk": False}})
        await about("dnd", mark)()
        fig["op3_to_other_node"] = fmt_ms((time.monotonic() - t0) * 1000)
        # The session on n4 goes: the user still has one on n2, so nobody sees them offline.
        mark = len(obs.events)
        await user_a2.close()
        await asyncio.sleep(1.5)
        early = [f for _, f in obs.events[mark:] if f.get("t") == "PRESENCE_UPDATE" and f["d"]["user"]["id"] == uid]
        if early:
            problems.append(f"after one of two sessions closed the observer saw {early[0]['d']['status']}")
        # The last session (n2) goes: the observer on n3 sees the user offline.
        mark, t0 = len(obs.events), time.monotonic()
        await user_a.close()
        try:
            await about("offline", mark)()
            fig["last_session_closed_to_offline"] = fmt_ms((time.monotonic() - t0) * 1000)
        except Failed as e:
            problems.append(str(e))
    finally:
        for gw in (obs, user_a, user_a2):
            await gw.close()
    check(not problems, "; ".join(problems))


async def connected_sessions(ctx, n):
    """Node n's connected gateway sessions (lodge_gateway_sessions{state="connected"})."""
    async with ctx.http.get(ctx.c.url(n) + "/metrics") as r:
        text = await r.text()
    m = re.search(r'^lodge_gateway_sessions\{state="connected"\} (\d+)', text, re.M)
    return int(m.group(1)) if m else 0


# ---------------------------------------------------------------------------------------------
@step(9, "kill-both", "the node holding callers' gateway sessions and their room is killed: they resume and hear again")
async def kill_both(ctx, fig):
    c = ctx.c
    # Every node serves the API and media; the callers' gateways go through the balancer (one
    # node each in turn), so the room's node also holds about a third of the gateway sessions.
    # Those callers lose both at once: lodge-load resumes their session at resume_gateway_url,
    # and the resumed session must move their orphaned call (VOICE_SERVER_UPDATE).
    await c.ensure()
    N = 6
    load = Load(ctx, "both", [c.url(n) for n in NODES], ["-n", N, "-c", 1, "-s", 2, "-d", 14])
    await load.start()
    conns = await joined(ctx, load, N)
    check(conns, f"{N} callers never connected: {await voice_conns(ctx)}; lodge-load: {load.tail()}")
    hosts = [n for n in NODES if conns[n]]
    check(len(hosts) == 1, f"one room on several nodes before the kill: {conns}")
    host = hosts[0]
    # lodge-load's callers are the only connected gateway sessions now (earlier steps closed
    # theirs).
    on_host = await connected_sessions(ctx, host)
    fig["room_home"] = f"n{host}"
    fig["gateway_sessions_on_it"] = on_host
    await asyncio.sleep(3)
    t_kill = time.monotonic()
    await c.kill(host)
    others = tuple(n for n in NODES if n != host)
    moved = await until(lambda: _sum_is(ctx, N, others), 25, 0.2)
    fig["all_callers_in_a_room_again_after"] = fmt_ms((time.monotonic() - t_kill) * 1000) if moved else "never (25 s)"
    rc, rep = await load.finish(90)
    problems = strict_report(rep, N)
    res = rep.get("gateway_resumes") or {}
    rj = rep.get("rejoin_ms") or {}
    fig["gateway_resumed/failed"] = f"{res.get('resumed')} / {res.get('failed')}"
    fig["lost_to_RESUMED_p50/max"] = f"{fmt_ms((res.get('ms') or {}).get('p50'))} / {fmt_ms((res.get('ms') or {}).get('max'))}"
    fig["calls_moved"] = rep.get("rejoins")
    # lodge-load reports the gap (voice lost → media again) as p50 and max; over 6 callers p99
    # is the max.
    fig["gap_p50/p99"] = f"{fmt_ms(rj.get('p50'))} / {fmt_ms(rj.get('max'))}"
    if not moved:
        problems.insert(0, f"the callers were not all in a room on the other nodes within 25 s: {await voice_conns(ctx)}")
    if on_host < 1:
        problems.append(f"no caller had its gateway session on n{host}: the step tested nothing (lodge_gateway_sessions 0)")
    if (res.get("resumed") or 0) < on_host:
        problems.append(f"{res.get('resumed')} gateway sessions resumed, {on_host} were on the killed node")
    if rep.get("rejoins") != N:
        problems.append(f"{rep.get('rejoins')} of {N} callers got a new VOICE_SERVER_UPDATE and rejoined")
    if rj.get("max") is not None and rj["max"] >= 8000:
        problems.append(f"gap p99 {rj['max']:.0f} ms ≥ 8 s")
    check(not problems, "; ".join(problems))


# ---------------------------------------------------------------------------------------------
def _free_udp(ip):
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sk:
        sk.bind((ip, 0))
        return sk.getsockname()[1]


def _edge_url(ctx):
    with open(os.path.join(ctx.args.tmp, "edge.ports")) as f:
        return "http://127.0.0.6:" + f.read().split()[0]


@step(10, "edges", "an edge (region eu) trunks to every media node: two rooms on two nodes through one edge; the seed's room node is killed, then the edge")
async def edges(ctx, fig):
    c = ctx.c
    # n2 serves the API (every caller's gateway is there, so it survives the kill); n3 and n4
    # host rooms and accept edge trunks. The edge is given n3 alone (the seed) and must learn
    # n4 from it.
    token = "edge-" + rand_name("tok") * 2
    trunk = {n: f"127.0.0.{n}:{_free_udp(f'127.0.0.{n}')}" for n in (3, 4)}
    media = lambda n: ("--roles", "media", "--trunk-listen", trunk[n], "--cluster-token", token)  # noqa: E731
    await c.ensure({2: ("--roles", "api"), 3: media(3), 4: media(4)})
    with open(c.log_path(3), errors="replace") as f:
        fps = re.findall(r"sha256:[0-9a-f]{64}", f.read())
    check(fps, "n3 logged no trunk fingerprint")
    await c.ctl("edge-kill", "TERM")
    await c.ctl("edge-start", trunk[3], fps[-1], token, "eu")
    edge = _edge_url(ctx)
    loads = []
    try:
        async def trunks():
            m = await c.metrics_at(ctx.http, edge, count=True) or {}
            return int(m.get("lodge_trunk_rtt_seconds", 0))
        t0 = time.monotonic()
        two = await until(lambda: _at_least(trunks(), 2), 30, 0.2)
        check(two, f"the edge holds {await trunks()} trunks, not one to each media node (seeded with n3)")
        fig["edge_trunks"] = f"{await trunks()} (up {fmt_ms((time.monotonic() - t0) * 1000)} after start)"

        async def edge_conns():
            m = await c.metrics_at(ctx.http, edge) or {}
            return int(m.get("lodge_voice_connections", 0))

        # Room A first; room B then lands on the other (less loaded) media node. 6 callers each,
        # every other one asks for region eu (3 on the edge, 3 on the room's node), 3 speakers.
        N, homes = 6, []
        for i, dur in enumerate((36, 30)):
            load = Load(ctx, f"edge{i}", [c.url(2)],
                        ["-n", N, "-c", 1, "-s", 3, "-d", dur, "--regions", "eu,origin"])
            await load.start()
            loads.append(load)
            conns = await joined(ctx, load, 3 * (i + 1), (3, 4))
            check(conns, f"room {'AB'[i]}: callers never reached the media nodes: {await voice_conns(ctx)}; lodge-load: {load.tail()}")
            ok = await until(lambda: _eq(edge_conns(), 3 * (i + 1)), 30, 0.2)
            check(ok, f"room {'AB'[i]}: the edge holds {await edge_conns()} voice connections, want {3 * (i + 1)}; lodge-load: {load.tail()}")
            new = [n for n in (3, 4) if conns[n] and n not in homes]
            check(len(new) == 1, f"room {'AB'[i]} is not on a node of its own: {conns} (earlier homes {homes})")
            homes.append(new[0])
        fig["room_homes"] = f"A n{homes[0]}, B n{homes[1]}"
        await asyncio.sleep(4)
        m = await c.metrics_at(ctx.http, edge) or {}
        out, inn = int(m.get("lodge_trunk_streams_out", 0)), int(m.get("lodge_trunk_streams_in", 0))
        fig["edge_trunk_streams_out/in"] = f"{out} / {inn}"
        # Each room has 2 speakers on the edge (callers 0 and 2 of 3 speakers): 4 streams if each
        # goes only to its room's node, 8 if the edge sent every room to every trunk.
        check(out == 4, f"the edge sends {out} speaker streams on its trunks, want 4 (each room's 2 edge speakers to its own node only)")
        check(inn == 2, f"the edge receives {inn} speaker streams, want 2 (each room's 1 node speaker)")
        # Kill the seed (n3), the home of one of the rooms: the edge keeps its trunk to n4.
        killed = homes.index(3)
        other = 4
        t_kill = time.monotonic()
        await c.kill(3)
        moved = await until(lambda: _sum_is(ctx, 2 * 3, (other,)), 20, 0.2)
        fig["node_callers_on_n4_after"] = fmt_ms((time.monotonic() - t_kill) * 1000) if moved else "never (20 s)"
        problems = [] if moved else [f"the node callers did not all reach n{other} within 20 s: {await voice_conns(ctx)}"]
        # Then the edge dies: n4, the one node it still trunks to, moves its 6 callers (3 per
        # room) to itself (there is no other eu edge).
        await asyncio.sleep(2)
        t_kill = time.monotonic()
        await c.ctl("edge-kill", "KILL")
        all_on = await until(lambda: _sum_is(ctx, 4 * 3, (other,)), 20, 0.2)
        fig["edge_callers_on_n4_after"] = fmt_ms((time.monotonic() - t_kill) * 1000) if all_on else "never (20 s)"
        if not all_on:
            problems.append(f"the edge's callers did not all reach n{other} within 20 s: {await voice_conns(ctx)}")
        for i, load in enumerate(loads):
            rc, rep = await load.finish(90)
            room = "AB"[i]
            problems += [f"room {room}: {p}" for p in strict_report(rep, N)]
            h = hearing(rep, N)
            fig[f"room_{room}_heard"] = f"{h * 100:.1f}% (loss {rep.get('loss_pct', 0):.2f}%)"
            # The killed node's room: all 6 callers moved, then its 3 edge callers again when
            # the edge dies; the other room: its 3 edge callers, once.
            want = N + 3 if i == killed else 3
            rj = rep.get("rejoin_ms") or {}
            fig[f"room_{room}_moved"] = rep.get("rejoins")
            fig[f"room_{room}_gap_p50/p99"] = f"{fmt_ms(rj.get('p50'))} / {fmt_ms(rj.get('max'))}"
            if rep.get("rejoins") != want:
                problems.append(f"room {room}: {rep.get('rejoins')} moves (a new VOICE_SERVER_UPDATE and a rejoin), want {want}")
            if rj.get("max") is not None and rj["max"] >= 5000:
                problems.append(f"room {room}: gap p99 {rj['max']:.0f} ms ≥ 5 s")
            if i != killed and h < 0.90:
                problems.append(f"room {room}: the callers received {h * 100:.1f}% of what the speakers sent them (want ≥ 90% with one move)")
        check(not problems, "; ".join(problems))
    finally:
        for load in loads:
            await load.stop()
        await c.ctl("edge-kill", "TERM")


async def _at_least(v, k):
    v = await v
    return v if v >= k else None


async def _eq(v, k):
    return (await v) == k


# ---------------------------------------------------------------------------------------------
def selected(only):
    want = [s.strip() for s in re.split(r"[;,]", only) if s.strip()]
    for w in want:
        check(any(w in (str(num), name) for num, name, _, _ in STEPS), f"ONLY names an unknown step: {w}")
    return [s for s in STEPS if not want or str(s[0]) in want or s[1] in want]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctl", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--db-url", required=True)
    ap.add_argument("--balancer", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    try:
        steps = selected(args.only)
    except Failed as e:
        print(f"scale suite: {e} (steps: {', '.join(f'{num} {name}' for num, name, _, _ in STEPS)})")
        return 2
    results = []
    cluster = Cluster(args.ctl, args.tmp, args.balancer)
    async with session() as http:
        ctx = Ctx(args, cluster, http)
        for num, name, what, f in steps:
            print(f"\n== {num}. {name}: {what}", flush=True)
            fig, t0 = {}, time.monotonic()
            rec = {"step": num, "name": name, "what": what, "figures": fig}
            cluster.mark()
            try:
                await asyncio.wait_for(f(ctx, fig), STEP_TIMEOUT)
                rec["ok"] = True
            except asyncio.TimeoutError:
                rec["ok"], rec["error"] = False, f"the step did not finish in {STEP_TIMEOUT} s"
            except Failed as e:
                rec["ok"], rec["error"] = False, str(e)
            except Exception as e:  # noqa: BLE001 (report it as this step's failure, go on)
                rec["ok"], rec["error"] = False, f"{type(e).__name__}: {e}"
            for load in ctx.loads:
                await load.stop()
            ctx.loads.clear()
            rec["seconds"] = round(time.monotonic() - t0, 1)
            exited, node_errors = cluster.review()
            if exited:
                rec["ok"] = False
                rec["error"] = "; ".join(exited + ([rec["error"]] if rec.get("error") else []))
            if node_errors:
                rec["node_errors"] = node_errors
                print("   node ERROR lines during the step:\n     " + "\n     ".join(node_errors[:5]), flush=True)
            for k, v in fig.items():
                print(f"   {k}: {v}", flush=True)
            print(f"   {'PASS' if rec['ok'] else 'FAIL'} ({rec['seconds']} s)"
                  + ("" if rec["ok"] else f": {rec['error']}"), flush=True)
            results.append(rec)
    failed = sum(1 for r in results if not r["ok"])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "scale-report.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "scale-report.md"), "w") as f:
        f.write("| # | step | result | figures |\n|---|---|---|---|\n")
        for r in results:
            figs = "; ".join(f"{k}: {v}" for k, v in r["figures"].items())
            if r.get("node_errors"):
                figs += "; node ERROR lines: " + " / ".join(r["node_errors"][:3])
            res = "pass" if r["ok"] else "FAIL: " + r["error"].replace("|", "\\|")
            f.write(f"| {r['step']} | {r['name']} | {res} | {figs.replace('|', '/')} |\n")
    print("\n step            result  s      figures")
    for r in results:
        figs = "; ".join(f"{k} {v}" for k, v in r["figures"].items())
        print(f" {r['step']} {r['name']:<14} {'pass' if r['ok'] else 'FAIL':<6} {r['seconds']:<6} {figs[:200]}")
    print(f"\n{len(results) - failed} of {len(results)} steps passed; report in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
