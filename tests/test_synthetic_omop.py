"""The synthetic OMOP generator: determinism, shape, integrity and the intended epidemiology."""

from __future__ import annotations

import csv
import hashlib
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import pytest

from fivesafes_tes.synthetic import COLUMNS, PROFILES, TreProfile, generate, load_info, verify_dataset
from fivesafes_tes.synthetic.omop import CANCER_CONCEPTS, HBA1C, METFORMIN, T2DM

TABLE_FILES = ("person.csv", "condition_occurrence.csv", "measurement.csv", "drug_exposure.csv")
ALL_FILES = (*TABLE_FILES, "dataset.json")

# The OMOP CDM v5.4 names the brief asks for, at least; each table's full list is checked below.
REQUIRED_COLUMNS = {
    "person": {
        "person_id", "gender_concept_id", "year_of_birth", "month_of_birth", "day_of_birth",
        "birth_datetime", "race_concept_id", "ethnicity_concept_id", "location_id",
    },
    "condition_occurrence": {
        "condition_occurrence_id", "person_id", "condition_concept_id", "condition_start_date",
        "condition_type_concept_id",
    },
    "measurement": {
        "measurement_id", "person_id", "measurement_concept_id", "measurement_date", "value_as_number",
        "unit_concept_id",
    },
    "drug_exposure": {
        "drug_exposure_id", "person_id", "drug_concept_id", "drug_exposure_start_date", "days_supply",
    },
}  # fmt: skip


def read(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@dataclass
class Stats:
    persons: int
    mean_age: float
    diabetes: float
    cancer: float
    hba1c_diabetic: float
    hba1c_other: float
    metformin_users: set[str]
    diabetics: set[str]


def stats(out: Path, profile: TreProfile) -> Stats:
    persons = read(out / "person.csv")
    year = int(profile.extract_date[:4])
    conditions = read(out / "condition_occurrence.csv")
    diabetics = {r["person_id"] for r in conditions if int(r["condition_concept_id"]) == T2DM}
    cancer = {r["person_id"] for r in conditions if int(r["condition_concept_id"]) in CANCER_CONCEPTS}
    hba1c = [r for r in read(out / "measurement.csv") if int(r["measurement_concept_id"]) == HBA1C]
    drugs = read(out / "drug_exposure.csv")
    return Stats(
        persons=len(persons),
        mean_age=statistics.fmean(year - int(p["year_of_birth"]) for p in persons),
        diabetes=len(diabetics) / len(persons),
        cancer=len(cancer) / len(persons),
        hba1c_diabetic=statistics.fmean(
            float(r["value_as_number"]) for r in hba1c if r["person_id"] in diabetics
        ),
        hba1c_other=statistics.fmean(
            float(r["value_as_number"]) for r in hba1c if r["person_id"] not in diabetics
        ),
        metformin_users={r["person_id"] for r in drugs if int(r["drug_concept_id"]) == METFORMIN},
        diabetics=diabetics,
    )


@pytest.fixture(scope="module")
def default_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each TRE's dataset at its default size and seed 0."""
    out = {}
    for name, profile in PROFILES.items():
        out[name] = tmp_path_factory.mktemp(name)
        generate(out[name], profile, seed=0)  # completes; the dev stack relies on this being quick
    return out


@pytest.fixture(scope="module")
def large_stats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stats]:
    """Each TRE at 10,000 persons, for comparisons between TREs that must not hinge on sampling luck."""
    result = {}
    for name, profile in PROFILES.items():
        out = tmp_path_factory.mktemp(f"{name}-large")
        generate(out, profile, seed=7, n_persons=10_000)
        result[name] = stats(out, profile)
    return result


# --- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tre", sorted(PROFILES))
def test_same_seed_gives_byte_identical_files(
    tmp_path: Path, default_sets: dict[str, Path], tre: str
) -> None:
    generate(tmp_path, PROFILES[tre], seed=0)
    for name in ALL_FILES:
        assert (tmp_path / name).read_bytes() == (default_sets[tre] / name).read_bytes(), name


def test_regenerating_in_place_is_identical_and_leaves_no_temporaries(tmp_path: Path) -> None:
    generate(tmp_path, "uk-tre", seed=3, n_persons=300)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    generate(tmp_path, "uk-tre", seed=3, n_persons=300)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert before == after
    assert sorted(after) == sorted(ALL_FILES)


def test_different_seeds_differ(tmp_path: Path, default_sets: dict[str, Path]) -> None:
    generate(tmp_path, PROFILES["uk-tre"], seed=1)
    for name in ALL_FILES:
        assert (tmp_path / name).read_bytes() != (default_sets["uk-tre"] / name).read_bytes(), name


def test_different_tres_differ_and_never_share_person_ids(default_sets: dict[str, Path]) -> None:
    uk, sg = default_sets["uk-tre"], default_sets["sg-tre"]
    for name in ALL_FILES:
        assert (uk / name).read_bytes() != (sg / name).read_bytes(), name
    uk_ids = {r["person_id"] for r in read(uk / "person.csv")}
    sg_ids = {r["person_id"] for r in read(sg / "person.csv")}
    assert not uk_ids & sg_ids


# --- shape ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tre", sorted(PROFILES))
def test_files_are_utf8_csv_with_omop_column_names(default_sets: dict[str, Path], tre: str) -> None:
    out = default_sets[tre]
    assert sorted(p.name for p in out.iterdir()) == sorted(ALL_FILES)
    for table, required in REQUIRED_COLUMNS.items():
        raw = (out / f"{table}.csv").read_bytes()
        raw.decode("utf-8")
        assert b"\r" not in raw
        assert raw.endswith(b"\n")
        header = raw.split(b"\n", 1)[0].decode().split(",")
        assert header == list(COLUMNS[table])
        assert required <= set(header)
        assert all(c == c.lower() and " " not in c for c in header)
        rows = read(out / f"{table}.csv")
        assert rows, table
        assert all(len(r) == len(header) and None not in r for r in rows)


def test_column_lists_are_omop_v54() -> None:
    # Spot checks against the CDM v5.4 DDL: first columns, v5.4-only columns, table sizes.
    assert COLUMNS["person"][:2] == ("person_id", "gender_concept_id")
    assert len(COLUMNS["person"]) == 18
    assert COLUMNS["condition_occurrence"][0] == "condition_occurrence_id"
    assert "condition_status_concept_id" in COLUMNS["condition_occurrence"]
    assert len(COLUMNS["condition_occurrence"]) == 16
    assert {"measurement_event_id", "meas_event_field_concept_id", "unit_source_concept_id"} <= set(
        COLUMNS["measurement"]
    )
    assert len(COLUMNS["measurement"]) == 23
    assert len(COLUMNS["drug_exposure"]) == 23


@pytest.mark.parametrize("tre", sorted(PROFILES))
def test_ids_are_integers_unique_and_values_parse(default_sets: dict[str, Path], tre: str) -> None:
    out = default_sets[tre]
    persons = read(out / "person.csv")
    assert len(persons) == PROFILES[tre].n_persons
    for table, key in [
        ("person", "person_id"),
        ("condition_occurrence", "condition_occurrence_id"),
        ("measurement", "measurement_id"),
        ("drug_exposure", "drug_exposure_id"),
    ]:
        ids = [int(r[key]) for r in read(out / f"{table}.csv")]
        assert len(ids) == len(set(ids)), table
    for p in persons:
        assert int(p["gender_concept_id"]) in (8507, 8532)
        assert p["birth_datetime"].startswith(
            f"{int(p['year_of_birth']):04d}-{int(p['month_of_birth']):02d}-"
        )
        assert p["person_source_value"] == ""  # nothing that could identify anyone
    for r in read(out / "drug_exposure.csv"):
        assert int(r["days_supply"]) > 0
        assert r["drug_exposure_start_date"] <= r["drug_exposure_end_date"] <= PROFILES[tre].extract_date


@pytest.mark.parametrize("tre", sorted(PROFILES))
def test_no_direct_identifiers(default_sets: dict[str, Path], tre: str) -> None:
    text = "\n".join((default_sets[tre] / f).read_text(encoding="utf-8") for f in TABLE_FILES)
    assert "@" not in text
    for column in ("name", "email", "nhs", "nric", "address", "postcode", "phone"):
        assert not any(column in c for cols in COLUMNS.values() for c in cols)


# --- integrity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("tre", sorted(PROFILES))
def test_referential_integrity(default_sets: dict[str, Path], tre: str) -> None:
    out = default_sets[tre]
    persons = {r["person_id"]: r for r in read(out / "person.csv")}
    for table, date_col in [
        ("condition_occurrence", "condition_start_date"),
        ("measurement", "measurement_date"),
        ("drug_exposure", "drug_exposure_start_date"),
    ]:
        for r in read(out / f"{table}.csv"):
            person = persons.get(r["person_id"])
            assert person is not None, (table, r["person_id"])
            assert person["birth_datetime"][:10] < r[date_col] <= PROFILES[tre].extract_date, (table, r)


# --- dataset.json --------------------------------------------------------------------------------


@pytest.mark.parametrize("tre", sorted(PROFILES))
def test_dataset_json_describes_the_files(default_sets: dict[str, Path], tre: str) -> None:
    out = default_sets[tre]
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta == load_info(out)
    assert meta["name"] == f"synthetic-omop-{tre}"
    assert meta["seed"] == 0
    assert meta["synthetic"] is True
    assert "SYNTHETIC" in meta["notice"]
    assert "NOT REAL PATIENTS" in meta["notice"]
    assert meta["profile"]["name"] == tre
    assert meta["cdm"]["version"] == "5.4"
    assert set(meta["tables"]) == set(REQUIRED_COLUMNS)
    for table, entry in meta["tables"].items():
        path = out / entry["file"]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["rows"] == len(read(path))
        assert entry["columns"] == list(COLUMNS[table])
    assert verify_dataset(out) == []


def test_verify_dataset_notices_tampering(tmp_path: Path) -> None:
    generate(tmp_path, "sg-tre", seed=0, n_persons=50)
    with open(tmp_path / "measurement.csv", "a", encoding="utf-8") as fh:
        fh.write("999999,20000001,3004410,2020-01-01,,,32817,,5.0,,8554,,,,,,,,,,,,\n")
    (tmp_path / "drug_exposure.csv").unlink()
    problems = verify_dataset(tmp_path)
    assert any("measurement" in p and "sha256" in p for p in problems)
    assert any("measurement" in p and "rows" in p for p in problems)
    assert any("drug_exposure" in p and "missing" in p for p in problems)


def test_generate_result_matches_manifest(tmp_path: Path) -> None:
    info = generate(tmp_path, PROFILES["uk-tre"], seed=5, n_persons=100)
    assert info.n_persons == 100
    assert info.seed == 5
    assert info.profile.n_persons == 100
    assert info.manifest == tmp_path / "dataset.json"
    assert info.to_json() == load_info(tmp_path)
    assert info.tables["person"].rows == 100
    assert info.path("person") == tmp_path / "person.csv"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown TRE profile"):
        generate(tmp_path, "xx-tre", seed=0)
    with pytest.raises(ValueError, match="n_persons must be in"):
        generate(tmp_path, "uk-tre", seed=0, n_persons=-1)


def test_empty_dataset(tmp_path: Path) -> None:
    info = generate(tmp_path, "uk-tre", seed=0, n_persons=0)
    assert all(t.rows == 0 for t in info.tables.values())
    assert verify_dataset(tmp_path) == []


# --- epidemiology --------------------------------------------------------------------------------


@pytest.mark.parametrize("tre", sorted(PROFILES))
def test_prevalence_matches_profile_at_default_size(default_sets: dict[str, Path], tre: str) -> None:
    profile = PROFILES[tre]
    s = stats(default_sets[tre], profile)
    assert s.diabetes == pytest.approx(profile.diabetes_prevalence, abs=0.025)
    assert s.cancer == pytest.approx(profile.cancer_prevalence, abs=0.02)


@pytest.mark.parametrize("tre", sorted(PROFILES))
def test_prevalence_matches_profile_at_10k(large_stats: dict[str, Stats], tre: str) -> None:
    profile = PROFILES[tre]
    assert large_stats[tre].diabetes == pytest.approx(profile.diabetes_prevalence, abs=0.012)
    assert large_stats[tre].cancer == pytest.approx(profile.cancer_prevalence, abs=0.01)


def test_tres_differ_in_the_intended_direction(large_stats: dict[str, Stats]) -> None:
    uk, sg = large_stats["uk-tre"], large_stats["sg-tre"]
    assert uk.mean_age > sg.mean_age + 2  # the UK population is older
    assert uk.cancer > sg.cancer + 0.015  # ... with more cancer
    assert sg.diabetes > uk.diabetes + 0.04  # Singapore has more diabetes
    # And the profiles say so too, so the tests above are testing the intended direction.
    assert PROFILES["uk-tre"].cancer_prevalence > PROFILES["sg-tre"].cancer_prevalence
    assert PROFILES["sg-tre"].diabetes_prevalence > PROFILES["uk-tre"].diabetes_prevalence


@pytest.mark.parametrize("tre", sorted(PROFILES))
def test_hba1c_higher_among_diabetics(default_sets: dict[str, Path], tre: str) -> None:
    s = stats(default_sets[tre], PROFILES[tre])
    assert s.hba1c_diabetic > s.hba1c_other + 1.0
    assert 6.5 <= s.hba1c_diabetic <= 9.5
    assert 4.8 <= s.hba1c_other <= 6.0


@pytest.mark.parametrize("tre", sorted(PROFILES))
def test_metformin_mostly_among_diabetics(large_stats: dict[str, Stats], tre: str) -> None:
    s = large_stats[tre]
    assert s.metformin_users
    among_diabetics = len(s.metformin_users & s.diabetics) / len(s.metformin_users)
    assert among_diabetics > 0.85
    assert len(s.metformin_users & s.diabetics) / len(s.diabetics) > 0.5


def test_diabetes_rises_with_age(tmp_path: Path) -> None:
    profile = PROFILES["uk-tre"]
    generate(tmp_path, profile, seed=11, n_persons=5000)
    year = int(profile.extract_date[:4])
    age = {r["person_id"]: year - int(r["year_of_birth"]) for r in read(tmp_path / "person.csv")}
    conditions = read(tmp_path / "condition_occurrence.csv")
    diabetic = {r["person_id"] for r in conditions if int(r["condition_concept_id"]) == T2DM}
    older = [p for p, a in age.items() if a >= 60]
    younger = [p for p, a in age.items() if a < 45]

    def prevalence(group: list[str]) -> float:
        return sum(p in diabetic for p in group) / len(group)

    assert prevalence(older) > 2 * prevalence(younger)


def test_breast_and_prostate_cancer_match_sex(default_sets: dict[str, Path]) -> None:
    for out in default_sets.values():
        sex = {r["person_id"]: int(r["gender_concept_id"]) for r in read(out / "person.csv")}
        for r in read(out / "condition_occurrence.csv"):
            if int(r["condition_concept_id"]) == 4112853:
                assert sex[r["person_id"]] == 8532
            if int(r["condition_concept_id"]) == 200962:
                assert sex[r["person_id"]] == 8507
