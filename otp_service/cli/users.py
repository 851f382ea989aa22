"""`users erase`: the right to erasure (GDPR art. 17) from the command line, audited like the API's."""

from __future__ import annotations

import argparse

from .common import fail, service_for


def cmd_users(args: argparse.Namespace) -> int:
    """erase: a user's devices, recovery codes and the personal data in their audit rows (GDPR art. 17)."""
    from ..audit.rows import RequestContext
    from ..core.errors import ValidationError
    from ..core.validation import user_id

    try:
        uid = user_id(args.user_id)
    except ValidationError as exc:
        return fail(exc.message)
    with service_for(args) as service:
        operator = RequestContext(user_agent="otp-service users (command line)", actor="command-line")
        erased = service.erase_user(uid, operator)
    print(
        f"erased: {erased['devices']} device(s), {erased['recovery_codes']} recovery code set(s), personal data "
        f"removed from {erased['audit_rows']} audit row(s); audited as subject {erased['subject'][:16]}…"
    )
    return 0
