"""Cache safety: a cached file answers only its own request, the tool stays in its folders,
a damaged cache never crashes a command. Real SDK, sandbox gateway, nothing mocked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from backend.jobs.core.dbn import read_metadata
from tests.helpers import completions, written_files, year_folder

OTHER = "EQUS.MINI"  # the sandbox's second dataset (from 2023-03-28)
TRADES_2025 = ("data", "--symbol", "AAPL", "--year", "2025", "--products", "trades")
TRADES_2023 = ("data", "--symbol", "AAPL", "--year", "2023", "--products", "trades")


def other_folder(data_dir: Path, symbol: str = "AAPL", year: int = 2025) -> Path:
    return data_dir / "raw" / "databento" / "datasets" / OTHER / symbol / str(year)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def status_of(result) -> str:
    return completions(result.stdout)[0]["status"]


@pytest.fixture
def cached(gateway, cli, data_dir) -> Path:
    """AAPL 2025 TRADES of the default dataset, downloaded; the gateway's log is then cleared."""
    result = cli(*TRADES_2025)
    assert result.exit_code == 0, result.output
    gateway.reset()
    return year_folder(data_dir, "AAPL", 2025)


@pytest.fixture
def full_year(gateway, cli, data_dir) -> Path:
    """AAPL 2023 TRADES, a whole calendar year (a range right whatever the dataset holds)."""
    result = cli(*TRADES_2023)
    assert result.exit_code == 0, result.output
    gateway.reset()
    return year_folder(data_dir, "AAPL", 2023)


# the cache key is the whole request


def test_other_dataset_is_fetched_into_its_own_folder_not_skipped(cached, gateway, cli, data_dir):
    """Another dataset never answers from the default dataset's files."""
    before = sha256(cached / "TRADES.dbn.zst")
    result = cli(*TRADES_2025, "--dataset", OTHER)
    assert result.exit_code == 0, result.output
    assert status_of(result) == "downloaded"
    final = other_folder(data_dir) / "TRADES.dbn.zst"
    assert read_metadata(final).dataset == OTHER
    assert json.loads((other_folder(data_dir) / "manifest.json").read_text())["dataset"] == OTHER
    assert sha256(cached / "TRADES.dbn.zst") == before


def test_other_dataset_with_force_leaves_the_default_dataset_untouched(
    cached, gateway, cli, data_dir
):
    """--force on another dataset rewrites only that dataset's files and manifest."""
    manifest_before = (cached / "manifest.json").read_bytes()
    assert cli(*TRADES_2025, "--dataset", OTHER, "--force").exit_code == 0
    gateway.reset()
    assert (cached / "manifest.json").read_bytes() == manifest_before
    result = cli(*TRADES_2025)
    assert status_of(result) == "skipped"
    assert read_metadata(cached / "TRADES.dbn.zst").dataset == "XNAS.ITCH"
    assert gateway.requests == []


def test_entry_recorded_for_another_dataset_is_downloaded_again(cached, gateway, cli):
    """A manifest mixed up by an older version (XNYS data at the XNAS path) is not trusted."""
    manifest = json.loads((cached / "manifest.json").read_text())
    manifest["products"]["TRADES"]["request"]["dataset"] = "XNYS.PILLAR"
    (cached / "manifest.json").write_text(json.dumps(manifest))
    result = cli(*TRADES_2025)
    assert result.exit_code == 0, result.output
    assert status_of(result) == "downloaded"
    assert "another request" in result.stdout
    assert json.loads((cached / "manifest.json").read_text())["products"]["TRADES"]["request"][
        "dataset"
    ] == ("XNAS.ITCH")


def test_status_and_verify_show_the_dataset_of_each_file(cached, cli, data_dir):
    """Two datasets of one symbol-year are two lines, each naming its dataset."""
    assert cli(*TRADES_2025, "--dataset", OTHER).exit_code == 0
    listed = json.loads(cli("status", "--json").stdout)
    assert sorted((item["dataset"], item["manifest"]) for item in listed) == [
        (OTHER, "ok"),
        ("XNAS.ITCH", "ok"),
    ]
    assert [
        item["dataset"] for item in json.loads(cli("status", "--json", "--dataset", OTHER).stdout)
    ] == [OTHER]
    result = cli("verify")
    assert result.exit_code == 0, result.output
    assert "2 ok, 0 bad" in result.stdout


# one pure decision, made first


def test_unrecorded_valid_file_is_adopted_without_key_or_request(
    full_year, gateway, cli, monkeypatch
):
    """Adoption of a whole-year file is offline: no key, no preflight, no budget."""
    (full_year / "manifest.json").unlink()
    monkeypatch.delenv("DATABENTO_API_KEY")
    result = cli(*TRADES_2023, "--max-cost", "0")
    assert result.exit_code == 0, result.output
    assert status_of(result) == "skipped"
    assert "adopted" in result.stdout
    assert gateway.requests == []
    assert json.loads((full_year / "manifest.json").read_text())["products"]["TRADES"]["sha256"]


def test_dry_run_counts_an_unrecorded_valid_file_as_cached(full_year, gateway, cli):
    """--dry-run lists an adoptable file as cached, asks nothing and writes nothing."""
    (full_year / "manifest.json").unlink()
    result = cli(*TRADES_2023, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "cached" in result.stdout
    assert "to download" not in result.stdout
    assert gateway.requests == []
    assert not (full_year / "manifest.json").exists()


def test_folder_at_the_final_path_fails_before_any_request(gateway, cli, data_dir):
    """A destination that cannot be written is found before the key, preflight or billing."""
    final = year_folder(data_dir, "AAPL", 2025) / "TRADES.dbn.zst"
    final.mkdir(parents=True)
    result = cli(*TRADES_2025)
    assert result.exit_code == 1
    assert str(final) in result.stderr
    assert ".tmp" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert gateway.requests == []


# the tool stays in its own folders


def test_symlinked_parts_folder_is_refused_and_the_foreign_folder_untouched(
    gateway, cli, data_dir, tmp_path
):
    """Nothing is written into, or deleted from, a folder a link points to."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / ".precious.tmp").write_text("keep")
    (foreign / ".TRADES.dbn.zst.1-0123456789ab.tmp").write_text("keep")
    parts = year_folder(data_dir, "AAPL", 2025) / ".parts"
    parts.mkdir(parents=True)
    (parts / "TRADES").symlink_to(foreign)
    result = cli(*TRADES_2025)
    assert result.exit_code == 1
    assert "symbolic link" in result.stderr
    assert str(parts / "TRADES") in result.stderr
    assert sorted(path.name for path in foreign.iterdir()) == [
        ".TRADES.dbn.zst.1-0123456789ab.tmp",
        ".precious.tmp",
    ]
    assert gateway.count("timeseries.get_range") == 0


def test_symlinked_data_dir_and_raw_folder_keep_working(gateway, cli, tmp_path, monkeypatch):
    """Pointing the data dir (or data/raw) at another disk is the user's right."""
    disk = tmp_path / "other-disk"
    (disk / "raw").mkdir(parents=True)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "raw").symlink_to(disk / "raw")
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    result = cli(*TRADES_2025)
    assert result.exit_code == 0, result.output
    assert (disk / "raw" / "databento" / "AAPL" / "2025" / "TRADES.dbn.zst").is_file()


def test_stale_temps_are_removed_only_when_named_by_the_tool(cached, cli):
    """A killed run's temps (merged file, manifest) go; look-alike user files stay."""
    ours = [
        cached / ".TRADES.dbn.zst.4242-0123456789ab.tmp",
        cached / ".manifest.json.4242-0123456789ab.tmp",
    ]
    theirs = [cached / ".TRADES.dbn.zst.notes.tmp", cached / ".manifest.json.tmp"]
    for path in ours + theirs:
        path.write_text("x")
    (cached / "TRADES.dbn.zst").write_bytes(b"")  # forces a fetch, and a manifest write
    assert cli(*TRADES_2025).exit_code == 0
    assert [path.exists() for path in ours] == [False, False]
    assert [path.exists() for path in theirs] == [True, True]


# a damaged manifest is data, not a crash


DAMAGED_ENTRIES = {
    "a string": "oops",
    "a list": [],
    "records not a number": "records-many",
    "missing fields": {"bytes": 1},
}


def damage(folder: Path, how: str) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    value = DAMAGED_ENTRIES[how]
    if value == "records-many":
        manifest["products"]["TRADES"]["records"] = "many"
    else:
        manifest["products"]["TRADES"] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def both_cached(gateway, cli, data_dir) -> Path:
    result = cli("data", "--symbol", "AAPL", "--year", "2025")
    assert result.exit_code == 0, result.output
    gateway.reset()
    return year_folder(data_dir, "AAPL", 2025)


@pytest.mark.parametrize("how", DAMAGED_ENTRIES)
def test_damaged_entry_is_listed_by_status_and_named_by_verify(both_cached, cli, how):
    """status lists every file, the damaged one marked; verify exits 1 naming it."""
    damage(both_cached, how)
    result = cli("status")
    assert result.exit_code == 0, result.output
    assert "TBBO" in result.stdout
    assert "damaged" in result.stdout
    states = {
        item["product"]: item["manifest"] for item in json.loads(cli("status", "--json").stdout)
    }
    assert states == {"TBBO": "ok", "TRADES": "damaged manifest entry"}
    result = cli("verify")
    assert result.exit_code == 1
    assert str(both_cached / "TRADES.dbn.zst") in result.stderr
    assert "TBBO" not in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("how", DAMAGED_ENTRIES)
def test_damaged_entry_is_repaired_by_data_without_downloading(both_cached, gateway, cli, how):
    """data treats a damaged entry as missing: the file is validated again and re-recorded."""
    damage(both_cached, how)
    result = cli("data", "--symbol", "AAPL", "--year", "2025")
    assert result.exit_code == 0, result.output
    assert "repairing the manifest" in result.stdout
    assert [line["status"] for line in completions(result.stdout)] == ["skipped", "skipped"]
    assert gateway.count("timeseries.get_range") == 0
    assert cli("verify").exit_code == 0


def test_unreadable_manifest_lists_every_file_as_damaged(both_cached, cli):
    """A manifest that is not JSON at all still lets status list the files."""
    (both_cached / "manifest.json").write_text("{ not json")
    result = cli("status", "--json")
    assert result.exit_code == 0, result.output
    assert {item["manifest"] for item in json.loads(result.stdout)} == {"damaged manifest entry"}
    assert cli("verify").exit_code == 1


# paths and settings


@pytest.mark.parametrize("command", ["status", "verify"])
def test_status_and_verify_of_a_missing_data_dir_exit_2_and_create_nothing(cli, tmp_path, command):
    """A mistyped --data-dir is an error, not an empty cache."""
    missing = tmp_path / "typo"
    result = cli(command, "--data-dir", str(missing))
    assert result.exit_code == 2
    assert str(missing) in result.stderr
    assert not missing.exists()


def test_empty_data_dir_flag_means_the_default(gateway, cli, data_dir, tmp_path, monkeypatch):
    """`--data-dir ''` is the same as no flag (here DATA_DIR), never ./raw."""
    monkeypatch.chdir(tmp_path)
    result = cli(*TRADES_2025, "--data-dir", "")
    assert result.exit_code == 0, result.output
    assert (year_folder(data_dir, "AAPL", 2025) / "TRADES.dbn.zst").is_file()
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize(
    ("variable", "value"), [("DATABENTO_MAX_COST", "lots"), ("DATABENTO_GATEWAY", "::bad::")]
)
def test_settings_a_command_does_not_use_never_fail_it(cached, cli, monkeypatch, variable, value):
    """status, verify and a fully cached run ignore the budget and gateway settings."""
    monkeypatch.setenv(variable, value)
    assert cli("status").exit_code == 0
    assert cli("verify").exit_code == 0
    result = cli(*TRADES_2025)
    assert result.exit_code == 0, result.output
    assert status_of(result) == "skipped"


# the key, in any case


@pytest.mark.parametrize("case", [str, str.upper, str.lower])
def test_gateway_that_is_the_api_key_is_refused_without_a_connection(
    gateway, cli, data_dir, api_key, case
):
    """`--gateway "$DATABENTO_API_KEY"` exits 2 before any lookup, the key masked in any case."""
    result = cli(*TRADES_2025, "--gateway", case(api_key))
    assert result.exit_code == 2
    assert "looks like an API key" in result.stderr
    assert api_key.lower() not in result.output.lower()
    assert gateway.requests == []
    assert not written_files(data_dir)


def test_key_is_masked_in_logs_whatever_its_case(gateway, cli, data_dir, api_key):
    """An error that carries the key upper-cased (a host name, say) still never shows it."""
    result = cli(*TRADES_2025, "--gateway", f"{api_key.upper()}-x.invalid:1")
    assert result.exit_code == 2
    assert api_key.lower() not in result.output.lower()


def test_damaged_cache_never_prints_a_traceback(both_cached, cli):
    """Every command on a damaged manifest ends with lines, never a traceback."""
    (both_cached / "manifest.json").write_text(json.dumps({"format": 1, "products": "x"}))
    outputs = [
        cli("status").output,
        cli("verify").output,
        cli("data", "--symbol", "AAPL", "--year", "2025").output,
    ]
    assert all("Traceback" not in text for text in outputs)
    assert (both_cached / "TRADES.dbn.zst").exists()
