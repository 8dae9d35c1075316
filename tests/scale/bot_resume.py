"""The unmodified discord.py bot (the version tests/discordpy pins) connected to one node of the
cluster, which is then killed: it must resume on another node with every message once, in order.

discord.py resumes at READY's `resume_gateway_url` and, when that connection is refused, retries
the same URL with back-off for ever; only an Invalid Session sends it back to its default
gateway. So a node must name a URL that survives it (a live node, or one address in front of the
cluster). Its REST calls go to another node (--rest) the whole time, as through a load balancer.

Prints "ok: …" per check, "figure: name=value" per measured figure, and "FAIL: …" on failure.
Usage: bot_resume.py --rest URL --gateway URL --kill "COMMAND" --live URL,URL
"""

import argparse
import asyncio
import json
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request

import discord
import yarl

TIMEOUT = 20
ap = argparse.ArgumentParser()
ap.add_argument("--rest", required=True)
ap.add_argument("--gateway", required=True)
ap.add_argument("--kill", required=True)
ap.add_argument("--live", required=True)
args = ap.parse_args()
API = args.rest.rstrip("/") + "/api/v10"
GATEWAY = args.gateway.rstrip("/").replace("http", "ws", 1) + "/gateway"
LIVE = [u.rstrip("/").split("://", 1)[1] for u in args.live.split(",")]


def rest(method, path, token=None, body=None):
    """Blocking REST call (it also freezes the bot's event loop, as in tests/discordpy)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(API + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", token)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode() or "null")


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        raise SystemExit(1)
    print(f"ok: {what}", flush=True)


suffix = str(time.time_ns())[-8:]
st, human = rest("POST", "/auth/register", body={"username": f"human{suffix}", "password": "password-human"})
check(st == 201, "register a human user")
st, botacc = rest("POST", "/auth/register", body={"username": f"robot{suffix}", "password": "password-robot", "bot": True})
check(st == 201, "register a bot account")
htok, btok = human["token"], botacc["token"]
st, guild = rest("POST", "/guilds", htok, {"name": "Scale Bot Test"})
check(st == 201, "create a guild")
text_id = next(c["id"] for c in guild["channels"] if c["type"] == 0)
st, inv = rest("POST", f"/channels/{text_id}/invites", htok, {})
st, _ = rest("POST", f"/invites/{inv['code']}", btok)
check(st == 200, "bot joins by invite")

discord.http.Route.BASE = API
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(GATEWAY)
intents = discord.Intents.default()
intents.message_content = True


class Bot(discord.Client):
    def __init__(self):
        super().__init__(intents=intents)
        self.ready = asyncio.Event()
        self.resumed = asyncio.Event()
        self.messages = []
        self.ready_count = 0
        self.resumed_count = 0
        self.resumed_at = None

    async def on_ready(self):
        self.ready_count += 1
        self.ready.set()

    async def on_resumed(self):
        self.resumed_count += 1
        self.resumed_at = time.monotonic()
        self.resumed.set()

    async def on_message(self, m):
        self.messages.append(m.content)


async def until(cond, what):
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        if time.monotonic() > deadline:
            check(False, what + " (timed out)")
        await asyncio.sleep(0.02)
    check(True, what)


async def scenario(bot):
    await asyncio.wait_for(bot.ready.wait(), TIMEOUT)
    check(bot.user.bot, f"logged in through {GATEWAY}")
    resume_url = str(bot.ws.gateway)
    host = resume_url.split("://", 1)[-1].split("/", 1)[0]
    print(f"figure: resume_gateway_url={resume_url}", flush=True)
    rest("POST", f"/channels/{text_id}/messages", htok, {"content": "before"})
    await until(lambda: "before" in bot.messages, "MESSAGE_CREATE created through another node")

    # Kill the bot's node (the event loop is blocked meanwhile, as a frozen client's would be),
    # then send five messages through a live node while the bot is away.
    subprocess.run(shlex.split(args.kill), check=True)
    t_kill = time.monotonic()
    for i in range(5):
        st, _ = rest("POST", f"/channels/{text_id}/messages", htok, {"content": f"while away {i}"})
        check(st == 200, f"human sends 'while away {i}' after the bot's node died")
    try:
        await asyncio.wait_for(bot.resumed.wait(), TIMEOUT)
    except asyncio.TimeoutError:
        where = ("a live node" if host in LIVE else
                 "the killed node: discord.py retries it for ever" if host in GATEWAY else "no node of the cluster")
        check(False, f"no RESUMED within {TIMEOUT} s; READY's resume_gateway_url {resume_url} is {where}")
    print(f"figure: kill_to_RESUMED={(bot.resumed_at - t_kill) * 1000:.0f} ms", flush=True)
    check(host in LIVE, f"resume_gateway_url {resume_url} names a live node")
    deadline = time.monotonic() + TIMEOUT
    while sum(1 for c in bot.messages if c.startswith("while away")) < 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # anything duplicated would arrive now
    away = [c for c in bot.messages if c.startswith("while away")]
    check(away == [f"while away {i}" for i in range(5)], f"replayed in order, none missing, none twice: {away}")
    check(bot.ready_count == 1 and bot.resumed_count == 1,
          f"it was a resume, not a new identify (READY {bot.ready_count}, RESUMED {bot.resumed_count})")
    rest("POST", f"/channels/{text_id}/messages", htok, {"content": "after resume"})
    await until(lambda: "after resume" in bot.messages, "live MESSAGE_CREATE after the resume")
    print("PASS", flush=True)


async def main():
    bot = Bot()
    async with bot:
        runner = asyncio.create_task(bot.start(btok))
        try:
            await asyncio.wait_for(scenario(bot), 80)
        finally:
            await bot.close()
            runner.cancel()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except SystemExit:
        raise
    except BaseException as e:
        print(f"FAIL: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
