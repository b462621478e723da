"""Run ``eraser erase`` as a Ray job on the cluster it is submitted to::

    export RAY_AUTH_MODE=token   # Ray's token auth; see README, "On a cluster"
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m launch.erase_job \\
        --base B --adapter A --data D --request R --out O --workers G --group-size K \\
        --address auto [--base-dtype bfloat16] [erase options]

With ``--workers``/``--group-size`` the erase runs on the distributed engine (worker groups
on a ZeRO-3-partitioned base, an aggregator running CG); without them, in the job's driver
process. Paths are those of the nodes: shared storage mounted on every node.
"""

import sys

from eraser_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["erase", *sys.argv[1:]]))
