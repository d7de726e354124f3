"""Loaded by schemathesis (SCHEMATHESIS_HOOKS) in the API fuzzing test.

An image upload (the hosted SDK's presigned PUT, ``image/jpeg``) is sent as
raw bytes. Schemathesis 4.32 sends any file type that way; 4.30, the newest
for Python 3.10, knows only ``application/octet-stream`` and stops the run
("No supported serializers for media types: image/jpeg"). The alias gives
every version the same body.
"""

import schemathesis

schemathesis.serializer.alias("image/jpeg", "application/octet-stream")
