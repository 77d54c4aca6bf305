"""Value sets shared by validation, storage and (later) certificates.

Vaccine products are EU DCC `vaccines-covid-19-names` codes; the manufacturer
(`ma`) is what a certificate needs beside the product.
"""

VACCINE_MANUFACTURERS: dict[str, str] = {
    "EU/1/20/1528": "ORG-100030215",  # Comirnaty, BioNTech
    "EU/1/20/1507": "ORG-100031184",  # Spikevax, Moderna
    "EU/1/21/1529": "ORG-100001699",  # Vaxzevria, AstraZeneca
    "EU/1/20/1525": "ORG-100001417",  # Jcovden, Janssen
    "EU/1/21/1618": "ORG-100032020",  # Nuvaxovid, Novavax
    "BBIBP-CorV": "ORG-100020693",  # Sinopharm (Vero Cell)
    "CoronaVac": "Sinovac-Biotech",
    "Sputnik-V": "Gamaleya-Research-Institute",
    "Hayat-Vax": "ORG-100023050",  # Gulf Pharmaceutical Industries
    "Abdala": "CIGB",  # Center for Genetic Engineering and Biotechnology, Havana
    "Covaxin": "Bharat-Biotech",
}

VACCINE_PRODUCTS: tuple[str, ...] = tuple(VACCINE_MANUFACTURERS)

SITE_KINDS: tuple[str, ...] = ("fixed", "mobile")

# Doses in each product's primary series: a certificate's `sd` (DCC rule:
# a booster after a complete series is written dn/dn, e.g. 3/3).
SERIES_DOSES: dict[str, int] = {product: 2 for product in VACCINE_PRODUCTS} | {"EU/1/20/1525": 1}

# `vp`, vaccine or prophylaxis (DCC value set sct-vaccines-covid-19).
_MRNA = "1119349007"
_GENERIC = "J07BX03"
VACCINE_PROPHYLAXIS: dict[str, str] = {product: _GENERIC for product in VACCINE_PRODUCTS} | {
    "EU/1/20/1528": _MRNA,
    "EU/1/20/1507": _MRNA,
}

# The shortest interval, in days, from a primary series' first dose to its second, by the first dose's
# product (the products' authorisations); a second dose sooner than this is flagged for review.
MIN_INTERVAL_DAYS: dict[str, int] = {
    "EU/1/20/1528": 21,  # Comirnaty
    "EU/1/20/1507": 28,  # Spikevax
    "EU/1/21/1529": 28,  # Vaxzevria
    "EU/1/21/1618": 21,  # Nuvaxovid
    "BBIBP-CorV": 21,
    "CoronaVac": 14,
    "Sputnik-V": 21,
    "Hayat-Vax": 21,
    "Abdala": 14,
    "Covaxin": 28,
}
