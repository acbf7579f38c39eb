"""Preference pairs from safe-rlhf, PKU-SafeRLHF and chosen/rejected records, through the prompt source specs."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenalign.data.pairs import PreferencePair, load_pairs
from tokenalign.data.prompts import DataError, load_prompts

SAFE_RLHF = [
    {
        "input": "How do I bake bread?",
        "answer": "Knead, prove, bake.",
        "other_answer": "Buy some.",
        "better": True,
        "safer": False,
        "is_safe": True,
        "is_other_safe": True,
        "score": 0.3,
    },
    {"input": "Say hi", "answer": "", "revised": "Hello there!"},
]
PKU = [
    {
        "prompt": "How do I pick a lock?",
        "response_0": "Use a tension wrench.",
        "response_1": "I can't help with that.",
        "better_response_id": 1,
        "safer_response_id": 1,
        "is_response_0_safe": False,
        "is_response_1_safe": True,
    },
    {"prompt": "Name a colour.", "response_0": "Blue.", "response_1": "Red.", "better_response_id": 0},
]
CHOSEN_REJECTED = [{"prompt": "Tell a joke.", "chosen": "Why did the chicken...", "rejected": "No.", "id": 7}]


def write(path: Path, records: list[object]) -> Path:
    """`records` as a JSONL file, a JSON list, or Parquet (by suffix); Parquet nulls the fields a row lacks."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    else:
        keys = list(dict.fromkeys(k for r in records for k in r))
        pq.write_table(pa.table({k: [r.get(k) for r in records] for k in keys}), path)
    return path


def location(path: Path, n: int) -> str:
    return {".jsonl": f"{path}:{n}", ".json": f"{path} record {n}", ".parquet": f"{path} row {n}"}[path.suffix]


@pytest.fixture(params=[".jsonl", ".json", ".parquet"])
def suffix(request) -> str:
    return request.param


def test_safe_rlhf_records(tmp_path, suffix):
    path = write(tmp_path / f"safe{suffix}", SAFE_RLHF)
    compared, revision = load_pairs(str(path))
    assert compared == PreferencePair(
        prompt="How do I bake bread?", answer="Knead, prove, bake.", other_answer="Buy some.", better=True,
        safer=False, is_safe=True, is_other_safe=True, revised=None, source=str(path), where=location(path, 1),
    )
    # A revision-only record: no other answer, no labels, and an empty response is still a response.
    assert revision == PreferencePair(
        prompt="Say hi", answer="", other_answer=None, better=None, safer=None, is_safe=None,
        is_other_safe=None, revised="Hello there!", source=str(path), where=location(path, 2),
    )
    assert (compared.chosen, compared.rejected) == ("Knead, prove, bake.", "Buy some.")
    assert (compared.safer_answer, compared.unsafer_answer) == ("Buy some.", "Knead, prove, bake.")


def test_pku_saferlhf_columns_map_to_the_pair(tmp_path, suffix):
    path = write(tmp_path / f"pku{suffix}", PKU)
    lock, colour = load_pairs(str(path))
    assert (lock.prompt, lock.answer, lock.other_answer) == (
        "How do I pick a lock?", "Use a tension wrench.", "I can't help with that."
    )
    # response 1 is better and safer, so answer (response_0) is neither; its safety is response_0's.
    assert (lock.better, lock.safer, lock.is_safe, lock.is_other_safe) == (False, False, False, True)
    assert lock.revised is None
    assert lock.chosen == lock.safer_answer == "I can't help with that."
    assert lock.rejected == lock.unsafer_answer == "Use a tension wrench."
    assert (colour.better, colour.safer, colour.is_safe, colour.is_other_safe) == (True, None, None, None)
    assert colour.where == location(path, 2)


def test_chosen_rejected_records(tmp_path, suffix):
    path = write(tmp_path / f"trl{suffix}", CHOSEN_REJECTED)
    [pair] = load_pairs(str(path))
    assert (pair.prompt, pair.answer, pair.other_answer) == ("Tell a joke.", "Why did the chicken...", "No.")
    assert pair.better is True
    assert (pair.safer, pair.is_safe, pair.is_other_safe, pair.revised) == (None, None, None, None)
    assert (pair.chosen, pair.rejected) == ("Why did the chicken...", "No.")
    wanted = rf"{re.escape(location(path, 1))}: the pair has no 'safer' label .* require=\('other_answer', 'safer'\)"
    with pytest.raises(ValueError, match=wanted):
        _ = pair.safer_answer


def test_unlabelled_pairs_refuse_to_rank(tmp_path):
    _, revision = load_pairs(str(write(tmp_path / "safe.jsonl", SAFE_RLHF)))
    with pytest.raises(ValueError, match=r"safe.jsonl:2: the pair has no 'better' label"):
        _ = revision.chosen


def test_proportions_subsample_like_prompts_deterministically(tmp_path):
    ten = [{"prompt": f"q{i}", "chosen": f"c{i}", "rejected": "r"} for i in range(10)]
    pairs_file = write(tmp_path / "ten.jsonl", ten)
    prompts_file = write(tmp_path / "prompts.jsonl", [{"prompt": f"q{i}"} for i in range(10)])
    for proportion, count in [("0.5", 5), ("3/-1", 3), ("2", 20), ("", 10)]:
        pairs = load_pairs(f"mix:{proportion}:{pairs_file}", seed=3)
        assert len(pairs) == count and {p.source for p in pairs} == {"mix"}
        assert pairs == load_pairs(f"mix:{proportion}:{pairs_file}", seed=3)
        # The very selection load_prompts makes of a file as long, with the same spec and seed.
        prompts = load_prompts(f"mix:{proportion}:{prompts_file}", seed=3)
        assert [p.prompt for p in pairs] == [p.text for p in prompts]
    assert set(Counter(p.prompt for p in load_pairs(f"mix:2:{pairs_file}")).values()) == {2}
    draws = {tuple(p.prompt for p in load_pairs(f"mix:0.5:{pairs_file}", seed=s)) for s in range(6)}
    assert len(draws) > 1


def test_sources_mix_in_spec_order(tmp_path):
    pku = write(tmp_path / "pku.jsonl", PKU)
    trl = write(tmp_path / "trl.parquet", CHOSEN_REJECTED * 4)
    pairs = load_pairs([f"pku:1:{pku}", f"trl:2/-1:{trl}", f"off:0:{tmp_path / 'missing.jsonl'}"], seed=0)
    assert [p.source for p in pairs] == ["pku", "pku", "trl", "trl"]
    assert [p.answer for p in pairs[:2]] == ["Use a tension wrench.", "Blue."]
    with pytest.raises(DataError, match=r"preference source names must be unique, \['pku'\] repeat"):
        load_pairs([f"pku:1:{pku}", f"pku:0.5:{trl}"])
    with pytest.raises(DataError, match=r"the preference sources \['pku'\] select no pairs"):
        load_pairs(f"pku:0:{pku}")


def test_missing_files_and_bad_specs(tmp_path):
    with pytest.raises(DataError, match=r"preference file '.*nope.jsonl' does not exist; .*parquet path$"):
        load_pairs(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match=r"preference file '.*nope.jsonl' does not exist; .* or builtin:demo-prefs"):
        load_pairs(str(tmp_path / "nope.jsonl"), builtins={"demo-prefs": lambda: tmp_path / "never.jsonl"})
    with pytest.raises(DataError, match="unknown builtin preference set 'demo'; known: builtin:demo-prefs"):
        load_pairs("builtin:demo", builtins={"demo-prefs": lambda: tmp_path / "never.jsonl"})
    with pytest.raises(DataError, match="preference source 'x:half:.*': proportion 'half' is not a float"):
        load_pairs(f"x:half:{write(tmp_path / 'p.jsonl', PKU)}")
    csv = tmp_path / "pairs.csv"
    csv.write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match="preference file '.*pairs.csv' has suffix '.csv'"):
        load_pairs(str(csv))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl' holds no pairs"):
        load_pairs(str(empty))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("not parquet")
    with pytest.raises(DataError, match="garbage.parquet: not a readable Parquet file"):
        load_pairs(str(garbage))


def test_malformed_json_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(CHOSEN_REJECTED[0]) + '\n{"prompt": "x", "chosen": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON line"):
        load_pairs(str(bad))
    not_list = tmp_path / "obj.json"
    not_list.write_text(json.dumps(CHOSEN_REJECTED[0]))
    with pytest.raises(DataError, match="holds a JSON dict; a .json preference file must be a list of objects"):
        load_pairs(str(not_list))
    strings = write(tmp_path / "strings.json", [CHOSEN_REJECTED[0], "chosen"])
    with pytest.raises(DataError, match="strings.json record 2: expected a JSON object holding a preference pair"):
        load_pairs(str(strings))


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({**SAFE_RLHF[0], "better": "yes"}, "field 'better' is 'yes', expected true or false"),
        ({**SAFE_RLHF[0], "is_safe": 1}, "field 'is_safe' is 1, expected true or false"),
        ({**PKU[0], "better_response_id": 2}, "field 'better_response_id' is 2, expected 0 or 1"),
        ({**PKU[0], "safer_response_id": True}, "field 'safer_response_id' is True, expected 0 or 1"),
        ({**PKU[0], "is_response_1_safe": "true"}, "field 'is_response_1_safe' is 'true', expected true or false"),
        ({**CHOSEN_REJECTED[0], "prompt": " "}, "field 'prompt' is an empty string, expected a non-empty string"),
        ({**SAFE_RLHF[0], "input": None}, "field 'input' is None, expected a non-empty string"),
        ({**CHOSEN_REJECTED[0], "rejected": 3}, "field 'rejected' is 3, expected a string"),
        ({**SAFE_RLHF[1], "revised": None}, "'other_answer' and 'revised' are both null"),
        ({**SAFE_RLHF[1], "better": True}, r"labels \['better'\] describe 'other_answer', which is absent"),
    ],
)
def test_wrong_types_name_the_field_and_line(tmp_path, record, message):
    path = write(tmp_path / "pairs.jsonl", [CHOSEN_REJECTED[0], record])
    with pytest.raises(DataError, match=rf"pairs.jsonl:2: {message}"):
        load_pairs(str(path))


def test_dialogues_and_unknown_shapes_are_refused(tmp_path):
    dialogue = {**SAFE_RLHF[0], "input": ["Hi", "Hello! How can I help?", "Bake bread"]}
    with pytest.raises(DataError, match="d.jsonl:1: field 'input' is a list, a dialogue; multi-turn dialogues are not"):
        load_pairs(str(write(tmp_path / "d.jsonl", [dialogue])))
    messages = {"prompt": "Hi", "chosen": [{"role": "assistant", "content": "Hello"}], "rejected": "No."}
    with pytest.raises(DataError, match="m.json record 1: field 'chosen' is a list, a dialogue"):
        load_pairs(str(write(tmp_path / "m.json", [messages])))
    partial = {"prompt": "p", "response_0": "a", "answer": "b"}
    with pytest.raises(
        DataError,
        match=r"u.jsonl:1: the record matches no preference format; "
        r"it has fields \['answer', 'prompt', 'response_0'\], "
        r"accepted: safe-rlhf's input, answer and other_answer and/or revised .* or prompt, chosen, rejected",
    ):
        load_pairs(str(write(tmp_path / "u.jsonl", [partial])))


def test_require_names_the_first_pair_lacking_a_label(tmp_path):
    safe = write(tmp_path / "safe.jsonl", SAFE_RLHF)
    with pytest.raises(DataError, match=r"safe.jsonl:2: the pair has no 'other_answer', which this use needs .* PKU"):
        load_pairs(str(safe), require=("other_answer", "better"))
    with pytest.raises(DataError, match=r"safe.jsonl:1: the pair has no 'revised'.* comes from safe-rlhf's revised"):
        load_pairs(str(safe), require=("revised",))
    # Every pair of a file is checked, not only those a proportion happens to select.
    with pytest.raises(DataError, match=r"safe.jsonl:2: the pair has no 'safer'"):
        load_pairs(f"one:1/-1:{safe}", require=("safer",), seed=0)
    trl = write(tmp_path / "trl.jsonl", CHOSEN_REJECTED)
    assert load_pairs(str(trl), require=("other_answer", "better"))
    with pytest.raises(DataError, match=r"trl.jsonl:1: the pair has no 'safer'.* safe-rlhf's safer or PKU-SafeRLHF's"):
        load_pairs(str(trl), require=("other_answer", "safer", "is_safe", "is_other_safe"))
    with pytest.raises(ValueError, match=r"require names unknown labels \['chosen'\]; the labels are \['other_answer'"):
        load_pairs(str(trl), require=("chosen",))


def test_builtins_are_made_on_first_use(tmp_path, monkeypatch):
    made = write(tmp_path / "made.jsonl", SAFE_RLHF)
    calls = []
    builtins = {"demo-prefs": lambda: calls.append(1) or made}
    assert not calls
    assert [p.source for p in load_pairs("builtin:demo-prefs", builtins=builtins)] == ["demo-prefs"] * 2
    assert [p.source for p in load_pairs("one:1/-1:builtin:demo-prefs", builtins=builtins)] == ["one"]
    assert len(calls) == 2
    with pytest.raises(DataError, match="builtin:demo-prefs was to be made at .*absent.jsonl, but its maker left no"):
        load_pairs("builtin:demo-prefs", builtins={"demo-prefs": lambda: tmp_path / "absent.jsonl"})


def test_demo_prefs_resolve_through_demo_preferences(tmp_path, monkeypatch):
    demo = pytest.importorskip("tokenalign.workflows.demo_preferences")
    made = write(tmp_path / "demo.jsonl", SAFE_RLHF)
    # The real maker samples the LM for minutes; what is tested here is that the builtin calls it, lazily.
    monkeypatch.setattr(demo, "ensure_demo_preferences", lambda: made)
    pairs = load_pairs("builtin:demo-prefs", builtins=demo.PAIR_SOURCES)
    assert [(p.source, p.where) for p in pairs] == [("demo-prefs", f"{made}:1"), ("demo-prefs", f"{made}:2")]
