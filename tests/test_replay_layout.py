"""Redis data written before the table list (two fixed tables, layout 2) loads into the table list, or is
refused with one clear message. The data is tests/data/replay_layout2.json: every key of a namespace as the
code of 46347b4 wrote it (tests/data/make_replay_layout2.py), put back into a real redis-server."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from common.config import ConfigError, from_dict
from replay_service.client import ReplayClient
from replay_service.errors import ReplayConfigError
from replay_service.server import claim_namespace
from tests.test_replay_client import transitions

DATA = json.loads((Path(__file__).parent / "data" / "replay_layout2.json").read_text())
ABOUT = DATA["about"]


def restore_old_tables(redis_server) -> str:
    """The fixture's keys under a fresh namespace; returns the namespace."""
    ns = f"old{uuid.uuid4().hex[:6]}"
    c = ReplayClient(redis_server.url, from_dict({}).replay)
    for key, value in DATA["keys"].items():
        name = ns + key[len("old"):]
        if "string" in value:
            c._call("SET", name, bytes.fromhex(value["string"]))
        else:
            c._call("HSET", name, *[x for f, v in value["hash"].items() for x in (f, bytes.fromhex(v))])
    return ns


def old_config(ns: str, **changes):
    """The replay config of the run that wrote the data, in its own (two-table) keys."""
    return from_dict({"replay": {**ABOUT["config"], "namespace": ns, **changes}, "learner": {"batch_size": 16}}).replay


def test_tables_written_before_the_table_list_load_and_go_on(redis_server):
    ns = restore_old_tables(redis_server)
    c = ReplayClient(redis_server.url, old_config(ns), seed=1)
    assert c.create_tables() == {"expert": "exists", "online": "exists"}
    claim_namespace(c, "/runs/old-run", resume=True)  # the run that wrote them may resume
    with pytest.raises(ReplayConfigError, match="already holds the replay tables of run /runs/old-run"):
        claim_namespace(c, "/runs/new-run", resume=False)
    for table in ("expert", "online"):
        keys, pr = c.priorities(table)
        assert keys.tolist() == ABOUT["live_keys"][table]
        np.testing.assert_array_equal(pr, ABOUT["priorities"][table])
        stored = c.items(table, keys)  # every payload decodes: its reward is the key (+100 in expert)
        assert [t.reward for t in stored] == [float(k + (100 if table == "expert" else 0)) for k in keys]
        assert all((t.expert_action is not None) == (table == "expert") for t in stored)
    stats = c.stats()
    assert {t: stats[t]["inserts"] for t in stats} == ABOUT["inserts"]
    assert {t: stats[t]["samples"] for t in stats} == ABOUT["samples"]

    info, batch = c.sample(16, 0.25)  # the old share, drawn by the table list's sampler
    assert (info.table == "expert").sum() == 4 and len(batch) == 16
    assert all(k in ABOUT["live_keys"][t] for t, k in zip(info.table, info.key.tolist()))
    assert c.insert("online", transitions([7.0, 8.0])).tolist() == [30, 31]  # keys continue from the cursor
    assert c.items("online", [31])[0].reward == 8.0 and c.sizes() == {"expert": 16, "online": 24}


def test_old_tables_under_other_settings_or_another_layout_are_refused_with_one_clear_message(redis_server):
    ns = restore_old_tables(redis_server)
    with pytest.raises(ReplayConfigError, match=r"replay table 'online' .* was built with layout 2, max_size 24, "
                                                r"priority_exponent 0.6; the config asks layout 2, max_size 48"):
        ReplayClient(redis_server.url, old_config(ns, online_max_size=48)).create_tables()
    c = ReplayClient(redis_server.url, old_config(ns))
    c._call("HSET", c.keys["expert"].meta, "layout", 1)  # a layout this version cannot read
    with pytest.raises(ConfigError, match="replay table 'expert' .* was built with layout 1.*delete the old tables"):
        c.create_tables()
