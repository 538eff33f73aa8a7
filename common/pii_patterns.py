"""The recognisers behind common/redaction.py: one finder per PII type, each yielding the
(start, end) spans of its candidates in a text. Pure `re` and issuer checks (IBAN mod-97, card
Luhn, SSN ranges, IP octets); identifiers without a checkable shape only after a context word.
common/redaction.py resolves overlaps between types and replaces what is found.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Callable, Iterator

ENTITY_TYPES: tuple[str, ...] = ("NAME", "EMAIL", "PHONE", "DATE", "ID", "ADDRESS", "IBAN", "CARD",
                                 "IP", "URL", "MRN", "SSN")

Finder = Callable[[str], Iterator[tuple[int, int]]]


def _scan(pattern: re.Pattern, check: Callable[[re.Match], bool] | None = None,
          group: str | int = 0) -> Finder:
    """A finder yielding the span of `group` for each match that passes `check`."""

    def find(text: str) -> Iterator[tuple[int, int]]:
        for m in pattern.finditer(text):
            if check is None or check(m):
                yield m.span(group)

    return find


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


# ------------------------------------------------------------------------------------ EMAIL, URL

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]*[A-Za-z0-9_%+-])?"
                    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])")

_URL = re.compile(r"\b(?:https?://|www\.)[A-Za-z0-9][^\s<>\"'`]*", re.I)


def _find_url(text: str) -> Iterator[tuple[int, int]]:
    for m in _URL.finditer(text):
        s, e = m.span()
        # Sentence punctuation after a link is not part of it; a ')' only if it closes one inside.
        while e > s:
            last = text[e - 1]
            if last in ".,;:!?'\"":
                e -= 1
            elif last in ")]}" and text[s:e].count(last) > text[s:e].count({")": "(", "]": "[", "}": "{"}[last]):
                e -= 1
            else:
                break
        yield s, e


# ------------------------------------------------------------------------------------------- IP

_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w]|\.\d)")
# Candidates only; ipaddress decides (it rejects '10:30:00' and other times).
_IPV6 = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:)[0-9A-Fa-f:.]{3,45}(?![\w:]|\.\w)")


def _ipv4_ok(m: re.Match) -> bool:
    if re.search(r"(?i:\bv|\bver\.?|\bversion)\s*$", m.string[max(0, m.start() - 10):m.start()]):
        return False  # "version 1.2.3.4"
    try:
        ipaddress.IPv4Address(m.group())  # each octet 0-255, no leading zeros
        return True
    except ValueError:
        return False


def _find_ipv6(text: str) -> Iterator[tuple[int, int]]:
    for m in _IPV6.finditer(text):
        s, cand = m.start(), m.group()
        for c in (cand, cand.rstrip(".:"), cand.rstrip(".")):
            if re.search(r"[0-9A-Fa-f]", c) and c.count(":") >= 2:
                try:
                    ipaddress.IPv6Address(c)
                except ValueError:
                    continue
                yield s, s + len(c)
                break


# ----------------------------------------------------------------------------------------- IBAN

# Official lengths (ISO 13616 registry) for the countries seen most; other codes: 15-34.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AT": 20, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21,
    "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FO": 18, "FR": 27,
    "GB": 22, "GI": 23, "GL": 18, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26,
    "IT": 27, "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27,
    "MT": 31, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29,
}

# Greedy candidate: letters-country, check digits, then up to 8 blocks (compact or spaced by
# 4). It may run into the next word ("... 00 TO"); _find_iban cuts it back at block edges.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{1,4}){3,8}\b")


def iban_valid(iban: str) -> bool:
    """ISO 13616: country length (where known) and mod-97 of the rearranged number is 1."""
    s = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", s):
        return False
    if len(s) != IBAN_LENGTHS.get(s[:2], len(s)):
        return False
    return int("".join(str(int(ch, 36)) for ch in s[4:] + s[:4])) % 97 == 1


def _find_iban(text: str) -> Iterator[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        cand = m.group()
        cuts = [len(cand)] + [i for i in range(len(cand) - 1, 0, -1) if cand[i] == " "]
        for cut in cuts:
            if iban_valid(cand[:cut]):
                yield m.start(), m.start() + cut
                break


# ----------------------------------------------------------------------------------------- CARD

# A run of digits with single space / hyphen separators; _find_card looks inside it for a
# 13-19 digit stretch (aligned to the separators) that passes Luhn.
_DIGIT_RUN = re.compile(r"(?<![\w+.,/-])\d(?:[ -]?\d)+(?![\w]|[.,]\d)")


def luhn_valid(number: str) -> bool:
    digits = [int(d) for d in _digits(number)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return bool(digits) and total % 10 == 0


def _find_card(text: str) -> Iterator[tuple[int, int]]:
    for m in _DIGIT_RUN.finditer(text):
        run, base = m.group(), m.start()
        if len(_digits(run)) < 13:
            continue
        if re.search(r"\b[A-Z]{2}\d\d $", text[max(0, base - 6):base]):
            continue  # the tail of an IBAN whose checksum failed: a typo, not a card
        # group edges: start of the run, after each separator / before it, end of the run
        starts = [0] + [i + 1 for i, ch in enumerate(run) if ch in " -"]
        ends = [i for i, ch in enumerate(run) if ch in " -"] + [len(run)]
        i = 0
        while i < len(starts):
            s = starts[i]
            best = None
            for e in (e for e in ends if e > s):
                n = len(_digits(run[s:e]))
                if n > 19:
                    break
                # no card number starts with 0 (ISO/IEC 7812), "0044 20 ..." is a phone
                if n >= 13 and run[s] != "0" and luhn_valid(run[s:e]):
                    best = e  # ends ascend, so the last valid one is the longest
            if best is None:
                i += 1
                continue
            yield base + s, base + best
            i = next((k for k, st in enumerate(starts) if st > best), len(starts))


# ------------------------------------------------------------------------------------------ SSN

_SSN = re.compile(r"(?<![\w-])(?<!\d )(\d{3})([- ])(\d{2})\2(\d{4})(?![\w-])(?! \d)")
# nine bare digits only right after "SSN" / "social security number" (the empty group keeps
# the group numbers of _SSN, so _ssn_ok reads both)
_SSN_BARE = re.compile(r"(?i:\b(?:SSN|SS#|social\s+security(?:\s+(?:number|no\.?|#))?))"
                       r"[\s:#=]*(?:is\s+)?(\d{3})()(\d{2})(\d{4})(?![\w-])")


def _ssn_ok(m: re.Match) -> bool:
    # SSA rules: area not 000, 666 or 900-999; group not 00; serial not 0000.
    area, group, serial = m.group(1), m.group(3), m.group(4)
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _find_ssn(text: str) -> Iterator[tuple[int, int]]:
    for m in _SSN.finditer(text):
        if _ssn_ok(m):
            yield m.span()
    for m in _SSN_BARE.finditer(text):
        if _ssn_ok(m):
            yield m.start(1), m.end(4)


# ---------------------------------------------------------------------------------------- PHONE

# Never preceded by a digit group ("4111 1111 ...") and never followed by more digits, so
# fragments of card numbers, IBANs and amounts are not phones.
_NOT_AFTER_NUMBER = r"(?<![\w+/.,])(?<!\d[ .-])"
_NOT_BEFORE_NUMBER = r"(?!\w|[.,/-]\d)"
_PHONE_PATTERNS = [
    # international: +CC or 00CC, then digit groups, optional "(0)" trunk prefix
    re.compile(_NOT_AFTER_NUMBER + r"(?:\+|\b00)[1-9]\d{0,2}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){1,7}"
               + _NOT_BEFORE_NUMBER),
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567, 1-800-555-0199
    re.compile(_NOT_AFTER_NUMBER + r"(?:\b1[ .-]?)?(?:\(\d{3}\)[ .-]?|\b\d{3}[ .-])\d{3}[ .-]\d{4}"
               + _NOT_BEFORE_NUMBER),
    # European national with trunk 0: 020 7946 0958, 06-12345678, 01 23 45 67 89
    re.compile(_NOT_AFTER_NUMBER + r"\b0[1-9]\d{0,3}(?:[ -]\d{2,8}){1,4}" + _NOT_BEFORE_NUMBER),
    # after a phone word, any 7-15 digit number ("tel. 555-1234", "mobile: 0612345678")
    re.compile(r"(?i:\b(?:tel|telephone|phone|mobile|mob|cell|fax|whatsapp|"
               r"call(?:\s+me)?(?:\s+(?:at|on))?|reach(?:\s+me)?\s+(?:at|on)))\b\.?"
               r"(?i:\s*(?:number|no\.?|nr\.?|#))?(?:\s+is)?\s*:?\s*"
               r"(?P<pii>\+?\(?\d[\d .()-]{5,20}\d)" + _NOT_BEFORE_NUMBER),
]


def _find_phone(text: str) -> Iterator[tuple[int, int]]:
    for i, pattern in enumerate(_PHONE_PATTERNS):
        for m in pattern.finditer(text):
            group = "pii" if "pii" in pattern.groupindex else 0
            n = len(_digits(m.group(group)))
            # a trunk-0 national number has 9+ digits; that keeps dates like 03-14-1962 out
            if (9 if i == 2 else 7) <= n <= 15:
                yield m.span(group)


# ----------------------------------------------------------------------------------------- DATE

_MONTH = (r"(?:January|February|March|April|May|June|July|August|September|October|November|"
          r"December|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)\b\.?")
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"
_NUM_EDGE_L, _NUM_EDGE_R = r"(?<![\w/.-])", r"(?![\w]|[/.-]\d)"
_DATE_ISO = re.compile(_NUM_EDGE_L + r"(?P<y>(?:18|19|20)\d\d)(?P<sep>[-/.])(?P<m>\d{1,2})(?P=sep)"
                       r"(?P<d>\d{1,2})(?=T\d|(?![\w]|[/.-]\d))")
_DATE_NUM = re.compile(_NUM_EDGE_L + r"(?P<a>\d{1,2})(?P<sep>[-/.])(?P<b>\d{1,2})(?P=sep)"
                       r"(?P<y>(?:18|19|20)\d\d|\d\d)" + _NUM_EDGE_R)
# "12 March 2024", "3rd of March", and the clinical-system form "03-Mar-2024" / "03-MAR-24"
# (any case there: the hyphens already make it a date, unlike the verb "may")
_DATE_DMY = re.compile(r"\b" + _DAY + r"(?:(?:\s+of)?\s+(?P<mon>" + _MONTH + r")(?:,?\s+(?:18|19|20)\d\d\b)?"
                       r"|-(?P<mon2>(?i:" + _MONTH + r"))-(?:(?:18|19|20)\d\d|\d\d)\b)")
_DATE_MDY = re.compile(r"\b(?P<mon>" + _MONTH + r")\s+" + _DAY + r"\b(?!:)(?:,?\s+(?:18|19|20)\d\d\b)?")


def _date_ok(m: re.Match) -> bool:
    g = m.groupdict()
    if "a" in g:  # numeric d/m/y or m/d/y: one of the two readings must be a calendar date
        if len(g["y"]) == 2 and g["sep"] == ".":
            return False  # "2.1.10" is a version number, not a date
        a, b = int(g["a"]), int(g["b"])
        return (1 <= a <= 31 and 1 <= b <= 12) or (1 <= a <= 12 and 1 <= b <= 31)
    if "y" in g:
        return 1 <= int(g["m"]) <= 12 and 1 <= int(g["d"]) <= 31
    return 1 <= int(g["day"]) <= 31


_find_date_parts = [_scan(_DATE_ISO, _date_ok), _scan(_DATE_NUM, _date_ok), _scan(_DATE_DMY, _date_ok),
                    _scan(_DATE_MDY, _date_ok)]


def _find_date(text: str) -> Iterator[tuple[int, int]]:
    for find in _find_date_parts:
        yield from find(text)


# -------------------------------------------------------------------------------------- MRN, ID

# An identifier after a context word: letters, digits and inner hyphens / slashes with at
# least two digits (so "ID card", "account is locked" are not ids), or grouped digits.
_ID_VALUE = (r"(?P<pii>\d{2,6}(?:[ ]\d{2,6}){1,4}(?![\w-])(?![ ]\d)"
             r"|(?=[A-Za-z0-9/-]*\d[A-Za-z0-9/-]*\d)[A-Za-z0-9](?:[A-Za-z0-9]|[-/](?=[A-Za-z0-9])){3,24}"
             r"(?![\w-]))")
_NO = r"(?:\s*(?:(?:number|no|nr|num|id|identifier)\b\.?|#))"
_ID_SEP = r"[\s:#=]*(?:is\s+)?(?:[:#]\s*)?"
_MRN = re.compile(r"(?i:\b(?:MRN|MR#|medical\s+record" + _NO + r"?|patient" + _NO
                  + r"|hospital" + _NO + r"|chart" + _NO + r"|unit\s+number))" + _ID_SEP + _ID_VALUE)
_ID = re.compile(r"(?i:(?:\bID\b(?:\s+card)?" + _NO + r"?|\b(?:identity|identification)" + _NO + r"?(?:\s+card)?"
                 r"|\bpassport" + _NO + r"?|\bnational\s+(?:id|identity|insurance)" + _NO + r"?(?:\s+card)?"
                 r"|\b(?:driver'?s?\s+)?licen[cs]e" + _NO + r"?|\b(?:account|acct\.?)" + _NO + r"?"
                 r"|\b(?:customer|client|member|policy|employee|tax|insurance|user)" + _NO + r"))"
                 + _ID_SEP + _ID_VALUE)


# -------------------------------------------------------------------------------------- ADDRESS

# an abbreviation keeps its dot; a full word leaves a sentence's full stop alone
_SUFFIX = (r"(?:(?:Street|Road|Avenue|Lane|Boulevard|Drive|Way|Court|Place|Terrace|Close|Crescent|"
           r"Square|Parkway|Highway|Circle|Row|Walk|Gardens|View|Grove|Mews|Rise|Hill|Vale|Trail|Alley|"
           r"Plaza|Parade|Quay|Wharf|Heights)\b"
           r"|(?:St|Rd|Ave|Ln|Blvd|Dr|Ct|Pl|Sq|Pkwy|Hwy|Cir)\b\.?)")
_STREET_WORD = r"(?:[A-Z][a-z]+(?:['-][A-Za-z]+)?|\d{1,3}(?:st|nd|rd|th)|[NSEW]\.?|St\.)"
_UNIT = r"(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm)\.?\s*#?\s*[A-Za-z0-9-]{1,6}\b"
_CITY = r"[A-Z][a-z]+(?:[ -][A-Z][a-z]+){0,2}"
_ADDRESS = re.compile(
    r"(?:\b" + _UNIT + r",?\s+)?"                                   # Flat 3, 12 Oak Road
    r"(?<![\w-])\d{1,5}[A-Za-z]?(?:-\d{1,5})?,?\s+"                 # house number
    r"(?:" + _STREET_WORD + r"\s+){1,4}?" + _SUFFIX                 # street name + suffix
    + r"(?:\s+(?:NW|NE|SW|SE|N|S|E|W)\b)?"
    r"(?:,?\s+(?:" + _UNIT + r"|#\s*[A-Za-z0-9-]{1,6}\b))?"         # , Apt 4B
    # town + postcode only when a postcode follows, so the next sentence is not swallowed
    r"(?:,\s*" + _CITY + r",?\s+(?:[A-Z]{2}\s+)?\d{5}(?:-\d{4})?\b"  # Springfield, IL 62704
    r"|,\s*" + _CITY + r",?\s+[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}\b"  # London SW1A 1AA
    r"|,\s*\d{4,5}\s+" + _CITY + r")?")                            # 10115 Berlin


# ----------------------------------------------------------------------------------------- NAME

_UP, _LOW = "A-ZÀ-ÖØ-Þ", "a-zß-öø-ÿ"
_NAME_WORD = (rf"(?:Ma?c[{_UP}][{_LOW}]+|[{_UP}]'[{_UP}][{_LOW}]+"
              rf"|[{_UP}][{_LOW}]+(?:-[{_UP}][{_LOW}]+)?)(?![\w'])")
_PARTICLE = r"(?:van|von|der|den|de|del|della|di|da|du|la|le|bin|ibn|al)"
# a name and its context word are on one line: "Regards, Zoe Brown\nBeneficiary" and
# "12 Main Dr.\nTemperature 38.2" must stop at the break
_NAME = (rf"(?P<pii>(?:{_PARTICLE}[ \t]+)*(?:[{_UP}]\.[ \t]*)?{_NAME_WORD}"
         rf"(?:(?:[ \t]+{_PARTICLE})*[ \t]+(?:[{_UP}]\.[ \t]*)?{_NAME_WORD}){{0,2}})")
_HONORIFIC = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Professor|Sir|Dame|Madam)\b\.?"
_NAME_CONTEXT = [
    re.compile(r"\b" + _HONORIFIC + r"[ \t]+" + _NAME),
    re.compile(r"(?i:\bmy\s+name\s+is|\bname\s*:|\bpatient(?:'s\s+name)?:?|\bdear|\bregards,|"
               r"\bsincerely,|\bsigned(?:\s+by)?,?|\bthis\s+is|\bnext\s+of\s+kin:?|"
               r"\b(?:daughter|son|wife|husband|mother|father|spouse|partner|sister|brother|"
               r"guardian|carer)(?:\s*,)?)"
               r"[ \t]+(?:" + _HONORIFIC + r"[ \t]+)?" + _NAME),
]
# Common English given names; a capitalised surname must follow. Names that are also
# ordinary words (Mark, Will, May, June, Grace, Hope, Frank, Rose) are left out on purpose.
FIRST_NAMES = frozenset("""
James John Robert Michael William David Richard Joseph Thomas Charles Christopher Daniel Matthew
Anthony Donald Steven Paul Andrew Joshua Kenneth Kevin Brian George Edward Ronald Timothy Jason
Jeffrey Ryan Jacob Gary Nicholas Eric Jonathan Stephen Larry Justin Scott Brandon Benjamin Samuel
Gregory Alexander Raymond Patrick Jack Dennis Jerry Peter Henry Oliver Liam Noah Lucas Ethan Adam
Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Nancy Lisa Margaret
Sandra Ashley Kimberly Emily Donna Michelle Dorothy Carol Amanda Melissa Deborah Stephanie
Rebecca Sharon Laura Cynthia Kathleen Amy Shirley Angela Helen Anna Brenda Pamela Nicole Emma
Samantha Katherine Christine Rachel Catherine Carolyn Janet Maria Heather Diane Julie Olivia
Sophie Sophia Hannah Chloe Charlotte Amelia Isabella Lucy Ella Mia Zoe Claire Alice Eleanor
Mohammed Muhammad Ahmed Ali Fatima Aisha Priya Carlos Juan Jose Luis Ana Sofia Elena Marco
""".split())
_FIRST_NAME_SEQ = re.compile(r"\b(?=(?:" + "|".join(sorted(FIRST_NAMES)) + r")\s)" + _NAME)
# Capitalised words that follow a context word but are not names ("Dear Customer", "patient
# Portal"), and words a name sequence must not run into ("Dr Smith Monday").
_NOT_NAMES = frozenset("""
Sir Madam Customer Customers Client Clients Team All Colleague Colleagues Doctor Patient Patients
Support Bank Manager Friend Friends Member Members Valued Portal Information Record Records Care
Services Service Department Account Card Transfer Please Thanks Thank Hello Hi Regards Note Notes
Summary Discharge Admission Today Yesterday Tomorrow Urgent Hospital Clinic Ward Unit Room
Emergency Office Surgery The A An And Or On At In Of To From With For By Is Was Has Had Not No
Yes Here There We You They He She It This That Monday Tuesday Wednesday Thursday Friday Saturday
Sunday January February March April May June July August September October November December
Street Road Avenue Lane Boulevard Drive Way Court Place Terrace Close Crescent Square View Grove Mews Dear
Mr Mrs Ms Miss Dr Prof Professor Name Date Phone Email Address Birth Number Admitted Seen
Referred Reports Presented Called Contact Signed Visit Follow Reviewed Lives Stable
""".split())


# Words the name tagger (common/name_tagger.py) may not make a name of on their own: the list
# above plus the labels of clinical and banking forms ("DOB: ...", "Next of kin").
# The placeholders themselves ("[NAME]") are never names either: redacting twice changes nothing.
NOT_NAMES = _NOT_NAMES | frozenset("DOB MRN NHS IBAN BIC SWIFT SSN ID Ref Tel Fax Next Kin Consent Witness".split()) \
    | frozenset(ENTITY_TYPES)


def _find_name(text: str) -> Iterator[tuple[int, int]]:
    for pattern in (*_NAME_CONTEXT, _FIRST_NAME_SEQ):
        for m in pattern.finditer(text):
            s, e = m.span("pii")
            words = list(re.finditer(r"[^\s]+", text[s:e]))
            # drop trailing non-name words, reject if the first word is not a name
            while words and words[-1].group().rstrip(".,") in _NOT_NAMES:
                words.pop()
            if not words or words[0].group().rstrip(".,") in _NOT_NAMES:
                continue
            if pattern is _FIRST_NAME_SEQ and len(words) < 2:
                continue
            yield s, s + words[-1].end()


# ------------------------------------------------------------------------------ by entity type

FINDERS: dict[str, list[Finder]] = {
    "NAME": [_find_name],
    "EMAIL": [_scan(_EMAIL)],
    "PHONE": [_find_phone],
    "DATE": [_find_date],
    "ID": [_scan(_ID, group="pii")],
    "ADDRESS": [_scan(_ADDRESS)],
    "IBAN": [_find_iban],
    "CARD": [_find_card],
    "IP": [_scan(_IPV4, _ipv4_ok), _find_ipv6],
    "URL": [_find_url],
    "MRN": [_scan(_MRN, group="pii")],
    "SSN": [_find_ssn],
}
assert set(FINDERS) == set(ENTITY_TYPES)
