"""A rolling restart of a two-node cluster under a running `lodge-load voice` crowd (issue #16):
n2 gets SIGTERM (drain), exits, starts again; then n3 the same. Every caller must keep media
(lodge-load strict: all connected, none deaf, no errors, no moved caller without media at the
end), every caller is moved at least once, and each caller's longest gap (voice moved → media
again) has p99 < 1 s. Beside the crowd, two `lodge-voice` native clients (issue #18) share a
channel of their own, one sending a tone: both must stay in the call through both drains
(following each VOICE_SERVER_UPDATE and resuming the gateway), and the listener must have
heard the speaker over at least two voice connections, the last one still current. Run by
rolling.sh, which starts Redis, PostgreSQL, the balancer and the nodes through ctl.sh.

Usage: rolling.py --ctl ctl.sh --tmp DIR --load lodge-load --voice lodge-voice
    --balancer http://127.0.0.5:PORT --out DIR [--callers 24 --channels 4 --gap-p99-ms 1000]
"""

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Cluster, Failed, Rest, check, session, until  # noqa: E402

NODES = (2, 3)


async def voice_conns(c, http):
    out = {}
    for n in NODES:
        m = await c.metrics(http, n)
        out[n] = None if m is None else int(m.get("lodge_voice_connections", 0))
    return out


async def voice_conns_total(c, http, k):
    """Both nodes together hold k voice connections."""
    v = await voice_conns(c, http)
    return sum(x or 0 for x in v.values()) == k


async def cluster_of(c, http, k):
    """Both nodes see k registered nodes."""
    for n in NODES:
        m = await c.metrics(http, n) or {}
        if m.get("lodge_cluster_nodes") != k:
            return False
    return True


def log_since(c, n, mark):
    with open(c.log_path(n), errors="replace") as f:
        f.seek(mark)
        return f.read()


async def roll(c, http, n, fig):
    """SIGTERM node n, wait for it to exit (the drain), start it again, wait until both nodes
    see each other. Returns the drain's duration in seconds."""
    pid = c.pid(n)
    check(pid, f"n{n} has no pid")
    mark = os.path.getsize(c.log_path(n))
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)

    def gone():
        try:
            os.kill(pid, 0)
            return False
        except OSError:
            return True
    exited = await until(gone, 40, 0.05)
    took = time.monotonic() - t0
    log = log_since(c, n, mark)
    check(exited, f"n{n} did not exit within 40 s of SIGTERM: ...{log[-600:]}")
    drained = re.search(r"drained: no calls and no gateway connections left.*", log)
    check(drained, f"n{n} exited without draining empty (timed out?): ...{log[-800:]}")
    moved = re.search(r"moved=(\d+)", drained.group(0))
    fig[f"n{n}_drain"] = f"{took:.1f} s, {moved.group(1) if moved else '?'} callers moved"
    check("lodge node stopped" in log, f"n{n} did not stop cleanly: ...{log[-600:]}")
    await c.ctl("node-start", n)
    await c.ctl("node-wait", n, 60)
    check(await until(lambda: cluster_of(c, http, 2), 15, 0.2), f"n{n} did not rejoin the cluster")
    return took


async def native_pair(c, http, voice_bin, balancer, tmp):
    """Two lodge-voice clients in a voice channel of their own guild: a speaker (440 Hz) and a
    listener. Returns [(name, process, user id, stats path)]."""
    rest = Rest(c, http)
    sid, stok, _ = await rest.user(2, "vs")
    lid, ltok, _ = await rest.user(2, "vl")
    g = await rest.guild(2, stok, [(2, ltok)])
    voice = next(ch["id"] for ch in g["channels"] if ch["type"] == 2)
    out = []
    for name, uid, tok, extra in (("speaker", sid, stok, ["--tone", "440"]), ("listener", lid, ltok, [])):
        stats = os.path.join(tmp, f"native-{name}.json")
        log = open(os.path.join(tmp, f"native-{name}.log"), "w")
        p = await asyncio.create_subprocess_exec(
            voice_bin, "--url", balancer, "--token", tok, "--guild", g["id"], "--channel", voice,
            "--stats-every", "0", "--stats-json", stats, *extra,
            stdout=log, stderr=asyncio.subprocess.STDOUT)
        out.append((name, p, uid, stats))
    return out


async def end_native(pair, tmp):
    """Leave both calls (SIGINT) and check what they went through; a list of problems."""
    problems = []
    for name, p, _, _ in pair:
        if p.returncode is None:
            p.send_signal(signal.SIGINT)
    for name, p, _, _ in pair:
        try:
            rc = await asyncio.wait_for(p.wait(), 20)
        except asyncio.TimeoutError:
            p.kill()
            rc = await p.wait()
        if rc != 0:
            with open(os.path.join(tmp, f"native-{name}.log"), errors="replace") as f:
                tail = " | ".join(line for line in f.read().splitlines() if line.strip())[-400:]
            problems.append(f"lodge-voice {name} exited {rc} (the call ended?): {tail}")
    if problems:
        return problems
    speaker_id = pair[0][2]
    with open(pair[1][3]) as f:
        st = json.load(f)
    heard = [s for s in st.get("speakers", []) if s.get("userId") == str(speaker_id)]
    current = [s for s in heard if not s.get("left")]
    if len(heard) < 2:
        problems.append(f"the native listener heard the speaker over {len(heard)} voice connection(s), want ≥ 2 (a move followed)")
    if not current or current[-1].get("packetsReceived", 0) < 50:
        problems.append(f"the native listener does not hear the speaker on its last connection: {heard}")
    return problems


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctl", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--voice", required=True, help="the lodge-voice binary")
    ap.add_argument("--balancer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--callers", type=int, default=24)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--gap-p99-ms", type=float, default=1000)
    a = ap.parse_args()
    c = Cluster(a.ctl, a.tmp, a.balancer)
    os.makedirs(a.out, exist_ok=True)
    N = a.callers
    fig = {}
    report_path = os.path.join(a.tmp, "rolling-load.json")
    err_path = os.path.join(a.tmp, "rolling-load.err")
    md_path = os.path.join(a.out, "rolling-load.md")
    # Long enough for both drains and restarts inside the measured window (it starts once
    # every caller is connected).
    cmd = [a.load, "voice", "--url", a.balancer, "--source-ip", "127.0.0.10", "-n", str(N),
           "-c", str(a.channels), "-s", "2", "-d", "40", "--probes", "0", "--strict",
           "--report", report_path]
    async with session() as http:
        check(await until(lambda: cluster_of(c, http, 2), 15, 0.2), "the two nodes never saw each other")
        with open(err_path, "w") as err, open(md_path, "w") as md:
            load = await asyncio.create_subprocess_exec(*cmd, stdout=md, stderr=err)
            pair = []
            try:
                async def all_in():
                    if load.returncode is not None:
                        return "ended"
                    v = await voice_conns(c, http)
                    return v if sum(x or 0 for x in v.values()) == N else None
                v = await until(all_in, 90, 0.3)
                check(v and v != "ended", f"{N} callers never connected: {await voice_conns(c, http)}")
                fig["before"] = {f"n{n}": k for n, k in v.items()}
                pair = await native_pair(c, http, a.voice, a.balancer, a.tmp)
                native_in = await until(lambda: voice_conns_total(c, http, N + 2), 30, 0.3)
                check(native_in, f"the two lodge-voice clients never connected: {await voice_conns(c, http)}")
                await asyncio.sleep(3)
                for n in NODES:
                    await roll(c, http, n, fig)
                    # The other node holds every call now; the restarted one takes the next.
                    await asyncio.sleep(3)
                fig["after"] = {f"n{n}": k for n, k in (await voice_conns(c, http)).items()}
                native_problems = await end_native(pair, a.tmp)
                rc = await asyncio.wait_for(load.wait(), 120)
            finally:
                if load.returncode is None:
                    load.kill()
                    await load.wait()
                for _, p, _, _ in pair:
                    if p.returncode is None:
                        p.kill()
                        await p.wait()
    with open(err_path, errors="replace") as f:
        tail = " | ".join(line for line in re.split(r"[\r\n]", f.read()) if line.strip())[-600:]
    check(os.path.exists(report_path), f"lodge-load wrote no report (exit {rc}): {tail}")
    with open(report_path) as f:
        rep = json.load(f)
    gap = rep.get("caller_gap_ms") or {}
    fig["callers"] = N
    fig["connected"] = rep.get("connected")
    fig["moves"] = rep.get("rejoins")
    fig["moved_callers"] = rep.get("moved_callers")
    fig["moved_without_media"] = rep.get("moved_without_media")
    fig["gap_per_move_ms"] = {k: rep["rejoin_ms"].get(k) for k in ("p50", "p99", "max")}
    fig["gap_per_caller_ms"] = {k: gap.get(k) for k in ("p50", "p99", "max")}
    fig["loss_pct"] = round(rep.get("loss_pct", 0), 3)
    fig["gateway_resumes"] = rep.get("gateway_resumes")
    problems = list(native_problems)
    fig["native_clients"] = "2 lodge-voice, followed both drains" if not native_problems else "failed"
    if rep.get("strict_failures"):
        problems.append("lodge-load strict: " + "; ".join(rep["strict_failures"][:3]))
    if rep.get("errors"):
        problems.append(f"{len(rep['errors'])} caller errors, first: {rep['errors'][0]}")
    if rep.get("connected") != N:
        problems.append(f"{rep.get('connected')} of {N} callers connected")
    if rep.get("moved_callers") != N:
        problems.append(f"{rep.get('moved_callers')} of {N} callers were moved (every room was on a drained node)")
    if rep.get("moved_without_media"):
        problems.append(f"{rep['moved_without_media']} moved callers had no media at the end")
    if gap.get("p99") is None or gap["p99"] >= a.gap_p99_ms:
        problems.append(f"per-caller gap p99 {gap.get('p99')} ms, want < {a.gap_p99_ms:.0f} ms")
    if rc != 0:
        problems.append(f"lodge-load exited {rc}: {tail}")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "rolling-report.json"), "w") as f:
        json.dump({"ok": not problems, "problems": problems, "figures": fig}, f, indent=2)
    for k, v in fig.items():
        print(f"   {k}: {v}", flush=True)
    if problems:
        raise Failed("; ".join(problems))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Failed as e:
        print(f"rolling restart: FAIL: {e}", flush=True)
        sys.exit(1)
    print("rolling restart: PASS", flush=True)
