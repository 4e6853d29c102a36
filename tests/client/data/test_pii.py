"""The personal-data pattern set: positives, negatives, Faker coverage."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import pytest
from faker import Faker

from fedvault.client.data.pii import (
    PiiKind,
    detect,
    kinds_of_name,
    kinds_of_value,
    looks_like_birth_dates,
)

POSITIVE = [
    ("jane.doe+ward3@hospital.example.org", PiiKind.EMAIL),
    ("(555) 123-4567", PiiKind.PHONE),
    ("+1-202-555-0147x123", PiiKind.PHONE),
    ("+44 20 7946 0958", PiiKind.PHONE),
    ("020 7946 0018".replace(" ", ""), PiiKind.PHONE),
    ("123-45-6789", PiiKind.NATIONAL_ID),
    ("QQ 12 34 56 C", PiiKind.NATIONAL_ID),
    ("4111 1111 1111 1111", PiiKind.PAYMENT_CARD),
    ("GB82 WEST 1234 5698 7654 32", PiiKind.IBAN),
    ("DE89370400440532013000", PiiKind.IBAN),
    ("192.168.10.254", PiiKind.IP_ADDRESS),
    ("742 Evergreen Terrace", PiiKind.STREET_ADDRESS),
    ("12 Baker Street, London", PiiKind.STREET_ADDRESS),
    ("Apt. 5, Springfield, IL 62704", PiiKind.STREET_ADDRESS),
    ("Dr. Jane Doe-Smith", PiiKind.PERSON_NAME),
    ("Doe, Jane", PiiKind.PERSON_NAME),
    ("SW1A 1AA", PiiKind.POSTCODE),
    ("123e4567-e89b-12d3-a456-426614174000", PiiKind.RECORD_ID),
]
NEGATIVE = [
    "malignant",
    "12.5",
    "2024-01-03",
    "F",
    "40-59",
    "[40, 50)",
    "0.0012",
    "ICD-10 C50.9",
    "4111 1111 1111 1112",
    "GB82 WEST 1234 5698 7654 33",
    "999.1.1.1",
    "1234567890",
    "yes",
]


@pytest.mark.parametrize(("value", "kind"), POSITIVE)
def test_positive_values(value: str, kind: PiiKind) -> None:
    assert kind in kinds_of_value(value)


@pytest.mark.parametrize("value", NEGATIVE)
def test_negative_values(value: str) -> None:
    assert kinds_of_value(value) == set()


@pytest.mark.parametrize("locale", ["en_US", "en_GB"])
def test_faker_values_are_detected(locale: str) -> None:
    fake = Faker(locale)
    fake.seed_instance(11)
    generators: dict[PiiKind, Callable[[], str]] = {
        PiiKind.EMAIL: fake.email,
        PiiKind.PHONE: fake.phone_number,
        PiiKind.NATIONAL_ID: fake.ssn,
        PiiKind.STREET_ADDRESS: fake.address,
        PiiKind.PERSON_NAME: fake.name,
        PiiKind.PAYMENT_CARD: fake.credit_card_number,
        PiiKind.IBAN: fake.iban,
        PiiKind.IP_ADDRESS: fake.ipv4,
    }
    for kind, generate in generators.items():
        values = [generate() for _ in range(200)]
        share = sum(kind in kinds_of_value(v) for v in values) / len(values)
        assert share >= 0.9, (kind, share)
        assert kind in {f.kind for f in detect("column", values)}


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("patient_id", PiiKind.RECORD_ID),
        ("firstName", PiiKind.PERSON_NAME),
        ("Name", PiiKind.PERSON_NAME),
        ("email_address", PiiKind.EMAIL),
        ("mobile", PiiKind.PHONE),
        ("SSN", PiiKind.NATIONAL_ID),
        ("social_security_number", PiiKind.NATIONAL_ID),
        ("DOB", PiiKind.DATE_OF_BIRTH),
        ("zip_code", PiiKind.POSTCODE),
        ("clinician notes", PiiKind.FREE_TEXT),
        ("home-address", PiiKind.STREET_ADDRESS),
        ("Age", PiiKind.DEMOGRAPHIC),
        ("credit_card_number", PiiKind.PAYMENT_CARD),
        ("account_number", PiiKind.RECORD_ID),
    ],
)
def test_column_names(name: str, kind: PiiKind) -> None:
    assert kind in kinds_of_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "mean radius",
        "hospital_name",
        "record_date",
        "cardiac_output",
        "diagnosis",
        "stage",
        "tumour_size",
        "drug_name",
    ],
)
def test_harmless_column_names(name: str) -> None:
    assert kinds_of_name(name) == set()


def test_email_address_is_not_a_street() -> None:
    assert kinds_of_name("email_address") == {PiiKind.EMAIL}
    assert kinds_of_name("national_id") == {PiiKind.NATIONAL_ID}


def test_labels_are_not_people() -> None:
    findings = detect("outcome", ["Benign Tumor", "Malignant Tumor"] * 50)
    assert findings == []


def test_free_text() -> None:
    notes = [f"Patient {i} reports mild pain after the second dose" for i in range(50)]
    assert PiiKind.FREE_TEXT in {f.kind for f in detect("field_7", notes)}
    assert detect("field_7", ["ok", "fine"] * 20) == []


def test_birth_dates() -> None:
    today = date(2025, 1, 1)
    births = [date(1950 + i, 5, 1) for i in range(0, 50, 5)]
    admissions = [date(2024, m, 1) for m in range(1, 11)]
    assert looks_like_birth_dates(births, today=today)
    assert not looks_like_birth_dates(admissions, today=today)
    assert not looks_like_birth_dates([date(2030, 1, 1), *births], today=today)
