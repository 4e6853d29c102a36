"""Spotting columns that look like personal data, by column name and by value patterns.

A tested pattern set (no network, no models): e-mail addresses, phone numbers,
national ids (US SSN, UK NINO), payment cards (Luhn), IBANs (mod 97), IPv4 addresses,
street addresses, person names, UK postcodes, UUIDs; at column level, free text and
dates that look like dates of birth. Names of columns add: record ids, postcodes and
demographic quasi-identifiers (age, sex, ...). It flags for a human to review; it
cannot prove a column harmless.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from fedvault.client.data.schema import Role


class PiiKind(StrEnum):
    PERSON_NAME = "person-name"
    EMAIL = "email"
    PHONE = "phone"
    NATIONAL_ID = "national-id"
    STREET_ADDRESS = "street-address"
    DATE_OF_BIRTH = "date-of-birth"
    FREE_TEXT = "free-text"
    POSTCODE = "postcode"
    PAYMENT_CARD = "payment-card"
    IBAN = "iban"
    IP_ADDRESS = "ip-address"
    RECORD_ID = "record-id"
    DEMOGRAPHIC = "demographic"


#: The role a draft schema gives a column of each kind (default: identifier).
SUGGESTED_ROLE = {
    PiiKind.DATE_OF_BIRTH: Role.QUASI_IDENTIFIER,
    PiiKind.POSTCODE: Role.QUASI_IDENTIFIER,
    PiiKind.DEMOGRAPHIC: Role.QUASI_IDENTIFIER,
    PiiKind.FREE_TEXT: Role.DROP,
}
VALUE_SHARE = 0.8  # share of sampled values that must match a value pattern

_F = re.IGNORECASE
_STREET = (
    r"street|st|avenue|ave|road|rd|lane|ln|drive|dr|court|ct|boulevard|blvd|way|"
    r"place|pl|square|sq|terrace|ter|circle|cir|parkway|pkwy|highway|hwy|trail|trl|"
    r"crescent|close|gardens|grove|park|plaza|loop|row|path|pike|alley|bridge|"
    r"crossing|estates?|heights|hills?|island|junction|lakes?|landing|meadows?|"
    r"mount|ridge|river|route|shores?|springs?|station|summit|valley|views?|"
    r"village|vista|walk|wells?|ports?|mills?|fields?|falls|forks?|harbor|haven|"
    r"manors?|orchard|pines?|plains?|points?|centers?|creek|curve|dale|expressway|"
    r"freeway|glens?|greens?|inlet|isle|keys?|knolls?|locks?|lodge|mall|motorway|"
    r"oval|prairie|ranch|rapids?|rest|run|shoals?|skyway|spur|stream|trace|track|"
    r"tunnel|turnpike|unions?|viaduct|villes?|bypass|camp|canyon|cape|causeway|"
    r"cliffs?|club|common|corners?|course|courts?|coves?|crest|divide|extensions?|"
    r"ferry|flats?|ford|forest|forge|gateway|hollow|light|mission|neck|overpass|"
    r"radial|ramp|ridges|squares|stravenue|throughway|trafficway|underpass|"
    r"branch|brooks?|burgs?|bayou|beach|bend|bluffs?|bottom|dam|drives|estate|"
    r"garden|loaf|mountain|parks|parkways|rue|ways"
)
_VALUE_PATTERNS: tuple[tuple[PiiKind, re.Pattern[str]], ...] = (
    (PiiKind.EMAIL, re.compile(r"[\w.%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")),
    (PiiKind.NATIONAL_ID, re.compile(r"\d{3}-\d{2}-\d{4}")),
    (PiiKind.NATIONAL_ID, re.compile(r"[A-Z]{2} ?(?:\d{2} ?){3}[A-Z]")),
    (
        PiiKind.IP_ADDRESS,
        re.compile(
            r"(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)"
        ),
    ),
    (PiiKind.POSTCODE, re.compile(r"[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}")),
    (PiiKind.RECORD_ID, re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}", _F)),
)
_PHONE = re.compile(
    r"(?:(?:\+|00)\d{1,3}(?:\(0\))?[\s.-]?)?(?:\(\d{2,4}\)|\d{2,5})[\s.-]?"
    r"\d{3,4}[\s.-]?\d{3,4}(?:\s*(?:x|ext\.?)\s*\d{1,6})?",
    _F,
)
_ADDRESS = (
    re.compile(rf"\b\d{{1,6}}\s+(?:[\w.'-]+\s+){{1,4}}(?:{_STREET})\b\.?", _F),
    re.compile(r",\s*[A-Z]{2}\s+\d{5}(?:-\d{4})?$"),  # "..., City, ST 12345"
    re.compile(r"\b(?:APO|FPO|DPO)\s+A[AEP]\s+\d{5}$"),  # US military mail
    re.compile(r"\n.*\b[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}$"),  # "...\nTown\nSW1A 1AA"
)
_LOWER = r"[a-zA-Z'\u2019-]"  # letters after a name's capital: McKay, Hewitt-Roberts
_PERSON = re.compile(
    rf"(?:(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?\s+)?[A-Z]{_LOWER}+"
    rf"(?:\s+[A-Z](?:{_LOWER}|\.)*){{1,3}}"
    r"(?:\s+(?:Jr|Sr|II|III|IV|V|MD|DDS|DVM|PhD)\.?)?"
    rf"|[A-Z]{_LOWER}+,\s*[A-Z]{_LOWER}+"
)
_CARD = re.compile(r"\d(?:[ -]?\d){11,18}")
_IBAN = re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")

_NAME_WORDS: tuple[tuple[PiiKind, frozenset[str]], ...] = (
    (
        PiiKind.DATE_OF_BIRTH,
        frozenset({"birth", "dob", "born", "birthday", "birthdate"}),
    ),
    (PiiKind.EMAIL, frozenset({"email", "mail", "e_mail"})),
    (PiiKind.PHONE, frozenset({"phone", "telephone", "tel", "mobile", "cell", "fax"})),
    (
        PiiKind.NATIONAL_ID,
        frozenset({"ssn", "nin", "nino", "passport", "nhs", "bsn", "insee", "aadhaar"}),
    ),
    (PiiKind.PAYMENT_CARD, frozenset({"pan", "cc"})),
    (PiiKind.IBAN, frozenset({"iban", "bic", "swift"})),
    (PiiKind.IP_ADDRESS, frozenset({"ip", "ipv4", "ipv6"})),
    (PiiKind.STREET_ADDRESS, frozenset({"address", "street", "addr", "residence"})),
    (PiiKind.POSTCODE, frozenset({"zip", "zipcode", "postcode", "postal", "plz"})),
    (
        PiiKind.FREE_TEXT,
        frozenset({"note", "notes", "comment", "comments", "remark", "remarks"})
        | {"narrative", "description", "freetext"},
    ),
    (
        PiiKind.PERSON_NAME,
        frozenset({"surname", "forename", "firstname", "lastname", "fullname"}),
    ),
    (PiiKind.RECORD_ID, frozenset({"id", "mrn", "uuid", "guid", "identifier"})),
    (
        PiiKind.DEMOGRAPHIC,
        frozenset({"age", "sex", "gender", "race", "ethnicity", "ethnic", "marital"})
        | {"religion", "nationality", "occupation", "city", "county"},
    ),
)
_NAME_PHRASES: tuple[tuple[PiiKind, tuple[str, ...]], ...] = (
    (
        PiiKind.NATIONAL_ID,
        (
            "socialsecurity",
            "nationalid",
            "nationalinsurance",
            "driverslicen",
            "driverlicen",
            "taxid",
            "personnummer",
        ),
    ),
    (
        PiiKind.RECORD_ID,
        (
            "accountnumber",
            "accountno",
            "acctno",
            "recordnumber",
            "medicalrecord",
            "patientnumber",
            "customernumber",
        ),
    ),
    (PiiKind.PAYMENT_CARD, ("cardnumber", "creditcard")),
)
_NAME_OWNERS = frozenset(
    {"first", "last", "given", "family", "full", "middle", "maiden", "patient"}
    | {"person", "customer", "client", "contact"}
)


@dataclass(frozen=True)
class Finding:
    """Why a column looks personal: by its name or by the share of matching values."""

    kind: PiiKind
    evidence: str  # "name" or "values"
    share: float = 1.0

    def describe(self) -> str:
        if self.evidence == "name":
            return f"{self.kind.value} (column name)"
        return f"{self.kind.value} ({self.share:.0%} of sampled values match)"


def kinds_of_value(value: str) -> set[PiiKind]:
    """The kinds of personal data a single value looks like."""
    text = value.strip()
    kinds = {kind for kind, rx in _VALUE_PATTERNS if rx.fullmatch(text)}
    digits = sum(ch.isdigit() for ch in text)
    if _PHONE.fullmatch(text) and 9 <= digits <= 22 and not text.isdigit():
        kinds.add(PiiKind.PHONE)
    elif text.isdigit() and text.startswith("0") and 10 <= len(text) <= 11:
        kinds.add(PiiKind.PHONE)  # national format with trunk prefix: 020 7946 0018
    if _CARD.fullmatch(text) and _luhn(text):
        kinds.add(PiiKind.PAYMENT_CARD)
    if _IBAN.fullmatch(text) and _iban_ok(text):
        kinds.add(PiiKind.IBAN)
    if any(rx.search(text) for rx in _ADDRESS):
        kinds.add(PiiKind.STREET_ADDRESS)
    if not kinds and _PERSON.fullmatch(text):
        kinds.add(PiiKind.PERSON_NAME)
    return kinds


def kinds_of_name(name: str) -> set[PiiKind]:
    """The kinds of personal data a column name suggests."""
    words = _words(name)
    joined = "".join(words)
    found = {kind for kind, vocab in _NAME_WORDS if vocab & {*words, joined}}
    found |= {kind for kind, parts in _NAME_PHRASES if any(p in joined for p in parts)}
    if "name" in words and (len(words) == 1 or _NAME_OWNERS & set(words)):
        found.add(PiiKind.PERSON_NAME)
    if found & {PiiKind.EMAIL, PiiKind.IP_ADDRESS}:  # "email_address" is no street
        found.discard(PiiKind.STREET_ADDRESS)
    if len(found) > 1:  # "national_id": the specific kind, not a mere record id
        found.discard(PiiKind.RECORD_ID)
    return found


def detect(name: str, sample: Sequence[str]) -> list[Finding]:
    """Findings for one column from its name and a sample of its non-missing values."""
    findings = [Finding(kind, "name") for kind in sorted(kinds_of_name(name))]
    named = {f.kind for f in findings}
    values = [v for v in (str(s).strip() for s in sample) if v]
    if not values:
        return findings
    counts: dict[PiiKind, int] = {}
    for value in values:
        for kind in kinds_of_value(value):
            counts[kind] = counts.get(kind, 0) + 1
    distinct = len(set(values)) / len(values)
    for kind, count in sorted(counts.items()):
        share = count / len(values)
        if share < VALUE_SHARE or kind in named:
            continue
        if kind is PiiKind.PERSON_NAME and distinct < 0.5:
            continue  # few distinct capitalized words: labels, not people
        findings.append(Finding(kind, "values", share))
    if _looks_like_free_text(values, distinct) and PiiKind.FREE_TEXT not in named:
        findings.append(Finding(PiiKind.FREE_TEXT, "values", 1.0))
    return findings


def looks_like_birth_dates(dates: Sequence[date], *, today: date) -> bool:
    """Dates in the past whose median lies 18-100 years back, spread over decades."""
    if len(dates) < 5 or max(dates) > today:
        return False
    years = sorted((today - d).days / 365.25 for d in dates)
    median = years[len(years) // 2]
    return 18 <= median <= 100 and years[-1] - years[0] >= 10


def _looks_like_free_text(values: Sequence[str], distinct: float) -> bool:
    mean_len = sum(len(v) for v in values) / len(values)
    mean_words = sum(len(v.split()) for v in values) / len(values)
    return mean_len >= 25 and mean_words >= 4 and distinct >= 0.5


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def _luhn(text: str) -> bool:
    digits = [int(ch) for ch in text if ch.isdigit()]
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            total += digit * 2 - 9 if digit > 4 else digit * 2
        else:
            total += digit
    return total % 10 == 0


def _iban_ok(text: str) -> bool:
    compact = text.replace(" ", "")
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1
