"""Offline evidence bundles (docs/evidence.md): signatures, their payloads or hashes, a JWKS
snapshot with statuses and revocation times, and timestamp tokens, in one ZIP file.

:mod:`.format` guards the reading of a hostile bundle, :mod:`.bundle` holds its records,
:mod:`.export` builds one from a key store's snapshot, :mod:`.verify` judges one with no
service, database or network, and :mod:`.signing_time` is the hook to the timestamp checker.
"""

from __future__ import annotations

from tenantkeys.evidence.format import FORMAT
from tenantkeys.evidence.verify import Verdict, verify_bundle, verify_file

__all__ = ["FORMAT", "Verdict", "verify_bundle", "verify_file"]
