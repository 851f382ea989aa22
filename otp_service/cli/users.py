"""`users erase`: the right to erasure (GDPR art. 17) from the command line, audited like the API's."""

from __future__ import annotations

import argparse

from .common import fail, service_for


def cmd_users(args: argparse.Namespace) -> int:
    """erase: a user's devices, recovery codes and the personal data in their audit rows (GDPR art. 17)."""
    from ..audit.rows import RequestContext
    from ..core.errors import DatabaseUnavailable, ValidationError
    from ..core.validation import user_id
    from ..db.database import UNAVAILABLE_ERRORS

    try:
        uid = user_id(args.user_id)
    except ValidationError as exc:
        return fail(exc.message)
    try:
        service = service_for(args)
        operator = RequestContext(user_agent="otp-service users (command line)", actor="command-line")
        erased = service.erase_user(uid, operator)
    except UNAVAILABLE_ERRORS + (DatabaseUnavailable,) as exc:
        return fail(f"cannot reach the database: {exc}", 1)
    print(
        f"erased: {erased['devices']} device(s), {erased['recovery_codes']} recovery code set(s), personal data "
        f"removed from {erased['audit_rows']} audit row(s); audited as subject {erased['subject'][:16]}…"
    )
    return 0
