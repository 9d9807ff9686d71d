"""Input as a careless or hostile user gives it: S3 URLs, symbols files, years, durations, sizes.

Every refusal is exit 2 with one line that says what is wrong and names the flag or variable,
without a traceback, before anything is written or asked (of Databento or of the bucket).
Pure parsers are tested directly; the CLI in-process against the sandbox gateway and the local
S3 server (moto in server mode), through the real SDK and storage clients.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backend.jobs.cli.app import app
from backend.jobs.core.locations import bucket_problem, redact_url, split_url
from backend.jobs.core.ranges import counted
from backend.jobs.core.units import human_bytes, parse_duration
from backend.jobs.core.universe import MAX_SYMBOLS, MAX_SYMBOLS_FILE_BYTES, read_symbols_file
from backend.jobs.errors import InvalidInputError
from backend.jobs.plan.preflight import choose_engine
from tests.test_s3 import BUCKET


@pytest.fixture
def s3_watch(s3_server, monkeypatch: pytest.MonkeyPatch):
    """The local S3 server as the AWS configuration, its request log emptied (no bucket made:
    for refusals, which must never reach it)."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3_server.requests.clear()
    return s3_server


AAPL_2023 = ("--symbol", "AAPL", "--year", "2023", "--products", "trades")


def one_line_refusal(result, *fragments: str) -> str:
    """Exit 2, one line on stderr holding every fragment, no traceback; returns the line."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# S3 URLs: parsed strictly, before any request


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://bento-test", "bento-test", ""),
        ("s3://bento-test/", "bento-test", ""),
        ("s3://team-data/databento", "team-data", "databento"),
        ("s3://my.bucket.name/a/b/", "my.bucket.name", "a/b"),
        ("S3://bento-test/x", "bento-test", "x"),
        ("s3://abc/year=2023/a b+c@d", "abc", "year=2023/a b+c@d"),
        ("s3://b-1.example/données", "b-1.example", "données"),
        ("s3://" + "a" * 63 + "/x", "a" * 63, "x"),
    ],
)
def test_split_url_valid_location_gives_bucket_and_prefix(url, bucket, prefix):
    """Valid bucket names, one trailing slash, `=`, spaces, `@` and UTF-8 in the prefix pass."""
    assert split_url(url) == (bucket, prefix)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("ab", "2 characters"),
        ("b", "1 character"),
        ("a" * 64, "64 characters"),
        ("Bento", "upper-case letters"),
        ("bento_test", "characters other than"),
        ("bento test", "characters other than"),
        ("-bento", "begin and end with a letter or digit"),
        ("bento-", "begin and end with a letter or digit"),
        (".bento", "begin and end with a letter or digit"),
        ("bento..test", "two adjacent dots"),
        ("192.168.5.4", "IP address"),
        ("xn--bento", "the prefix 'xn--'"),
        ("sthree-bento", "the prefix 'sthree-'"),
        ("amzn-s3-demo-bento", "the prefix 'amzn-s3-demo-'"),
        ("bento-s3alias", "the suffix '-s3alias'"),
        ("bento--ol-s3", "the suffix '--ol-s3'"),
        ("bento.mrap", "the suffix '.mrap'"),
        ("bento--x-s3", "the suffix '--x-s3'"),
        ("bento--table-s3", "the suffix '--table-s3'"),
    ],
)
def test_bucket_problem_names_the_broken_rule(name, reason):
    """Each of AWS's general purpose bucket naming rules is checked, and named when broken."""
    assert reason in bucket_problem(name)


@pytest.mark.parametrize(
    "name", ["abc", "bento-test", "my.bucket.name", "1bucket2", "a" * 63, "192.168.5.4a"]
)
def test_bucket_problem_valid_names_pass(name):
    assert bucket_problem(name) == ""


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("s3://user:hunter2@bucket/x", "s3://user:***@bucket/x"),
        ("s3://AKIAEXAMPLE@bucket/x", "s3://***@bucket/x"),
        ("s3://user:pa/ss@bucket/x", "s3://user:***@bucket/x"),
        ("s3://user:p@ss:w@bucket/x", "s3://user:***@bucket/x"),
        ("gs://user:hunter2@bucket", "gs://user:***@bucket"),
        ("s3://bucket/team@x", "s3://bucket/team@x"),
        ("s3://bucket/a:b@c", "s3://bucket/a:b@c"),
    ],
)
def test_redact_url_masks_a_password_or_lone_user(url, shown):
    """Passwords with `/`, `:` or `@` are masked whole; an `@` in the prefix is left alone."""
    assert redact_url(url) == shown


BAD_S3_URLS = [
    ("s3://bento-test/./x", "has a '.' or '..' segment"),
    ("s3://bento-test/..", "has a '.' or '..' segment"),
    ("s3://bento-test/a/../b", "has a '.' or '..' segment"),
    ("s3://bento-test/a/.", "has a '.' or '..' segment"),
    ("s3://b/./x", "invalid bucket name 'b' (1 character)"),
    ("s3://bento-test//x", "has an empty path segment ('//'): write it with single slashes"),
    ("s3://bento-test/a//b/", "s3://bento-test/a/b"),
    ("s3://bento-test/x?versionId=1", "has a query or fragment"),
    ("s3://bento-test/x#top", "has a query or fragment"),
    ("s3://bento-test?list", "has a query or fragment"),
    ("s3://Bento-Test/x", "invalid bucket name 'Bento-Test' (upper-case letters)"),
    ("s3://bento_test/x", "invalid bucket name 'bento_test'"),
    ("s3://ab/x", "(2 characters)"),
    ("s3://bento..test/x", "(two adjacent dots)"),
    ("s3://192.168.5.4/x", "(formatted as an IP address)"),
    ("s3://xn--bento/x", "reserved by S3"),
    ("s3://bento-s3alias/x", "reserved by S3"),
    ("s3://localhost:9000/bento-test", "names a host and port, not a bucket"),
    ("s3://bento-test/a\\b", "has a backslash or control characters"),
    ("s3://bento-test/a\tb", "has a backslash or control characters"),
    ("s3://", "names no bucket"),
    ("s3:///x", "names no bucket"),
    ("s3://bento-test/" + "p" * 800, "longer than 768 bytes"),
]


@pytest.mark.parametrize(("url", "says"), BAD_S3_URLS)
def test_status_bad_s3_url_exits_2_before_any_request(s3_watch, cli, url, says):
    """Refused by the parser: the bucket never sees a request (no NoSuchBucket, no traceback)."""
    one_line_refusal(cli("status", "--data-dir", url), "--data-dir 's3:", says)
    assert s3_watch.requests == []


@pytest.mark.parametrize(
    ("url", "secret", "shown"),
    [
        ("s3://user:hunter2@bento-test/x", "hunter2", "'s3://user:***@bento-test/x'"),
        ("s3://AKIAEXAMPLE@bento-test/x", "AKIAEXAMPLE", "'s3://***@bento-test/x'"),
        ("s3://user:pa/ss@bento-test/x", "pa/ss", "'s3://user:***@bento-test/x'"),
        ("gs://user:hunter2@bento-test/x", "hunter2", "'gs://user:***@bento-test/x'"),
    ],
)
@pytest.mark.parametrize("command", ["status", "verify", "data"])
def test_credentials_in_the_url_are_refused_and_masked(
    gateway, s3_watch, cli, tmp_path, monkeypatch, command, url, secret, shown
):
    """From DATA_DIR too: named as such, the password never printed, nothing asked or written."""
    monkeypatch.setenv("DATA_DIR", url)
    args = [*AAPL_2023, "--work-dir", str(tmp_path / "work")] if command == "data" else []
    result = cli(command, *args)
    one_line_refusal(result, f"DATA_DIR {shown}")
    assert secret not in result.output
    assert s3_watch.requests == []
    assert gateway.requests == []
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("s3://bento-test/./x", "has a '.' or '..' segment"),
        ("s3://bento-test/..", "has a '.' or '..' segment"),
        ("s3://bento-test/x?versionId=1", "has a query or fragment"),
        ("s3://Bento-Test/x", "invalid bucket name"),
    ],
)
def test_data_bad_s3_url_writes_nothing_and_asks_nothing(
    gateway, s3_watch, cli, tmp_path, url, says
):
    """`data` refuses the URL before the work dir, the bucket or Databento are touched."""
    work = tmp_path / "work"
    result = cli("data", *AAPL_2023, "--data-dir", url, "--work-dir", str(work))
    one_line_refusal(result, "--data-dir", says)
    assert s3_watch.requests == []
    assert gateway.requests == []
    assert not work.exists()


@pytest.mark.parametrize(
    ("data_dir", "work_dir", "says"),
    [
        (
            "s3://bento-test/x",
            "s3://bento-test/scratch",
            "--work-dir 's3://bento-test/scratch' is a URL",
        ),
        ("s3:/bento-test/x", "scratch", "--data-dir 's3:/bento-test/x' is neither a local folder"),
        ("s3:bento-test", "scratch", "--data-dir 's3:bento-test' is neither a local folder"),
    ],
)
def test_url_shaped_local_paths_are_refused(
    gateway, s3_watch, cli, tmp_path, monkeypatch, data_dir, work_dir, says
):
    """A slash short of s3://, or a URL as the local scratch, is a mistake, not a folder."""
    monkeypatch.chdir(tmp_path)
    result = cli("data", *AAPL_2023, "--data-dir", data_dir, "--work-dir", work_dir)
    one_line_refusal(result, says)
    assert list(tmp_path.iterdir()) == []
    assert s3_watch.requests == []
    assert gateway.requests == []


@pytest.mark.parametrize("command", ["status", "verify"])
def test_never_written_s3_prefix_exits_2_like_a_missing_folder(s3, cli, tmp_path, command):
    """A typo in the prefix is not an empty cache: the same exit and message as a local typo."""
    remote = one_line_refusal(cli(command, "--data-dir", f"s3://{BUCKET}/never/written"))
    local = one_line_refusal(cli(command, "--data-dir", str(tmp_path / "never")))
    tail = "does not exist: check --data-dir / DATA_DIR (nothing has been cached there yet)"
    assert remote.endswith(f"data dir s3://{BUCKET}/never/written {tail}")
    assert local.endswith(tail)


def test_s3_prefix_with_any_object_is_listed_like_an_existing_folder(s3, cli):
    """Objects other than the cache's make the prefix exist: an empty listing, exit 0."""
    s3.client().put_object(Bucket=BUCKET, Key="shared/notes.txt", Body=b"hello")
    result = cli("status", "--data-dir", f"s3://{BUCKET}/shared", "--json")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "[]"


# Symbols files: UTF-8 with or without BOM, a cap, `-` for standard input


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xef\xbb\xbfAAPL\r\nmsft\r\n", ["AAPL", "MSFT"]),
        (b"\xff\xfe" + "AAPL\r\n# c\r\nnvda\r\n".encode("utf-16-le"), ["AAPL", "NVDA"]),
        (b"\xfe\xff" + "AAPL\n".encode("utf-16-be"), ["AAPL"]),
        (b"AAPL\rMSFT", ["AAPL", "MSFT"]),
        ("AAPL\u00a0\n  brk.b # class B\n".encode(), ["AAPL", "BRK.B"]),
    ],
)
def test_read_symbols_file_accepts_what_editors_write(tmp_path, content, expected):
    """Excel and PowerShell 7 write a UTF-8 BOM, PowerShell 5 UTF-16 with a BOM, Windows CRLF."""
    listing = tmp_path / "list.txt"
    listing.write_bytes(content)
    assert read_symbols_file(str(listing)) == expected


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "is empty: put one ticker per line"),
        (b"\n  \n", "holds no symbol (only blank lines and # comments)"),
        (b"\xef\xbb\xbf# only a header\n\n", "holds no symbol (only blank lines and # comments)"),
        (b"AAPL\n\xe9\n", "is not UTF-8 text (byte 6 cannot be read)"),
        (b"A\x00A\x00P\x00L\x00", "is not a text file (it holds NUL bytes"),
        (b"AAPL,MSFT\n", "line 1 holds a comma: put one ticker per line"),
        (b"AAPL\n\n../x\n", "line 3: symbol '../X' contains a path separator"),
        (b"X" * 200 + b"\n", "line 1: symbol is longer than 70 characters"),
        (b"AAPL\n" * (MAX_SYMBOLS + 1), f"holds more than {MAX_SYMBOLS:,} symbols"),
        (b"#" * (MAX_SYMBOLS_FILE_BYTES + 1), "is larger than 1 MB"),
    ],
)
def test_read_symbols_file_refusal_names_the_file(tmp_path, content, says):
    """What is wrong, and which file (and line): never a bare "no symbol given"."""
    listing = tmp_path / "list.txt"
    listing.write_bytes(content)
    with pytest.raises(InvalidInputError) as refused:
        read_symbols_file(str(listing))
    assert str(refused.value).startswith(f"--symbols-file {listing}")
    assert says in str(refused.value)


def test_read_symbols_file_at_the_caps_is_accepted(tmp_path):
    """Exactly 1 MB, and exactly 100,000 symbols, are still read."""
    listing = tmp_path / "list.txt"
    content = b"AAPL\n" + b"#" * (MAX_SYMBOLS_FILE_BYTES - 6) + b"\n"
    listing.write_bytes(content)
    assert len(content) == MAX_SYMBOLS_FILE_BYTES
    assert read_symbols_file(str(listing)) == ["AAPL"]
    listing.write_bytes(b"A\n" * MAX_SYMBOLS)
    assert len(read_symbols_file(str(listing))) == MAX_SYMBOLS


def test_symbols_file_with_a_bom_runs(gateway, cli, data_dir, tmp_path):
    """A list saved by Excel (UTF-8 BOM, CRLF) plans like a plain one."""
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbfAAPL\r\nMSFT\r\n")
    result = cli("data", "--symbols-file", str(listing), "--year", "2023", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "2 symbols x 1 year " in result.stdout


def test_symbols_file_dash_reads_standard_input(gateway, data_dir):
    """`--symbols-file -` takes the list from a pipe."""
    result = CliRunner().invoke(
        app,
        ["data", "--symbols-file", "-", "--year", "2023", "--dry-run"],
        input="# from a pipe\nAAPL\nmsft\n",
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "2 symbols x 1 year " in result.stdout


def test_symbols_file_dash_past_the_cap_is_refused(data_dir):
    result = CliRunner().invoke(
        app,
        ["data", "--symbols-file", "-", "--year", "2023"],
        input="AAPL\n" * (MAX_SYMBOLS_FILE_BYTES // 5 + 1),
        catch_exceptions=False,
    )
    one_line_refusal(result, "--symbols-file - (standard input) is larger than 1 MB")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_symbols_file_dev_zero_is_refused_at_once(gateway, cli, data_dir):
    """An endless file is read to the cap and no further: not until memory runs out."""
    started = time.monotonic()
    result = cli("data", "--symbols-file", "/dev/zero", "--year", "2023")
    assert time.monotonic() - started < 5
    one_line_refusal(result, "--symbols-file /dev/zero is larger than 1 MB")
    assert gateway.requests == []


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda d: (d / "list.txt").write_text("# nothing yet\n"), "list.txt holds no symbol"),
        (lambda d: (d / "list.txt").write_text(""), "list.txt is empty"),
        (lambda d: (d / "list.txt").mkdir(), "list.txt is a folder"),
        (lambda _: None, "list.txt does not exist"),
    ],
)
def test_symbols_file_problems_exit_2_naming_the_file(gateway, cli, data_dir, tmp_path, make, says):
    """Even with --symbol given: a list that names nothing is the wrong file."""
    make(tmp_path)
    result = cli("data", "--symbol", "AAPL", "--symbols-file", str(tmp_path / "list.txt"))
    one_line_refusal(result, "--symbols-file ", says)
    assert gateway.requests == []


# Flags and their messages


FORMS = "write 2023, a range 2021-2023, a list 2021,2023 or both: 2019,2021-2023"


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--years", "2021-"), f"--years '2021-': the range '2021-' has no last year: {FORMS}"),
        (("--years", "-2021"), f"the range '-2021' has no first year: {FORMS}"),
        (("--years", "2021-2022-2023"), f"has two '-': {FORMS}"),
        (("--years", "20x3"), f"--years '20x3': '20x3' is not a number: {FORMS}"),
        (("--years", "2023,²"), f"'²' is not a number: {FORMS}"),
        (("--years", ","), f"--years ',' names no year: {FORMS}"),
        (("--years", "1900-2023"), "year 1900 is out of range: use a year from 1970 to 9999"),
        (("--years", "2023-2021"), "from the earlier year to the later: write 2021-2023"),
        (("--years", "1970-9999"), "names more than 100 years"),
        (("--year", "2O23"), "--year '2O23' is not a number"),
        (("--year", "1969"), "--year '1969': year 1969 is out of range"),
    ],
)
def test_bad_years_say_what_is_wrong_and_show_the_forms(gateway, cli, data_dir, flags, says):
    """`--years 2021-` no longer answers "year '' is not a number"."""
    one_line_refusal(cli("data", "--symbol", "AAPL", *flags), says)
    assert gateway.requests == []


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--symbol", "../x"), "--symbol: symbol '../X' contains a path separator"),
        (("--symbols", "AAPL,../x"), "--symbols item 2: symbol '../X'"),
        (("--symbols", " , "), "--symbols ' , ' names no symbol"),
        (("--symbols-file", ""), "--symbols-file is empty: pass the path"),
        (("--products", "quotes"), "--products 'quotes' names an unknown product (QUOTES)"),
        (("--products", ","), "--products ',' is empty"),
        (("--dataset", "nasdaq"), "--dataset 'nasdaq' is not a Databento dataset code"),
    ],
)
def test_bad_flags_are_named_in_their_refusal(gateway, cli, data_dir, flags, says):
    symbol = () if flags[0].startswith("--symbol") else ("--symbol", "AAPL")
    one_line_refusal(cli("data", *symbol, "--year", "2023", *flags), says)
    assert gateway.requests == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1d", 86400), ("1d12h", 129600), ("30d", 2592000), ("1s", 1), ("2.5h", 9000), ("90", 90)],
)
def test_parse_duration_reads_days(text, seconds):
    """A day is `1d`, as `6h` is six hours; 30 days (when a job's files expire) is the most."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["0", "0s", "0.5", "31d", "1w", "inf", "nan", "1e3", "30m1h", "1d1d", "-1h", "soon"]
)
def test_batch_timeout_out_of_range_or_malformed_exits_2(gateway, cli, data_dir, text):
    """The refusal gives the accepted forms and the allowed range."""
    result = cli("data", *AAPL_2023, "--batch-timeout", text)
    one_line_refusal(result, f"--batch-timeout {text!r}", "from 1s to 30d", "1d")
    assert gateway.requests == []


def test_batch_timeout_of_a_day_is_accepted_and_documented(gateway, cli, data_dir):
    assert cli("data", *AAPL_2023, "--batch-timeout", "1d", "--dry-run").exit_code == 0
    assert "1d" in cli("data", "--help").stdout


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (999, "999 B"),
        (1500, "1.5 KB"),
        (999_999, "1 MB"),
        (2_500_000, "2.5 MB"),
        (249_600, "250 KB"),
        (6_200_000_000, "6.2 GB"),
        (1_234_567_890, "1.23 GB"),
        (5 * 10**15, "5,000 TB"),
    ],
)
def test_human_bytes_shows_three_significant_digits(count, shown):
    assert human_bytes(count) == shown


@pytest.mark.parametrize(
    ("estimate", "above", "why"),
    [
        (2_500_000, 1, "estimate 2.5 MB > --batch-above 1 B"),
        (6_200_000_000, 5 * 10**9, "estimate 6.2 GB > --batch-above 5 GB"),
        (5 * 10**9 + 1, 5 * 10**9, "estimate 5,000,000,001 B > --batch-above 5,000,000,000 B"),
        (5 * 10**9, 5 * 10**9, "estimate 5 GB <= --batch-above 5 GB"),
        (1_234_567, 1_234_999, "estimate 1.23457 MB <= --batch-above 1.235 MB"),
    ],
)
def test_engine_choice_shows_numbers_that_differ_when_they_do(estimate, above, why):
    """Never `estimate 0.00 GB > --batch-above 0.00 GB`: the comparison is readable."""
    assert choose_engine("auto", estimate, above)[1] == why


def test_dry_run_engine_line_shows_small_sizes(gateway, cli, data_dir):
    result = cli("data", *AAPL_2023, "--dry-run", "--batch-above", "1B")
    assert result.exit_code == 0, result.output
    assert "> --batch-above 1 B" in result.stdout
    assert "0.00 GB" not in result.stdout


@pytest.mark.parametrize(
    ("count", "noun", "shown"),
    [(1, "symbol", "1 symbol"), (2, "year", "2 years"), (0, "group", "0 groups")],
)
def test_counted_uses_the_singular_for_one(count, noun, shown):
    assert counted(count, noun) == shown


def test_dry_run_counts_are_in_the_right_number(gateway, cli, data_dir):
    """One symbol over two years: "1 symbol x 2 years", never "1 symbols"."""
    result = cli(
        *("data", "--symbol", "AAPL", "--years", "2022-2023", "--products", "trades", "--dry-run")
    )
    assert result.exit_code == 0, result.output
    assert "1 symbol x 2 years" in result.stdout
    assert "1 symbols" not in result.stdout


def test_verify_counts_files_in_the_right_number(cli, data_dir):
    data_dir.mkdir(parents=True)
    result = cli("verify")
    assert result.exit_code == 0, result.output
    assert "verified 0 files: 0 ok, 0 bad" in result.stdout
