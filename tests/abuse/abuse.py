"""Run Lodge's abuse suite against a live node: every attack class in attacks.py, in order,
with a legitimate client measured throughout. See harness.py for what is asserted.

Usage: abuse.py --url http://127.0.0.1:PORT --pid PID --out DIR [--only name,name]
"""

import argparse
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attacks  # noqa: E402,F401  (registers the attack classes)
from harness import (  # noqa: E402
    ATTACKS, LEGIT, LEGIT_HB_P99_MS, LEGIT_REST_P99_MS, PROXY, RSS_GROWTH_MB, Ctx, Legit, Node,
    pct, rss_kb, session)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="", help="attack names to run, separated by ';'")
    args = ap.parse_args()

    node = Node(args.url, args.pid)
    results = []
    async with session(PROXY) as proxy:
        ctx = Ctx(node, proxy, args)
        _, _, legit_token = await ctx.user("legit")
        legit = Legit(node, legit_token)
        legit_task = asyncio.create_task(legit.run())
        await asyncio.sleep(1.0)
        legit.window()
        failed = 0
        only = [s.strip() for s in args.only.split(";") if s.strip()]
        for name, items, f in ATTACKS:
            if only and name not in only:
                continue
            rss0 = rss_kb(args.pid)
            t0 = time.monotonic()
            rec = {"attack": name, "items": items}
            try:
                out = await asyncio.wait_for(f(ctx), timeout=90)
                rec.update(out or {})
                rec["ok"] = True
            except Exception as e:
                rec["ok"] = False
                rec["error"] = f"{type(e).__name__}: {e}"
            rec["seconds"] = round(time.monotonic() - t0, 1)
            await asyncio.sleep(0.3)
            rest, hb, errors = legit.window()
            rss1 = rss_kb(args.pid)
            rec["legit_rest_p99_ms"] = round(pct(rest, 0.99), 1)
            rec["legit_hb_p99_ms"] = round(pct(hb, 0.99), 1)
            rec["legit_errors"] = errors[:3]
            rec["rss_before_mb"] = round(rss0 / 1024, 1)
            rec["rss_after_mb"] = round(rss1 / 1024, 1)
            growth = (rss1 - rss0) / 1024
            if rec["ok"]:
                problems = []
                if errors:
                    problems.append(f"legit client errors: {errors[:3]}")
                if rec["legit_rest_p99_ms"] > LEGIT_REST_P99_MS:
                    problems.append(f"legit REST p99 {rec['legit_rest_p99_ms']} ms > {LEGIT_REST_P99_MS}")
                if rec["legit_hb_p99_ms"] > LEGIT_HB_P99_MS:
                    problems.append(f"legit heartbeat p99 {rec['legit_hb_p99_ms']} ms > {LEGIT_HB_P99_MS}")
                if growth > RSS_GROWTH_MB:
                    problems.append(f"RSS grew {growth:.1f} MB > {RSS_GROWTH_MB}")
                async with session(LEGIT) as h:
                    async with h.get(node.url + "/healthz") as r:
                        if r.status != 200:
                            problems.append(f"/healthz {r.status}")
                if problems:
                    rec["ok"] = False
                    rec["error"] = "; ".join(problems)
            failed += 0 if rec["ok"] else 1
            results.append(rec)
            mark = "ok  " if rec["ok"] else "FAIL"
            print(f"{mark} {name:<34} {rec.get('tried', '-'):>5} tried {rec.get('refused', '-'):>5} refused "
                  f"| legit REST p99 {rec['legit_rest_p99_ms']:>6} ms, hb p99 {rec['legit_hb_p99_ms']:>6} ms "
                  f"| RSS {rec['rss_before_mb']} -> {rec['rss_after_mb']} MB ({rec['seconds']} s)"
                  + (f"\n     {rec['error']}" if not rec["ok"] else ""), flush=True)
        legit.stop.set()
        await asyncio.wait_for(legit_task, timeout=10)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "abuse-report.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "abuse-report.md"), "w") as f:
        f.write("| attack | issue items | tried | refused | legit REST p99 | legit heartbeat p99 | RSS before → after | notes |\n")
        f.write("|---|---|---|---|---|---|---|---|\n")
        for r in results:
            notes = r.get("note", "") if r["ok"] else "FAILED: " + r.get("error", "")
            f.write(f"| {r['attack']} | {r['items']} | {r.get('tried', '–')} | {r.get('refused', '–')} | "
                    f"{r['legit_rest_p99_ms']} ms | {r['legit_hb_p99_ms']} ms | "
                    f"{r['rss_before_mb']} → {r['rss_after_mb']} MB | {notes} |\n")
    print(f"\n{len(results) - failed} of {len(results)} attack classes held; report in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
