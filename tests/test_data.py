"""Prompt files, safe-rlhf source specs, stable prompt ids, and one clear DataError per bad input."""
from __future__ import annotations

import json
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenalign.data import prompts as data
from tokenalign.data.prompts import DataError, PromptSource, load_prompts, parse_source, prompt_id, read_prompts


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def ten(tmp_path) -> Path:
    return write_jsonl(tmp_path / "ten.jsonl", [{"prompt": f"question {i}"} for i in range(10)])


def test_reads_jsonl_json_lists_and_parquet(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "hi", "other": 1}, {"prompt": "héllo\nthere"}])
    jsonl.write_text(jsonl.read_text() + "\n   \n")
    assert read_prompts(jsonl) == ["hi", "héllo\nthere"]
    mara = tmp_path / "train.json"
    mara.write_text(json.dumps([{"instruction": "How do I bake?", "output": "..."}, {"instruction": "Why?"}]))
    assert read_prompts(mara) == ["How do I bake?", "Why?"]
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"instruction": ["x", "y"], "prompt": ["p1", "p2"]}), parquet)
    assert read_prompts(parquet) == ["p1", "p2"]
    assert read_prompts(parquet, prompt_field="instruction") == ["x", "y"]


def test_prompt_field_prefers_prompt_then_instruction_per_record(tmp_path):
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"instruction": "i", "prompt": "p"}, {"instruction": "only"}])
    assert read_prompts(mixed) == ["p", "only"]
    custom = write_jsonl(tmp_path / "custom.jsonl", [{"question": "q1"}, {"question": "q2"}])
    assert read_prompts(custom, prompt_field="question") == ["q1", "q2"]


def test_prompts_carry_stable_ids_text_and_source(ten):
    prompts = load_prompts(str(ten))
    assert [p.text for p in prompts] == [f"question {i}" for i in range(10)]
    assert {p.source for p in prompts} == {str(ten)}
    assert [p.id for p in prompts] == [prompt_id(f"question {i}") for i in range(10)]
    assert len({p.id for p in prompts}) == 10 and all(0 <= p.id < 2**63 for p in prompts)
    # A fixed value: ids must agree across processes and runs (Python's str hash is salted per process).
    assert prompt_id("question 0") == 4594773267571962213


@pytest.mark.parametrize(
    ("proportion", "expected"),
    [("0.5", 5), ("1/2", 5), ("3/-1", 3), ("25/-1", 25), ("2", 20), ("2.5", 25), ("-1", 10), ("", 10), ("1", 10)],
)
def test_proportions_select_safe_rlhf_counts(ten, proportion, expected):
    prompts = load_prompts(f"mix:{proportion}:{ten}")
    assert len(prompts) == expected
    counts = Counter(p.text for p in prompts)
    assert max(counts.values()) - min(counts.values()) <= 1 and all(p.source == "mix" for p in prompts)


def test_parse_source_forms(ten):
    assert parse_source(str(ten)) == PromptSource(name=str(ten), path=ten)
    assert parse_source(f"a:3/-1:{ten}").proportion == Fraction(3, -1)
    assert parse_source(f"a:0.25:{ten}") == PromptSource(name="a", path=ten, proportion=0.25)


def test_mixtures_are_deterministic_per_seed_and_keep_spec_order(ten, tmp_path):
    other = write_jsonl(tmp_path / "other.jsonl", [{"instruction": f"other {i}"} for i in range(8)])
    specs = [f"first:0.5:{ten}", f"second:3/-1:{other}", f"skipped:0:{tmp_path / 'missing.jsonl'}"]
    a, b = load_prompts(specs, seed=1), load_prompts(specs, seed=1)
    assert a == b
    assert [p.source for p in a] == ["first"] * 5 + ["second"] * 3
    assert len({p.text for p in a}) == 8
    draws = {tuple(p.text for p in load_prompts(specs, seed=s)) for s in range(6)}
    assert len(draws) > 1


def test_builtin_sources_resolve_to_the_shipped_files(tmp_path, monkeypatch):
    shipped = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "demo one"}, {"prompt": "demo two"}])
    monkeypatch.setitem(data.BUILTIN_SOURCES, "demo-train", shipped)
    assert [p.text for p in load_prompts("builtin:demo-train")] == ["demo one", "demo two"]
    assert [p.source for p in load_prompts("half:1/-1:builtin:demo-train", seed=0)] == ["half"]
    monkeypatch.setitem(data.BUILTIN_SOURCES, "demo-test", tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match="builtin:demo-test should be shipped at .* reinstall"):
        load_prompts("builtin:demo-test")
    with pytest.raises(DataError, match="unknown builtin prompt set 'demo'; known: builtin:demo-train, builtin:demo-test"):
        parse_source("builtin:demo")


@pytest.mark.skipif(not data.BUILTIN_SOURCES["demo-train"].is_file(), reason="demo prompts not shipped yet")
def test_shipped_demo_prompts_load():
    assert load_prompts(["builtin:demo-train", "builtin:demo-test"])


def test_missing_files_and_bad_specs(tmp_path, ten):
    with pytest.raises(DataError, match="prompt file '.*nope.jsonl' does not exist"):
        load_prompts(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(f"x:1:{tmp_path / 'nope.jsonl'}")
    with pytest.raises(DataError, match="neither a file, builtin:NAME, nor name:proportion:path"):
        load_prompts("x:0.5")
    with pytest.raises(DataError, match="proportion 'half' is not a float"):
        load_prompts(f"x:half:{ten}")
    with pytest.raises(DataError, match="must be a finite non-negative"):
        load_prompts(f"x:-0.5:{ten}")
    with pytest.raises(DataError, match=r"\['x'\] repeat"):
        load_prompts([f"x:1:{ten}", f"x:0.5:{ten}"])
    with pytest.raises(DataError, match="select no prompts"):
        load_prompts(f"x:0:{ten}")
    csv = tmp_path / "p.csv"
    csv.write_text("prompt\nhi\n")
    with pytest.raises(DataError, match="suffix '.csv'; use one of .json, .jsonl, .parquet"):
        load_prompts(str(csv))


def test_malformed_records_name_file_and_line(tmp_path):
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"prompt": "ok"}\n\n{"prompt": "broken"\n')
    with pytest.raises(DataError, match=r"bad.jsonl:3: malformed JSON line"):
        read_prompts(bad_line)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[\n  {"prompt": "a"},\n  {"prompt": }\n]')
    with pytest.raises(DataError, match=r"bad.json:3: malformed JSON .* must be named .jsonl"):
        read_prompts(bad_json)
    not_list = tmp_path / "obj.json"
    not_list.write_text('{"prompt": "a"}')
    with pytest.raises(DataError, match="holds a JSON dict; a .json prompt file must be a list of objects"):
        read_prompts(not_list)
    no_field = write_jsonl(tmp_path / "nofield.jsonl", [{"prompt": "a"}, {"question": "b", "answer": "c"}])
    with pytest.raises(DataError, match=r"nofield.jsonl:2: no 'prompt' or 'instruction' field; .* \['answer', 'question'\]"):
        read_prompts(no_field)
    with pytest.raises(DataError, match=r"nofield.jsonl:1: no field 'query'; the record has fields \['prompt'\]"):
        read_prompts(no_field, prompt_field="query")
    strings = tmp_path / "strings.json"
    strings.write_text('[{"prompt": "a"}, "b"]')
    with pytest.raises(DataError, match="strings.json record 2: expected a JSON object"):
        read_prompts(strings)


def test_empty_or_non_text_prompts_are_errors_not_skips(tmp_path):
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"prompt": "a"}, {"prompt": "  "}])
    with pytest.raises(DataError, match="blank.jsonl:2: field 'prompt' is an empty string"):
        read_prompts(blank)
    number = write_jsonl(tmp_path / "number.jsonl", [{"instruction": 3}])
    with pytest.raises(DataError, match="number.jsonl:1: field 'instruction' is 3, expected a non-empty string"):
        read_prompts(number)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="holds no prompts"):
        read_prompts(empty)
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"prompt": ["a", None]}), nulls)
    with pytest.raises(DataError, match="nulls.parquet row 2: field 'prompt' is None"):
        read_prompts(nulls)
    other_columns = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"text": ["a"]}), other_columns)
    with pytest.raises(DataError, match=r"no column 'prompt' or 'instruction'; the file has columns \['text'\]"):
        read_prompts(other_columns)
    with pytest.raises(DataError, match=r"no column 'query'"):
        read_prompts(other_columns, prompt_field="query")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_prompts(garbage)
