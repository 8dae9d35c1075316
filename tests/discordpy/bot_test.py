"""An unmodified discord.py bot against a running Lodge node.

Points the library at Lodge the way its community documents (Route.BASE and
DiscordWebSocket.DEFAULT_GATEWAY), then checks: login, READY + GUILD_CREATE with the right
channels and roles, sending through its own API, MESSAGE_CREATE from another user, an edit, a
reaction, and a RESUME after its WebSocket is forced closed that replays every message sent while
it was away: none missing, none twice.

Usage: LODGE_URL=http://127.0.0.1:8080 python bot_test.py
"""

import asyncio
import json
import os
import sys
import urllib.parse
import urllib.request

import discord
import yarl

BASE = os.environ.get("LODGE_URL", "http://127.0.0.1:8080").rstrip("/")
API = BASE + "/api/v10"
TIMEOUT = 20


def rest(method, path, token=None, body=None):
    """Blocking REST call (deliberately blocking: it also freezes the bot's event loop)."""
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


# --- accounts and a guild, through Lodge's REST API ---------------------------------------
st, human = rest("POST", "/auth/register", body={"username": "human", "password": "password-human"})
check(st == 201, "register a human user")
st, botacc = rest("POST", "/auth/register", body={"username": "robot", "password": "password-robot", "bot": True})
check(st == 201, "register a bot account")
htok, btok = human["token"], botacc["token"]
st, guild = rest("POST", "/guilds", htok, {"name": "Library Test"})
check(st == 201, "create a guild")
text_id = next(c["id"] for c in guild["channels"] if c["type"] == 0)
st, inv = rest("POST", f"/channels/{text_id}/invites", htok, {})
st, _ = rest("POST", f"/invites/{inv['code']}", btok)
check(st == 200, "bot joins by invite")

# --- point discord.py at Lodge ----------------------------------------------------------------
discord.http.Route.BASE = API
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(BASE.replace("http", "ws", 1) + "/gateway")

intents = discord.Intents.default()
intents.message_content = True


class Bot(discord.Client):
    def __init__(self):
        super().__init__(intents=intents)
        self.ready = asyncio.Event()
        self.messages = []
        self.got = {}
        self.ready_count = 0
        self.resumed_count = 0

    async def on_ready(self):
        self.ready_count += 1
        self.ready.set()

    async def on_resumed(self):
        self.resumed_count += 1
        self.got.setdefault("resumed", asyncio.Event()).set()

    async def on_message(self, m):
        self.messages.append((m.author.name, m.content))
        self.got.setdefault("message", asyncio.Event()).set()

    async def on_message_edit(self, before, after):
        self.got["edit"] = after.content
        self.got.setdefault("edit_evt", asyncio.Event()).set()

    async def on_raw_reaction_add(self, payload):
        self.got["reaction"] = (str(payload.emoji), payload.user_id)
        self.got.setdefault("reaction_evt", asyncio.Event()).set()


async def wait_for(bot, key, what):
    ev = bot.got.setdefault(key, asyncio.Event())
    try:
        await asyncio.wait_for(ev.wait(), TIMEOUT)
    except asyncio.TimeoutError:
        check(False, what + " (timed out)")
    ev.clear()


async def until(cond, what):
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            check(False, what + " (timed out)")
        await asyncio.sleep(0.02)
    check(True, what)


async def scenario(bot):
    await asyncio.wait_for(bot.ready.wait(), TIMEOUT)
    check(bot.user.name == "robot" and bot.user.bot, "logged in as the bot user")
    g = bot.get_guild(int(guild["id"]))
    check(g is not None and g.name == "Library Test", "GUILD_CREATE delivered the guild")
    names = sorted((c.name, str(c.type)) for c in g.channels)
    check(("General", "voice") in names and ("general", "text") in names, f"channels {names}")
    check(g.default_role is not None and g.default_role.name == "@everyone", "roles include @everyone")

    # Send through the library's own API.
    chan = g.get_channel(int(text_id))
    sent = await chan.send("hello from discord.py")
    st, hist = rest("GET", f"/channels/{text_id}/messages?limit=5", htok)
    check(any(m["id"] == str(sent.id) and m["content"] == "hello from discord.py" for m in hist), "bot message stored and visible to others")

    # Another user's message arrives as MESSAGE_CREATE.
    st, hm = rest("POST", f"/channels/{text_id}/messages", htok, {"content": "hi robot"})
    await until(lambda: ("human", "hi robot") in bot.messages, "MESSAGE_CREATE from another user, with content")

    # An edit and a reaction.
    rest("PATCH", f"/channels/{text_id}/messages/{sent.id}", btok, {"content": "edited?"})
    await sent.edit(content="edited by the bot")
    await wait_for(bot, "edit_evt", "MESSAGE_UPDATE seen")
    check(bot.got["edit"] in ("edited?", "edited by the bot"), "edit content")
    emoji = urllib.parse.quote("👍")
    st, _ = rest("PUT", f"/channels/{text_id}/messages/{hm['id']}/reactions/{emoji}/@me", htok)
    check(st == 204, "human reacts")
    await wait_for(bot, "reaction_evt", "MESSAGE_REACTION_ADD seen")
    check(bot.got["reaction"] == ("👍", int(human["user"]["id"])), "reaction payload")

    # Force the WebSocket closed; while the event loop is blocked (the bot cannot reconnect),
    # the human sends five messages. The bot must RESUME and get each exactly once.
    before = len(bot.messages)
    await bot.ws.close(code=4000)
    for i in range(5):
        st, _ = rest("POST", f"/channels/{text_id}/messages", htok, {"content": f"while away {i}"})
        check(st == 200, f"human sends 'while away {i}' during the outage")
    await wait_for(bot, "resumed", "RESUMED after the forced close")
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while sum(1 for a, c in bot.messages[before:] if c.startswith("while away")) < 5:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # anything duplicated would arrive now
    away = [c for a, c in bot.messages[before:] if c.startswith("while away")]
    check(away == [f"while away {i}" for i in range(5)], f"replayed in order, none missing, none twice: {away}")
    check(bot.ready_count == 1 and bot.resumed_count == 1, "it was a resume, not a new identify")

    # Still live after the resume.
    rest("POST", f"/channels/{text_id}/messages", htok, {"content": "after resume"})
    await until(lambda: ("human", "after resume") in bot.messages, "live MESSAGE_CREATE after resume")
    print("PASS", flush=True)


async def main():
    bot = Bot()
    async with bot:
        runner = asyncio.create_task(bot.start(btok))
        try:
            await asyncio.wait_for(scenario(bot), 120)
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
