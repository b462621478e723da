"""Run ``eraser erase`` as a Ray job: ``ray job submit --working-dir . -- python -m
launch.erase_job --base B --adapter A --data D --request R --out O [erase options]``.

The job's driver runs the erase on the node Ray placed it on (the single-process engine);
paths are those of that node, e.g. shared storage mounted on every node.
"""

import sys

from eraser_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["erase", *sys.argv[1:]]))
