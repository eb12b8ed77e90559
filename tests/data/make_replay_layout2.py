"""Write tests/data/replay_layout2.json: replay tables as the code before the table list (46347b4) wrote them.

Run with that commit's packages first on the path (not collected by pytest)::

    git archive 46347b4 | tar -x -C /tmp/old
    cd /tmp/old && PYTHONPATH=/tmp/old python /path/to/make_replay_layout2.py /path/to/replay_layout2.json

Two tables of the old fixed pair ('expert' 16 slots, 'online' 24, α 0.6, min_size_to_sample 4), each lapped by
FIFO, one mixed batch sampled and its priorities set to 5, and the namespace's owner key; then every Redis key of
the namespace, raw (hex), with what the old client reported about them.
"""
import json
import sys
import tempfile

import numpy as np
import redis

import replay_service.table
from common.config import ReplayConfig
from replay_service.client import ReplayClient
from replay_service.server import start_embedded
from tests.test_replay_codec import make_transition

assert hasattr(replay_service.table, "TABLES"), "run this with the code of 46347b4 (the two fixed tables)"


def transitions(rewards, expert):
    out = []
    for r in rewards:
        t = make_transition(3, seed=int(r), expert=expert)
        t.reward = float(r)
        out.append(t)
    return out


def main(out_path: str) -> None:
    srv = start_embedded(tempfile.mkdtemp())
    try:
        cfg = ReplayConfig(expert_max_size=16, online_max_size=24, min_size_to_sample=4, namespace="old")
        c = ReplayClient(srv.url, cfg, seed=0)
        c.create_tables()
        c.insert("expert", transitions(range(100, 120), True), priorities=np.linspace(0.5, 2.0, 20))
        c.insert("online", transitions(range(0, 30), False), priorities=np.linspace(0.1, 3.0, 30))
        info, _ = c.sample(16, 0.25)
        for t in np.unique(info.table):
            sel = info.table == t
            c.update_priorities(str(t), info.key[sel], np.full(sel.sum(), 5.0))
        c._call("SET", "old:owner", "/runs/old-run")
        r = redis.Redis(connection_pool=c._get_pool())
        dump = {}
        for k in sorted(r.scan_iter("old:*")):
            name, typ = k.decode(), r.type(k).decode()
            if ":tok:" in name:
                continue  # idempotency tokens expire within the hour: not part of the layout
            if typ == "string":
                dump[name] = {"string": r.get(k).hex()}
            else:
                dump[name] = {"hash": {f.decode(): v.hex() for f, v in r.hgetall(k).items()}}
        stats = c.stats()
        about = {"written_by": "relaxrl main 46347b4 (replay layout 2, the two fixed tables), "
                               "tests/data/make_replay_layout2.py",
                 "config": {"expert_max_size": 16, "online_max_size": 24, "min_size_to_sample": 4, "alpha": 0.6,
                            "namespace": "old"},
                 "live_keys": {t: c.priorities(t)[0].tolist() for t in ("expert", "online")},
                 "priorities": {t: c.priorities(t)[1].tolist() for t in ("expert", "online")},
                 "inserts": {t: stats[t]["inserts"] for t in stats}, "samples": {t: stats[t]["samples"] for t in stats}}
        with open(out_path, "w") as f:
            json.dump({"about": about, "keys": dump}, f, sort_keys=True, separators=(",", ":"))
    finally:
        srv.stop()


if __name__ == "__main__":
    main(sys.argv[1])
