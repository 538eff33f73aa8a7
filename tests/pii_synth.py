"""Labelled synthetic notes with known PII spans, to measure common.redaction per type.

Two styles: clinical notes and banking messages. Each note is 2-4 sentences drawn from
templates; every PII value is generated in one of several real-world formats (IBANs with
computed check digits, Luhn-valid card numbers, SSNs within the SSA ranges, ...) and its
exact span is recorded. Sentences also carry look-alikes that are *not* PII and are not
labelled (amounts, years, doses, blood pressures, times, "card ending in 4821", invoice and
transaction numbers), and some names, dates and addresses are written in ways the recognizers
do not cover (a name with no context word, "Flat 3, Harbour View"), so the figures show misses
as well as hits.

    python -m tests.pii_synth [--n 600] [--seed 0]   # prints a Markdown table
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import re
import unicodedata

from common.pii_patterns import luhn_valid
from common.redaction import ENTITY_TYPES, Redactor, Span, find_pii_all

# --------------------------------------------------------------------------------- vocabularies

FIRST = """Mary James Aisha Wei Olga Kwame Priya Mateo Sofia Liam Noah Emma Fatima Hiroshi Ingrid Lars
Chloe Mohammed Elena Jan Pieter Anna Thomas Sarah David Maria Lucas Yusuf Mei Carlos Grace Daniel
Laura Robert Linda Michael Jennifer Ahmed Zoe Oliver Amelia Giulia Marco Sven Katarzyna Nikolai
João Chen Jessica Patricia Siobhan Tariq Amara Dmitri Helen Peter Rebecca Sean Nadia Kofi
Margaret George Emily Susan Paul Karen John Elizabeth William""".split()
SURNAMES = """Johnson Smith Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Müller Núñez
Jørgensen Nowak Kowalski Nguyen Kim Patel O'Brien McDonald Smith-Jones Schmidt Rossi Dubois Okafor
Singh Yamamoto Andersson Ivanova Hernández Lefèvre Taylor Wilson Anderson Thompson White Harris
Clark Lewis Walker Young King Wright Scott Green Baker Adams Nelson Hill Campbell Mitchell Roberts
Carter Phillips Evans Turner Torres Parker Collins Edwards Stewart Morris Murphy Cook Rogers
Bianchi Fischer Weber Janssen Bakker Mensah Haddad Kaur""".split()
PARTICLE_SURNAMES = ["van der Berg", "de Vries", "da Silva", "van Dijk", "de la Cruz"]
STREETS = """Oak Maple Main Church High Park Elm Cedar Mill Station Victoria King Queen Bridge Lake
Sunset Washington Lincoln Willow Chestnut Harbour Meadow Orchard Albert Green Spring""".split() + [
    "Martin Luther King", "5th", "West 42nd", "St. Mary's", "Old Mill", "North Hill"]
SUFFIXES = ["Street"] * 6 + ["St"] * 3 + ["St."] + ["Road"] * 4 + ["Rd"] * 2 + ["Avenue"] * 3 + [
    "Ave"] * 2 + ["Lane"] * 2 + ["Blvd", "Boulevard", "Drive", "Dr", "Way", "Way", "Court", "Close",
                                 "Crescent", "Place", "Terrace", "Gardens"]
US_CITIES = [("Springfield", "IL"), ("Portland", "OR"), ("Austin", "TX"), ("Columbus", "OH"),
             ("San Diego", "CA"), ("Boston", "MA"), ("Denver", "CO")]
UK_CITIES = [("London", "SW1A 1AA"), ("Manchester", "M1 1AE"), ("Leeds", "LS1 4AP"),
             ("Bristol", "BS1 5TR"), ("London", "EC1A 1BB")]
EU_CITIES = [("10115", "Berlin"), ("1012", "Amsterdam"), ("75001", "Paris"), ("80331", "Munich")]
EMAIL_DOMAINS = ["gmail.com", "outlook.com", "yahoo.co.uk", "web.de", "example-clinic.org",
                 "mail.nhs.net", "uni-hamburg.de", "proton.me", "company.co", "icloud.com"]
COMPLAINTS = ["chest pain", "shortness of breath", "a productive cough", "abdominal pain",
              "dizziness", "a fall at home", "fever and rigors", "lower back pain"]
DRUGS = ["metformin", "ramipril", "atorvastatin", "amoxicillin", "bisoprolol", "apixaban"]

# --------------------------------------------------------------------------------- value makers

# country: BBAN layout (n digits, a capital letters, c alphanumeric), lengths per ISO 13616
IBAN_LAYOUT = {"DE": "18n", "GB": "4a14n", "FR": "10n11c2n", "NL": "4a10n", "ES": "20n",
               "IT": "1a10n12c", "BE": "12n", "CH": "5n12c", "AT": "16n", "PL": "24n",
               "IE": "4a14n", "SE": "20n", "NO": "11n", "PT": "21n"}


def make_iban(rng: random.Random, cc: str) -> str:
    alphabet = {"n": "0123456789", "a": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                "c": "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
    bban = "".join(rng.choice(alphabet[kind]) for count, kind in re.findall(r"(\d+)([nac])", IBAN_LAYOUT[cc])
                   for _ in range(int(count)))
    # check digits: 98 - (BBAN + country + "00", letters as 10..35) mod 97
    check = 98 - int("".join(str(int(ch, 36)) for ch in bban + cc + "00")) % 97
    return f"{cc}{check:02d}{bban}"


def make_card(rng: random.Random) -> tuple[str, str]:
    """A Luhn-valid number and its network: Visa 16/13/19, Mastercard 16, Amex 15, Discover 16."""
    prefix, length = rng.choice([("4", 16)] * 5 + [("4", 13), ("4", 19)] + [(str(rng.randint(51, 55)), 16)] * 3
                                + [(rng.choice(["34", "37"]), 15)] * 2 + [("6011", 16)])
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    check = next(d for d in "0123456789" if luhn_valid(body + d))
    return body + check, "amex" if length == 15 else "other"


def make_ssn(rng: random.Random) -> tuple[int, int, int]:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return area, rng.randint(1, 99), rng.randint(1, 9999)


def ascii_fold(s: str) -> str:
    return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode().replace("'", "").replace(" ", "")


MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]


def ordinal(d: int) -> str:
    return f"{d}{'th' if 10 <= d % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(d % 10, 'th')}"


class _Values:
    """Draws every field of a template; PII fields return (type, text), others plain text."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def pick(self, seq):
        return self.rng.choice(seq)

    # ---- names
    def first(self):
        return self.pick(FIRST)

    def surname(self):
        return self.pick(PARTICLE_SURNAMES) if self.rng.random() < 0.05 else self.pick(SURNAMES)

    def full_name(self):
        r = self.rng.random()
        if r < 0.1:
            return f"{self.first()} {self.pick('ABCDEFGHJKLMNPRSTW')}. {self.surname()}"
        if r < 0.15:
            return f"{self.first()} {self.first()} {self.surname()}"
        return f"{self.first()} {self.surname()}"

    # ---- dates
    def date(self, textual_share=0.35):
        rng = self.rng
        y, m, d = rng.randint(1935, 2025), rng.randint(1, 12), rng.randint(1, 28)
        month = MONTHS[m - 1]
        numeric = [f"{y}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y}", f"{m:02d}/{d:02d}/{y}", f"{m}/{d}/{y}",
                   f"{d}.{m}.{y}", f"{d:02d}.{m:02d}.{y}", f"{d:02d}-{m:02d}-{y}", f"{m}/{d}/{y % 100:02d}",
                   f"{y}/{m:02d}/{d:02d}"]
        textual = [f"{d} {month} {y}", f"{month} {d}, {y}", f"{month[:3]} {d}, {y}", f"{ordinal(d)} {month} {y}",
                   f"{d} {month[:3]} {y}", f"{ordinal(d)} of {month} {y}", f"{month} {ordinal(d)}, {y}",
                   f"{d} {month}", f"{month} {d}", f"{d:02d}-{month[:3]}-{y}", f"{d:02d}-{month[:3].upper()}-{y}", f"{d} {month[:3]}. {y}"]
        return self.pick(textual) if rng.random() < textual_share else self.pick(numeric)

    # ---- contact
    def phone(self):
        rng, r = self.rng, self.rng.randint
        us = (r(2, 9) * 100 + r(0, 99), r(200, 999), r(0, 9999))
        fmt = rng.randrange(20)
        if fmt == 16:
            return f"+1 ({us[0]}) {us[1]}-{us[2]:04d}"
        if fmt == 17:
            return f"{us[0]} {us[1]} {us[2]:04d}"
        if fmt == 18:
            return f"+49 (0)30 {r(1000, 9999)} {r(1000, 9999)}"
        if fmt == 19:
            return f"+353 1 {r(100, 999)} {r(1000, 9999)}"
        if fmt == 0:
            return f"({us[0]}) {us[1]}-{us[2]:04d}"
        if fmt == 1:
            return f"{us[0]}-{us[1]}-{us[2]:04d}"
        if fmt == 2:
            return f"{us[0]}.{us[1]}.{us[2]:04d}"
        if fmt == 3:
            return f"+1 {us[0]} {us[1]} {us[2]:04d}"
        if fmt == 4:
            return f"+1-{us[0]}-{us[1]}-{us[2]:04d}"
        if fmt == 5:
            return f"1-800-{us[1]}-{us[2]:04d}"
        if fmt == 6:
            return f"+44 20 {r(7000, 8999)} {r(0, 9999):04d}"
        if fmt == 7:
            return f"+44 (0)20 {r(7000, 8999)} {r(0, 9999):04d}"
        if fmt == 8:
            return f"0{r(20, 29)} {r(7000, 8999)} {r(0, 9999):04d}"
        if fmt == 9:
            return f"07{r(100, 999)} {r(100000, 999999)}"
        if fmt == 10:
            return f"+49 {r(30, 89)} {r(1000000, 99999999)}"
        if fmt == 11:
            return f"0{r(151, 179)} {r(1000000, 99999999)}"
        if fmt == 12:
            return f"+31 6 {r(10000000, 99999999)}"
        if fmt == 13:
            return f"06-{r(10000000, 99999999)}"
        if fmt == 14:
            return f"+33 {r(1, 7)} {r(10, 99)} {r(10, 99)} {r(10, 99)} {r(10, 99)}"
        return f"0044 {r(20, 29)} {r(7000, 8999)} {r(0, 9999):04d}"

    def email(self, first=None, last=None):
        f, l = ascii_fold(first or self.first()).lower(), ascii_fold(last or self.pick(SURNAMES)).lower()
        local = self.pick([f"{f}.{l}", f"{f[0]}{l}", f"{f}_{l}{self.rng.randint(1, 99)}", f"{f}{self.rng.randint(1950, 2005)}",
                           f"{f}.{l}+bank", f"{l}.{f[0]}"])
        address = f"{local}@{self.pick(EMAIL_DOMAINS)}"
        # some people type their address capitalised
        return address.title() if self.rng.random() < 0.1 else address

    def url(self):
        n = self.rng.randint(1000, 99999)
        return self.pick([f"https://portal.stmarys-hospital.org/patients/{n}/labs",
                          f"http://www.secure-login-{n % 97}.com/verify?id={n}",
                          f"www.mybank.com/account/{n}", f"https://bit.ly/{ascii_fold(self.first())[:3]}{n}",
                          f"https://results.labcorp.example/r/{n}?view=pdf",
                          f"https://www.example-bank.co.uk/help/contact#{n}",
                          f"http://10.{n % 256}.0.{n % 200 + 1}:8080/admin", "https://en.wikipedia.org/wiki/Scan_(disambiguation)"])

    def ip(self):
        rng = self.rng
        if rng.random() < 0.7:
            return str(ipaddress.IPv4Address(rng.randint(0x01000000, 0xDFFFFFFF)))
        addr = ipaddress.IPv6Address(rng.getrandbits(128))
        if rng.random() < 0.4:
            addr = ipaddress.IPv6Address((0x20010DB8 << 96) | rng.getrandbits(16))  # compressible
        return addr.exploded if rng.random() < 0.3 else addr.compressed

    def address(self):
        rng = self.rng
        if rng.random() < 0.04:  # no street suffix: the recognizer is not written for these
            return f"Flat {rng.randint(1, 20)}, {rng.randint(1, 99)} {self.pick(STREETS)} View"
        num = f"{rng.randint(1, 4999)}{self.pick(['', '', '', '', 'A', 'B'])}"
        line = f"{num} {self.pick(STREETS)} {self.pick(SUFFIXES)}"
        unit = rng.random()
        if unit < 0.15:
            line += f", Apt {rng.randint(1, 40)}{self.pick('ABCD')}"
        elif unit < 0.22:
            line += f" Suite {rng.randint(100, 900)}"
        elif unit < 0.28:
            line = f"Flat {rng.randint(1, 12)}, {line}"
        tail = rng.random()
        if tail < 0.25:
            city, state = self.pick(US_CITIES)
            line += f", {city}, {state} {rng.randint(10000, 99999)}"
        elif tail < 0.4:
            line += ", {} {}".format(*self.pick(UK_CITIES))
        elif tail < 0.5:
            line += ", {} {}".format(*self.pick(EU_CITIES))
        return line

    # ---- identifiers
    def mrn(self):
        r = self.rng.randint
        return self.pick([f"{self.pick('ABCDEFGHKMNPRSTX')}{r(1000000, 9999999)}", f"{r(0, 99999999):08d}",
                          f"MR-{r(100000, 999999)}", f"HX{r(1000, 9999)}-{r(10, 99)}", f"{r(1000000, 9999999)}",
                          f"{r(10, 99)}-{r(100, 999)}-{r(100, 999)}"])

    def customer_id(self):
        r = self.rng.randint
        return self.pick([f"C-{r(0, 9999999):07d}", f"CUS{r(100000, 999999)}", f"{r(10000000, 99999999)}",
                          f"{r(100, 999)}-{r(1000, 9999)}-{r(10, 99)}", f"MBR-{r(1000, 9999)}-{r(1000, 9999)}"])

    def passport(self):
        r = self.rng.randint
        return self.pick([f"{self.pick('CFGHJKLMNPRTVWXYZ')}{r(10000000, 99999999)}", f"{r(100000000, 999999999)}",
                          f"{self.pick('CFGHJKLMNPRTVWXYZ')}{r(10, 99)}{self.pick('CFGHJKLMNPRTVWXYZ')}{r(10000, 99999)}"])

    def account(self):
        r = self.rng.randint
        return self.pick([f"{r(10000000, 99999999)}", f"{r(0, 9999999999):010d}", f"{r(1000, 9999)} {r(1000, 9999)} {r(10, 99)}",
                          f"{r(100, 999)}-{r(100000, 999999)}"])

    def national_id(self):
        r = self.rng.randint
        return self.pick([f"{self.pick(['AB', 'JG', 'NP', 'SK'])}{r(100000, 999999)}{self.pick('ABCD')}",
                          f"L{r(10, 99)}X{r(10, 99)}T{r(10, 99)}", f"{r(10000000, 99999999)}Z"])

    # ---- look-alikes that are not PII
    def amount(self):
        r = self.rng.randint
        return self.pick([f"EUR {r(10, 9999)},{r(0, 99):02d}", f"${r(1, 99)},{r(100, 999)}.{r(0, 99):02d}",
                          f"£{r(100, 20000):,}", f"{r(1, 9)}.{r(100, 999)},{r(0, 99):02d} EUR", f"CHF {r(100, 9999)}",
                          f"USD {r(10, 999)}.{r(0, 99):02d}", f"{r(1, 999)} 000 EUR"])

    def reference(self):
        r = self.rng.randint
        # transaction numbers of 10-16 digits are left to chance: a few pass Luhn, as in real data
        return self.pick([f"INV-{r(2015, 2025)}-{r(1, 99999):05d}", f"Rent {self.pick(MONTHS)}",
                          f"order #{r(10000, 999999)}", f"TX{r(10**9, 10**10)}",
                          "".join(str(r(0, 9)) for _ in range(r(10, 16)))])

    def field(self, key: str):
        """PII: (type, text); anything else: text."""
        rng, r = self.rng, self.rng.randint
        pii = {
            "FULL": lambda: ("NAME", self.full_name()),
            "FIRST": lambda: ("NAME", self.first()),
            "SURNAME": lambda: ("NAME", self.surname()),
            "DATE": lambda: ("DATE", self.date()),
            "DATE_TEXT": lambda: ("DATE", self.date(textual_share=1.0)),
            "PHONE": lambda: ("PHONE", self.phone()),
            "EMAIL": lambda: ("EMAIL", self.email()),
            "URL": lambda: ("URL", self.url()),
            "IP": lambda: ("IP", self.ip()),
            "IP6": lambda: ("IP", ipaddress.IPv6Address(rng.getrandbits(128)).compressed),
            "ADDRESS": lambda: ("ADDRESS", self.address()),
            "MRN": lambda: ("MRN", self.mrn()),
            "CUSTOMER_ID": lambda: ("ID", self.customer_id()),
            "PASSPORT": lambda: ("ID", self.passport()),
            "ACCOUNT": lambda: ("ID", self.account()),
            "NATIONAL_ID": lambda: ("ID", self.national_id()),
            "IBAN": lambda: ("IBAN", self._iban()),
            "CARD": lambda: ("CARD", self._card()),
            "SSN": lambda: ("SSN", self._ssn()),
        }
        if key in pii:
            return pii[key]()
        plain = {
            "MRN_L": lambda: self.pick(["MRN:", "MRN", "MRN #", "Medical record number", "medical record no.",
                                        "Patient ID:", "patient number", "Hospital no.", "hospital number:"]),
            "ID_L": lambda: self.pick(["Customer number", "Customer ID", "customer no.", "Client ID:", "Member ID",
                                       "Customer #"]),
            "PASSPORT_L": lambda: self.pick(["passport", "passport number", "Passport No.", "passport no:"]),
            "NATID_L": lambda: self.pick(["national ID", "National Insurance number", "ID card number", "ID:"]),
            "ACCOUNT_L": lambda: self.pick(["account number", "account no.", "acct #", "account"]),
            "PHONE_L": lambda: self.pick(["tel.", "phone", "mobile:", "Tel:", "on", "at", "number"]),
            "HON": lambda: self.pick(["Mr", "Mrs", "Ms", "Mr.", "Mrs.", "Dr", "Dr.", "Miss"]),
            "DOC": lambda: self.pick(["Dr", "Dr.", "Prof.", "Professor"]),
            "RELATION": lambda: self.pick(["daughter", "son", "wife", "husband", "mother", "brother"]),
            "AMOUNT": self.amount,
            "REF": self.reference,
            "YEAR": lambda: str(r(1990, 2024)),
            "AGE": lambda: str(r(18, 95)),
            "TIME": lambda: self.pick([f"{r(7, 18)}:{self.pick(['00', '15', '30', '45'])}", f"{r(1, 11)}pm",
                                       f"{r(7, 11)}am", f"{r(10, 18)}:{r(0, 59):02d}:{r(0, 59):02d}"]),
            "BP": lambda: f"{r(100, 170)}/{r(60, 100)}",
            "HR": lambda: str(r(50, 120)),
            "DOSE": lambda: self.pick([f"{self.pick([5, 10, 20, 40, 250, 500, 1000])} mg", "2.5 mg", "1 g"]),
            "DRUG": lambda: self.pick(DRUGS),
            "COMPLAINT": lambda: self.pick(COMPLAINTS),
            "WEEKS": lambda: str(r(2, 12)),
            "LAST4": lambda: f"{r(0, 9999):04d}",
            "EXPIRY": lambda: f"{r(1, 12):02d}/{r(25, 31)}",
            "PCT": lambda: f"{r(1, 9)}.{r(0, 9)}%",
        }
        return plain[key]()

    def _iban(self):
        iban = make_iban(self.rng, self.pick(list(IBAN_LAYOUT)))
        return iban if self.rng.random() < 0.4 else " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))

    def _card(self):
        number, network = make_card(self.rng)
        style = self.rng.random()
        if style < 0.35:
            return number
        sep = " " if style < 0.8 else "-"
        if network == "amex":
            return sep.join([number[:4], number[4:10], number[10:]])
        return sep.join(number[i:i + 4] for i in range(0, len(number), 4))

    def _ssn(self):
        a, g, s = make_ssn(self.rng)
        sep = self.pick(["-"] * 6 + [" ", ""])  # bare nine digits: templates put "SSN" before them
        return f"{a:03d}{sep}{g:02d}{sep}{s:04d}"


# ------------------------------------------------------------------------------------ templates

CLINICAL = [
    "Patient {FULL} ({MRN_L} {MRN}), DOB {DATE}, seen on {DATE}.",
    "{FULL}, a {AGE}-year-old, presented to the emergency department on {DATE} with {COMPLAINT}.",
    "Referred by {DOC} {SURNAME} for {COMPLAINT}; BP {BP}, HR {HR} bpm.",
    "Home address: {ADDRESS}. Next of kin: {FULL} ({RELATION}), tel. {PHONE}.",
    "{MRN_L} {MRN}. Insurance member ID {CUSTOMER_ID}.",
    "Lab results uploaded to {URL} from workstation {IP} on {DATE}.",
    "Dear {DOC} {SURNAME}, thank you for referring {FULL}, whom I saw in clinic on {DATE}.",
    "{HON} {SURNAME} reports {COMPLAINT} since {YEAR}; started {DRUG} {DOSE} twice daily.",
    "Contact the patient on {PHONE} or at {EMAIL} to book the follow-up in {WEEKS} weeks.",
    "SSN {SSN} on file; Medicare claim submitted {DATE}.",
    "Discharged home to {ADDRESS} on {DATE_TEXT} in the care of her {RELATION} {FULL}.",
    "Patient ID: {MRN}, name: {SURNAME}, {FIRST}.",
    "{DOC} {FULL} reviewed the MRI on {DATE_TEXT} at {TIME}.",
    "Consent form signed by {FULL} on {DATE}; witness: {FULL}.",
    "Patient portal account {EMAIL} was created from {IP}.",
    "Results were faxed to {PHONE} on {DATE} ({MRN_L} {MRN}).",
    "Pharmacy called back, {PHONE_L} {PHONE}, about {DRUG} {DOSE}.",
    "Seen with {RELATION} {FIRST}, who lives at {ADDRESS}.",
    "{FULL} (DOB {DATE}) missed the appointment; letter sent to {ADDRESS}.",
]
CLINICAL_PLAIN = [
    "Temperature 38.2 C, SpO2 96% on room air, BP {BP}.",
    "Continue {DRUG} {DOSE} once daily, review in {WEEKS} weeks.",
    "ECG: sinus rhythm, {HR} bpm. Plan: repeat bloods in 2 weeks.",
    "Ward 7B, bed 12; nil by mouth after midnight.",
    "ICD-10 E11.9, HbA1c {PCT} in {YEAR}.",
    "The patient was seen in clinic today and is stable.",
    "Dear colleague, please find the summary below.",
    "Patient reports feeling better; no chest pain since {YEAR}.",
]
BANKING = [
    "Please transfer {AMOUNT} from IBAN {IBAN} to {IBAN} ({FULL}), reference {REF}.",
    "Hi, my name is {FULL}. My card {CARD} was charged twice on {DATE}.",
    "{ID_L} {CUSTOMER_ID} reports a login from {IP} on {DATE_TEXT}; the account is now locked.",
    "Dear {FIRST}, your new card ending in {LAST4} will be sent to {ADDRESS} within 5 working days.",
    "Please update my email to {EMAIL} and my phone number to {PHONE}.",
    "For verification: SSN {SSN}, date of birth {DATE}.",
    "{PASSPORT_L} {PASSPORT} and proof of address received from {HON} {SURNAME} on {DATE}.",
    "I received a suspicious link {URL} asking for my card number, please check.",
    "The transfer of {AMOUNT} is still pending since {DATE}; my {ACCOUNT_L} is {ACCOUNT}.",
    "Card {CARD}, expiry {EXPIRY}, was blocked after three wrong PIN attempts.",
    "Regards, {FULL}",
    "Call me back on {PHONE}, I am available after {TIME}.",
    "Our records show the address {ADDRESS}, is this still correct?",
    "Beneficiary: {FULL}, IBAN {IBAN}, amount {AMOUNT}.",
    "Customer {FULL} ({ID_L} {CUSTOMER_ID}) asked to close the savings account.",
    "Login from {IP6} was flagged by fraud monitoring on {DATE}.",
    "Copy of {NATID_L} {NATIONAL_ID} attached, contact me at {EMAIL}.",
    "{FULL} called from {PHONE} about {ACCOUNT_L} {ACCOUNT}.",
]
BANKING_PLAIN = [
    "My card was declined at the shop.",
    "The transfer is still pending.",
    "The fee of {AMOUNT} was refunded on my statement.",
    "Interest rate {PCT} fixed for 10 years, first payment in {YEAR}.",
    "Your card ending in {LAST4} expires {EXPIRY}.",
    "Transaction {REF} for {AMOUNT} is under review.",
    "Please bring your ID to the branch, the account is locked after three attempts.",
    "Thanks in advance, this is the second time I ask.",
]


def _render(template: str, values: _Values, text: list[str], spans: list[Span], pos: int) -> int:
    last = 0
    for m in re.finditer(r"\{(\w+)\}", template):
        piece = template[last:m.start()]
        text.append(piece)
        pos += len(piece)
        value = values.field(m.group(1))
        if isinstance(value, tuple):
            kind, value = value
            spans.append(Span(pos, pos + len(value), kind))
        text.append(value)
        pos += len(value)
        last = m.end()
    text.append(template[last:])
    return pos + len(template) - last


def make_notes(n: int, seed: int) -> list[tuple[str, list[Span]]]:
    """`n` notes (half clinical, half banking) with their gold PII spans; same seed, same notes."""
    rng = random.Random(seed)
    values = _Values(rng)
    notes = []
    for i in range(n):
        pii, plain = (CLINICAL, CLINICAL_PLAIN) if i % 2 == 0 else (BANKING, BANKING_PLAIN)
        sentences = rng.sample(pii, rng.randint(1, 3)) + rng.sample(plain, rng.randint(0, 2))
        rng.shuffle(sentences)
        text, spans, pos = [], [], 0
        for k, sentence in enumerate(sentences):
            if k:
                sep = rng.choice([" ", " ", "\n"])
                text.append(sep)
                pos += len(sep)
            pos = _render(sentence, values, text, spans, pos)
        notes.append(("".join(text), spans))
    return notes


# ----------------------------------------------------------------------------------- evaluation

def _overlap(a: Span, b: Span) -> int:
    return max(0, min(a.end, b.end) - max(a.start, b.start))


def evaluate(redactor_types=ENTITY_TYPES, n: int = 600, seed: int = 0) -> dict[str, dict[str, float]]:
    """Span-level precision and recall per type on make_notes(n, seed).

    A gold span is found when a predicted span of the same type covers at least half of it; a
    predicted span is correct when a gold span of the same type covers at least half of it.
    With nothing to count, precision (or recall) is 1.0.
    """
    redactor = Redactor(redactor_types)
    found = {t: [0, 0] for t in redactor.types}   # gold spans found, gold spans
    correct = {t: [0, 0] for t in redactor.types}  # predicted spans correct, predicted spans
    notes = make_notes(n, seed)
    for (text, gold), pred in zip(notes, find_pii_all([text for text, _ in notes], redactor.types)):
        for g in gold:
            if g.type in found:
                found[g.type][1] += 1
                found[g.type][0] += any(p.type == g.type and 2 * _overlap(p, g) >= g.end - g.start for p in pred)
        for p in pred:
            correct[p.type][1] += 1
            correct[p.type][0] += any(g.type == p.type and 2 * _overlap(p, g) >= p.end - p.start for g in gold)
    return {t: {"precision": correct[t][0] / correct[t][1] if correct[t][1] else 1.0,
                "recall": found[t][0] / found[t][1] if found[t][1] else 1.0,
                "support": found[t][1]} for t in redactor.types}


def markdown_table(results: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| type | support | precision | recall |", "|---|---:|---:|---:|"]
    for t, r in results.items():
        lines.append(f"| {t} | {r['support']} | {r['precision']:.3f} | {r['recall']:.3f} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.pii_synth",
                                description="Precision / recall of common.redaction per PII type on "
                                            "labelled synthetic clinical and banking notes (Markdown).")
    p.add_argument("--n", type=int, default=600, help="number of notes [default: 600]")
    p.add_argument("--seed", type=int, default=0, help="generator seed [default: 0]")
    args = p.parse_args(argv)
    print(f"PII redaction on {args.n} synthetic notes (seed {args.seed}); span-level, "
          "a match needs the same type and at least 50% overlap.\n")
    print("\n".join(markdown_table(evaluate(n=args.n, seed=args.seed))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
