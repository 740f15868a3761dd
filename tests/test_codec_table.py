"""README.md's codec table is what ``python -m psgd.codec_table`` prints: psgd's column comes
from real encodes at d = 10^6, so a change of any format (or of the table's rows) shows here."""

from pathlib import Path

from psgd import codec_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_holds_the_measured_table():
    text = codec_table.table()
    assert text in README.read_text(), "README's codec table is stale: paste python -m psgd.codec_table"


def test_psgd_column_is_real_bytes():
    # sign: 1 bit a coordinate + one float32 scale + the 8-byte header
    assert codec_table.psgd_bytes_per_coord({"name": "sign", "block_size": None}, d=800) == \
        (8 + 4 + 100) / 800
    assert codec_table.psgd_bytes_per_coord({"name": "cast", "format": "fp16"}, d=100) == 2.08
