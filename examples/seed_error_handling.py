"""The seed's "Error Handling" example, as written (apart from the import)."""

import lucidic as lai
from lucidic.errors import InvalidOperationError, APIKeyVerificationError

try:
    lai.continue_session(session_id="invalid-session")
except APIKeyVerificationError:
    print("Please check your API credentials")
except InvalidOperationError:
    print("Session may already be active or does not exist")
