"""Schema, Parquet days and the exactly-once streaming reader."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hvams.data.reader import DayReader, MalformedDataError, list_days
from hvams.data.schema import Field, Schema, default_schema


def _rows(batches, cols=("user_id", "ad_id", "p_true")):
    out = []
    for b in batches:
        beh = [tuple(b.lists["beh_item"][b.offsets[i]:b.offsets[i + 1]]) for i in range(b.n)]
        out += list(zip(*(b.values[c].tolist() for c in cols), beh))
    return out


def test_schema_round_trip(tmp_path):
    s = default_schema(40)
    s.save(tmp_path)
    t = Schema.load(tmp_path)
    assert t == s and t.max_behaviors == 40
    assert t.tables[:3] == ["user", "age", "gender"]
    assert [(a.name, b.name) for a, b in t.paired_behavior_fields()] == [
        ("ad_id", "beh_item"), ("category", "beh_category")]
    with pytest.raises(ValueError, match="not a field"):
        Schema(fields=[Field("x", "user", "id", "x")])
    with pytest.raises(ValueError, match="unknown role"):
        Field("x", "nope", "id", "x")


def test_parquet_round_trip_matches_arrow(tiny_world):
    schema = Schema.load(tiny_world)
    day = list_days(tiny_world)[0]
    table = pq.read_table(day)
    batches = list(DayReader(day, schema, batch_size=333))
    assert sum(b.n for b in batches) == table.num_rows
    assert [b.n for b in batches[:-1]] == [333] * (len(batches) - 1)
    b = batches[1]
    rows = table.slice(333, 333)
    assert np.array_equal(b.values["ad_id"], rows["ad_id"].to_numpy())
    flat = pa.compute.list_flatten(rows["beh_image"]).to_numpy()
    assert np.array_equal(b.lists["beh_image"], flat)
    # index maps every value into the batch's unique keys of its table
    for name in ("ad_id", "beh_item"):
        assert np.array_equal(b.table_keys["item"][b.index[name]], b.column(name))
    assert np.array_equal(b.image_keys[b.index["beh_image"]], b.lists["beh_image"])
    assert len(np.unique(b.image_keys)) == len(b.image_keys)
    assert b.offsets[-1] == len(b.lists["beh_item"]) and (np.diff(b.offsets) >= 1).all()


@pytest.mark.parametrize("workers", [2, 3, 5, 7])
def test_exactly_once_over_workers(tiny_world, workers):
    schema = Schema.load(tiny_world)
    day = list_days(tiny_world)[1]
    full = _rows(DayReader(day, schema, batch_size=4096))
    parts = [_rows(DayReader(day, schema, batch_size=97, worker=w, num_workers=workers))
             for w in range(workers)]
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sum(parts, []) == full  # every row once, in order


def test_shuffle_is_a_permutation(tiny_world):
    schema = Schema.load(tiny_world)
    day = list_days(tiny_world)[0]
    plain = _rows(DayReader(day, schema, 200))
    mixed = _rows(DayReader(day, schema, 200, shuffle_seed=5))
    assert mixed != plain and sorted(mixed) == sorted(plain)


def test_cap_keeps_newest(tiny_world):
    schema = Schema.load(tiny_world)
    schema.max_behaviors = 5
    day = list_days(tiny_world)[0]
    b = next(iter(DayReader(day, schema, 50)))
    table = pq.read_table(day).slice(0, 50)
    full = table["beh_item"].to_pylist()
    got = [list(b.lists["beh_item"][b.offsets[i]:b.offsets[i + 1]]) for i in range(b.n)]
    assert got == [r[:5] for r in full]


def _bad_day(tmp_path, tiny_world, mutate):
    schema = Schema.load(tiny_world)
    table = pq.read_table(list_days(tiny_world)[0]).slice(0, 300)
    table = mutate(table)
    out = tmp_path / "day=00"
    out.mkdir()
    pq.write_table(table, out / "part-00000.parquet", row_group_size=100)
    return out, schema


def _set_row(table, name, row, value):
    col = table[name].to_pylist()
    col[row] = value
    return table.set_column(table.schema.get_field_index(name), name,
                            pa.array(col, type=table.schema.field(name).type))


@pytest.mark.parametrize("mutate,field,reason", [
    (lambda t: _set_row(t, "click", 150, 2), "click", "label outside"),
    (lambda t: _set_row(t, "ad_id", 150, -4), "ad_id", "negative id"),
    (lambda t: _set_row(t, "beh_image", 150, t["beh_image"][150].as_py()[:-1]), "beh_image",
     "list length differs"),
    (lambda t: _set_row(t, "beh_item", 150, [-1] + t["beh_item"][150].as_py()[1:]), "beh_item",
     "negative id"),
])
def test_malformed_rows_named_or_skipped(tmp_path, tiny_world, mutate, field, reason):
    day, schema = _bad_day(tmp_path, tiny_world, mutate)
    with pytest.raises(MalformedDataError) as err:
        list(DayReader(day, schema, 64))
    msg = str(err.value)
    assert "part-00000.parquet" in msg and "row group 1" in msg and "row 150" in msg
    assert repr(field) in msg and reason in msg
    reader = DayReader(day, schema, 64, on_bad_row="skip")
    rows = sum(b.n for b in reader)
    assert rows == 299
    assert reader.stats["rows_read"] == rows + sum(
        v for k, v in reader.stats.items() if k.startswith("rejected:"))


def test_missing_column_is_named(tmp_path, tiny_world):
    day, schema = _bad_day(tmp_path, tiny_world, lambda t: t.drop(["brand"]))
    with pytest.raises(MalformedDataError, match=r"missing column\(s\) \['brand'\]"):
        list(DayReader(day, schema, 64))


def test_reader_error_propagates_from_prefetch_thread(tmp_path, tiny_world):
    day, schema = _bad_day(tmp_path, tiny_world, lambda t: _set_row(t, "click", 290, 7))
    reader = DayReader(day, schema, 64, prefetch=2)
    got = []
    with pytest.raises(MalformedDataError, match="row 290"):
        for b in reader:
            got.append(b.n)
    assert sum(got) <= 256


def _as_strings(table, name):
    i = table.schema.get_field_index(name)
    col = table.column(name)
    if pa.types.is_list(col.type):
        return table.set_column(i, name, pa.array([[str(v) for v in row] for row in col.to_pylist()]))
    return table.set_column(i, name, pa.array([str(v) for v in col.to_pylist()]))


def test_wrong_column_type_names_file_field_and_type(tmp_path, tiny_world):
    schema = Schema.load(tiny_world)
    day, _ = _bad_day(tmp_path, tiny_world, lambda t: _as_strings(t, schema.ad_image))
    with pytest.raises(MalformedDataError, match=rf"part-00000.parquet: column '{schema.ad_image}' "
                                                 r"has type string, .*needs an integer "
                                                 r"\(string image keys: .*hvams images keys"):
        list(DayReader(day, schema, 64))
    (tmp_path / "b").mkdir()
    day2, _ = _bad_day(tmp_path / "b", tiny_world, lambda t: _as_strings(t, "beh_item"))
    with pytest.raises(MalformedDataError, match=r"column 'beh_item' has type list<\w+: string>"
                                                 r".*needs a list of integers"):
        list(DayReader(day2, schema, 64))


def test_train_on_a_wrong_column_type_gives_one_clear_line(tmp_path, tiny_world):
    """Every worker hits it; the job ends with the message and no traceback."""
    import shutil

    from mpi_harness import run_train

    world = tmp_path / "world"
    shutil.copytree(tiny_world, world, ignore=shutil.ignore_patterns("day=*"))
    schema = Schema.load(tiny_world)
    for d in list_days(tiny_world):
        (world / d.name).mkdir()
        for f in d.glob("*.parquet"):
            pq.write_table(_as_strings(pq.ParquetFile(f).read(), schema.ad_image), world / d.name / f.name)
    res = run_train(3, world, tmp_path / "run", timeout=120, servers=1, model="idonly")
    assert res.returncode != 0 and not res.timed_out
    assert f"column '{schema.ad_image}' has type string" in res.output
    assert "Traceback" not in res.output and "ArrowTypeError" not in res.output, res.output[-3000:]
