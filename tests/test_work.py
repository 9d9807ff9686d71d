"""The unit of work as plain data (issue 16): a group's plan and the run's config pickle, and
`fetch_group` fed nothing but their unpickled copies publishes the very file the CLI writes.

Real SDK against the sandbox gateway; nothing is mocked.
"""

from __future__ import annotations

import json
import pickle

import pytest

from backend.jobs.cache.layout import YearFolder
from backend.jobs.client.databento import DatabentoClient
from backend.jobs.core.ranges import PRODUCTS
from backend.jobs.core.request import IngestRequest
from backend.jobs.core.work import GroupPlan, RunConfig
from backend.jobs.engines.runner import fetch_group
from backend.jobs.plan.preflight import plan_universe
from backend.jobs.settings import Settings
from backend.jobs.store import open_store
from tests.helpers import year_folder

TRADES = PRODUCTS["TRADES"]


def planned(data_dir, engine: str) -> tuple[GroupPlan, RunConfig]:
    """AAPL 2023 TRADES as the preflight plans it, and the run's config, for `data_dir`."""
    settings = Settings.from_env(data_dir=str(data_dir))
    location, work = settings.store_location(), settings.work_root()
    folder = YearFolder("AAPL", 2023, "XNAS.ITCH", store=open_store(location), work_root=work)
    client = DatabentoClient(settings.require_key(), settings.gateway_url())
    plan = plan_universe(
        client,
        dataset="XNAS.ITCH",
        pending=[(folder, TRADES)],
        chunking="month",
        group_size=50,
        engine=engine,  # type: ignore[arg-type]
    )
    request = IngestRequest(symbols=("AAPL",), years=(2023,), products=(TRADES,))
    config = RunConfig.of(request, store=location, work_dir=work, gateway=settings.gateway_url())
    return plan.groups[0], config


def round_trip(value: object) -> object:
    return pickle.loads(pickle.dumps(value))  # noqa: S301  our own bytes


def test_unit_of_work_inputs_pickle_as_plain_values(gateway, data_dir):
    """The next issue ships a group and the config to other processes: they must pickle whole
    (no store, client, pool, lock or progress inside) and come back equal."""
    group, config = planned(data_dir, "stream")
    assert round_trip(group) == group
    assert round_trip(config) == config
    assert "key" not in {name.lower() for name in vars(config)}  # the API key never travels
    assert len(group.chunks) == 12


@pytest.mark.parametrize("engine", ["stream", "batch"])
def test_fetch_group_from_pickled_plain_data_publishes_the_cli_file(
    gateway, cli, data_dir, tmp_path, engine
):
    """Fed only unpickled copies of its plain inputs, the unit of work builds its own client
    and store and publishes the same file and manifest entry as the CLI; its results pickle."""
    reference = tmp_path / "reference"
    assert cli("data", "--symbol", "AAPL", "--year", "2023", "--products", "trades",
               "--data-dir", str(reference)).exit_code == 0  # fmt: skip
    group, config = planned(data_dir, engine)
    results = fetch_group(round_trip(group), round_trip(config))  # type: ignore[arg-type]
    assert round_trip(results) == results
    assert [(r.symbol, r.year, r.product.name, r.status) for r in results] == [
        ("AAPL", 2023, "TRADES", "downloaded")
    ]
    written = year_folder(data_dir) / "TRADES.dbn.zst"
    assert written.read_bytes() == (year_folder(reference) / "TRADES.dbn.zst").read_bytes()
    entry = json.loads((year_folder(data_dir) / "manifest.json").read_text())["products"]["TRADES"]
    assert entry["engine"] == engine
    assert not (year_folder(data_dir) / ".parts" / "TRADES").exists()


def test_fetch_group_removes_what_a_killed_attempt_left_beside_the_file(gateway, data_dir):
    """A cluster worker killed mid-split leaves its temps in the year folder (a product of one
    chunk is written there); the task rerun elsewhere publishes the product and removes them:
    the run ends with nothing but the file, the manifest and its lock file."""
    group, config = planned(data_dir, "stream")
    folder = year_folder(data_dir)
    stale = folder / ".TRADES.dbn.zst.4242-00000000002a.tmp"
    stale.mkdir(parents=True)
    (stale / "group.dbn.zst").write_bytes(b"a split cut short")
    (folder / ".TRADES.dbn.zst.4242-00000000002b.tmp").write_bytes(b"a part cut short")
    fetch_group(group, config)
    left = sorted(path.name for path in folder.iterdir())
    assert left == [".manifest.lock", "TRADES.dbn.zst", "manifest.json"]
