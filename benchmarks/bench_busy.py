"""``python -m benchmarks busy``: the README's fit-mlr example on a quiet machine and with busy
neighbours.

Runs ``mlr-dask fit-mlr radial.zarr --rank 28`` (a radial kernel matrix, n = 2000 by default)
as a whole process, first alone, then while ``--busy`` other processes (default 2) keep every
core busy with BLAS products using all threads, as other users' jobs would. Prints the wall
time ratio busy / quiet per stage and in total; a fit that shares the machine gracefully stays
within a small factor of the cores it loses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BUSY_CODE = """
import time, numpy as np
a = np.random.default_rng(0).standard_normal((1500, 1500))
t_end = time.time() + {seconds}
while time.time() < t_end:
    a = a @ a.T
    a /= np.abs(a).max()
"""


def _fit(store: str, rank: int, env: dict[str, str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = subprocess.run(["mlr-dask", "fit-mlr", store, "--rank", str(rank), "--json",
                          "--quiet"], capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - t0, json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks busy")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--rank", type=int, default=28)
    p.add_argument("--busy", type=int, default=2, help="busy neighbour processes")
    args = p.parse_args(argv)
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "radial.zarr")
        subprocess.run(["mlr-dask", "generate", "radial", "--n", str(args.n), "--seed", "0",
                        "--out", store, "--quiet"], check=True, env=env)
        quiet_s, quiet = _fit(store, args.rank, env)
        hogs = [subprocess.Popen([sys.executable, "-c",
                                  BUSY_CODE.format(seconds=60 * max(quiet_s, 10.0))], env=env)
                for _ in range(args.busy)]
        try:
            time.sleep(2.0)
            busy_s, busy = _fit(store, args.rank, env)
        finally:
            for h in hogs:
                h.kill()
                h.wait()
    print(f"fit-mlr radial n={args.n} r={args.rank}, {os.cpu_count()} cores, "
          f"{args.busy} busy neighbours")
    print(f"  rel_error quiet {quiet['rel_error']:.5f}  busy {busy['rel_error']:.5f}")
    print(f"  {'stage':<18}{'quiet s':>10}{'busy s':>10}{'busy/quiet':>12}")
    for stage in quiet.get("seconds", {}):
        q, b = quiet["seconds"][stage], busy.get("seconds", {}).get(stage)
        if isinstance(q, int | float) and isinstance(b, int | float) and q > 0:
            print(f"  {stage:<18}{q:>10.2f}{b:>10.2f}{b / q:>12.2f}")
    print(f"  {'whole process':<18}{quiet_s:>10.2f}{busy_s:>10.2f}{busy_s / quiet_s:>12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
