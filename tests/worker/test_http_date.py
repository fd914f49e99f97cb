"""The worker's Date header, formatted without the email package (email.utils as the oracle)."""

from __future__ import annotations

import locale
import random
from email.utils import formatdate

from fastgate.worker.server import http_date


def test_matches_email_utils_formatdate_over_four_centuries() -> None:
    rng = random.Random(7)
    # The epoch, the RFC 9110 example, leap days, the 2038 boundary, year 9999's last second.
    stamps = [0.0, 784111777.0, 951782400.0, 1709164800.0, 2**31 - 1.0, 2**31 + 0.5, 253402300799.0]
    stamps += [rng.uniform(0, 253402300799.0) for _ in range(5000)]
    for t in stamps:
        assert http_date(t) == formatdate(t, usegmt=True).encode("ascii"), t


def test_is_english_whatever_the_locale() -> None:
    # An app may switch LC_TIME: time.strftime's %a/%b would follow it; HTTP dates must not.
    saved = locale.setlocale(locale.LC_TIME)
    try:
        for name in ("de_DE.UTF-8", "fr_FR.UTF-8", "C.UTF-8"):
            try:
                locale.setlocale(locale.LC_TIME, name)
            except locale.Error:
                continue
            assert http_date(784111777.0) == b"Sun, 06 Nov 1994 08:49:37 GMT"
    finally:
        locale.setlocale(locale.LC_TIME, saved)
