"""A TCP load balancer in front of the scale suite's nodes, as an operator puts one in front of a
cluster: each connection goes to the next node in turn that accepts it (a dead node refuses, so
the next one gets it), among the nodes whose /readyz last answered 200 (checked every 200 ms, as
a balancer's health check does: a draining node answers 503 and gets no new connections; when no
node is ready, every node is tried). HTTP and WebSockets pass through untouched.

With SCALE_PUBLIC_URL=balancer, run.sh gives every node this address as its --public-url, which
is where READY's resume_gateway_url points (discord.py resumes only there).

Usage: balancer.py --listen 127.0.0.5:PORT --tmp DIR   (backends: the nN.ports files in DIR)
"""

import argparse
import asyncio
import itertools
import os

NODES = (2, 3, 4)


def serves_api(tmp, n):
    """A node started with `--roles media` has no API or gateway: a balancer's health check
    would leave it out, and so does this one."""
    try:
        with open(os.path.join(tmp, f"n{n}.args")) as f:
            args = f.read().split()
    except OSError:
        return True
    for i, a in enumerate(args[:-1]):
        if a == "--roles" and "api" not in args[i + 1]:
            return False
    return True


def backends(tmp):
    out = []
    for n in NODES:
        if not serves_api(tmp, n):
            continue
        try:
            with open(os.path.join(tmp, f"n{n}.ports")) as f:
                out.append((f"127.0.0.{n}", int(f.read().split()[0])))
        except (OSError, ValueError, IndexError):
            pass
    return out


async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            w.close()
        except (ConnectionError, OSError):
            pass


async def is_ready(host, port):
    """Whether GET /readyz answers 200 within 0.5 s."""
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 0.5)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        w.write(f"GET /readyz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(r.readline(), 0.5)
        return line.split()[1:2] == [b"200"]
    except (OSError, asyncio.TimeoutError, IndexError):
        return False
    finally:
        w.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--tmp", required=True)
    a = ap.parse_args()
    turn = itertools.count()
    unready = set()

    async def health():
        while True:
            bs = backends(a.tmp)
            oks = await asyncio.gather(*(is_ready(*b) for b in bs))
            # Swapped in one step: a connection never sees a half-updated set.
            unready.clear()
            unready.update(b for b, ok in zip(bs, oks) if not ok)
            await asyncio.sleep(0.2)

    asyncio.get_running_loop().create_task(health())

    async def handle(cr, cw):
        nodes = backends(a.tmp)
        ready = [b for b in nodes if b not in unready]
        nodes = ready or nodes
        start = next(turn)
        for i in range(len(nodes)):
            host, port = nodes[(start + i) % len(nodes)]
            try:
                br, bw = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
            except (OSError, asyncio.TimeoutError):
                continue
            await asyncio.gather(pipe(cr, bw), pipe(br, cw))
            return
        cw.close()

    host, port = a.listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, host, int(port))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
