"""`make demo`: the example shop, a local Graph API emulator and a drainer, in one command.

Everything runs on this machine with the embedded defaults: SQLite, the emulator standing in
for graph.facebook.com, and `capi_drain --loop` as the worker (no Celery, no broker).
Ctrl-C stops all three.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GRAPH_PORT = os.environ.get("CAPI_DEMO_GRAPH_PORT", "8111")
SHOP_PORT = os.environ.get("CAPI_DEMO_SHOP_PORT", "8000")


def manage(*args: str) -> list[str]:
    return [sys.executable, str(HERE / "manage.py"), *args]


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, interrupt)
    env = {**os.environ, "CAPI_GRAPH_API_URL": f"http://127.0.0.1:{GRAPH_PORT}"}
    subprocess.run(manage("migrate", "--no-input", "-v", "0"), check=True, env=env)
    processes = [
        subprocess.Popen(manage("capi_fakegraph", "--port", GRAPH_PORT), env=env),
        subprocess.Popen(manage("capi_drain", "--loop", "--interval", "1"), env=env),
        subprocess.Popen(manage("runserver", f"127.0.0.1:{SHOP_PORT}", "--noreload"), env=env),
    ]
    print(
        f"\nExample shop: http://127.0.0.1:{SHOP_PORT}/  (place an order, watch it go to the "
        f"emulator)\nAdmin: http://127.0.0.1:{SHOP_PORT}/admin/ after "
        "`python example_project/manage.py createsuperuser`\nCtrl-C stops the demo.\n",
        flush=True,
    )
    try:
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=15)
    failed = [p.args for p in processes if p.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
