"""HTTP hello-world on aiohttp: GET / answers a fixed text body.

    python3 benches/servers/http_hello.py --loop glassloop:new_event_loop [--addr 127.0.0.1:0]

aiohttp's low-level runner (AppRunner + TCPSite) on the loop made from the spec, with
the access log off so the benchmark measures serving, not log formatting. Needs aiohttp
(requirements-dev.txt); net_compare.py's ``http`` workload drives it with wrk.
"""

import _common

from aiohttp import web

BODY = "Hello, World!"


async def hello(request):
    return web.Response(text=BODY)


async def serve_app(host, port):
    """Set up the app and listen; returns the runner (``await runner.cleanup()`` stops it)."""
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=_common.BACKLOG)
    await site.start()
    return runner


async def start(loop, args):
    runner = await serve_app(args.host, args.port)
    return runner.addresses[0]


if __name__ == "__main__":
    args = _common.parse_args(__doc__, unix=False)
    _common.serve(args, lambda loop: start(loop, args))
