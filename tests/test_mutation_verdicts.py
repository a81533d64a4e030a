"""The verdict record that lets `make mutate` go on across machines
(tests/mutation/verdicts.py): what is saved, and what is written back."""

from __future__ import annotations

import json
from pathlib import Path

from tests.mutation.verdicts import restore, save

MADE_BY = {"mutmut": "3.8.1", "python": "3.11"}
LOGS = "fiboserver/logs.py"
# A .meta as mutmut 3.8 writes it: a verdict (exit code) per mutant, None until tested.
META = {
    "exit_code_by_key": {
        "fiboserver.logs.x_level__mutmut_2": 0,
        "fiboserver.logs.x_level__mutmut_1": 1,
        "fiboserver.logs.x_level__mutmut_3": 37,
        "fiboserver.logs.x_level__mutmut_4": None,
    },
    "hash_by_function_name": {"x_level": "0123456789ab"},
    "type_check_error_by_key": {"fiboserver.logs.x_level__mutmut_3": "error: ..."},
    "durations_by_key": {"fiboserver.logs.x_level__mutmut_1": 0.5},
    "estimated_durations_by_key": {"fiboserver.logs.x_level__mutmut_1": 0.4},
}


def a_run(tmp_path: Path) -> Path:
    mutants = tmp_path / "mutants"
    (mutants / "fiboserver").mkdir(parents=True)
    (mutants / (LOGS + ".meta")).write_text(json.dumps(META))
    return mutants


def test_saved_are_the_decided_verdicts_and_the_hashes(tmp_path: Path) -> None:
    record = tmp_path / "verdicts.json"
    assert save(a_run(tmp_path), record, MADE_BY) == 0
    assert json.loads(record.read_text()) == {
        "producer": MADE_BY,
        "files": {
            LOGS: {
                "hash_by_function_name": {"x_level": "0123456789ab"},
                "exit_code_by_key": {
                    "fiboserver.logs.x_level__mutmut_1": 1,
                    "fiboserver.logs.x_level__mutmut_2": 0,
                    "fiboserver.logs.x_level__mutmut_3": 37,
                },
            }
        },
    }


def test_restored_on_a_new_machine_as_mutmut_reads_them(tmp_path: Path) -> None:
    record = tmp_path / "verdicts.json"
    save(a_run(tmp_path), record, MADE_BY)
    fresh = tmp_path / "elsewhere" / "mutants"
    assert restore(fresh, record, MADE_BY) == 0
    meta = json.loads((fresh / (LOGS + ".meta")).read_text())
    # Every key mutmut's loader pops, and no other (it asserts none is left over).
    assert set(meta) == set(META)
    assert meta["exit_code_by_key"] == {
        "fiboserver.logs.x_level__mutmut_1": 1,
        "fiboserver.logs.x_level__mutmut_2": 0,
        "fiboserver.logs.x_level__mutmut_3": 37,
    }
    assert meta["hash_by_function_name"] == META["hash_by_function_name"]


def test_a_run_under_way_is_not_overwritten(tmp_path: Path) -> None:
    record = tmp_path / "verdicts.json"
    mutants = a_run(tmp_path)
    save(mutants, record, MADE_BY)
    here = mutants / (LOGS + ".meta")
    here.write_text("{}")
    restore(mutants, record, MADE_BY)
    assert here.read_text() == "{}"


def test_a_record_of_another_mutmut_or_python_is_not_restored(tmp_path: Path) -> None:
    record = tmp_path / "verdicts.json"
    save(a_run(tmp_path), record, MADE_BY)
    fresh = tmp_path / "elsewhere"
    restore(fresh, record, {**MADE_BY, "mutmut": "3.9.0"})
    restore(fresh, record, {**MADE_BY, "python": "3.12"})
    assert not fresh.exists()


def test_nothing_to_save_is_said_and_keeps_the_record(tmp_path: Path) -> None:
    record = tmp_path / "verdicts.json"
    record.write_text("kept")
    assert save(tmp_path / "mutants", record, MADE_BY) == 2
    assert record.read_text() == "kept"
