"""The raw baseline: a minimal aiohttp server taking cloudpickle bodies (what tether's overhead is measured against).

Run: ``python bench/baseline_server.py PORT``. Routes: POST /add and POST /echo, body cloudpickle((args, kwargs)).
"""

from __future__ import annotations

import sys

import cloudpickle
from aiohttp import web


async def add(request: web.Request) -> web.Response:
    args, kwargs = cloudpickle.loads(await request.read())
    return web.Response(body=cloudpickle.dumps(args[0] + args[1]))


async def echo(request: web.Request) -> web.Response:
    args, _ = cloudpickle.loads(await request.read())
    return web.Response(body=cloudpickle.dumps(args[0], protocol=5))


def main() -> None:
    app = web.Application(client_max_size=2 * 1024**3)
    app.router.add_post("/add", add)
    app.router.add_post("/echo", echo)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
