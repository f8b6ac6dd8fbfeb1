"""`python -m bench.serve_ref limit|lazy --port P`: a reference under the service's uvicorn
settings (uvloop, httptools, one worker, no access log, log level warning)."""

from __future__ import annotations

import argparse

import uvicorn

APPS = {"limit": "bench.ref_limit:app", "lazy": "bench.ref_lazy:app"}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_ref")
    parser.add_argument("name", choices=sorted(APPS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args()
    uvicorn.run(
        APPS[options.name],
        host=options.host,
        port=options.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
        server_header=False,
    )


if __name__ == "__main__":
    main()
