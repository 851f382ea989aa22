"""`users erase`: the right to erasure (GDPR art. 17) from the command line, audited like the API's."""

from __future__ import annotations

import argparse

from .common import actor_of, fail, service_for
from .tenants import tenant_id_named


def cmd_users(args: argparse.Namespace) -> int:
    """erase: a user's devices, recovery codes and the personal data in their audit rows (GDPR art. 17)."""
    from ..audit.rows import RequestContext
    from ..core.errors import ValidationError
    from ..core.validation import user_id

    try:
        uid = user_id(args.user_id)
    except ValidationError as exc:
        return fail(exc.message)
    by = actor_of(args)
    with service_for(args) as service:
        with service.database.connection_context():
            tenant_id = tenant_id_named(args.tenant)
        operator = RequestContext(
            user_agent="otp-service users (command line)", actor="command-line", tenant_id=tenant_id, by=by
        )
        erased = service.erase_user(uid, operator)
    print(
        f"erased: {erased['devices']} device(s), {erased['recovery_codes']} recovery code set(s), personal data "
        f"removed from {erased['audit_rows']} audit row(s); audited as subject {erased['subject'][:16]}…"
    )
    if erased["checkpoint"] is None:
        fail("the erasure is not sealed by a checkpoint: the audit rows since the last one do not verify")
    if erased["reports_withdrawn"]:
        print(
            f"{erased['reports_withdrawn']} stored report(s) that may name the user withdrawn: "
            "`python -m otp_service report regenerate` makes them again"
        )
    return 0
