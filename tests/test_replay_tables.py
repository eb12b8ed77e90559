"""Replay tables as a list of specs: the config form, the keys of the two-table form, batch composition, and a
third table added through config alone that the actors fill and the learner samples (real Redis, EMT, TD3)."""
from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import numpy as np
import pytest
import tomllib

from actors.coordinator import Coordinator
from actors.curriculum import Curriculum, load_structures
from actors.loop import ActorLoop
from common.config import ConfigError, ReplayConfig, dump_config, from_dict, load_config
from common.replay_tables import (
    DEFAULT_TABLES,
    MinSize,
    NoLimit,
    SampleToInsertRatio,
    TableSpec,
    apportion,
    batch_shares,
    default_tables,
)
from learner.learner import Learner
from replay_service.client import ReplayClient
from tests.test_replay_client import transitions

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"

THREE_TABLES = '''
[[replay.tables]]
name = "expert"
max_size = 500
share = 0.25
source = "teacher"
rate_limiter = { kind = "none" }

[[replay.tables]]
name = "online"
max_size = 500
share = 0.5
source = "policy"
rate_limiter = { kind = "min_size", min_size_to_sample = 8 }

[[replay.tables]]
name = "recent"
max_size = 16
share = 0.25
priority_exponent = 0.0
source = "policy"
rate_limiter = { kind = "min_size", min_size_to_sample = 8 }
'''


def tiny_with(tmp_path: Path, replay_section: str) -> Path:
    """configs/tiny.toml with its [replay] section replaced by ``replay_section``."""
    text = TINY.read_text()
    i, j = text.index("[replay]"), text.index("[learner]")
    path = tmp_path / "config.toml"
    path.write_text(text[:i] + "[replay]\n" + replay_section + "\n" + text[j:])
    return path


# ----------------------------------------------------------------------------- the config form

# [replay] of each preset before the table list, and what each must read as
OLD_FORMS = {
    "demo": ("expert_max_size = 3000\nonline_max_size = 3000\nmin_size_to_sample = 256\n",
             default_tables(3000, 3000, online_limiter=MinSize(256))),
    "tiny": ("expert_max_size = 1000\nonline_max_size = 1000\nmin_size_to_sample = 32\nsamples_per_insert = 4.0\n"
             "error_buffer = 64.0\n", default_tables(1000, 1000, online_limiter=SampleToInsertRatio(4.0, 32, 64.0))),
    "both limited": ("alpha = 0.7\nsamples_per_insert = 2.0\nerror_buffer = 300.0\nexpert_rate_limited = true\n",
                     default_tables(priority_exponent=0.7, online_limiter=SampleToInsertRatio(2.0, 64, 300.0),
                                    expert_limiter=SampleToInsertRatio(2.0, 64, 300.0))),
    "defaults": ("", DEFAULT_TABLES),
}


@pytest.mark.parametrize("name", list(OLD_FORMS))
def test_keys_of_the_two_table_form_read_as_the_same_tables(tmp_path, name):
    old, tables = OLD_FORMS[name]
    assert load_config(tiny_with(tmp_path, old)).replay.tables == tables


def test_every_preset_is_in_the_new_form_with_todays_two_tables():
    for path in sorted((ROOT / "configs").glob("*.toml")):
        raw = tomllib.loads(path.read_text())["replay"]
        assert [t["name"] for t in raw["tables"]] == ["expert", "online"], path.name
        assert not set(raw) & {"expert_max_size", "online_max_size", "min_size_to_sample", "samples_per_insert",
                               "error_buffer", "alpha", "expert_rate_limited"}, path.name
        tables = load_config(path).replay.tables
        assert [(t.source, t.share, t.rate_limiter.blocks) for t in tables] == [("teacher", 0.25, False),
                                                                                 ("policy", 0.75, True)], path.name


def test_a_run_config_with_three_tables_round_trips_through_toml(tmp_path):
    cfg = load_config(tiny_with(tmp_path, THREE_TABLES))
    assert [t.name for t in cfg.replay.tables] == ["expert", "online", "recent"]
    assert cfg.replay.tables[2] == TableSpec("recent", 16, 0.25, 0.0, "policy", MinSize(8))
    dump_config(cfg, tmp_path / "stored.toml")  # what a run directory keeps (and --resume reads)
    assert load_config(tmp_path / "stored.toml") == cfg


def test_one_field_of_one_table_is_edited_from_the_command_line(tmp_path):
    cfg = load_config(TINY, ["replay.tables.online.max_size=4000",
                             "replay.tables.online.rate_limiter.samples_per_insert=2.0",
                             "replay.online_max_size=3000"])  # a key of the two-table form edits the same table
    online = cfg.replay.tables[1]
    assert online.max_size == 4000 and online.rate_limiter == SampleToInsertRatio(2.0, 32, 64.0)
    assert load_config(TINY, ["replay.online_max_size=3000"]).replay.tables[1].max_size == 3000
    small = load_config(TINY, ["replay.tables.online.max_size=20",  # alone it would be below the min size (32):
                               "replay.tables.online.rate_limiter.min_size_to_sample=8",  # each table is built
                               "learner.batch_size=8"]).replay.tables[1]  # once, after every edit
    assert (small.max_size, small.rate_limiter.min_size_to_sample) == (20, 8)
    replaced = load_config(TINY, ['replay.tables=[{name = "online", max_size = 100, share = 1.0}]',
                                  "actors.num_expert=0"]).replay.tables
    assert replaced == (TableSpec("online", 100, 1.0),)


@pytest.mark.parametrize("replay, message", [
    ('[[replay.tables]]\nname = "online"\nmax_size = 100\nshare = 1.0\nrate_limiter = { kind = "ratio" }\n',
     "rate_limiter must be a table with a kind, one of 'none'"),
    ('[[replay.tables]]\nname = "online"\nmax_size = 100\nshare = 1.0\nsize = 3\n', "unknown key(s) size"),
    ('[[replay.tables]]\nname = "online"\nshare = 1.0\n', "missing max_size"),
    ('[[replay.tables]]\nname = "online"\nmax_size = 100\nshare = 1.0\nsource = "bfgs"\n', "source='bfgs'"),
    ('[[replay.tables]]\nname = "online"\nmax_size = 100\nshare = 1.0\n'
     'rate_limiter = { kind = "min_size", min_size_to_sample = 8, error_buffer = 2 }\n', "takes exactly"),
    # the expert actors' teacher steps would have nowhere to go (tiny has one expert actor)
    ('[[replay.tables]]\nname = "online"\nmax_size = 100\nshare = 1.0\n', "actors.num_expert must be 0 when"),
    ('expert_max_size = 100\n[[replay.tables]]\nname = "online"\nmax_size = 100\nshare = 1.0\n',
     "replay.expert_max_size sets table 'expert', which replay.tables does not have"),
])
def test_a_bad_table_list_is_one_clear_config_error(tmp_path, replay, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(tiny_with(tmp_path, replay))


# ----------------------------------------------------------------------------- batch composition

def test_batches_are_split_by_largest_remainder_with_ties_to_the_earlier_table():
    assert apportion(7, [0.5, 0.5]) == [4, 3]  # the expert table first, as round(B·f) did
    assert apportion(128, [0.2, 0.8]) == [26, 102]
    assert apportion(64, [0.25, 0.5, 0.25]) == [16, 32, 16]
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(5, [0.0, 0.0]) == [3, 2]
    for b in range(1, 300):
        f = (b * 0.37) % 1
        assert apportion(b, [f, 1 - f])[0] == int(np.floor(b * f + 0.5))  # today's expert count


def test_the_expert_fraction_schedule_sets_the_teacher_tables_and_the_rest_keep_their_ratio():
    tables = from_dict({"replay": tomllib.loads(THREE_TABLES)["replay"]}).replay.tables
    assert batch_shares(tables) == {"expert": 0.25, "online": 0.5, "recent": 0.25}
    assert batch_shares(tables, 0.4) == pytest.approx({"expert": 0.4, "online": 0.4, "recent": 0.2})
    assert batch_shares(DEFAULT_TABLES, 0.2) == pytest.approx({"expert": 0.2, "online": 0.8})
    no_teacher = (TableSpec("a", 100, 0.3), TableSpec("b", 100, 0.7))
    assert batch_shares(no_teacher, 0.5) == {"a": 0.3, "b": 0.7}  # nothing for the schedule to set


def test_a_table_without_limiter_gives_what_it_holds_and_the_limited_tables_the_rest_by_share(redis_server):
    tables = (TableSpec("expert", 50, 0.4, source="teacher", rate_limiter=NoLimit()),
              TableSpec("online", 50, 0.4, rate_limiter=MinSize(1)), TableSpec("recent", 50, 0.2, rate_limiter=MinSize(1)))
    c = ReplayClient(redis_server.url, ReplayConfig(tables=tables, namespace=f"t{uuid.uuid4().hex[:8]}"), seed=0)
    c.create_tables()
    for name in ("online", "recent"):
        c.insert(name, transitions(range(30)))
    c.insert("expert", transitions(range(5)))
    info, batch = c.sample(100)  # wants 40/40/20; expert holds 5: online and recent share the 35 others 2:1
    assert [int((info.table == t).sum()) for t in ("expert", "online", "recent")] == [5, 40 + 23, 20 + 12]
    assert list(dict.fromkeys(info.table)) == ["expert", "online", "recent"] and len(batch) == 100
    info, _ = c.sample(10, {"recent": 1.0})
    assert (info.table == "recent").all()


# ----------------------------------------------------------------------------- a third table, end to end

def test_a_third_table_added_through_config_alone_is_filled_by_the_actors_and_sampled_by_the_learner(
        redis_server, tmp_path):
    """configs/tiny.toml with a third table 'recent' (policy steps, 16 items, share 0.25) in its [replay]
    section and nothing else changed: a real online actor (EMT) writes every policy step into 'online' and
    'recent', an expert actor its teacher steps into 'expert' only, and one real learner update draws the
    schedule's expert share from 'expert' (what it holds of it) and the rest from 'online' and 'recent' in the
    ratio 2:1, and sends back the priorities of what it drew from each."""
    cfg = load_config(tiny_with(tmp_path, THREE_TABLES), ["actors.insert_batch=1", "expert.p_start=1.0",
                                                          "expert.p_end=1.0"])
    cfg = dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, url=redis_server.url,
                                                              namespace=f"three{uuid.uuid4().hex[:6]}"))
    replay = ReplayClient(cfg.replay.url, cfg.replay, seed=0)
    assert replay.create_tables(batch_size=cfg.learner.batch_size) == dict.fromkeys(("expert", "online", "recent"),
                                                                                   "created")
    train, _ = load_structures("demo", cfg.curriculum, 0)
    hub = Coordinator(Curriculum(train, cfg.curriculum))
    online, expert = ActorLoop("online", cfg, replay, hub), ActorLoop("expert", cfg, replay, hub, actor_id=1)
    for _ in range(6):
        online.step()
    for _ in range(3):
        expert.step()  # p = 1: BFGS offers a step on every structure, so every step is a teacher step
    sizes = replay.sizes()
    steps = 6 * len(online.envs)
    assert sizes["online"] == steps and sizes["recent"] == min(16, steps)  # every policy step, in both
    assert sizes["expert"] == 3 * len(expert.envs)
    assert all(t.expert_action is not None for t in replay.items("expert", range(sizes["expert"])))
    assert all(t.expert_action is None for t in replay.items("online", range(steps)))

    learner = Learner(cfg, replay, tmp_path / "run")
    assert learner.t_total() == steps + sizes["expert"]  # each step once, though 'recent' holds copies
    assert learner.batch_shares() == pytest.approx({"expert": 0.25, "online": 0.5, "recent": 0.25})
    logs = learner.step()
    assert apportion(cfg.learner.batch_size, [0.25, 0.5, 0.25]) == [8, 16, 8]
    # 'expert' holds 6 teacher steps, 2 short of its 8: 'online' and 'recent' make up the 2 in the ratio 2:1
    counts = {"expert": 6, "online": 16 + 1, "recent": 8 + 1}
    stats = replay.stats()
    assert {t: stats[t]["samples"] for t in counts} == counts  # the third table gave its share
    assert {t: stats[t]["updates"] + stats[t]["stale_updates"] for t in counts} == counts  # priorities came back
    assert logs["charts/expert_fraction"] == counts["expert"] / cfg.learner.batch_size
    assert replay.priorities("recent")[1].max() != 1.0  # new priorities |δ| + ε replaced the insert default
