"""Demo data: raw hospital exports with (fake) personal data on real clinical features.

The clinical part is scikit-learn's breast cancer data (569 patients, 30 features from
digitized biopsy images, label ``diagnosis`` = ``malignant`` / ``benign``), shuffled
and split among the sites. Each row gets a fake patient (Faker, seeded, offline): a
record number, name, national id, birth date and age, sex, phone, email, address,
postcode, admission and discharge dates and a free-text note that names the patient.
The matching schema contract drops or pseudonymizes all of that and keeps age bands and
sex as k-anonymous quasi-identifiers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from faker import Faker

from fedvault.client.data.schema import (
    Column,
    ColumnType,
    Freshness,
    Generalization,
    Method,
    Role,
    Rule,
    Schema,
)
from fedvault.client.data.schema_writer import schema_to_toml
from fedvault.common.data import default_dataset
from fedvault.common.errors import ConfigError

DEMO_TARGET = "diagnosis"
HOSPITALS = (
    "St. Mary General",
    "Riverside University Hospital",
    "Northfield Clinic",
    "Lakeside Medical Centre",
    "Hillcrest Hospital",
)
_COMPLAINTS = (
    "a palpable lump",
    "breast pain",
    "an abnormal screening mammogram",
    "nipple discharge",
    "skin dimpling",
)


@dataclass(frozen=True)
class DemoFiles:
    schema: Path
    sites: tuple[Path, ...]


def write_demo(
    out: Path, *, sites: int = 3, seed: int = 0, today: date | None = None
) -> DemoFiles:
    """Write ``site-1.csv`` ... ``site-N.csv`` and ``schema.toml`` into ``out``."""
    if not 1 <= sites <= 50:
        raise ConfigError(f"sites: must be between 1 and 50, got {sites}")
    today = today or date.today()
    clinical = _clinical()
    paths = [out / f"site-{i + 1}.csv" for i in range(sites)]
    schema_path = out / "schema.toml"
    taken = [p for p in (*paths, schema_path) if p.exists()]
    if taken:
        raise ConfigError(f"{taken[0]}: already exists; choose an empty --out folder")
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(clinical))
    for i, (path, rows) in enumerate(
        zip(paths, np.array_split(order, sites), strict=True)
    ):
        part = clinical.iloc[np.sort(rows)].reset_index(drop=True)
        frame = _people(part, site=i, seed=seed, today=today)
        frame.to_csv(path, index=False)
    schema = demo_schema(list(clinical.columns[:-1]))
    schema_path.write_text(
        schema_to_toml(
            schema,
            header=(
                "Schema contract for the fedvault demo hospital exports.",
                "Identifiers are dropped or pseudonymized; age and sex are generalized",
                "quasi-identifiers; the 30 clinical features and the label are kept.",
            ),
        ),
        encoding="utf-8",
    )
    return DemoFiles(schema=schema_path, sites=tuple(paths))


def demo_schema(features: list[str]) -> Schema:
    """The schema contract of the demo exports."""
    people = _people_columns()
    # The published ranges of the public dataset the features come from (as
    # scikit-learn documents them): declared, a site clips its summary release to
    # them instead of a wide asinh range (docs/privacy.md).
    public = default_dataset()
    public.columns = [str(c).replace(" ", "_") for c in public.columns]
    clinical = [
        Column(
            name=name,
            type=ColumnType.FLOAT,
            role=Role.FEATURE,
            min=float(public[name].min()) if name in public else 0.0,
            max=float(public[name].max()) if name in public else None,
        )
        for name in features
    ]
    label = Column(
        name=DEMO_TARGET,
        type=ColumnType.CATEGORY,
        role=Role.TARGET,
        required=True,
        categories=("malignant", "benign"),
    )
    return Schema(
        name="breast-cancer-demo",
        columns=(*people, *clinical, label),
        k=5,
        max_suppressed_share=0.1,
        rules=(Rule("discharge_date", ">=", "admission_date"),),
        freshness=Freshness(column="admission_date", max_age_days=3 * 365),
    )


def _people_columns() -> list[Column]:
    """The personal columns of the demo exports and what the contract does with them."""
    return [
        Column(
            name="patient_id",
            type=ColumnType.ID,
            role=Role.IDENTIFIER,
            required=True,
            pseudonymize=True,
        ),
        Column(name="name", type=ColumnType.TEXT, role=Role.IDENTIFIER, required=True),
        Column(
            name="national_id",
            type=ColumnType.ID,
            role=Role.IDENTIFIER,
            pattern=r"\d{3}-\d{2}-\d{4}",
        ),
        Column(name="birth_date", type=ColumnType.DATE, role=Role.IDENTIFIER),
        Column(
            name="age",
            type=ColumnType.INT,
            role=Role.QUASI_IDENTIFIER,
            required=True,
            min=18,
            max=110,
            generalize=Generalization(method=Method.BAND, width=20),
        ),
        Column(
            name="sex",
            type=ColumnType.CATEGORY,
            role=Role.QUASI_IDENTIFIER,
            required=True,
            categories=("F", "M"),
        ),
        Column(name="phone", type=ColumnType.ID, role=Role.IDENTIFIER),
        Column(name="email", type=ColumnType.ID, role=Role.IDENTIFIER),
        Column(name="address", type=ColumnType.TEXT, role=Role.IDENTIFIER),
        Column(name="postcode", type=ColumnType.ID, role=Role.DROP),
        Column(name="hospital", type=ColumnType.CATEGORY, role=Role.SITE),
        Column(
            name="admission_date", type=ColumnType.DATE, role=Role.DROP, required=True
        ),
        Column(name="discharge_date", type=ColumnType.DATE, role=Role.DROP),
        Column(name="notes", type=ColumnType.TEXT, role=Role.DROP),
    ]


def _clinical() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame: pd.DataFrame = bunch.frame
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    labels = np.where(frame.pop("target").to_numpy() == 0, "malignant", "benign")
    frame[DEMO_TARGET] = labels
    return frame


def _people(part: pd.DataFrame, *, site: int, seed: int, today: date) -> pd.DataFrame:
    fake = Faker("en_US")
    fake.seed_instance(seed * 1000 + site)
    rng = np.random.default_rng([seed, site])
    n = len(part)
    ages = np.clip(rng.normal(58, 12, n).round(), 25, 90).astype(int)
    rows = []
    for i in range(n):
        born = today - timedelta(days=int(ages[i]) * 365 + int(rng.integers(30, 330)))
        stale = rng.random() < 0.04
        admitted = today - timedelta(
            days=int(rng.integers(1200, 2500) if stale else rng.integers(1, 1000))
        )
        first, last = fake.first_name_female(), fake.last_name()
        rows.append(
            {
                "patient_id": f"MRN{site + 1}{i + 1:06d}",
                "name": f"{first} {last}",
                "national_id": fake.ssn(),
                "birth_date": born.isoformat(),
                "age": _age(born, today),
                "sex": "M" if rng.random() < 0.01 else "F",
                "phone": "" if rng.random() < 0.04 else fake.phone_number(),
                "email": "" if rng.random() < 0.06 else fake.email(),
                "address": fake.address().replace("\n", ", "),
                "postcode": fake.zipcode(),
                "hospital": HOSPITALS[site % len(HOSPITALS)],
                "admission_date": admitted.isoformat(),
                "discharge_date": (
                    admitted + timedelta(days=int(rng.integers(0, 15)))
                ).isoformat(),
                "notes": f"{first} {last} presented with "
                f"{_COMPLAINTS[int(rng.integers(len(_COMPLAINTS)))]}. "
                f"{fake.sentence(nb_words=8)}",
            }
        )
    return pd.concat([pd.DataFrame(rows), part], axis=1)


def _age(born: date, today: date) -> int:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))
