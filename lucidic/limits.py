"""The limits the SDK and the server agree on, written once.

The SDK cuts and splits what it sends so that the server never refuses a
batch for its size; the server enforces the same numbers. Nothing here
imports anything: both sides (and the server's models) read these constants.
"""

from __future__ import annotations

#: Longest client-made id (session, step, event): printable characters.
MAX_ID_LENGTH = 256

#: Longest text kept in one field; longer text is cut and says by how much.
MAX_TEXT_CHARS = 4 * 1024 * 1024

#: Integer columns (token counts, pids, ...) hold signed 64-bit values;
#: anything outside is stored as null rather than refusing the record.
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

#: Largest cost one event may carry, in US dollars, either sign: far beyond
#: any real call (2**63-1 tokens at any listed price cost less), and small
#: enough that a sum over any number of events stays a finite float.
MAX_COST = 1e18

#: An integer inside a JSON document (``arguments``, messages) with more bits
#: than this is recorded as a short note instead: its decimal text would be
#: thousands of digits, which JSON encoders and decoders refuse by default
#: (Python's limit is 4,300 digits, about 14,300 bits).
MAX_DOCUMENT_INT_BITS = 14_000

#: The server's default limit on a request body (``lucidic server
#: --max-body-bytes`` changes it; a 413 answer names the server's own).
MAX_BODY_BYTES = 32 * 1024 * 1024

#: Most records the server takes in one batch.
MAX_BATCH_RECORDS = 10_000

#: The SDK splits batches whose body would be larger than this.
MAX_REQUEST_BYTES = 8 * 1024 * 1024

#: One record alone larger than this (as JSON) has its longest texts cut
#: until it fits, so that it still fits a request of MAX_BODY_BYTES.
MAX_RECORD_BYTES = MAX_BODY_BYTES - 64 * 1024
