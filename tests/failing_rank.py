"""`python tests/failing_rank.py <dnc arguments>`: `python -m dnc_cli <dnc arguments>` as one rank of a process group
whose rank DNC_TEST_FAILING_RANK (default 1) fails at its DNC_TEST_FAIL_AT-th all-reduce (default 2: in the middle of
the first checkpoint): it dies (os._exit) or, with DNC_TEST_HANG=<seconds>, hangs that long first, then dies.
For tests/test_distributed.py."""

from __future__ import annotations

import os
import sys
import time

import torch

from dnc_cli import cli

if os.environ.get("RANK") == os.environ.get("DNC_TEST_FAILING_RANK", "1"):
    all_reduce, calls = torch.distributed.all_reduce, []

    def failing_all_reduce(*args, **kwargs):
        calls.append(None)
        if len(calls) == int(os.environ.get("DNC_TEST_FAIL_AT", "2")):
            if os.environ.get("DNC_TEST_HANG"):
                time.sleep(float(os.environ["DNC_TEST_HANG"]))  # hang this long (s), then die
            os._exit(9)
        return all_reduce(*args, **kwargs)

    torch.distributed.all_reduce = failing_all_reduce

cli.main(sys.argv[1:])
