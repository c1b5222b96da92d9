"""The steps of the example workflows, over a TRE's synthetic OMOP CDM extract (standard library only).

    omop_analysis.py cohort OMOP_DIR cohort.csv          one row per person: an intermediate that
                                                         must never leave the TRE
    omop_analysis.py counts cohort.csv counts.csv        people by sex and age band, with each
                                                         condition; counts under --min-cell shown "<N"
    omop_analysis.py regression cohort.csv model.csv     mean HbA1c on age, sex and type 2 diabetes,
                                                         by ordinary least squares

Both the CWL and the Snakemake workflow run these same steps; each TRE runs them on its own data.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path

EXTRACT_YEAR = 2024  # the synthetic extracts end on 2024-12-31
MALE = "8507"
HBA1C = "3004410"
CONDITIONS = {
    "diabetes": {"201826"},
    "hypertension": {"320128"},
    "cancer": {"4112853", "200962", "443388", "4180790"},
}
AGE_BANDS = ((18, 44, "18-44"), (45, 64, "45-64"), (65, 200, "65+"))


def cohort(omop: Path, out: Path) -> None:
    """Each person's sex, age, age band, conditions (0/1) and mean HbA1c (empty if never measured)."""
    has: dict[str, set[str]] = defaultdict(set)
    with (omop / "condition_occurrence.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            for name, concepts in CONDITIONS.items():
                if row["condition_concept_id"] in concepts:
                    has[row["person_id"]].add(name)
    hba1c: dict[str, list[float]] = defaultdict(list)
    with (omop / "measurement.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row["measurement_concept_id"] == HBA1C and row["value_as_number"]:
                hba1c[row["person_id"]].append(float(row["value_as_number"]))
    with (omop / "person.csv").open(newline="") as f, out.open("w", newline="") as o:
        writer = csv.writer(o, lineterminator="\n")
        writer.writerow(["person_id", "sex", "age", "age_band", *CONDITIONS, "hba1c"])
        for row in csv.DictReader(f):
            person, age = row["person_id"], EXTRACT_YEAR - int(row["year_of_birth"])
            band = next(label for lo, hi, label in AGE_BANDS if lo <= age <= hi)
            values = hba1c.get(person)
            writer.writerow(
                [
                    person,
                    "male" if row["gender_concept_id"] == MALE else "female",
                    age,
                    band,
                    *(int(name in has[person]) for name in CONDITIONS),
                    f"{sum(values) / len(values):.2f}" if values else "",
                ]
            )


def counts(cohort_csv: Path, out: Path, min_cell: int) -> None:
    """People per sex and age band and how many of them have each condition; small counts suppressed."""
    cells: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * (1 + len(CONDITIONS)))
    with cohort_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            cell = cells[(row["sex"], row["age_band"])]
            cell[0] += 1
            for i, name in enumerate(CONDITIONS, start=1):
                cell[i] += int(row[name])
    with out.open("w", newline="") as o:
        writer = csv.writer(o, lineterminator="\n")
        writer.writerow(["sex", "age_band", "persons", *CONDITIONS])
        for (sex, band), values in sorted(cells.items()):
            writer.writerow([sex, band, *(v if v == 0 or v >= min_cell else f"<{min_cell}" for v in values)])


def regression(cohort_csv: Path, out: Path) -> None:
    """hba1c = b0 + b1 * (age / 10) + b2 * male + b3 * diabetes, fitted by least squares."""
    terms = ["intercept", "age_per_decade", "male", "diabetes"]
    xs, ys = [], []
    with cohort_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["hba1c"]:
                xs.append([1.0, int(row["age"]) / 10, float(row["sex"] == "male"), float(row["diabetes"])])
                ys.append(float(row["hba1c"]))
    n, k = len(ys), len(terms)
    if n <= k:
        raise SystemExit(f"regression: {n} people with an HbA1c is too few for {k} terms")
    xtx = [[sum(x[i] * x[j] for x in xs) for j in range(k)] for i in range(k)]
    xty = [sum(x[i] * y for x, y in zip(xs, ys, strict=True)) for i in range(k)]
    inverse = _invert(xtx)
    beta = [sum(inverse[i][j] * xty[j] for j in range(k)) for i in range(k)]
    residual = sum(
        (y - sum(b * v for b, v in zip(beta, x, strict=True))) ** 2 for x, y in zip(xs, ys, strict=True)
    )
    sigma2 = residual / (n - k)
    with out.open("w", newline="") as o:
        writer = csv.writer(o, lineterminator="\n")
        writer.writerow(["term", "estimate", "std_error", "n"])
        for i, term in enumerate(terms):
            writer.writerow([term, f"{beta[i]:.4f}", f"{math.sqrt(sigma2 * inverse[i][i]):.4f}", n])


def _invert(matrix: list[list[float]]) -> list[list[float]]:
    """Gauss-Jordan inverse with partial pivoting (the design matrix is small and well conditioned)."""
    k = len(matrix)
    a = [row[:] + [float(i == j) for j in range(k)] for i, row in enumerate(matrix)]
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-12:
            raise SystemExit("regression: the terms are collinear in this TRE's data")
        a[col], a[pivot] = a[pivot], a[col]
        scale = a[col][col]
        a[col] = [v / scale for v in a[col]]
        for r in range(k):
            if r != col and a[r][col]:
                factor = a[r][col]
                a[r] = [v - factor * p for v, p in zip(a[r], a[col], strict=True)]
    return [row[k:] for row in a]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    step = steps.add_parser("cohort")
    step.add_argument("omop", type=Path)
    step.add_argument("out", type=Path)
    step = steps.add_parser("counts")
    step.add_argument("cohort", type=Path)
    step.add_argument("out", type=Path)
    step.add_argument("--min-cell", type=int, default=10)
    step = steps.add_parser("regression")
    step.add_argument("cohort", type=Path)
    step.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.step == "cohort":
        cohort(args.omop, args.out)
    elif args.step == "counts":
        counts(args.cohort, args.out, args.min_cell)
    else:
        regression(args.cohort, args.out)


if __name__ == "__main__":
    main()
